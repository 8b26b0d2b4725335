//! A Mango command whose outcome is unknown (5xx, no answer in time): the callback waits for
//! Mango's `result/callback_group` and sends again under a new `command_id` only when none came,
//! so every callback that should ring has exactly one accepted command.

use std::time::Duration;

use mango_callback::callback::{self, resend::RESULT_WAIT, Status};
use mango_callback::db::Backend;
use mango_callback::jobs::queue::JobRow;
use mango_callback::jobs::worker;
use mango_callback::sandbox::mango::Reply;
use mango_callback::startup::job_registry;

use crate::helpers::{spawn_app, spawn_instance, TestApp, MANGO_KEY};
use crate::on_both_backends;

const PHONE: &str = "89001234567";

fn server_error() -> Reply {
    Reply::Http(500, "<html>Internal Server Error</html>".into())
}

/// The portal's only callback, as stored.
async fn the_callback(app: &TestApp, member_id: &str) -> callback::Callback {
    let mid = member_id.to_owned();
    let mut rows = app
        .shared
        .db
        .run(move |c| callback::store::latest(c, &mid, 2))
        .await
        .expect("db");
    assert_eq!(rows.len(), 1, "one callback");
    rows.remove(0)
}

/// `callback_group` requests Mango received, whatever it answered.
fn commands_sent(app: &TestApp) -> usize {
    app.mango
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("callback_group"))
        .count()
}

/// Lets the wait for Mango's result run out, then runs the jobs.
async fn after_the_wait(app: &TestApp) {
    app.advance(RESULT_WAIT + Duration::from_secs(1));
    app.drain().await;
}

async fn a_command_lost_in_a_5xx_is_sent_again_under_a_new_id_after_the_wait_and_rings_once(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("lost").await;
    app.mango.push_reply(MANGO_KEY, server_error());
    app.robot_call_with_phone(&p.member_id, PHONE).await;
    let first = the_callback(&app, &p.member_id).await;
    assert_eq!(first.status, Status::Calling, "it waits for Mango's result");
    assert!(app.b24.event_sends(&p.member_id).is_empty());
    app.drain().await;
    assert_eq!(commands_sent(&app), 1, "nothing is resent within the wait");

    after_the_wait(&app).await;
    let cb = the_callback(&app, &p.member_id).await;
    assert_eq!(cb.status, Status::Started);
    assert_eq!(commands_sent(&app), 2);
    assert_eq!(app.mango.callbacks().len(), 1, "one accepted command");
    let first_id = first.command_id.expect("sent with a command id");
    assert_eq!(
        app.command_id(0),
        format!("{first_id}:1"),
        "a new command id"
    );
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0]["RETURN_VALUES"]["result"], "started");
}
on_both_backends!(
    a_command_lost_in_a_5xx_is_sent_again_under_a_new_id_after_the_wait_and_rings_once
);

async fn a_command_mango_took_before_its_answer_timed_out_is_not_sent_again(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("slow").await;
    // Accepted at once, answered after the app's 10 s Mango timeout.
    app.mango
        .push_reply(MANGO_KEY, Reply::Delay(Duration::from_secs(12)));
    app.robot_call_with_phone(&p.member_id, PHONE).await;
    assert_eq!(
        the_callback(&app, &p.member_id).await.status,
        Status::Calling
    );
    assert_eq!(app.mango.callbacks().len(), 1);
    let status = app
        .mango
        .post_result(&app.mango_url(), MANGO_KEY, &app.command_id(0), 1000)
        .await
        .expect("posted");
    assert_eq!(status, 200);
    app.advance(Duration::from_secs(10));
    app.drain().await;
    assert_eq!(
        the_callback(&app, &p.member_id).await.status,
        Status::Started
    );

    after_the_wait(&app).await;
    after_the_wait(&app).await;
    assert_eq!(commands_sent(&app), 1, "never sent again");
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0]["RETURN_VALUES"]["result"], "started");
}
on_both_backends!(a_command_mango_took_before_its_answer_timed_out_is_not_sent_again);

