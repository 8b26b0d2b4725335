//! The browser test of the speed-to-lead panel and the call log's attempts: real Chromium (the
//! driver and helpers of `browser_driver.rs`) on a portal with a month of seeded callbacks, in Russian
//! and English, with screenshots of the panel and the log in `test-output/`.

use chrono::Duration;
use fantoccini::{Client, Locator};
use mango_callback::db::Backend;
use mango_callback::sandbox::bitrix::SimPortal;

use crate::browser_driver::{browser, launcher, shot, start_driver, wait_for};
use crate::helpers::{spawn_app, TestApp};
use crate::speed::{seed, seed_attempt, to_next_nine_utc};

/// A month of callbacks: most days have some, with speeds from under a minute to several; some
/// clients and some groups did not answer. Returns how many days have a connected client.
async fn seed_month(app: &TestApp, p: &SimPortal) -> usize {
    let now = to_next_nine_utc(app);
    let mut days_with_bars = 0;
    for back in 0..30_i64 {
        if back % 4 == 3 {
            continue;
        }
        days_with_bars += 1;
        for k in 0..(1 + back % 3) {
            let created = now - Duration::days(back) - Duration::hours(k + 1);
            let speed = 35 + (back * 37 + k * 53) % 320;
            seed(app, p, created, Some("answered"), Some(speed)).await;
        }
        let created = now - Duration::days(back) - Duration::minutes(20);
        if back % 5 == 0 {
            seed(app, p, created, Some("client_missed"), None).await;
        } else if back % 7 == 1 {
            seed(app, p, created, Some("manager_missed"), None).await;
        }
    }
    // The latest callback needed a retry: nobody in the trainee group answered, the experienced
    // group did.
    let created = now - Duration::minutes(15);
    let id = seed(app, p, created, Some("answered"), Some(400)).await;
    seed_attempt(
        app,
        p,
        &id,
        1,
        ("trainee", "002"),
        created,
        "manager_missed",
    )
    .await;
    let retry = created + Duration::minutes(5);
    seed_attempt(app, p, &id, 2, ("experienced", "001"), retry, "answered").await;
    days_with_bars
}

async fn bars_shown(c: &Client) -> serde_json::Value {
    c.execute(
        "return document.querySelectorAll('#speed-chart rect.bar').length",
        vec![],
    )
    .await
    .expect("script")
}

async fn run(c: &Client, app: &TestApp, p: &SimPortal, days_with_bars: usize) {
    c.goto(&launcher(app, p, 1, "ru")).await.expect("open");
    let panel = wait_for(c, "speed").await;
    assert!(panel.is_displayed().await.expect("displayed"));
    let text = panel.text().await.expect("text");
    assert!(text.contains("Скорость реакции"), "{text}");
    assert!(
        text.contains("Медиана скорости") && text.contains(" мин "),
        "{text}"
    );
    assert_eq!(bars_shown(c).await, serde_json::json!(days_with_bars));
    // The chart really is drawn: it has a width and height on the page.
    let size = c
        .execute(
            "const r = document.getElementById('speed-chart').getBoundingClientRect(); return [r.width > 300, r.height > 80];",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(
        size,
        serde_json::json!([true, true]),
        "the chart has a size"
    );
    shot(c, &panel, "speed-ru.png").await;
    let log = wait_for(c, "call-log").await;
    let log_text = log.text().await.expect("text");
    assert!(
        log_text.contains("стажёры 002 · менеджеры не ответили"),
        "{log_text}"
    );
    shot(c, &log, "call-log-ru.png").await;

    c.goto(&launcher(app, p, 1, "en")).await.expect("open en");
    let panel = wait_for(c, "speed").await;
    let text = panel.text().await.expect("text");
    assert!(
        text.contains("Speed to lead") && text.contains("Client answered"),
        "{text}"
    );
    assert_eq!(bars_shown(c).await, serde_json::json!(days_with_bars));
    // The text alternative opens and lists the days.
    c.find(Locator::Css("details.chart-data summary"))
        .await
        .expect("summary")
        .click()
        .await
        .expect("click");
    let rows = c
        .execute(
            "return document.querySelectorAll('#speed-days tbody tr').length",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(rows, serde_json::json!(days_with_bars));
    shot(c, &panel, "speed-en.png").await;
    let log = wait_for(c, "call-log").await;
    let log_text = log.text().await.expect("text");
    assert!(
        log_text.contains("experienced 001 · client connected, manager 101, 2 min 13 s"),
        "{log_text}"
    );
    shot(c, &log, "call-log-en.png").await;
}

#[actix_web::test]
async fn a_real_browser_shows_the_speed_to_lead_panel_and_the_attempts_in_russian_and_english() {
    if !crate::helpers::can_run_browser(concat!(
        module_path!(),
        "::a_real_browser_shows_the_speed_to_lead_panel_and_the_attempts_in_russian_and_english"
    )) {
        return;
    }
    let driver = start_driver();
    let profile = tempfile::tempdir().expect("profile dir");
    let app = spawn_app(Backend::Sqlite).await;
    let p = app.installed_portal("browser-speed").await;
    let days = seed_month(&app, &p).await;
    let c = browser(&driver, profile.path()).await;
    // Close the session even when an assertion fails, so Chromium does not linger.
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run(
        &c, &app, &p, days,
    )))
    .await;
    let _ = c.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
