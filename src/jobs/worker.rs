//! The worker loop: claims due jobs, runs them on the local task set, applies the failure policy.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use super::{queue, JobError, Registry};
use crate::context::Context;
use crate::metrics::JobOutcome;

/// How long a claimed job is ours unless renewed (`APP_JOB_LEASE_SECONDS`). Short, so a crashed
/// instance's jobs are taken over within it; a slow job keeps its lease because its worker
/// renews it every third of the lease while it runs ([`run_one`]).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(20);
/// Poll fallback when no wake-up arrives (another instance enqueued, or a retry came due). It
/// also bounds how late an expired lease is noticed: [`queue::claim`] takes those jobs over.
const POLL: Duration = Duration::from_secs(2);
/// The shortest sleep between two claims: a job due in a millisecond waits this long, so that a
/// clock at odds with the database's cannot spin the loop.
const MIN_IDLE: Duration = Duration::from_millis(5);
const REAP_EVERY: Duration = Duration::from_secs(30);
/// Finished jobs are kept this long for debugging, then deleted.
const DONE_JOBS_KEPT_DAYS: i64 = 7;

/// How long a stopping worker waits for its running jobs before it gives the rest back.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// `GET /health` calls the worker stalled when it has not polled the queue for this long. It
/// polls at least every [`POLL`] (2 s); between two polls it runs at most a reap and a claim,
/// each waiting at most 10 s for a pooled connection (`db::Db::connect`): a minute is clearly
/// past anything a live worker takes.
pub const STALLED_AFTER: Duration = Duration::from_secs(60);

pub struct Worker {
    ctx: Rc<Context>,
    registry: Rc<Registry>,
    id: String,
    concurrency: usize,
    slots: Arc<Semaphore>,
    grace: Duration,
    /// The jobs running now, by id, so that a stop past the grace period can abort them and
    /// release their leases.
    running: Rc<RefCell<HashMap<String, actix_web::rt::task::JoinHandle<()>>>>,
}

/// Tells a running [`Worker`] to stop; dropping it stops the worker too.
pub struct StopWorker(watch::Sender<bool>);

impl StopWorker {
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Worker {
    pub fn new(ctx: Rc<Context>, registry: Registry, concurrency: usize) -> Worker {
        let concurrency = concurrency.max(1);
        Worker {
            ctx,
            registry: Rc::new(registry),
            id: format!("worker-{}", uuid::Uuid::new_v4()),
            concurrency,
            slots: Arc::new(Semaphore::new(concurrency)),
            grace: DEFAULT_SHUTDOWN_GRACE,
            running: Rc::new(RefCell::new(HashMap::new())),
        }
    }

    /// How long [`Worker::run`] waits for running jobs once told to stop.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Worker {
        self.grace = grace;
        self
    }

