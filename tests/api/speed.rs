//! The speed-to-lead panel and the call log's outcomes and attempts on the app page, over HTTP
//! on both databases, from callbacks and attempts seeded with known times (the rows Mango's
//! events would have written).

use chrono::{Duration, NaiveDateTime, Timelike};
use diesel::prelude::*;
use mango_callback::db::schema::{call_attempts, callbacks, portal_settings};
use mango_callback::db::Backend;
use mango_callback::sandbox::bitrix::SimPortal;

use crate::helpers::{spawn_app, TestApp};
use crate::on_both_backends;

/// Moves the app's clock to the next 09:00 UTC (12:00 in Moscow), so "today" has room on both
/// sides whenever the test runs; returns that time.
pub(crate) fn to_next_nine_utc(app: &TestApp) -> NaiveDateTime {
    let now = app.clock.now();
    let nine = now.date().and_hms_opt(9, 0, 0).expect("09:00 exists");
    let target = if nine > now + Duration::seconds(5) {
        nine
    } else {
        nine + Duration::days(1)
    };
    let ahead = (target - now).to_std().expect("ahead");
    app.advance(ahead);
    target
}

/// A callback accepted at `created`, ended with `outcome`, its client connected `speed` seconds
/// later (when `Some`); returns its id.
pub(crate) async fn seed(
    app: &TestApp,
    p: &SimPortal,
    created: NaiveDateTime,
    outcome: Option<&str>,
    speed: Option<i64>,
) -> String {
    seed_with_status(app, p, created, outcome, speed, "started").await
}

async fn seed_with_status(
    app: &TestApp,
    p: &SimPortal,
    created: NaiveDateTime,
    outcome: Option<&str>,
    speed: Option<i64>,
    status: &str,
) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let row = (
        callbacks::id.eq(id.clone()),
        callbacks::member_id.eq(p.member_id.clone()),
        callbacks::deal_id.eq(format!("{}", created.and_utc().timestamp() % 100_000)),
        callbacks::requested_group.eq("auto"),
        callbacks::status.eq(status.to_owned()),
        callbacks::attempts.eq(1),
        callbacks::contact_checks.eq(0),
        callbacks::created_at.eq(created),
        callbacks::updated_at.eq(created),
        callbacks::call_outcome.eq(outcome.map(str::to_owned)),
        callbacks::client_connected_at.eq(speed.map(|s| created + Duration::seconds(s))),
    );
    app.shared
        .db
        .run(move |c| diesel::insert_into(callbacks::table).values(row).execute(c))
        .await
        .expect("callback seeded");
    id
}

/// Attempt `n` of callback `cb`, placed at `placed` to the group `(kind, extension)`; an
/// answered one was taken by manager 101 and talked 2 min 13 s.
pub(crate) async fn seed_attempt(
    app: &TestApp,
    p: &SimPortal,
    cb: &str,
    n: i32,
    (kind, ext): (&str, &str),
    placed: NaiveDateTime,
    outcome: &str,
) {
    let answered = outcome == "answered";
    let row = (
        call_attempts::callback_id.eq(cb.to_owned()),
        call_attempts::n.eq(n),
        call_attempts::member_id.eq(p.member_id.clone()),
        call_attempts::command_id.eq(format!("cmd-{cb}-{n}")),
        call_attempts::group_kind.eq(kind.to_owned()),
        call_attempts::group_extension.eq(ext.to_owned()),
        call_attempts::placed_at.eq(placed),
        call_attempts::outcome.eq(Some(outcome.to_owned())),
        call_attempts::manager_extension.eq(answered.then(|| "101".to_owned())),
        call_attempts::talk_seconds.eq(answered.then_some(133)),
    );
    app.shared
        .db
        .run(move |c| {
            diesel::insert_into(call_attempts::table)
                .values(row)
                .execute(c)
        })
        .await
        .expect("attempt seeded");
}

