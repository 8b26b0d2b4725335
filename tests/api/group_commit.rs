//! Group commit: robot-call writes that arrive together share one transaction, each in its own
//! savepoint, and each is answered only after that transaction committed.

use std::sync::mpsc;
use std::time::Duration;

use diesel::prelude::*;
use mango_callback::db::schema::rate_slots;
use mango_callback::db::{Backend, Db, DbError};

use crate::helpers::spawn_app;
use crate::on_both_backends;

/// The portal key of the writes below: one key, one committer (PostgreSQL has several).
const LANE: &str = "one-portal";

/// One caller's write, as `Db::run_grouped` takes it.
type WriteOf<T> =
    Box<dyn FnOnce(&mut mango_callback::db::DbConnection) -> Result<T, DbError> + Send>;

/// A marker row in `rate_slots` (a table any write may use), named by `bucket`.
fn mark(c: &mut mango_callback::db::DbConnection, bucket: &str) -> QueryResult<usize> {
    diesel::insert_into(rate_slots::table)
        .values((
            rate_slots::bucket.eq(bucket),
            rate_slots::slot.eq(1i64),
            rate_slots::used.eq(1),
        ))
        .execute(c)
}

async fn marks(db: &Db, prefix: &str) -> Vec<String> {
    let like = format!("{prefix}%");
    let mut v: Vec<String> = db
        .run(move |c| {
            rate_slots::table
                .filter(rate_slots::bucket.like(like))
                .select(rate_slots::bucket)
                .load::<String>(c)
        })
        .await
        .expect("db");
    v.sort();
    v
}

/// Holds `LANE`'s committer inside a write (that first stores the `marker` row, if any) until
/// the returned sender is used; returns once the committer has taken that write, so what comes
/// next for `LANE` waits for the next transaction.
async fn hold_lane(
    db: &Db,
    marker: Option<&'static str>,
) -> (
    mpsc::Sender<()>,
    actix_web::rt::task::JoinHandle<Result<(), DbError>>,
) {
    let (release, held) = mpsc::channel::<()>();
    let before = db.group_commit_counts();
    let blocker = {
        let db = db.clone();
        actix_web::rt::spawn(async move {
            db.run_grouped(LANE, move |c| {
                if let Some(m) = marker {
                    mark(c, m)?;
                }
                held.recv_timeout(Duration::from_secs(30)).ok();
                Ok(())
            })
            .await
        })
    };
    while db.group_commit_counts().batches == before.batches {
        actix_web::rt::task::yield_now().await;
    }
    (release, blocker)
}

/// Holds the committer in a first write until `n` more were handed to it, so that those `n`
/// share the next transaction; returns the tasks' answers in order.
async fn in_one_batch<T: Send + 'static>(
    db: &Db,
    writes: Vec<WriteOf<T>>,
) -> Vec<Result<T, DbError>> {
    let before = db.group_commit_counts();
    let (release, blocker) = hold_lane(db, None).await;
    let n = writes.len() as u64;
    let tasks: Vec<_> = writes
        .into_iter()
        .map(|w| {
            let db = db.clone();
            actix_web::rt::spawn(async move { db.run_grouped(LANE, w).await })
        })
        .collect();
    // Every task hands its write over on its first poll: yield until all did (no sleeping).
    while db.group_commit_counts().submitted < before.submitted + n + 1 {
        actix_web::rt::task::yield_now().await;
    }
    release.send(()).expect("the blocker waits");
    blocker.await.expect("task").expect("blocker committed");
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    let after = db.group_commit_counts();
    assert_eq!(
        after.batches - before.batches,
        2,
        "the blocker's transaction, then one for all {n}"
    );
    out
}

async fn writes_that_arrive_together_share_one_transaction_and_each_is_stored(backend: Backend) {
    let app = spawn_app(backend).await;
    let writes = (0..20)
        .map(|i| {
            let name = format!("together-{i:02}");
            Box::new(move |c: &mut mango_callback::db::DbConnection| {
                mark(c, &name).map_err(DbError::from)
            }) as WriteOf<usize>
        })
        .collect();
    let answers = in_one_batch(&app.shared.db, writes).await;
    assert!(answers.iter().all(|a| matches!(a, Ok(1))), "{answers:?}");
    assert_eq!(marks(&app.shared.db, "together-").await.len(), 20);
}
on_both_backends!(writes_that_arrive_together_share_one_transaction_and_each_is_stored);

