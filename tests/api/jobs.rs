//! The durable queue: exactly-once claims, retries with growing delay, burial, crash recovery.

use std::time::Duration;

use mango_callback::db::{Backend, Db};
use mango_callback::jobs::queue::{self, NewJob};
use mango_callback::sandbox::bitrix::Fault;

use crate::helpers::{fresh_database, spawn_app};
use crate::on_both_backends;

fn job(n: usize, now: chrono::NaiveDateTime) -> NewJob {
    NewJob {
        kind: "noop",
        payload: format!("{{\"n\":{n}}}"),
        member_id: None,
        dedup_key: Some(format!("k{n}")),
        run_at: now,
        max_attempts: 3,
    }
}

async fn a_job_is_claimed_by_exactly_one_of_two_competing_workers(backend: Backend) {
    let (url, _dir) = fresh_database(backend);
    let db = Db::connect(&url, 8).expect("db");
    let now = chrono::Utc::now().naive_utc();
    let mut conn = db.get_blocking().expect("conn");
    for n in 0..60 {
        assert!(queue::enqueue(&mut conn, &job(n, now), now).expect("enqueue"));
    }
    assert!(
        !queue::enqueue(&mut conn, &job(0, now), now).expect("enqueue again"),
        "dedup key makes a second enqueue a no-op"
    );
    drop(conn);
    let lease = now + chrono::Duration::minutes(5);
    let workers: Vec<_> = ["w1", "w2"]
        .into_iter()
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut conn = db.get_blocking().expect("conn");
                let mut mine = Vec::new();
                loop {
                    let got = queue::claim(&mut conn, w, now, lease, 3).expect("claim");
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|j| j.id));
                }
            })
        })
        .collect();
    let mut all: Vec<String> = workers
        .into_iter()
        .flat_map(|h| h.join().expect("worker thread"))
        .collect();
    let claimed = all.len();
    all.sort();
    all.dedup();
    assert_eq!(claimed, 60, "every job claimed once in total");
    assert_eq!(all.len(), 60, "no job claimed twice");
}
on_both_backends!(a_job_is_claimed_by_exactly_one_of_two_competing_workers);

async fn a_job_whose_worker_died_is_run_again_after_its_lease(backend: Backend) {
    let (url, _dir) = fresh_database(backend);
    let db = Db::connect(&url, 4).expect("db");
    let now = chrono::Utc::now().naive_utc();
    let mut conn = db.get_blocking().expect("conn");
    queue::enqueue(&mut conn, &job(1, now), now).expect("enqueue");
    let lease = now + chrono::Duration::minutes(5);
    let first = queue::claim(&mut conn, "dead-worker", now, lease, 10).expect("claim");
    assert_eq!(first.len(), 1);
    // The worker "dies": nothing finishes the job. Before the lease ends nobody else gets it.
    assert!(queue::claim(&mut conn, "w2", now, lease, 10)
        .expect("claim")
        .is_empty());
    assert_eq!(
        queue::reap(&mut conn, now + chrono::Duration::minutes(1)).expect("reap"),
        0
    );
    let later = now + chrono::Duration::minutes(6);
    assert_eq!(queue::reap(&mut conn, later).expect("reap"), 1);
    let again = queue::claim(
        &mut conn,
        "w2",
        later,
        later + chrono::Duration::minutes(5),
        10,
    )
    .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);
    // The dead worker's late answer must not overwrite the new run.
    assert!(!queue::complete(&mut conn, &again[0].id, "dead-worker", later).expect("complete"));
    assert!(queue::complete(&mut conn, &again[0].id, "w2", later).expect("complete"));
}
on_both_backends!(a_job_whose_worker_died_is_run_again_after_its_lease);

async fn a_failing_job_is_retried_with_growing_delay_then_buried(backend: Backend) {
    let app = spawn_app(backend).await;
    let portal = app.installed_portal("retry").await;
    let deal = app.b24.add_deal(&portal.member_id, None);
    app.b24
        .fire_robot(
            &portal.member_id,
            "mango_callback",
            deal,
            &[("phone", "+7 900 123-45-67")],
        )
        .await
        .expect("robot call");
    app.b24
        .fail_next(&portal.member_id, 10_000, Fault::Internal);
    // Every call to the portal fails from here on: the report and the self-check the install
    // queued both exhaust their attempts.
    app.expect_dead_jobs("report_callback", 1);
    app.expect_dead_jobs("app_self_check", 1);
    let mut delays = Vec::new();
    for _ in 0..40 {
        app.drain().await;
        let jobs = app.shared.db.run(queue::all).await.expect("db");
        let report = jobs
            .iter()
            .find(|j| j.kind == "report_callback")
            .expect("report job exists");
        if report.status == queue::DEAD {
            assert!(
                report
                    .last_error
                    .as_deref()
                    .unwrap_or("")
                    .contains("INTERNAL_SERVER_ERROR")
                    || report.last_error.as_deref().unwrap_or("").contains("500"),
                "{:?}",
                report.last_error
            );
            assert_eq!(report.attempts, report.max_attempts);
            break;
        }
        delays.push((report.run_at - app.clock.now()).num_milliseconds());
        app.advance(Duration::from_secs(3600));
    }
    assert!(
        delays.len() >= 5,
        "retried several times before burial: {delays:?}"
    );
    assert!(
        delays.windows(2).take(4).all(|w| w[1] > w[0]),
        "delays grow: {delays:?}"
    );
    let jobs = app.shared.db.run(queue::all).await.expect("db");
    assert!(
        jobs.iter()
            .any(|j| j.kind == "report_callback" && j.status == queue::DEAD),
        "buried in the end"
    );
}
on_both_backends!(a_failing_job_is_retried_with_growing_delay_then_buried);

