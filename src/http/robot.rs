//! `POST /b24/robot`: the robot's HANDLER. Verifies, records the run and its job, answers at once.
//! A verified call that cannot be acted on is recorded as failed and reported, never left hanging.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::auth::application_token_matches;
use super::request::{parse_form, AuthBlock};
use crate::callback::{
    is_member_id_shaped, lifecycle, Accepted, DealId, RequestedGroup, RobotRun, Unusable,
};
use crate::context::Context;
use crate::db::DbError;
use crate::error::AppError;
use crate::portal::store as portal_store;
use crate::portal::Lang;

#[derive(Debug, Deserialize)]
struct RobotForm {
    workflow_id: Option<String>,
    code: Option<String>,
    #[serde(default)]
    document_id: Vec<String>,
    event_token: Option<String>,
    #[serde(default)]
    properties: RobotProperties,
    auth: Option<AuthBlock>,
}

#[derive(Debug, Default, Deserialize)]
struct RobotProperties {
    phone: Option<String>,
    group: Option<String>,
}

/// `DEAL_123` → `123`: only deals, ids of 1–20 digits.
fn deal_id(document_id: &[String]) -> Result<DealId, Unusable> {
    let raw = document_id.get(2).ok_or(Unusable::NoDocument)?;
    let id = raw
        .strip_prefix("DEAL_")
        .ok_or_else(|| Unusable::NotADeal(raw.clone()))?;
    DealId::parse(id).ok_or_else(|| Unusable::BadDealId(raw.clone()))
}

/// The payload checks. Pure: they run before verification but are acted upon only after it, and
/// a verified call that fails them is still answered through `bizproc.event.send`. The error
/// carries the deal id when the document was a deal (for the timeline comment).
fn validate(form: &RobotForm, member_id: &str) -> Result<RobotRun, (Option<DealId>, Unusable)> {
    let deal = deal_id(&form.document_id).map_err(|e| (None, e))?;
    let requested = match form.properties.group.as_deref() {
        None => RequestedGroup::Auto,
        Some(g) => RequestedGroup::parse(g)
            .ok_or_else(|| (Some(deal.clone()), Unusable::UnknownGroup(g.to_owned())))?,
    };
    if let Some(code) = form
        .code
        .as_deref()
        .filter(|c| *c != crate::portal::robot::ROBOT_CODE)
    {
        return Err((Some(deal), Unusable::WrongCode(code.to_owned())));
    }
    Ok(RobotRun {
        member_id: member_id.to_owned(),
        deal_id: deal,
        event_token: form.event_token.clone().filter(|t| !t.is_empty()),
        workflow_id: form.workflow_id.clone(),
        requested,
        phone_override: form
            .properties
            .phone
            .clone()
            .filter(|p| !p.trim().is_empty()),
    })
}

/// What the database trip found.
enum Verdict {
    /// Unknown portal or wrong application token.
    Untrusted,
    /// Verified but unusable, and without an `event_token` there is nobody to tell.
    NobodyToTell(Unusable),
    Accepted(Accepted, Option<Unusable>),
}

/// Order matters: parse → verify → validate. Only a call that cannot be verified (unparseable,
/// no member_id, unknown portal, wrong application token) is refused with a 4xx and leaves no
/// trace; a verified call with an unusable payload is recorded as failed and reported, because a
/// 4xx would leave its business process waiting forever.
#[tracing::instrument(name = "robot_call", skip_all, fields(portal, deal))]
pub async fn handle_robot_call(
    body: web::Bytes,
    ctx: web::Data<Context>,
) -> Result<HttpResponse, AppError> {
    let answer = take_robot_call(&body, &ctx).await;
    ctx.shared.metrics.robot_call(match &answer {
        Ok((_, outcome)) => outcome,
        Err(AppError::Unavailable(_)) => "unavailable",
        Err(AppError::Internal(_)) => "error",
        Err(_) => "refused",
    });
    answer.map(|(res, _)| res)
}

