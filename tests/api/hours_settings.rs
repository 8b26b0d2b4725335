//! The working-hours settings on the app page, over HTTP on both databases: saved in their
//! plain stored form, shown back, and refused field by field with nothing stored.

use mango_callback::db::Backend;

use crate::helpers::spawn_app;
use crate::on_both_backends;
use crate::settings::{bare_portal, enc, good_form, open_app, page_token, post, stored_settings};

const SAVE: &str = "/b24/app/settings?LANG=en";

/// The good form with working hours: Yekaterinburg, Monday–Friday 09:00–18:30, two holidays.
fn hours_form<'a>(token: &'a str, changes: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut form = good_form(token, "002");
    form.extend([
        ("hours_form", "1"),
        ("hours_enabled", "on"),
        ("timezone", "Asia/Yekaterinburg"),
        ("work_day_1", "on"),
        ("work_day_2", "on"),
        ("work_day_3", "on"),
        ("work_day_4", "on"),
        ("work_day_5", "on"),
        ("work_start", "09:00"),
        ("work_end", "18:30"),
        ("holidays", "2027-01-07\r\n2027-01-01, 2027-01-02"),
    ]);
    for (k, v) in changes {
        form.retain(|(key, _)| key != k);
        if !v.is_empty() || k.starts_with("work_") && !k.starts_with("work_day") {
            form.push((k, v));
        }
    }
    form
}

async fn working_hours_are_saved_and_shown_back_and_a_form_without_them_keeps_them(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = bare_portal(&app, "hours-save").await;
    let token = page_token(&open_app(&app, &p, 1, "en").await.body);

    let r = post(&app, SAVE, None, enc(&hours_form(&token, &[]))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = stored_settings(&app, &p.member_id).await.expect("saved");
    assert!(s.hours_enabled);
    assert_eq!(s.timezone, "Asia/Yekaterinburg");
    assert_eq!(s.work_days, "1,2,3,4,5");
    assert_eq!((s.work_start_minute, s.work_end_minute), (540, 1110));
    assert_eq!(s.holidays, "2027-01-01,2027-01-02,2027-01-07");

    let page = open_app(&app, &p, 1, "ru").await;
    assert!(page.body.contains("Рабочее время"), "ru section");
    assert!(page.body.contains("value=\"18:30\""));
    assert!(page
        .body
        .contains("id=\"work_day_5\" name=\"work_day_5\" value=\"on\" checked"));
    assert!(!page
        .body
        .contains("id=\"work_day_6\" name=\"work_day_6\" value=\"on\" checked"));
    assert!(page
        .body
        .contains("2027-01-01\n2027-01-02\n2027-01-07</textarea>"));

    // A page opened before the section existed: its save leaves the hours as they are.
    let r = post(&app, SAVE, None, enc(&good_form(&token, "003"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = stored_settings(&app, &p.member_id).await.expect("saved");
    assert_eq!(s.trainee_extension, "003");
    assert!(s.hours_enabled && s.work_end_minute == 1110);

    // Switched off: the hours stay stored for switching on again.
    let r = post(
        &app,
        SAVE,
        None,
        enc(&hours_form(&token, &[("hours_enabled", "")])),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = stored_settings(&app, &p.member_id).await.expect("saved");
    assert!(!s.hours_enabled);
    assert_eq!(s.timezone, "Asia/Yekaterinburg");
}
on_both_backends!(working_hours_are_saved_and_shown_back_and_a_form_without_them_keeps_them);

async fn bad_working_hours_are_refused_field_by_field_and_change_nothing_stored(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = bare_portal(&app, "hours-bad").await;
    let token = page_token(&open_app(&app, &p, 1, "en").await.body);
    let r = post(&app, SAVE, None, enc(&hours_form(&token, &[]))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let before = app.snapshot().await;

    let no_day = [
        ("work_day_1", ""),
        ("work_day_2", ""),
        ("work_day_3", ""),
        ("work_day_4", ""),
        ("work_day_5", ""),
    ];
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("timezone", "Moscow/Kremlin")], "error-timezone"),
        (vec![("timezone", "")], "error-timezone"),
        (no_day.to_vec(), "error-work_days"),
        (vec![("work_start", "25:00")], "error-work_start"),
        (vec![("work_start", "9")], "error-work_start"),
        (vec![("work_end", "99999999999999999999")], "error-work_end"),
        (
            vec![("work_start", "18:00"), ("work_end", "09:00")],
            "error-work_end",
        ),
        (vec![("work_end", "")], "error-work_end"),
        (vec![("holidays", "2027-02-30")], "error-holidays"),
        (vec![("holidays", "07.01.2027")], "error-holidays"),
    ];
    for (changes, error_id) in cases {
        let r = post(&app, SAVE, None, enc(&hours_form(&token, &changes))).await;
        assert_eq!(r.status, 400, "{changes:?}: {}", r.body);
        assert!(
            r.body.contains(&format!("id=\"{error_id}\"")),
            "{changes:?}"
        );
        assert!(r.body.contains("Settings were not saved"), "{changes:?}");
        assert_eq!(app.snapshot().await, before, "{changes:?} changed nothing");
    }
    // 367 dates: one more than a year.
    let many: Vec<String> = (0..367)
        .map(|d| {
            (chrono::NaiveDate::from_ymd_opt(2027, 1, 1).expect("date") + chrono::Duration::days(d))
                .to_string()
        })
        .collect();
    let many = many.join("\n");
    let r = post(
        &app,
        SAVE,
        None,
        enc(&hours_form(&token, &[("holidays", &many)])),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("id=\"error-holidays\""));
    assert_eq!(app.snapshot().await, before);

    // In Russian, the message is Russian.
    let r = post(
        &app,
        "/b24/app/settings?LANG=ru",
        None,
        enc(&hours_form(&token, &no_day)),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("Отметьте хотя бы один рабочий день"),
        "{}",
        r.body
    );
}
on_both_backends!(bad_working_hours_are_refused_field_by_field_and_change_nothing_stored);
