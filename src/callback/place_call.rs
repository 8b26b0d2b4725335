//! The [`PlaceCall`] job: find the client's phone (the robot's override, else the deal's primary
//! contact, possibly linked late, looked up with the portal's other waiting callbacks: [`super::lookup`]), take a slot of Mango's per-account rate, order
//! `callback_group`, and finish the callback with its report queued.

use secrecy::ExposeSecret;
use std::time::Duration;

use super::send::{credentials, end_without_call, send_command};
use super::{lifecycle, store, Group, PlaceCall, Reason, Status};
use crate::bitrix::crm::PhoneLookup;
use crate::context::Context;
use crate::jobs::{cause_chain, Ending, Job, JobError, Lease};
use crate::mango::CallbackGroup;
use crate::phone;
use crate::portal::{store as portal_store, PortalSettings};

/// Delay between checks for a contact that a web form links a few seconds after the deal.
pub const CONTACT_RECHECK: Duration = Duration::from_secs(5);

impl Job for PlaceCall {
    const KIND: &'static str = "place_call";
    const MAX_ATTEMPTS: i32 = 12;

    /// Whatever goes wrong, the callback ends in a terminal state with a report: a buried job
    /// would leave the business process waiting and the deal blocked for new runs.
    async fn run(self, ctx: &Context, job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        let id = self.callback_id.clone();
        let give_up = |e: String| async move {
            let Some(cb) = ctx.shared.db.read(move |c| store::find(c, &id)).await? else {
                return Ok(());
            };
            end_without_call(ctx, &cb, Reason::GaveUp { detail: e }).await
        };
        match self.place(ctx, job).await {
            Err(JobError::Permanent(e)) => give_up(cause_chain(&e)).await,
            Err(JobError::Transient(e)) if job.attempts >= job.max_attempts => {
                give_up(cause_chain(&e)).await
            }
            other => other,
        }
    }
}

