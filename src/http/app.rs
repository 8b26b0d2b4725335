//! The app's page inside Bitrix24 (placement DEFAULT; also the robot's settings link): status,
//! settings and the call log.
//!
//! - `POST /b24/app` — opened by the user's browser with the iframe fields; `AUTH_ID` is verified
//!   with the OAuth server (`app.info`) and `user.admin` decides between the settings form and a
//!   read-only status page. The page carries a signed [`PageToken`] instead of a cookie.
//! - `POST /b24/app/settings` — the form's plain HTML POST: save (or `action=check` without JS);
//!   renders the page again with the errors next to the fields or a "saved" notice.
//! - `POST /b24/app/mango/check`, `POST /b24/app/mango/options` — JSON for `static/settings.js`:
//!   test the Mango keys, and fill the group and line pickers.
//!
//! Every later request proves itself with the page token (form field `page_token` or header
//! `X-Page-Token`); the portal is taken from the token, never from the form, so a token of one
//! portal cannot touch another. The Mango salt is write-only: no response ever contains it.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde_json::json;

use super::lang_of;
use super::settings::{
    validate, FieldErrors, PageToken, SettingsInput, PAGE_TOKEN_FIELD, PAGE_TOKEN_HEADER,
};
use super::{parse_form, peer};
use crate::callback::store as callback_store;
use crate::callback::{status, Callback};
use crate::context::Context;
use crate::error::AppError;
use crate::mango::{describe_code, Credentials, MangoError};
use crate::portal::throttle::{self, Wait};
use crate::portal::upkeep::SELF_CHECK_ANSWER_WITHIN;
use crate::portal::{store, Lang, Portal, PortalSettings, Reach};

/// How many callbacks the call log shows.
const LOG_ROWS: i64 = 50;

/// One line of the call log, ready to print (the phone already masked).
pub struct LogRow {
    pub time: String,
    pub deal_id: String,
    pub deal_url: String,
    pub phone: String,
    pub group: String,
    pub status: String,
    pub status_class: &'static str,
    pub code: String,
    pub error: String,
    pub outcome: String,
}

/// The result of "Check connection", shown under the keys.
pub struct CheckView {
    pub ok: bool,
    pub message: String,
}

#[derive(Template)]
#[template(path = "app.html")]
pub struct AppPage {
    pub ru: bool,
    /// `ru` or `en`: carried in the URLs of later requests so they answer in the same language.
    pub lang: &'static str,
    pub domain: String,
    pub admin: bool,
    pub page_token: String,
    pub reauth: bool,
    pub mango_configured: bool,
    pub mango_checked: bool,
    pub mango_error: Option<String>,
    pub form: SettingsInput,
    /// Only whether a salt is stored; the salt itself never reaches the template.
    pub salt_set: bool,
    pub errors: FieldErrors,
    pub notice: Option<String>,
    pub alert: Option<String>,
    pub check: Option<CheckView>,
    /// What to paste into Mango's "external system" field.
    pub events_url: String,
    /// Whether an application token is stored (robot calls and events are refused without one).
    pub app_token_received: bool,
    /// "Bitrix24 reaches the app": the self-check's answer in the page's language, and its badge.
    pub reach: String,
    pub reach_class: &'static str,
    pub rows: Vec<LogRow>,
}

impl AppPage {
    /// Picks the string in the page's language (used by the template for every text).
    pub fn tr<'a>(&self, ru: &'a str, en: &'a str) -> &'a str {
        if self.ru {
            ru
        } else {
            en
        }
    }
}

#[derive(Template)]
#[template(path = "app_error.html")]
pub struct ErrorPage<'a> {
    pub ru: bool,
    pub title: &'a str,
    pub message: &'a str,
}

/// `frame-ancestors` names exactly the portal that may frame the page (never X-Frame-Options,
/// which cannot name a third-party origin); the rest keeps the page to its own scripts and styles.
fn csp(domain: &str) -> String {
    format!(
        "default-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; \
         frame-ancestors https://{domain}"
    )
}

fn html(status: StatusCode, domain: Option<&str>, body: String) -> HttpResponse {
    let mut r = HttpResponse::build(status);
    r.content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"));
    if let Some(d) = domain {
        r.insert_header(("Content-Security-Policy", csp(d)));
    }
    r.body(body)
}

