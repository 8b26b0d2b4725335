//! The [`AnnounceSchedule`] job: tells the business process (`result=scheduled`) and the deal's
//! timeline when a run that waits for working hours will be called.
//!
//! The business process gets exactly one `bizproc.event.send` per run: this job sets
//! `event_sent_at`, so the report of the call placed at the opening only comments on the deal.

use diesel::QueryResult;
use serde_json::json;

use super::report::report_error;
use super::schedule::{comment_text, RESULT_SCHEDULED};
use super::{store, AnnounceSchedule, Callback, Status};
use crate::context::Context;
use crate::jobs::{Job, JobError};
use crate::portal::{store as portal_store, Lang};

impl Job for AnnounceSchedule {
    const KIND: &'static str = "announce_schedule";
    /// As the report's: a waiting business process depends on this answer.
    const MAX_ATTEMPTS: i32 = 20;

    async fn run(self, ctx: &Context, _job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        let db = &ctx.shared.db;
        let (id, now) = (self.callback_id.clone(), ctx.shared.clock.now());
        let found = db
            .run(move |c| -> QueryResult<_> {
                let Some(cb) = store::find(c, &id)? else {
                    return Ok(None);
                };
                let Some(portal) = portal_store::find(c, &cb.member_id)? else {
                    return Ok(None);
                };
                let settings = portal_store::settings_or_default(c, &cb.member_id, now)?;
                Ok(Some((cb, portal, settings)))
            })
            .await?;
        let Some((cb, portal, settings)) = found.filter(|(_, p, _)| p.is_active()) else {
            return Ok(());
        };
        // Once the call has gone ahead (an outage delayed this job past the opening), its own
        // report answers and comments; an announcement now would be stale.
        let Some(at) = cb.scheduled_for.filter(|_| cb.status == Status::Queued) else {
            return Ok(());
        };
        // The hook of the waiting mode (`wait_for_outcome`): then the business process gets its
        // one event when the call has ended, with the outcome, so `scheduled` is not sent.
        if !settings.wait_for_outcome && cb.event_sent_at.is_none() {
            send_scheduled_event(ctx, &cb).await?;
        }
        if cb.deal_id.is_empty() {
            return Ok(());
        }
        let text = comment_text(at, &settings.timezone, Lang::parse(&portal.lang));
        let params = json!({ "fields": { "ENTITY_ID": cb.deal_id, "ENTITY_TYPE": "deal", "COMMENT": text } });
        match ctx
            .bitrix()
            .call(&cb.member_id, "crm.timeline.comment.add", params)
            .await
        {
            Ok(_) => Ok(()),
            // A deleted or unwritable deal takes no comment, however often asked.
            Err(crate::bitrix::BitrixError::Api {
                status, ref code, ..
            }) if matches!(status, 400 | 403 | 404) && code != "QUERY_LIMIT_EXCEEDED" => {
                tracing::warn!(callback = %cb.id, deal = %cb.deal_id, status, code = %code, "the deal does not take the schedule comment");
                Ok(())
            }
            Err(e) => Err(report_error(ctx, &cb, e)),
        }
    }
}

/// `bizproc.event.send` with `result=scheduled`, and `event_sent_at` set so no other report of
/// this run answers again.
async fn send_scheduled_event(ctx: &Context, cb: &Callback) -> Result<(), JobError> {
    if let Some(token) = &cb.event_token {
        let values = json!({
            "result": RESULT_SCHEDULED,
            "group_extension": "",
            "command_id": "",
            "error": "",
        });
        let params = json!({ "EVENT_TOKEN": token, "RETURN_VALUES": values, "LOG_MESSAGE": format!("mango-callback: {RESULT_SCHEDULED}") });
        match ctx
            .bitrix()
            .call(&cb.member_id, "bizproc.event.send", params)
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some("ACCESS_DENIED") => {
                tracing::error!(callback = %cb.id, error = %e, "bizproc.event.send refused the event token")
            }
            Err(e) => return Err(report_error(ctx, cb, e)),
        }
    }
    let (cid, now) = (cb.id.clone(), ctx.shared.clock.now());
    ctx.shared
        .db
        .run(move |c| store::mark_event_sent(c, &cid, now))
        .await?;
    Ok(())
}
