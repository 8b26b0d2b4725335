//! `POST /b24/events`: ONAPPUPDATE, ONAPPUNINSTALL and the self-check's ONAPPTEST; any other
//! event is logged and ignored.

use actix_web::{web, HttpResponse};
use diesel::QueryResult;
use serde::Deserialize;

use super::auth::application_token_matches;
use super::request::{parse_form, AuthBlock};
use crate::context::Context;
use crate::crypto::Slot;
use crate::error::AppError;
use crate::jobs::{queue, Job};
use crate::portal::upkeep::{
    apply_verified_update, ApplyAppUpdate, VerifiedUpdate, MAX_PENDING_UPDATES,
};
use crate::portal::{store, Portal};

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
    let portal = shared.db.run(move |c| store::find(c, &mid)).await?;
    let Some(portal) = portal else {
        return Err(AppError::Unauthorized("unknown portal".into()));
    };
    let token_ok =
        application_token_matches(&shared.cipher, &portal, auth.application_token.as_deref());

    match event.as_str() {
        "ONAPPUNINSTALL" => {
            if !token_ok {
                return Err(AppError::Unauthorized("wrong application token".into()));
            }
            let clean = form.data.clean.as_deref() == Some("1");
            let now = shared.clock.now();
            shared
                .db
                .run(move |c| {
                    crate::db::write_tx(c, |c| -> QueryResult<()> {
                        if clean {
                            store::delete_everything(c, &member_id)?;
                        } else {
                            queue::cancel_for_portal(
                                c,
                                &member_id,
                                "the app was uninstalled",
                                now,
                            )?;
                            // No deal stays blocked by a callback that can no longer happen.
                            crate::callback::store::end_unfinished_of_portal(
                                c,
                                &member_id,
                                "the app was uninstalled before the call was placed",
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
        "ONAPPUPDATE" => on_app_update(&ctx, &portal, auth, form.data.version).await,
        "ONAPPTEST" => on_app_test(&ctx, &portal, &auth, token_ok).await,
        other => {
            if !token_ok {
                return Err(AppError::Unauthorized("wrong application token".into()));
            }
            tracing::info!(event = other, "event not used by this app; ignored");
            Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ignored" })))
        }
    }
}

/// ONAPPUPDATE brings a new application token, so the stored one cannot vouch for it: its access
/// token is verified with the OAuth server and must be a portal administrator's. When that check
/// cannot be made now (OAuth server or portal unavailable), the event is kept, sealed, for a
/// retried job instead of being lost: Bitrix24 never sends it again.
async fn on_app_update(
    ctx: &Context,
    portal: &Portal,
    auth: AuthBlock,
    version: Option<String>,
) -> Result<HttpResponse, AppError> {
    let shared = &ctx.shared;
    let Some(token) = auth.access_token.clone().filter(|t| !t.is_empty()) else {
        return Err(AppError::Unauthorized(
            "ONAPPUPDATE without auth[access_token] cannot be verified".into(),
        ));
    };
    let new_app_token = auth
        .application_token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AppError::BadRequest("auth[application_token] is missing".into()))?;
    let refresh = auth.refresh_token.clone().filter(|t| !t.is_empty());
    let expires = auth.lifetime()?.unwrap_or(3600);
    let now = shared.clock.now();
    let verified = super::auth::verify_admin(ctx, &token, &portal.member_id, "ONAPPUPDATE").await;
    match verified {
        Ok(v) => {
            let update = VerifiedUpdate {
                member_id: portal.member_id.clone(),
                application_token: new_app_token,
                access_token: Some(token),
                refresh_token: refresh,
                expires_in: expires,
                received_at: now,
            };
            let cipher = shared.cipher.clone();
            shared
                .db
                .run(move |c| {
                    crate::db::write_tx(c, |c| apply_verified_update(c, &cipher, &update, now))
                })
                .await?;
            shared.notify.notify_one();
            tracing::info!(version = version.as_deref().unwrap_or("-"), domain = %v.domain, "app updated: application token rotated, robot re-registration queued");
            Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "updated" })))
        }
        Err(AppError::Unavailable(why)) => {
            let (cipher, mid) = (&shared.cipher, portal.member_id.as_str());
            // Sealed for the columns they are headed for: they can open only as this portal's
            // tokens. `rotate-key` refuses while such a kept update waits (see portal::reseal).
            let kept = ApplyAppUpdate {
                member_id: portal.member_id.clone(),
                access_token: cipher.seal(Slot::access_token(mid), &token),
                refresh_token: refresh
                    .as_deref()
                    .map(|r| cipher.seal(Slot::refresh_token(mid), r)),
                application_token: cipher.seal(Slot::application_token(mid), &new_app_token),
                expires_in: expires,
                received_at: now,
            };
            let job = kept.to_new_job(Some(&portal.member_id), None, now);
            let mid = portal.member_id.clone();
            let queued = shared
                .db
                .run(move |c| {
                    crate::db::write_tx(c, |c| {
                        if queue::count_pending(c, &mid, ApplyAppUpdate::KIND)?
                            >= MAX_PENDING_UPDATES
                        {
                            return Ok(false);
                        }
                        queue::enqueue(c, &job, now)
                    })
                })
                .await?;
            if !queued {
                return Err(AppError::Unavailable(
                    "too many updates wait for verification; try again later".into(),
                ));
            }
            shared.notify.notify_one();
            tracing::warn!(reason = %why, "ONAPPUPDATE kept: it cannot be verified now; a job verifies it when the OAuth server answers");
            Ok(HttpResponse::Accepted()
                .json(serde_json::json!({ "status": "kept for verification" })))
        }
        Err(e) => Err(e),
    }
}

/// ONAPPTEST, sent by Bitrix24 because the self-check called `event.test`: its arrival proves
/// that Bitrix24 reaches the app's public URL. It counts only when it verifies: the application
/// token matches the stored one, or, for a portal that has none yet (its installer POST lacked
/// `APPLICATION_TOKEN`), its access token is a portal administrator's (as for ONAPPINSTALL), and
/// then its application token is stored.
async fn on_app_test(
    ctx: &Context,
    portal: &Portal,
    auth: &AuthBlock,
    token_ok: bool,
) -> Result<HttpResponse, AppError> {
    let shared = &ctx.shared;
    let (cipher, mid) = (shared.cipher.clone(), portal.member_id.clone());
    let store_token = if token_ok {
        None
    } else if portal.application_token.is_none() && portal.is_active() {
        let token = auth.access_token.as_deref().filter(|t| !t.is_empty());
        let app_token = auth.application_token.clone().filter(|t| !t.is_empty());
        let (Some(token), Some(app_token)) = (token, app_token) else {
            return Err(AppError::Unauthorized(
                "ONAPPTEST cannot be verified without auth[access_token] and auth[application_token]"
                    .into(),
            ));
        };
        super::auth::verify_admin(ctx, token, &mid, "ONAPPTEST").await?;
        Some(app_token)
    } else {
        return Err(AppError::Unauthorized("wrong application token".into()));
    };
    let now = shared.clock.now();
    let stored = store_token.is_some();
    shared
        .db
        .run(move |c| {
            crate::db::write_tx(c, |c| -> QueryResult<()> {
                if let Some(t) = &store_token {
                    store::set_application_token_if_missing(c, &cipher, &mid, t, now)?;
                }
                store::mark_app_reached(c, &mid, now)?;
                Ok(())
            })
        })
        .await?;
    tracing::info!(
        application_token_stored = stored,
        "ONAPPTEST verified: Bitrix24 reaches the app"
    );
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "reached" })))
}

#[cfg(test)]
mod props;
