//! Token refresh that cannot lose a portal: Bitrix24 consumes a refresh token on receipt, so a
//! slow answer is waited for, a racing instance waits for the lease holder, and a portal whose
//! refresh answer really was lost says exactly why.

use std::time::Duration;

use mango_callback::bitrix::BitrixError;
use mango_callback::db::Backend;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_configured, spawn_instance};
use crate::on_both_backends;

async fn two_instances_racing_for_a_refresh_answered_forty_seconds_later_both_keep_working(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let second = spawn_instance(&app.db_url, &app.b24, &app.mango, 20.0, None).await;
    let p = app.installed_portal("slow-oauth").await;
    app.b24.expire_access_tokens(&p.member_id);
    // Real waiting is scaled down: the answer comes after 2 s, while both instances' clocks
    // (which time the lease) move 40 s on.
    app.b24.delay_refresh_answers(Duration::from_secs(2));
    let (first_api, second_api) = (app.ctx.bitrix(), second.ctx.bitrix());
    let first = first_api.call(&p.member_id, "user.admin", json!({}));
    let late = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        app.advance(Duration::from_secs(40));
        second.advance(Duration::from_secs(40));
        second_api.call(&p.member_id, "user.admin", json!({})).await
    };
    let (a, b) = tokio::join!(first, late);
    assert_eq!(a.expect("the lease holder's call"), json!(true));
    assert_eq!(b.expect("the waiting instance's call"), json!(true));
    assert_eq!(
        app.b24.refresh_count(&p.member_id),
        1,
        "exactly one refresh reached the OAuth server"
    );
    assert_eq!(app.b24.calls_to("oauth.token").len(), 1);
    assert_eq!(app.b24.rejections("invalid_grant"), 0);
    let row = app.portal_row(&p.member_id).await.expect("row");
    assert!(!row.needs_reauth);
    assert!(row.refresh_lock_by.is_none(), "the lease was given back");
}
on_both_backends!(
    two_instances_racing_for_a_refresh_answered_forty_seconds_later_both_keep_working
);

async fn a_refresh_answer_within_the_configured_timeout_is_waited_for(backend: Backend) {
    let app = spawn_app_configured(backend, Default::default(), |s| {
        s.b24_oauth_timeout = Duration::from_secs(6);
    })
    .await;
    let p = app.installed_portal("patient").await;
    app.b24.expire_access_tokens(&p.member_id);
    app.b24.delay_refresh_answers(Duration::from_secs(4));
    let r = app
        .ctx
        .bitrix()
        .call(&p.member_id, "user.admin", json!({}))
        .await
        .expect("the slow answer was waited for");
    assert_eq!(r, json!(true));
    assert_eq!(app.b24.refresh_count(&p.member_id), 1);
}
on_both_backends!(a_refresh_answer_within_the_configured_timeout_is_waited_for);

async fn a_refresh_answer_that_never_arrives_leaves_the_portal_saying_why(backend: Backend) {
    let app = spawn_app_configured(backend, Default::default(), |s| {
        s.b24_oauth_timeout = Duration::from_secs(1);
    })
    .await;
    let p = app.installed_portal("lost-answer").await;
    app.b24.expire_access_tokens(&p.member_id);
    app.b24.delay_refresh_answers(Duration::from_secs(3));
    let err = app
        .ctx
        .bitrix()
        .call(&p.member_id, "user.admin", json!({}))
        .await
        .expect_err("no answer within the timeout");
    assert!(err.is_transient(), "tried again later: {err}");
    let row = app.portal_row(&p.member_id).await.expect("row");
    assert!(!row.needs_reauth, "not given up on a missing answer alone");
    // The next try sends the consumed token and is refused: now the portal is lost, and why.
    app.b24.delay_refresh_answers(Duration::ZERO);
    let err = app
        .ctx
        .bitrix()
        .call(&p.member_id, "user.admin", json!({}))
        .await
        .expect_err("the grant is gone");
    assert!(matches!(err, BitrixError::NeedsReauth { .. }), "{err}");
    let row = app.portal_row(&p.member_id).await.expect("row");
    assert!(row.needs_reauth);
    let why = row.refresh_problem.expect("a reason is stored");
    assert!(why.contains("invalid_grant"), "{why}");
    assert!(why.contains("got no answer"), "{why}");
    app.b24.add_user(&p.member_id, 7, false);
    let (status, html) = app.open_app_page(&p, 7, "en").await;
    assert_eq!(status, 200);
    assert!(html.contains("got no answer"), "the page says why: {html}");
}
on_both_backends!(a_refresh_answer_that_never_arrives_leaves_the_portal_saying_why);

async fn an_instance_killed_mid_refresh_is_waited_for_and_the_lost_portal_says_why(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let doomed = spawn_instance(&app.db_url, &app.b24, &app.mango, 20.0, None).await;
    let p = app.installed_portal("killed").await;
    app.b24.expire_access_tokens(&p.member_id);
    app.b24.delay_refresh_answers(Duration::from_secs(3));
    // The doomed instance sends the refresh (the token is consumed at once) and dies before the
    // answer: its future is dropped mid-request, its lease stays in the row.
    let doomed_api = doomed.ctx.bitrix();
    let cut = tokio::time::timeout(
        Duration::from_millis(700),
        doomed_api.call(&p.member_id, "user.admin", json!({})),
    )
    .await;
    assert!(cut.is_err(), "killed mid-refresh");
    drop(doomed_api);
    drop(doomed);
    let held = app.portal_row(&p.member_id).await.expect("row");
    assert!(held.refresh_lock_by.is_some(), "the dead holder's lease");
    app.b24.delay_refresh_answers(Duration::ZERO);
    let api = app.ctx.bitrix();
    let mut survivor = Box::pin(api.call(&p.member_id, "user.admin", json!({})));
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut survivor)
            .await
            .is_err(),
        "waits while the holder's lease is live"
    );
    assert_eq!(
        app.b24.calls_to("oauth.token").len(),
        1,
        "nothing sent while waiting"
    );
    // The lease (three OAuth timeouts) runs out by the database's clock.
    app.advance(Duration::from_secs(181));
    let err = survivor
        .await
        .expect_err("the dead holder's answer is lost");
    assert!(matches!(err, BitrixError::NeedsReauth { .. }), "{err}");
    let row = app.portal_row(&p.member_id).await.expect("row");
    assert!(row.needs_reauth);
    let why = row.refresh_problem.expect("a reason is stored");
    assert!(why.contains("invalid_grant"), "{why}");
    assert!(
        why.contains(held.refresh_lock_by.as_deref().unwrap_or("-")),
        "names the instance whose refresh never finished: {why}"
    );
}
on_both_backends!(an_instance_killed_mid_refresh_is_waited_for_and_the_lost_portal_says_why);
