//! Background jobs: typed job structs, the one registry that runs them, and their failure policy.
//!
//! A job is a serde struct with a stable `KIND`; once released a KIND never changes, because
//! queued rows name it. Handlers enqueue jobs in the same transaction as their domain write
//! ([`queue::enqueue`]) and signal [`crate::context::Shared::notify`] after commit.

pub mod queue;
pub mod worker;

use std::time::Duration;

use chrono::NaiveDateTime;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::Context;

/// How a job run ended, when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth retrying later with backoff (peer unavailable, rate limited).
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying cannot help; the job is buried with this error.
    #[error("permanent: {0}")]
    Permanent(String),
    /// Not a failure: run again at the given time (e.g. a contact not linked to the deal yet).
    #[error("waiting until {0}: {1}")]
    RetryAt(NaiveDateTime, String),
}

impl From<crate::db::DbError> for JobError {
    fn from(e: crate::db::DbError) -> Self {
        // A database hiccup (busy, connection lost) is worth another try.
        JobError::Transient(e.to_string())
    }
}

/// A typed background job.
#[allow(async_fn_in_trait)] // jobs run on the worker's local task set; no Send bound wanted (awc is !Send)
pub trait Job: Serialize + DeserializeOwned {
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

/// The registry: every job kind the worker knows, in one place.
pub async fn dispatch(ctx: &Context, row: &queue::JobRow) -> Result<(), JobError> {
    use crate::callback::jobs::{PlaceCall, ReportCallback};
    use crate::portal::jobs::{ApplyAppUpdate, KeepTokensAlive, RegisterRobot, SelfCheck};
    match row.kind.as_str() {
        PlaceCall::KIND => run_typed::<PlaceCall>(ctx, row).await,
        ReportCallback::KIND => run_typed::<ReportCallback>(ctx, row).await,
        RegisterRobot::KIND => run_typed::<RegisterRobot>(ctx, row).await,
        KeepTokensAlive::KIND => run_typed::<KeepTokensAlive>(ctx, row).await,
        SelfCheck::KIND => run_typed::<SelfCheck>(ctx, row).await,
        ApplyAppUpdate::KIND => run_typed::<ApplyAppUpdate>(ctx, row).await,
        other => Err(JobError::Permanent(format!("unknown job kind {other:?}"))),
    }
}

async fn run_typed<J: Job>(ctx: &Context, row: &queue::JobRow) -> Result<(), JobError> {
    let job: J = serde_json::from_str(&row.payload)
        .map_err(|e| JobError::Permanent(format!("payload of {} does not parse: {e}", J::KIND)))?;
    job.run(ctx, row).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let first = backoff(1).as_millis();
        let third = backoff(3).as_millis();
        assert!((1_600..=2_400).contains(&first), "{first}");
        assert!((6_400..=9_600).contains(&third), "{third}");
        assert!(backoff(40).as_millis() <= 720_000);
    }
}
