//! `POST /b24/install`: the installer page (a user's browser POST with `AUTH_ID`) and the
//! ONAPPINSTALL event (a server POST with `event=ONAPPINSTALL`), told apart by the body.

use diesel::QueryResult;
use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;

use super::auth::{is_admin, verify, verify_admin};
use super::client_addr::limit_address;
use super::request::{lang_of, parse_form, token_lifetime, AuthBlock};
use crate::bitrix::oauth::VerifiedAuth;
use crate::context::Context;
use crate::error::AppError;
use crate::jobs::{queue, Job};
use crate::portal::robot::{bind_events, register_robot};
use crate::portal::store::{self, InstallData};
use crate::portal::upkeep::{enqueue_self_check, RegisterRobot, SELF_CHECK_AFTER_INSTALL};
use crate::portal::Lang;

#[derive(Template)]
#[template(path = "install.html")]
pub struct InstallPage {
    pub lang: Lang,
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Deserialize)]
struct EventForm {
    event: Option<String>,
    auth: Option<AuthBlock>,
}

#[tracing::instrument(name = "install", skip_all, fields(portal))]
pub async fn install_app(
    req: HttpRequest,
    body: web::Bytes,
    ctx: web::Data<Context>,
) -> Result<HttpResponse, AppError> {
    let ev: EventForm = parse_form(&body)?;
    if ev
        .event
        .as_deref()
        .is_some_and(|e| e.eq_ignore_ascii_case("ONAPPINSTALL"))
    {
        return on_app_install(ev.auth.unwrap_or_default(), &ctx).await;
    }
    // The installer form is a browser POST: limited per address before `app.info` costs anything.
    if let Some(refused) = limit_address(&req, &ctx) {
        return Ok(refused);
    }
    let form: HashMap<String, String> = parse_form(&body)?;
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let member_id = get("member_id")
        .ok_or_else(|| AppError::BadRequest("member_id is missing".into()))?
        .to_owned();
    tracing::Span::current().record("portal", member_id.as_str());
    let auth_id = get("AUTH_ID")
        .ok_or_else(|| AppError::Unauthorized("AUTH_ID is missing".into()))?
        .to_owned();
    let lang = lang_of(&req);
    // Checked before anything costs a request to the OAuth server.
    let expires_in = token_lifetime("AUTH_EXPIRES", get("AUTH_EXPIRES"))?;
    let verified = verify(&ctx, &auth_id, &member_id).await?;

    let is_admin = is_admin(&ctx, &verified, &auth_id).await?;
    if !is_admin {
        return Err(AppError::Forbidden(
            lang.t(
                "Установить приложение может только администратор портала",
                "Only a portal administrator can install the app",
            )
            .into(),
        ));
    }

    let data = install_data(
        &ctx,
        &member_id,
        &verified,
        get("SERVER_ENDPOINT").map(str::to_owned),
        Tokens {
            access: auth_id,
            refresh: get("REFRESH_ID").map(str::to_owned),
            expires_in,
            application: get("APPLICATION_TOKEN").map(str::to_owned),
        },
        Some(lang.code().to_owned()),
    );
    let (cipher, now) = (ctx.shared.cipher.clone(), ctx.shared.clock.now());
    ctx.shared
        .db
        .run(move |c| crate::db::write_tx(c, |c| store::upsert_installed(c, &cipher, &data, now)))
        .await?;
    tracing::info!(domain = %verified.domain, "portal stored from the installer");

    let url = &ctx.shared.settings.public_url;
    let steps = async {
        register_robot(&ctx.bitrix(), &member_id, url).await?;
        bind_events(&ctx.bitrix(), &member_id, url).await
    };
    let page = match steps.await {
        Ok(()) => {
            // The self-check waits until the page below has called installFinish(): Bitrix24
            // delivers no events before that.
            let (mid, now) = (member_id.clone(), ctx.shared.clock.now());
            ctx.shared
                .db
                .run(move |c| {
                    enqueue_self_check(c, &mid, None, now + SELF_CHECK_AFTER_INSTALL, now)
                })
                .await?;
            tracing::info!("robot registered and events bound; installer finishes");
            InstallPage {
                lang,
                ok: true,
                message: String::new(),
            }
        }
        Err(e) => {
            // The portal's own words (an error code, a description, a URL) stay in the log.
            tracing::error!(error = %e, "install step failed; the installer can be opened again");
            InstallPage {
                lang,
                ok: false,
                message: lang
                    .t(
                        "Портал не выполнил шаг установки. Подробности — в журнале приложения.",
                        "The portal did not complete an installation step. The details are in the application log.",
                    )
                    .to_owned(),
            }
        }
    };
    let status = if page.ok {
        actix_web::http::StatusCode::OK
    } else {
        actix_web::http::StatusCode::BAD_GATEWAY
    };
    let html = page.render().map_err(|e| AppError::Internal(e.into()))?;
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(html))
}

