//! The [`AnnounceSchedule`] job: tells the business process (`result=scheduled`) and the deal's
//! timeline when a run that waits for working hours will be called.
//!
//! The business process gets exactly one `bizproc.event.send` per run: this job sets
//! `event_sent_at`, so the report of the call placed at the opening only comments on the deal.

use serde_json::json;

use super::report::{add_deal_comment, send_robot_event, with_portal};
use super::schedule::{comment_text, RESULT_SCHEDULED};
use super::{AnnounceSchedule, Callback, Status};
use crate::context::Context;
use crate::jobs::{Job, JobError};
use crate::portal::Lang;

impl Job for AnnounceSchedule {
    const KIND: &'static str = "announce_schedule";
    /// As the report's: a waiting business process depends on this answer.
    const MAX_ATTEMPTS: i32 = 20;

    async fn run(self, ctx: &Context, job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        let db = &ctx.shared.db;
        let (id, now) = (self.callback_id.clone(), ctx.shared.clock.now());
        let found = db.read(move |c| with_portal(c, &id, now)).await?;
        let Some((cb, portal, settings)) = found else {
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
        // A deal that does not take the comment is logged by `add_deal_comment`; nothing to redo.
        add_deal_comment(ctx, &cb, &text, job.attempts > 1).await?;
        Ok(())
    }
}

/// `bizproc.event.send` with `result=scheduled`, and `event_sent_at` set so no other report of
/// this run answers again.
async fn send_scheduled_event(ctx: &Context, cb: &Callback) -> Result<(), JobError> {
    let values = json!({
        "result": RESULT_SCHEDULED,
        "group_extension": "",
        "command_id": "",
        "error": "",
    });
    send_robot_event(ctx, cb, values, RESULT_SCHEDULED).await
}
