//! Working hours (#11 item 5): a robot call outside them is accepted, announced to the business
//! process (`result=scheduled`) and the deal, and placed at the next opening — on both
//! databases, the clock driven forward, never slept.

use std::time::Duration;

use chrono::{Datelike, NaiveDate, NaiveDateTime, TimeZone, Weekday};
use mango_callback::callback::{store as callback_store, Callback};
use mango_callback::db::Backend;
use mango_callback::portal::{store, PortalSettings};
use mango_callback::sandbox::bitrix::SimPortal;

use crate::helpers::{spawn_app, TestApp};
use crate::on_both_backends;

const ROBOT: &str = "mango_callback";
const MOSCOW: chrono_tz::Tz = chrono_tz::Europe::Moscow;

/// The UTC instant of `hh:mm` in Moscow on `date`.
fn moscow(date: NaiveDate, hh: u32, mm: u32) -> NaiveDateTime {
    let wall = date.and_hms_opt(hh, mm, 0).expect("a time of day");
    MOSCOW
        .from_local_datetime(&wall)
        .single()
        .expect("Moscow has no DST")
        .naive_utc()
}

/// The first `weekday` in Moscow at least two days after the app's now.
fn next(app: &TestApp, weekday: Weekday) -> NaiveDate {
    let today = MOSCOW.from_utc_datetime(&app.clock.now()).date_naive();
    (2..10)
        .map(|d| today + chrono::Duration::days(d))
        .find(|d| d.weekday() == weekday)
        .expect("a weekday within a week")
}

/// Moves the app's clock to the UTC instant `at` (which must be ahead).
fn travel_to(app: &TestApp, at: NaiveDateTime) {
    let by = (at - app.clock.now())
        .to_std()
        .expect("the target is ahead");
    app.advance(by);
}

/// An installed, configured portal whose working hours are Moscow's 09:00–18:00 on weekdays,
/// with these holidays, adjusted further by `adjust`.
async fn portal_with_hours(
    app: &TestApp,
    name: &str,
    holidays: String,
    adjust: impl FnOnce(&mut PortalSettings) + Send + 'static,
) -> SimPortal {
    let p = app.installed_portal(name).await;
    let mid = p.member_id.clone();
    app.shared
        .db
        .run(move |c| -> diesel::QueryResult<()> {
            let mut s = store::settings(c, &mid)?.expect("configured");
            s.hours_enabled = true;
            s.timezone = "Europe/Moscow".into();
            s.work_days = "1,2,3,4,5".into();
            s.work_start_minute = 9 * 60;
            s.work_end_minute = 18 * 60;
            s.holidays = holidays;
            adjust(&mut s);
            store::save_settings(c, &s)
        })
        .await
        .expect("db");
    p
}

async fn callbacks(app: &TestApp, member_id: &str) -> Vec<Callback> {
    let mid = member_id.to_owned();
    app.shared
        .db
        .run(move |c| callback_store::latest(c, &mid, 10))
        .await
        .expect("db")
}

async fn place_call_run_at(app: &TestApp) -> Vec<NaiveDateTime> {
    app.shared
        .db
        .run(mango_callback::jobs::queue::all)
        .await
        .expect("db")
        .into_iter()
        .filter(|j| j.kind == "place_call")
        .map(|j| j.run_at)
        .collect()
}

async fn fire(app: &TestApp, p: &SimPortal, deal: u64) -> String {
    let fired = app
        .b24
        .fire_robot(&p.member_id, ROBOT, deal, &[("phone", "+7 900 123-45-67")])
        .await
        .expect("robot");
    assert_eq!(fired.status, 200, "{}", fired.body);
    fired.body
}

