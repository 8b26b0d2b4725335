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

/// Takes the app's PostgreSQL database away as a restart does (every session ended, new ones
/// refused), or gives it back.
pub(crate) fn set_database_down(app: &TestApp, down: bool) {
    use diesel::{Connection, RunQueryDsl};
    let name = app
        .db_url
        .rsplit('/')
        .next()
        .expect("a database name")
        .to_owned();
    let mut admin = diesel::PgConnection::establish(&crate::helpers::postgres_admin_url())
        .expect("PostgreSQL admin connection");
    let allow = if down { "false" } else { "true" };
    diesel::sql_query(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}"))
        .execute(&mut admin)
        .expect("alter database");
    if down {
        diesel::sql_query(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .execute(&mut admin)
        .expect("end the app's sessions");
    }
}

/// PostgreSQL only: SQLite is a file inside the app's own process and cannot go away like this.
#[actix_web::test]
async fn a_robot_call_while_the_database_is_down_gets_503_and_the_app_recovers_by_itself() {
    let test = "peer_failures::a_robot_call_while_the_database_is_down_gets_503_and_the_app_recovers_by_itself";
    if !crate::helpers::can_run_on(Backend::Postgres, test) {
        return;
    }
    let app = spawn_app(Backend::Postgres).await;
    let portal = app.installed_portal("db-down").await;
    app.configure_mango(&portal.member_id).await;

    set_database_down(&app, true);
    let deal = app.b24.add_deal(&portal.member_id, None);
    let fired = app
        .b24
        .fire_robot(
            &portal.member_id,
            "mango_callback",
            deal,
            &[("phone", "+7 900 123-45-67")],
        )
        .await
        .expect("the robot is registered");
    assert_eq!(
        fired.status, 503,
        "a robot call the app cannot store is refused so Bitrix24 may repeat it: {}",
        fired.body
    );
    assert!(
        !fired.body.contains("postgres") && !fired.body.contains(&app.db_url),
        "the body names no database internals: {}",
        fired.body
    );

    set_database_down(&app, false);
    app.robot_call_completes(&portal, "+7 900 765-43-21").await;
    assert!(
        app.mango
            .callbacks()
            .iter()
            .all(|c| c["to"].as_str() != Some("79001234567")),
        "the refused call left nothing behind that rings later"
    );
}