async fn a_late_result_for_the_first_command_after_a_resend_ends_the_callback_once(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("late").await;
    app.mango.push_reply(MANGO_KEY, server_error());
    app.mango.push_reply(MANGO_KEY, server_error());
    app.robot_call_with_phone(&p.member_id, PHONE).await;
    let first_id = the_callback(&app, &p.member_id)
        .await
        .command_id
        .expect("sent with a command id");
    after_the_wait(&app).await;
    assert_eq!(commands_sent(&app), 2, "resent once");
    assert_eq!(
        the_callback(&app, &p.member_id).await.status,
        Status::Calling
    );

    // Mango had taken the first command after all; its result comes late, under the old id.
    let url = app.mango_url();
    let status = app
        .mango
        .post_result(&url, MANGO_KEY, &first_id, 1000)
        .await
        .expect("posted");
    assert_eq!(status, 200);
    app.advance(Duration::from_secs(10));
    app.drain().await;
    assert_eq!(
        the_callback(&app, &p.member_id).await.status,
        Status::Started
    );
    // The resend's own result, should it come too, changes nothing.
    let resent = format!("{first_id}:1");
    let status = app
        .mango
        .post_result(&url, MANGO_KEY, &resent, 1000)
        .await
        .expect("posted");
    assert_eq!(status, 200);
    after_the_wait(&app).await;
    after_the_wait(&app).await;
    assert_eq!(commands_sent(&app), 2, "no third command");
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1, "reported once: {sends:?}");
    assert_eq!(sends[0]["RETURN_VALUES"]["result"], "started");
}
on_both_backends!(a_late_result_for_the_first_command_after_a_resend_ends_the_callback_once);

async fn a_command_never_confirmed_is_sent_at_most_twice_more_then_fails(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("never").await;
    for _ in 0..4 {
        app.mango.push_reply(MANGO_KEY, server_error());
    }
    app.robot_call_with_phone(&p.member_id, PHONE).await;
    for _ in 0..4 {
        after_the_wait(&app).await;
    }
    assert_eq!(commands_sent(&app), 3, "the first command and two resends");
    assert_eq!(
        the_callback(&app, &p.member_id).await.status,
        Status::Failed
    );
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0]["RETURN_VALUES"]["result"], "failed");
}
on_both_backends!(a_command_never_confirmed_is_sent_at_most_twice_more_then_fails);

async fn claimed_by(app: &TestApp, who: &str) -> JobRow {
    worker::claim_due(&app.ctx, who, 8)
        .await
        .into_iter()
        .find(|j| j.kind == "place_call")
        .expect("the place_call job is claimed")
}

async fn a_worker_whose_lease_was_taken_over_cannot_send_the_command_again(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("fenced").await;
    app.mango.push_reply(MANGO_KEY, server_error());
    app.robot_call_with_phone(&p.member_id, PHONE).await;
    let wait = RESULT_WAIT + Duration::from_secs(1);
    app.advance(wait);
    let stale = claimed_by(&app, "stalled-worker").await;
    let other = spawn_instance(&app.db_url, &app.b24, &app.mango, 20.0, None).await;
    other.advance(wait + worker::DEFAULT_LEASE + Duration::from_secs(1));
    let fresh = claimed_by(&other, "new-worker").await;

    // The stalled worker wakes up and carries on with the job it no longer owns.
    worker::run_one(&app.ctx, &job_registry(), "stalled-worker", stale).await;
    assert_eq!(commands_sent(&app), 1, "no resend without the lease");

    worker::run_one(&other.ctx, &job_registry(), "new-worker", fresh).await;
    other.drain().await;
    assert_eq!(commands_sent(&app), 2, "the owner resends, once");
    assert_eq!(app.mango.callbacks().len(), 1);
    assert_eq!(
        the_callback(&app, &p.member_id).await.status,
        Status::Started
    );
}
on_both_backends!(a_worker_whose_lease_was_taken_over_cannot_send_the_command_again);
