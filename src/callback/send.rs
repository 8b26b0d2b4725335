//! One Mango command sent for a callback and its answer acted on, and the callback's endings:
//! shared by the first send ([`super::place_call`]) and the resends ([`super::resend`]).

use secrecy::ExposeSecret;
use std::time::Duration;

use chrono::NaiveDateTime;

use super::{lifecycle, store, Callback, Reason, Status};
use crate::context::Context;
use crate::jobs::{Ending, JobError, Lease};
use crate::mango::{CallbackGroup, Credentials, MangoError};
use crate::portal::{store as portal_store, PortalSettings};

/// Mango attempts for one callback when it is surely not accepted (429, refused connection).
const MAX_CALL_ATTEMPTS: i32 = 5;
/// How often the result is looked for meanwhile (a job retry, not a sleep in a worker slot).
pub(super) const RESULT_RECHECK: Duration = Duration::from_secs(10);

/// The job's wait right after a send whose answer is unknown: its next run reads the callback
/// as stored (the send's time, the command id) and applies [`super::resend::next_step`].
pub fn wait_for_result(now: NaiveDateTime) -> JobError {
    let at = now + chrono::Duration::from_std(RESULT_RECHECK).unwrap_or_default();
    JobError::RetryAt(
        at,
        "Mango's answer is unknown: waiting for its result".into(),
    )
}

/// Ends a callback that never reached Mango (no phone, not configured, given up) with its reason.
pub(super) async fn end_without_call(
    ctx: &Context,
    cb: &Callback,
    reason: Reason,
) -> Result<(), JobError> {
    finish(ctx, cb, None, None, None, Some(reason), None).await
}

/// Ends the callback with its report queued: `started` without a reason, else the reason's
/// status. `mango` is Mango's answer to record on the settings page (`Some(None)`: accepted), in
/// the same transaction: one durable commit, not two, for every command Mango answered.
pub(super) async fn finish(
    ctx: &Context,
    cb: &Callback,
    ext: Option<String>,
    phone: Option<String>,
    code: Option<i32>,
    reason: Option<Reason>,
    mango: Option<Option<String>>,
) -> Result<(), JobError> {
    let ended = Ended {
        ext,
        phone,
        code,
        reason,
        mango,
    };
    finish_with(ctx, cb, ended, None).await
}

/// How a callback ended, as [`finish`] stores it.
struct Ended {
    ext: Option<String>,
    phone: Option<String>,
    code: Option<i32>,
    reason: Option<Reason>,
    mango: Option<Option<String>>,
}

/// [`finish`]; with the run's `lease`, the job is marked done in the same transaction too, and
/// the run's ending is [`JobError::Recorded`]: the caller must return it as it is.
async fn finish_with(
    ctx: &Context,
    cb: &Callback,
    ended: Ended,
    lease: Option<Lease>,
) -> Result<(), JobError> {
    let Ended {
        ext,
        phone,
        code,
        reason,
        mango,
    } = ended;
    let st = reason.as_ref().map_or(Status::Started, Reason::status);
    let now = ctx.shared.clock.now();
    let cb2 = cb.clone();
    let (changed, recorded) = ctx
        .shared
        .db
        .run(move |c| {
            crate::db::write_tx(c, |c| {
                if let Some(error) = &mango {
                    portal_store::record_mango_status(c, &cb2.member_id, error.as_deref(), now)?;
                }
                let changed = lifecycle::finish(
                    c,
                    &cb2,
                    ext.as_deref(),
                    phone.as_deref(),
                    code,
                    reason,
                    now,
                )?;
                let recorded = match &lease {
                    Some(lease) => lease.complete(c, now)?,
                    None => false,
                };
                Ok::<_, crate::db::DbError>((changed, recorded))
            })
        })
        .await?;
    if changed {
        tracing::info!(callback = %cb.id, deal = %cb.deal_id, status = %st, "callback finished");
        ctx.shared.notify.notify_one();
    }
    if recorded {
        return Err(JobError::Recorded(Ending::Done));
    }
    Ok(())
}

