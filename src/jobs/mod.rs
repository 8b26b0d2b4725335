//! Background jobs: the [`Job`] trait, the [`Registry`] of kinds a worker runs, and the failure
//! policy. It knows no job kind: each kind lives in its domain module, and the application
//! lists them once (`startup::job_registry`).
//!
//! A job is a serde struct with a stable `KIND`; once released a KIND never changes, because
//! queued rows name it. Handlers enqueue jobs in the same transaction as their domain write
//! ([`queue::enqueue`]) and signal [`crate::context::Shared::notify`] after commit.

pub mod queue;
pub mod worker;

use std::time::Duration;

use chrono::NaiveDateTime;
use futures_util::future::LocalBoxFuture;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::Context;

/// How the note of a job waiting a moment to be gathered with others of its kind begins
/// ([`Registry::with_gathered`]); [`worker::drain`] runs such jobs without waiting for them.
pub const GATHER_NOTE: &str = "gathering:";

/// The longest a job waits to be gathered.
pub const GATHER_WINDOW: Duration = Duration::from_secs(1);

/// How a job run ended, when it did not succeed. A failure keeps its source error, so the log and
/// the stored `last_error` show the whole cause chain ([`cause_chain`]).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth retrying later with backoff (peer unavailable, rate limited).
    #[error("transient: {}", cause_chain(.0))]
    Transient(anyhow::Error),
    /// Retrying cannot help; the job is buried with this error.
    #[error("permanent: {}", cause_chain(.0))]
    Permanent(anyhow::Error),
    /// Not a failure: run again at the given time (e.g. a contact not linked to the deal yet).
    #[error("waiting until {0}: {1}")]
    RetryAt(NaiveDateTime, String),
    /// Not a failure: a shared budget (a peer's rate limit) allows the job's next step only after
    /// this long. The job goes back to the queue, due then, without counting an attempt, and its
    /// worker slot is free for other work meanwhile.
    #[error("waiting {0:?} for a rate budget")]
    Snooze(Duration),
    /// Not a failure: the run wrote its own ending into the queue, in the transaction of its
    /// last write and fenced on its lease like the worker's own ([`Ending`]). The worker only
    /// counts and logs it.
    #[error("ending recorded by the run: {0:?}")]
    Recorded(Ending),
}

/// An ending a job run recorded itself: one durable commit instead of two, on the path every
/// callback takes (measured: each commit of SQLite's one writer held it ~0.4 ms; the writer
/// was 88 % busy in a 10,000-call burst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// [`queue::complete`].
    Done,
    /// [`queue::wait_for_budget`], due after this long.
    WaitsForBudget(Duration),
}

/// The lease a claimed run holds on its job: what the run's own ending is fenced on.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job_id: String,
    pub worker: String,
}

impl Lease {
    pub fn of(job: &queue::JobRow) -> Lease {
        Lease {
            job_id: job.id.clone(),
            worker: job.locked_by.clone().unwrap_or_default(),
        }
    }

    /// Marks the job done in the caller's transaction; `false` when this run lost its lease
    /// (the worker then tries, and logs the loss).
    pub fn complete(
        &self,
        c: &mut crate::db::DbConnection,
        now: NaiveDateTime,
    ) -> diesel::QueryResult<bool> {
        queue::complete(c, &self.job_id, &self.worker, now)
    }

    /// Puts the job back, due after `wait`, first of its portal then, in the caller's
    /// transaction ([`queue::wait_for_budget`]); `false` when this run lost its lease.
    pub fn wait_for_budget(
        &self,
        c: &mut crate::db::DbConnection,
        wait: Duration,
        now: NaiveDateTime,
    ) -> diesel::QueryResult<bool> {
        let at = now + chrono::Duration::from_std(wait).unwrap_or_default();
        let note = format!("snoozed {} ms for a rate budget", wait.as_millis());
        queue::wait_for_budget(c, &self.job_id, &self.worker, at, &note, now)
    }
}

impl From<crate::db::DbError> for JobError {
    fn from(e: crate::db::DbError) -> Self {
        // A database hiccup (busy, connection lost) is worth another try.
        JobError::Transient(e.into())
    }
}

/// A Bitrix24 error as a job's: a wait for the portal's budget snoozes, transient ones are
/// retried, the rest fail for good.
pub fn bitrix_error(e: crate::bitrix::BitrixError) -> JobError {
    if let Some(wait) = e.budget_wait() {
        JobError::Snooze(wait)
    } else if e.is_transient() {
        JobError::Transient(e.into())
    } else {
        JobError::Permanent(e.into())
    }
}

/// An error and its causes on one line, each said once: many errors already quote their source
/// in their own message (`#[error("…: {0}")]` with `#[from]`), and saying it twice helps nobody.
pub fn cause_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

