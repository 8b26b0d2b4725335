//! A callback's life in transactions: accepting a robot run and finishing a callback each write
//! their rows and queue their job in one transaction, so no run is accepted without its job and
//! no callback ends without its report.

use chrono::NaiveDateTime;

use super::{
    schedule, store, Accepted, AnnounceSchedule, Callback, DealId, PlaceCall, Reason,
    ReportCallback, RobotRun, Status, Unusable,
};
use crate::db::{write_tx, DbConnection, DbError};
use crate::jobs::queue;
use crate::jobs::Job;
use crate::portal::Lang;

/// Accepts a robot run: callback row, duplicate decision and its job, all in one transaction.
///
/// The cut-off is a compare-and-set on the deal's row: a run proceeds only if no callback of
/// the deal is active (queued or calling) and none started within the duplicate window. Two
/// simultaneous runs — even in two instances on one PostgreSQL — cannot both win the update.
///
/// Runs in the caller's write transaction, whose rollback undoes it all: the robot call's
/// savepoint in a shared commit ([`crate::db::Db::run_grouped`]). A transaction of its own
/// inside that one was two more round trips to PostgreSQL for every robot call.
pub fn accept(
    c: &mut DbConnection,
    run: &RobotRun,
    now: NaiveDateTime,
) -> Result<Accepted, DbError> {
    let id = uuid::Uuid::now_v7().to_string();
    // Inserted first, read only when its event_token is taken: the same call delivered again,
    // or a race with another delivery of it; the first owns the run. (Reading first cost
    // every robot call a round trip to PostgreSQL.)
    if !store::insert_queued(c, &id, run, now)? {
        let callback_id = store::run_of_event_token(c, &run.member_id, run.event_token.as_deref())?
            .ok_or(diesel::result::Error::NotFound)?;
        return Ok(Accepted::Redelivered { callback_id });
    }
    store::ensure_deal(c, run, now)?;
    // Read inside the transaction: a just-saved setting applies to this very call.
    let settings = crate::portal::store::settings_or_default(c, &run.member_id, now)?;
    let window = settings.duplicate_window_minutes;
    let window_start = now - chrono::Duration::minutes(i64::from(window.max(0)));
    // A scheduled run claims the deal like any other: it is the deal's active run until
    // its call ends, so the duplicate cut-off and the run count hold while it waits.
    if let Some(runs) = store::claim_deal(c, run, &id, window_start, now)? {
        let group = run.requested.resolve(runs);
        store::set_group(c, &id, group)?;
        let opening = schedule::opening_for(&settings, now);
        let mut job = PlaceCall {
            callback_id: id.clone(),
        }
        .to_new_job(Some(&run.member_id), Some(format!("place_call:{id}")), now);
        job.run_at = opening.unwrap_or(now);
        queue::enqueue(c, &job, now)?;
        let Some(at) = opening else {
            return Ok(Accepted::Queued {
                callback_id: id,
                group,
            });
        };
        schedule::set_scheduled_for(c, &id, at)?;
        let announce = AnnounceSchedule {
            callback_id: id.clone(),
        }
        .to_new_job(Some(&run.member_id), Some(format!("announce:{id}")), now);
        queue::enqueue(c, &announce, now)?;
        Ok(Accepted::Scheduled {
            callback_id: id,
            group,
            at,
        })
    } else {
        let reason = Reason::Duplicate;
        store::mark_duplicate(c, &id, &reason.stored_error(Lang::En), now)?;
        let job = ReportCallback {
            callback_id: id.clone(),
            reason: Some(reason),
        }
        .to_new_job(Some(&run.member_id), Some(format!("report:{id}")), now);
        queue::enqueue(c, &job, now)?;
        Ok(Accepted::Duplicate { callback_id: id })
    }
}

/// A verified robot call that cannot be acted on, recorded straight as `failed` with its reason
/// (in the portal's language `lang`) and its report job in one transaction. No deal row is touched and nothing calls Mango; the
/// report answers the business process (and comments on the deal when there is one).
///
/// `deal` is `None` when the call names no deal (stored as an empty deal id). The same `event_token` again is
/// [`Accepted::Redelivered`], as for usable calls.
#[allow(clippy::too_many_arguments)]
pub fn record_unusable(
    conn: &mut DbConnection,
    member_id: &str,
    deal: Option<&DealId>,
    event_token: &str,
    workflow_id: Option<&str>,
    why: &Unusable,
    lang: Lang,
    now: NaiveDateTime,
) -> Result<Accepted, DbError> {
    let reason = Reason::Unusable { why: why.clipped() };
    let error = reason.stored_error(lang);
    write_tx(conn, |c| {
        if let Some(callback_id) = store::run_of_event_token(c, member_id, Some(event_token))? {
            return Ok(Accepted::Redelivered { callback_id });
        }
        let id = uuid::Uuid::now_v7().to_string();
        let inserted = store::insert_unusable(
            c,
            &id,
            member_id,
            deal,
            event_token,
            workflow_id,
            &error,
            now,
        )?;
        if !inserted {
            let callback_id = store::run_of_event_token(c, member_id, Some(event_token))?
                .ok_or(diesel::result::Error::NotFound)?;
            return Ok(Accepted::Redelivered { callback_id });
        }
        let job = ReportCallback {
            callback_id: id.clone(),
            reason: Some(reason.clone()),
        }
        .to_new_job(Some(member_id), Some(format!("report:{id}")), now);
        queue::enqueue(c, &job, now)?;
        Ok(Accepted::Unusable { callback_id: id })
    })
}

