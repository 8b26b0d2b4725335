//! The browser test: real Chromium (the driver and helpers of `browser_driver.rs`) on the
//! settings page as an administrator uses it, and as a user who may only read it, in Russian and
//! English, with screenshots in `test-output/`.

use std::time::Duration;

use fantoccini::{Client, Locator};
use mango_callback::db::Backend;
use mango_callback::sandbox::bitrix::SimPortal;

use crate::browser_driver::{
    browser, fill, launcher, screenshot, shot, start_driver, value_of, wait_for, wait_text,
};
use crate::helpers::{spawn_app, TestApp, LINE, MANGO_ACCOUNT, MANGO_KEY, MANGO_SALT};
use crate::settings::{bare_portal, stored_settings, ROBOT};

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

    outcome_settings(c, app, p).await;
    retry_and_hours_settings(c, app, p).await;
}

/// Whether a checkbox is ticked.
async fn ticked(c: &Client, id: &str) -> bool {
    let checked = c
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .prop("checked")
        .await
        .expect("checked");
    checked.as_deref() == Some("true")
}

async fn click(c: &Client, id: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .click()
        .await
        .expect("click");
}

/// The section of the form that holds `id` (for a screenshot of just that part).
async fn section_of(c: &Client, id: &str) -> fantoccini::elements::Element {
    c.find(Locator::XPath(&format!("//section[.//*[@id='{id}']]")))
        .await
        .unwrap_or_else(|e| panic!("the section of #{id}: {e}"))
}

/// Issue #11's settings, after the calls above (so the robot's wait does not change them): a
/// bound outside 1–1440 is refused next to its field with nothing stored, then 45 minutes with
/// the robot waiting is saved and shown back, in the form and in the read-only summary, in
/// Russian and English.
async fn outcome_settings(c: &Client, app: &TestApp, p: &SimPortal) {
    for bad in ["0", "2000"] {
        c.goto(&launcher(app, p, 1, "ru")).await.expect("open");
        wait_for(c, "settings").await;
        assert!(!ticked(c, "wait_for_outcome").await, "off until ticked");
        let before = app.snapshot().await;
        click(c, "wait_for_outcome").await;
        fill(c, "outcome_wait_minutes", bad).await;
        click(c, "save").await;
        let err = wait_for(c, "error-outcome_wait_minutes").await;
        let text = err.text().await.expect("text");
        assert!(text.contains("от 1 до 1440"), "{bad}: {text}");
        // Next to its field (in the same marked box), and the only complaint.
        let placed = c
            .execute(
                "const e = document.getElementById('error-outcome_wait_minutes').parentElement; \
                 return [e.contains(document.getElementById('outcome_wait_minutes')), \
                 e.classList.contains('invalid'), document.querySelectorAll('.error').length];",
                vec![],
            )
            .await
            .expect("script");
        assert_eq!(placed, serde_json::json!([true, true, 1]), "{bad}");
        // What was typed is echoed back for fixing; nothing was stored.
        assert_eq!(value_of(c, "outcome_wait_minutes").await, bad);
        assert!(ticked(c, "wait_for_outcome").await, "{bad}");
        assert_eq!(app.snapshot().await, before, "{bad} changed what is stored");
    }
    shot(
        c,
        &section_of(c, "outcome_wait_minutes").await,
        "outcome-settings-ru-validation.png",
    )
    .await;

    // Fixed on the refused form (the box is still ticked): saved.
    fill(c, "outcome_wait_minutes", "45").await;
    click(c, "save").await;
    wait_text(c, "notice", "Настройки сохранены").await;
    let s = stored_settings(app, &p.member_id).await.expect("settings");
    assert_eq!((s.wait_for_outcome, s.outcome_wait_minutes), (true, 45));

    // Reopened: the form as the administrator, the summary as a user who only reads it.
    app.b24.add_user(&p.member_id, 5, false);
    for (lang, yes) in [
        ("ru", "Робот ждёт итога звонка\nда"),
        ("en", "Robot waits for the outcome\nyes"),
    ] {
        c.goto(&launcher(app, p, 1, lang)).await.expect("reopen");
        wait_for(c, "settings").await;
        assert_eq!(value_of(c, "outcome_wait_minutes").await, "45", "{lang}");
        assert!(ticked(c, "wait_for_outcome").await, "{lang}");
        let section = section_of(c, "outcome_wait_minutes").await;
        let label = section.text().await.expect("text");
        let wanted = if lang == "ru" {
            "Ждать итога звонка от Mango, минут"
        } else {
            "Wait for the call's outcome from Mango, minutes"
        };
        assert!(label.contains(wanted), "{lang}: {label}");
        // The box sits on its label's line, box-sized (not stretched like the text inputs).
        let layout = c
            .execute(
                "const b = document.getElementById('wait_for_outcome').getBoundingClientRect(); \
                 const l = document.querySelector('label[for=wait_for_outcome]').getBoundingClientRect(); \
                 return [b.width < 30, l.height < 2 * b.height + 4];",
                vec![],
            )
            .await
            .expect("script");
        assert_eq!(
            layout,
            serde_json::json!([true, true]),
            "{lang}: the checkbox"
        );
        shot(c, &section, &format!("outcome-settings-{lang}.png")).await;

        c.goto(&launcher(app, p, 5, lang))
            .await
            .expect("open as a user");
        let summary = wait_for(c, "readonly").await;
        assert!(
            c.find(Locator::Id("settings")).await.is_err(),
            "{lang}: no form"
        );
        let text = summary.text().await.expect("text");
        assert!(text.contains(yes), "{lang}: {text}");
        let minutes = if lang == "ru" {
            "Ждать итога, минут\n45"
        } else {
            "Outcome wait, minutes\n45"
        };
        assert!(text.contains(minutes), "{lang}: {text}");
        shot(c, &summary, &format!("outcome-summary-{lang}.png")).await;
    }
}

