//! A peer that fails (the Bitrix24 OAuth server, the portal's REST API) is answered with the
//! right 5xx and a generic message: the peer's error code, description and address stay in the log.

use mango_callback::db::Backend;
use mango_callback::sandbox::bitrix::Fault;

use crate::helpers::{spawn_app, TestApp};
use crate::on_both_backends;

/// The body names nothing the simulator said nor where it lives.
fn assert_no_peer_internals(app: &TestApp, body: &str, said: &[&str]) {
    for needle in said.iter().copied().chain([app.b24.url().as_str()]) {
        assert!(
            !body.contains(needle),
            "{needle:?} reached the body: {body}"
        );
    }
    assert!(
        body.contains("try again later"),
        "the user is told what to do: {body}"
    );
}

async fn an_unavailable_oauth_server_is_a_503_that_quotes_nothing_of_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let portal = app.b24.create_portal("oauth-down-body");
    app.b24.set_oauth_unavailable(true);
    let (status, body) = app.open_installer(&portal, portal.admin_user_id).await;
    assert_eq!(status, 503, "{body}");
    assert_no_peer_internals(
        &app,
        &body,
        &["SERVICE_UNAVAILABLE", "Service temporarily unavailable"],
    );
}
on_both_backends!(an_unavailable_oauth_server_is_a_503_that_quotes_nothing_of_it);

async fn a_failing_portal_is_a_503_that_quotes_nothing_of_its_error(backend: Backend) {
    let app = spawn_app(backend).await;
    let portal = app.b24.create_portal("portal-down-body");
    app.b24.fail_next(&portal.member_id, 10, Fault::Internal);
    let (status, body) = app.open_installer(&portal, portal.admin_user_id).await;
    assert_eq!(status, 503, "{body}");
    assert_no_peer_internals(
        &app,
        &body,
        &["INTERNAL_SERVER_ERROR", "Internal server error"],
    );
}
on_both_backends!(a_failing_portal_is_a_503_that_quotes_nothing_of_its_error);