impl PlaceCall {
    async fn place(&self, ctx: &Context, job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        let db = &ctx.shared.db;
        let id = self.callback_id.clone();
        let Some(cb) = db.read(move |c| store::find(c, &id)).await? else {
            return Ok(());
        };
        // In `calling` the last command's outcome is unknown (this run's predecessor died, or
        // Mango's answer was lost); back in `queued` a late result may still have arrived.
        if cb.status == Status::Calling || (cb.status == Status::Queued && cb.outcome.is_some()) {
            return super::resend::after_unknown_send(ctx, job, &cb).await;
        }
        if cb.status != Status::Queued {
            return Ok(());
        }
        let (mid, now) = (cb.member_id.clone(), ctx.shared.clock.now());
        let settings: PortalSettings = db
            .read(move |c| portal_store::settings_or_default(c, &mid, now))
            .await?;

        let group_kind = cb.group_kind.unwrap_or(Group::Trainee);
        let extension = if group_kind == Group::Experienced {
            &settings.experienced_extension
        } else {
            &settings.trainee_extension
        };
        let Some(creds) = credentials(ctx, &settings) else {
            return end_without_call(ctx, &cb, Reason::MangoKeysMissing).await;
        };
        if extension.is_empty() || settings.line_number.is_empty() {
            let reason = Reason::GroupNotSet { group: group_kind };
            return end_without_call(ctx, &cb, reason).await;
        }

        // The phone: found by an earlier run of this job (it waited for Mango's budget, or Mango
        // refused the command for sure), else the robot's override, else the deal's primary
        // contact (possibly linked late).
        let known = cb.phone.clone().or_else(|| {
            cb.phone_override
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
        });
        let raw_phone = match known {
            Some(p) => p,
            None => match super::lookup::phone_of(ctx, &cb, &job.id).await? {
                PhoneLookup::Found(p) => p,
                PhoneLookup::NoContact => {
                    let waited = (now - cb.created_at).num_seconds();
                    if waited < i64::from(settings.contact_wait_seconds) {
                        let cid = cb.id.clone();
                        db.run(move |c| store::count_contact_check(c, &cid, now))
                            .await?;
                        let at =
                            now + chrono::Duration::from_std(CONTACT_RECHECK).unwrap_or_default();
                        return Err(JobError::RetryAt(
                            at,
                            "no contact linked to the deal yet".into(),
                        ));
                    }
                    let reason = Reason::NoContact {
                        waited_s: i64::from(settings.contact_wait_seconds),
                    };
                    return end_without_call(ctx, &cb, reason).await;
                }
                PhoneLookup::Unreadable(e) if e.is_transient() => {
                    return Err(JobError::Transient(anyhow::anyhow!(
                        "Bitrix24 did not let the deal be read yet: {e}"
                    )))
                }
                PhoneLookup::Unreadable(e) => {
                    // Bitrix24's code and description as one phrase, as its error shows them.
                    let description = match (e.code.is_empty(), e.description.is_empty()) {
                        (true, _) => e.description,
                        (false, true) => e.code,
                        (false, false) => format!("{} {}", e.code, e.description),
                    };
                    let reason = Reason::Bitrix24ReadFailed {
                        method: e.method,
                        description,
                    };
                    return end_without_call(ctx, &cb, reason).await;
                }
                PhoneLookup::NoPhone => return end_without_call(ctx, &cb, Reason::NoPhone).await,
            },
        };
        let phone = match phone::normalize(&raw_phone) {
            Ok(p) => p,
            Err(error) => return end_without_call(ctx, &cb, Reason::BadPhone { error }).await,
        };

        // Mango allows 4 callback commands per second per account, across all our instances.
        // Waiting for a slot holds no worker: the job snoozes with its place in the account's
        // line, and the phone it found is kept so the wake-up does not look it up again. A slot
        // taken moves the callback to `calling` in the same transaction (one durable commit, not
        // two, on the hot path of every callback).
        // A command refused for sure (429) is sent again under the same id; see `resend` for
        // the new id of a resend after an unknown outcome.
        let command_id = cb
            .command_id
            .clone()
            .unwrap_or_else(|| super::command_id(&cb.member_id, &cb.deal_id, &cb.id));
        let (ext, ph, cmd_id) = (
            extension.clone(),
            phone.as_str().to_owned(),
            command_id.clone(),
        );
        let lease = Lease::of(job);
        let (clock, deal, fence) = (ctx.shared.clock.clone(), cb.clone(), lease.clone());
        let bucket = crate::mango::rate::bucket_of(creds.api_key.expose_secret());
        let offset_us = ctx.shared.clock.offset_us();
        let (turn, calling, snooze_recorded) = db
            .run(move |c| {
                crate::db::write_tx(c, |c| {
                    let turn =
                        crate::mango::rate::take_callback_turn(c, &bucket, &deal.id, offset_us)?;
                    if let Some(wait) = crate::mango::rate::wait_of(turn) {
                        if deal.phone.as_deref() != Some(ph.as_str()) {
                            store::remember_phone(c, &deal.id, &ph, now)?;
                        }
                        // The job's snooze in this same commit (the worker's would be a second).
                        let recorded = fence.wait_for_budget(c, wait, clock.now())?;
                        return Ok::<_, crate::db::DbError>((turn, false, recorded));
                    }
                    // Fenced: only while this run still holds the job's lease (see
                    // `lifecycle::start_calling`).
                    let at = lifecycle::SendAt {
                        job_id: &fence.job_id,
                        worker: &fence.worker,
                        clock: &clock,
                    };
                    let calling = lifecycle::start_calling(c, &deal, &at, (&ext, &ph, &cmd_id))?;
                    Ok((turn, calling, false))
                })
            })
            .await?;
        // A slot dated a moment ahead is waited for here; a wait is the job's snooze.
        if let crate::mango::rate::Slot::WaitFor(wait) =
            crate::mango::rate::act_on(turn, &ctx.shared.metrics).await
        {
            if snooze_recorded {
                return Err(JobError::Recorded(Ending::WaitsForBudget(wait)));
            }
            return Err(JobError::Snooze(wait));
        }
        if !calling {
            tracing::warn!(callback.id = %cb.id, "not sent: the job's lease was lost or the callback moved on");
            return Ok(());
        }
        let cmd = CallbackGroup {
            command_id,
            from: extension.clone(),
            to: phone.as_str().to_owned(),
            line_number: settings.line_number.clone(),
        };
        send_command(ctx, &cb, &creds, cmd, lease).await
    }
}
