//! Hostile input: absurd numbers, panics inside transactions, and what must keep working after them.

use std::time::Duration;

use diesel::RunQueryDsl;
use mango_callback::db::{write_tx, Backend, Db};

use crate::helpers::{fresh_database, spawn_app, TestApp};
use crate::on_both_backends;

/// An absurd lifetime: chrono panics on `now + seconds(this)`.
const ABSURD: &str = "99999999999999999";

/// A genuine robot call on `portal` is accepted and, once jobs ran, Mango rang and the business
/// process got its event: the service is not wedged.
pub async fn genuine_robot_call_completes(app: &TestApp, member_id: &str) {
    let contact = app
        .b24
        .add_contact(member_id, &[("MOBILE", "+7 900 555-01-02")]);
    let deal = app.b24.add_deal(member_id, Some(contact));
    let (calls, events) = (
        app.mango.callbacks().len(),
        app.b24.event_sends(member_id).len(),
    );
    let fired = tokio::time::timeout(
        Duration::from_secs(30),
        app.b24.fire_robot(member_id, "mango_callback", deal, &[]),
    )
    .await
    .expect("the robot call is answered")
    .expect("robot");
    assert_eq!(fired.status, 200, "{}", fired.body);
    tokio::time::timeout(Duration::from_secs(60), app.drain())
        .await
        .expect("jobs finish");
    assert_eq!(
        app.mango.callbacks().len(),
        calls + 1,
        "Mango was asked to ring"
    );
    assert_eq!(
        app.b24.event_sends(member_id).len(),
        events + 1,
        "the business process got its answer"
    );
}

async fn absurd_token_lifetimes_are_refused_and_robot_calls_keep_completing(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("absurd").await;
    let before = app.portal_row(&p.member_id).await.expect("portal");

    // ONAPPINSTALL with any verified token and an absurd expires_in.
    let body = app
        .b24
        .onappinstall_body(&p.member_id)
        .replace("[expires_in]=3600", &format!("[expires_in]={ABSURD}"));
    assert!(
        body.contains(ABSURD),
        "the body carries the absurd lifetime"
    );
    let (status, answer) = app.post_form("/b24/install", body).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("expires_in"),
        "the error names the field: {answer}"
    );

    // The installer's AUTH_EXPIRES, zero and negative lifetimes too.
    for bad in [ABSURD, "0", "-5", "86401", "3600.5", "1e9"] {
        let mut req = app
            .b24
            .iframe_request(&p.member_id, p.admin_user_id, "DEFAULT", "en");
        for (k, v) in req.form.iter_mut() {
            if k == "AUTH_EXPIRES" {
                *v = bad.to_owned();
            }
        }
        let (status, answer) = app
            .post_form(
                &format!("/b24/install?{}", req.query_string()),
                req.to_form_body(),
            )
            .await;
        assert_eq!(status, 400, "AUTH_EXPIRES={bad}: {answer}");
    }

    // ONAPPUPDATE with an absurd lifetime.
    let update = app
        .b24
        .onappinstall_body(&p.member_id)
        .replace("event=ONAPPINSTALL", "event=ONAPPUPDATE")
        .replace("[expires_in]=3600", &format!("[expires_in]={ABSURD}"));
    let (status, answer) = app.post_form("/b24/events", update).await;
    assert_eq!(status, 400, "{answer}");

    let after = app.portal_row(&p.member_id).await.expect("portal");
    assert_eq!(
        after.token_version, before.token_version,
        "no token was stored"
    );
    assert_eq!(after.expires_at, before.expires_at);
    genuine_robot_call_completes(&app, &p.member_id).await;
}
on_both_backends!(absurd_token_lifetimes_are_refused_and_robot_calls_keep_completing);

/// A one-connection pool makes the panicked connection the very one the next write would get.
async fn a_write_after_a_panic_inside_a_transaction_is_committed_for_everyone(backend: Backend) {
    mango_callback::telemetry::init("warn");
    let (url, _guard) = fresh_database(backend);
    let db = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || Db::connect(&url, 1))
            .await
            .expect("task")
            .expect("db")
    };
    let panicked: Result<(), _> = db
        .run(|c| {
            write_tx(c, |c| -> diesel::QueryResult<_> {
                diesel::sql_query(
                    "INSERT INTO rate_slots (bucket, slot, used) VALUES ('torn', 1, 0)",
                )
                .execute(c)?;
                panic!("a bug inside a write transaction");
            })
        })
        .await;
    assert!(panicked.is_err(), "the panic surfaces as an error");

    db.run(|c| {
        write_tx(c, |c| -> diesel::QueryResult<_> {
            diesel::sql_query("INSERT INTO rate_slots (bucket, slot, used) VALUES ('after', 1, 0)")
                .execute(c)?;
            Ok(())
        })
    })
    .await
    .expect("the next write works");

    // A second, independent pool sees the later write and not the torn one.
    let other = tokio::task::spawn_blocking(move || Db::connect(&url, 1))
        .await
        .expect("task")
        .expect("db");
    let buckets: Vec<String> = other
        .run(|c| -> diesel::QueryResult<_> {
            #[derive(diesel::QueryableByName)]
            struct Row {
                #[diesel(sql_type = diesel::sql_types::Text)]
                bucket: String,
            }
            let rows: Vec<Row> = diesel::sql_query(
                "SELECT bucket FROM rate_slots WHERE bucket IN ('torn', 'after')",
            )
            .load(c)?;
            Ok(rows.into_iter().map(|r| r.bucket).collect())
        })
        .await
        .expect("read");
    assert_eq!(buckets, vec!["after".to_owned()]);
}
on_both_backends!(a_write_after_a_panic_inside_a_transaction_is_committed_for_everyone);

#[actix_web::test]
async fn postgres_sessions_carry_lock_statement_and_idle_transaction_timeouts() {
    if !crate::helpers::can_run_on(
        Backend::Postgres,
        concat!(
            module_path!(),
            "::postgres_sessions_carry_lock_statement_and_idle_transaction_timeouts"
        ),
    ) {
        return;
    }
    let (url, _guard) = fresh_database(Backend::Postgres);
    let db = tokio::task::spawn_blocking(move || Db::connect(&url, 1))
        .await
        .expect("task")
        .expect("db");
    let settings = db
        .run(|c| -> diesel::QueryResult<_> {
            #[derive(diesel::QueryableByName)]
            struct Row {
                #[diesel(sql_type = diesel::sql_types::Text)]
                v: String,
            }
            let mut out = Vec::new();
            for name in [
                "idle_in_transaction_session_timeout",
                "lock_timeout",
                "statement_timeout",
            ] {
                let rows: Vec<Row> =
                    diesel::sql_query(format!("SELECT current_setting('{name}') AS v")).load(c)?;
                out.push(rows.into_iter().next().map(|r| r.v).unwrap_or_default());
            }
            Ok(out)
        })
        .await
        .expect("settings read");
    for v in &settings {
        assert!(
            v != "0" && !v.is_empty(),
            "every timeout is set: {settings:?}"
        );
    }
}