/// The call's answer and its result as counted in `/metrics` (`queued`, `duplicate`, …).
async fn take_robot_call(
    body: &web::Bytes,
    ctx: &Context,
) -> Result<(HttpResponse, &'static str), AppError> {
    let mut form: RobotForm = parse_form(body)?;
    let auth = form.auth.take().unwrap_or_default();
    let member_id = auth.require_member_id()?;
    if !is_member_id_shaped(&member_id) {
        return Err(AppError::Unauthorized(
            "unknown portal or wrong application token".into(),
        ));
    }
    tracing::Span::current().record("portal", member_id.as_str());
    // Pure checks, acted upon only once the caller is verified.
    let checked = validate(&form, &member_id);
    if let Ok(run) = &checked {
        tracing::Span::current().record("deal", run.deal_id.as_str());
    }
    let event_token = form.event_token.clone().filter(|t| !t.is_empty());
    let workflow_id = form.workflow_id.clone();

    let shared = &ctx.shared;
    let (cipher, now) = (shared.cipher.clone(), shared.clock.now());
    let mid = member_id.clone();
    // One trip to the database, in a transaction shared with the robot calls that arrive
    // meanwhile (group commit): this is the hot path Bitrix24 waits on, and the answer goes out
    // only once the call is durably stored.
    let verdict = shared
        .db
        .run_grouped(&member_id, move |c| -> Result<_, DbError> {
            let portal = portal_store::find(c, &mid)?.filter(|p| {
                p.is_active()
                    && application_token_matches(&cipher, p, auth.application_token.as_deref())
            });
            let Some(portal) = portal else {
                return Ok(Verdict::Untrusted);
            };
            match checked {
                Ok(run) => Ok(Verdict::Accepted(lifecycle::accept(c, &run, now)?, None)),
                Err((_, why)) if event_token.is_none() => Ok(Verdict::NobodyToTell(why)),
                Err((deal, why)) => {
                    let accepted = lifecycle::record_unusable(
                        c,
                        &mid,
                        deal.as_ref(),
                        event_token.as_deref().unwrap_or_default(),
                        workflow_id.as_deref(),
                        &why,
                        Lang::parse(&portal.lang),
                        now,
                    )?;
                    Ok(Verdict::Accepted(accepted, Some(why)))
                }
            }
        })
        .await?;
    let (accepted, unusable) = match verdict {
        Verdict::Untrusted => {
            return Err(AppError::Unauthorized(
                "unknown portal or wrong application token".into(),
            ));
        }
        Verdict::NobodyToTell(why) => {
            let reason = why.message(Lang::En);
            return Err(AppError::BadRequest(format!(
                "{reason}; and without event_token the business process cannot be answered"
            )));
        }
        Verdict::Accepted(a, u) => (a, u),
    };
    shared.notify.notify_one();
    let mut scheduled_for = None;
    let (callback_id, outcome) = match &accepted {
        Accepted::Queued { callback_id, group } => {
            tracing::info!(callback = %callback_id, group = %group, "robot call accepted; callback queued");
            (callback_id, "queued")
        }
        Accepted::Scheduled {
            callback_id,
            group,
            at,
        } => {
            tracing::info!(callback = %callback_id, group = %group, at = %at, "robot call accepted outside working hours; call scheduled");
            scheduled_for = Some(at.and_utc().to_rfc3339());
            (callback_id, "scheduled")
        }
        Accepted::Duplicate { callback_id } => {
            tracing::info!(callback = %callback_id, "robot call is a duplicate for this deal; no call");
            (callback_id, "duplicate")
        }
        Accepted::Redelivered { callback_id } => {
            tracing::info!(callback = %callback_id, "the same event_token again; nothing new");
            (callback_id, "redelivered")
        }
        Accepted::Unusable { callback_id } => (callback_id, "failed"),
    };
    if let Some(why) = unusable {
        let reason = why.message(Lang::En);
        tracing::warn!(callback = %callback_id, error = %reason, "verified robot call is unusable; reported as failed");
        let res = HttpResponse::Ok().json(serde_json::json!({
            "status": outcome, "callback_id": callback_id, "error": reason,
        }));
        return Ok((res, outcome));
    }
    let mut answer = serde_json::json!({ "status": outcome, "callback_id": callback_id });
    if let Some(at) = scheduled_for {
        answer["scheduled_for"] = at.into();
    }
    Ok((HttpResponse::Ok().json(answer), outcome))
}

#[cfg(test)]
mod props;
