//! Chaos harness: the real app binary as a child process against simulators in this process,
//! killed, terminated, doubled and faulted, with exactly-once checks over what the peers got.
//!
//! Not part of plain `cargo test` (`test = false`); run it with
//! `cargo test --test chaos -- --nocapture --test-threads=1`. Sizes come from the environment:
//! `CHAOS_CALLS` (crash, faults, shutdown), `CHAOS_PAIR_CALLS` (two instances), `CHAOS_KILLS`,
//! `CHAOS_SEED`, `CHAOS_RATE` (calls/s), `CHAOS_LATENCY_MS`, `CHAOS_FAULT_RATE` (percent), `CHAOS_HANG_SECS`, `CHAOS_BOUND_SECS`;
//! `CHAOS_FULL=1` uses the sizes (1,000 and 2,000 calls).

mod process;
mod world;

use std::time::{Duration, Instant};

use mango_callback::db::Backend;
use mango_callback::sandbox::faults::FaultPlan;
use process::AppProcess;
use rand::{Rng, SeedableRng};
use world::{env_usize, full, Verdict, World};

const PORTALS: usize = 4;
const PARALLEL: usize = 8;

fn calls() -> usize {
    env_usize("CHAOS_CALLS", if full() { 1000 } else { 40 })
}

/// How long a run may take to deliver every final answer before the checks fail.
fn bound() -> Duration {
    Duration::from_secs(env_usize("CHAOS_BOUND_SECS", 900) as u64)
}

fn report(name: &str, backend: Backend, v: &Verdict, extra: &str) {
    println!(
        "CHAOS {name} [{backend:?}]: fired {}, acknowledged {}, finals missing {}, finals repeated {} (conflicting {}), \
         rings missing {}, rings doubled {}, Mango commands {}, Mango 429 {}, QUERY_LIMIT_EXCEEDED {}{extra}",
        v.fired, v.acknowledged, v.finals_missing, v.finals_repeated, v.finals_conflicting, v.rings_missing,
        v.rings_doubled, v.mango_commands, v.mango_429, v.query_limit_exceeded
    );
}

/// A world with `PORTALS` installed portals and one app instance running.
async fn world_with_app(backend: Backend) -> (World, AppProcess) {
    let mut world = World::new(backend).await;
    let mut app = AppProcess::new(&world.db, &world.b24, &world.mango, 0);
    app.start().await;
    world.install_portals(&app, PORTALS).await;
    (world, app)
}

/// One burst on a fresh world, no kills: the time every final answer takes.
async fn undisturbed_run(backend: Backend, n: usize) -> Duration {
    let (world, app) = world_with_app(backend).await;
    let _results = world.post_mango_results(app.base());
    let started = Instant::now();
    let fired = world.burst(&[app.base()], n, PARALLEL).await;
    world.wait_for_finals(&fired, bound()).await;
    let took = started.elapsed();
    report(
        "baseline",
        backend,
        &world.verdict(&fired),
        &format!(", took {took:?}"),
    );
    took
}

async fn crash(backend: Backend) {
    let n = calls();
    let kills = env_usize("CHAOS_KILLS", 3);
    let baseline = undisturbed_run(backend, n).await;
    let (world, mut app) = world_with_app(backend).await;
    let _results = world.post_mango_results(app.base());
    let mut rng = rand::rngs::StdRng::seed_from_u64(env_usize("CHAOS_SEED", 1) as u64);
    // Kill moments spread over the undisturbed run's span, while jobs are running.
    let span = baseline.max(Duration::from_secs(4));
    let mut at: Vec<Duration> = (0..kills)
        .map(|_| span.mul_f64(rng.gen_range(0.1..0.8)))
        .collect();
    at.sort();
    let started = Instant::now();
    let bases = [app.base()];
    let mut caught = Vec::new();
    let killer = async {
        for moment in &at {
            if let Some(wait) = moment.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            // From that moment, the first instant a job is running: a kill that finds none
            // proves nothing.
            let give_up = Instant::now() + Duration::from_secs(10);
            while world.db.running_jobs() == 0 && Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            app.kill();
            caught.push(world.db.running_jobs());
            tokio::time::sleep(Duration::from_millis(300)).await;
            app.start().await;
        }
    };
    let (fired, ()) = tokio::join!(world.burst(&bases, n, PARALLEL), killer);
    world.wait_for_finals(&fired, bound()).await;
    let took = started.elapsed();
    let v = world.verdict(&fired);
    let late = took.saturating_sub(baseline);
    report(
        "crash",
        backend,
        &v,
        &format!(
            ", {kills} SIGKILLs at {at:?} caught {caught:?} running jobs, took {took:?} vs {baseline:?} without kills (+{late:?})"
        ),
    );
    assert!(v.exactly_once(), "exactly once broken: {v:?}");
    assert!(
        late <= Duration::from_secs(60),
        "recovery took {late:?} longer than the run without kills"
    );
}

async fn faults(backend: Backend) {
    let n = calls();
    let rate = env_usize("CHAOS_FAULT_RATE", 20) as f64 / 100.0;
    let (world, app) = world_with_app(backend).await;
    let plan = FaultPlan {
        hang: Duration::from_secs(env_usize("CHAOS_HANG_SECS", 90) as u64),
        ..FaultPlan::new(rate, env_usize("CHAOS_SEED", 1) as u64)
    };
    world.b24.set_faults(plan.clone());
    world.mango.set_faults(plan);
    let _results = world.post_mango_results(app.base());
    let started = Instant::now();
    let fired = world.burst(&[app.base()], n, PARALLEL).await;
    world.wait_for_finals(&fired, bound()).await;
    let took = started.elapsed();
    let v = world.verdict(&fired);
    report(
        "faults",
        backend,
        &v,
        &format!(
            ", took {took:?}; injected: Bitrix24 {}; Mango {}",
            world.b24.fault_counts(),
            world.mango.fault_counts()
        ),
    );
    assert!(v.exactly_once(), "exactly once broken under faults: {v:?}");
}

