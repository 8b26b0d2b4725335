//! The app's page inside Bitrix24 (placement DEFAULT; also the robot's settings link): status,
//! settings and the call log.
//!
//! - `POST /b24/app` — opened by the user's browser with the iframe fields; `AUTH_ID` is verified
//!   with the OAuth server (`app.info`) and `user.admin` decides between the settings form and a
//!   read-only status page. The page carries a signed [`PageToken`] instead of a cookie.
//! - `POST /b24/app/settings` — the form's plain HTML POST: save (or `action=check` without JS);
//!   renders the page again with the errors next to the fields or a "saved" notice.
//! - `POST /b24/app/mango/check`, `POST /b24/app/mango/options` — JSON for `static/settings.js`:
//!   test the Mango keys, and fill the group and line pickers ([`mango_check`]).
//!
//! Every later request proves itself with the page token (form field `page_token` or header
//! `X-Page-Token`); the portal is taken from the token, never from the form, so a token of one
//! portal cannot touch another. The Mango salt is write-only: no response ever contains it.
//!
//! - this file: the handlers of the page and of the form, and the page token check;
//! - [`view`]: the templates and how a portal's state is printed;
//! - [`form`]: the settings form's validation ([`hours_form`]: its working-hours part);
//!   [`page_token`]: the signed page token, checked on
//!   every later request by [`authorise`](mod@authorise);
//! - [`mango_check`]: "Check connection" and "Load from Mango", throttled.

pub mod authorise;
pub mod form;
pub mod hours_form;
pub mod mango_check;
pub mod page_token;
pub mod retry_form;
pub mod speed;
pub mod view;

pub use mango_check::{check_mango, mango_options};

use diesel::QueryResult;
use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use self::authorise::{authorise, field};
use self::form::{validate, SettingsInput};
use self::mango_check::{run_check, with_retry_after};
use self::page_token::PageToken;
use self::view::{build_page, render, CallLog, CheckView, Reply, LOG_ROWS};
use super::auth::{is_admin, verify};
use super::client_addr::limit_address;
use super::page::error_html;
use super::request::{lang_of, parse_form, token_lifetime};
use crate::callback::{history, speed as speed_report, store as callback_store};
use crate::context::Context;
use crate::error::refuse;
use crate::error::AppError;
use crate::portal::{store, Lang, Portal, PortalSettings};

#[tracing::instrument(name = "app_page", skip_all, fields(portal))]
pub async fn show_app(
    req: HttpRequest,
    body: web::Bytes,
    ctx: web::Data<Context>,
) -> Result<HttpResponse, AppError> {
    // Limited per address before the `app.info` below costs anything.
    if let Some(refused) = limit_address(&req, &ctx) {
        return Ok(refused);
    }
    let form: HashMap<String, String> = parse_form(&body)?;
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let member_id = get("member_id")
        .ok_or_else(|| AppError::BadRequest("member_id is missing".into()))?
        .to_owned();
    tracing::Span::current().record("portal", member_id.as_str());
    let lang = lang_of(&req);
    let Some(auth_id) = get("AUTH_ID").map(str::to_owned) else {
        return Ok(refuse(
            error_html(
                StatusCode::UNAUTHORIZED,
                lang,
                lang.t(
                    "Нет данных авторизации Битрикс24. Откройте приложение из портала.",
                    "Bitrix24 authorisation is missing. Please open the app from your portal.",
                ),
            ),
            "app page without AUTH_ID",
        ));
    };
    let verified = match verify(&ctx, &auth_id, &member_id).await {
        Ok(v) => v,
        // An unverified AUTH_ID sees nothing of the portal; the reason goes to the log only.
        Err(e @ (AppError::Unauthorized(_) | AppError::Forbidden(_))) => {
            return Ok(refuse(
                error_html(
                    StatusCode::UNAUTHORIZED,
                    lang,
                    lang.t(
                        "Битрикс24 не подтвердил авторизацию. Откройте приложение из портала заново.",
                        "Bitrix24 did not confirm the authorisation. Please reopen the app from your portal.",
                    ),
                ),
                e.to_string(),
            ))
        }
        Err(e) => return Err(e),
    };
    let admin = is_admin(&ctx, &verified, &auth_id).await?;

    let now = ctx.shared.clock.now();
    let Some((portal, settings, log)) = load_view(&ctx, &member_id, admin).await? else {
        return Ok(not_installed(lang));
    };
    if admin {
        crate::portal::upkeep::self_check_if_stale(&ctx, &portal).await;
    }
    // An administrator opening the app hands us a fresh token chain, which heals "needs
    // re-authorisation". Only an administrator's: the stored chain reads deals and contacts, and
    // a restricted user's chain could not.
    let mut reauth = portal.needs_reauth;
    if reauth && admin {
        if let Some(refresh) = get("REFRESH_ID") {
            let (cipher, mid, access, refresh) = (
                ctx.shared.cipher.clone(),
                member_id.clone(),
                auth_id.clone(),
                refresh.to_owned(),
            );
            let expires = token_lifetime("AUTH_EXPIRES", get("AUTH_EXPIRES"))?.unwrap_or(3600);
            ctx.shared
                .db
                .run(move |c| {
                    store::store_tokens(c, &cipher, &mid, &access, &refresh, expires, now)
                })
                .await?;
            tracing::info!("portal re-authorised by an administrator opening the app");
            reauth = false;
        }
    }
    let token = PageToken::new(
        &member_id,
        verified.user_id.unwrap_or(0),
        admin,
        ctx.shared.clock.now_utc().timestamp(),
    );
    tracing::info!(admin, "app page opened");
    let mut page = build_page(&ctx, lang, &token, &portal, &settings, log);
    page.reauth = reauth;
    render(StatusCode::OK, &portal.domain, &page)
}

