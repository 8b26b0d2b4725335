//! Forged and hostile requests at every route, as an attacker with a real account on some portal
//! would send them: each is refused with its 4xx, nothing stored changes, and a genuine robot call
//! right after still completes.

use mango_callback::db::Backend;
use mango_callback::http::settings_page::page_token::PageToken;
use mango_callback::sandbox::bitrix::RobotCallStyle;

use crate::helpers::{spawn_app, TestApp, MANGO_KEY, MANGO_SALT};
use crate::on_both_backends;

const SQL: &str = "x'; DROP TABLE portals; --";
const HTML: &str = "<script>alert(1)</script>";

/// One hostile request and the statuses that count as refusing it.
struct Row {
    name: String,
    path: String,
    body: String,
    page_token: Option<String>,
    /// Accepted answers; a replay of a genuine notification may be acknowledged (Mango retries)
    /// but must change nothing.
    expect: &'static [u16],
}

fn row(name: &str, path: &str, body: String, expect: &'static [u16]) -> Row {
    Row {
        name: name.to_owned(),
        path: path.to_owned(),
        body,
        page_token: None,
        expect,
    }
}

/// Replaces (or adds) form fields of an urlencoded body.
fn with_fields(body: &str, changes: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = serde_urlencoded::from_str(body).expect("a form body");
    for (k, v) in changes {
        match pairs.iter_mut().find(|(pk, _)| pk == k) {
            Some(p) => p.1 = (*v).to_owned(),
            None => pairs.push(((*k).to_owned(), (*v).to_owned())),
        }
    }
    serde_urlencoded::to_string(pairs).expect("encodable")
}

fn without_field(body: &str, key: &str) -> String {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(body).expect("a form body");
    serde_urlencoded::to_string(
        pairs
            .into_iter()
            .filter(|(k, _)| k != key)
            .collect::<Vec<_>>(),
    )
    .expect("encodable")
}

fn mango_form(key: &str, json: &str, sign: &str) -> String {
    serde_urlencoded::to_string([("vpbx_api_key", key), ("sign", sign), ("json", json)])
        .expect("encodable")
}

