//! Tokens and limits: refresh once on expiry (single-flight), stay under the portal's rate limit.

use mango_callback::db::Backend;
use mango_callback::sandbox::bitrix::Fault;
use serde_json::json;

use mango_callback::bitrix::BitrixError;
use mango_callback::sandbox::bitrix::SimPortal;

use crate::helpers::{spawn_app, spawn_app_configured, TestApp};
use crate::on_both_backends;

async fn an_expired_token_is_refreshed_once_and_the_call_retried(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("expiry").await;
    app.b24.expire_access_tokens(&p.member_id);
    let r = app
        .ctx
        .bitrix()
        .call(&p.member_id, "user.admin", json!({}))
        .await
        .expect("call succeeds after refresh");
    assert_eq!(r, json!(true));
    assert_eq!(app.b24.refresh_count(&p.member_id), 1);
}
on_both_backends!(an_expired_token_is_refreshed_once_and_the_call_retried);

async fn twenty_concurrent_calls_on_an_expired_token_cause_one_refresh(backend: Backend) {
    let app = spawn_app(backend).await;
    let second =
        crate::helpers::spawn_instance(&app.db_url, &app.b24, &app.mango, 20.0, None).await;
    let p = app.installed_portal("stampede").await;
    app.b24.expire_access_tokens(&p.member_id);
    let (first_api, second_api) = (app.ctx.bitrix(), second.ctx.bitrix());
    let calls = (0..20).map(|i| {
        let client = if i % 2 == 0 { &first_api } else { &second_api };
        client.call(&p.member_id, "user.admin", json!({}))
    });
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(
        app.b24.refresh_count(&p.member_id),
        1,
        "exactly one refresh across two instances"
    );
    assert_eq!(app.b24.rejections("invalid_grant"), 0);
}
on_both_backends!(twenty_concurrent_calls_on_an_expired_token_cause_one_refresh);

async fn two_hundred_calls_stay_under_the_portal_rate_limit(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("busy").await;
    let api = app.ctx.bitrix();
    let calls = (0..200).map(|_| api.call(&p.member_id, "user.admin", json!({})));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(app.b24.rejections("QUERY_LIMIT_EXCEEDED"), 0);
    // A portal that answers 503 anyway is retried until it succeeds.
    app.b24.fail_next(&p.member_id, 3, Fault::QueryLimit);
    let r = app
        .ctx
        .bitrix()
        .call(&p.member_id, "user.admin", json!({}))
        .await
        .expect("retried");
    assert_eq!(r, json!(true));
    assert_eq!(app.b24.rejections("QUERY_LIMIT_EXCEEDED"), 3);
}
on_both_backends!(two_hundred_calls_stay_under_the_portal_rate_limit);

async fn a_refused_refresh_token_marks_the_portal_for_re_authorisation(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("dead-grant").await;
    // Another chain refreshed our stored refresh token away: simulate by using it once out of band.
    app.b24.expire_access_tokens(&p.member_id);
    let row = app.portal_row(&p.member_id).await.expect("row");
    let refresh = app
        .shared
        .cipher
        .open(
            mango_callback::crypto::Slot::refresh_token(&p.member_id),
            row.refresh_token.as_deref().expect("stored"),
        )
        .expect("opens");
    let used = mango_callback::bitrix::oauth::refresh(
        &app.ctx.http,
        &app.b24.url(),
        Some(mango_callback::sandbox::bitrix::SANDBOX_CLIENT_ID),
        Some(mango_callback::sandbox::bitrix::SANDBOX_CLIENT_SECRET),
        &refresh,
        mango_callback::bitrix::oauth::DEFAULT_TIMEOUT,
    )
    .await;
    assert!(used.is_ok());
    let err = app
        .ctx
        .bitrix()
        .call(&p.member_id, "user.admin", json!({}))
        .await
        .expect_err("grant is dead");
    assert!(
        matches!(err, mango_callback::bitrix::BitrixError::NeedsReauth { .. }),
        "{err}"
    );
    assert!(
        app.portal_row(&p.member_id)
            .await
            .expect("row")
            .needs_reauth
    );
}
on_both_backends!(a_refused_refresh_token_marks_the_portal_for_re_authorisation);

