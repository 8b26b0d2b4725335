//! The Bitrix24 request budget of a portal, shared by every instance on one database; jobs that
//! must wait long for it snooze without spending an attempt; claims take turns across portals.

use std::time::{Duration, Instant};

use mango_callback::db::Backend;
use mango_callback::jobs::queue;
use mango_callback::mango::rate::Turn;
use mango_callback::sandbox::bitrix::BitrixSimOptions;
use mango_callback::sandbox::LocalSettings;

use crate::helpers::{spawn_app, spawn_app_configured, start_instance, TestApp};
use crate::on_both_backends;

/// Fires a robot call with a phone on a new deal of the portal; accepted, its jobs not run.
async fn fire(app: &TestApp, member_id: &str, phone: &str) {
    let deal = app.b24.add_deal(member_id, None);
    let fired = app
        .b24
        .fire_robot(member_id, "mango_callback", deal, &[("phone", phone)])
        .await
        .expect("the robot is registered");
    assert_eq!(fired.status, 200, "{}", fired.body);
}

fn snoozed(j: &queue::JobRow) -> bool {
    j.last_error.as_deref().unwrap_or("").starts_with("snoozed")
}

/// Runs due jobs on `app` as a worker with `slots` slots does: claims up to that many, runs them
/// at once, again until none is due. Two apps doing this at once split the work between them.
async fn work(app: &TestApp, slots: i64) {
    let registry = mango_callback::startup::job_registry();
    loop {
        let now = app.clock.now();
        let lease = now + chrono::Duration::seconds(300);
        let worker = format!("{}-worker", app.base);
        let w = worker.clone();
        let batch = app
            .shared
            .db
            .run(move |c| queue::claim(c, &w, now, lease, slots))
            .await
            .expect("claim");
        if batch.is_empty() {
            return;
        }
        futures_util::future::join_all(batch.into_iter().map(|job| {
            mango_callback::jobs::worker::run_one(&app.worker_ctx, &registry, &worker, job)
        }))
        .await;
    }
}