/// Terminal transition plus its report job, in one transaction; releases the deal. Without a
/// reason the call started; with one, the callback ends in the reason's status, its English
/// text kept as `error` and the reason itself handed to the report.
pub fn finish(
    conn: &mut DbConnection,
    cb: &Callback,
    group_extension: Option<&str>,
    phone: Option<&str>,
    mango_code: Option<i32>,
    reason: Option<Reason>,
    now: NaiveDateTime,
) -> Result<bool, DbError> {
    let new_status = reason.as_ref().map_or(Status::Started, Reason::status);
    let error = reason.as_ref().map(|r| r.stored_error(Lang::En));
    write_tx(conn, |c| {
        if !store::set_finished(
            c,
            cb,
            new_status,
            group_extension,
            phone,
            mango_code,
            error.as_deref(),
            now,
        )? {
            return Ok(false);
        }
        store::release_deal(c, cb, new_status == Status::Started, now)?;
        if new_status == Status::Started {
            // Events may have ended the call while Mango's answer was unknown.
            super::outcome::settle(c, &cb.id, now)?;
        } else {
            super::outcome::fail_unstarted(c, &cb.id, now)?;
        }
        let job = ReportCallback {
            callback_id: cb.id.clone(),
            reason: reason.clone(),
        }
        .to_new_job(Some(&cb.member_id), Some(format!("report:{}", cb.id)), now);
        if !queue::enqueue(c, &job, now)? && new_status != Status::Started {
            // A retry that could not be placed: the callback's own report went out with its
            // first attempt, so the outcome's report tells the deal (and a waiting robot).
            let job = super::outcome::ReportOutcome {
                callback_id: cb.id.clone(),
            }
            .to_new_job(
                Some(&cb.member_id),
                Some(format!("report_outcome:{}", cb.id)),
                now,
            );
            queue::enqueue(c, &job, now)?;
        }
        Ok(true)
    })
}

/// Who is about to send: the job run and its worker, whose lease fences the send.
pub struct SendAt<'a> {
    pub job_id: &'a str,
    pub worker: &'a str,
    pub clock: &'a crate::clock::Clock,
}

/// `queued → calling`, the last step before the Mango command is sent, in one transaction that
/// also writes the callback's first attempt (with the job bounding the wait for its outcome) and checks this worker still holds the job's lease (on the database's clock) and starts the
/// deal's duplicate window. `false`: no send — the lease was lost (another worker owns the job
/// and decides) or the callback is no longer queued.
///
/// The window starts here, not when Mango answers: from this commit on the client may be rung,
/// so a new robot run for the deal must be a duplicate even if this process dies mid-request.
pub fn start_calling(
    conn: &mut DbConnection,
    cb: &Callback,
    at: &SendAt<'_>,
    (group_extension, phone, command_id): (&str, &str, &str),
) -> Result<bool, DbError> {
    write_tx(conn, |c| {
        let now = at.clock.shift(crate::db::database_now(c)?);
        if !queue::holds_lease(c, at.job_id, at.worker, now)? {
            return Ok(false);
        }
        if !store::mark_calling(c, &cb.id, group_extension, phone, command_id, now)? {
            return Ok(false);
        }
        store::open_duplicate_window(c, cb, now)?;
        super::outcome::open_first_attempt(c, cb, group_extension, command_id, now)?;
        Ok(true)
    })
}

/// `calling → calling` with the next `command_id`, the fenced step before a resend: as
/// [`start_calling`], only while this worker holds the job's lease, and only if the callback is
/// still on `previous` with no result recorded. The deal's duplicate window is left as the first
/// send opened it. `false`: no send.
pub fn resend_calling(
    conn: &mut DbConnection,
    cb: &Callback,
    at: &SendAt<'_>,
    (previous, command_id): (&str, &str),
) -> Result<bool, DbError> {
    write_tx(conn, |c| {
        let now = at.clock.shift(crate::db::database_now(c)?);
        if !queue::holds_lease(c, at.job_id, at.worker, now)? {
            return Ok(false);
        }
        Ok(store::mark_resent(c, &cb.id, previous, command_id, now)?)
    })
}