/// The tokens an install carries: from the installer's form or from ONAPPINSTALL's `auth[...]`.
struct Tokens {
    access: String,
    refresh: Option<String>,
    expires_in: Option<i64>,
    /// `None` keeps the stored one (the installer POST may not carry it).
    application: Option<String>,
}

/// What an install stores, built one way for the installer and ONAPPINSTALL: the portal's domain,
/// endpoint, scope and status come from Bitrix24's verified `app.info` answer, never from the
/// request; the REST endpoint is the request's, or our OAuth server's `/rest/` when it names none.
fn install_data(
    ctx: &Context,
    member_id: &str,
    verified: &VerifiedAuth,
    server_endpoint: Option<String>,
    tokens: Tokens,
    lang: Option<String>,
) -> InstallData {
    InstallData {
        member_id: member_id.to_owned(),
        domain: verified.domain.clone(),
        client_endpoint: verified.client_endpoint.clone(),
        server_endpoint: server_endpoint
            .unwrap_or_else(|| format!("{}/rest/", ctx.shared.settings.b24_oauth_url)),
        access_token: Some(tokens.access),
        refresh_token: tokens.refresh,
        expires_in: tokens.expires_in,
        application_token: tokens.application,
        scope: verified.scope.clone(),
        status: verified.status.clone(),
        lang,
    }
}

/// ONAPPINSTALL: nothing may be stored yet, so its access token is verified through `app.info`,
/// and must be a portal administrator's (the installing admin's), before its application token
/// is trusted and stored. The installer binds this event, so it also arrives after
/// `installFinish()` for portals whose installer POST lacked `APPLICATION_TOKEN`.
async fn on_app_install(auth: AuthBlock, ctx: &Context) -> Result<HttpResponse, AppError> {
    let member_id = auth
        .member_id
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| AppError::BadRequest("auth[member_id] is missing".into()))?;
    tracing::Span::current().record("portal", member_id.as_str());
    let token = auth
        .access_token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AppError::Unauthorized("auth[access_token] is missing".into()))?;
    let app_token = auth
        .application_token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AppError::BadRequest("auth[application_token] is missing".into()))?;
    let expires_in = auth.lifetime()?;
    let verified = verify_admin(ctx, &token, &member_id, "ONAPPINSTALL").await?;
    let data = install_data(
        ctx,
        &member_id,
        &verified,
        auth.server_endpoint,
        Tokens {
            access: token,
            refresh: auth.refresh_token,
            expires_in,
            application: Some(app_token),
        },
        None,
    );
    let (cipher, now) = (ctx.shared.cipher.clone(), ctx.shared.clock.now());
    ctx.shared
        .db
        .run(move |c| {
            crate::db::write_tx(c, |c| -> QueryResult<()> {
                store::upsert_installed(c, &cipher, &data, now)?;
                // Registering is idempotent; the installer page may do it first, this makes sure.
                let job = RegisterRobot {
                    member_id: data.member_id.clone(),
                }
                .to_new_job(Some(&data.member_id), None, now);
                queue::enqueue(c, &job, now)?;
                Ok(())
            })
        })
        .await?;
    ctx.shared.notify.notify_one();
    tracing::info!("ONAPPINSTALL verified; portal and application token stored");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "installed" })))
}