async fn a_failing_write_rolls_back_only_itself_and_its_caller_gets_the_error(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut writes: Vec<WriteOf<usize>> = Vec::new();
    for i in 0..5 {
        let name = format!("savepoint-{i}");
        writes.push(Box::new(move |c: &mut mango_callback::db::DbConnection| {
            let n = mark(c, &name)?;
            if i == 2 {
                // Wrote, then failed: its row must not survive.
                mark(c, &name)?; // a second row with the same key: unique violation
            }
            Ok(n)
        }));
    }
    let answers = in_one_batch(&app.shared.db, writes).await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.is_err(), i == 2, "write {i}: {a:?}");
    }
    assert_eq!(
        marks(&app.shared.db, "savepoint-").await,
        ["savepoint-0", "savepoint-1", "savepoint-3", "savepoint-4"]
    );
}
on_both_backends!(a_failing_write_rolls_back_only_itself_and_its_caller_gets_the_error);

async fn a_panicking_write_fails_its_whole_batch_and_the_next_batch_works(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut writes: Vec<WriteOf<usize>> = Vec::new();
    for i in 0..3 {
        let name = format!("panicky-{i}");
        writes.push(Box::new(move |c: &mut mango_callback::db::DbConnection| {
            let n = mark(c, &name)?;
            assert!(i != 1, "a bug in a write");
            Ok(n)
        }));
    }
    let answers = in_one_batch(&app.shared.db, writes).await;
    assert!(answers.iter().all(Result::is_err), "{answers:?}");
    assert!(
        marks(&app.shared.db, "panicky-").await.is_empty(),
        "nothing of it stored"
    );
    let again = app
        .shared
        .db
        .run_grouped(LANE, |c| mark(c, "after-panic").map_err(DbError::from))
        .await;
    assert!(matches!(again, Ok(1)), "{again:?}");
    assert_eq!(marks(&app.shared.db, "after-panic").await.len(), 1);
}
on_both_backends!(a_panicking_write_fails_its_whole_batch_and_the_next_batch_works);

async fn concurrent_robot_calls_are_each_acknowledged_once_stored(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("group-commit").await;
    let before = app.shared.db.group_commit_counts();
    let deals: Vec<u64> = (0..30)
        .map(|_| app.b24.add_deal(&p.member_id, None))
        .collect();
    let fired = futures_util::future::join_all(deals.iter().map(|deal| {
        app.b24.fire_robot(
            &p.member_id,
            "mango_callback",
            *deal,
            &[("phone", "89001234567")],
        )
    }))
    .await;
    for f in &fired {
        let f = f.as_ref().expect("robot");
        assert_eq!(f.status, 200, "{}", f.body);
    }
    let after = app.shared.db.group_commit_counts();
    assert_eq!(
        after.writes - before.writes,
        30,
        "every call went through the committer"
    );
    let member = p.member_id.clone();
    let stored = app
        .shared
        .db
        .run(move |c| mango_callback::callback::store::latest(c, &member, 100))
        .await
        .expect("db");
    assert_eq!(stored.len(), 30);
}
on_both_backends!(concurrent_robot_calls_are_each_acknowledged_once_stored);

#[actix_web::test]
async fn on_postgres_a_portals_write_does_not_wait_for_another_portals_commit() {
    let backend = Backend::Postgres;
    if crate::helpers::can_run_on(
        backend,
        "group_commit::on_postgres_a_portals_write_does_not_wait",
    ) {
        let app = spawn_app(backend).await;
        let db = app.shared.db.clone();
        let other = (0..100)
            .map(|i| format!("portal-{i}"))
            .find(|k| db.commit_lane(k) != db.commit_lane(LANE))
            .expect("PostgreSQL has several committers");
        let (release, blocker) = hold_lane(&db, Some("held")).await;
        // LANE's committer is inside its transaction; the other portal's write commits anyway.
        let answer = db
            .run_grouped(&other, |c| mark(c, "other-portal").map_err(DbError::from))
            .await;
        assert!(matches!(answer, Ok(1)), "{answer:?}");
        assert_eq!(marks(&db, "other-portal").await.len(), 1);
        assert!(
            marks(&db, "held").await.is_empty(),
            "the held one is not committed yet"
        );
        release.send(()).expect("the blocker waits");
        blocker.await.expect("task").expect("blocker committed");
        assert_eq!(marks(&db, "held").await.len(), 1);
    }
}

