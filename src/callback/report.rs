//! Answering the waiting business process (`bizproc.event.send`) and writing the outcome on the
//! deal's timeline, in the portal's language: the texts, the shared steps, and a retried
//! [`ReportCallback`]'s run on its own ([`super::report_batch`] runs the job).

use chrono::NaiveDateTime;
use diesel::QueryResult;
use serde_json::json;

use super::{store, Callback, Group, Reason, ReportCallback, Status};
use crate::bitrix::BitrixError;
use crate::context::Context;
use crate::db::DbConnection;
use crate::jobs::bitrix_error;
use crate::jobs::JobError;
use crate::portal::{store as portal_store, Lang, Portal, PortalSettings};

/// The timeline comment for a finished callback, in the portal's language. `reason` is the one
/// decided when the callback ended; a report queued before reasons were typed has none and
/// shows the stored `error` as it is.
pub fn comment_text(cb: &Callback, reason: Option<&Reason>, lang: Lang) -> String {
    let group = match (cb.group_kind, lang) {
        (Some(Group::Experienced), Lang::Ru) => "опытных менеджеров",
        (Some(Group::Experienced), Lang::En) => "experienced managers",
        (_, Lang::Ru) => "стажёров",
        (_, Lang::En) => "trainees",
    };
    let ext = cb.group_extension.as_deref().unwrap_or("-");
    let phone = cb.phone.as_deref().unwrap_or("-");
    let error = reason.map_or_else(|| cb.error.clone().unwrap_or_default(), |r| r.text(lang));
    match (cb.status, lang) {
        (Status::Started, Lang::Ru) => format!("Mango Office: звоним группе {group} (номер группы {ext}); когда менеджер ответит, наберём клиента +{phone}."),
        (Status::Started, Lang::En) => format!("Mango Office: ringing the {group} group (extension {ext}); once a manager answers, the client +{phone} is dialed."),
        (Status::Duplicate, Lang::Ru) => "Mango Office: повторный запуск робота для этой сделки — звонок уже заказан недавно, второй не заказываем.".into(),
        (Status::Duplicate, Lang::En) => "Mango Office: repeated robot run for this deal — a call was ordered recently, so no second one.".into(),
        (Status::NoPhone, Lang::Ru) => format!("Mango Office: звонок не заказан — нет телефона клиента ({error})."),
        (Status::NoPhone, Lang::En) => format!("Mango Office: no call ordered — no client phone ({error})."),
        (_, Lang::Ru) => format!("Mango Office: звонок не заказан — ошибка: {error}"),
        (_, Lang::En) => format!("Mango Office: no call ordered — error: {error}"),
    }
}

/// Whether the deal's newest timeline comments already hold `text`. Bitrix24 has no idempotency
/// key for `crm.timeline.comment.add`, so a retried report looks first; the text names the
/// callback's group, number and phone, and the newest 50 comments are where a comment added
/// moments ago is. (Filtering on `CREATED` is not honoured by Bitrix24, so none is sent.)
pub async fn already_commented(
    ctx: &Context,
    cb: &Callback,
    text: &str,
) -> Result<bool, BitrixError> {
    let params = json!({
        "filter": { "ENTITY_ID": cb.deal_id, "ENTITY_TYPE": "deal" },
        "select": ["ID", "COMMENT"],
        "order": { "ID": "DESC" },
    });
    let found = ctx
        .bitrix()
        .call(&cb.member_id, "crm.timeline.comment.list", params)
        .await?;
    Ok(found.as_array().is_some_and(|list| {
        list.iter()
            .any(|c| c.get("COMMENT").and_then(|v| v.as_str()) == Some(text))
    }))
}

/// The callback `id` with its portal and the portal's settings, while the portal is active:
/// what every job that reports on a callback reads first (`None`: nothing left to report to).
pub(super) fn with_portal(
    c: &mut DbConnection,
    id: &str,
    now: NaiveDateTime,
) -> QueryResult<Option<(Callback, Portal, PortalSettings)>> {
    let Some(cb) = store::find(c, id)? else {
        return Ok(None);
    };
    let Some(portal) = portal_store::find(c, &cb.member_id)?.filter(Portal::is_active) else {
        return Ok(None);
    };
    let settings = portal_store::settings_or_default(c, &cb.member_id, now)?;
    Ok(Some((cb, portal, settings)))
}

/// The business process's return values for a finished callback (see `portal::robot`'s
/// RETURN_PROPERTIES); the outcome's own report adds the outcome's details.
pub(super) fn event_values(cb: &Callback) -> serde_json::Value {
    json!({
        "result": cb.status.as_str(),
        "group_extension": cb.group_extension.clone().unwrap_or_default(),
        "command_id": cb.command_id.clone().unwrap_or_default(),
        "error": cb.error.clone().unwrap_or_default(),
        "outcome": cb.call_outcome.clone().unwrap_or_default(),
    })
}

/// In the error of a run whose batch went out and never got an answer: its retry looks for the
/// comment before sending anything again ([`ReportCallback::run_alone`]).
pub const ANSWER_UNKNOWN: &str = "the report batch was sent and its answer was lost";

/// How long a report waits for a portal to be re-authorised before it is given up.
const REPORT_WAIT_FOR_REAUTH_DAYS: i64 = 3;

