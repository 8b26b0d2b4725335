//! Mango's call events stored as received and applied: the event's attempt found (by
//! `command_id`, else by `entry_id`), and the attempt recomputed from every stored event of its
//! call.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::{settle, Attempt, SettleLate, SUMMARY_GRACE};
use crate::db::schema::{call_attempts, mango_call_events};
use crate::db::{insert_if_absent, write_tx, DbConnection, DbError};
use crate::jobs::{queue, Job};
use crate::mango::events::{self, CallEvent, Outcome, Progress, Summary};

/// A verified event, read.
#[derive(Debug, Clone)]
pub enum Incoming {
    Call(CallEvent),
    Summary(Summary),
}

/// What storing an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Not a call of ours (a foreign `command_id`, or none on a call we do not know): not stored.
    Foreign,
    /// Stored; its attempt is not known yet (a summary before the call's events).
    Waiting,
    /// Stored (or already stored) and its attempt recomputed; `true` when it ended now.
    Applied { ended: bool },
}

pub(super) fn attempt_of_command(
    c: &mut DbConnection,
    members: &[String],
    command_id: &str,
) -> QueryResult<Option<Attempt>> {
    call_attempts::table
        .filter(call_attempts::member_id.eq_any(members))
        .filter(call_attempts::command_id.eq_any(crate::callback::command_ids_of(command_id)))
        .select(Attempt::as_select())
        .first(c)
        .optional()
}

fn attempt_of_entry(
    c: &mut DbConnection,
    members: &[String],
    entry_id: &str,
) -> QueryResult<Option<Attempt>> {
    call_attempts::table
        .filter(call_attempts::member_id.eq_any(members))
        .filter(call_attempts::entry_id.eq(entry_id))
        .select(Attempt::as_select())
        .first(c)
        .optional()
}

fn store_event(
    c: &mut DbConnection,
    member_id: &str,
    incoming: &Incoming,
    body: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let (entry, kind, call_id, seq, command_id) = match incoming {
        Incoming::Call(e) => (
            &e.entry_id,
            "call",
            e.call_id.as_str(),
            e.seq,
            e.command_id.as_deref(),
        ),
        Incoming::Summary(s) => (&s.entry_id, "summary", "", 0, None),
    };
    insert_if_absent!(
        c,
        diesel::insert_into(mango_call_events::table).values((
            mango_call_events::member_id.eq(member_id),
            mango_call_events::entry_id.eq(entry),
            mango_call_events::kind.eq(kind),
            mango_call_events::call_id.eq(call_id),
            mango_call_events::seq.eq(seq),
            mango_call_events::command_id.eq(command_id),
            mango_call_events::body.eq(body),
            mango_call_events::received_at.eq(now),
        ))
    )
}

/// How long Mango's call events are kept. Mango posts a summary for every call on the PBX, not
/// only ours, and such a summary waits here for call events that never come; an attempt ends
/// within the portal's outcome bound (at most a day) after its send, so after two days no event
/// can still change an outcome.
pub const EVENTS_KEPT: chrono::Duration = chrono::Duration::days(2);

/// Deletes the call events received more than [`EVENTS_KEPT`] before `now`.
pub fn purge_old_events(c: &mut DbConnection, now: NaiveDateTime) -> QueryResult<usize> {
    diesel::delete(
        mango_call_events::table.filter(mango_call_events::received_at.lt(now - EVENTS_KEPT)),
    )
    .execute(c)
}

