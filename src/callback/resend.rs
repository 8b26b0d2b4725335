//! A callback in `calling` whose Mango command has an unknown outcome (timeout, dropped answer,
//! 5xx, or a run that died after the send): wait for Mango's recorded result, else send again
//! under a new `command_id`, a bounded number of times.

use std::time::Duration;

use chrono::NaiveDateTime;

use super::send::{credentials, end_without_call, finish, send_command, RESULT_RECHECK};
use super::{lifecycle, Callback, Reason, MAX_RESENDS};
use crate::context::Context;
use crate::jobs::queue::JobRow;
use crate::jobs::JobError;
use crate::mango::CallbackGroup;
use crate::portal::{store as portal_store, PortalSettings};

/// How long after a send with an unknown outcome Mango's `result/callback_group` is waited for.
/// Mango posts it for every command it accepted, within seconds; none by then means Mango did
/// not accept the command.
pub const RESULT_WAIT: Duration = Duration::from_secs(30);
/// What to do next with a callback whose command has an unknown outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Mango's result was recorded (its code): end the callback by it, send nothing.
    Settle(Option<i32>),
    /// No result yet: look again at this time.
    WaitUntil(NaiveDateTime),
    /// No result within [`RESULT_WAIT`]: Mango did not accept the command; send resend `n`.
    Resend(u32),
    /// No result after [`MAX_RESENDS`] resends either: the callback fails.
    GiveUp,
}

/// The rule, in one place. `result`: Mango's recorded result for any send of the callback
/// (`Some(code)`, the code possibly unknown); `sent_at`: the last send; `resends`: how many
/// resends went out already.
///
/// Mango does not deduplicate `command_id`, so a command is sent again only once it is known not
/// to have been accepted: Mango posts `result/callback_group` for every command it accepted, and
/// none came within [`RESULT_WAIT`]. The residual risk: a result posted while our app could not
/// receive it (down, or its answer lost) looks the same as no result, and the resend rings the
/// client a second time.
pub fn next_step(
    result: Option<Option<i32>>,
    sent_at: NaiveDateTime,
    resends: u32,
    now: NaiveDateTime,
) -> Next {
    if let Some(code) = result {
        return Next::Settle(code);
    }
    let deadline = sent_at + chrono::Duration::from_std(RESULT_WAIT).unwrap_or_default();
    if now < deadline {
        let next = now + chrono::Duration::from_std(RESULT_RECHECK).unwrap_or_default();
        return Next::WaitUntil(next.min(deadline));
    }
    if resends < MAX_RESENDS {
        Next::Resend(resends + 1)
    } else {
        Next::GiveUp
    }
}

/// Applies [`next_step`] to `cb`, which is `calling` (or back in `queued` with a late result).
pub async fn after_unknown_send(
    ctx: &Context,
    job: &JobRow,
    cb: &Callback,
) -> Result<(), JobError> {
    let sent = cb.command_id.as_deref().unwrap_or_default();
    let (_, resends) = super::resend_of(sent);
    let result = cb.outcome.as_ref().map(|_| cb.mango_code);
    match next_step(result, cb.updated_at, resends, ctx.shared.clock.now()) {
        Next::Settle(code) => {
            let (ext, ph) = (cb.group_extension.clone(), cb.phone.clone());
            let reason = match code {
                Some(1000) | None => None,
                Some(c) => Some(Reason::MangoRefused {
                    code: u32::try_from(c).unwrap_or(0),
                }),
            };
            finish(ctx, cb, ext, ph, code, reason, None).await
        }
        Next::WaitUntil(at) => Err(JobError::RetryAt(
            at,
            "Mango's answer is unknown: waiting for its result".into(),
        )),
        Next::Resend(n) => resend(ctx, job, cb, n).await,
        Next::GiveUp => {
            let reason = match &cb.error {
                Some(detail) => Reason::MangoNoAnswer {
                    detail: detail.clone(),
                },
                None => Reason::Interrupted,
            };
            end_without_call(ctx, cb, reason).await
        }
    }
}

/// Sends resend `n` of `cb`'s command: the same group, number and line, a new `command_id`,
/// fenced by the job's lease like the first send.
async fn resend(ctx: &Context, job: &JobRow, cb: &Callback, n: u32) -> Result<(), JobError> {
    let db = &ctx.shared.db;
    let (Some(previous), Some(ext), Some(phone)) = (
        cb.command_id.clone(),
        cb.group_extension.clone(),
        cb.phone.clone(),
    ) else {
        return end_without_call(ctx, cb, Reason::Interrupted).await;
    };
    let (mid, now) = (cb.member_id.clone(), ctx.shared.clock.now());
    let settings: PortalSettings = db
        .read(move |c| portal_store::settings_or_default(c, &mid, now))
        .await?;
    let Some(creds) = credentials(ctx, &settings) else {
        return end_without_call(ctx, cb, Reason::MangoKeysMissing).await;
    };
    let slot = crate::mango::rate::callback_slot(
        db,
        &ctx.shared.clock,
        &ctx.shared.metrics,
        secrecy::ExposeSecret::expose_secret(&creds.api_key),
        &cb.id,
    )
    .await?;
    if let crate::mango::rate::Slot::WaitFor(wait) = slot {
        return Err(JobError::Snooze(wait));
    }
    let command_id = super::command_id_of_send(super::resend_of(&previous).0, n);
    let (jid, worker) = (job.id.clone(), job.locked_by.clone().unwrap_or_default());
    let (clock, this, cmd_id) = (ctx.shared.clock.clone(), cb.clone(), command_id.clone());
    let moved = db.run(move |c| {
        let at = lifecycle::SendAt {
            job_id: &jid,
            worker: &worker,
            clock: &clock,
        };
        lifecycle::resend_calling(c, &this, &at, (&previous, &cmd_id))
    });
    if !moved.await? {
        tracing::warn!(callback.id = %cb.id, "not resent: the job's lease was lost, or a result came in");
        return Ok(());
    }
    tracing::warn!(callback.id = %cb.id, resend = n, "Mango took no earlier command: sending it again");
    let cmd = CallbackGroup {
        command_id,
        from: ext,
        to: phone,
        line_number: settings.line_number.clone(),
    };
    send_command(ctx, cb, &creds, cmd, crate::jobs::Lease::of(job)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_sent_again_only_after_the_wait_without_a_result_and_at_most_twice() {
        let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0)
            .unwrap_or_default()
            .naive_utc();
        let s = |secs| t0 + chrono::Duration::seconds(secs);
        assert_eq!(
            next_step(Some(Some(1000)), t0, 0, t0),
            Next::Settle(Some(1000))
        );
        assert_eq!(next_step(None, t0, 0, s(5)), Next::WaitUntil(s(15)));
        assert_eq!(next_step(None, t0, 0, s(25)), Next::WaitUntil(s(30)));
        assert_eq!(next_step(None, t0, 0, s(30)), Next::Resend(1));
        assert_eq!(next_step(None, t0, 1, s(31)), Next::Resend(2));
        assert_eq!(next_step(None, t0, 2, s(31)), Next::GiveUp);
        assert_eq!(
            next_step(Some(Some(3102)), t0, 2, s(99)),
            Next::Settle(Some(3102))
        );
    }
}
