//! Reports of many callbacks share Bitrix24 `batch` requests (issue #12): a lone report is one
//! request, sent at once; a burst's reports go 25 to a request; while the portal's budget runs
//! low, reports wait for the next whole second and share one. Counted on the simulated portal.

use std::time::Duration;

use mango_callback::db::Backend;
use mango_callback::jobs::{queue, worker};

use crate::helpers::{batch_methods_of, spawn_app, TestApp};
use crate::on_both_backends;

const PHONE: &str = "+7 900 123-45-67";

/// The commands of every `batch` request the portal received after `skip` requests, by method.
fn report_batches(app: &TestApp, member_id: &str, skip: usize) -> Vec<Vec<String>> {
    app.b24
        .calls()
        .into_iter()
        .filter(|c| c.member_id.as_deref() == Some(member_id))
        .skip(skip)
        .filter(|c| c.method == "batch")
        .map(|c| batch_methods_of(&c))
        .filter(|methods: &Vec<String>| methods.iter().any(|m| m == "bizproc.event.send"))
        .collect()
}

fn requests_to(app: &TestApp, member_id: &str) -> usize {
    app.b24
        .calls()
        .iter()
        .filter(|c| c.member_id.as_deref() == Some(member_id))
        .count()
}

async fn fire(app: &TestApp, member_id: &str) -> u64 {
    let deal = app.b24.add_deal(member_id, None);
    let fired = app
        .b24
        .fire_robot(member_id, "mango_callback", deal, &[("phone", PHONE)])
        .await
        .expect("robot");
    assert_eq!(fired.status, 200, "{}", fired.body);
    deal
}

/// How far the app's clock is from its next whole second (plus a millisecond).
fn to_next_whole_second(app: &TestApp) -> Duration {
    let ms = app.clock.now().and_utc().timestamp_subsec_millis();
    Duration::from_millis(u64::from(1_000 - ms) + 1)
}

async fn a_lone_report_is_one_request_sent_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("lone-report").await;
    // Idle: the budget the installation spent has come back.
    app.advance(Duration::from_secs(60));
    let before = requests_to(&app, &p.member_id);
    let deal = app.b24.add_deal(&p.member_id, None);
    let contact = app.b24.add_contact(&p.member_id, &[("MOBILE", PHONE)]);
    app.b24.link_contact(&p.member_id, deal, contact);
    let fired = app
        .b24
        .fire_robot(&p.member_id, "mango_callback", deal, &[])
        .await
        .expect("robot");
    assert_eq!(fired.status, 200, "{}", fired.body);
    app.drain().await;

    assert_eq!(app.mango.callbacks().len(), 1, "the call was placed");
    assert_eq!(
        requests_to(&app, &p.member_id) - before,
        2,
        "one batch for the phone, one for the report"
    );
    let batches = report_batches(&app, &p.member_id, before);
    assert_eq!(
        batches,
        vec![vec![
            "bizproc.event.send".to_owned(),
            "crm.timeline.comment.add".to_owned()
        ]]
    );
    assert_eq!(app.b24.event_sends(&p.member_id).len(), 1);
    assert_eq!(app.b24.timeline_comments(&p.member_id, deal).len(), 1);
    let jobs = app.shared.db.run(queue::all).await.expect("jobs");
    let report = jobs
        .iter()
        .find(|j| j.kind == "report_callback")
        .expect("report job");
    assert_eq!(report.status, queue::DONE);
    assert_eq!(
        report.last_error, None,
        "an idle portal's report did not wait to be gathered"
    );
}
on_both_backends!(a_lone_report_is_one_request_sent_at_once);

async fn a_burst_of_fifty_reports_shares_requests_as_its_calls_are_placed(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("burst-report").await;
    let before = requests_to(&app, &p.member_id);
    let mut deals = Vec::new();
    for _ in 0..50 {
        deals.push(fire(&app, &p.member_id).await);
    }
    // Mango takes 4 callbacks a second per account: the calls are placed as the clock moves,
    // and their reports come due as they are placed.
    app.drain_over_time(Duration::from_secs(1), 40).await;

    assert_eq!(app.mango.callbacks().len(), 50, "every call placed once");
    assert_eq!(
        app.b24.event_sends(&p.member_id).len(),
        50,
        "answered once each"
    );
    for deal in &deals {
        assert_eq!(
            app.b24.timeline_comments(&p.member_id, *deal).len(),
            1,
            "deal {deal} commented once"
        );
    }
    let batches = report_batches(&app, &p.member_id, before);
    let reports: usize = batches.iter().map(|b| b.len() / 2).sum();
    assert_eq!(reports, 50, "{batches:?}");
    assert!(
        batches.iter().all(|b| b.len() <= 50),
        "no batch over Bitrix24's 50 commands"
    );
    // The calls are placed four a second (Mango's limit); a report goes alone while the budget
    // is plentiful, then shares a request with those due with it.
    assert!(
        batches.len() < 50 && batches.iter().any(|b| b.len() > 2),
        "reports share requests: {} requests",
        batches.len()
    );
    let all = requests_to(&app, &p.member_id) - before;
    assert!(all <= 50, "the whole burst took {all} requests");
}
on_both_backends!(a_burst_of_fifty_reports_shares_requests_as_its_calls_are_placed);