/// The page for a portal we hold no active installation of (never installed, or uninstalled).
fn not_installed(lang: Lang) -> HttpResponse {
    error_html(
        StatusCode::NOT_FOUND,
        lang,
        lang.t(
            "Приложение не установлено на этом портале",
            "The app is not installed on this portal",
        ),
    )
}

/// The portal (installed), its settings and its call log, or `None` for an unknown portal. The
/// speed-to-lead report is read for an administrator only: nobody else sees it.
async fn load_view(
    ctx: &Context,
    member_id: &str,
    admin: bool,
) -> Result<Option<(Portal, PortalSettings, CallLog)>, AppError> {
    let (mid, now) = (member_id.to_owned(), ctx.shared.clock.now());
    let (portal, settings, log) = ctx
        .shared
        .db
        .run(move |c| -> QueryResult<_> {
            let settings = store::settings_or_default(c, &mid, now)?;
            let callbacks = callback_store::latest(c, &mid, LOG_ROWS)?;
            let ids: Vec<String> = callbacks.iter().map(|cb| cb.id.clone()).collect();
            let log = CallLog {
                attempts: history::attempts_of(c, &mid, &ids)?,
                callbacks,
                speed: if admin {
                    Some(speed_report::load(c, &mid, &settings.timezone, now)?)
                } else {
                    None
                },
            };
            Ok((store::find(c, &mid)?, settings, log))
        })
        .await?;
    Ok(portal.filter(Portal::is_active).map(|p| (p, settings, log)))
}

/// `POST /b24/app/settings`: saves (or, with `action=check`, tests the keys) and renders the page.
#[tracing::instrument(name = "app_save", skip_all, fields(portal))]
pub async fn save_settings(
    req: HttpRequest,
    body: web::Bytes,
    ctx: web::Data<Context>,
) -> Result<HttpResponse, AppError> {
    let lang = lang_of(&req);
    let auth = match authorise(&req, &body, &ctx, lang, Reply::Html, true) {
        Ok(a) => a,
        Err(refused) => return Ok(*refused),
    };
    let Some((portal, stored, log)) =
        load_view(&ctx, &auth.token.member_id, auth.token.admin).await?
    else {
        return Ok(not_installed(lang));
    };
    let input = SettingsInput::from_form(&auth.form);
    let salt = field(&auth.form, "mango_api_salt").to_owned();

    if field(&auth.form, "action") == "check" {
        // The no-JS path of "Check connection": test the typed keys, save nothing.
        let check = run_check(&ctx, lang, &stored, &input.mango_api_key, &salt).await?;
        let mut page = build_page(&ctx, lang, &auth.token, &portal, &stored, log);
        page.form = input;
        page.check = Some(CheckView {
            ok: check.ok,
            message: check.message,
        });
        if check.recorded {
            page.mango_checked = true;
            page.mango_error = check.error;
        }
        if let Some(secs) = check.throttled {
            let mut r = render(StatusCode::TOO_MANY_REQUESTS, &portal.domain, &page)?;
            with_retry_after(&mut r, secs);
            return Ok(r);
        }
        return render(StatusCode::OK, &portal.domain, &page);
    }

    match validate(&input, &salt, &stored, lang) {
        Err(errors) => {
            tracing::warn!(fields = ?errors.names(), "settings not saved: invalid fields");
            let mut page = build_page(&ctx, lang, &auth.token, &portal, &stored, log);
            page.form = input;
            page.errors = *errors;
            page.alert = Some(
                lang.t(
                    "Настройки не сохранены: исправьте отмеченные поля.",
                    "Settings were not saved: please correct the marked fields.",
                )
                .to_owned(),
            );
            render(StatusCode::BAD_REQUEST, &portal.domain, &page)
        }
        Ok(valid) => {
            let row = valid.apply(stored, &ctx.shared.cipher, ctx.shared.clock.now());
            let to_save = row.clone();
            ctx.shared
                .db
                .run(move |c| store::save_settings(c, &to_save))
                .await?;
            tracing::info!(user = auth.token.user_id, "settings saved");
            let mut page = build_page(&ctx, lang, &auth.token, &portal, &row, log);
            page.notice = Some(
                lang.t(
                    "Настройки сохранены. Они действуют со следующего запуска робота.",
                    "Settings saved. They apply from the robot's next run.",
                )
                .to_owned(),
            );
            render(StatusCode::OK, &portal.domain, &page)
        }
    }
}