    /// Runs until `stop` says so (or is dropped); spawn it with `actix_web::rt::spawn` (awc is
    /// !Send). Stopping: no new job is claimed, running jobs get the grace period to finish, and
    /// those still running then are aborted and their leases released, so another instance (or
    /// this one restarted) takes them at once instead of after the lease.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tracing::info!(worker = %self.id, "job worker started");
        let mut last_reap: Option<std::time::Instant> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            // Alive, even when every slot is busy and nothing is claimed this round.
            self.ctx.shared.heartbeat.beat(self.ctx.shared.clock.now());
            if last_reap.is_none_or(|t| t.elapsed() >= REAP_EVERY) {
                last_reap = Some(std::time::Instant::now());
                let clock = self.ctx.shared.clock.clone();
                let reaped = self.ctx.shared.db.run(move |c| {
                    let now = clock.shift(crate::db::database_now(c)?);
                    let keep_until = now - chrono::Duration::days(DONE_JOBS_KEPT_DAYS);
                    queue::purge_done(c, keep_until)?;
                    queue::reap(c, now)
                });
                match reaped.await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        jobs = n,
                        "re-queued jobs whose worker stopped (lease expired)"
                    ),
                    Err(e) => tracing::error!(error = %e, "reaping expired leases failed"),
                }
            }
            let free = self.slots.available_permits();
            let claimed = if free > 0 {
                claim_due_gathering(&self.ctx, &self.id, free, self.registry.gathered()).await
            } else {
                Vec::new()
            };
            let full_batch = free > 0 && claimed.len() == free;
            for job in claimed {
                let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                    break;
                };
                let ctx = self.ctx.clone();
                let registry = self.registry.clone();
                let worker = self.id.clone();
                let wake = self.ctx.shared.notify.clone();
                let running = self.running.clone();
                let id = job.id.clone();
                let handle = actix_web::rt::spawn(async move {
                    let id = job.id.clone();
                    run_one(&ctx, &registry, &worker, job).await;
                    running.borrow_mut().remove(&id);
                    drop(permit);
                    // A freed slot may pick up a job that is already waiting.
                    wake.notify_one();
                });
                self.running.borrow_mut().insert(id, handle);
            }
            if full_batch {
                continue;
            }
            let idle = self.until_next_due().await;
            tokio::select! {
                _ = self.ctx.shared.notify.notified() => {}
                _ = tokio::time::sleep(idle) => {}
                changed = stop.changed() => {
                    // A dropped switch counts as a stop too.
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        self.stop_gracefully().await;
    }

    /// How long to sleep before claiming again: until the earliest queued job comes due, at
    /// most [`POLL`] (another instance may enqueue, a lease may run out) and at least
    /// [`MIN_IDLE`]. With every slot busy, a freed slot's wake-up comes first anyway.
    async fn until_next_due(&self) -> Duration {
        if self.slots.available_permits() == 0 {
            return POLL;
        }
        let clock = self.ctx.shared.clock.clone();
        let next = self.ctx.shared.db.read(move |c| {
            let now = clock.shift(crate::db::database_now(c)?);
            Ok::<_, crate::db::DbError>(queue::next_due(c)?.map(|at| at - now))
        });
        match next.await {
            Ok(Some(wait)) => wait.to_std().unwrap_or(MIN_IDLE).clamp(MIN_IDLE, POLL),
            Ok(None) => POLL,
            Err(e) => {
                tracing::warn!(error = %e, "reading when the next job is due failed");
                POLL
            }
        }
    }

    async fn stop_gracefully(self) {
        let running = self.running.borrow().len();
        tracing::info!(worker = %self.id, running, grace_s = self.grace.as_secs_f64(), "job worker stopping: no new jobs are claimed; running ones get the grace period");
        let all = u32::try_from(self.concurrency).unwrap_or(u32::MAX);
        if tokio::time::timeout(self.grace, self.slots.acquire_many(all))
            .await
            .is_ok()
        {
            tracing::info!(worker = %self.id, "job worker stopped: every running job finished");
            return;
        }
        let left: Vec<(String, actix_web::rt::task::JoinHandle<()>)> =
            self.running.borrow_mut().drain().collect();
        for (id, handle) in left {
            // Aborted at an await point: its last database write either happened or not, and
            // the run that takes the job over reads the row as it is (a callback found in
            // `calling` is never sent twice).
            handle.abort();
            let (jid, w, now) = (id.clone(), self.id.clone(), self.ctx.shared.clock.now());
            match self
                .ctx
                .shared
                .db
                .run(move |c| queue::release(c, &jid, &w, now))
                .await
            {
                Ok(true) => {
                    tracing::warn!(job.id = %id, "job still running at shutdown: aborted and released for another worker")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(job.id = %id, error = %e, "releasing a job at shutdown failed; it comes back when its lease expires")
                }
            }
        }
        tracing::info!(worker = %self.id, "job worker stopped");
    }
}

/// A stop switch and the receiving end for [`Worker::run`].
pub fn stop_switch() -> (StopWorker, watch::Receiver<bool>) {
    let (tx, rx) = watch::channel(false);
    (StopWorker(tx), rx)
}

/// Claims up to `limit` due jobs (and jobs whose worker's lease ran out) for `worker`.
pub async fn claim_due(ctx: &Context, worker: &str, limit: usize) -> Vec<queue::JobRow> {
    claim_due_gathering(ctx, worker, limit, &[]).await
}