async fn post_with_token(app: &TestApp, r: &Row) -> (u16, String) {
    let mut req = app
        .http
        .post(format!("{}{}", app.base, r.path))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"));
    if let Some(t) = &r.page_token {
        req = req.insert_header(("X-Page-Token", t.as_str()));
    }
    let mut resp = req
        .send_body(r.body.clone())
        .await
        .expect("request reaches the app");
    let body = resp.body().limit(1 << 20).await.expect("body");
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn every_route_refuses_forged_and_hostile_requests_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.installed_portal("victim").await;
    let b = app.installed_portal("other").await;
    let a_id = a.member_id.as_str();
    // A manager of portal A: a real Bitrix24 account, not an administrator.
    app.b24.add_user(a_id, 7, false);

    // A genuine callback whose Mango result is already recorded (the replay target).
    let contact = app.b24.add_contact(a_id, &[("MOBILE", "+7 900 111-22-33")]);
    let deal = app.b24.add_deal(a_id, Some(contact));
    let fired = app
        .b24
        .fire_robot(a_id, "mango_callback", deal, &[])
        .await
        .expect("robot");
    assert_eq!(fired.status, 200, "{}", fired.body);
    app.drain().await;
    let command_id = app.command_id(0);
    let mango_url = app.mango_url();
    let status = app
        .mango
        .post_result(&mango_url, MANGO_KEY, &command_id, 1000)
        .await
        .expect("posted");
    assert_eq!(status, 200);

    let robot = app.robot_body(&a, deal, &[], RobotCallStyle::default());
    let b_robot = app.robot_body(&b, deal, &[], RobotCallStyle::default());
    let b_app_token = app.b24.application_token(&b.member_id);
    let manager = app.b24.login(a_id, 7);
    let b_admin = app.b24.login(&b.member_id, 1);
    let install_event = app.b24.onappinstall_body(a_id);
    let installer = app.b24.iframe_request(a_id, 1, "DEFAULT", "en");
    let installer_body = installer.to_form_body();
    let installer_path = format!("/b24/install?{}", installer.query_string());
    let now = app.clock.now_utc().timestamp();
    let manager_page = PageToken::new(a_id, 7, false, now).encode(&app.shared.cipher);
    let expired_page = PageToken::new(a_id, 1, true, now - 2 * 3600).encode(&app.shared.cipher);
    let forged_page = {
        let genuine = PageToken::new(a_id, 1, true, now).encode(&app.shared.cipher);
        let mut chars: Vec<char> = genuine.chars().collect();
        let last = chars.len() - 1;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect::<String>()
    };
    let settings_form = serde_urlencoded::to_string([
        ("mango_api_key", HTML),
        ("mango_api_salt", SQL),
        ("line_number", "74950000000"),
        ("trainee_extension", "666"),
        ("experienced_extension", "667"),
        ("duplicate_window_minutes", "99999999999999999999"),
        ("contact_wait_seconds", "-1"),
    ])
    .expect("form");
    let good_json = serde_json::json!({ "command_id": command_id, "result": 2240 }).to_string();
    let replay_sign = mango_callback::mango::sign::sign(MANGO_KEY, &good_json, MANGO_SALT);

    const UNAUTHORISED: &[u16] = &[401];
    const FORBIDDEN: &[u16] = &[403];
    const BAD: &[u16] = &[400];
    const REFUSED: &[u16] = &[400, 401, 403];
    let mut rows = vec![
        // The robot handler: only a matching application token of an active portal gets in.
        row("robot call without an application token", "/b24/robot", without_field(&robot, "auth[application_token]"), UNAUTHORISED),
        row("robot call with a wrong application token", "/b24/robot", with_fields(&robot, &[("auth[application_token]", "0123456789abcdef0123456789abcdef")]), UNAUTHORISED),
        row("robot call with another portal's application token", "/b24/robot", with_fields(&robot, &[("auth[application_token]", &b_app_token)]), UNAUTHORISED),
        row("robot call of portal B claiming portal A", "/b24/robot", with_fields(&b_robot, &[("auth[member_id]", a_id)]), UNAUTHORISED),
        row("robot call for an unknown portal with SQL in member_id", "/b24/robot", with_fields(&robot, &[("auth[member_id]", SQL)]), UNAUTHORISED),
        row("robot call with HTML as application token", "/b24/robot", with_fields(&robot, &[("auth[application_token]", HTML)]), UNAUTHORISED),
        row("robot call with a malformed form", "/b24/robot", "auth[member_id]=%ZZ&&&[[[".into(), REFUSED),
        row("robot call with absurd numbers and no valid token", "/b24/robot", with_fields(&robot, &[("auth[application_token]", "x"), ("auth[expires_in]", "99999999999999999"), ("ts", "-99999999999999999999"), ("timeout_duration", "1e308")]), UNAUTHORISED),
        // Lifecycle events.
        row("uninstall with a wrong application token", "/b24/events", format!("event=ONAPPUNINSTALL&data[CLEAN]=1&auth[member_id]={a_id}&auth[application_token]=0123456789abcdef0123456789abcdef"), UNAUTHORISED),
        row("uninstall of A with B's application token", "/b24/events", format!("event=ONAPPUNINSTALL&data[CLEAN]=1&auth[member_id]={a_id}&auth[application_token]={b_app_token}"), UNAUTHORISED),
        row("update with a manager's real token and a chosen application token", "/b24/events", with_fields(&install_event, &[("event", "ONAPPUPDATE"), ("auth[access_token]", &manager.access_token), ("auth[refresh_token]", &manager.refresh_token), ("auth[user_id]", "7"), ("auth[application_token]", "attacker0attacker0attacker0attac")]), FORBIDDEN),
        row("update with portal B's admin token claiming A", "/b24/events", with_fields(&install_event, &[("event", "ONAPPUPDATE"), ("auth[access_token]", &b_admin.access_token), ("auth[application_token]", "attacker0attacker0attacker0attac")]), FORBIDDEN),
        row("update without an access token", "/b24/events", without_field(&with_fields(&install_event, &[("event", "ONAPPUPDATE"), ("auth[application_token]", "attacker0attacker0attacker0attac")]), "auth[access_token]"), UNAUTHORISED),
        row("update with an absurd token lifetime", "/b24/events", with_fields(&install_event, &[("event", "ONAPPUPDATE"), ("auth[expires_in]", "99999999999999999")]), BAD),
        row("another event with a wrong application token", "/b24/events", format!("event=ONCRMDEALADD&auth[member_id]={a_id}&auth[application_token]={}", urlencode(HTML)), UNAUTHORISED),
        // Installation.
        row("ONAPPINSTALL with a manager's real token and a chosen application token", "/b24/install", with_fields(&install_event, &[("auth[access_token]", &manager.access_token), ("auth[refresh_token]", &manager.refresh_token), ("auth[user_id]", "7"), ("auth[application_token]", "attacker0attacker0attacker0attac")]), FORBIDDEN),
        row("ONAPPINSTALL with a made-up token", "/b24/install", with_fields(&install_event, &[("auth[access_token]", "deadbeefdeadbeefdeadbeefdeadbeef")]), UNAUTHORISED),
        row("ONAPPINSTALL with an absurd token lifetime", "/b24/install", with_fields(&install_event, &[("auth[expires_in]", "99999999999999999")]), BAD),
        row("ONAPPINSTALL with SQL as member_id", "/b24/install", with_fields(&install_event, &[("auth[member_id]", SQL)]), FORBIDDEN),
        row("installer with a manager's real token", &installer_path, with_fields(&installer_body, &[("AUTH_ID", &manager.access_token), ("REFRESH_ID", &manager.refresh_token), ("APPLICATION_TOKEN", "attacker0attacker0attacker0attac")]), FORBIDDEN),
        row("installer with portal B's admin token claiming A", &installer_path, with_fields(&installer_body, &[("AUTH_ID", &b_admin.access_token), ("APPLICATION_TOKEN", "attacker0attacker0attacker0attac")]), FORBIDDEN),
        row("installer with a made-up AUTH_ID and HTML everywhere", &installer_path, with_fields(&installer_body, &[("AUTH_ID", HTML), ("DOMAIN", HTML), ("APPLICATION_TOKEN", HTML)]), UNAUTHORISED),
        row("installer with an absurd AUTH_EXPIRES", &installer_path, with_fields(&installer_body, &[("AUTH_EXPIRES", "99999999999999999")]), BAD),
        // The app page and its later requests.
        row("app page with a made-up AUTH_ID", "/b24/app?LANG=en", with_fields(&installer_body, &[("AUTH_ID", SQL)]), UNAUTHORISED),
        row("app page without AUTH_ID", "/b24/app?LANG=en", without_field(&installer_body, "AUTH_ID"), UNAUTHORISED),
        row("settings save without a page token", "/b24/app/settings?LANG=en", settings_form.clone(), UNAUTHORISED),
        Row { page_token: Some(forged_page.clone()), ..row("settings save with a forged page token", "/b24/app/settings?LANG=en", settings_form.clone(), UNAUTHORISED) },
        Row { page_token: Some(expired_page.clone()), ..row("settings save with an expired page token", "/b24/app/settings?LANG=en", settings_form.clone(), UNAUTHORISED) },
        Row { page_token: Some(manager_page.clone()), ..row("settings save with a manager's genuine page token", "/b24/app/settings?LANG=en", settings_form.clone(), FORBIDDEN) },
        Row { page_token: Some(HTML.into()), ..row("Mango check with HTML as page token", "/b24/app/mango/check?LANG=en", settings_form.clone(), UNAUTHORISED) },
        Row { page_token: Some(manager_page.clone()), ..row("Mango check with a manager's page token", "/b24/app/mango/check?LANG=en", settings_form.clone(), FORBIDDEN) },
        Row { page_token: Some(forged_page.clone()), ..row("Mango options with a forged page token", "/b24/app/mango/options?LANG=en", String::new(), UNAUTHORISED) },
        // Mango notifications.
        row("Mango result with a bad signature", "/mango/result/callback_group", mango_form(MANGO_KEY, &good_json, &"0".repeat(64)), UNAUTHORISED),
        row("Mango result with an unknown key", "/mango/result/callback_group", mango_form(SQL, &good_json, &replay_sign), UNAUTHORISED),
        row("Mango result without a signature", "/mango/result/callback_group", format!("vpbx_api_key={MANGO_KEY}&json={}", urlencode(&good_json)), BAD),
        row("a replayed Mango result with another outcome", "/mango/result/callback_group", mango_form(MANGO_KEY, &good_json, &replay_sign), &[200, 400, 409]),
    ];
    // Every value of every field replaced by SQL or HTML: never accepted, never stored.
    for (label, base, path) in [
        ("robot", &robot, "/b24/robot"),
        ("event", &install_event, "/b24/events"),
    ] {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(base).expect("form");
        for (k, _) in pairs.iter().filter(|(k, _)| k != "event") {
            for evil in [SQL, HTML] {
                let body = with_fields(base, &[(k, evil)]);
                // Changing a field other than the credentials leaves a genuine, verified call:
                // those are the robot's business (a failed report), not this table's.
                if label == "robot" && !k.starts_with("auth[") {
                    continue;
                }
                // The credentials of robot calls and events are the portal id and the
                // application token; their access token proves nothing and is not used.
                if k == "auth[member_id]" || k == "auth[application_token]" {
                    rows.push(row(
                        &format!("{label} with {evil:?} in {k}"),
                        path,
                        body,
                        REFUSED,
                    ));
                }
            }
        }
    }

    let mut before = app.snapshot().await;
    let mut failures = Vec::new();
    for r in &rows {
        let (status, body) = post_with_token(&app, r).await;
        if !r.expect.contains(&status) {
            failures.push(format!(
                "{}: got {status}, expected {:?}: {}",
                r.name,
                r.expect,
                body.chars().take(200).collect::<String>()
            ));
        }
        if body.contains(HTML) {
            failures.push(format!("{}: the answer echoes raw HTML", r.name));
        }
        // Jobs it may have left run too: their effects count as the request's.
        app.drain().await;
        let after = app.snapshot().await;
        if after != before {
            let changed: Vec<&str> = after.lines().filter(|l| !before.contains(l)).collect();
            failures.push(format!("{}: the database changed: {changed:?}", r.name));
            before = after;
        }
    }
    assert!(
        failures.is_empty(),
        "{} findings across {} hostile requests:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    assert_eq!(
        app.b24.robots(a_id).len(),
        1,
        "the robot is still registered"
    );

    // The genuine robot still works, with the genuine application token.
    crate::security::genuine_robot_call_completes(&app, a_id).await;
}
on_both_backends!(every_route_refuses_forged_and_hostile_requests_and_changes_nothing);

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("x", s)])
        .expect("encodable")
        .trim_start_matches("x=")
        .to_owned()
}
