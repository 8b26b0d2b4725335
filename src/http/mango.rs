//! `POST /mango/...`: what Mango Office posts to the "external system" URL shown on the settings
//! page. Every request is verified (key + SHA-256 signature over the `json` field as received)
//! against the portals that use that key; the asynchronous `result/callback_group` is recorded on
//! its callback; call events (`events/call`, `events/summary`) are stored and applied to their
//! attempt's outcome (`callback::outcome`).

use std::collections::HashMap;

use actix_web::{web, HttpResponse};

use super::request::form_text;
use crate::callback::store as callback_store;
use crate::context::Context;
use crate::error::AppError;
use crate::mango::Credentials;
use crate::portal::store;

/// Mango reads only the status of our answer, so every accepted notification is a plain 200.
fn ok() -> HttpResponse {
    HttpResponse::Ok().finish()
}

/// A code that may come as a number or a string (`"1000"` in Mango's own example).
fn code_of(v: &serde_json::Value) -> Option<i32> {
    crate::json::int(v)
}

#[tracing::instrument(name = "mango_notification", skip_all, fields(path = %tail))]
pub async fn receive(
    tail: web::Path<String>,
    body: web::Bytes,
    ctx: web::Data<Context>,
) -> Result<HttpResponse, AppError> {
    let tail = tail.into_inner();
    if body.is_empty() || tail == "ping" {
        // The personal account's "check connection" may post nothing at all.
        return Ok(ok());
    }
    let form: HashMap<String, String> = serde_urlencoded::from_str(form_text(&body)?)
        .map_err(|e| AppError::BadRequest(format!("malformed form: {e}")))?;
    let field = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let (Some(key), Some(sign), Some(json)) = (field("vpbx_api_key"), field("sign"), field("json"))
    else {
        return Err(AppError::BadRequest(
            "vpbx_api_key, sign and json are required".into(),
        ));
    };

    // Several portals may share one Mango account; the notification belongs to those whose
    // stored salt verifies its signature.
    let (k, cipher) = (key.to_owned(), ctx.shared.cipher.clone());
    let candidates = ctx
        .shared
        .db
        .read(move |c| store::settings_by_mango_key(c, &k))
        .await?;
    let verified: Vec<String> = candidates
        .into_iter()
        .filter(|s| {
            let salt = s.mango_api_salt.as_deref().and_then(|x| {
                cipher
                    .open(crate::crypto::Slot::mango_api_salt(&s.member_id), x)
                    .ok()
            });
            salt.is_some_and(|salt| {
                crate::mango::verify(&Credentials::new(key, salt), key, json, sign)
            })
        })
        .map(|s| s.member_id)
        .collect();
    if verified.is_empty() {
        return Err(AppError::Unauthorized(
            "unknown vpbx_api_key or bad sign".into(),
        ));
    }
    let payload: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| AppError::BadRequest(format!("json field is not JSON: {e}")))?;

    if tail == "result/callback_group" {
        let command_id = payload
            .get("command_id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        if command_id.contains('\0') {
            // Never one of ours, and PostgreSQL cannot even compare it: refuse, as for the form.
            return Err(AppError::BadRequest(
                "command_id contains a NUL character".into(),
            ));
        }
        let Some(code) = payload.get("result").and_then(code_of) else {
            return Err(AppError::BadRequest("result is missing".into()));
        };
        let now = ctx.shared.clock.now();
        let (members, cmd) = (verified.clone(), command_id.clone());
        // Mango's notifications come several a second per account in a burst: each is stored
        // before it is answered, in a transaction shared with those arriving meanwhile (group
        // commit, in the lane of the portal's robot calls).
        let lane = verified.first().cloned().unwrap_or_default();
        let updated = ctx
            .shared
            .db
            .run_grouped(&lane, move |c| {
                Ok(callback_store::record_mango_result(
                    c,
                    &verified,
                    // Any send of the callback: a late result for an earlier command counts.
                    &crate::callback::command_ids_of(&command_id),
                    code,
                    &crate::callback::mango_outcome(code),
                    now,
                )?)
            })
            .await?;
        if updated == 0 {
            // Unknown command, or a replay of a result already recorded: acknowledged, ignored.
            tracing::warn!(
                code,
                "Mango result for no callback awaiting one (unknown command_id or a replay); ignored"
            );
        } else {
            tracing::info!(code, updated, "Mango reported the callback_group result");
        }
        if code != 1000 && updated > 0 {
            // Accepted at first, then not placed: the attempt failed. Only the first result
            // counts: a replay with another code changes nothing.
            let now = ctx.shared.clock.now();
            let failed = ctx
                .shared
                .db
                .run(move |c| crate::callback::outcome::fail_by_result(c, &members, &cmd, now))
                .await?;
            if failed {
                ctx.shared.notify.notify_one();
            }
        }
    } else if tail == "events/call" || tail == "events/summary" {
        record_call_event(&ctx, &tail, verified, &payload, json).await?;
    } else {
        tracing::debug!("Mango notification verified and acknowledged");
    }
    Ok(ok())
}

/// `events/call` or `events/summary`: stored and applied to its attempt (see
/// `callback::outcome`). A body that cannot be read is refused with what is wrong, and nothing
/// is stored.
async fn record_call_event(
    ctx: &Context,
    tail: &str,
    verified: Vec<String>,
    payload: &serde_json::Value,
    json: &str,
) -> Result<(), AppError> {
    use crate::callback::outcome::{record_event, Incoming, Recorded};
    use crate::mango::events;
    let incoming = if tail == "events/call" {
        events::parse_call(payload).map(Incoming::Call)
    } else {
        events::parse_summary(payload).map(Incoming::Summary)
    }
    .map_err(|e| {
        tracing::warn!(error = %e, "unreadable Mango call event refused");
        AppError::BadRequest(format!("{tail}: {e}"))
    })?;
    let (now, body) = (ctx.shared.clock.now(), json.to_owned());
    // Stored before it is answered, with the notifications arriving meanwhile (group commit).
    let lane = verified.first().cloned().unwrap_or_default();
    let recorded = ctx
        .shared
        .db
        .run_grouped(&lane, move |c| {
            record_event(c, &verified, &incoming, &body, now)
        })
        .await?;
    match recorded {
        Recorded::Foreign => tracing::debug!("call event of a command not ours; ignored"),
        Recorded::Waiting => tracing::info!("call event stored; its call is not known yet"),
        Recorded::Applied { ended: true } => {
            tracing::info!("Mango's summary ended the call's attempt");
            ctx.shared.notify.notify_one();
        }
        Recorded::Applied { ended: false } => tracing::debug!("call event applied"),
    }
    Ok(())
}

#[cfg(test)]
mod props;
