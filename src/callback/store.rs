//! Callback storage (SQL only): the rows of a run, status transitions, the call log. What
//! happens in one transaction with a job is [`super::lifecycle`].

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::{Callback, DealId, Group, RobotRun, Status};
use crate::db::schema::{callbacks, deals};
use crate::db::{insert_if_absent, DbConnection};

/// Inserts a run's callback as `queued`; `false` when its `event_token` is already taken.
pub fn insert_queued(
    c: &mut DbConnection,
    id: &str,
    run: &RobotRun,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    insert_if_absent(c, |c| {
        diesel::insert_into(callbacks::table)
            .values((
                callbacks::id.eq(id),
                callbacks::member_id.eq(&run.member_id),
                callbacks::deal_id.eq(run.deal_id.as_str()),
                callbacks::event_token.eq(&run.event_token),
                callbacks::workflow_id.eq(&run.workflow_id),
                callbacks::requested_group.eq(run.requested.as_str()),
                callbacks::phone_override.eq(&run.phone_override),
                callbacks::status.eq(Status::Queued),
                callbacks::created_at.eq(now),
                callbacks::updated_at.eq(now),
            ))
            .execute(c)
    })
}

/// The deal's row, created on its first run.
pub fn ensure_deal(c: &mut DbConnection, run: &RobotRun, now: NaiveDateTime) -> QueryResult<bool> {
    insert_if_absent(c, |c| {
        diesel::insert_into(deals::table)
            .values((
                deals::member_id.eq(&run.member_id),
                deals::deal_id.eq(run.deal_id.as_str()),
                deals::runs.eq(0),
                deals::updated_at.eq(now),
            ))
            .execute(c)
    })
}

/// The duplicate cut-off's compare-and-set: the deal becomes the callback's only if no callback
/// of the deal is active and none started since `window_start`; counts the run.
pub fn claim_deal(
    c: &mut DbConnection,
    run: &RobotRun,
    id: &str,
    window_start: NaiveDateTime,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    Ok(diesel::update(
        deals::table
            .filter(deals::member_id.eq(&run.member_id))
            .filter(deals::deal_id.eq(run.deal_id.as_str()))
            .filter(deals::active_callback_id.is_null().or(active_run_is_dead()))
            .filter(
                deals::last_started_at
                    .is_null()
                    .or(deals::last_started_at.lt(window_start)),
            ),
    )
    .set((
        deals::active_callback_id.eq(id),
        deals::runs.eq(deals::runs + 1),
        deals::updated_at.eq(now),
    ))
    .execute(c)?
        == 1)
}

/// The deal's active callback can never finish: its `place_call` job is gone or no longer
/// queued or running (buried after a bug, cancelled). Such a run must not block its deal
/// forever, so the cut-off treats it as ended. A callback whose job is alive keeps the deal,
/// however long it waits (a contact not linked yet, Mango retries). The job's dedup key is
/// `place_call:<callback id>` (see `lifecycle::accept`), and `place_call:<callback id>:<n>` for
/// the job of a retry's attempt `n` (see `retry::plan`).
fn active_run_is_dead() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql::<diesel::sql_types::Bool>(
        "NOT EXISTS (SELECT 1 FROM jobs WHERE (jobs.dedup_key = 'place_call:' || deals.active_callback_id \
         OR jobs.dedup_key LIKE 'place_call:' || deals.active_callback_id || ':%') \
         AND jobs.status IN ('queued', 'running'))",
    )
}

/// Uninstall: the portal's unfinished callbacks end as failed with `error` (no report: the
/// portal's tokens are gone with the app) and its deals lose their active marks, so a run after
/// a re-installation is not cut off by a callback that can no longer happen.
pub fn end_unfinished_of_portal(
    c: &mut DbConnection,
    member_id: &str,
    error: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    let n = diesel::update(
        callbacks::table
            .filter(callbacks::member_id.eq(member_id))
            .filter(callbacks::status.eq_any([Status::Queued, Status::Calling])),
    )
    .set((
        callbacks::status.eq(Status::Failed),
        callbacks::error.eq(error),
        callbacks::finished_at.eq(now),
        callbacks::updated_at.eq(now),
    ))
    .execute(c)?;
    diesel::update(
        deals::table
            .filter(deals::member_id.eq(member_id))
            .filter(deals::active_callback_id.is_not_null()),
    )
    .set((
        deals::active_callback_id.eq(None::<String>),
        deals::updated_at.eq(now),
    ))
    .execute(c)?;
    Ok(n)
}

/// How many runs the deal has had.
pub fn deal_runs(c: &mut DbConnection, member_id: &str, deal_id: &DealId) -> QueryResult<i32> {
    deals::table
        .find((member_id, deal_id.as_str()))
        .select(deals::runs)
        .first(c)
}

pub fn set_group(c: &mut DbConnection, id: &str, group: Group) -> QueryResult<usize> {
    diesel::update(callbacks::table.find(id))
        .set(callbacks::group_kind.eq(group))
        .execute(c)
}