/// Report errors: a portal that needs re-authorisation is waited for (an admin opening the app
/// heals it), so the business process still gets its answer.
pub(super) fn report_error(ctx: &Context, cb: &Callback, e: BitrixError) -> JobError {
    let now = ctx.shared.clock.now();
    match e {
        BitrixError::NeedsReauth { .. }
            if now - cb.created_at < chrono::Duration::days(REPORT_WAIT_FOR_REAUTH_DAYS) =>
        {
            JobError::RetryAt(now + chrono::Duration::minutes(15), e.to_string())
        }
        e => bitrix_error(e),
    }
}

/// Answers the business process of `cb` with `values` (`bizproc.event.send`) and records that
/// it was answered, so no other report of the run answers again. A run without an event token
/// has nobody waiting; a refused token will never be accepted: both are recorded as answered.
pub(super) async fn send_robot_event(
    ctx: &Context,
    cb: &Callback,
    values: serde_json::Value,
    log: &str,
) -> Result<(), JobError> {
    if let Some(token) = &cb.event_token {
        let params = json!({ "EVENT_TOKEN": token, "RETURN_VALUES": values, "LOG_MESSAGE": format!("mango-callback: {log}") });
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

/// What became of a timeline comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Commented {
    /// Added now, or found added by an earlier attempt whose answer was lost.
    Added,
    /// The deal was deleted or cannot be written by the app's user: no retry can add it.
    Refused,
}

/// Adds `text` to the deal's timeline. Bitrix24 has no idempotency key for comments, so a job
/// that runs again (`retried`: an earlier attempt may have added it and lost the answer, or been
/// killed before recording it) looks first and does not add it a second time.
pub(super) async fn add_deal_comment(
    ctx: &Context,
    cb: &Callback,
    text: &str,
    retried: bool,
) -> Result<Commented, JobError> {
    if retried
        && already_commented(ctx, cb, text)
            .await
            .map_err(|e| report_error(ctx, cb, e))?
    {
        tracing::info!(callback = %cb.id, deal = %cb.deal_id, "the timeline comment was added by an earlier attempt whose answer was lost; not added again");
        return Ok(Commented::Added);
    }
    let params =
        json!({ "fields": { "ENTITY_ID": cb.deal_id, "ENTITY_TYPE": "deal", "COMMENT": text } });
    match ctx
        .bitrix()
        .call(&cb.member_id, "crm.timeline.comment.add", params)
        .await
    {
        Ok(_) => Ok(Commented::Added),
        Err(BitrixError::Api {
            status, ref code, ..
        }) if matches!(status, 400 | 403 | 404) && code != "QUERY_LIMIT_EXCEEDED" => {
            tracing::warn!(callback = %cb.id, deal = %cb.deal_id, status, code = %code, "the deal does not take the timeline comment (deleted or not writable)");
            Ok(Commented::Refused)
        }
        Err(e) => Err(report_error(ctx, cb, e)),
    }
}

impl ReportCallback {
    /// The report of one callback, two requests: a retry after a failed or unanswered batch.
    pub(super) async fn run_alone(
        self,
        ctx: &Context,
        job: &crate::jobs::queue::JobRow,
    ) -> Result<(), JobError> {
        let db = &ctx.shared.db;
        let (id, now) = (self.callback_id.clone(), ctx.shared.clock.now());
        let Some((cb, portal, settings)) = db.read(move |c| with_portal(c, &id, now)).await? else {
            return Ok(());
        };
        // A robot that waits for the call's outcome gets its one event from the outcome's
        // report (`outcome_report`), when the call has ended.
        let held_for_outcome = settings.wait_for_outcome && cb.status == Status::Started;
        let text = comment_text(&cb, self.reason.as_ref(), Lang::parse(&portal.lang));
        let mut looked = false;
        let batch_unknown = job
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(ANSWER_UNKNOWN));
        if cb.comment_added_at.is_none() && !cb.deal_id.is_empty() && batch_unknown {
            looked = true;
            if already_commented(ctx, &cb, &text)
                .await
                .map_err(|e| report_error(ctx, &cb, e))?
            {
                // The earlier run sent the event and then the comment in one batch and never
                // heard back: the comment on the deal shows the batch was carried out.
                tracing::info!(callback = %cb.id, deal = %cb.deal_id, "the earlier report's batch was carried out though its answer was lost; nothing is sent again");
                let (cid, now) = (cb.id.clone(), ctx.shared.clock.now());
                let event_went = cb.event_sent_at.is_none() && !held_for_outcome;
                db.run(move |c| {
                    if event_went {
                        store::mark_event_sent(c, &cid, now)?;
                    }
                    store::mark_comment_added(c, &cid, now)
                })
                .await?;
                return Ok(());
            }
        }
        if cb.event_sent_at.is_none() && !held_for_outcome {
            send_robot_event(ctx, &cb, event_values(&cb), cb.status.as_str()).await?;
        }
        // A run recorded without a deal (the robot ran on a lead, say) has nowhere to comment.
        if cb.comment_added_at.is_none() && !cb.deal_id.is_empty() {
            // The deal does not take it: no retry can add it, and the business process already
            // has its answer, so the report ends without it.
            let retried = job.attempts > 1 && !looked;
            if add_deal_comment(ctx, &cb, &text, retried).await? == Commented::Refused {
                return Ok(());
            }
            let (cid, now) = (cb.id.clone(), ctx.shared.clock.now());
            db.run(move |c| store::mark_comment_added(c, &cid, now))
                .await?;
        }
        Ok(())
    }
}
