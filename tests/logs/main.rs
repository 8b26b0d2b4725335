//! The logs of a whole scenario hold no secret. This binary installs its own global subscriber
//! at TRACE for every target (the app's, actix's, awc's, through the `log` bridge too) writing
//! into memory, before `spawn_app` tries to install the usual one; then it runs install, the
//! settings page, robot calls, a forced token refresh, a Mango notification and an uninstall,
//! and looks for every secret the scenario used in everything that was logged.
//!
//! A separate test binary because the subscriber is global to the process: in `tests/api` the
//! first test to start would decide the level for all of them.

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod format;

use std::io::Write;
use std::sync::{Mutex, Once, PoisonError};

use mango_callback::db::Backend;
use mango_callback::sandbox::bitrix::{RobotCallStyle, SimPortal, SANDBOX_CLIENT_SECRET};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::EnvFilter;

use helpers::{
    spawn_app, MangoAccount, TestApp, EXPERIENCED, LINE, MANGO_ACCOUNT, MANGO_KEY, TRAINEES,
};

const ROBOT: &str = "mango_callback";

/// Everything any thread of this process logged.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber once for the process; `RUST_LOG` is ignored on purpose.
fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("trace"))
            .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
            .with_writer(|| Capture)
            .with_ansi(false)
            .try_init()
            .expect("this binary installs the first global subscriber");
    });
}

fn captured() -> String {
    captured_since(0)
}

/// What was logged after `start` (a length of the capture taken earlier).
fn captured_since(start: usize) -> String {
    let logs = LOGS.lock().unwrap_or_else(PoisonError::into_inner);
    String::from_utf8_lossy(logs.get(start..).unwrap_or_default()).into_owned()
}

/// What was logged between two lengths of the capture.
fn captured_between(start: usize, end: usize) -> String {
    let logs = LOGS.lock().unwrap_or_else(PoisonError::into_inner);
    String::from_utf8_lossy(logs.get(start..end).unwrap_or_default()).into_owned()
}

fn captured_len() -> usize {
    LOGS.lock().unwrap_or_else(PoisonError::into_inner).len()
}

