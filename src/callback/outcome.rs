//! How each attempt of a callback ended, from Mango's call events: the attempt's row when its
//! command is sent, every verified event stored as received, the attempt recomputed from all
//! stored events of its call, and — when the callback's last attempt has ended — its outcome
//! copied onto the callback with the report queued, in one transaction.
//!
//! Storing first and recomputing from everything stored is what makes any order and any
//! duplicate end the same: a replay inserts nothing and recomputes the same values, and an
//! ended attempt is never recomputed.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Callback, Status};
use crate::db::schema::{call_attempts, callbacks};
use crate::db::{insert_if_absent, write_tx, DbConnection, DbError};
use crate::jobs::{queue, Job};
use crate::mango::events::Outcome;

pub mod record;
pub use record::{record_event, settle_late, Incoming, Recorded};

/// One Mango command of a callback (`n` = 1 the first call).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = call_attempts)]
pub struct Attempt {
    pub callback_id: String,
    pub n: i32,
    pub member_id: String,
    pub command_id: String,
    pub group_kind: String,
    pub group_extension: String,
    pub entry_id: Option<String>,
    pub placed_at: NaiveDateTime,
    pub outcome: Option<String>,
    pub manager_extension: Option<String>,
    pub client_connected_at: Option<NaiveDateTime>,
    pub talk_seconds: Option<i32>,
    pub disconnect_reason: Option<i32>,
    pub ended_at: Option<NaiveDateTime>,
}

/// The job that closes an attempt with no summary within the portal's bound as `unknown`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CloseUnknown {
    pub callback_id: String,
    pub n: i32,
}

/// The job that applies a summary whose call events have not all come within
/// [`SUMMARY_GRACE`]: the attempt ends with what is known.
#[derive(Debug, Serialize, Deserialize)]
pub struct SettleLate {
    pub callback_id: String,
    pub n: i32,
}

/// How long a summary that overtook its call's events waits for them.
pub const SUMMARY_GRACE: chrono::Duration = chrono::Duration::seconds(60);

/// The job that reports a callback's outcome (timeline comment, a waiting robot's event).
#[derive(Debug, Serialize, Deserialize)]
pub struct ReportOutcome {
    pub callback_id: String,
}

/// The attempt's row and the job that bounds the wait for its summary, written in the
/// transaction of `queued → calling`: attempt 1 for the first command, the next number for a
/// retry (a new command id, see [`super::retry`]). A second `calling` of the same attempt (the
/// command was refused for sure and is sent again under the same id) keeps both.
pub fn open_first_attempt(
    c: &mut DbConnection,
    cb: &Callback,
    group_extension: &str,
    command_id: &str,
    now: NaiveDateTime,
) -> QueryResult<()> {
    let n = match last_attempt(c, &cb.id)? {
        None => 1,
        Some(a) if a.command_id == command_id => return Ok(()),
        Some(a) => a.n + 1,
    };
    let inserted = insert_if_absent!(
        c,
        diesel::insert_into(call_attempts::table).values((
            call_attempts::callback_id.eq(&cb.id),
            call_attempts::n.eq(n),
            call_attempts::member_id.eq(&cb.member_id),
            call_attempts::command_id.eq(command_id),
            call_attempts::group_kind.eq(cb.group_kind.map_or("trainee", |g| g.as_str())),
            call_attempts::group_extension.eq(group_extension),
            call_attempts::placed_at.eq(now),
        ))
    )?;
    if inserted {
        let minutes = crate::portal::store::settings_or_default(c, &cb.member_id, now)?
            .outcome_wait_minutes
            .clamp(1, 1440);
        let mut job = CloseUnknown {
            callback_id: cb.id.clone(),
            n,
        }
        .to_new_job(
            Some(&cb.member_id),
            Some(format!("close_unknown:{}:{n}", cb.id)),
            now,
        );
        job.run_at = now + chrono::Duration::minutes(i64::from(minutes));
        queue::enqueue(c, &job, now)?;
    }
    Ok(())
}

/// Ends the callback's attempt `n` with `outcome` unless it has ended already; `true` if it did.
pub fn end_attempt(
    c: &mut DbConnection,
    callback_id: &str,
    n: i32,
    outcome: Outcome,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let changed = diesel::update(
        call_attempts::table
            .find((callback_id, n))
            .filter(call_attempts::ended_at.is_null()),
    )
    .set((
        call_attempts::outcome.eq(outcome.as_str()),
        call_attempts::ended_at.eq(now),
    ))
    .execute(c)?;
    Ok(changed == 1)
}