/// A run cut off as a duplicate ends at once.
pub fn mark_duplicate(
    c: &mut DbConnection,
    id: &str,
    error: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(callbacks::table.find(id))
        .set((
            callbacks::status.eq(Status::Duplicate),
            callbacks::finished_at.eq(now),
            callbacks::error.eq(error),
        ))
        .execute(c)
}

/// Inserts a verified but unusable run straight as `failed`; `false` when its `event_token` is
/// already taken.
#[allow(clippy::too_many_arguments)]
pub fn insert_unusable(
    c: &mut DbConnection,
    id: &str,
    member_id: &str,
    deal: Option<&DealId>,
    event_token: &str,
    workflow_id: Option<&str>,
    reason: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    insert_if_absent(c, |c| {
        diesel::insert_into(callbacks::table)
            .values((
                callbacks::id.eq(id),
                callbacks::member_id.eq(member_id),
                callbacks::deal_id.eq(deal.map_or("", DealId::as_str)),
                callbacks::event_token.eq(event_token),
                callbacks::workflow_id.eq(workflow_id),
                callbacks::requested_group.eq("-"),
                callbacks::status.eq(Status::Failed),
                callbacks::error.eq(reason),
                callbacks::finished_at.eq(now),
                callbacks::created_at.eq(now),
                callbacks::updated_at.eq(now),
            ))
            .execute(c)
    })
}

/// The callback that an `event_token` already started on this portal. Event tokens are unique per
/// portal only: another portal's run with the same token is not this one.
pub fn run_of_event_token(
    c: &mut DbConnection,
    member_id: &str,
    event_token: Option<&str>,
) -> QueryResult<Option<String>> {
    let Some(token) = event_token else {
        return Ok(None);
    };
    callbacks::table
        .filter(callbacks::member_id.eq(member_id))
        .filter(callbacks::event_token.eq(token))
        .select(callbacks::id)
        .first(c)
        .optional()
}

pub fn find(conn: &mut DbConnection, id: &str) -> QueryResult<Option<Callback>> {
    callbacks::table
        .find(id)
        .select(Callback::as_select())
        .first(conn)
        .optional()
}

/// The portal's latest callbacks, newest first (the settings page's call log).
pub fn latest(conn: &mut DbConnection, member_id: &str, limit: i64) -> QueryResult<Vec<Callback>> {
    callbacks::table
        .filter(callbacks::member_id.eq(member_id))
        .order((callbacks::created_at.desc(), callbacks::id.desc()))
        .limit(limit)
        .select(Callback::as_select())
        .load(conn)
}

/// Keeps the client's number found for a queued callback that must wait before its command is
/// sent, so the wait's end does not look it up again.
pub fn remember_phone(
    conn: &mut DbConnection,
    id: &str,
    phone: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(
        callbacks::table
            .find(id)
            .filter(callbacks::status.eq(Status::Queued)),
    )
    .set((callbacks::phone.eq(phone), callbacks::updated_at.eq(now)))
    .execute(conn)
}