/// The portal's Mango credentials, `None` when not set (or the salt cannot be opened).
pub(super) fn credentials(ctx: &Context, settings: &PortalSettings) -> Option<Credentials> {
    let key = settings.mango_api_key.as_ref().filter(|k| !k.is_empty())?;
    let sealed = settings.mango_api_salt.as_deref()?;
    let slot = crate::crypto::Slot::mango_api_salt(&settings.member_id);
    let salt = ctx.shared.cipher.open(slot, sealed).ok()?;
    (!salt.is_empty()).then(|| Credentials::new(key.clone(), salt))
}

/// Sends `cmd` for `cb` (already moved to `calling` by this run, which holds `lease`) and acts
/// on Mango's answer: accepted → `started`, the job done in the same transaction (the caller
/// returns what this returns); refused for sure → `queued` again, retried; refused → its reason; an
/// unknown outcome → stays `calling` and waits for Mango's result (see `resend`).
pub(super) async fn send_command(
    ctx: &Context,
    cb: &Callback,
    creds: &Credentials,
    cmd: CallbackGroup,
    lease: Lease,
) -> Result<(), JobError> {
    let db = &ctx.shared.db;
    let (ext, ph) = (Some(cmd.from.clone()), Some(cmd.to.clone()));
    // The slot was taken in the database; this spaces the actual sends (see `SendPace`).
    ctx.shared
        .mango_pace
        .wait_turn(&ctx.shared.clock, creds.api_key.expose_secret())
        .await;
    let answer = ctx.mango.callback_group(creds, &cmd).await;
    count_answer(ctx, &answer);
    match answer {
        Ok(_) => {
            let ended = Ended {
                ext,
                phone: ph,
                code: Some(1000),
                reason: None,
                mango: Some(None),
            };
            finish_with(ctx, cb, ended, Some(lease)).await
        }
        Err(e) if e.retryable() && cb.attempts + 1 < MAX_CALL_ATTEMPTS => {
            let (cid, msg, now) = (cb.id.clone(), e.to_string(), ctx.shared.clock.now());
            db.run(move |c| store::back_to_queued(c, &cid, &msg, now))
                .await?;
            Err(JobError::Transient(anyhow::anyhow!(
                "Mango did not accept the command, will retry: {e}"
            )))
        }
        Err(MangoError::Unavailable {
            maybe_accepted: true,
            detail,
        }) => {
            tracing::warn!(callback.id = %cb.id, %detail, "Mango's answer is unknown: waiting for its result");
            let (cid, d) = (cb.id.clone(), detail.clone());
            db.run(move |c| store::note_unknown_answer(c, &cid, &d))
                .await?;
            // The next run of this job applies the rule (`resend::next_step`), after the wait.
            Err(wait_for_result(ctx.shared.clock.now()))
        }
        Err(e) => {
            let code = e.code().and_then(|c| i32::try_from(c).ok());
            let reason = match e {
                MangoError::Rejected { code, .. } => Reason::MangoRefused { code },
                // 429 on every attempt: Mango's code for it says what happened.
                MangoError::RateLimited => Reason::MangoRefused { code: 4290 },
                other => Reason::MangoFailed {
                    detail: other.to_string(),
                },
            };
            let stored = reason.stored_error(crate::portal::Lang::En);
            finish(ctx, cb, ext, ph, code, Some(reason), Some(Some(stored))).await
        }
    }
}

/// Counts a command's answer for `/metrics`: Mango's result code, or why there is none.
fn count_answer<T>(ctx: &Context, answer: &Result<T, MangoError>) {
    let m = &ctx.shared.metrics;
    match answer {
        Ok(_) => m.mango_command(Some(1000), "accepted"),
        Err(e) => m.mango_command(
            e.code(),
            match e {
                MangoError::Locked => "locked",
                MangoError::Unavailable { .. } => "unavailable",
                _ => "protocol",
            },
        ),
    }
}
