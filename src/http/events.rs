//! `POST /b24/events`: ONAPPUPDATE and ONAPPUNINSTALL; any other event is logged and ignored.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::{application_token_matches, parse_form, peer, AuthBlock};
use crate::context::Context;
use crate::error::AppError;
use crate::jobs::{queue, Job};
use crate::portal::jobs::RegisterRobot;
use crate::portal::store;

#[derive(Debug, Deserialize)]
struct EventForm {
    event: Option<String>,
    #[serde(default)]
    data: EventData,
    auth: Option<AuthBlock>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
struct EventData {
    clean: Option<String>,
    version: Option<String>,
}

#[tracing::instrument(name = "event", skip_all, fields(portal, event))]
pub async fn handle_event(
    req: HttpRequest,
    body: web::Bytes,
    ctx: web::Data<Context>,
) -> Result<HttpResponse, AppError> {
    let form: EventForm = parse_form(&body)?;
    let event = form.event.unwrap_or_default().to_ascii_uppercase();
    tracing::Span::current().record("event", event.as_str());
    let auth = form.auth.unwrap_or_default();
    let member_id = auth.require_member_id()?;
    tracing::Span::current().record("portal", member_id.as_str());
    let shared = &ctx.shared;
    let mid = member_id.clone();
    let portal = shared.db.run(move |c| Ok(store::find(c, &mid)?)).await?;
    let Some(portal) = portal else {
        tracing::warn!(peer = %peer(&req), "event for an unknown portal refused");
        return Err(AppError::Unauthorized("unknown portal".into()));
    };
    let token_ok =
        application_token_matches(&shared.cipher, &portal, auth.application_token.as_deref());

    match event.as_str() {
        "ONAPPUNINSTALL" => {
            if !token_ok {
                tracing::warn!(peer = %peer(&req), "ONAPPUNINSTALL with a wrong application token refused");
                return Err(AppError::Unauthorized("wrong application token".into()));
            }
            let clean = form.data.clean.as_deref() == Some("1");
            let now = shared.clock.now();
            shared
                .db
                .run(move |c| {
                    crate::db::write_tx(c, |c| {
                        if clean {
                            store::delete_everything(c, &member_id)?;
                        } else {
                            queue::cancel_for_portal(
                                c,
                                &member_id,
                                "the app was uninstalled",
                                now,
                            )?;
                            store::mark_uninstalled(c, &member_id, now)?;
                        }
                        Ok(())
                    })
                })
                .await?;
            tracing::info!(clean, "app uninstalled from the portal");
            Ok(HttpResponse::Ok()
                .json(serde_json::json!({ "status": "uninstalled", "clean": clean })))
        }
        "ONAPPUPDATE" => {
            // The update brings a new application token, so the stored one cannot vouch for it:
            // its access token is verified with the OAuth server instead.
            let token = auth.access_token.clone().filter(|t| !t.is_empty());
            let new_app_token = auth
                .application_token
                .clone()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| AppError::BadRequest("auth[application_token] is missing".into()))?;
            let verified = match token {
                Some(t) => super::install::verify(&ctx, &req, &t, &portal.member_id).await?,
                None => {
                    return Err(AppError::Unauthorized(
                        "ONAPPUPDATE without auth[access_token] cannot be verified".into(),
                    ))
                }
            };
            let (cipher, now, mid) = (
                shared.cipher.clone(),
                shared.clock.now(),
                portal.member_id.clone(),
            );
            let (access, refresh) = (auth.access_token.clone(), auth.refresh_token.clone());
            let expires = auth
                .expires_in
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3600);
            shared
                .db
                .run(move |c| {
                    crate::db::write_tx(c, |c| {
                        store::set_application_token(c, &cipher, &mid, &new_app_token, now)?;
                        if let (Some(a), Some(r)) = (&access, &refresh) {
                            store::store_tokens(c, &cipher, &mid, a, r, expires, now)?;
                        }
                        let job = RegisterRobot {
                            member_id: mid.clone(),
                        }
                        .to_new_job(Some(&mid), None, now);
                        queue::enqueue(c, &job, now)?;
                        Ok(())
                    })
                })
                .await?;
            shared.notify.notify_one();
            tracing::info!(version = form.data.version.as_deref().unwrap_or("-"), domain = %verified.domain, "app updated: application token rotated, robot re-registration queued");
            Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "updated" })))
        }
        other => {
            if !token_ok {
                tracing::warn!(peer = %peer(&req), "event with a wrong application token refused");
                return Err(AppError::Unauthorized("wrong application token".into()));
            }
            tracing::info!(event = other, "event not used by this app; ignored");
            Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ignored" })))
        }
    }
}

#[cfg(test)]
mod props;
