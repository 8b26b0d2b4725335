//! The app page (`/b24/app`): verification, the page token, settings validation, the Mango
//! helpers and the call log — over HTTP on both databases (the real-Chromium test is `browser.rs`).

use std::time::Duration;

use mango_callback::db::Backend;
use mango_callback::http::settings_page::page_token::PageToken;
use mango_callback::portal::{store, PortalSettings};
use mango_callback::sandbox::bitrix::SimPortal;

use crate::helpers::{spawn_app, TestApp, LINE, MANGO_KEY, MANGO_SALT};
use crate::on_both_backends;

pub(crate) const ROBOT: &str = "mango_callback";

/// An answer of the app: status, the headers we assert on, and the body.
pub(crate) struct Page {
    pub(crate) status: u16,
    csp: Option<String>,
    pub(crate) body: String,
}

pub(crate) fn enc(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).expect("encodable form")
}

pub(crate) async fn post(app: &TestApp, path: &str, token: Option<&str>, body: String) -> Page {
    let mut req = app
        .http
        .post(format!("{}{}", app.base, path))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"));
    if let Some(t) = token {
        req = req.insert_header(("X-Page-Token", t));
    }
    let mut resp = req.send_body(body).await.expect("request reaches the app");
    let status = resp.status().as_u16();
    let csp = resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.body().limit(1 << 20).await.expect("body");
    Page {
        status,
        csp,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Opens the app page the way the portal's iframe does: a form POST with a fresh token chain.
pub(crate) async fn open_app(app: &TestApp, portal: &SimPortal, user_id: u64, lang: &str) -> Page {
    let req = app
        .b24
        .iframe_request(&portal.member_id, user_id, "DEFAULT", lang);
    post(
        app,
        &format!("/b24/app?{}", req.query_string()),
        None,
        req.to_form_body(),
    )
    .await
}

pub(crate) fn page_token(body: &str) -> String {
    let start = body
        .find("name=\"page_token\" value=\"")
        .expect("the page carries a page token")
        + "name=\"page_token\" value=\"".len();
    let len = body[start..].find('"').expect("closing quote");
    body[start..start + len].to_owned()
}

/// A portal with the app installed but nothing configured yet.
pub(crate) async fn bare_portal(app: &TestApp, name: &str) -> SimPortal {
    let portal = app.b24.create_portal(name);
    let (status, page) = app.open_installer(&portal, portal.admin_user_id).await;
    assert_eq!(status, 200, "installer failed: {page}");
    portal
}

pub(crate) async fn stored_settings(app: &TestApp, member_id: &str) -> Option<PortalSettings> {
    let mid = member_id.to_owned();
    app.shared
        .db
        .run(move |c| store::settings(c, &mid))
        .await
        .expect("db")
}

pub(crate) fn good_form<'a>(token: &'a str, trainee: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("page_token", token),
        ("mango_api_key", MANGO_KEY),
        ("mango_api_salt", MANGO_SALT),
        ("line_number", LINE),
        ("trainee_extension", trainee),
        ("experienced_extension", "001"),
        ("duplicate_window_minutes", "15"),
        ("contact_wait_seconds", "30"),
    ]
}

async fn an_unverified_auth_id_is_refused_and_nothing_is_shown(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("forged").await;
    let mut req = app.b24.iframe_request(&p.member_id, 1, "DEFAULT", "en");
    for (k, v) in req.form.iter_mut() {
        if k == "AUTH_ID" {
            *v = "made-up-access-token".into();
        }
    }
    let page = post(
        &app,
        &format!("/b24/app?{}", req.query_string()),
        None,
        req.to_form_body(),
    )
    .await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert!(page.body.contains("reopen the app"), "{}", page.body);
    for secret in [MANGO_KEY, LINE, "page_token", "call-log", p.domain.as_str()] {
        assert!(
            !page.body.contains(secret),
            "{secret} leaked: {}",
            page.body
        );
    }
}
on_both_backends!(an_unverified_auth_id_is_refused_and_nothing_is_shown);

async fn a_portal_without_the_app_gets_the_not_installed_page_in_its_language(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.b24.create_portal("never-installed");
    for (lang, text) in [
        ("en", "The app is not installed on this portal"),
        ("ru", "Приложение не установлено на этом портале"),
    ] {
        let (status, body) = app.open_app_page(&p, 1, lang).await;
        assert_eq!(status, 404, "{lang}: {body}");
        assert!(body.contains(text), "{lang}: {body}");
        assert!(!body.contains("page_token"), "{lang}: {body}");
    }
    assert!(stored_settings(&app, &p.member_id).await.is_none());
}
on_both_backends!(a_portal_without_the_app_gets_the_not_installed_page_in_its_language);