/// [`claim_due`], one job per portal of each `gathered` kind (see [`queue::claim_gathering`]).
pub async fn claim_due_gathering(
    ctx: &Context,
    worker: &str,
    limit: usize,
    gathered: &[&'static str],
) -> Vec<queue::JobRow> {
    let clock = ctx.shared.clock.clone();
    // Polling is the sign of life `/health` looks for (the tests' `drain` polls too).
    ctx.shared.heartbeat.beat(clock.now());
    let lease = lease_of(ctx);
    let worker = worker.to_owned();
    let gathered = gathered.to_vec();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let db = &ctx.shared.db;
    // The candidates are read beside SQLite's writers, not in their line; the taking is a write.
    let read = db
        .read(move |c| {
            // One reading of the database's clock per claim: see [`queue`] on why.
            let now = clock.shift(crate::db::database_now(c)?);
            Ok::<_, crate::db::DbError>((now, queue::candidates(c, now, limit)?))
        })
        .await;
    let taken = match read {
        Ok((_, candidates)) if candidates.is_empty() => Ok(Vec::new()),
        Ok((now, candidates)) => {
            db.run(move |c| {
                queue::take_candidates(c, &worker, now, now + lease, limit, &gathered, candidates)
            })
            .await
        }
        Err(e) => Err(e),
    };
    match taken {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::error!(error = %e, "claiming jobs failed");
            Vec::new()
        }
    }
}

fn lease_of(ctx: &Context) -> chrono::Duration {
    chrono::Duration::from_std(ctx.shared.settings.job_lease).unwrap_or(chrono::Duration::MAX)
}

/// Renews the job's lease every third of the lease until it is lost; returns only then (the
/// caller drops the job's future with it). A failed renewal (database hiccup) is retried at the
/// next tick: the lease still has two thirds left.
async fn keep_lease(ctx: &Context, id: &str, worker: &str) {
    let every = ctx.shared.settings.job_lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let (clock, lease) = (ctx.shared.clock.clone(), lease_of(ctx));
        let (jid, w) = (id.to_owned(), worker.to_owned());
        let renewed = ctx
            .shared
            .db
            .run(move |c| {
                let now = clock.shift(crate::db::database_now(c)?);
                Ok::<_, crate::db::DbError>(queue::renew(c, &jid, &w, now + lease)?)
            })
            .await;
        match renewed {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::warn!(error = %e, "renewing the job's lease failed; trying again"),
        }
    }
}

/// Runs one claimed job and records its outcome; never panics the worker.
pub async fn run_one(ctx: &Context, registry: &Registry, worker: &str, job: queue::JobRow) {
    let span = tracing::info_span!("job", job.id = %job.id, job.kind = %job.kind, portal = job.member_id.as_deref().unwrap_or("-"), attempt = job.attempts);
    let started = std::time::Instant::now();
    let kind = registry.kind_label(&job.kind);
    let took = |outcome| {
        let seconds = started.elapsed().as_secs_f64();
        ctx.shared.metrics.job_run(kind, outcome, seconds);
    };
    async {
        // A panicking job (a bug) is retried like a transient failure and buried after its
        // attempts, instead of taking the worker down with it; the panic hook logged the cause.
        let running = crate::telemetry::catch_panic(registry.dispatch(ctx, &job));
        let result = tokio::select! {
            done = running => done.unwrap_or_else(|panic| Err(JobError::Transient(anyhow::anyhow!("the job panicked: {panic}")))),
            () = keep_lease(ctx, &job.id, worker) => {
                // Another worker owns the job now; this run stops at its current await point.
                // Whatever it was about to write is fenced: finishing updates compare-and-set
                // on `locked_by`, and the Mango send checks the lease in its own transaction.
                tracing::warn!("job lease lost to another worker; this run is abandoned");
                took(JobOutcome::LeaseLost);
                return;
            }
        };
        finish(ctx, kind, worker, &job, result, started).await;
    }
    .instrument(span)
    .await
}