pub(super) fn error_html(status: StatusCode, lang: Lang, message: &str) -> HttpResponse {
    let page = ErrorPage {
        ru: lang == Lang::Ru,
        title: lang.pick("Mango Office: обратный звонок", "Mango Office callback"),
        message,
    };
    match page.render() {
        Ok(body) => html(status, None, body),
        Err(e) => actix_web::ResponseError::error_response(&AppError::Internal(e.into())),
    }
}

fn json_reply(status: StatusCode, domain: Option<&str>, body: serde_json::Value) -> HttpResponse {
    let mut r = HttpResponse::build(status);
    r.insert_header(("Cache-Control", "no-store"));
    if let Some(d) = domain {
        r.insert_header(("Content-Security-Policy", csp(d)));
    }
    r.json(body)
}

/// What a refused later request looks like: an HTML page for the form, JSON for the scripts.
#[derive(Clone, Copy)]
enum Reply {
    Html,
    Json,
}

impl Reply {
    fn refuse(self, status: StatusCode, lang: Lang, message: &str) -> HttpResponse {
        match self {
            Reply::Html => error_html(status, lang, message),
            Reply::Json => json_reply(status, None, json!({ "ok": false, "error": message })),
        }
    }
}

#[tracing::instrument(name = "app_page", skip_all, fields(portal))]
pub async fn show_app(
    req: HttpRequest,
    body: web::Bytes,
    ctx: web::Data<Context>,
) -> Result<HttpResponse, AppError> {
    // Limited per address before the `app.info` below costs anything.
    if let Some(refused) = super::limit_address(&req, &ctx) {
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
        tracing::warn!(peer = %peer(&req), "app page refused: no AUTH_ID");
        return Ok(error_html(
            StatusCode::UNAUTHORIZED,
            lang,
            lang.pick(
                "Нет данных авторизации Битрикс24. Откройте приложение из портала.",
                "Bitrix24 authorisation is missing. Please open the app from your portal.",
            ),
        ));
    };
    let verified = match super::install::verify(&ctx, &req, &auth_id, &member_id).await {
        Ok(v) => v,
        // An unverified AUTH_ID sees nothing of the portal; the reason is already logged.
        Err(AppError::Unauthorized(_)) | Err(AppError::Forbidden(_)) => {
            return Ok(error_html(
                StatusCode::UNAUTHORIZED,
                lang,
                lang.pick(
                    "Битрикс24 не подтвердил авторизацию. Откройте приложение из портала заново.",
                    "Bitrix24 did not confirm the authorisation. Please reopen the app from your portal.",
                ),
            ))
        }
        Err(e) => return Err(e),
    };
    let admin = super::install::is_admin(&ctx, &verified, &auth_id).await?;

    let now = ctx.shared.clock.now();
    let Some((portal, settings, log)) = load_view(&ctx, &member_id).await? else {
        return Ok(error_html(
            StatusCode::NOT_FOUND,
            lang,
            lang.pick(
                "Приложение не установлено на этом портале",
                "The app is not installed on this portal",
            ),
        ));
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
            let expires =
                super::token_lifetime("AUTH_EXPIRES", get("AUTH_EXPIRES"))?.unwrap_or(3600);
            ctx.shared
                .db
                .run(move |c| {
                    Ok(store::store_tokens(
                        c, &cipher, &mid, &access, &refresh, expires, now,
                    )?)
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

/// The portal (installed), its settings and its call log, or `None` for an unknown portal.
async fn load_view(
    ctx: &Context,
    member_id: &str,
) -> Result<Option<(Portal, PortalSettings, Vec<Callback>)>, AppError> {
    let (mid, now) = (member_id.to_owned(), ctx.shared.clock.now());
    let (portal, settings, log) = ctx
        .shared
        .db
        .run(move |c| {
            Ok((
                store::find(c, &mid)?,
                store::settings_or_default(c, &mid, now)?,
                callback_store::latest(c, &mid, LOG_ROWS)?,
            ))
        })
        .await?;
    Ok(portal.filter(Portal::is_active).map(|p| (p, settings, log)))
}

fn build_page(
    ctx: &Context,
    lang: Lang,
    token: &PageToken,
    portal: &Portal,
    settings: &PortalSettings,
    log: Vec<Callback>,
) -> AppPage {
    let ru = lang == Lang::Ru;
    AppPage {
        ru,
        lang: lang.code(),
        domain: portal.domain.clone(),
        admin: token.admin,
        page_token: token.encode(&ctx.shared.cipher),
        reauth: portal.needs_reauth,
        mango_configured: settings.mango_api_key.is_some() && settings.mango_api_salt.is_some(),
        mango_checked: settings.mango_checked_at.is_some(),
        mango_error: settings.mango_last_error.clone(),
        form: SettingsInput::from_settings(settings),
        salt_set: settings.mango_api_salt.is_some(),
        errors: FieldErrors::default(),
        notice: None,
        alert: None,
        check: None,
        // Mango posts call events to {this}/events/call, /events/summary and
        // /result/callback_group; the receiving routes arrive with the call-events issue.
        events_url: format!("{}/mango", ctx.shared.settings.public_url),
        app_token_received: portal.application_token.is_some(),
        reach: reach_text(portal, lang, ctx.shared.clock.now()),
        reach_class: match portal.reach(ctx.shared.clock.now(), SELF_CHECK_ANSWER_WITHIN) {
            Reach::Yes(_) => "good",
            Reach::No(_) => "bad",
            Reach::Waiting(_) => "wait",
            Reach::NotChecked => "muted",
        },
        // Deal links and phones are for administrators; others see health and settings only.
        rows: if token.admin {
            log.into_iter()
                .map(|cb| log_row(cb, &portal.domain, lang))
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// "yes (checked at …)", "no (checked at …)", "checking…" or "not checked yet".
fn reach_text(portal: &Portal, lang: Lang, now: chrono::NaiveDateTime) -> String {
    let t = |at: chrono::NaiveDateTime| at.format("%Y-%m-%d %H:%M UTC").to_string();
    match portal.reach(now, SELF_CHECK_ANSWER_WITHIN) {
        Reach::NotChecked => lang.pick("ещё не проверялось", "not checked yet").to_owned(),
        Reach::Waiting(sent) => format!(
            "{} {})",
            lang.pick("проверяется (запрос отправлен", "checking (test sent at"),
            t(sent)
        ),
        Reach::Yes(at) => format!("{} {})", lang.pick("да (проверено", "yes (checked at"), t(at)),
        Reach::No(sent) => format!(
            "{} {}; {})",
            lang.pick("нет (проверено", "no (checked at"),
            t(sent),
            lang.pick(
                "тестовое событие не пришло: проверьте, что APP_PUBLIC_URL доступен из интернета",
                "the test event did not arrive: check that APP_PUBLIC_URL is reachable from the internet"
            )
        ),
    }
}

fn log_row(cb: Callback, domain: &str, lang: Lang) -> LogRow {
    let (label, class) = match cb.status.as_str() {
        status::QUEUED => (lang.pick("в очереди", "queued"), "wait"),
        status::CALLING => (lang.pick("звоним", "calling"), "wait"),
        status::STARTED => (lang.pick("звонок начат", "call started"), "good"),
        status::DUPLICATE => (lang.pick("повтор, пропущен", "duplicate, skipped"), "muted"),
        status::NO_PHONE => (lang.pick("нет телефона", "no phone"), "bad"),
        status::FAILED => (lang.pick("ошибка", "failed"), "bad"),
        other => (other, "muted"),
    };
    let code = cb
        .mango_code
        .and_then(|c| u32::try_from(c).ok())
        .map(|c| {
            let (ru, en) = describe_code(c);
            format!("{c} — {}", lang.pick(ru, en))
        })
        .unwrap_or_default();
    LogRow {
        time: cb.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        deal_url: format!("https://{domain}/crm/deal/details/{}/", cb.deal_id),
        deal_id: cb.deal_id,
        phone: cb
            .phone
            .as_deref()
            .map(crate::phone::mask)
            .unwrap_or_default(),
        group: cb.group_extension.unwrap_or_default(),
        status: label.to_owned(),
        status_class: class,
        code,
        error: cb.error.unwrap_or_default(),
        outcome: cb.outcome.unwrap_or_default(),
    }
}

fn render(status: StatusCode, domain: &str, page: &AppPage) -> Result<HttpResponse, AppError> {
    let body = page.render().map_err(|e| AppError::Internal(e.into()))?;
    Ok(html(status, Some(domain), body))
}

/// A later request, authorised: the token, the portal it names, and the parsed form.
struct Authorised {
    token: PageToken,
    form: HashMap<String, String>,
}

/// Checks the page token (header first, then form field) and, for changes, the admin flag.
fn authorise(
    req: &HttpRequest,
    body: &[u8],
    ctx: &Context,
    lang: Lang,
    reply: Reply,
    need_admin: bool,
) -> Result<Authorised, Box<HttpResponse>> {
    let form: HashMap<String, String> = parse_form(body)
        .map_err(|e| Box::new(reply.refuse(StatusCode::BAD_REQUEST, lang, &e.to_string())))?;
    let raw = req
        .headers()
        .get(PAGE_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| form.get(PAGE_TOKEN_FIELD).cloned())
        .unwrap_or_default();
    let now = ctx.shared.clock.now_utc().timestamp();
    let token = PageToken::decode(&ctx.shared.cipher, &raw, now).map_err(|e| {
        tracing::warn!(peer = %peer(req), path = req.path(), error = %e, "app request refused: bad page token");
        Box::new(reply.refuse(StatusCode::UNAUTHORIZED, lang, e.message(lang)))
    })?;
    tracing::Span::current().record("portal", token.member_id.as_str());
    if need_admin && !token.admin {
        tracing::warn!(peer = %peer(req), path = req.path(), user = token.user_id, "app request refused: not a portal administrator");
        return Err(Box::new(reply.refuse(
            StatusCode::FORBIDDEN,
            lang,
            lang.pick(
                "Изменять настройки может только администратор портала.",
                "Only a portal administrator can change the settings.",
            ),
        )));
    }
    Ok(Authorised { token, form })
}

fn field<'a>(form: &'a HashMap<String, String>, name: &str) -> &'a str {
    form.get(name).map(|v| v.trim()).unwrap_or("")
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
    let Some((portal, stored, log)) = load_view(&ctx, &auth.token.member_id).await? else {
        return Ok(error_html(
            StatusCode::NOT_FOUND,
            lang,
            lang.pick(
                "Приложение не установлено на этом портале",
                "The app is not installed on this portal",
            ),
        ));
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
                lang.pick(
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
                .run(move |c| Ok(store::save_settings(c, &to_save)?))
                .await?;
            tracing::info!(user = auth.token.user_id, "settings saved");
            let mut page = build_page(&ctx, lang, &auth.token, &portal, &row, log);
            page.notice = Some(
                lang.pick(
                    "Настройки сохранены. Они действуют со следующего запуска робота.",
                    "Settings saved. They apply from the robot's next run.",
                )
                .to_owned(),
            );
            render(StatusCode::OK, &portal.domain, &page)
        }
    }
}

/// What a connection check found.
struct Checked {
    ok: bool,
    message: String,
    /// Whether the stored keys were checked, so the result went into the health line.
    recorded: bool,
    /// The recorded error, if any.
    error: Option<String>,
    /// Refused by the page throttle: seconds for `Retry-After`; Mango was not asked.
    throttled: Option<u64>,
}

/// The keys to use: the typed ones, or the stored ones for what was left empty. `Err` is the
/// message when no complete pair is known.
fn credentials(
    ctx: &Context,
    lang: Lang,
    stored: &PortalSettings,
    key: &str,
    salt: &str,
) -> Result<(Credentials, bool), String> {
    let stored_key = stored.mango_api_key.as_deref().unwrap_or("");
    let key = if key.is_empty() { stored_key } else { key };
    let stored_salt = stored.mango_api_salt.as_deref().and_then(|s| {
        ctx.shared
            .cipher
            .open(crate::crypto::Slot::mango_api_salt(&stored.member_id), s)
            .ok()
    });
    let (salt, salt_is_stored) = match (salt.is_empty(), stored_salt) {
        (false, _) => (salt.to_owned(), false),
        (true, Some(s)) => (s, true),
        (true, None) => (String::new(), false),
    };
    if key.is_empty() || salt.is_empty() {
        return Err(lang
            .pick(
                "Введите ключ API и ключ для подписи (соль) из личного кабинета Mango Office.",
                "Enter the API key and the signing key (salt) from your Mango Office account.",
            )
            .to_owned());
    }
    let is_stored = salt_is_stored && key == stored_key;
    Ok((Credentials::new(key, salt), is_stored))
}

/// Plain words for a failed Mango request, always with the lockout warning: a second bad
/// request within two minutes locks the account's API, so the page never retries by itself.
fn mango_failure(lang: Lang, e: &MangoError) -> String {
    let what = match e {
        MangoError::Rejected { code: 3102, .. } => lang
            .pick(
                "Mango не принял подпись (код 3102): неверный ключ для подписи (соль).",
                "Mango rejected the signature (code 3102): the signing key (salt) is wrong.",
            )
            .to_owned(),
        MangoError::Rejected { code: 3105, .. } => lang
            .pick(
                "Mango не знает такой ключ API (код 3105).",
                "Mango does not know this API key (code 3105).",
            )
            .to_owned(),
        MangoError::Rejected { code, .. } => {
            let (ru, en) = describe_code(*code);
            format!(
                "{} {code}: {}",
                lang.pick("Mango ответил кодом", "Mango answered with code"),
                lang.pick(ru, en)
            )
        }
        MangoError::Locked => lang
            .pick(
                "Mango отказал в доступе (HTTP 401): неверный ключ API, или доступ заблокирован на 2 минуты после неверных запросов.",
                "Mango refused access (HTTP 401): the API key is wrong, or access is locked for 2 minutes after bad requests.",
            )
            .to_owned(),
        MangoError::RateLimited => lang
            .pick(
                "Mango просит подождать: превышен лимит запросов.",
                "Mango asks to wait: the request limit was exceeded.",
            )
            .to_owned(),
        MangoError::Unavailable { detail, .. } => format!(
            "{}: {detail}",
            lang.pick("Mango недоступен", "Mango is unreachable")
        ),
        MangoError::Protocol(detail) => format!(
            "{}: {detail}",
            lang.pick("Непонятный ответ Mango", "Unexpected answer from Mango")
        ),
    };
    format!(
        "{what} {}",
        lang.pick(
            "Не повторяйте проверку сразу: после повторных неверных запросов Mango блокирует API на 2 минуты.",
            "Do not retry right away: after repeated bad requests Mango locks the API for 2 minutes.",
        )
    )
}

/// A page request to Mango refused by [`throttle`]: nothing was sent.
struct Throttled {
    retry_after: u64,
    message: String,
}

impl Throttled {
    /// 429 with `Retry-After`, as JSON for the page's script.
    fn json(&self, domain: &str) -> HttpResponse {
        let mut r = json_reply(
            StatusCode::TOO_MANY_REQUESTS,
            Some(domain),
            json!({ "ok": false, "error": self.message, "retry_after": self.retry_after }),
        );
        with_retry_after(&mut r, self.retry_after);
        r
    }
}

fn with_retry_after(r: &mut HttpResponse, secs: u64) {
    r.headers_mut().insert(
        actix_web::http::header::RETRY_AFTER,
        actix_web::http::header::HeaderValue::from(secs),
    );
}

/// Takes the portal's turn to ask Mango with these keys (see [`throttle`]), shared by every
/// instance through the database; `Err` says how long to wait and why.
async fn mango_turn(
    ctx: &Context,
    lang: Lang,
    member_id: &str,
    creds: &Credentials,
) -> Result<Result<(), Throttled>, AppError> {
    let (mid, key_hash, now_us) = (
        member_id.to_owned(),
        crate::crypto::sha256_hex(creds.api_key.as_bytes()),
        ctx.shared.clock.now_utc().timestamp_micros(),
    );
    let turn = ctx
        .shared
        .db
        .run(move |c| throttle::take_page_turn(c, &mid, &key_hash, now_us))
        .await?;
    let wait = match turn {
        Ok(()) => return Ok(Ok(())),
        Err(w) => w,
    };
    let (retry_after, message) = match wait {
        Wait::Portal(d) => {
            let (secs, every) = (
                crate::net::address_limit::retry_after_secs(d),
                throttle::PAGE_INTERVAL.as_secs(),
            );
            (
                secs,
                format!(
                    "{} {every} {} {secs} {}",
                    lang.pick(
                        "Страница обращается к Mango не чаще раза в",
                        "The page asks Mango at most once every",
                    ),
                    lang.pick("секунд. Повторите через", "seconds. Please try again in"),
                    lang.pick("с.", "s."),
                ),
            )
        }
        Wait::RefusedKey(d) => {
            let secs = crate::net::address_limit::retry_after_secs(d);
            (
                secs,
                format!(
                    "{} {secs} {}",
                    lang.pick(
                        "Mango только что отклонил запрос с этим ключом API. Второй неверный запрос за 2 минуты заблокировал бы API Mango (и звонки робота) на 2 минуты, поэтому следующая проверка с этим ключом возможна через",
                        "Mango has just refused a request with this API key. A second bad request within 2 minutes would lock Mango's API (and the robot's calls) for 2 minutes, so the next check with this key is possible in",
                    ),
                    lang.pick("с.", "s."),
                ),
            )
        }
    };
    tracing::warn!(
        ?wait,
        retry_after,
        "Mango request from the page throttled; nothing sent"
    );
    Ok(Err(Throttled {
        retry_after,
        message,
    }))
}

/// After Mango refused the keys (a 3xxx answer, or HTTP 401 for a bad key or a lock), the page
/// leaves that key alone for two minutes, so it never causes Mango's lockout.
async fn note_refusal(ctx: &Context, creds: &Credentials, e: &MangoError) {
    let refused = match e {
        MangoError::Rejected { code, .. } => (3000..4000).contains(code),
        MangoError::Locked => true,
        _ => false,
    };
    if !refused {
        return;
    }
    let (key_hash, now_us) = (
        crate::crypto::sha256_hex(creds.api_key.as_bytes()),
        ctx.shared.clock.now_utc().timestamp_micros(),
    );
    if let Err(e) = ctx
        .shared
        .db
        .run(move |c| throttle::record_refused_key(c, &key_hash, now_us))
        .await
    {
        tracing::error!(error = %e, "recording Mango's refusal of the key failed");
    }
}

/// One request to Mango (`groups`): enough to prove key and salt, and no second bad request.
async fn run_check(
    ctx: &Context,
    lang: Lang,
    stored: &PortalSettings,
    key: &str,
    salt: &str,
) -> Result<Checked, AppError> {
    let (creds, is_stored) = match credentials(ctx, lang, stored, key, salt) {
        Ok(c) => c,
        Err(message) => {
            return Ok(Checked {
                ok: false,
                message,
                recorded: false,
                error: None,
                throttled: None,
            })
        }
    };
    if let Err(t) = mango_turn(ctx, lang, &stored.member_id, &creds).await? {
        return Ok(Checked {
            ok: false,
            message: t.message,
            recorded: false,
            error: None,
            throttled: Some(t.retry_after),
        });
    }
    let result = ctx.mango.groups(&creds).await;
    let (ok, message, error) = match &result {
        Ok(groups) => (
            true,
            format!(
                "{} {}",
                lang.pick(
                    "Ключи работают: Mango ответил. Групп найдено:",
                    "The keys work: Mango answered. Groups found:"
                ),
                groups.len()
            ),
            None,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "Mango connection check failed");
            note_refusal(ctx, &creds, e).await;
            (false, mango_failure(lang, e), Some(e.to_string()))
        }
    };
    // Only a check of the stored keys says anything about the robot's calls; a check of keys
    // typed but not saved must not overwrite the health line.
    if is_stored {
        let (mid, now, err) = (
            stored.member_id.clone(),
            ctx.shared.clock.now(),
            error.clone(),
        );
        if let Err(e) = ctx
            .shared
            .db
            .run(move |c| Ok(store::record_mango_status(c, &mid, err.as_deref(), now)?))
            .await
        {
            tracing::error!(error = %e, "recording the Mango check failed");
        }
    }
    Ok(Checked {
        ok,
        message,
        recorded: is_stored,
        error,
        throttled: None,
    })
}

/// The common start of the page's JSON endpoints: an admin's valid page token, its portal and
/// the stored settings (no call log: these answers do not show it).
async fn json_request(
    req: &HttpRequest,
    body: &[u8],
    ctx: &Context,
    lang: Lang,
) -> Result<Result<(Authorised, Portal, PortalSettings), Box<HttpResponse>>, AppError> {
    let auth = match authorise(req, body, ctx, lang, Reply::Json, true) {
        Ok(a) => a,
        Err(refused) => return Ok(Err(refused)),
    };
    let (mid, now) = (auth.token.member_id.clone(), ctx.shared.clock.now());
    let (portal, stored) = ctx
        .shared
        .db
        .run(move |c| {
            Ok((
                store::find(c, &mid)?,
                store::settings_or_default(c, &mid, now)?,
            ))
        })
        .await?;
    match portal.filter(Portal::is_active) {
        Some(p) => Ok(Ok((auth, p, stored))),
        None => Ok(Err(Box::new(Reply::Json.refuse(
            StatusCode::NOT_FOUND,
            lang,
            "unknown portal",
        )))),
    }
}

/// `POST /b24/app/mango/check` (JSON): are these keys (or the stored ones) accepted by Mango?
#[tracing::instrument(name = "app_mango_check", skip_all, fields(portal))]
pub async fn check_mango(
    req: HttpRequest,
    body: web::Bytes,
    ctx: web::Data<Context>,
) -> Result<HttpResponse, AppError> {
    let lang = lang_of(&req);
    let (auth, portal, stored) = match json_request(&req, &body, &ctx, lang).await? {
        Ok(r) => r,
        Err(refused) => return Ok(*refused),
    };
    let checked = run_check(
        &ctx,
        lang,
        &stored,
        field(&auth.form, "mango_api_key"),
        field(&auth.form, "mango_api_salt"),
    )
    .await?;
    if let Some(retry_after) = checked.throttled {
        return Ok(Throttled {
            retry_after,
            message: checked.message,
        }
        .json(&portal.domain));
    }
    Ok(json_reply(
        StatusCode::OK,
        Some(&portal.domain),
        json!({ "ok": checked.ok, "message": checked.message }),
    ))
}

/// `POST /b24/app/mango/options` (JSON): groups and lines for the pickers.
#[tracing::instrument(name = "app_mango_options", skip_all, fields(portal))]
pub async fn mango_options(
    req: HttpRequest,
    body: web::Bytes,
    ctx: web::Data<Context>,
) -> Result<HttpResponse, AppError> {
    let lang = lang_of(&req);
    let (auth, portal, stored) = match json_request(&req, &body, &ctx, lang).await? {
        Ok(r) => r,
        Err(refused) => return Ok(*refused),
    };
    let domain = Some(portal.domain.as_str());
    let creds = match credentials(
        &ctx,
        lang,
        &stored,
        field(&auth.form, "mango_api_key"),
        field(&auth.form, "mango_api_salt"),
    ) {
        Ok((c, _)) => c,
        Err(message) => {
            return Ok(json_reply(
                StatusCode::BAD_REQUEST,
                domain,
                json!({ "ok": false, "error": message }),
            ))
        }
    };
    if let Err(t) = mango_turn(&ctx, lang, &portal.member_id, &creds).await? {
        return Ok(t.json(&portal.domain));
    }
    // Sequential on purpose: if the keys are bad, the first request fails and the second, which
    // would lock the API for two minutes, is never sent.
    let groups = match ctx.mango.groups(&creds).await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "loading Mango groups failed");
            note_refusal(&ctx, &creds, &e).await;
            return Ok(json_reply(
                StatusCode::OK,
                domain,
                json!({ "ok": false, "error": mango_failure(lang, &e) }),
            ));
        }
    };
    let lines = match ctx.mango.incoming_lines(&creds).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "loading Mango lines failed");
            note_refusal(&ctx, &creds, &e).await;
            return Ok(json_reply(
                StatusCode::OK,
                domain,
                json!({ "ok": false, "error": mango_failure(lang, &e) }),
            ));
        }
    };
    let groups: Vec<_> = groups
        .into_iter()
        .filter(|g| !g.extension.is_empty())
        .map(|g| json!({ "name": g.name, "extension": g.extension }))
        .collect();
    let lines: Vec<_> = lines
        .into_iter()
        // The number is what `line_number` takes for DID and 8-800 lines; a SIP line's name
        // can still be typed by hand (the field is free text with suggestions).
        .map(|l| json!({ "value": l.number, "name": l.name, "region": l.region }))
        .collect();
    let message = format!(
        "{} {}, {} {}",
        lang.pick("Загружено групп:", "Groups loaded:"),
        groups.len(),
        lang.pick("линий:", "lines:"),
        lines.len()
    );
    Ok(json_reply(
        StatusCode::OK,
        domain,
        json!({ "ok": true, "message": message, "groups": groups, "lines": lines }),
    ))
}