/// Counts the statements a connection sends (savepoints included), through diesel's
/// instrumentation.
fn count_statements(
    conn: &mut mango_callback::db::DbConnection,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use diesel::connection::{Instrumentation, InstrumentationEvent};
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&sent);
    let count = move |event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { .. } = event {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    };
    conn.set_instrumentation(Box::new(count) as Box<dyn Instrumentation>);
    sent
}

/// A robot call's acceptance runs in the shared commit's savepoint, on PostgreSQL a round trip
/// per statement: its own nested transaction (a savepoint and its release) and a read of the
/// event token before the insert that checks it anyway, and a read of the deal's run count
/// after the claim that counted it, were four more for every call.
async fn accepting_a_robot_call_sends_six_statements_and_a_redelivery_two(backend: Backend) {
    use mango_callback::callback::{lifecycle, Accepted, DealId, RequestedGroup, RobotRun};
    let app = spawn_app(backend).await;
    let portal = app.installed_portal("acme").await;
    let run = RobotRun {
        member_id: portal.member_id.clone(),
        deal_id: DealId::parse("42").expect("deal id"),
        event_token: Some("token|1".into()),
        workflow_id: Some("wf-1".into()),
        requested: RequestedGroup::Auto,
        phone_override: None,
    };
    let now = chrono::Utc::now().naive_utc();
    let mut conn = app.shared.db.get_blocking().expect("conn");
    let sent = count_statements(&mut conn);
    let mut accept = |run: &RobotRun| {
        sent.store(0, std::sync::atomic::Ordering::SeqCst);
        // As in the group commit: a transaction that the acceptance's statements share.
        let accepted = conn
            .transaction(|c| lifecycle::accept(c, run, now))
            .expect("accepted");
        (accepted, sent.load(std::sync::atomic::Ordering::SeqCst))
    };
    let (first, statements) = accept(&run);
    assert!(matches!(first, Accepted::Queued { .. }), "{first:?}");
    // BEGIN and COMMIT around the callback, the deal's row, the settings, the deal's claim
    // with its run count, the group and the job.
    assert_eq!(
        statements,
        2 + 6,
        "a robot call's acceptance (12 before on PostgreSQL)"
    );
    let (again, statements) = accept(&run);
    assert!(matches!(again, Accepted::Redelivered { .. }), "{again:?}");
    assert_eq!(
        statements,
        2 + 2,
        "the insert that finds the token, then its read"
    );
}
on_both_backends!(accepting_a_robot_call_sends_six_statements_and_a_redelivery_two);

/// On SQLite the acknowledgements' commits never copy the log back into the database file (a
/// few milliseconds inside the writer's turn, which a robot call would wait for); the other
/// writers' commits still do, so the log still starts over.
#[actix_web::test]
async fn on_sqlite_acknowledgements_leave_copying_the_log_back_to_the_other_writers() {
    #[derive(diesel::QueryableByName)]
    struct Pages {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        wal_autocheckpoint: i32,
    }
    fn pages(c: &mut mango_callback::db::DbConnection) -> Result<i32, DbError> {
        Ok(diesel::sql_query("PRAGMA wal_autocheckpoint")
            .get_result::<Pages>(c)?
            .wal_autocheckpoint)
    }
    let (url, _guard) = crate::helpers::fresh_database(Backend::Sqlite);
    let db = Db::connect(&url, 2).expect("db");
    assert_eq!(db.run_grouped("portal", pages).await.expect("grouped"), 0);
    assert_eq!(db.run(pages).await.expect("other writer"), 1000);
}