/// Records how a run of `job` ended (done, waiting, retried or buried) and counts it; used for
/// each job a worker claimed and for each job a gathering run adopted ([`queue::adopt`]).
pub async fn finish(
    ctx: &Context,
    kind: &'static str,
    worker: &str,
    job: &queue::JobRow,
    result: Result<(), JobError>,
    started: std::time::Instant,
) {
    let took = |outcome| {
        let seconds = started.elapsed().as_secs_f64();
        ctx.shared.metrics.job_run(kind, outcome, seconds);
    };
    let now = ctx.shared.clock.now();
    let (id, w) = (job.id.clone(), worker.to_owned());
    // The same writes a run makes when it records its own ending ([`super::Lease`]).
    let lease = super::Lease {
        job_id: id.clone(),
        worker: w.clone(),
    };
    let outcome = match result {
        Ok(()) => {
            took(JobOutcome::Done);
            tracing::info!("job done");
            ctx.shared.db.run(move |c| lease.complete(c, now)).await
        }
        Err(JobError::RetryAt(at, note)) => {
            took(JobOutcome::Waits);
            tracing::info!(until = %at, %note, "job waits");
            ctx.shared
                .db
                .run(move |c| queue::snooze(c, &id, &w, at, &note, now))
                .await
        }
        Err(JobError::Recorded(super::Ending::Done)) => {
            took(JobOutcome::Done);
            tracing::info!("job done");
            Ok(true)
        }
        Err(JobError::Recorded(super::Ending::WaitsForBudget(wait))) => {
            took(JobOutcome::Waits);
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "job snoozes for a rate budget"
            );
            Ok(true)
        }
        Err(JobError::Snooze(wait)) => {
            took(JobOutcome::Waits);
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "job snoozes for a rate budget"
            );
            ctx.shared
                .db
                .run(move |c| lease.wait_for_budget(c, wait, now))
                .await
        }
        Err(JobError::Transient(e)) if job.attempts < job.max_attempts => {
            took(JobOutcome::Retry);
            let e = super::cause_chain(&e);
            let delay = super::backoff(job.attempts);
            let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "job failed, will retry");
            ctx.shared
                .db
                .run(move |c| queue::retry(c, &id, &w, at, &e, now))
                .await
        }
        Err(JobError::Transient(e)) | Err(JobError::Permanent(e)) => {
            took(JobOutcome::Dead);
            let e = super::cause_chain(&e);
            tracing::error!(error = %e, "job failed for good; buried");
            ctx.shared
                .db
                .run(move |c| queue::bury(c, &id, &w, &e, now))
                .await
        }
    };
    match outcome {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!("job outcome not recorded: the lease was lost to another worker")
        }
        Err(e) => {
            tracing::error!(error = %e, "recording the job outcome failed; the lease will expire and it re-runs")
        }
    }
}

/// The resolution of SQLite's clock (`julianday('now')`): a millisecond.
const CLOCK_TICK: Duration = Duration::from_millis(1);

/// Whether the next queued job is due within one tick of the database's clock.
async fn due_within_a_tick(ctx: &Context) -> bool {
    let clock = ctx.shared.clock.clone();
    let next = ctx.shared.db.read(move |c| {
        let now = clock.shift(crate::db::database_now(c)?);
        Ok::<_, crate::db::DbError>(queue::next_due(c)?.map(|at| at - now))
    });
    let tick = chrono::Duration::from_std(CLOCK_TICK).unwrap_or_default();
    matches!(next.await, Ok(Some(ahead)) if ahead <= tick)
}

/// Makes due now the jobs waiting at most [`super::GATHER_WINDOW`] to be gathered.
async fn hurry_gathering(ctx: &Context) -> usize {
    let clock = ctx.shared.clock.clone();
    let window = chrono::Duration::from_std(super::GATHER_WINDOW).unwrap_or_default();
    let hurried = ctx.shared.db.run(move |c| {
        let now = clock.shift(crate::db::database_now(c)?);
        Ok::<_, crate::db::DbError>(queue::hurry_gathering(c, now + window, now)?)
    });
    hurried.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "hurrying the gathered jobs failed");
        0
    })
}

/// Runs every due job to completion, repeatedly, until none is due: the tests' and the
/// sandbox's deterministic alternative to the background loop. Returns how many runs happened.
pub async fn drain(ctx: &Context, registry: &Registry, worker: &str) -> usize {
    let mut runs = 0;
    loop {
        let mut batch = claim_due_gathering(ctx, worker, 64, registry.gathered()).await;
        if batch.is_empty() && hurry_gathering(ctx).await > 0 {
            batch = claim_due_gathering(ctx, worker, 64, registry.gathered()).await;
        }
        // A job the app enqueued "now" (its clock counts microseconds) may be up to a
        // millisecond ahead of SQLite's now (whole milliseconds): due, only not yet by the
        // database's clock. Without this, a report enqueued just before the last claim was left
        // for the next drain (a test saw its deal's comments in the wrong order).
        for _ in 0..3 {
            if !batch.is_empty() || !due_within_a_tick(ctx).await {
                break;
            }
            tokio::time::sleep(CLOCK_TICK).await;
            batch = claim_due_gathering(ctx, worker, 64, registry.gathered()).await;
        }
        if batch.is_empty() {
            return runs;
        }
        runs += batch.len();
        futures_util::future::join_all(
            batch
                .into_iter()
                .map(|job| run_one(ctx, registry, worker, job)),
        )
        .await;
    }
}