/// Ticks or unticks a checkbox so that it ends `on`.
async fn set_ticked(c: &Client, id: &str, on: bool) {
    if ticked(c, id).await != on {
        click(c, id).await;
    }
}

/// Issue #11's retry rules and working hours: a retry count out of range is refused next to its
/// field in Russian and English with nothing stored; then every field of both sections is filled
/// and saved, and the reopened page shows what was stored, in both languages.
async fn retry_and_hours_settings(c: &Client, app: &TestApp, p: &SimPortal) {
    for (lang, wanted) in [
        ("ru", "Целое число от 0 до 5"),
        ("en", "A whole number from 0 to 5"),
    ] {
        c.goto(&launcher(app, p, 1, lang)).await.expect("open");
        wait_for(c, "settings").await;
        let before = app.snapshot().await;
        fill(c, "retry_no_answer_times", "9").await;
        click(c, "save").await;
        let err = wait_for(c, "error-retry_no_answer_times").await;
        let text = err.text().await.expect("text");
        assert!(text.contains(wanted), "{lang}: {text}");
        let placed = c
            .execute(
                "const e = document.getElementById('error-retry_no_answer_times').parentElement; \
                 return [e.contains(document.getElementById('retry_no_answer_times')), \
                 e.classList.contains('invalid'), document.querySelectorAll('.error').length];",
                vec![],
            )
            .await
            .expect("script");
        assert_eq!(placed, serde_json::json!([true, true, 1]), "{lang}");
        assert_eq!(value_of(c, "retry_no_answer_times").await, "9", "{lang}");
        assert_eq!(app.snapshot().await, before, "{lang}: nothing stored");
        shot(
            c,
            &section_of(c, "retry_no_answer_times").await,
            &format!("retry-settings-{lang}-validation.png"),
        )
        .await;
    }

    // Fixed on the refused (English) form, with every other field of both sections filled.
    fill(c, "retry_no_answer_times", "3").await;
    fill(c, "retry_no_answer_minutes", "15").await;
    set_ticked(c, "retry_escalate", true).await;
    fill(c, "retry_client_times", "2").await;
    fill(c, "retry_client_minutes", "30").await;
    set_ticked(c, "hours_enabled", true).await;
    fill(c, "timezone", "Asia/Yekaterinburg").await;
    fill(c, "work_start", "10:00").await;
    fill(c, "work_end", "19:30").await;
    // Monday to Thursday and Saturday.
    for day in 1..=7 {
        set_ticked(c, &format!("work_day_{day}"), matches!(day, 1..=4 | 6)).await;
    }
    fill(c, "holidays", "2027-01-07\n2027-01-01").await;
    click(c, "save").await;
    wait_text(c, "notice", "Settings saved").await;
    let s = stored_settings(app, &p.member_id).await.expect("settings");
    assert_eq!(
        (
            s.retry_no_answer_times,
            s.retry_no_answer_minutes,
            s.retry_escalate,
            s.retry_client_times,
            s.retry_client_minutes
        ),
        (3, 15, true, 2, 30)
    );
    assert!(s.hours_enabled);
    assert_eq!(s.timezone, "Asia/Yekaterinburg");
    assert_eq!(s.work_days, "1,2,3,4,6");
    assert_eq!((s.work_start_minute, s.work_end_minute), (600, 1170));
    assert_eq!(s.holidays, "2027-01-01,2027-01-07");

    for lang in ["ru", "en"] {
        c.goto(&launcher(app, p, 1, lang)).await.expect("reopen");
        wait_for(c, "settings").await;
        for (id, want) in [
            ("retry_no_answer_times", "3"),
            ("retry_no_answer_minutes", "15"),
            ("retry_client_times", "2"),
            ("retry_client_minutes", "30"),
            ("timezone", "Asia/Yekaterinburg"),
            ("work_start", "10:00"),
            ("work_end", "19:30"),
            ("holidays", "2027-01-01\n2027-01-07"),
        ] {
            assert_eq!(value_of(c, id).await, want, "{lang}: #{id}");
        }
        assert!(ticked(c, "retry_escalate").await, "{lang}");
        assert!(ticked(c, "hours_enabled").await, "{lang}");
        for day in 1..=7 {
            let on = ticked(c, &format!("work_day_{day}")).await;
            assert_eq!(on, matches!(day, 1..=4 | 6), "{lang}: day {day}");
        }
        let retries = section_of(c, "retry_no_answer_times").await;
        let heading = retries.text().await.expect("text");
        let wanted = if lang == "ru" {
            "Повторные звонки"
        } else {
            "Retries"
        };
        assert!(heading.starts_with(wanted), "{lang}: {heading}");
        shot(c, &retries, &format!("retry-settings-{lang}.png")).await;
        shot(
            c,
            &section_of(c, "timezone").await,
            &format!("hours-settings-{lang}.png"),
        )
        .await;
    }
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
