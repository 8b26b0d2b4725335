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
    insert_if_absent!(
        c,
        diesel::insert_into(callbacks::table).values((
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
    )
}

/// The deal's row, created on its first run.
pub fn ensure_deal(c: &mut DbConnection, run: &RobotRun, now: NaiveDateTime) -> QueryResult<bool> {
    insert_if_absent!(
        c,
        diesel::insert_into(deals::table).values((
            deals::member_id.eq(&run.member_id),
            deals::deal_id.eq(run.deal_id.as_str()),
            deals::runs.eq(0),
            deals::updated_at.eq(now),
        ))
    )
}

/// The duplicate cut-off's compare-and-set: the deal becomes the callback's only if no callback
/// of the deal is active and none started since `window_start`; counts the run and returns the
/// count (`None`: cut off).
pub fn claim_deal(
    c: &mut DbConnection,
    run: &RobotRun,
    id: &str,
    window_start: NaiveDateTime,
    now: NaiveDateTime,
) -> QueryResult<Option<i32>> {
    let claim = || {
        diesel::update(
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
        .returning(deals::runs)
    };
    // The run count comes back with the claim (`RETURNING`, on the backend's own connection:
    // the multi-backend has none), not in a read of its own: one round trip less for every
    // robot call on PostgreSQL.
    match c {
        DbConnection::Postgres(pg) => claim().get_result(pg).optional(),
        DbConnection::Sqlite(lite) => claim().get_result(lite).optional(),
    }
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

/// Records which group (trainee or experienced) the callback rings.
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
    insert_if_absent!(
        c,
        diesel::insert_into(callbacks::table).values((
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
    )
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

/// Where a queued callback's phone lookup stands (see the `phone_lookup_leases` migration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupState {
    /// A phone is known (an adoption stored it, or an earlier run of its own job).
    Known(String),
    /// A live lease: run `by` is looking the phone up right now, until `until`.
    Adopted { by: String, until: NaiveDateTime },
    /// An adoption looked and found no phone: the callback's own job looks it up alone.
    Tried,
    /// Nobody has looked yet (or an adopter's lease expired): free to take.
    Free,
}

/// The lookup state of callback `id` at `now`.
pub fn lookup_state(
    c: &mut DbConnection,
    id: &str,
    now: NaiveDateTime,
) -> QueryResult<LookupState> {
    let row: Option<(Option<String>, Option<String>, Option<NaiveDateTime>)> = callbacks::table
        .find(id)
        .select((
            callbacks::phone,
            callbacks::phone_lookup_by,
            callbacks::phone_lookup_until,
        ))
        .first(c)
        .optional()?;
    Ok(match row {
        Some((Some(phone), _, _)) => LookupState::Known(phone),
        Some((None, Some(by), Some(until))) if until > now => LookupState::Adopted { by, until },
        Some((None, None, Some(_))) => LookupState::Tried,
        _ => LookupState::Free,
    })
}

/// Adoptable by another callback's job: queued, no phone yet, none given by the robot, never found without a contact (a callback that
/// waits for its contact to be linked looks alone, as it always did), not scheduled for later,
/// and neither leased by a live adopter nor tried by an earlier adoption.
fn adoptable(
    now: NaiveDateTime,
) -> Box<
    dyn diesel::BoxableExpression<
        callbacks::table,
        crate::db::MultiBackend,
        SqlType = diesel::sql_types::Nullable<diesel::sql_types::Bool>,
    >,
> {
    Box::new(
        callbacks::status
            .eq(Status::Queued)
            .and(callbacks::phone.is_null())
            .and(
                callbacks::phone_override
                    .is_null()
                    .or(callbacks::phone_override.eq("")),
            )
            .and(callbacks::contact_checks.eq(0))
            .and(
                callbacks::scheduled_for
                    .is_null()
                    .or(callbacks::scheduled_for.le(now)),
            )
            .and(lookup_free(now)),
    )
}

type LeaseExpired = diesel::dsl::And<
    diesel::dsl::IsNotNull<callbacks::phone_lookup_by>,
    diesel::dsl::Lt<callbacks::phone_lookup_until, NaiveDateTime>,
>;
type LookupFree = diesel::dsl::Or<diesel::dsl::IsNull<callbacks::phone_lookup_until>, LeaseExpired>;

/// Neither leased by a live adopter nor tried by an earlier adoption (an expired lease is free).
fn lookup_free(now: NaiveDateTime) -> LookupFree {
    callbacks::phone_lookup_until
        .is_null()
        .or(callbacks::phone_lookup_by
            .is_not_null()
            .and(callbacks::phone_lookup_until.lt(now)))
}

/// Takes the lookup lease of callback `own` for run `holder` until `until`, and with it that of
/// up to `others` more adoptable callbacks of the portal, oldest first; returns the callbacks
/// taken as `(id, deal_id)`, `own` first, or nothing when `own` itself is not free.
///
/// Each update is a compare-and-set on the adoptable condition, so no callback is ever adopted
/// by two runs. Adoptions of one portal run one after another (on PostgreSQL too, see
/// [`crate::db::serialise_on`]): otherwise jobs of a burst starting together would each take
/// their own callback before any could take the others, and the batching would be lost.
#[allow(clippy::too_many_arguments)]
pub fn take_lookup_leases(
    c: &mut DbConnection,
    member_id: &str,
    own: &str,
    holder: &str,
    now: NaiveDateTime,
    until: NaiveDateTime,
    others: i64,
) -> QueryResult<Vec<(String, String)>> {
    crate::db::write_tx(c, |c| {
        crate::db::serialise_on(c, &format!("phone_lookup:{member_id}"))?;
        let lease = (
            callbacks::phone_lookup_by.eq(holder),
            callbacks::phone_lookup_until.eq(until),
        );
        // The job's own callback only needs to be queued, without a phone and free: the job
        // has already decided it must look (a blank override, say, counts as none).
        let mine = diesel::update(
            callbacks::table
                .find(own)
                .filter(callbacks::member_id.eq(member_id))
                .filter(callbacks::status.eq(Status::Queued))
                .filter(callbacks::phone.is_null())
                .filter(lookup_free(now)),
        )
        .set(lease)
        .execute(c)?;
        if mine == 0 {
            return Ok(Vec::new());
        }
        let candidates: Vec<String> = callbacks::table
            .filter(callbacks::member_id.eq(member_id))
            .filter(callbacks::id.ne(own))
            .filter(adoptable(now))
            .order((callbacks::created_at.asc(), callbacks::id.asc()))
            .limit(others)
            .select(callbacks::id)
            .load(c)?;
        if !candidates.is_empty() {
            diesel::update(
                callbacks::table
                    .filter(callbacks::id.eq_any(&candidates))
                    .filter(adoptable(now)),
            )
            .set(lease)
            .execute(c)?;
        }
        let mut taken: Vec<(String, String)> = callbacks::table
            .filter(callbacks::member_id.eq(member_id))
            .filter(callbacks::phone_lookup_by.eq(holder))
            .order((callbacks::created_at.asc(), callbacks::id.asc()))
            .select((callbacks::id, callbacks::deal_id))
            .load(c)?;
        taken.sort_by_key(|(id, _)| id != own);
        Ok(taken)
    })
}

/// Stores the phone that `holder`'s adoption found for callback `id` (still queued and under its
/// lease) and ends the lease; `false` when the lease was lost meanwhile.
pub fn store_adopted_phone(
    c: &mut DbConnection,
    id: &str,
    holder: &str,
    phone: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let n = diesel::update(
        callbacks::table
            .find(id)
            .filter(callbacks::phone_lookup_by.eq(holder))
            .filter(callbacks::status.eq(Status::Queued))
            .filter(callbacks::phone.is_null()),
    )
    .set((
        callbacks::phone.eq(phone),
        callbacks::phone_lookup_by.eq(None::<String>),
        callbacks::phone_lookup_until.eq(now),
        callbacks::updated_at.eq(now),
    ))
    .execute(c)?;
    Ok(n == 1)
}

/// Ends every lease `holder` still has. `answered`: the adoption's requests were answered, so
/// those callbacks become [`LookupState::Tried`] and their own jobs look them up alone; otherwise
/// (an error, a budget wait) nothing was learnt and they are free for the next adoption.
pub fn end_lookup_leases(
    c: &mut DbConnection,
    holder: &str,
    answered: bool,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(callbacks::table.filter(callbacks::phone_lookup_by.eq(holder)))
        .set((
            callbacks::phone_lookup_by.eq(None::<String>),
            callbacks::phone_lookup_until.eq(answered.then_some(now)),
        ))
        .execute(c)
}