async fn a_non_admin_sees_a_read_only_page_and_cannot_save_with_its_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("readonly").await;
    app.b24.add_user(&p.member_id, 5, false);
    let page = open_app(&app, &p, 5, "ru").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("id=\"readonly\""), "{}", page.body);
    assert!(!page.body.contains("<form"), "no form for a non-admin");
    assert!(!page.body.contains(MANGO_KEY), "the key is for admins only");
    assert!(!page.body.contains("page_token"));

    // The token such a page would hold: genuine, but without the admin flag.
    let now = app.clock.now_utc().timestamp();
    let token = PageToken::new(&p.member_id, 5, false, now).encode(&app.shared.cipher);
    let before = stored_settings(&app, &p.member_id).await;
    let saved = post(
        &app,
        "/b24/app/settings?LANG=en",
        None,
        enc(&good_form(&token, "777")),
    )
    .await;
    assert_eq!(saved.status, 403, "{}", saved.body);
    assert!(saved.body.contains("Only a portal administrator"));
    for path in ["/b24/app/mango/check", "/b24/app/mango/options"] {
        let r = post(&app, path, Some(&token), String::new()).await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
    let after = stored_settings(&app, &p.member_id).await;
    assert_eq!(
        before.map(|s| s.trainee_extension),
        after.map(|s| s.trainee_extension)
    );
    assert!(app.mango.requests().is_empty(), "Mango was not asked");
}
on_both_backends!(a_non_admin_sees_a_read_only_page_and_cannot_save_with_its_token);

async fn an_admin_page_is_framed_only_by_its_portal_and_keeps_leading_zeros(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("framed").await;
    let page = open_app(&app, &p, 1, "en").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csp = page.csp.expect("CSP header");
    assert!(
        csp.contains(&format!("frame-ancestors https://{}", p.domain)),
        "{csp}"
    );
    assert!(page.body.contains("value=\"002\""), "\"002\" stays \"002\"");
    assert!(page.body.contains(&format!("{}/mango", app.base)));
    assert!(page.body.contains("Check connection"));
    let ru = open_app(&app, &p, 1, "ru").await;
    assert!(ru.body.contains("Проверить подключение"));
}
on_both_backends!(an_admin_page_is_framed_only_by_its_portal_and_keeps_leading_zeros);