/// A typed background job.
#[allow(async_fn_in_trait)] // jobs run on the worker's local task set; no Send bound wanted (awc is !Send)
pub trait Job: Serialize + DeserializeOwned + 'static {
    /// Stored in `jobs.kind`; never change it once released.
    const KIND: &'static str;
    const MAX_ATTEMPTS: i32 = 8;

    /// `job` is the claimed row: its id, and `attempts`/`max_attempts` so a job can tell its last
    /// try and finish its domain row cleanly instead of being buried half-done.
    async fn run(self, ctx: &Context, job: &queue::JobRow) -> Result<(), JobError>;

    /// The row to insert for this job, due now.
    fn to_new_job(
        &self,
        member_id: Option<&str>,
        dedup_key: Option<String>,
        now: NaiveDateTime,
    ) -> queue::NewJob {
        queue::NewJob {
            kind: Self::KIND,
            // Serialising our own plain structs cannot fail.
            payload: serde_json::to_string(self).unwrap_or_default(),
            member_id: member_id.map(str::to_owned),
            dedup_key,
            run_at: now,
            max_attempts: Self::MAX_ATTEMPTS,
        }
    }
}

/// Exponential backoff with ±20 % jitter: 2 s, 4 s, 8 s … capped at 10 minutes.
pub fn backoff(attempts: i32) -> Duration {
    let exp = attempts.clamp(1, 20) as u32 - 1;
    let base = 2_000u64.saturating_mul(1u64 << exp.min(16)).min(600_000);
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    Duration::from_millis((base as f64 * jitter) as u64)
}

/// Runs one claimed job of one kind: parses its payload and runs it.
pub type Runner =
    for<'a> fn(&'a Context, &'a queue::JobRow) -> LocalBoxFuture<'a, Result<(), JobError>>;

/// The job kinds a worker runs, `KIND` → runner. The application builds it once
/// (`startup::job_registry`) and hands it to the worker.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: Vec<(&'static str, Runner)>,
    /// Kinds claimed one per portal at a time: a run gathers the portal's other due jobs of its
    /// kind ([`queue::adopt`]) and does them together.
    gathered: Vec<&'static str>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds the job kind `J`.
    pub fn with<J: Job>(mut self) -> Registry {
        self.kinds.push((J::KIND, run_typed::<J>));
        self
    }

    /// Adds the job kind `J`, claimed one per portal at a time: its run adopts the portal's
    /// other due jobs of the kind and finishes them ([`worker::finish`]).
    pub fn with_gathered<J: Job>(mut self) -> Registry {
        self.gathered.push(J::KIND);
        self.with::<J>()
    }

    /// The kinds claimed one per portal at a time.
    pub fn gathered(&self) -> &[&'static str] {
        &self.gathered
    }

    /// The registered `KIND` equal to `kind`, or `unknown`: a label from a fixed set.
    pub fn kind_label(&self, kind: &str) -> &'static str {
        self.kinds
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or("unknown", |(k, _)| k)
    }

    /// Runs a claimed row with the runner of its kind; an unknown kind fails for good.
    pub async fn dispatch(&self, ctx: &Context, row: &queue::JobRow) -> Result<(), JobError> {
        match self.kinds.iter().find(|(kind, _)| *kind == row.kind) {
            Some((_, run)) => run(ctx, row).await,
            None => Err(JobError::Permanent(anyhow::anyhow!(
                "unknown job kind {:?}",
                row.kind
            ))),
        }
    }
}

fn run_typed<'a, J: Job>(
    ctx: &'a Context,
    row: &'a queue::JobRow,
) -> LocalBoxFuture<'a, Result<(), JobError>> {
    Box::pin(async move {
        let job: J = serde_json::from_str(&row.payload).map_err(|e| {
            JobError::Permanent(
                anyhow::Error::new(e).context(format!("payload of {} does not parse", J::KIND)),
            )
        })?;
        job.run(ctx, row).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_error_keeps_its_source_and_says_each_cause_once() {
        let e = JobError::from(crate::db::DbError::Query(diesel::result::Error::NotFound));
        let JobError::Transient(cause) = &e else {
            panic!("a database error is worth another try: {e}");
        };
        assert!(
            cause.downcast_ref::<crate::db::DbError>().is_some(),
            "the source error is kept, not just its text"
        );
        assert!(cause.chain().count() >= 2, "its own source too");
        // DbError quotes its source in its message already: said once.
        assert_eq!(
            e.to_string(),
            "transient: database query failed: Record not found"
        );

        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e =
            JobError::Permanent(anyhow::Error::new(refused).context("Mango could not be reached"));
        assert_eq!(
            e.to_string(),
            "permanent: Mango could not be reached: connection refused",
            "a cause the message does not quote is printed after it"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let first = backoff(1).as_millis();
        let third = backoff(3).as_millis();
        assert!((1_600..=2_400).contains(&first), "{first}");
        assert!((6_400..=9_600).contains(&third), "{third}");
        assert!(backoff(40).as_millis() <= 720_000);
    }
}
