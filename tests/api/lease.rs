//! Short renewed job leases: a dead instance's jobs are taken over within the lease (measured on
//! the database's clock plus the test clock's offset), and a worker that lost its lease cannot
//! send the Mango command.

use std::time::Duration;

use mango_callback::callback::{self, Status};
use mango_callback::db::Backend;
use mango_callback::jobs::queue;
use mango_callback::jobs::queue::JobRow;
use mango_callback::jobs::worker;
use mango_callback::sandbox::bitrix::SimPortal;
use mango_callback::startup::job_registry;

use crate::helpers::{spawn_app, spawn_instance, TestApp, MANGO_KEY};
use crate::on_both_backends;

const PHONE: &str = "89001234567";

/// A robot call accepted (200) with its `place_call` job left queued; returns portal and deal.
async fn accepted_robot_call(app: &TestApp) -> (SimPortal, u64) {
    let p = app.installed_portal("leases").await;
    let deal = app.b24.add_deal(&p.member_id, None);
    fire(app, &p, deal).await;
    (p, deal)
}

async fn fire(app: &TestApp, p: &SimPortal, deal: u64) {
    let fired = app
        .b24
        .fire_robot(&p.member_id, "mango_callback", deal, &[("phone", PHONE)])
        .await
        .expect("the robot is registered");
    assert_eq!(fired.status, 200, "{}", fired.body);
}

async fn statuses(app: &TestApp, member_id: &str) -> Vec<Status> {
    let mid = member_id.to_owned();
    let mut rows = app
        .shared
        .db
        .run(move |c| callback::store::latest(c, &mid, 50))
        .await
        .expect("db");
    rows.reverse();
    rows.into_iter().map(|cb| cb.status).collect()
}

/// A worker takes the `place_call` job and then vanishes (its process was killed): it never
/// renews the lease, finishes the job or releases it.
async fn claimed_by(app: &TestApp, who: &str) -> JobRow {
    worker::claim_due(&app.ctx, who, 8)
        .await
        .into_iter()
        .find(|j| j.kind == "place_call")
        .expect("the place_call job is claimed")
}

async fn a_killed_instance_s_callback_is_placed_by_another_within_the_lease(backend: Backend) {
    let app = spawn_app(backend).await;
    accepted_robot_call(&app).await;
    claimed_by(&app, "killed-worker").await;
    let other = spawn_instance(&app.db_url, &app.b24, &app.mango, 20.0, None).await;
    assert_eq!(other.drain().await, 0, "a live lease is not taken over");

    let lease = worker::DEFAULT_LEASE;
    other.advance(lease - Duration::from_secs(2));
    assert_eq!(other.drain().await, 0, "nor one about to run out");
    assert!(app.mango.callbacks().is_empty());

    other.advance(Duration::from_secs(3));
    assert!(other.drain().await >= 1, "the expired lease is taken over");
    assert_eq!(app.mango.callbacks().len(), 1, "the client is called once");
}
on_both_backends!(a_killed_instance_s_callback_is_placed_by_another_within_the_lease);

async fn a_worker_whose_lease_was_taken_over_cannot_start_the_call(backend: Backend) {
    let app = spawn_app(backend).await;
    accepted_robot_call(&app).await;
    let stale = claimed_by(&app, "stalled-worker").await;
    let other = spawn_instance(&app.db_url, &app.b24, &app.mango, 20.0, None).await;
    other.advance(worker::DEFAULT_LEASE + Duration::from_secs(1));
    let fresh = claimed_by(&other, "new-worker").await;

    // The stalled worker wakes up and carries on with the job it no longer owns.
    worker::run_one(&app.ctx, &job_registry(), "stalled-worker", stale).await;
    assert!(
        app.mango.callbacks().is_empty(),
        "no Mango command without the lease"
    );

    worker::run_one(&other.ctx, &job_registry(), "new-worker", fresh).await;
    other.drain().await;
    assert_eq!(app.mango.callbacks().len(), 1, "the owner calls, once");
}
on_both_backends!(a_worker_whose_lease_was_taken_over_cannot_start_the_call);

async fn an_uninstall_ends_unfinished_callbacks_and_frees_their_deals(backend: Backend) {
    let app = spawn_app(backend).await;
    let (p, deal) = accepted_robot_call(&app).await;
    let answers = app
        .b24
        .send_event(&p.member_id, "ONAPPUNINSTALL", &[])
        .await
        .expect("event");
    assert_eq!(answers, [200]);
    assert_eq!(statuses(&app, &p.member_id).await, [Status::Failed]);

    // Installed again, the same deal gets its callback: no duplicate of a run that ended.
    let (status, page) = app.open_installer(&p, p.admin_user_id).await;
    assert_eq!(status, 200, "{page}");
    app.configure_mango(&p.member_id).await;
    app.drain().await;
    fire(&app, &p, deal).await;
    app.drain().await;
    assert_eq!(
        statuses(&app, &p.member_id).await,
        [Status::Failed, Status::Started]
    );
    assert_eq!(app.mango.callbacks().len(), 1);
}
on_both_backends!(an_uninstall_ends_unfinished_callbacks_and_frees_their_deals);