async fn reports_made_while_the_budget_runs_low_wait_for_the_next_second_and_share_a_request(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("low-budget").await;
    // Other work spent the portal's whole burst: it refills at under 2 a second, so the reports
    // below find it low however slowly the machine runs them.
    while app
        .shared
        .limiter
        .try_take(&p.member_id)
        .await
        .expect("budget")
        .is_zero()
    {}
    // The reports below each wait for the next whole second. The app's clock is moved to the
    // start of a second, so that the three are made inside one second however slowly the
    // machine runs them (a boundary between them would give two windows). Moving it by under a
    // second refills under 2 requests of the spent burst.
    app.advance(to_next_whole_second(&app));
    let before = requests_to(&app, &p.member_id);
    let registry = mango_callback::startup::job_registry();
    let mut deals = Vec::new();
    for _ in 0..3 {
        deals.push(fire(&app, &p.member_id).await);
        // Each call is placed and its report tried on its own, one after the other.
        for _ in 0..2 {
            // A claim's "now" is the database's clock, which SQLite reads to the millisecond: a
            // job made within the same millisecond (the app's clock) would not be due to it yet.
            app.advance(Duration::from_millis(1));
            for job in worker::claim_due(&app.worker_ctx, "w", 8).await {
                worker::run_one(&app.worker_ctx, &registry, "w", job).await;
            }
        }
    }
    assert_eq!(app.mango.callbacks().len(), 3);
    let jobs = app.shared.db.run(queue::all).await.expect("jobs");
    assert!(
        report_batches(&app, &p.member_id, before).is_empty(),
        "nothing reported yet: {jobs:#?}"
    );
    let jobs = app.shared.db.run(queue::all).await.expect("jobs");
    let waiting: Vec<_> = jobs
        .iter()
        .filter(|j| j.kind == "report_callback" && j.status == queue::QUEUED)
        .collect();
    assert_eq!(waiting.len(), 3, "{jobs:?}");
    assert!(
        waiting.iter().all(|j| j
            .last_error
            .as_deref()
            .unwrap_or_default()
            .starts_with("gathering:")),
        "{waiting:#?}"
    );
    let at = waiting[0].run_at;
    assert!(
        waiting.iter().all(|j| j.run_at == at),
        "all due at the same window"
    );
    assert_eq!(
        at.and_utc().timestamp_subsec_millis(),
        0,
        "a whole second: {at}"
    );

    // The budget may make the batch wait a little longer: all three wait together.
    app.drain_over_time(Duration::from_secs(1), 30).await;
    let batches = report_batches(&app, &p.member_id, before);
    assert_eq!(batches.len(), 1, "one request for the three: {batches:?}");
    assert_eq!(batches[0].len(), 6);
    assert_eq!(app.b24.event_sends(&p.member_id).len(), 3);
    for deal in deals {
        assert_eq!(app.b24.timeline_comments(&p.member_id, deal).len(), 1);
    }
}
on_both_backends!(
    reports_made_while_the_budget_runs_low_wait_for_the_next_second_and_share_a_request
);

/// Runs the portal's due jobs twice over, a millisecond apart: a fired call is placed and its
/// report tried.
async fn run_due_jobs(app: &TestApp) {
    let registry = mango_callback::startup::job_registry();
    for _ in 0..2 {
        // A claim's "now" is the database's clock, which SQLite reads to the millisecond.
        app.advance(Duration::from_millis(1));
        for job in worker::claim_due(&app.worker_ctx, "w", 8).await {
            worker::run_one(&app.worker_ctx, &registry, "w", job).await;
        }
    }
}

/// The report jobs waiting to be gathered (their note).
async fn gathering_reports(app: &TestApp) -> Vec<String> {
    let jobs = app.shared.db.run(queue::all).await.expect("jobs");
    jobs.into_iter()
        .filter(|j| j.kind == "report_callback" && j.status == queue::QUEUED)
        .filter_map(|j| j.last_error)
        .filter(|e| e.starts_with("gathering:"))
        .collect()
}

