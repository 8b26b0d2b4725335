// Tells Bitrix24 the installation is complete, exactly once (events and the robot stay blocked until then).
(function () {
  var done = false;
  function finish() {
    if (done) { return; }
    done = true;
    if (window.BX24 && typeof window.BX24.installFinish === "function") {
      window.BX24.init(function () { window.BX24.installFinish(); });
    }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", finish);
  } else {
    finish();
  }
})();