/// Runs the jobs of every app at once, again and again, until none is left queued or running
/// (snoozed jobs come due by themselves).
async fn run_all(apps: &[&TestApp]) {
    let started = Instant::now();
    loop {
        futures_util::future::join_all(apps.iter().map(|a| work(a, 4))).await;
        let db = apps[0].shared.db.clone();
        let now = apps[0].clock.now() + chrono::Duration::seconds(5);
        let pending = db
            .run(queue::all)
            .await
            .expect("jobs")
            .into_iter()
            .filter(|j| {
                j.status == queue::RUNNING
                    || j.status == queue::QUEUED
                        // A portal's upkeep waits for days: not part of the calls' work.
                        && (j.run_at <= now || snoozed(j))
            })
            .count();
        if pending == 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "{pending} jobs still pending"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn two_instances_sharing_one_database_stay_within_one_portals_request_budget(
    backend: Backend,
) {
    // A small, fast portal: 5 requests at once, 10 a second; each instance is told the same.
    let sim = BitrixSimOptions {
        drain_per_sec: 10.0,
        burst: 5,
        ..Default::default()
    };
    let plan = |s: &mut mango_callback::config::Settings| {
        s.b24_requests_per_second = 10.0;
        s.b24_burst = 5;
    };
    let first = spawn_app_configured(backend, sim, plan).await;
    let mut settings = mango_callback::config::Settings::for_local(
        &first.db_url,
        &first.b24.url(),
        &first.mango.api_url(),
    );
    plan(&mut settings);
    let second = start_instance(settings, &first.b24, &first.mango, None).await;
    let p = first.installed_portal("shared-budget").await;
    // The install's requests drain from the portal's bucket first.
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    let rejected_before = first.b24.rejections("QUERY_LIMIT_EXCEEDED");

    const CALLS: usize = 8;
    for _ in 0..CALLS {
        fire(&first, &p.member_id, "89001234567").await;
    }
    run_all(&[&first, &second]).await;

    assert_eq!(first.mango.callbacks().len(), CALLS, "every call placed");
    assert_eq!(first.b24.event_sends(&p.member_id).len(), CALLS);
    assert_eq!(
        first.b24.rejections("QUERY_LIMIT_EXCEEDED") - rejected_before,
        0,
        "the portal never refused a request for its limit"
    );
}
on_both_backends!(two_instances_sharing_one_database_stay_within_one_portals_request_budget);

async fn a_job_that_waits_for_its_portals_budget_snoozes_without_spending_an_attempt(
    backend: Backend,
) {
    // The app believes in a tight plan (2 a second, 5 at once); the portal is generous, so any
    // refusal would be the app's own budget, never the portal's.
    let sim = BitrixSimOptions {
        drain_per_sec: 50.0,
        burst: 50,
        ..Default::default()
    };
    let app = spawn_app_configured(backend, sim, |s| {
        // One request every 2.2 s after the margin: a job's next request always waits longer
        // than a second, however slowly this machine runs the test.
        s.b24_requests_per_second = 0.5;
        s.b24_burst = 5;
    })
    .await;
    let p = app.installed_portal("snooze").await;
    app.advance(Duration::from_secs(60));

    const CALLS: usize = 5;
    for _ in 0..CALLS {
        fire(&app, &p.member_id, "89001234567").await;
    }
    app.drain().await;
    let now = app.clock.now();
    let jobs = app.shared.db.run(queue::all).await.expect("jobs");
    let snoozed: Vec<_> = jobs
        .iter()
        .filter(|j| j.status == queue::QUEUED && snoozed(j))
        .collect();
    assert!(
        !snoozed.is_empty(),
        "some job waits for the budget: {jobs:#?}"
    );
    for j in &snoozed {
        assert_eq!(j.attempts, 0, "a snooze is not an attempt: {j:#?}");
        assert!(j.run_at > now, "due when the budget allows: {j:#?}");
    }

    // The budget refills as the clock moves; the snoozed jobs finish, none failed on the way.
    for _ in 0..30 {
        if app.b24.event_sends(&p.member_id).len() == CALLS {
            break;
        }
        app.advance(Duration::from_secs(60));
        app.drain().await;
    }
    assert_eq!(app.mango.callbacks().len(), CALLS);
    assert_eq!(app.b24.event_sends(&p.member_id).len(), CALLS);
    let jobs = app.shared.db.run(queue::all).await.expect("jobs");
    for j in jobs.iter().filter(|j| j.status != queue::QUEUED) {
        assert_eq!(j.status, queue::DONE, "{j:#?}");
        assert!(
            j.attempts <= 1,
            "each ran once, snoozes not counted: {j:#?}"
        );
    }
}
on_both_backends!(a_job_that_waits_for_its_portals_budget_snoozes_without_spending_an_attempt);

/// One claim of `slots` jobs for `worker` at the test clock's now, as a worker with that many
/// free slots makes.
async fn claim_now(app: &TestApp, worker: &'static str, slots: i64) -> Vec<queue::JobRow> {
    let now = app.clock.now();
    let lease = now + chrono::Duration::seconds(300);
    app.shared
        .db
        .run(move |c| queue::claim(c, worker, now, lease, slots))
        .await
        .expect("claim")
}

async fn a_lone_robot_call_on_another_portal_is_claimed_with_the_first_jobs_of_a_burst(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let busy = app.installed_portal("busy").await;
    let lone = app.installed_portal("lone").await;
    for _ in 0..6 {
        fire(&app, &busy.member_id, "89001234567").await;
    }
    // Later than the whole burst: oldest-first alone would leave it for last.
    app.advance(Duration::from_secs(1));
    fire(&app, &lone.member_id, "89007654321").await;

    // One claim of two slots, as a worker with two free slots makes.
    let claimed = claim_now(&app, "fair-test", 2).await;
    let registry = mango_callback::startup::job_registry();
    for job in claimed {
        mango_callback::jobs::worker::run_one(&app.worker_ctx, &registry, "fair-test", job).await;
    }
    let called: Vec<String> = app
        .mango
        .callbacks()
        .iter()
        .map(|c| c["to"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        called.iter().any(|to| to == "79007654321"),
        "the lone portal's call went out with the first claim: {called:?}"
    );
    run_all(&[&app]).await;
    assert_eq!(app.mango.callbacks().len(), 7);
}
on_both_backends!(a_lone_robot_call_on_another_portal_is_claimed_with_the_first_jobs_of_a_burst);

async fn a_lone_robot_call_is_claimed_before_the_next_job_of_a_portal_running_a_burst(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let busy = app.installed_portal("busy").await;
    let lone = app.installed_portal("lone").await;
    for _ in 0..6 {
        fire(&app, &busy.member_id, "89001234567").await;
    }
    // The burst is being worked on: two of its jobs run.
    let running = claim_now(&app, "worker-1", 2).await;
    assert_eq!(running.len(), 2);
    app.advance(Duration::from_secs(1));
    fire(&app, &lone.member_id, "89007654321").await;

    // The next free slot goes to the portal that runs nothing, though four older jobs wait.
    let next = claim_now(&app, "worker-2", 1).await;
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].member_id.as_deref(),
        Some(lone.member_id.as_str()),
        "{next:#?}"
    );
}
on_both_backends!(a_lone_robot_call_is_claimed_before_the_next_job_of_a_portal_running_a_burst);

async fn a_job_woken_from_a_budget_wait_is_claimed_before_its_portals_jobs_that_never_ran(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let busy = app.installed_portal("busy").await;
    fire(&app, &busy.member_id, "89001234567").await;
    let first = claim_now(&app, "worker-1", 1).await;
    assert_eq!(first.len(), 1);
    // The first robot call's job waits for Mango's budget; a burst arrives meanwhile.
    let (id, now) = (first[0].id.clone(), app.clock.now());
    let waits_until = now + chrono::Duration::milliseconds(500);
    let parked = app
        .shared
        .db
        .run(move |c| {
            queue::wait_for_budget(
                c,
                &id,
                "worker-1",
                waits_until,
                "snoozed 500 ms for a rate budget",
                now,
            )
        })
        .await
        .expect("db");
    assert!(parked);
    for _ in 0..5 {
        fire(&app, &busy.member_id, "89001234568").await;
    }
    // Its turn has come: it goes first, though the five have waited longer (oldest first alone
    // would leave it for last, its slot taken meanwhile).
    app.advance(Duration::from_secs(1));
    let next = claim_now(&app, "worker-2", 1).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, first[0].id, "{next:#?}");
    // A job back for a plain wait (not a budget's) has no such turn.
    let (id, now) = (next[0].id.clone(), app.clock.now());
    let parked = app
        .shared
        .db
        .run(move |c| queue::snooze(c, &id, "worker-2", now, "waiting for a contact", now))
        .await
        .expect("db");
    assert!(parked);
    let after = claim_now(&app, "worker-3", 1).await;
    assert_eq!(after.len(), 1);
    assert_ne!(after[0].id, first[0].id, "{after:#?}");
}
on_both_backends!(a_job_woken_from_a_budget_wait_is_claimed_before_its_portals_jobs_that_never_ran);

