//! `POST /b24/app`: the app's page inside Bitrix24 (placement DEFAULT), opened by a browser POST
//! whose `AUTH_ID` is verified with the OAuth server before anything is shown.

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;

use super::parse_form;
use crate::callback::store as callback_store;
use crate::context::Context;
use crate::error::AppError;
use crate::portal::{store, Lang};

pub struct LogRow {
    pub time: String,
    pub deal_id: String,
    pub deal_url: String,
    pub phone: String,
    pub group: String,
    pub status: String,
    pub error: String,
}

#[derive(Template)]
#[template(path = "app.html")]
pub struct AppPage {
    pub ru: bool,
    pub domain: String,
    pub reauth: bool,
    pub mango_configured: bool,
    pub mango_error: Option<String>,
    pub rows: Vec<LogRow>,
}

#[tracing::instrument(name = "app_page", skip_all, fields(portal))]
pub async fn show_app(
    req: HttpRequest,
    body: web::Bytes,
    ctx: web::Data<Context>,
) -> Result<HttpResponse, AppError> {
    let form: HashMap<String, String> = parse_form(&body)?;
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let member_id = get("member_id")
        .ok_or_else(|| AppError::BadRequest("member_id is missing".into()))?
        .to_owned();
    tracing::Span::current().record("portal", member_id.as_str());
    let auth_id = get("AUTH_ID")
        .ok_or_else(|| AppError::Unauthorized("AUTH_ID is missing".into()))?
        .to_owned();
    let q = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let lang = Lang::parse(q.get("LANG").map(String::as_str).unwrap_or("ru"));
    let verified = super::install::verify(&ctx, &req, &auth_id, &member_id).await?;

    let (mid, now) = (member_id.clone(), ctx.shared.clock.now());
    let (portal, settings, log) = ctx
        .shared
        .db
        .run(move |c| {
            Ok((
                store::find(c, &mid)?,
                store::settings_or_default(c, &mid, now)?,
                callback_store::latest(c, &mid, 50)?,
            ))
        })
        .await?;
    let Some(portal) = portal.filter(|p| p.is_active()) else {
        return Err(AppError::NotFound(
            lang.pick(
                "Приложение не установлено на этом портале",
                "The app is not installed on this portal",
            )
            .into(),
        ));
    };
    // An admin opening the app hands us a fresh token chain: it heals "needs re-authorisation".
    let mut reauth = portal.needs_reauth;
    if reauth {
        if let Some(refresh) = get("REFRESH_ID") {
            let (cipher, mid, access, refresh) = (
                ctx.shared.cipher.clone(),
                member_id.clone(),
                auth_id.clone(),
                refresh.to_owned(),
            );
            let expires = get("AUTH_EXPIRES")
                .and_then(|v| v.parse().ok())
                .unwrap_or(3600);
            ctx.shared
                .db
                .run(move |c| {
                    Ok(store::store_tokens(
                        c, &cipher, &mid, &access, &refresh, expires, now,
                    )?)
                })
                .await?;
            tracing::info!("portal re-authorised by a user opening the app");
            reauth = false;
        }
    }
    let rows = log
        .into_iter()
        .map(|cb| LogRow {
            time: cb.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            deal_url: format!("https://{}/crm/deal/details/{}/", portal.domain, cb.deal_id),
            deal_id: cb.deal_id,
            phone: cb
                .phone
                .as_deref()
                .map(crate::phone::mask)
                .unwrap_or_default(),
            group: cb.group_extension.unwrap_or_default(),
            status: cb.status,
            error: cb.error.unwrap_or_default(),
        })
        .collect();
    let page = AppPage {
        ru: lang == Lang::Ru,
        domain: verified.domain.clone(),
        reauth,
        mango_configured: settings.mango_api_key.is_some() && settings.mango_api_salt.is_some(),
        mango_error: settings.mango_last_error,
        rows,
    };
    let html = page.render().map_err(|e| AppError::Internal(e.into()))?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // The page lives in the portal's iframe: allow exactly that portal to frame it.
        .insert_header((
            "Content-Security-Policy",
            format!(
                "frame-ancestors https://{} http://{}",
                verified.domain, verified.domain
            ),
        ))
        .body(html))
}