async fn a_callback_whose_job_died_does_not_block_its_deal(backend: Backend) {
    let app = spawn_app(backend).await;
    let (p, deal) = accepted_robot_call(&app).await;
    // The job dies without finishing its callback (a bug buried it).
    let job = claimed_by(&app, "buggy-worker").await;
    let buried = app
        .shared
        .db
        .run(move |c| {
            let now = chrono::Utc::now().naive_utc();
            Ok::<_, mango_callback::db::DbError>(queue::bury(
                c,
                &job.id,
                "buggy-worker",
                "a bug",
                now,
            )?)
        })
        .await
        .expect("db");
    assert!(buried);
    app.expect_dead_jobs("place_call", 1);

    fire(&app, &p, deal).await;
    app.drain().await;
    assert_eq!(
        statuses(&app, &p.member_id).await,
        [Status::Queued, Status::Started],
        "the new run is not cut off as a duplicate"
    );
    assert_eq!(app.mango.callbacks().len(), 1);
}
on_both_backends!(a_callback_whose_job_died_does_not_block_its_deal);

/// A run moved the callback to `calling` (the step right before the Mango command goes out) and
/// its process died there: nobody knows whether Mango got the command. Returns its command id.
async fn interrupted_while_calling(app: &TestApp) -> (SimPortal, String) {
    let (p, _) = accepted_robot_call(app).await;
    let job = claimed_by(app, "killed-worker").await;
    let mid = p.member_id.clone();
    let clock = app.clock.clone();
    let command_id = app
        .shared
        .db
        .run(move |c| {
            let cb = callback::store::latest(c, &mid, 1)?
                .pop()
                .ok_or(diesel::result::Error::NotFound)?;
            let command_id = callback::command_id(&cb.member_id, &cb.deal_id, &cb.id);
            let at = callback::lifecycle::SendAt {
                job_id: &job.id,
                worker: "killed-worker",
                clock: &clock,
            };
            let moved = callback::lifecycle::start_calling(
                c,
                &cb,
                &at,
                ("002", "79001234567", &command_id),
            )?;
            assert!(moved, "the lease holder may start the call");
            Ok::<_, mango_callback::db::DbError>(command_id)
        })
        .await
        .expect("db");
    assert_eq!(statuses(app, &p.member_id).await, [Status::Calling]);
    app.advance(worker::DEFAULT_LEASE + Duration::from_secs(1));
    (p, command_id)
}

async fn a_call_interrupted_after_mango_reported_its_result_ends_started_without_a_second_command(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let (p, command_id) = interrupted_while_calling(&app).await;
    let status = app
        .mango
        .post_result(&app.mango_url(), MANGO_KEY, &command_id, 1000)
        .await
        .expect("posted");
    assert_eq!(status, 200);

    app.drain().await;
    assert_eq!(statuses(&app, &p.member_id).await, [Status::Started]);
    assert!(app.mango.callbacks().is_empty(), "nothing sent again");
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0]["RETURN_VALUES"]["result"], "started");
}
on_both_backends!(
    a_call_interrupted_after_mango_reported_its_result_ends_started_without_a_second_command
);

async fn a_call_interrupted_without_a_result_waits_for_it_then_sends_again_under_a_new_id(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let (p, command_id) = interrupted_while_calling(&app).await;
    app.drain().await;
    assert_eq!(
        statuses(&app, &p.member_id).await,
        [Status::Calling],
        "it waits for Mango's result"
    );
    assert!(app.b24.event_sends(&p.member_id).is_empty());

    app.advance(callback::resend::RESULT_WAIT);
    app.drain().await;
    assert_eq!(statuses(&app, &p.member_id).await, [Status::Started]);
    assert_eq!(app.mango.callbacks().len(), 1, "sent again, once");
    assert_eq!(
        app.command_id(0),
        format!("{command_id}:1"),
        "under a new command id: Mango does not deduplicate them"
    );
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1, "the business process is told");
    assert_eq!(sends[0]["RETURN_VALUES"]["result"], "started");
}
on_both_backends!(a_call_interrupted_without_a_result_waits_for_it_then_sends_again_under_a_new_id);

async fn a_worker_renews_only_a_lease_it_still_holds(backend: Backend) {
    let (url, _dir) = crate::helpers::fresh_database(backend);
    let db = mango_callback::db::Db::connect(&url, 2).expect("db");
    let mut conn = db.get_blocking().expect("conn");
    let now = mango_callback::db::database_now(&mut conn).expect("the database's clock");
    let job = queue::NewJob {
        kind: "noop",
        payload: "{}".into(),
        member_id: None,
        dedup_key: None,
        run_at: now,
        max_attempts: 3,
    };
    queue::enqueue(&mut conn, &job, now).expect("enqueue");
    let lease = chrono::Duration::seconds(20);
    let first = queue::claim(&mut conn, "w1", now, now + lease, 1).expect("claim");
    let id = first[0].id.clone();
    let later = now + chrono::Duration::seconds(15);
    assert!(queue::renew(&mut conn, &id, "w1", later + lease).expect("renew"));
    let first_expiry = now + lease + chrono::Duration::seconds(1);
    assert!(
        queue::claim(&mut conn, "w2", first_expiry, first_expiry + lease, 1)
            .expect("claim")
            .is_empty(),
        "a renewed lease is not taken over at its first expiry"
    );
    let expired = later + lease + chrono::Duration::seconds(1);
    let taken = queue::claim(&mut conn, "w2", expired, expired + lease, 1).expect("claim");
    assert_eq!(taken.len(), 1, "an expired lease is taken over by a claim");
    assert!(!queue::renew(&mut conn, &id, "w1", expired + lease).expect("renew"));
    assert!(!queue::holds_lease(&mut conn, &id, "w1", expired).expect("fence"));
    assert!(queue::holds_lease(&mut conn, &id, "w2", expired).expect("fence"));
}
on_both_backends!(a_worker_renews_only_a_lease_it_still_holds);