/// The tests of this binary take turns, so that one reads only its own requests' lines.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn post(app: &TestApp, path: &str, page_token: Option<&str>, body: String) -> (u16, String) {
    let mut req = app
        .http
        .post(format!("{}{}", app.base, path))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"));
    if let Some(t) = page_token {
        req = req.insert_header(("X-Page-Token", t));
    }
    let mut resp = req.send_body(body).await.expect("request reaches the app");
    let status = resp.status().as_u16();
    let body = resp.body().limit(1 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn page_token(html: &str) -> String {
    let marker = "name=\"page_token\" value=\"";
    let start = html.find(marker).expect("the page carries a page token") + marker.len();
    let len = html[start..].find('"').expect("closing quote");
    html[start..start + len].to_owned()
}

/// Opens the app (or the installer) the way the portal's iframe does; returns status and page.
async fn open(app: &TestApp, p: &SimPortal, path: &str, lang: &str) -> (u16, String) {
    let req = app.b24.iframe_request(&p.member_id, 1, "DEFAULT", lang);
    post(
        app,
        &format!("{path}?{}", req.query_string()),
        None,
        req.to_form_body(),
    )
    .await
}

async fn the_logs_of_a_whole_scenario_hold_no_secret(backend: Backend) {
    capture_logs();
    let _turn = SERIAL.lock().await;
    let app = spawn_app(backend).await;
    let salt = format!("log-test-salt-{}", uuid::Uuid::new_v4().simple());
    MangoAccount {
        salt: &salt,
        ..MANGO_ACCOUNT
    }
    .add_to(&app.mango);
    let p = app.b24.create_portal("logs");
    let mut secrets: Vec<(&str, String)> = Vec::new();

    // Install, open the settings page, save the Mango keys through the form, check them.
    let (status, page) = open(&app, &p, "/b24/install", "ru").await;
    assert_eq!(status, 200, "installer: {page}");
    let (status, page) = open(&app, &p, "/b24/app", "en").await;
    assert_eq!(status, 200, "app page: {page}");
    let token = page_token(&page);
    let form = serde_urlencoded::to_string([
        ("page_token", token.as_str()),
        ("mango_api_key", MANGO_KEY),
        ("mango_api_salt", salt.as_str()),
        ("line_number", LINE),
        ("trainee_extension", TRAINEES),
        ("experienced_extension", EXPERIENCED),
        ("duplicate_window_minutes", "15"),
        ("contact_wait_seconds", "30"),
    ])
    .expect("encodable");
    let (status, page) = post(&app, "/b24/app/settings?LANG=en", None, form).await;
    assert_eq!(status, 200, "settings: {page}");
    assert!(page.contains("Settings saved"), "{page}");
    secrets.push(("page token", token));
    let token = page_token(&page);
    let (status, answer) = post(&app, "/b24/app/mango/check", Some(&token), String::new()).await;
    assert_eq!(status, 200, "check: {answer}");
    secrets.push(("page token", token));

    // Robot calls; Mango's result for the first; a forced refresh before the second.
    let contact = app
        .b24
        .add_contact(&p.member_id, &[("MOBILE", "8 (900) 123-45-67")]);
    let first = app.b24.add_deal(&p.member_id, Some(contact));
    let fired = app
        .b24
        .fire_robot_styled(
            &p.member_id,
            ROBOT,
            first,
            &[],
            RobotCallStyle {
                percent_encoded_brackets: true,
                old_core: false,
            },
        )
        .await
        .expect("robot");
    assert_eq!(fired.status, 200, "{}", fired.body);
    app.drain().await;
    let command_id = app.command_id(0);
    let mango_url = app.mango_url();
    let status = app
        .mango
        .post_result(&mango_url, MANGO_KEY, &command_id, 1000)
        .await;
    assert_eq!(status, Ok(200));

    app.b24.expire_access_tokens(&p.member_id);
    let second = app.b24.add_deal(&p.member_id, Some(contact));
    let fired = app
        .b24
        .fire_robot(&p.member_id, ROBOT, second, &[])
        .await
        .expect("robot");
    assert_eq!(fired.status, 200, "{}", fired.body);
    app.drain().await;
    assert!(
        app.b24.refresh_count(&p.member_id) >= 1,
        "the tokens were refreshed"
    );
    assert_eq!(app.mango.callbacks().len(), 2);

    // Refusals log the most: genuine tokens in requests that are refused all the same.
    let third = app.b24.add_deal(&p.member_id, Some(contact));
    let bogus_group = app.robot_body(&p, third, &[("group", "bogus")], RobotCallStyle::default());
    let (status, answer) = post(&app, "/b24/robot", None, bogus_group).await;
    assert!(status < 500, "{status}: {answer}");
    let wrong_token = app
        .robot_body(&p, third, &[], RobotCallStyle::default())
        .replace(&p.application_token, "0123456789abcdef0123456789abcdef");
    let (status, answer) = post(&app, "/b24/robot", None, wrong_token).await;
    assert_eq!(status, 401, "{answer}");
    let mut other_portal = app.b24.iframe_request(&p.member_id, 1, "DEFAULT", "en");
    for (k, v) in other_portal.form.iter_mut() {
        if k == "member_id" {
            *v = "fedcba9876543210fedcba9876543210".into();
        }
    }
    let (status, answer) = post(
        &app,
        &format!("/b24/app?{}", other_portal.query_string()),
        None,
        other_portal.to_form_body(),
    )
    .await;
    assert!((400..500).contains(&status), "{status}: {answer}");

    let statuses = app
        .b24
        .send_event(&p.member_id, "ONAPPUNINSTALL", &[("CLEAN", "0")])
        .await
        .expect("event");
    assert_eq!(statuses, vec![200]);

    // Every secret of the scenario, then the search.
    for t in app.b24.issued_tokens(&p.member_id) {
        secrets.push(("access or refresh token", t));
    }
    for t in app.b24.issued_event_tokens(&p.member_id) {
        secrets.push(("event token", t));
    }
    secrets.push(("application token", p.application_token.clone()));
    secrets.push(("Mango salt", salt));
    secrets.push(("client_secret", SANDBOX_CLIENT_SECRET.to_owned()));
    secrets.push((
        "APP_SECRET_KEY",
        app.shared.settings.secret_key.expose_text().to_owned(),
    ));

    let logs = captured();
    for needle in [
        "robot call accepted",
        "Bitrix24 tokens refreshed",
        "Mango reported the callback_group result",
        "app uninstalled from the portal",
        "reason=unknown portal or wrong application token",
        "request refused",
        p.member_id.as_str(),
    ] {
        assert!(
            logs.contains(needle),
            "the capture misses {needle:?}, so it proves nothing:\n{logs}"
        );
    }
    assert!(
        secrets.len() > 10,
        "the scenario used many secrets: {}",
        secrets.len()
    );
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is too short to search for");
        if let Some(line) = logs.lines().find(|l| l.contains(secret.as_str())) {
            panic!("{what} reached the logs:\n{line}");
        }
    }
}
on_both_backends!(the_logs_of_a_whole_scenario_hold_no_secret);