async fn a_robot_call_at_22_is_placed_at_9_on_the_next_working_day_skipping_the_weekend_and_a_holiday(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let friday = next(&app, Weekday::Fri);
    let monday = friday + chrono::Duration::days(3);
    let tuesday = friday + chrono::Duration::days(4);
    let p = portal_with_hours(&app, "night", monday.to_string(), |_| {}).await;
    travel_to(&app, moscow(friday, 22, 0));
    let deal = app.b24.add_deal(&p.member_id, None);

    let body = fire(&app, &p, deal).await;
    assert!(body.contains("\"scheduled\""), "{body}");
    app.drain().await;

    let opening = moscow(tuesday, 9, 0);
    let rfc3339 = opening.and_utc().to_rfc3339();
    assert!(
        body.contains(&format!("\"scheduled_for\":\"{rfc3339}\"")),
        "{body}"
    );
    let cb = callbacks(&app, &p.member_id).await.remove(0);
    assert_eq!(cb.scheduled_for, Some(opening));
    assert_eq!(place_call_run_at(&app).await, vec![opening]);
    assert!(
        app.mango.callbacks().is_empty(),
        "nothing before the opening"
    );
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0]["RETURN_VALUES"]["result"], "scheduled");
    let comments = app.b24.timeline_comments(&p.member_id, deal);
    let expected = format!(
        "Звонок будет совершён {} в 09:00 (Europe/Moscow) — сейчас нерабочее время",
        tuesday.format("%d.%m.%Y")
    );
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(comments[0].contains(&expected), "{comments:?}");

    let (_, page) = app.open_app_page(&p, p.admin_user_id, "en").await;
    let waiting = format!(
        "waiting for working hours: {} UTC",
        opening.format("%Y-%m-%d %H:%M")
    );
    assert!(page.contains(&waiting), "the call log says until when");

    // Monday (the holiday) at 10:00 and Tuesday a minute before opening: still nothing.
    travel_to(&app, moscow(monday, 10, 0));
    app.drain().await;
    travel_to(&app, opening - chrono::Duration::minutes(1));
    app.drain().await;
    assert!(
        app.mango.callbacks().is_empty(),
        "nothing before the opening"
    );

    travel_to(&app, opening + chrono::Duration::seconds(1));
    app.drain().await;
    assert_eq!(app.mango.callbacks().len(), 1, "exactly one command");
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1, "one event per robot run: {sends:?}");
    let comments = app.b24.timeline_comments(&p.member_id, deal);
    assert_eq!(comments.len(), 2, "the call's own comment: {comments:?}");
    assert!(comments[1].contains("звоним группе"), "{comments:?}");
    app.advance(Duration::from_secs(3600));
    app.drain().await;
    assert_eq!(app.mango.callbacks().len(), 1, "still exactly one command");
}
on_both_backends!(
    a_robot_call_at_22_is_placed_at_9_on_the_next_working_day_skipping_the_weekend_and_a_holiday
);

async fn a_robot_call_inside_working_hours_is_placed_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = portal_with_hours(&app, "daytime", String::new(), |_| {}).await;
    travel_to(&app, moscow(next(&app, Weekday::Wed), 10, 30));
    let deal = app.b24.add_deal(&p.member_id, None);
    let body = fire(&app, &p, deal).await;
    assert!(body.contains("\"queued\""), "{body}");
    app.drain().await;
    assert_eq!(app.mango.callbacks().len(), 1);
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0]["RETURN_VALUES"]["result"], "started");
    assert_eq!(callbacks(&app, &p.member_id).await[0].scheduled_for, None);
}
on_both_backends!(a_robot_call_inside_working_hours_is_placed_at_once);

async fn a_second_run_for_a_deal_whose_call_waits_for_the_opening_is_a_duplicate(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = portal_with_hours(&app, "twice", String::new(), |_| {}).await;
    let wednesday = next(&app, Weekday::Wed);
    travel_to(&app, moscow(wednesday, 23, 0));
    let deal = app.b24.add_deal(&p.member_id, None);
    fire(&app, &p, deal).await;
    app.drain().await;
    app.advance(Duration::from_secs(3 * 3600)); // 02:00, still closed
    let body = fire(&app, &p, deal).await;
    assert!(body.contains("\"duplicate\""), "{body}");
    app.drain().await;
    let results: Vec<String> = app
        .b24
        .event_sends(&p.member_id)
        .iter()
        .map(|s| {
            s["RETURN_VALUES"]["result"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(results, ["scheduled", "duplicate"]);
    travel_to(&app, moscow(wednesday + chrono::Duration::days(1), 9, 1));
    app.drain().await;
    let calls = app.mango.callbacks();
    assert_eq!(calls.len(), 1, "one call for the deal");
    assert_eq!(
        calls[0]["from"],
        crate::helpers::TRAINEES,
        "the deal's first run"
    );
}
on_both_backends!(a_second_run_for_a_deal_whose_call_waits_for_the_opening_is_a_duplicate);

async fn a_robot_that_waits_for_the_outcome_gets_no_scheduled_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = portal_with_hours(&app, "waiting", String::new(), |s| {
        s.wait_for_outcome = true;
    })
    .await;
    let thursday = next(&app, Weekday::Thu);
    travel_to(&app, moscow(thursday, 7, 0));
    let deal = app.b24.add_deal(&p.member_id, None);
    fire(&app, &p, deal).await;
    app.drain().await;
    assert!(
        app.b24.event_sends(&p.member_id).is_empty(),
        "no `scheduled` in waiting mode"
    );
    let comments = app.b24.timeline_comments(&p.member_id, deal);
    assert_eq!(
        comments.len(),
        1,
        "the timeline still says when: {comments:?}"
    );
    assert!(
        comments[0].contains("в 09:00 (Europe/Moscow)"),
        "{comments:?}"
    );
    assert!(app.mango.callbacks().is_empty());
    travel_to(&app, moscow(thursday, 9, 0) + chrono::Duration::seconds(1));
    app.drain().await;
    assert_eq!(app.mango.callbacks().len(), 1);
}
on_both_backends!(a_robot_that_waits_for_the_outcome_gets_no_scheduled_event);
