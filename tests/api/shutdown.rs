//! Graceful shutdown: a stopping instance takes no new request or job, lets running jobs finish
//! within its grace period, and gives back the ones still running so another instance takes them
//! at once, not after their lease.

use std::time::{Duration, Instant};

use mango_callback::config::Settings;
use mango_callback::db::Backend;
use mango_callback::jobs::queue::{self, JobRow};
use mango_callback::sandbox::LocalSettings;
use mango_callback::startup::{Application, RunOptions, Stopper};

use crate::helpers::{spawn_app, TestApp};
use crate::on_both_backends;

/// A second instance on the test app's database, with its background worker running.
async fn worker_instance(
    app: &TestApp,
    grace: Duration,
) -> (
    String,
    Stopper,
    actix_web::rt::task::JoinHandle<std::io::Result<()>>,
) {
    let settings = Settings::for_local(&app.db_url, &app.b24.url(), &app.mango.api_url());
    let instance = Application::build(
        settings,
        RunOptions {
            background_worker: true,
            http_workers: 1,
            shutdown_grace: grace,
            ..RunOptions::default()
        },
    )
    .await
    .expect("instance builds");
    let base = format!("http://127.0.0.1:{}", instance.port());
    let stopper = instance.stopper();
    (
        base,
        stopper,
        actix_web::rt::spawn(instance.run_until_stopped()),
    )
}

async fn jobs(app: &TestApp) -> Vec<JobRow> {
    app.shared.db.run(queue::all).await.expect("jobs")
}

/// Waits (bounded, real time: the other instance's worker runs on its own) until `pred` holds.
async fn until(app: &TestApp, what: &str, pred: impl Fn(&[JobRow]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if pred(&jobs(app).await) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

fn place_call(rows: &[JobRow]) -> Option<&JobRow> {
    rows.iter().find(|j| j.kind == "place_call")
}

async fn a_job_still_running_at_shutdown_is_released_and_taken_over_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("stopping").await;
    let contact = app
        .b24
        .add_contact(&p.member_id, &[("MOBILE", "+7 900 555-77-88")]);
    let deal = app.b24.add_deal(&p.member_id, Some(contact));
    let (base, stopper, served) = worker_instance(&app, Duration::from_millis(200)).await;

    // The phone lookup hangs, so the job is still running when the stop comes.
    app.b24.set_latency(Duration::from_secs(30));
    let body = app.robot_body(&p, deal, &[], Default::default());
    let (status, answer) = {
        let mut resp = app
            .http
            .post(format!("{base}/b24/robot"))
            .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
            .send_body(body)
            .await
            .expect("robot call reaches the stopping instance");
        let b = resp.body().await.expect("body");
        (
            resp.status().as_u16(),
            String::from_utf8_lossy(&b).into_owned(),
        )
    };
    assert_eq!(status, 200, "{answer}");
    until(&app, "the other instance runs the job", |rows| {
        place_call(rows).is_some_and(|j| j.status == "running")
    })
    .await;

    let stopped_at = Instant::now();
    stopper.stop().await;
    served.await.expect("task").expect("served");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(10),
        "the stop waited the grace period, not the peer: {:?}",
        stopped_at.elapsed()
    );
    let rows = jobs(&app).await;
    let job = place_call(&rows).expect("the job");
    assert_eq!(
        job.status, "queued",
        "released, not left running under a lease"
    );
    assert!(job.locked_by.is_none() && job.locked_until.is_none());
    assert_eq!(job.attempts, 0, "a release is not a failed attempt");
    assert!(
        app.http.get(format!("{base}/health")).send().await.is_err(),
        "the stopped instance accepts no connection"
    );

    // Another instance takes it over at once, without waiting for any lease, and rings once.
    app.b24.set_latency(Duration::ZERO);
    app.drain().await;
    assert_eq!(app.mango.callbacks().len(), 1, "one call, not two");
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0]["RETURN_VALUES"]["result"], "started");
}
on_both_backends!(a_job_still_running_at_shutdown_is_released_and_taken_over_at_once);

async fn a_job_that_finishes_within_the_grace_period_completes_before_the_stop_returns(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("finishing").await;
    let contact = app
        .b24
        .add_contact(&p.member_id, &[("MOBILE", "+7 900 555-77-99")]);
    let deal = app.b24.add_deal(&p.member_id, Some(contact));
    let (base, stopper, served) = worker_instance(&app, Duration::from_secs(20)).await;

    app.b24.set_latency(Duration::from_millis(300));
    let body = app.robot_body(&p, deal, &[], Default::default());
    let mut resp = app
        .http
        .post(format!("{base}/b24/robot"))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
        .send_body(body)
        .await
        .expect("robot call");
    assert_eq!(resp.status().as_u16(), 200);
    let _ = resp.body().await;
    until(&app, "the other instance runs the job", |rows| {
        place_call(rows).is_some_and(|j| j.status == "running")
    })
    .await;

    stopper.stop().await;
    served.await.expect("task").expect("served");
    let rows = jobs(&app).await;
    assert_eq!(
        place_call(&rows).map(|j| j.status.as_str()),
        Some("done"),
        "the running job finished"
    );
    assert_eq!(app.mango.callbacks().len(), 1);
    // The report it enqueued was not claimed by the stopping worker; another one sends it.
    app.b24.set_latency(Duration::ZERO);
    app.drain().await;
    assert_eq!(app.b24.event_sends(&p.member_id).len(), 1);
}
on_both_backends!(a_job_that_finishes_within_the_grace_period_completes_before_the_stop_returns);