async fn each_refused_request_is_logged_once_with_its_client_address_path_and_status(
    backend: Backend,
) {
    capture_logs();
    let _turn = SERIAL.lock().await;
    let app = spawn_app(backend).await;
    let stranger = "0123456789abcdef0123456789abcdef";
    let start = captured_len();

    // Refused by a handler that used to log the refusal itself before the error logged it again.
    let robot = format!(
        "auth%5Bmember_id%5D={stranger}&auth%5Bapplication_token%5D=0123456789abcdef0123456789abcdef"
    );
    let (status, answer) = post(&app, "/b24/robot", None, robot).await;
    assert_eq!(status, 401, "{answer}");
    let event = format!("event=ONAPPUNINSTALL&auth%5Bmember_id%5D={stranger}");
    let (status, answer) = post(&app, "/b24/events", None, event).await;
    assert_eq!(status, 401, "{answer}");
    let mango = "vpbx_api_key=nobody&sign=00&json=%7B%7D".to_owned();
    let (status, answer) = post(&app, "/mango/events/call", None, mango).await;
    assert_eq!(status, 401, "{answer}");
    // Refused with an HTML page, which used to leave no "request refused" line at all.
    let page = format!("member_id={stranger}&DOMAIN=x.bitrix24.ru");
    let (status, answer) = post(&app, "/b24/app?LANG=en", None, page).await;
    assert_eq!(status, 401, "{answer}");
    // A throttled "Check connection": the second within 5 s is refused with a 429.
    let p = app.installed_portal("refusals").await;
    let (status, page) = open(&app, &p, "/b24/app", "en").await;
    assert_eq!(status, 200, "app page: {page}");
    let token = page_token(&page);
    let start_check = captured_len();
    let (status, answer) = post(&app, "/b24/app/mango/check", Some(&token), String::new()).await;
    assert_eq!(status, 200, "check: {answer}");
    let (status, answer) = post(&app, "/b24/app/mango/check", Some(&token), String::new()).await;
    assert_eq!(status, 429, "check again: {answer}");
    let throttled: Vec<String> = captured_since(start_check)
        .lines()
        .filter(|l| l.contains("throttled"))
        .map(str::to_owned)
        .collect();
    assert_eq!(throttled.len(), 1, "{throttled:?}");
    for needle in ["request refused", "path=/b24/app/mango/check", "status=429"] {
        assert!(
            throttled[0].contains(needle),
            "{needle} in {}",
            throttled[0]
        );
    }

    let logs = captured_between(start, start_check);
    let refusals: Vec<&str> = logs.lines().filter(|l| l.contains("refused")).collect();
    assert_eq!(
        refusals.len(),
        4,
        "one line per refused request:\n{}",
        refusals.join("\n")
    );
    for path in [
        "/b24/robot",
        "/b24/events",
        "/mango/events/call",
        "/b24/app",
    ] {
        let lines: Vec<&&str> = refusals
            .iter()
            .filter(|l| l.contains(&format!(" path={path} ")))
            .collect();
        assert_eq!(lines.len(), 1, "{path}: {lines:?}");
        for needle in ["request refused", "peer=127.0.0.1", "status=401", "reason="] {
            assert!(
                lines[0].contains(needle),
                "{path}: {needle} in {}",
                lines[0]
            );
        }
    }
}
on_both_backends!(each_refused_request_is_logged_once_with_its_client_address_path_and_status);