async fn set_timezone(app: &TestApp, p: &SimPortal, tz: &str) {
    let (mid, tz) = (p.member_id.clone(), tz.to_owned());
    let n = app
        .shared
        .db
        .run(move |c| {
            diesel::update(portal_settings::table.find(mid))
                .set(portal_settings::timezone.eq(tz))
                .execute(c)
        })
        .await
        .expect("time zone set");
    assert_eq!(n, 1);
}

/// The text of the element with this id (its first text run).
fn cell(body: &str, id: &str) -> String {
    let at = body
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("#{id} is on the page"));
    let start = at + body[at..].find('>').expect("tag ends") + 1;
    let len = body[start..].find('<').expect("text ends");
    body[start..start + len].to_owned()
}

async fn admin_page(app: &TestApp, p: &SimPortal, lang: &str) -> String {
    let (status, body) = app.open_app_page(p, p.admin_user_id, lang).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn the_panel_shows_median_p90_and_answer_rates_of_the_seeded_callbacks(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("speed").await;
    let now = to_next_nine_utc(&app);
    let h = |hours: i64| now - Duration::hours(hours);
    // Today (Moscow): four connected clients after 1, 2, 3 and 10 minutes, one client who did
    // not answer, one group that did not, one unknown ending, and a duplicate cut off.
    for (i, speed) in [60, 120, 180, 600].into_iter().enumerate() {
        seed(&app, &p, h(i as i64 + 1), Some("answered"), Some(speed)).await;
    }
    seed(&app, &p, h(1), Some("client_missed"), None).await;
    seed(&app, &p, h(2), Some("manager_missed"), None).await;
    seed(&app, &p, h(2), Some("unknown"), None).await;
    seed_with_status(&app, &p, h(1), None, None, "duplicate").await;
    // Three days ago, twenty days ago, and forty (outside every window).
    seed(
        &app,
        &p,
        now - Duration::days(3),
        Some("answered"),
        Some(30),
    )
    .await;
    seed(
        &app,
        &p,
        now - Duration::days(20),
        Some("answered"),
        Some(3_600),
    )
    .await;
    seed(
        &app,
        &p,
        now - Duration::days(40),
        Some("answered"),
        Some(5),
    )
    .await;

    let ru = admin_page(&app, &p, "ru").await;
    assert!(ru.contains("Скорость реакции"), "the panel is on the page");
    assert_eq!(cell(&ru, "speed-callbacks-today"), "7");
    // Median of 60, 120, 180, 600 s: 150 s; 90th percentile 180 + 0.7 × 420 = 474 s.
    assert_eq!(cell(&ru, "speed-median-today"), "2 мин 30 с");
    assert_eq!(cell(&ru, "speed-p90-today"), "7 мин 54 с");
    // Known outcomes: 4 answered, 1 client missed, 1 manager missed (unknown left out).
    assert_eq!(cell(&ru, "speed-manager-today"), "83\u{a0}% (5 из 6)");
    assert_eq!(cell(&ru, "speed-client-today"), "80\u{a0}% (4 из 5)");
    assert_eq!(cell(&ru, "speed-callbacks-week"), "8");
    assert_eq!(cell(&ru, "speed-median-week"), "2 мин");
    assert_eq!(cell(&ru, "speed-callbacks-month"), "9");
    assert_eq!(cell(&ru, "speed-median-month"), "2 мин 30 с");
    // One bar per day with a connected client: today, 3 and 20 days ago.
    assert_eq!(ru.matches("<rect class=\"bar\"").count(), 3, "{ru}");
    assert!(
        ru.contains("role=\"img\""),
        "the chart is labelled for screen readers"
    );
    assert!(!ru.contains("id=\"speed-empty\""));

    let en = admin_page(&app, &p, "en").await;
    assert_eq!(cell(&en, "speed-median-today"), "2 min 30 s");
    assert_eq!(cell(&en, "speed-manager-today"), "83% (5 of 6)");
    assert_eq!(cell(&en, "speed-p90-month"), "35 min");
    assert!(en.contains("Speed to lead") && en.contains("Data by day"));
}
on_both_backends!(the_panel_shows_median_p90_and_answer_rates_of_the_seeded_callbacks);

async fn a_portal_without_callbacks_shows_the_empty_panel(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("speed-empty").await;
    let ru = admin_page(&app, &p, "ru").await;
    assert!(ru.contains("id=\"speed-empty\""), "{ru}");
    assert!(!ru.contains("<svg"), "no chart without data");
    let en = admin_page(&app, &p, "en").await;
    assert!(en.contains("No data yet"));
}
on_both_backends!(a_portal_without_callbacks_shows_the_empty_panel);

async fn a_user_who_is_not_an_administrator_sees_no_speed_panel(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("speed-user").await;
    let now = to_next_nine_utc(&app);
    seed(
        &app,
        &p,
        now - Duration::hours(1),
        Some("answered"),
        Some(60),
    )
    .await;
    app.b24.add_user(&p.member_id, 5, false);
    let (status, body) = app.open_app_page(&p, 5, "en").await;
    assert_eq!(status, 200);
    assert!(!body.contains("id=\"speed\""), "{body}");
    assert!(!body.contains("Speed to lead"));
}
on_both_backends!(a_user_who_is_not_an_administrator_sees_no_speed_panel);

async fn days_are_counted_in_the_portals_time_zone(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("speed-tz").await;
    let now = to_next_nine_utc(&app);
    // 03:00 UTC: 06:00 today in Moscow, 22:00 yesterday in New York (04:00 there now).
    let early = now.with_hour(3).expect("03:00");
    seed(&app, &p, early, Some("answered"), Some(45)).await;
    let moscow = admin_page(&app, &p, "en").await;
    assert_eq!(cell(&moscow, "speed-callbacks-today"), "1");
    set_timezone(&app, &p, "America/New_York").await;
    let ny = admin_page(&app, &p, "en").await;
    assert_eq!(cell(&ny, "speed-callbacks-today"), "0");
    assert_eq!(cell(&ny, "speed-median-today"), "—");
    assert_eq!(cell(&ny, "speed-callbacks-week"), "1");
    assert_eq!(cell(&ny, "speed-median-week"), "45 s");
}
on_both_backends!(days_are_counted_in_the_portals_time_zone);

async fn the_call_log_shows_each_callbacks_outcome_and_its_attempts(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("speed-log").await;
    let now = to_next_nine_utc(&app);
    let created = now - Duration::minutes(30);
    let id = seed(&app, &p, created, Some("answered"), Some(400)).await;
    let missed = seed(
        &app,
        &p,
        now - Duration::minutes(10),
        Some("client_missed"),
        None,
    )
    .await;
    let at = |m: i64| created + Duration::minutes(m);
    seed_attempt(
        &app,
        &p,
        &id,
        1,
        ("trainee", "002"),
        at(0),
        "manager_missed",
    )
    .await;
    seed_attempt(&app, &p, &id, 2, ("experienced", "001"), at(5), "answered").await;
    seed_attempt(
        &app,
        &p,
        &missed,
        1,
        ("trainee", "002"),
        at(20),
        "client_missed",
    )
    .await;

    let ru = admin_page(&app, &p, "ru").await;
    assert!(
        ru.contains("клиент соединён</span>"),
        "the callback's outcome: {ru}"
    );
    assert!(ru.contains("клиент не ответил</span>"));
    let t = |m: i64| {
        (created + Duration::minutes(m))
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    assert!(
        ru.contains(&format!(
            "{}</span> · стажёры 002 · менеджеры не ответили",
            t(0)
        )),
        "{ru}"
    );
    assert!(ru.contains(&format!(
        "{}</span> · опытные 001 · клиент соединён, менеджер 101, 2 мин 13 с",
        t(5)
    )));
    assert_eq!(
        ru.matches("<li value=").count(),
        3,
        "every attempt listed once"
    );
    let en = admin_page(&app, &p, "en").await;
    assert!(en.contains(&format!(
        "{}</span> · experienced 001 · client connected, manager 101, 2 min 13 s",
        t(5)
    )));
    assert!(en.contains(&format!(
        "{}</span> · trainees 002 · client did not answer",
        t(20)
    )));
}
on_both_backends!(the_call_log_shows_each_callbacks_outcome_and_its_attempts);