/// `take_or_queue` for one account at `at_ms` milliseconds of test time: `None` is a slot now,
/// `Some(ms)` the wait before coming back.
async fn mango_slot(app: &TestApp, holder: &str, at_ms: i64) -> Option<i64> {
    match mango_turn(app, holder, at_ms).await {
        // SQLite's clock moves in milliseconds: sends within one are dated a µs apart.
        Turn::Taken { in_us } if in_us < 1_000 => None,
        Turn::Taken { in_us } => panic!("{holder}'s slot is {in_us} µs ahead, not now"),
        Turn::Wait { us } => Some(us / 1_000),
    }
}

/// `take_or_queue` for one account at `at_ms` milliseconds of test time.
async fn mango_turn(app: &TestApp, holder: &str, at_ms: i64) -> Turn {
    let holder = holder.to_owned();
    // The database clock barely moves during the test; the offset stands for time passing.
    let offset_us = app.clock.offset_us() + at_ms * 1_000;
    app.shared
        .db
        .run(move |c| {
            mango_callback::mango::rate::take_or_queue(
                c,
                "mango:test-account",
                &holder,
                offset_us,
                4,
                1_150_000,
            )
        })
        .await
        .expect("db")
}

/// Four callbacks of the account take their slots at time 0: the window is full.
async fn four_send_at_once(app: &TestApp) {
    for h in ["a", "b", "c", "d"] {
        assert_eq!(mango_slot(app, h, 0).await, None, "{h} sends at once");
    }
}