async fn finished_jobs_are_purged_after_a_week_and_dead_ones_kept(backend: Backend) {
    let (url, _dir) = fresh_database(backend);
    let db = Db::connect(&url, 4).expect("db");
    let t0 = chrono::Utc::now().naive_utc();
    let mut conn = db.get_blocking().expect("conn");
    for n in 0..3 {
        queue::enqueue(&mut conn, &job(n, t0), t0).expect("enqueue");
    }
    let claimed =
        queue::claim(&mut conn, "w", t0, t0 + chrono::Duration::minutes(5), 3).expect("claim");
    assert_eq!(claimed.len(), 3);
    assert!(queue::complete(&mut conn, &claimed[0].id, "w", t0).expect("complete"));
    assert!(queue::bury(&mut conn, &claimed[1].id, "w", "broken", t0).expect("bury"));
    let later = t0 + chrono::Duration::days(1);
    assert!(queue::complete(&mut conn, &claimed[2].id, "w", later).expect("complete"));
    let purged = queue::purge_done(&mut conn, t0 + chrono::Duration::hours(12)).expect("purge");
    assert_eq!(purged, 1, "only the old finished job goes");
    let left: Vec<String> = queue::all(&mut conn)
        .expect("all")
        .into_iter()
        .map(|j| j.status)
        .collect();
    assert_eq!(left.iter().filter(|s| *s == queue::DEAD).count(), 1);
    assert_eq!(left.iter().filter(|s| *s == queue::DONE).count(), 1);
}
on_both_backends!(finished_jobs_are_purged_after_a_week_and_dead_ones_kept);

/// Buries one queued job the way a worker gives up on it.
async fn bury_one(app: &crate::helpers::TestApp) {
    let now = app.clock.now();
    app.shared
        .db
        .run(move |c| -> diesel::QueryResult<_> {
            queue::enqueue(c, &job(1, now), now)?;
            let claimed = queue::claim(c, "w", now, now + chrono::Duration::minutes(5), 1)?;
            for j in claimed {
                queue::bury(c, &j.id, "w", "broken for good", now)?;
            }
            Ok(())
        })
        .await
        .expect("buried");
}

// The end-of-test check itself (the `Drop` of `TestApp`), on SQLite: the harness, not storage.
#[actix_web::test]
#[should_panic(expected = "jobs died unexpectedly")]
async fn a_test_whose_app_ends_with_an_undeclared_dead_job_fails() {
    let app = spawn_app(Backend::Sqlite).await;
    bury_one(&app).await;
}

#[actix_web::test]
#[should_panic(expected = "noop: 0 dead, 1 expected")]
async fn a_test_that_declares_a_dead_job_which_never_dies_fails() {
    let app = spawn_app(Backend::Sqlite).await;
    app.expect_dead_jobs("noop", 1);
}

#[actix_web::test]
async fn a_test_that_declares_the_job_it_buries_passes() {
    let app = spawn_app(Backend::Sqlite).await;
    app.expect_dead_jobs("noop", 1);
    bury_one(&app).await;
}

/// An acknowledged robot call and a recorded `calling` are on disk before the answer: with WAL,
/// `synchronous=NORMAL` may lose the last commits on power loss, `FULL` does not.
#[actix_web::test]
async fn sqlite_connections_commit_durably_with_synchronous_full() {
    let (url, _guard) = fresh_database(Backend::Sqlite);
    let db = tokio::task::spawn_blocking(move || Db::connect(&url, 2))
        .await
        .expect("task")
        .expect("db");
    let modes = db
        .run(|c| -> diesel::QueryResult<_> {
            #[derive(diesel::QueryableByName)]
            struct Row {
                #[diesel(sql_type = diesel::sql_types::Integer)]
                synchronous: i32,
            }
            use diesel::RunQueryDsl;
            let mut out = Vec::new();
            for _ in 0..2 {
                let rows: Vec<Row> = diesel::sql_query("PRAGMA synchronous").load(c)?;
                out.extend(rows.into_iter().map(|r| r.synchronous));
            }
            Ok(out)
        })
        .await
        .expect("pragma read");
    // 2 = FULL (0 OFF, 1 NORMAL, 3 EXTRA).
    assert_eq!(modes, vec![2, 2]);
}

