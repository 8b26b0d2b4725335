//! `POST /b24/robot`: the robot's HANDLER. Verifies, records the run and its job, answers at once.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::{application_token_matches, parse_form, peer, AuthBlock};
use crate::callback::{store, Accepted, RequestedGroup, RobotRun};
use crate::context::Context;
use crate::error::AppError;
use crate::portal::store as portal_store;

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

/// `DEAL_123` → `123`.
fn deal_id(document_id: &[String]) -> Result<String, AppError> {
    let raw = document_id
        .get(2)
        .ok_or_else(|| AppError::BadRequest("document_id[2] is missing".into()))?;
    let id = raw.strip_prefix("DEAL_").ok_or_else(|| {
        AppError::BadRequest(format!(
            "document_id[2] must name a deal (DEAL_<id>), got {raw:?}"
        ))
    })?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AppError::BadRequest(format!(
            "document_id[2] has a bad deal id: {raw:?}"
        )));
    }
    Ok(id.to_owned())
}

#[tracing::instrument(name = "robot_call", skip_all, fields(portal, deal))]
pub async fn handle_robot_call(
    req: HttpRequest,
    body: web::Bytes,
    ctx: web::Data<Context>,
) -> Result<HttpResponse, AppError> {
    let form: RobotForm = parse_form(&body)
        .inspect_err(|e| tracing::warn!(peer = %peer(&req), error = %e, "robot call refused"))?;
    let auth = form.auth.unwrap_or_default();
    let member_id = auth.require_member_id()?;
    tracing::Span::current().record("portal", member_id.as_str());
    let deal = deal_id(&form.document_id)
        .inspect_err(|e| tracing::warn!(error = %e, "robot call refused"))?;
    tracing::Span::current().record("deal", deal.as_str());
    let requested = match form.properties.group.as_deref() {
        None => RequestedGroup::Auto,
        Some(g) => RequestedGroup::parse(g).ok_or_else(|| {
            AppError::BadRequest(format!(
                "properties[group] must be auto, trainee or experienced, got {g:?}"
            ))
        })?,
    };
    if form
        .code
        .as_deref()
        .is_some_and(|c| c != crate::portal::jobs::ROBOT_CODE)
    {
        return Err(AppError::BadRequest(format!(
            "code {:?} is not this app's robot",
            form.code.unwrap_or_default()
        )));
    }

    let run = RobotRun {
        member_id: member_id.clone(),
        deal_id: deal,
        event_token: form.event_token.filter(|t| !t.is_empty()),
        workflow_id: form.workflow_id,
        requested,
        phone_override: form.properties.phone.filter(|p| !p.trim().is_empty()),
    };
    let shared = &ctx.shared;
    let (cipher, now) = (shared.cipher.clone(), shared.clock.now());
    // One trip to the blocking pool: this is the hot path Bitrix24 waits on.
    let accepted = shared
        .db
        .run(move |c| {
            let trusted = portal_store::find(c, &run.member_id)?.is_some_and(|p| {
                p.is_active()
                    && application_token_matches(&cipher, &p, auth.application_token.as_deref())
            });
            if !trusted {
                return Ok(None);
            }
            store::accept(c, &run, now).map(Some)
        })
        .await?;
    let Some(accepted) = accepted else {
        tracing::warn!(peer = %peer(&req), portal = %member_id, "robot call with an unknown portal or a wrong application token refused");
        return Err(AppError::Unauthorized(
            "unknown portal or wrong application token".into(),
        ));
    };
    shared.notify.notify_one();
    let (callback_id, outcome) = match &accepted {
        Accepted::Queued { callback_id, group } => {
            tracing::info!(callback = %callback_id, group, "robot call accepted; callback queued");
            (callback_id, "queued")
        }
        Accepted::Duplicate { callback_id } => {
            tracing::info!(callback = %callback_id, "robot call is a duplicate for this deal; no call");
            (callback_id, "duplicate")
        }
        Accepted::Redelivered { callback_id } => {
            tracing::info!(callback = %callback_id, "the same event_token again; nothing new");
            (callback_id, "redelivered")
        }
    };
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({ "status": outcome, "callback_id": callback_id })))
}

#[cfg(test)]
mod props;
