//! The browser test: Debian's `chromium` driven through `chromedriver` (WebDriver) by fantoccini,
//! on the settings page as an administrator uses it.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fantoccini::{Client, ClientBuilder, Locator};
use mango_callback::db::Backend;
use mango_callback::sandbox::bitrix::SimPortal;

use crate::helpers::{spawn_app, TestApp, LINE, MANGO_ACCOUNT, MANGO_KEY, MANGO_SALT};
use crate::settings::{bare_portal, ROBOT};

/// chromedriver on a free port, killed (by its own handle) when the test ends.
pub(crate) struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

pub(crate) fn start_driver() -> Driver {
    // `helpers::can_run_browser` has found it (or failed the test under CI=true).
    let driver = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| find_in_path("chromedriver"))
        .unwrap_or_else(|| {
            panic!(
                "chromedriver not found: install Debian's `chromium` and `chromium-driver` \
                 (apt-get install -y chromium chromium-driver) or set CHROMEDRIVER"
            )
        });
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
    let d = Driver { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on port {port} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d
}

pub(crate) async fn browser(driver: &Driver, profile: &Path) -> Client {
    let binary = find_in_path("chromium").map(|p| p.display().to_string());
    let mut opts = serde_json::json!({
        "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
            "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1200,1700",
            format!("--user-data-dir={}", profile.display()),
        ]
    });
    if let Some(b) = binary {
        opts["binary"] = serde_json::Value::String(b);
    }
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), "chrome".into());
    caps.insert("goog:chromeOptions".into(), opts);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .unwrap_or_else(|e| panic!("chromium did not start through chromedriver: {e}"))
}

fn attr_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A `data:` page whose form auto-submits the iframe fields to the app, as Bitrix24 does.
pub(crate) fn launcher(app: &TestApp, portal: &SimPortal, user: u64, lang: &str) -> String {
    let req = app
        .b24
        .iframe_request(&portal.member_id, user, "DEFAULT", lang);
    let mut html = format!(
        "<!doctype html><form id=\"f\" method=\"post\" action=\"{}\">",
        attr_escape(&format!("{}/b24/app?{}", app.base, req.query_string()))
    );
    for (k, v) in &req.form {
        html.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            attr_escape(k),
            attr_escape(v)
        ));
    }
    html.push_str("</form><script>document.getElementById('f').submit()</script>");
    format!(
        "data:text/html;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(html)
    )
}

async fn fill(c: &Client, id: &str, value: &str) {
    let e = c
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"));
    e.clear().await.expect("clear");
    if !value.is_empty() {
        e.send_keys(value).await.expect("type");
    }
}

async fn value_of(c: &Client, id: &str) -> String {
    c.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .prop("value")
        .await
        .expect("value")
        .unwrap_or_default()
}

pub(crate) async fn wait_for(c: &Client, id: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id} did not appear: {e}"))
}

/// Waits until an element's text contains `needle` (for answers filled in by the script).
async fn wait_text(c: &Client, id: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = wait_for(c, id).await.text().await.unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "#{id} never said {needle:?}; it says {text:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn screenshot(c: &Client, name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-output");
    std::fs::create_dir_all(&dir).expect("test-output dir");
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(name), png).expect("screenshot written");
}