async fn a_renamed_portal_is_followed_once_and_its_new_domain_stored(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("oldname").await;
    let app_info_before = app.b24.calls_to("oauth.app.info").len();
    app.b24.rename_portal(&p.member_id, "newname");
    let r = app
        .ctx
        .bitrix()
        .call(&p.member_id, "user.admin", json!({}))
        .await
        .expect("call follows the redirect");
    assert_eq!(r, json!(true));
    let row = app.portal_row(&p.member_id).await.expect("row");
    let renamed = app.b24.portal(&p.member_id);
    assert_eq!(row.client_endpoint, renamed.client_endpoint);
    // The new domain is the redirect target's host (the simulator's portals share one host).
    let host = url::Url::parse(&renamed.client_endpoint)
        .expect("url")
        .host_str()
        .map(str::to_owned);
    assert_eq!(Some(row.domain), host);
    assert_eq!(
        app.b24.calls().iter().filter(|c| c.status == 302).count(),
        1,
        "followed once"
    );
    assert_eq!(
        app.b24.calls_to("oauth.app.info").len(),
        app_info_before + 1,
        "the new endpoint was confirmed with app.info"
    );
}
on_both_backends!(a_renamed_portal_is_followed_once_and_its_new_domain_stored);

/// Calls `user.admin` through the stored tokens and expects the redirect to be refused with the
/// stored endpoint kept and nothing sent anywhere else.
async fn assert_rename_refused(app: &TestApp, p: &SimPortal) {
    let before = app.portal_row(&p.member_id).await.expect("row");
    let calls_before = app.b24.calls().len();
    let err = app
        .ctx
        .bitrix()
        .call(&p.member_id, "user.admin", json!({}))
        .await
        .expect_err("the redirect is refused");
    assert!(matches!(err, BitrixError::RenameRefused { .. }), "{err}");
    assert!(!err.is_transient(), "not retried: {err}");
    let after = app.portal_row(&p.member_id).await.expect("row");
    assert_eq!(after.client_endpoint, before.client_endpoint);
    assert_eq!(after.domain, before.domain);
    let since: Vec<_> = app.b24.calls().into_iter().skip(calls_before).collect();
    assert!(
        since
            .iter()
            .all(|c| c.status == 302 || c.method == "oauth.app.info"),
        "nothing but the refused redirect (and app.info) went out: {:?}",
        since
            .iter()
            .map(|c| (&c.path, c.status))
            .collect::<Vec<_>>()
    );
}

async fn a_redirect_to_a_loopback_http_endpoint_is_refused_in_production(backend: Backend) {
    // Production's policy: the simulator's http://127.0.0.1 is exactly what must be refused.
    let app = spawn_app_configured(backend, Default::default(), |s| {
        s.allow_private_peers = false;
    })
    .await;
    let p = app.installed_portal("loopback").await;
    app.b24.rename_portal(&p.member_id, "internal");
    let app_info_before = app.b24.calls_to("oauth.app.info").len();
    assert_rename_refused(&app, &p).await;
    assert_eq!(
        app.b24.calls_to("oauth.app.info").len(),
        app_info_before,
        "refused before asking anybody"
    );
}
on_both_backends!(a_redirect_to_a_loopback_http_endpoint_is_refused_in_production);

async fn a_redirect_that_app_info_does_not_confirm_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("victim").await;
    let other = app.installed_portal("elsewhere").await;
    // The old host points at another endpoint; Bitrix24's OAuth server still knows the old one.
    app.b24
        .redirect_portal_to(&p.member_id, &other.client_endpoint);
    let app_info_before = app.b24.calls_to("oauth.app.info").len();
    assert_rename_refused(&app, &p).await;
    // Asked and not confirmed; the redirect target never got a request (checked above).
    assert_eq!(
        app.b24.calls_to("oauth.app.info").len(),
        app_info_before + 1
    );
}
on_both_backends!(a_redirect_that_app_info_does_not_confirm_is_refused);

async fn an_idle_portal_is_refreshed_after_twenty_days_and_only_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("idle").await;
    assert_eq!(
        mango_callback::portal::upkeep::schedule_keep_alive(&app.ctx)
            .await
            .expect("schedule"),
        0,
        "fresh tokens are left alone"
    );
    app.advance(std::time::Duration::from_secs(21 * 24 * 3600));
    assert_eq!(
        mango_callback::portal::upkeep::schedule_keep_alive(&app.ctx)
            .await
            .expect("schedule"),
        1
    );
    assert_eq!(
        mango_callback::portal::upkeep::schedule_keep_alive(&app.ctx)
            .await
            .expect("schedule"),
        0,
        "one job per idle stretch"
    );
    app.drain().await;
    assert_eq!(app.b24.refresh_count(&p.member_id), 1);
    assert_eq!(
        mango_callback::portal::upkeep::schedule_keep_alive(&app.ctx)
            .await
            .expect("schedule"),
        0,
        "just refreshed"
    );
    let r = app
        .ctx
        .bitrix()
        .call(&p.member_id, "user.admin", json!({}))
        .await
        .expect("new tokens work");
    assert_eq!(r, json!(true));
}
on_both_backends!(an_idle_portal_is_refreshed_after_twenty_days_and_only_once);
