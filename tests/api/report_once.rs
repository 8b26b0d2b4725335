//! A report's timeline comment is added once even when Bitrix24 did the work but its answer was
//! lost: the retried report looks at the deal's comments before adding it again.

use std::time::Duration;

use mango_callback::db::Backend;

use crate::helpers::spawn_app;
use crate::on_both_backends;

const PHONE: &str = "+7 900 123-45-67";

async fn a_timeline_comment_whose_answer_was_lost_is_not_added_a_second_time(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("lost-comment").await;
    app.b24
        .lose_answers(&p.member_id, "crm.timeline.comment.add", 1);
    let deal = app.robot_call_with_phone(&p.member_id, PHONE).await;
    assert_eq!(
        app.b24.timeline_comments(&p.member_id, deal).len(),
        1,
        "Bitrix24 added the comment although the app never heard back"
    );
    // The report is retried after its backoff.
    app.advance(Duration::from_secs(600));
    app.drain().await;
    let comments = app.b24.timeline_comments(&p.member_id, deal);
    assert_eq!(comments.len(), 1, "added once: {comments:?}");
    assert_eq!(
        app.b24.calls_to("crm.timeline.comment.list").len(),
        1,
        "the retry looked before adding"
    );
    assert_eq!(app.b24.event_sends(&p.member_id).len(), 1);
}
on_both_backends!(a_timeline_comment_whose_answer_was_lost_is_not_added_a_second_time);

async fn a_report_retried_before_its_comment_went_out_still_adds_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("late-comment").await;
    // The first try fails at the comment (nothing added): the retry looks, finds nothing, adds.
    app.b24.fail_method_next(
        &p.member_id,
        "crm.timeline.comment.add",
        1,
        mango_callback::sandbox::bitrix::Fault::Internal,
    );
    let deal = app.robot_call_with_phone(&p.member_id, PHONE).await;
    assert!(app.b24.timeline_comments(&p.member_id, deal).is_empty());
    app.advance(Duration::from_secs(600));
    app.drain().await;
    assert_eq!(app.b24.timeline_comments(&p.member_id, deal).len(), 1);
    assert_eq!(app.b24.calls_to("crm.timeline.comment.list").len(), 1);
}
on_both_backends!(a_report_retried_before_its_comment_went_out_still_adds_it);
