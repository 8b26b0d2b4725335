//! Callback storage: accepting a run in one transaction, status transitions, the call log.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::{status, Accepted, Callback, RobotRun};
use crate::db::schema::{callbacks, deals};
use crate::db::{insert_if_absent, write_tx, DbConnection, DbError};
use crate::jobs::queue;
use crate::jobs::Job;

/// Accepts a robot run: callback row, duplicate decision and its job, all in one transaction.
///
/// The cut-off is a compare-and-set on the deal's row: a run proceeds only if no callback of
/// the deal is active (queued or calling) and none started within the duplicate window. Two
/// simultaneous runs — even in two instances on one PostgreSQL — cannot both win the update.
pub fn accept(
    conn: &mut DbConnection,
    run: &RobotRun,
    now: NaiveDateTime,
) -> Result<Accepted, DbError> {
    write_tx(conn, |c| {
        if let Some(callback_id) =
            run_of_event_token(c, &run.member_id, run.event_token.as_deref())?
        {
            return Ok(Accepted::Redelivered { callback_id });
        }
        let id = uuid::Uuid::now_v7().to_string();
        let inserted = insert_if_absent(c, |c| {
            diesel::insert_into(callbacks::table)
                .values((
                    callbacks::id.eq(&id),
                    callbacks::member_id.eq(&run.member_id),
                    callbacks::deal_id.eq(&run.deal_id),
                    callbacks::event_token.eq(&run.event_token),
                    callbacks::workflow_id.eq(&run.workflow_id),
                    callbacks::requested_group.eq(run.requested.as_str()),
                    callbacks::phone_override.eq(&run.phone_override),
                    callbacks::status.eq(status::QUEUED),
                    callbacks::created_at.eq(now),
                    callbacks::updated_at.eq(now),
                ))
                .execute(c)
        })?;
        if !inserted {
            // Lost a race on the same event_token: the other delivery owns the run.
            let callback_id = run_of_event_token(c, &run.member_id, run.event_token.as_deref())?
                .ok_or(diesel::result::Error::NotFound)?;
            return Ok(Accepted::Redelivered { callback_id });
        }
        insert_if_absent(c, |c| {
            diesel::insert_into(deals::table)
                .values((
                    deals::member_id.eq(&run.member_id),
                    deals::deal_id.eq(&run.deal_id),
                    deals::runs.eq(0),
                    deals::updated_at.eq(now),
                ))
                .execute(c)
        })?;
        // Read inside the transaction: a just-saved setting applies to this very call.
        let window = crate::portal::store::settings_or_default(c, &run.member_id, now)?
            .duplicate_window_minutes;
        let window_start = now - chrono::Duration::minutes(i64::from(window.max(0)));
        let won = diesel::update(
            deals::table
                .filter(deals::member_id.eq(&run.member_id))
                .filter(deals::deal_id.eq(&run.deal_id))
                .filter(deals::active_callback_id.is_null())
                .filter(
                    deals::last_started_at
                        .is_null()
                        .or(deals::last_started_at.lt(window_start)),
                ),
        )
        .set((
            deals::active_callback_id.eq(&id),
            deals::runs.eq(deals::runs + 1),
            deals::updated_at.eq(now),
        ))
        .execute(c)?
            == 1;
        if won {
            let runs: i32 = deals::table
                .find((&run.member_id, &run.deal_id))
                .select(deals::runs)
                .first(c)?;
            let group = run.requested.resolve(runs);
            diesel::update(callbacks::table.find(&id))
                .set(callbacks::group_kind.eq(group))
                .execute(c)?;
            let job = super::jobs::PlaceCall {
                callback_id: id.clone(),
            }
            .to_new_job(Some(&run.member_id), Some(format!("place_call:{id}")), now);
            queue::enqueue(c, &job, now)?;
            Ok(Accepted::Queued {
                callback_id: id,
                group,
            })
        } else {
            diesel::update(callbacks::table.find(&id))
                .set((
                    callbacks::status.eq(status::DUPLICATE),
                    callbacks::finished_at.eq(now),
                    callbacks::error
                        .eq("another callback for this deal is active or started recently"),
                ))
                .execute(c)?;
            let job = super::jobs::ReportCallback {
                callback_id: id.clone(),
            }
            .to_new_job(Some(&run.member_id), Some(format!("report:{id}")), now);
            queue::enqueue(c, &job, now)?;
            Ok(Accepted::Duplicate { callback_id: id })
        }
    })
}