/// Exactly one report waits to be gathered, its note saying `why`.
async fn assert_one_gathering(app: &TestApp, why: &str) {
    let waiting = gathering_reports(app).await;
    assert!(
        waiting.len() == 1 && waiting[0].contains(why),
        "one report gathered because its portal's {why}: {waiting:?}"
    );
}

async fn a_portal_whose_budget_ran_low_gathers_its_reports_until_it_has_been_quiet_for_ten_seconds(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("held-low").await;
    let limiter = &app.shared.limiter;
    // A full budget, spent to under a fifth, well under the share at which a report goes at
    // once (0.9): the budget refills with the database's clock, which runs in real time too (18
    // requests a second here), and spent to just under 0.9 a slow run found it back over the
    // mark before the report asked. Under a fifth leaves ~2 s of slack and room for the lookup.
    app.advance(Duration::from_secs(60));
    while limiter.spare(&p.member_id).await.expect("budget") >= 0.2 {
        assert!(limiter
            .try_take(&p.member_id)
            .await
            .expect("budget")
            .is_zero());
    }
    fire(&app, &p.member_id).await;
    run_due_jobs(&app).await;
    assert_one_gathering(&app, "request budget left").await;
    // Its window comes and it goes; the budget is back over the mark.
    app.advance(Duration::from_secs(5));
    run_due_jobs(&app).await;
    assert_eq!(app.b24.event_sends(&p.member_id).len(), 1);
    let spare = limiter.spare(&p.member_id).await.expect("budget");
    assert!(spare >= 0.9, "the budget refilled: {spare}");

    // A report 5 s later is gathered anyway: the portal ran low a moment ago.
    fire(&app, &p.member_id).await;
    run_due_jobs(&app).await;
    assert_one_gathering(&app, "ran low within the last 10 s").await;
    app.drain_over_time(Duration::from_secs(1), 10).await;
    assert_eq!(app.b24.event_sends(&p.member_id).len(), 2);

    // Quiet for over 10 s: the next report goes at once again.
    app.advance(Duration::from_secs(11));
    let before = requests_to(&app, &p.member_id);
    fire(&app, &p.member_id).await;
    run_due_jobs(&app).await;
    assert!(gathering_reports(&app).await.is_empty());
    assert_eq!(
        app.b24.event_sends(&p.member_id).len(),
        3,
        "reported at once"
    );
    assert_eq!(
        report_batches(&app, &p.member_id, before).len(),
        1,
        "in a request of its own"
    );
}
on_both_backends!(
    a_portal_whose_budget_ran_low_gathers_its_reports_until_it_has_been_quiet_for_ten_seconds
);

async fn a_deleted_deal_in_a_shared_report_request_does_not_hold_up_the_others(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("deleted-deal").await;
    let before = requests_to(&app, &p.member_id);
    let mut deals = Vec::new();
    for _ in 0..3 {
        deals.push(fire(&app, &p.member_id).await);
    }
    // The calls are placed; the second deal is deleted before the reports go.
    let registry = mango_callback::startup::job_registry();
    let placed = worker::claim_due(&app.worker_ctx, "w", 8).await;
    assert_eq!(placed.len(), 3);
    for job in placed {
        worker::run_one(&app.worker_ctx, &registry, "w", job).await;
    }
    // The portal is idle long enough for its budget to refill: the first report goes at once
    // and takes the other two with it, whatever the real time (a low budget would make each
    // wait for a whole-second window, and a slow machine could put them in two windows).
    app.advance(Duration::from_secs(60));
    app.b24.delete_deal(&p.member_id, deals[1]);
    app.drain().await;

    let batches = report_batches(&app, &p.member_id, before);
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(
        app.b24.event_sends(&p.member_id).len(),
        3,
        "every business process answered"
    );
    assert_eq!(app.b24.timeline_comments(&p.member_id, deals[0]).len(), 1);
    assert_eq!(app.b24.timeline_comments(&p.member_id, deals[2]).len(), 1);
    let jobs = app.shared.db.run(queue::all).await.expect("jobs");
    assert!(
        jobs.iter()
            .filter(|j| j.kind == "report_callback")
            .all(|j| j.status == queue::DONE),
        "nothing left to retry: {jobs:?}"
    );
    assert_eq!(
        report_batches(&app, &p.member_id, before).len(),
        1,
        "and nothing sent again"
    );
}
on_both_backends!(a_deleted_deal_in_a_shared_report_request_does_not_hold_up_the_others);