/// Moves a queued callback to `calling` with its command id, before the Mango request is sent.
pub fn mark_calling(
    conn: &mut DbConnection,
    id: &str,
    group_extension: &str,
    phone: &str,
    command_id: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let n = diesel::update(
        callbacks::table
            .find(id)
            .filter(callbacks::status.eq(Status::Queued)),
    )
    .set((
        callbacks::status.eq(Status::Calling),
        callbacks::group_extension.eq(group_extension),
        callbacks::phone.eq(phone),
        callbacks::command_id.eq(command_id),
        callbacks::attempts.eq(callbacks::attempts + 1),
        callbacks::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// A resend of a callback still `calling` whose command `previous` got no known answer and no
/// result: the new `command_id`, one more attempt, `updated_at` as the send's time. `false`
/// when a result came in meanwhile or another run already resent it.
pub fn mark_resent(
    conn: &mut DbConnection,
    id: &str,
    previous: &str,
    command_id: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let n = diesel::update(
        callbacks::table
            .find(id)
            .filter(callbacks::status.eq(Status::Calling))
            .filter(callbacks::command_id.eq(previous))
            .filter(callbacks::outcome.is_null()),
    )
    .set((
        callbacks::command_id.eq(command_id),
        callbacks::attempts.eq(callbacks::attempts + 1),
        callbacks::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Keeps why the answer to a command of a `calling` callback is unknown, without touching
/// `updated_at`: that stays the send's time, from which the wait for Mango's result counts.
pub fn note_unknown_answer(conn: &mut DbConnection, id: &str, error: &str) -> QueryResult<usize> {
    diesel::update(
        callbacks::table
            .find(id)
            .filter(callbacks::status.eq(Status::Calling)),
    )
    .set(callbacks::error.eq(error))
    .execute(conn)
}

/// Back from `calling` to `queued`: Mango surely did not accept the command (429, refused connection).
pub fn back_to_queued(
    conn: &mut DbConnection,
    id: &str,
    error: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(
        callbacks::table
            .find(id)
            .filter(callbacks::status.eq(Status::Calling)),
    )
    .set((
        callbacks::status.eq(Status::Queued),
        callbacks::error.eq(error),
        callbacks::updated_at.eq(now),
    ))
    .execute(conn)
}

pub fn count_contact_check(
    conn: &mut DbConnection,
    id: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(callbacks::table.find(id))
        .set((
            callbacks::contact_checks.eq(callbacks::contact_checks + 1),
            callbacks::updated_at.eq(now),
        ))
        .execute(conn)
}

/// The terminal transition of a queued or calling callback; `false` when it had already ended.
#[allow(clippy::too_many_arguments)]
pub fn set_finished(
    c: &mut DbConnection,
    cb: &Callback,
    new_status: Status,
    group_extension: Option<&str>,
    phone: Option<&str>,
    mango_code: Option<i32>,
    error: Option<&str>,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let n = diesel::update(
        callbacks::table
            .find(&cb.id)
            .filter(callbacks::status.eq_any([Status::Queued, Status::Calling])),
    )
    .set((
        callbacks::status.eq(new_status),
        callbacks::group_extension.eq(group_extension.or(cb.group_extension.as_deref())),
        callbacks::phone.eq(phone.or(cb.phone.as_deref())),
        callbacks::mango_code.eq(mango_code),
        callbacks::error.eq(error),
        callbacks::started_at.eq((new_status == Status::Started).then_some(now)),
        callbacks::finished_at.eq(now),
        callbacks::updated_at.eq(now),
    ))
    .execute(c)?;
    Ok(n != 0)
}

/// Starts the deal's duplicate window at `now` while `cb` is its active callback (the moment
/// the Mango command may go out).
pub fn open_duplicate_window(
    c: &mut DbConnection,
    cb: &Callback,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(
        deals::table
            .filter(deals::member_id.eq(&cb.member_id))
            .filter(deals::deal_id.eq(&cb.deal_id))
            .filter(deals::active_callback_id.eq(&cb.id)),
    )
    .set((deals::last_started_at.eq(now), deals::updated_at.eq(now)))
    .execute(c)
}

/// Frees the deal of its active callback `cb`; a started call also opens the duplicate window.
pub fn release_deal(
    c: &mut DbConnection,
    cb: &Callback,
    started: bool,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    let deal = deals::table
        .filter(deals::member_id.eq(&cb.member_id))
        .filter(deals::deal_id.eq(&cb.deal_id))
        .filter(deals::active_callback_id.eq(&cb.id));
    if started {
        diesel::update(deal)
            .set((
                deals::active_callback_id.eq(None::<String>),
                deals::last_started_at.eq(now),
                deals::updated_at.eq(now),
            ))
            .execute(c)
    } else {
        diesel::update(deal)
            .set((
                deals::active_callback_id.eq(None::<String>),
                deals::updated_at.eq(now),
            ))
            .execute(c)
    }
}

/// Mango's asynchronous `result/callback_group` for one of `member_ids`' callbacks. A failure
/// after the synchronous 1000 (billing, bad number) is kept as the outcome shown in the call log.
///
/// Recorded once: Mango sends one result per command, so a second notification for the same
/// `command_id` is a replay (a captured, validly signed body sent again) and changes nothing.
/// `outcome` is the marker, as only this function writes it; `mango_code` is already set by the
/// synchronous answer. `command_ids` are every id the callback may have sent (the first command
/// and its resends): the result of any of them is the callback's one result.
pub fn record_mango_result(
    conn: &mut DbConnection,
    member_ids: &[String],
    command_ids: &[String],
    code: i32,
    outcome: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(
        callbacks::table
            .filter(callbacks::command_id.eq_any(command_ids))
            .filter(callbacks::member_id.eq_any(member_ids))
            .filter(callbacks::outcome.is_null()),
    )
    .set((
        callbacks::mango_code.eq(code),
        callbacks::outcome.eq(outcome),
        callbacks::updated_at.eq(now),
    ))
    .execute(conn)
}

pub fn mark_event_sent(
    conn: &mut DbConnection,
    id: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(callbacks::table.find(id))
        .set(callbacks::event_sent_at.eq(now))
        .execute(conn)
}

pub fn mark_comment_added(
    conn: &mut DbConnection,
    id: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(callbacks::table.find(id))
        .set(callbacks::comment_added_at.eq(now))
        .execute(conn)
}

/// When the call's outcome was reported (comment and the waiting robot's event); set once.
pub fn mark_outcome_reported(
    conn: &mut DbConnection,
    id: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(
        callbacks::table
            .find(id)
            .filter(callbacks::outcome_reported_at.is_null()),
    )
    .set((
        callbacks::outcome_reported_at.eq(now),
        callbacks::updated_at.eq(now),
    ))
    .execute(conn)
}