/// The job queue is near-empty between bursts and holds thousands of rows in one. A plan that
/// PostgreSQL made once for the near-empty table and kept for the connection (its generic plan,
/// used from a prepared statement's sixth run on) walked every due job for a portal's few: the
/// claims' reads are planned each time they run, while other statements (the enqueue's insert)
/// stay prepared once per connection.
#[actix_web::test]
async fn on_postgres_the_queues_reads_are_planned_for_its_present_size_not_from_a_kept_plan() {
    use diesel::RunQueryDsl;
    let backend = Backend::Postgres;
    if !crate::helpers::can_run_on(backend, "jobs::on_postgres_the_queues_reads_are_planned") {
        return;
    }
    #[derive(diesel::QueryableByName)]
    struct Prepared {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        reads_on_a_kept_plan: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        inserts_kept: i64,
    }
    let (url, _guard) = fresh_database(backend);
    let db = Db::connect(&url, 2).expect("db");
    let now = chrono::Utc::now().naive_utc();
    let prepared = db
        .run(move |c| -> diesel::QueryResult<Prepared> {
            queue::enqueue(c, &job(1, now), now)?;
            // Twice the runs after which PostgreSQL would switch to a kept generic plan.
            for _ in 0..12 {
                let due = queue::candidates(c, now, 4)?;
                assert_eq!(due.len(), 1, "the one due job is a candidate each time");
            }
            diesel::sql_query(
                "SELECT COUNT(*) FILTER (WHERE statement LIKE 'SELECT%' AND generic_plans > 0) \
                 AS reads_on_a_kept_plan, \
                 COUNT(*) FILTER (WHERE statement LIKE 'INSERT INTO \"jobs\"%') AS inserts_kept \
                 FROM pg_prepared_statements WHERE statement LIKE '%\"jobs\"%'",
            )
            .get_result(c)
        })
        .await
        .expect("candidates and prepared statements");
    assert_eq!(
        prepared.reads_on_a_kept_plan, 0,
        "no read of the queue ran on a kept generic plan"
    );
    assert_eq!(prepared.inserts_kept, 1, "the insert stays prepared");
}

/// An enqueue whose dedup key is taken is a no-op that leaves its transaction usable: the
/// acknowledgement of a robot call enqueues inside one, and on PostgreSQL a unique violation
/// would abort it (the insert says `ON CONFLICT DO NOTHING` instead of catching the violation).
async fn a_second_enqueue_of_a_key_inside_a_transaction_leaves_it_usable(backend: Backend) {
    use diesel::Connection;
    let (url, _guard) = fresh_database(backend);
    let db = Db::connect(&url, 2).expect("db");
    let now = chrono::Utc::now().naive_utc();
    let mut conn = db.get_blocking().expect("conn");
    let outcomes = conn
        .transaction(|c| -> diesel::QueryResult<_> {
            Ok((
                queue::enqueue(c, &job(1, now), now)?,
                queue::enqueue(c, &job(1, now), now)?,
                queue::enqueue(c, &job(2, now), now)?,
            ))
        })
        .expect("one transaction");
    assert_eq!(outcomes, (true, false, true));
    let mut payloads: Vec<String> = queue::all(&mut conn)
        .expect("jobs")
        .into_iter()
        .map(|j| j.payload)
        .collect();
    payloads.sort();
    assert_eq!(
        payloads,
        ["{\"n\":1}", "{\"n\":2}"],
        "both committed, once each"
    );
}
on_both_backends!(a_second_enqueue_of_a_key_inside_a_transaction_leaves_it_usable);

/// A claim takes its candidates in one statement; those another worker took since they were read
/// are made up from the next candidates, and none is taken twice.
async fn a_claim_whose_candidates_were_taken_meanwhile_fills_its_slots_from_the_next_ones(
    backend: Backend,
) {
    let (url, _guard) = fresh_database(backend);
    let db = Db::connect(&url, 2).expect("db");
    let now = chrono::Utc::now().naive_utc();
    let lease = now + chrono::Duration::minutes(1);
    let mut conn = db.get_blocking().expect("conn");
    for n in 0..5 {
        queue::enqueue(&mut conn, &job(n, now), now).expect("enqueue");
    }
    let candidates = queue::candidates(&mut conn, now, 2).expect("candidates");
    assert_eq!(candidates.len(), 4, "twice the claim's size");
    // Another worker takes the first two candidates after they were read.
    let other = queue::take_candidates(
        &mut conn,
        "other",
        now,
        lease,
        2,
        &[],
        candidates[..2].to_vec(),
    )
    .expect("the other claim");
    assert_eq!(other.len(), 2);
    let mine = queue::take_candidates(&mut conn, "mine", now, lease, 2, &[], candidates.clone())
        .expect("my claim");
    let ids = |rows: &[queue::JobRow]| rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&mine),
        vec![candidates[2].0.clone(), candidates[3].0.clone()],
        "the next two candidates, in turn order"
    );
    assert!(mine
        .iter()
        .all(|r| r.locked_by.as_deref() == Some("mine") && r.attempts == 1));
    // Nothing is left to take from that list: a third claim of it takes none.
    let third = queue::take_candidates(&mut conn, "third", now, lease, 4, &[], candidates)
        .expect("a third claim");
    assert!(third.is_empty(), "{third:?}");
}
on_both_backends!(a_claim_whose_candidates_were_taken_meanwhile_fills_its_slots_from_the_next_ones);