async fn shutdown(backend: Backend) {
    let n = calls();
    let (world, mut app) = world_with_app(backend).await;
    let _results = world.post_mango_results(app.base());
    let started = Instant::now();
    let bases = [app.base()];
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let exit = app.terminate(Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.start().await;
        exit
    };
    let (fired, exit) = tokio::join!(world.burst(&bases, n, PARALLEL), stopper);
    world.wait_for_finals(&fired, bound()).await;
    let took = started.elapsed();
    let v = world.verdict(&fired);
    report(
        "shutdown",
        backend,
        &v,
        &format!(", SIGTERM exit took {exit:?}, run took {took:?}"),
    );
    assert!(v.exactly_once(), "SIGTERM lost or doubled work: {v:?}");
}

/// Error-level lines in an app instance's log: proof the outage was felt.
fn error_lines(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ERROR"))
        .count()
}

/// PostgreSQL goes away for a few seconds in the middle of a burst, as in a server restart:
/// whatever the app acknowledged still ends exactly once, and it recovers without a restart.
async fn database_restart() {
    let backend = Backend::Postgres;
    let n = calls();
    let (world, app) = world_with_app(backend).await;
    let _results = world.post_mango_results(app.base());
    let started = Instant::now();
    let outage = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        world.db.set_down(true);
        tokio::time::sleep(Duration::from_secs(3)).await;
        world.db.set_down(false);
    };
    let bases = [app.base()];
    let (fired, ()) = tokio::join!(world.burst(&bases, n, PARALLEL), outage);
    world.wait_for_finals(&fired, bound()).await;
    let took = started.elapsed();
    let v = world.verdict(&fired);
    report(
        "database-restart",
        backend,
        &v,
        &format!(
            ", 3 s without the database from 1.5 s, took {took:?}; the app logged {} errors",
            error_lines(&world.db.log_path(0))
        ),
    );
    assert!(
        v.exactly_once(),
        "a database outage lost or doubled work: {v:?}"
    );
    let tail = &fired[fired.len().saturating_sub(5)..];
    assert!(
        tail.iter().all(|f| f.acknowledged),
        "the app did not recover by itself: the last calls after the outage were refused"
    );
}

/// Two instances on one PostgreSQL database share a burst, with a forced token expiry.
async fn two_instances() {
    let backend = Backend::Postgres;
    let n = env_usize("CHAOS_PAIR_CALLS", if full() { 2000 } else { 200 });
    let mut world = World::new(backend).await;
    let mut a = AppProcess::new(&world.db, &world.b24, &world.mango, 0);
    let mut b = AppProcess::new(&world.db, &world.b24, &world.mango, 1);
    a.start().await;
    b.start().await;
    world.install_portals(&a, PORTALS).await;
    let first = world.portals[0].member_id.clone();
    let refreshes_before = world.b24.refresh_count(&first);
    let _results = world.post_mango_results(a.base());
    let started = Instant::now();
    let bases = [a.base(), b.base()];
    let expire = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        world.b24.expire_access_tokens(&first);
    };
    let (fired, ()) = tokio::join!(world.burst(&bases, n, PARALLEL), expire);
    world.wait_for_finals(&fired, bound()).await;
    let took = started.elapsed();
    let v = world.verdict(&fired);
    let refreshes = world.b24.refresh_count(&first) - refreshes_before;
    report(
        "two-instances",
        backend,
        &v,
        &format!(", took {took:?}, refreshes after the forced expiry {refreshes}"),
    );
    assert!(
        v.exactly_once(),
        "exactly once broken across instances: {v:?}"
    );
    assert_eq!(
        v.query_limit_exceeded, 0,
        "the Bitrix24 budget is not shared"
    );
    assert_eq!(v.mango_429, 0, "Mango's 4/s per account not held");
    assert_eq!(refreshes, 1, "one refresh for the forced expiry");
}

#[actix_web::test]
async fn sigkilled_three_times_every_acknowledged_call_ends_once_within_a_minute_of_an_undisturbed_run_on_sqlite(
) {
    crash(Backend::Sqlite).await
}

#[actix_web::test]
async fn sigkilled_three_times_every_acknowledged_call_ends_once_within_a_minute_of_an_undisturbed_run_on_postgres(
) {
    crash(Backend::Postgres).await
}

#[actix_web::test]
async fn postgres_gone_for_three_seconds_mid_burst_loses_nothing_and_the_app_recovers_by_itself() {
    database_restart().await
}

#[actix_web::test]
async fn two_instances_on_one_postgres_share_a_burst_once_without_query_limit_or_mango_429() {
    two_instances().await
}

#[actix_web::test]
async fn with_a_fifth_of_peer_requests_faulted_everything_completes_exactly_once_on_sqlite() {
    faults(Backend::Sqlite).await
}

#[actix_web::test]
async fn with_a_fifth_of_peer_requests_faulted_everything_completes_exactly_once_on_postgres() {
    faults(Backend::Postgres).await
}

#[actix_web::test]
async fn sigterm_during_a_burst_loses_nothing_and_the_restarted_app_finishes_on_sqlite() {
    shutdown(Backend::Sqlite).await
}

#[actix_web::test]
async fn sigterm_during_a_burst_loses_nothing_and_the_restarted_app_finishes_on_postgres() {
    shutdown(Backend::Postgres).await
}