async fn run(c: &Client, app: &TestApp, p: &SimPortal) {
    // Russian: fill the keys, load the pickers from Mango, then save with a bad extension.
    c.goto(&launcher(app, p, 1, "ru")).await.expect("open");
    wait_for(c, "settings").await;
    fill(c, "mango_api_key", MANGO_KEY).await;
    fill(c, "mango_api_salt", MANGO_SALT).await;
    c.find(Locator::Id("load"))
        .await
        .expect("load")
        .click()
        .await
        .expect("click");
    wait_text(c, "load-result", "Загружено групп: 2").await;
    let options = c
        .execute(
            "return document.querySelectorAll('#groups-list option').length",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(options, serde_json::json!(2), "the group picker is filled");
    fill(c, "line_number", LINE).await;
    fill(c, "trainee_extension", "12a").await;
    fill(c, "experienced_extension", "001").await;
    fill(c, "duplicate_window_minutes", "20").await;
    // Working hours that close before they open.
    fill(c, "work_end", "08:00").await;
    c.find(Locator::Id("save"))
        .await
        .expect("save")
        .click()
        .await
        .expect("click");
    let err = wait_for(c, "error-trainee_extension").await;
    assert!(err.text().await.expect("text").contains("от 1 до 10 цифр"));
    let err = wait_for(c, "error-work_end").await;
    assert!(err.text().await.expect("text").contains("позже начала"));
    assert_eq!(value_of(c, "trainee_extension").await, "12a");
    assert_eq!(
        value_of(c, "mango_api_salt").await,
        "",
        "the salt is never echoed"
    );
    screenshot(c, "settings-ru-validation.png").await;

    // Fixed: the salt has to be typed again (nothing was stored), then it saves.
    fill(c, "trainee_extension", "002").await;
    fill(c, "mango_api_salt", MANGO_SALT).await;
    // Open round the clock every day, so the robot calls below are placed at once whenever
    // the test runs; the holiday is in the past.
    fill(c, "work_start", "00:00").await;
    fill(c, "work_end", "24:00").await;
    fill(c, "holidays", "2026-01-07").await;
    for id in ["hours_enabled", "work_day_6", "work_day_7"] {
        c.find(Locator::Id(id))
            .await
            .expect(id)
            .click()
            .await
            .expect("click");
    }
    c.find(Locator::Id("save"))
        .await
        .expect("save")
        .click()
        .await
        .expect("click");
    wait_text(c, "notice", "Настройки сохранены").await;

    // Check connection with the stored keys (the salt field is empty again), at the page's
    // next turn to ask Mango.
    app.advance(mango_callback::portal::throttle::PAGE_INTERVAL);
    c.find(Locator::Id("check"))
        .await
        .expect("check")
        .click()
        .await
        .expect("click");
    wait_text(c, "check-result", "Ключи работают").await;
    // "Load from Mango" at once: the server's throttle answers 429, the script says why.
    c.find(Locator::Id("load"))
        .await
        .expect("load")
        .click()
        .await
        .expect("click");
    wait_text(c, "load-result", "не чаще раза в 5 секунд").await;

    // Reopened: the saved state, the salt only as "set".
    c.goto(&launcher(app, p, 1, "ru")).await.expect("reopen");
    wait_for(c, "settings").await;
    assert_eq!(value_of(c, "trainee_extension").await, "002");
    assert_eq!(value_of(c, "experienced_extension").await, "001");
    assert_eq!(value_of(c, "line_number").await, LINE);
    assert_eq!(value_of(c, "duplicate_window_minutes").await, "20");
    assert_eq!(value_of(c, "work_end").await, "24:00");
    assert_eq!(value_of(c, "holidays").await, "2026-01-07");
    let checked = |id: &'static str| async move {
        c.find(Locator::Id(id))
            .await
            .expect(id)
            .prop("checked")
            .await
            .expect("checked")
    };
    assert_eq!(checked("hours_enabled").await.as_deref(), Some("true"));
    assert_eq!(checked("work_day_7").await.as_deref(), Some("true"));
    wait_for(c, "salt-set").await;
    let health = wait_for(c, "health").await.text().await.expect("text");
    assert!(health.contains("Mango: ключи работают"), "{health}");
    screenshot(c, "settings-ru.png").await;

    // English, with a few calls in the log.
    for phone in ["89001234567", "+7 911 000-00-01"] {
        let deal = app.b24.add_deal(&p.member_id, None);
        app.b24
            .fire_robot(&p.member_id, ROBOT, deal, &[("phone", phone)])
            .await
            .expect("robot");
        app.drain().await;
        app.advance(Duration::from_secs(2));
    }
    c.goto(&launcher(app, p, 1, "en")).await.expect("open en");
    wait_for(c, "call-log").await;
    let log = wait_for(c, "call-log").await.text().await.expect("text");
    assert!(
        log.contains("*******4567") && log.contains("call started"),
        "{log}"
    );
    let body = c.source().await.expect("source");
    assert!(!body.contains(MANGO_SALT), "no salt in the page");
    screenshot(c, "settings-en.png").await;
}

#[actix_web::test]
async fn a_real_browser_fills_saves_and_reopens_the_settings_in_russian_and_english() {
    if !crate::helpers::can_run_browser(concat!(
        module_path!(),
        "::a_real_browser_fills_saves_and_reopens_the_settings_in_russian_and_english"
    )) {
        return;
    }
    let driver = start_driver();
    let profile = tempfile::tempdir().expect("profile dir");
    let app = spawn_app(Backend::Sqlite).await;
    let p = bare_portal(&app, "browser").await;
    MANGO_ACCOUNT.add_to(&app.mango);
    let c = browser(&driver, profile.path()).await;
    // Close the session even when an assertion fails, so Chromium does not linger.
    let outcome =
        futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run(&c, &app, &p)))
            .await;
    let _ = c.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
