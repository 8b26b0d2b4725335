// The settings page's helpers: "Check connection" and "Load from Mango" without a reload.
// The form works without this file (plain POST to /b24/app/settings); this only adds the
// in-place answers. Every request carries the page token in X-Page-Token, because the page
// lives in the portal's iframe where cookies are not sent.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var form = document.getElementById("settings");
  if (!form) return;
  var lang = form.getAttribute("data-lang") || "ru";
  var token = form.elements.page_token.value;

  function show(el, ok, text) {
    el.textContent = text;
    el.className = "note " + (ok ? "good" : "bad");
  }

  function post(path, fields) {
    var body = new URLSearchParams();
    Object.keys(fields).forEach(function (k) { body.append(k, fields[k]); });
    return fetch(path + "?LANG=" + encodeURIComponent(lang), {
      method: "POST",
      headers: { "X-Page-Token": token, "Content-Type": "application/x-www-form-urlencoded" },
      body: body.toString(),
      credentials: "omit"
    }).then(function (r) {
      return r.json().catch(function () { return { ok: false, error: form.getAttribute("data-failed") }; });
    }, function () {
      return { ok: false, error: form.getAttribute("data-failed") };
    });
  }

  function pause(ans) {
    if (ans.ok) return 0;
    return ans.retry_after ? ans.retry_after * 1000 : 120000;
  }

  function keys() {
    return { mango_api_key: form.elements.mango_api_key.value.trim(), mango_api_salt: form.elements.mango_api_salt.value.trim() };
  }

  var check = document.getElementById("check");
  var checkResult = document.getElementById("check-result");
  check.addEventListener("click", function (ev) {
    ev.preventDefault();
    check.disabled = true;
    show(checkResult, true, form.getAttribute("data-busy"));
    checkResult.className = "note";
    post("/b24/app/mango/check", keys()).then(function (ans) {
      show(checkResult, !!ans.ok, ans.message || ans.error || "");
      // After a failure Mango may lock the API for 2 minutes: keep the button off that long,
      // or as long as the server's throttle says (retry_after, seconds).
      setTimeout(function () { check.disabled = false; }, pause(ans));
    });
  });

  var load = document.getElementById("load");
  var loadResult = document.getElementById("load-result");
  function fill(listId, items) {
    var list = document.getElementById(listId);
    while (list.firstChild) list.removeChild(list.firstChild);
    items.forEach(function (it) {
      var o = document.createElement("option");
      o.value = it.value;
      o.label = it.label;
      o.textContent = it.label;
      list.appendChild(o);
    });
  }
  load.addEventListener("click", function () {
    load.disabled = true;
    show(loadResult, true, form.getAttribute("data-busy"));
    loadResult.className = "note";
    post("/b24/app/mango/options", keys()).then(function (ans) {
      if (ans.ok) {
        fill("groups-list", (ans.groups || []).map(function (g) {
          return { value: g.extension, label: g.extension + " — " + g.name };
        }));
        fill("lines-list", (ans.lines || []).map(function (l) {
          return { value: l.value, label: l.value + (l.name && l.name !== l.value ? " — " + l.name : "") };
        }));
      }
      show(loadResult, !!ans.ok, ans.message || ans.error || "");
      setTimeout(function () { load.disabled = false; }, pause(ans));
    });
  });
})();
