//! The browser tests' machinery: Debian's `chromium` driven through `chromedriver` (WebDriver) by
//! fantoccini, the page opened with a form POST as Bitrix24 does, and small helpers to fill fields,
//! wait for answers and save screenshots into `test-output/`. Shared by `browser.rs` and
//! `browser_speed.rs`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fantoccini::{Client, ClientBuilder, Locator};
use mango_callback::sandbox::bitrix::SimPortal;

use crate::helpers::TestApp;
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

pub(crate) async fn fill(c: &Client, id: &str, value: &str) {
    let e = c
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"));
    e.clear().await.expect("clear");
    if !value.is_empty() {
        e.send_keys(value).await.expect("type");
    }
}

pub(crate) async fn value_of(c: &Client, id: &str) -> String {
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
pub(crate) async fn wait_text(c: &Client, id: &str, needle: &str) -> String {
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

/// A screenshot of one element, scrolled into view first (Chromium crops it to the viewport).
pub(crate) async fn shot(c: &Client, el: &fantoccini::elements::Element, name: &str) {
    c.execute(
        "arguments[0].scrollIntoView({block: 'start'})",
        vec![serde_json::to_value(el).expect("element reference")],
    )
    .await
    .expect("scrolled");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-output");
    std::fs::create_dir_all(&dir).expect("test-output dir");
    let png = el.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(name), png).expect("screenshot written");
}
