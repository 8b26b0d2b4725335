//! The worker loop: claims due jobs, runs them on the local task set, applies the failure policy.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::Instrument;

use super::{queue, JobError, Registry};
use crate::context::Context;

/// How long a claimed job is ours. Longer than any job's total peer timeouts, so a slow job is
/// never re-run while it is still going; a crashed worker's jobs come back after it.
pub const LEASE: Duration = Duration::from_secs(300);
/// Poll fallback when no wake-up arrives (another instance enqueued, or a retry came due).
const POLL: Duration = Duration::from_secs(2);
const REAP_EVERY: Duration = Duration::from_secs(30);
/// Finished jobs are kept this long for debugging, then deleted.
const DONE_JOBS_KEPT_DAYS: i64 = 7;

pub struct Worker {
    ctx: Rc<Context>,
    registry: Rc<Registry>,
    id: String,
    slots: Arc<Semaphore>,
}

impl Worker {
    pub fn new(ctx: Rc<Context>, registry: Registry, concurrency: usize) -> Worker {
        Worker {
            ctx,
            registry: Rc::new(registry),
            id: format!("worker-{}", uuid::Uuid::new_v4()),
            slots: Arc::new(Semaphore::new(concurrency)),
        }
    }

    /// Runs until the process stops; spawn it with `actix_web::rt::spawn` (awc is !Send).
    pub async fn run(self) {
        tracing::info!(worker = %self.id, "job worker started");
        let mut last_reap: Option<std::time::Instant> = None;
        loop {
            if last_reap.is_none_or(|t| t.elapsed() >= REAP_EVERY) {
                last_reap = Some(std::time::Instant::now());
                let now = self.ctx.shared.clock.now();
                let keep_until = now - chrono::Duration::days(DONE_JOBS_KEPT_DAYS);
                let reaped = self.ctx.shared.db.run(move |c| {
                    queue::purge_done(c, keep_until)?;
                    Ok(queue::reap(c, now)?)
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
                claim_due(&self.ctx, &self.id, free).await
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
                actix_web::rt::spawn(async move {
                    run_one(&ctx, &registry, &worker, job).await;
                    drop(permit);
                    // A freed slot may pick up a job that is already waiting.
                    wake.notify_one();
                });
            }
            if full_batch {
                continue;
            }
            tokio::select! {
                _ = self.ctx.shared.notify.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

async fn claim_due(ctx: &Context, worker: &str, limit: usize) -> Vec<queue::JobRow> {
    let now = ctx.shared.clock.now();
    let lease_until = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
    let worker = worker.to_owned();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    match ctx
        .shared
        .db
        .run(move |c| Ok(queue::claim(c, &worker, now, lease_until, limit)?))
        .await
    {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::error!(error = %e, "claiming jobs failed");
            Vec::new()
        }
    }
}

/// Runs one claimed job and records its outcome; never panics the worker.
pub async fn run_one(ctx: &Context, registry: &Registry, worker: &str, job: queue::JobRow) {
    let span = tracing::info_span!("job", job.id = %job.id, job.kind = %job.kind, portal = job.member_id.as_deref().unwrap_or("-"), attempt = job.attempts);
    async {
        // A panicking job (a bug) is retried like a transient failure and buried after its
        // attempts, instead of taking the worker down with it; the panic hook logged the cause.
        let result = crate::telemetry::catch_panic(registry.dispatch(ctx, &job))
            .await
            .unwrap_or_else(|panic| Err(JobError::Transient(format!("the job panicked: {panic}"))));
        let now = ctx.shared.clock.now();
        let (id, w) = (job.id.clone(), worker.to_owned());
        let outcome = match result {
            Ok(()) => {
                tracing::info!("job done");
                ctx.shared.db.run(move |c| Ok(queue::complete(c, &id, &w, now)?)).await
            }
            Err(JobError::RetryAt(at, note)) => {
                tracing::info!(until = %at, %note, "job waits");
                ctx.shared.db.run(move |c| Ok(queue::snooze(c, &id, &w, at, &note, now)?)).await
            }
            Err(JobError::Transient(e)) if job.attempts < job.max_attempts => {
                let delay = super::backoff(job.attempts);
                let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "job failed, will retry");
                ctx.shared.db.run(move |c| Ok(queue::retry(c, &id, &w, at, &e, now)?)).await
            }
            Err(JobError::Transient(e)) | Err(JobError::Permanent(e)) => {
                tracing::error!(error = %e, "job failed for good; buried");
                ctx.shared.db.run(move |c| Ok(queue::bury(c, &id, &w, &e, now)?)).await
            }
        };
        match outcome {
            Ok(true) => {}
            Ok(false) => tracing::warn!("job outcome not recorded: the lease was lost to another worker"),
            Err(e) => tracing::error!(error = %e, "recording the job outcome failed; the lease will expire and it re-runs"),
        }
    }
    .instrument(span)
    .await
}

/// Runs every due job to completion, repeatedly, until none is due: the tests' and the
/// sandbox's deterministic alternative to the background loop. Returns how many runs happened.
pub async fn drain(ctx: &Context, registry: &Registry, worker: &str) -> usize {
    let mut runs = 0;
    loop {
        let batch = claim_due(ctx, worker, 64).await;
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