async fn callbacks_waiting_for_mangos_budget_keep_their_places_in_line_at_the_limits_pace(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    // The database's own clock runs on meanwhile: waits may come out that much shorter.
    let started = Instant::now();
    let slack = || started.elapsed().as_millis() as i64 + 5;
    four_send_at_once(&app).await;
    // The fifth waits until the first send leaves the window; the next ones a quarter-window
    // apart, in the order they came.
    let e = mango_slot(&app, "e", 0).await.expect("e waits");
    let f = mango_slot(&app, "f", 0).await.expect("f waits");
    let g = mango_slot(&app, "g", 0).await.expect("g waits");
    assert!((1_150 - slack()..=1_155).contains(&e), "{e} ms");
    assert!(
        f - e >= 287 - slack() && g - f >= 287 - slack(),
        "paced: {e} {f} {g}"
    );
    // Woken early, a waiter is told the rest of its wait and keeps its place.
    let rest = mango_slot(&app, "f", 500).await.expect("still waits");
    assert!(
        (f - 500 - slack()..=f - 500 + 5).contains(&rest),
        "{rest} vs {f}"
    );
    // A newcomer queues behind everyone waiting, even once a send left the window.
    let late = mango_slot(&app, "late", e).await.expect("behind the line");
    assert!(
        late >= g - e + 287 - slack(),
        "{late} ms after {e}, line ends at {g}"
    );
    // At their times the waiters get their slots, in order.
    let at = |ms: i64| ms + slack();
    assert_eq!(mango_slot(&app, "e", at(e)).await, None);
    assert_eq!(mango_slot(&app, "f", at(f)).await, None);
    assert_eq!(mango_slot(&app, "g", at(g)).await, None);
}
on_both_backends!(callbacks_waiting_for_mangos_budget_keep_their_places_in_line_at_the_limits_pace);

async fn a_waiter_woken_just_before_its_slot_frees_takes_it_dated_when_it_frees(backend: Backend) {
    let app = spawn_app(backend).await;
    let started = Instant::now();
    let slack = || started.elapsed().as_millis() as i64 + 5;
    four_send_at_once(&app).await;
    let e = mango_slot(&app, "e", 0).await.expect("e waits");
    let f = mango_slot(&app, "f", 0).await.expect("f waits");
    // Claimed 60 ms early (a late claim makes a waiter find its room a moment away): the slot
    // is taken now instead of another snooze, dated when the first send leaves the window.
    match mango_turn(&app, "e", e - 60).await {
        Turn::Taken { in_us } => assert!(
            (60 - slack()..=65).contains(&(in_us / 1_000)),
            "{in_us} µs ahead"
        ),
        other => panic!("e should have taken its slot: {other:?}"),
    }
    // f, asking at the same moment, is further down the line: it keeps its place and its wait.
    match mango_turn(&app, "f", e - 60).await {
        Turn::Wait { us } => assert!(us / 1_000 >= f - e + 60 - slack(), "{us} µs"),
        other => panic!("f must wait for its own turn: {other:?}"),
    }
    // More than the take-ahead before its slot, a waiter snoozes on.
    let rest = mango_slot(&app, "f", f - 150).await.expect("f still waits");
    assert!((150 - slack()..=155).contains(&rest), "{rest} ms");
}
on_both_backends!(a_waiter_woken_just_before_its_slot_frees_takes_it_dated_when_it_frees);