async fn saving_a_bad_extension_or_an_empty_line_shows_the_error_and_stores_nothing(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = bare_portal(&app, "invalid").await;
    let page = open_app(&app, &p, 1, "en").await;
    let token = page_token(&page.body);

    let mut form = good_form(&token, "12a");
    form.retain(|(k, _)| *k != "line_number");
    form.push(("line_number", ""));
    let r = post(&app, "/b24/app/settings?LANG=en", None, enc(&form)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("id=\"error-trainee_extension\""),
        "{}",
        r.body
    );
    assert!(r.body.contains("id=\"error-line_number\""));
    assert!(!r.body.contains("id=\"error-experienced_extension\""));
    assert!(r.body.contains("value=\"12a\""), "the typed value is kept");
    assert!(stored_settings(&app, &p.member_id).await.is_none());

    let mut form = good_form(&token, "002");
    form.retain(|(k, _)| *k != "contact_wait_seconds");
    form.push(("contact_wait_seconds", "601"));
    let r = post(&app, "/b24/app/settings?LANG=en", None, enc(&form)).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("id=\"error-contact_wait_seconds\""));
    assert!(stored_settings(&app, &p.member_id).await.is_none());

    let r = post(
        &app,
        "/b24/app/settings?LANG=en",
        None,
        enc(&good_form(&token, "002")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Settings saved"));
    let s = stored_settings(&app, &p.member_id).await.expect("saved");
    assert_eq!(
        (s.trainee_extension.as_str(), s.duplicate_window_minutes),
        ("002", 15)
    );
    assert_eq!(s.contact_wait_seconds, 30);
}
on_both_backends!(saving_a_bad_extension_or_an_empty_line_shows_the_error_and_stores_nothing);

async fn the_salt_never_appears_in_any_response(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("salty").await;
    let new_salt = "brand-new-salt-9f3a";
    app.mango.add_account("second-key", new_salt);
    app.mango.add_group("second-key", 1, "G", "002");
    app.mango.add_line("second-key", LINE, "L");
    let page = open_app(&app, &p, 1, "en").await;
    let token = page_token(&page.body);
    assert!(page.body.contains("id=\"salt-set\""), "shown as set");

    let mut bodies = vec![page.body.clone()];
    // The stored salt, used when the field is empty. Each Mango request waits for the page's
    // next turn (one per PAGE_INTERVAL), so that each gets a real answer.
    let turn = mango_callback::portal::throttle::PAGE_INTERVAL;
    bodies.push(
        post(&app, "/b24/app/mango/check", Some(&token), String::new())
            .await
            .body,
    );
    app.advance(turn);
    bodies.push(
        post(&app, "/b24/app/mango/options", Some(&token), String::new())
            .await
            .body,
    );
    app.advance(turn);
    // A typed salt: checked, then saved; a rejected form does not echo it either.
    let typed = enc(&[
        ("mango_api_key", "second-key"),
        ("mango_api_salt", new_salt),
    ]);
    bodies.push(
        post(&app, "/b24/app/mango/check", Some(&token), typed)
            .await
            .body,
    );
    let mut bad = good_form(&token, "x");
    bad.retain(|(k, _)| *k != "mango_api_salt");
    bad.push(("mango_api_salt", new_salt));
    bodies.push(post(&app, "/b24/app/settings", None, enc(&bad)).await.body);
    let mut good = good_form(&token, "002");
    good.retain(|(k, _)| !matches!(*k, "mango_api_salt" | "mango_api_key"));
    good.push(("mango_api_salt", new_salt));
    good.push(("mango_api_key", "second-key"));
    let saved = post(&app, "/b24/app/settings", None, enc(&good)).await;
    assert_eq!(saved.status, 200, "{}", saved.body);
    bodies.push(saved.body);
    let mut check = good_form(&token, "002");
    check.push(("action", "check"));
    app.advance(turn);
    let checked = post(&app, "/b24/app/settings", None, enc(&check)).await;
    assert_eq!(checked.status, 200, "{}", checked.body);
    bodies.push(checked.body);
    bodies.push(open_app(&app, &p, 1, "ru").await.body);

    for (i, body) in bodies.iter().enumerate() {
        assert!(!body.contains(MANGO_SALT), "response {i} has the old salt");
        assert!(!body.contains(new_salt), "response {i} has the new salt");
    }
    let s = stored_settings(&app, &p.member_id).await.expect("saved");
    let sealed = s.mango_api_salt.expect("salt");
    assert!(!sealed.contains(new_salt), "stored sealed");
    assert_eq!(
        app.shared
            .cipher
            .open(
                mango_callback::crypto::Slot::mango_api_salt(&p.member_id),
                &sealed
            )
            .ok()
            .as_deref(),
        Some(new_salt)
    );
}
on_both_backends!(the_salt_never_appears_in_any_response);

async fn a_token_from_portal_a_cannot_read_or_change_portal_b(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.installed_portal("alpha").await;
    let b = app.installed_portal("beta").await;
    let token_a = page_token(&open_app(&app, &a, 1, "en").await.body);

    // A's token with B's member_id in the form: the token decides, B is untouched.
    let mut form = good_form(&token_a, "555");
    form.push(("member_id", &b.member_id));
    let r = post(&app, "/b24/app/settings", None, enc(&form)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(&a.domain) && !r.body.contains(&b.domain));
    let sb = stored_settings(&app, &b.member_id).await.expect("b");
    assert_eq!(sb.trainee_extension, "002", "B unchanged");
    let sa = stored_settings(&app, &a.member_id).await.expect("a");
    assert_eq!(sa.trainee_extension, "555");

    // A's token re-labelled for B: the signature no longer matches.
    let forged = token_a.replacen(&a.member_id, &b.member_id, 1);
    let r = post(
        &app,
        "/b24/app/settings",
        None,
        enc(&good_form(&forged, "666")),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(!r.body.contains(&b.domain));
    let r = post(&app, "/b24/app/mango/options", Some(&forged), String::new()).await;
    assert_eq!(r.status, 401);
    let sb = stored_settings(&app, &b.member_id).await.expect("b");
    assert_eq!(sb.trainee_extension, "002");
}
on_both_backends!(a_token_from_portal_a_cannot_read_or_change_portal_b);

async fn an_expired_page_token_is_refused_with_a_reopen_message(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("expiry").await;
    let token = page_token(&open_app(&app, &p, 1, "ru").await.body);
    app.advance(Duration::from_secs(59 * 60));
    let r = post(&app, "/b24/app/mango/check", Some(&token), String::new()).await;
    assert_eq!(r.status, 200, "still valid before the hour: {}", r.body);
    app.advance(Duration::from_secs(2 * 60));
    let r = post(
        &app,
        "/b24/app/settings?LANG=ru",
        None,
        enc(&good_form(&token, "444")),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("Откройте приложение"), "{}", r.body);
    let r = post(
        &app,
        "/b24/app/mango/check?LANG=en",
        Some(&token),
        String::new(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("reopen the app"), "{}", r.body);
    let s = stored_settings(&app, &p.member_id).await.expect("settings");
    assert_eq!(s.trainee_extension, "002", "nothing saved");
}
on_both_backends!(an_expired_page_token_is_refused_with_a_reopen_message);

async fn check_connection_reports_ok_for_good_keys_and_the_error_for_a_bad_salt_with_one_request(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("check").await;
    let token = page_token(&open_app(&app, &p, 1, "en").await.body);

    let r = post(
        &app,
        "/b24/app/mango/check?LANG=en",
        Some(&token),
        String::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(app.mango.requests().len(), 1, "exactly one request");
    let s = stored_settings(&app, &p.member_id).await.expect("settings");
    assert!(s.mango_checked_at.is_some() && s.mango_last_error.is_none());
    let page = open_app(&app, &p, 1, "en").await;
    assert!(page.body.contains("Mango: keys OK"), "{}", page.body);

    let typed = enc(&[
        ("mango_api_key", MANGO_KEY),
        ("mango_api_salt", "wrong-salt"),
    ]);
    app.advance(mango_callback::portal::throttle::PAGE_INTERVAL);
    let r = post(&app, "/b24/app/mango/check?LANG=en", Some(&token), typed).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["ok"], false, "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains("3102") && msg.contains("salt"), "{msg}");
    assert!(msg.contains("2 minutes"), "warns about the lockout: {msg}");
    assert_eq!(app.mango.requests().len(), 2, "one more request, no retry");
    // Keys typed but not saved do not change the stored health line.
    let s = stored_settings(&app, &p.member_id).await.expect("settings");
    assert!(s.mango_last_error.is_none());

    // The no-JS path renders the same answer into the page (once the app's pause for a key
    // Mango refused is over).
    app.mango.reset_lockout(MANGO_KEY);
    app.advance(mango_callback::portal::throttle::REFUSED_KEY_PAUSE);
    let mut form = good_form(&token, "002");
    form.push(("action", "check"));
    let r = post(&app, "/b24/app/settings?LANG=en", None, enc(&form)).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("The keys work"), "{}", r.body);
    assert_eq!(app.mango.requests().len(), 3);

    // Pickers: groups and lines of the stored account.
    app.advance(mango_callback::portal::throttle::PAGE_INTERVAL);
    let r = post(&app, "/b24/app/mango/options", Some(&token), String::new()).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["ok"], true, "{v}");
    let exts: Vec<&str> = v["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["extension"].as_str())
        .collect();
    assert_eq!(exts, vec!["002", "001"]);
    assert_eq!(v["lines"][0]["value"], LINE);
}
on_both_backends!(
    check_connection_reports_ok_for_good_keys_and_the_error_for_a_bad_salt_with_one_request
);

async fn the_call_log_shows_the_robots_callbacks_newest_first_and_saved_settings_apply_next_run(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("log").await;
    let first = app.b24.add_deal(&p.member_id, None);
    let second = app.b24.add_deal(&p.member_id, None);
    for deal in [first, second] {
        let fired = app
            .b24
            .fire_robot(&p.member_id, ROBOT, deal, &[("phone", "89001234567")])
            .await
            .expect("robot");
        assert_eq!(fired.status, 200, "{}", fired.body);
        app.drain().await;
        app.advance(Duration::from_secs(1));
    }
    let page = open_app(&app, &p, 1, "en").await;
    let link = |deal: u64| format!("/crm/deal/details/{deal}/");
    let (at_first, at_second) = (
        page.body.find(&link(first)).expect("first deal in the log"),
        page.body
            .find(&link(second))
            .expect("second deal in the log"),
    );
    assert!(at_second < at_first, "newest first");
    assert!(page.body.contains("*******4567"), "masked phone");
    assert!(!page.body.contains("79001234567") && !page.body.contains("89001234567"));
    assert!(page.body.contains("call started"));

    // A changed group applies to the next robot run.
    app.mango.add_group(MANGO_KEY, 9, "New", "009");
    let token = page_token(&page.body);
    let mut form = good_form(&token, "009");
    form.retain(|(k, _)| *k != "mango_api_salt");
    let r = post(&app, "/b24/app/settings", None, enc(&form)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let third = app.b24.add_deal(&p.member_id, None);
    app.b24
        .fire_robot(&p.member_id, ROBOT, third, &[("phone", "89001234567")])
        .await
        .expect("robot");
    app.drain().await;
    let calls = app.mango.callbacks();
    assert_eq!(calls.last().expect("a call")["from"], "009");
}
on_both_backends!(
    the_call_log_shows_the_robots_callbacks_newest_first_and_saved_settings_apply_next_run
);

async fn the_wait_for_the_outcome_is_saved_and_a_bound_out_of_range_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = bare_portal(&app, "outcome").await;
    let page = open_app(&app, &p, 1, "ru").await;
    assert!(
        page.body.contains("Робот ждёт итога звонка"),
        "{}",
        page.body
    );
    let en = open_app(&app, &p, 1, "en").await;
    assert!(
        en.body.contains("The robot waits for the call"),
        "{}",
        en.body
    );
    let token = page_token(&en.body);

    for bad in ["0", "1441", "ten", "99999999999"] {
        let mut form = good_form(&token, "002");
        form.extend([("wait_for_outcome", "on"), ("outcome_wait_minutes", bad)]);
        let r = post(&app, "/b24/app/settings?LANG=en", None, enc(&form)).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(
            r.body.contains("id=\"error-outcome_wait_minutes\""),
            "{bad}"
        );
        assert!(
            stored_settings(&app, &p.member_id).await.is_none(),
            "{bad}: nothing stored"
        );
    }
    let mut form = good_form(&token, "002");
    form.extend([("wait_for_outcome", "on"), ("outcome_wait_minutes", "45")]);
    let r = post(&app, "/b24/app/settings?LANG=en", None, enc(&form)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = stored_settings(&app, &p.member_id).await.expect("saved");
    assert_eq!((s.wait_for_outcome, s.outcome_wait_minutes), (true, 45));
    assert!(r
        .body
        .contains("id=\"wait_for_outcome\" name=\"wait_for_outcome\" value=\"on\" checked"));

    // An unticked box is absent from the form: the robot no longer waits.
    let r = post(
        &app,
        "/b24/app/settings?LANG=en",
        None,
        enc(&good_form(&token, "002")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = stored_settings(&app, &p.member_id).await.expect("saved");
    assert_eq!((s.wait_for_outcome, s.outcome_wait_minutes), (false, 45));
}
on_both_backends!(the_wait_for_the_outcome_is_saved_and_a_bound_out_of_range_is_refused);

async fn retry_rules_are_saved_and_numbers_out_of_range_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = bare_portal(&app, "retries").await;
    let page = open_app(&app, &p, 1, "ru").await;
    assert!(page.body.contains("Повторные звонки"), "{}", page.body);
    let token = page_token(&page.body);
    for (field, bad) in [
        ("retry_no_answer_times", "6"),
        ("retry_no_answer_times", "-1"),
        ("retry_no_answer_minutes", "0"),
        ("retry_client_times", "1.5"),
        ("retry_client_minutes", "1441"),
    ] {
        let mut form = good_form(&token, "002");
        form.push(("retry_form", "1"));
        for (k, v) in [
            ("retry_no_answer_times", "2"),
            ("retry_no_answer_minutes", "5"),
            ("retry_client_times", "1"),
            ("retry_client_minutes", "10"),
        ] {
            form.push((k, if k == field { bad } else { v }));
        }
        let r = post(&app, "/b24/app/settings?LANG=ru", None, enc(&form)).await;
        assert_eq!(r.status, 400, "{field}={bad}");
        assert!(
            r.body.contains(&format!("id=\"error-{field}\"")),
            "{field}={bad}"
        );
        assert!(
            stored_settings(&app, &p.member_id).await.is_none(),
            "{field}={bad}: nothing stored"
        );
    }
    let mut form = good_form(&token, "002");
    form.extend([
        ("retry_form", "1"),
        ("retry_no_answer_times", "3"),
        ("retry_no_answer_minutes", "15"),
        ("retry_escalate", "on"),
        ("retry_client_times", "0"),
        ("retry_client_minutes", "10"),
    ]);
    let r = post(&app, "/b24/app/settings?LANG=en", None, enc(&form)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = stored_settings(&app, &p.member_id).await.expect("saved");
    assert_eq!(
        (
            s.retry_no_answer_times,
            s.retry_no_answer_minutes,
            s.retry_escalate,
            s.retry_client_times
        ),
        (3, 15, true, 0)
    );
    // A form without the section (a page from before it existed) keeps the stored rules.
    let r = post(
        &app,
        "/b24/app/settings?LANG=en",
        None,
        enc(&good_form(&token, "002")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = stored_settings(&app, &p.member_id).await.expect("saved");
    assert_eq!((s.retry_no_answer_times, s.retry_escalate), (3, true));
}
on_both_backends!(retry_rules_are_saved_and_numbers_out_of_range_are_refused);