/// The callback that an `event_token` already started on this portal. Event tokens are unique per
/// portal only: another portal's run with the same token is not this one.
fn run_of_event_token(
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

/// A verified robot call that cannot be acted on, recorded straight as `failed` with its reason
/// and its report job in one transaction. No deal row is touched and nothing calls Mango; the
/// report answers the business process (and comments on the deal when there is one).
///
/// `deal_id` is empty when the call names no deal. The same `event_token` again is
/// [`Accepted::Redelivered`], as for usable calls.
pub fn record_unusable(
    conn: &mut DbConnection,
    member_id: &str,
    deal_id: &str,
    event_token: &str,
    workflow_id: Option<&str>,
    reason: &str,
    now: NaiveDateTime,
) -> Result<Accepted, DbError> {
    write_tx(conn, |c| {
        if let Some(callback_id) = run_of_event_token(c, member_id, Some(event_token))? {
            return Ok(Accepted::Redelivered { callback_id });
        }
        let id = uuid::Uuid::now_v7().to_string();
        let inserted = insert_if_absent(c, |c| {
            diesel::insert_into(callbacks::table)
                .values((
                    callbacks::id.eq(&id),
                    callbacks::member_id.eq(member_id),
                    callbacks::deal_id.eq(deal_id),
                    callbacks::event_token.eq(event_token),
                    callbacks::workflow_id.eq(workflow_id),
                    callbacks::requested_group.eq("-"),
                    callbacks::status.eq(status::FAILED),
                    callbacks::error.eq(reason),
                    callbacks::finished_at.eq(now),
                    callbacks::created_at.eq(now),
                    callbacks::updated_at.eq(now),
                ))
                .execute(c)
        })?;
        if !inserted {
            let callback_id = run_of_event_token(c, member_id, Some(event_token))?
                .ok_or(diesel::result::Error::NotFound)?;
            return Ok(Accepted::Redelivered { callback_id });
        }
        let job = super::jobs::ReportCallback {
            callback_id: id.clone(),
        }
        .to_new_job(Some(member_id), Some(format!("report:{id}")), now);
        queue::enqueue(c, &job, now)?;
        Ok(Accepted::Unusable { callback_id: id })
    })
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
            .filter(callbacks::status.eq(status::QUEUED)),
    )
    .set((
        callbacks::status.eq(status::CALLING),
        callbacks::group_extension.eq(group_extension),
        callbacks::phone.eq(phone),
        callbacks::command_id.eq(command_id),
        callbacks::attempts.eq(callbacks::attempts + 1),
        callbacks::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(n == 1)
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
            .filter(callbacks::status.eq(status::CALLING)),
    )
    .set((
        callbacks::status.eq(status::QUEUED),
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

/// Terminal transition plus its report job, in one transaction; releases the deal.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    conn: &mut DbConnection,
    cb: &Callback,
    new_status: &str,
    group_extension: Option<&str>,
    phone: Option<&str>,
    mango_code: Option<i32>,
    error: Option<&str>,
    now: NaiveDateTime,
) -> Result<bool, DbError> {
    write_tx(conn, |c| {
        let n = diesel::update(
            callbacks::table
                .find(&cb.id)
                .filter(callbacks::status.eq_any([status::QUEUED, status::CALLING])),
        )
        .set((
            callbacks::status.eq(new_status),
            callbacks::group_extension.eq(group_extension.or(cb.group_extension.as_deref())),
            callbacks::phone.eq(phone.or(cb.phone.as_deref())),
            callbacks::mango_code.eq(mango_code),
            callbacks::error.eq(error),
            callbacks::started_at.eq((new_status == status::STARTED).then_some(now)),
            callbacks::finished_at.eq(now),
            callbacks::updated_at.eq(now),
        ))
        .execute(c)?;
        if n == 0 {
            return Ok(false);
        }
        let deal = deals::table
            .filter(deals::member_id.eq(&cb.member_id))
            .filter(deals::deal_id.eq(&cb.deal_id))
            .filter(deals::active_callback_id.eq(&cb.id));
        if new_status == status::STARTED {
            diesel::update(deal)
                .set((
                    deals::active_callback_id.eq(None::<String>),
                    deals::last_started_at.eq(now),
                    deals::updated_at.eq(now),
                ))
                .execute(c)?;
        } else {
            diesel::update(deal)
                .set((
                    deals::active_callback_id.eq(None::<String>),
                    deals::updated_at.eq(now),
                ))
                .execute(c)?;
        }
        let job = super::jobs::ReportCallback {
            callback_id: cb.id.clone(),
        }
        .to_new_job(Some(&cb.member_id), Some(format!("report:{}", cb.id)), now);
        queue::enqueue(c, &job, now)?;
        Ok(true)
    })
}

/// Mango's asynchronous `result/callback_group` for one of `member_ids`' callbacks. A failure
/// after the synchronous 1000 (billing, bad number) is kept as the outcome shown in the call log.
///
/// Recorded once: Mango sends one result per command, so a second notification for the same
/// `command_id` is a replay (a captured, validly signed body sent again) and changes nothing.
/// `outcome` is the marker, as only this function writes it; `mango_code` is already set by the
/// synchronous answer.
pub fn record_mango_result(
    conn: &mut DbConnection,
    member_ids: &[String],
    command_id: &str,
    code: i32,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    let outcome = if code == 1000 {
        "mango accepted the command".to_owned()
    } else {
        format!(
            "mango result {code}: {}",
            crate::mango::describe_code(u32::try_from(code).unwrap_or(0)).1
        )
    };
    diesel::update(
        callbacks::table
            .filter(callbacks::command_id.eq(command_id))
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

/// Mango rate: at most `limit` callback commands per account within any `window_us`, counted in
/// the shared database so that every portal and app instance using one key shares the budget.
///
/// A sliding window (Mango's own limit behaves like one), not fixed seconds, which would allow
/// twice the rate across a second boundary. The row at slot -1 is a lock: updating it first
/// serialises concurrent takers on PostgreSQL as well as on SQLite. Each taken slot is a row keyed
/// by its time in microseconds.
pub fn take_rate_slot(
    conn: &mut DbConnection,
    bucket: &str,
    now_us: i64,
    limit: i64,
    window_us: i64,
) -> Result<bool, DbError> {
    use crate::db::schema::rate_slots;
    write_tx(conn, |c| {
        insert_if_absent(c, |c| {
            diesel::insert_into(rate_slots::table)
                .values((
                    rate_slots::bucket.eq(bucket),
                    rate_slots::slot.eq(-1i64),
                    rate_slots::used.eq(0),
                ))
                .execute(c)
        })?;
        diesel::update(rate_slots::table.find((bucket, -1i64)))
            .set(rate_slots::used.eq(rate_slots::used + 1))
            .execute(c)?;
        diesel::delete(
            rate_slots::table
                .filter(rate_slots::bucket.eq(bucket))
                .filter(rate_slots::slot.ge(0i64))
                .filter(rate_slots::slot.le(now_us - window_us)),
        )
        .execute(c)?;
        let recent: i64 = rate_slots::table
            .filter(rate_slots::bucket.eq(bucket))
            .filter(rate_slots::slot.ge(0i64))
            .count()
            .get_result(c)?;
        if recent >= limit {
            return Ok(false);
        }
        let taken = insert_if_absent(c, |c| {
            diesel::insert_into(rate_slots::table)
                .values((
                    rate_slots::bucket.eq(bucket),
                    rate_slots::slot.eq(now_us),
                    rate_slots::used.eq(1),
                ))
                .execute(c)
        })?;
        Ok(taken)
    })
}