/// The callback's last attempt.
pub fn last_attempt(c: &mut DbConnection, callback_id: &str) -> QueryResult<Option<Attempt>> {
    call_attempts::table
        .filter(call_attempts::callback_id.eq(callback_id))
        .order(call_attempts::n.desc())
        .select(Attempt::as_select())
        .first(c)
        .optional()
}

/// A started callback whose last attempt has ended takes that attempt's outcome and queues its
/// report, once (`call_outcome` is written only while empty). A callback still `calling` (Mango's
/// answer unknown) settles when it starts; one that ended otherwise was reported by its end.
pub fn settle(c: &mut DbConnection, callback_id: &str, now: NaiveDateTime) -> QueryResult<bool> {
    let Some(a) = last_attempt(c, callback_id)? else {
        return Ok(false);
    };
    let (Some(outcome), Some(ended)) = (a.outcome.clone(), a.ended_at) else {
        return Ok(false);
    };
    // The portal's rules may call again instead: the callback then goes on, unsettled.
    let this = super::retry::Ended {
        n: a.n,
        outcome: &outcome,
        group_kind: &a.group_kind,
    };
    if super::retry::plan(c, callback_id, this, now)? {
        return Ok(false);
    }
    let changed = diesel::update(
        callbacks::table
            .find(callback_id)
            .filter(callbacks::status.eq(Status::Started))
            .filter(callbacks::call_outcome.is_null()),
    )
    .set((
        callbacks::call_outcome.eq(&outcome),
        callbacks::manager_extension.eq(&a.manager_extension),
        callbacks::talk_seconds.eq(a.talk_seconds),
        callbacks::client_connected_at.eq(a.client_connected_at),
        callbacks::call_ended_at.eq(ended),
        callbacks::updated_at.eq(now),
    ))
    .execute(c)?;
    if changed == 0 {
        return Ok(false);
    }
    let member: String = callbacks::table
        .find(callback_id)
        .select(callbacks::member_id)
        .first(c)?;
    let job = ReportOutcome {
        callback_id: callback_id.to_owned(),
    }
    .to_new_job(
        Some(&member),
        Some(format!("report_outcome:{callback_id}")),
        now,
    );
    queue::enqueue(c, &job, now)?;
    Ok(true)
}

/// A callback that ended without a call placed (Mango refused the command, or it was given up)
/// after its attempt was opened: the attempt and the callback record `failed`. Its own report
/// tells the business process and the deal, so nothing else is queued.
pub fn fail_unstarted(
    c: &mut DbConnection,
    callback_id: &str,
    now: NaiveDateTime,
) -> QueryResult<()> {
    if let Some(a) = last_attempt(c, callback_id)? {
        end_attempt(c, callback_id, a.n, Outcome::Failed, now)?;
        diesel::update(
            callbacks::table
                .find(callback_id)
                .filter(callbacks::call_outcome.is_null()),
        )
        .set((
            callbacks::call_outcome.eq(Outcome::Failed.as_str()),
            callbacks::call_ended_at.eq(now),
        ))
        .execute(c)?;
    }
    Ok(())
}

/// Mango's asynchronous result refused a command it had accepted: that attempt failed.
pub fn fail_by_result(
    conn: &mut DbConnection,
    members: &[String],
    command_id: &str,
    now: NaiveDateTime,
) -> Result<bool, DbError> {
    write_tx(conn, |c| {
        let Some(a) = record::attempt_of_command(c, members, command_id)? else {
            return Ok(false);
        };
        let started: bool = callbacks::table
            .find(&a.callback_id)
            .select(callbacks::status.eq(Status::Started))
            .first(c)?;
        if !started || !end_attempt(c, &a.callback_id, a.n, Outcome::Failed, now)? {
            return Ok(false);
        }
        Ok(settle(c, &a.callback_id, now)?)
    })
}

/// The bound ran out: the attempt, if still open, ends as `unknown`. `true` if it did.
pub fn close_unknown(
    conn: &mut DbConnection,
    callback_id: &str,
    n: i32,
    now: NaiveDateTime,
) -> Result<bool, DbError> {
    write_tx(conn, |c| {
        let ended = end_attempt(c, callback_id, n, Outcome::Unknown, now)?;
        settle(c, callback_id, now)?;
        Ok(ended)
    })
}