/// Stores a verified event for the portals `members` (those whose salt verified it) and
/// recomputes its attempt, in one transaction.
pub fn record_event(
    conn: &mut DbConnection,
    members: &[String],
    incoming: &Incoming,
    body: &str,
    now: NaiveDateTime,
) -> Result<Recorded, DbError> {
    write_tx(conn, |c| {
        let attempt = match incoming {
            Incoming::Call(e) => match e.command_id.as_deref() {
                Some(cmd) => match attempt_of_command(c, members, cmd)? {
                    Some(a) => Some(a),
                    // Another system's command on the same PBX.
                    None => return Ok(Recorded::Foreign),
                },
                // Mango puts the command's id on every event of a call it placed for a
                // command; one without it is of a call we did not order (an incoming call on
                // the same PBX), unless its entry is already one of ours.
                None => match attempt_of_entry(c, members, &e.entry_id)? {
                    Some(a) => Some(a),
                    None => return Ok(Recorded::Foreign),
                },
            },
            Incoming::Summary(s) => attempt_of_entry(c, members, &s.entry_id)?,
        };
        let Some(mut attempt) = attempt else {
            // No attempt knows this call yet: kept for every portal that verified it, and
            // applied when the call event naming its command arrives.
            for m in members {
                store_event(c, m, incoming, body, now)?;
            }
            return Ok(Recorded::Waiting);
        };
        store_event(c, &attempt.member_id, incoming, body, now)?;
        let entry = match incoming {
            Incoming::Call(e) => &e.entry_id,
            Incoming::Summary(s) => &s.entry_id,
        };
        if attempt.entry_id.is_none() {
            // The call event names the command: from now on its entry leads to the attempt.
            diesel::update(call_attempts::table.find((&attempt.callback_id, attempt.n)))
                .set(call_attempts::entry_id.eq(entry))
                .execute(c)?;
            attempt.entry_id = Some(entry.clone());
        }
        Ok(Recorded::Applied {
            ended: recompute(c, &attempt, now, false)?,
        })
    })
}

/// Reads every stored event of the attempt's call and writes what they say; ends the attempt
/// when the summary and every call event are in (`force`: the summary alone). `true` when it
/// ended now.
fn recompute(
    c: &mut DbConnection,
    a: &Attempt,
    now: NaiveDateTime,
    force: bool,
) -> QueryResult<bool> {
    let Some(entry) = a.entry_id.as_deref() else {
        return Ok(false);
    };
    if a.ended_at.is_some() {
        return Ok(false);
    }
    let rows: Vec<(String, String)> = mango_call_events::table
        .filter(mango_call_events::member_id.eq(&a.member_id))
        .filter(mango_call_events::entry_id.eq(entry))
        .order((mango_call_events::call_id, mango_call_events::seq))
        .select((mango_call_events::kind, mango_call_events::body))
        .load(c)?;
    let (mut calls, mut summary) = (Vec::new(), None);
    for (kind, body) in rows {
        // Stored bodies were read once already; one that no longer reads is skipped, not fatal.
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        match kind.as_str() {
            "summary" => summary = events::parse_summary(&v).ok().or(summary),
            _ => calls.extend(events::parse_call(&v).ok()),
        }
    }
    let p = events::progress(&calls, summary.as_ref(), &a.group_extension);
    let ended = p.outcome.is_some() && (p.complete || force);
    if p.outcome.is_some() && !ended {
        // The summary overtook some call events: they get a grace period to arrive.
        let mut job = SettleLate {
            callback_id: a.callback_id.clone(),
            n: a.n,
        }
        .to_new_job(
            Some(&a.member_id),
            Some(format!("settle_late:{}:{}", a.callback_id, a.n)),
            now,
        );
        job.run_at = now + SUMMARY_GRACE;
        queue::enqueue(c, &job, now)?;
    }
    write_progress(c, a, &p, ended, now)
}

fn write_progress(
    c: &mut DbConnection,
    a: &Attempt,
    p: &Progress,
    ended: bool,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let talk = p.talk_seconds.and_then(|t| i32::try_from(t).ok());
    diesel::update(
        call_attempts::table
            .find((&a.callback_id, a.n))
            .filter(call_attempts::ended_at.is_null()),
    )
    .set((
        call_attempts::manager_extension.eq(&p.manager_extension),
        call_attempts::client_connected_at.eq(p.client_connected_at.and_then(events::at)),
        call_attempts::talk_seconds.eq(talk),
        call_attempts::disconnect_reason.eq(p.disconnect_reason),
        call_attempts::outcome.eq(p.outcome.filter(|_| ended).map(Outcome::as_str)),
        call_attempts::ended_at.eq(ended.then(|| p.ended_at.and_then(events::at).unwrap_or(now))),
    ))
    .execute(c)?;
    if ended {
        settle(c, &a.callback_id, now)?;
    }
    Ok(ended)
}

/// The summary's grace period is over: the attempt ends with the events that came.
pub fn settle_late(
    conn: &mut DbConnection,
    callback_id: &str,
    n: i32,
    now: NaiveDateTime,
) -> Result<bool, DbError> {
    write_tx(conn, |c| {
        let a = call_attempts::table
            .find((callback_id, n))
            .select(Attempt::as_select())
            .first(c)
            .optional()?;
        match a {
            Some(a) => Ok(recompute(c, &a, now, true)?),
            None => Ok(false),
        }
    })
}
