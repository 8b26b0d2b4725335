//! "Check connection" and "Load from Mango": one Mango request per use, throttled per portal and
//! per refused key (see [`crate::portal::throttle`]), with the failure in plain words.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use diesel::QueryResult;
use secrecy::ExposeSecret;
use serde_json::json;

use super::authorise::{authorise, field, Authorised};
use super::view::Reply;
use crate::context::Context;
use crate::error::AppError;
use crate::http::page::json_reply;
use crate::http::request::lang_of;
use crate::mango::{describe_code, Credentials, MangoError};
use crate::portal::throttle::{self, Wait};
use crate::portal::{store, Lang, Portal, PortalSettings};

/// What a connection check found.
pub(super) struct Checked {
    pub(super) ok: bool,
    pub(super) message: String,
    /// Whether the stored keys were checked, so the result went into the health line.
    pub(super) recorded: bool,
    /// The recorded error, if any.
    pub(super) error: Option<String>,
    /// Refused by the page throttle: seconds for `Retry-After`; Mango was not asked.
    pub(super) throttled: Option<u64>,
}

/// The keys to use: the typed ones, or the stored ones for what was left empty. `Err` is the
/// message when no complete pair is known.
pub(super) fn credentials(
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
            .t(
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
pub(super) fn mango_failure(lang: Lang, e: &MangoError) -> String {
    let what = match e {
        MangoError::Rejected { code: 3102, .. } => lang
            .t(
                "Mango не принял подпись (код 3102): неверный ключ для подписи (соль).",
                "Mango rejected the signature (code 3102): the signing key (salt) is wrong.",
            )
            .to_owned(),
        MangoError::Rejected { code: 3105, .. } => lang
            .t(
                "Mango не знает такой ключ API (код 3105).",
                "Mango does not know this API key (code 3105).",
            )
            .to_owned(),
        MangoError::Rejected { code, .. } => {
            let (ru, en) = describe_code(*code);
            format!(
                "{} {code}: {}",
                lang.t("Mango ответил кодом", "Mango answered with code"),
                lang.t(ru, en)
            )
        }
        MangoError::Locked => lang
            .t(
                "Mango отказал в доступе (HTTP 401): неверный ключ API, или доступ заблокирован на 2 минуты после неверных запросов.",
                "Mango refused access (HTTP 401): the API key is wrong, or access is locked for 2 minutes after bad requests.",
            )
            .to_owned(),
        MangoError::RateLimited => lang
            .t(
                "Mango просит подождать: превышен лимит запросов.",
                "Mango asks to wait: the request limit was exceeded.",
            )
            .to_owned(),
        MangoError::Unavailable { detail, .. } => format!(
            "{}: {detail}",
            lang.t("Mango недоступен", "Mango is unreachable")
        ),
        MangoError::Protocol(detail) => format!(
            "{}: {detail}",
            lang.t("Непонятный ответ Mango", "Unexpected answer from Mango")
        ),
    };
    format!(
        "{what} {}",
        lang.t(
            "Не повторяйте проверку сразу: после повторных неверных запросов Mango блокирует API на 2 минуты.",
            "Do not retry right away: after repeated bad requests Mango locks the API for 2 minutes.",
        )
    )
}

/// A page request to Mango refused by [`throttle`]: nothing was sent.
pub(super) struct Throttled {
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
        crate::error::refuse(
            r,
            format!(
                "Mango request from the page throttled, nothing sent; retry after {} s",
                self.retry_after
            ),
        )
    }
}

pub(super) fn with_retry_after(r: &mut HttpResponse, secs: u64) {
    r.headers_mut().insert(
        actix_web::http::header::RETRY_AFTER,
        actix_web::http::header::HeaderValue::from(secs),
    );
}

/// Takes the portal's turn to ask Mango with these keys (see [`throttle`]), shared by every
/// instance through the database; `Err` says how long to wait and why.
pub(super) async fn mango_turn(
    ctx: &Context,
    lang: Lang,
    member_id: &str,
    creds: &Credentials,
) -> Result<Result<(), Throttled>, AppError> {
    let (mid, key_hash, now_us) = (
        member_id.to_owned(),
        crate::crypto::sha256_hex(creds.api_key.expose_secret().as_bytes()),
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
                    lang.t(
                        "Страница обращается к Mango не чаще раза в",
                        "The page asks Mango at most once every",
                    ),
                    lang.t("секунд. Повторите через", "seconds. Please try again in"),
                    lang.t("с.", "s."),
                ),
            )
        }
        Wait::RefusedKey(d) => {
            let secs = crate::net::address_limit::retry_after_secs(d);
            (
                secs,
                format!(
                    "{} {secs} {}",
                    lang.t(
                        "Mango только что отклонил запрос с этим ключом API. Второй неверный запрос за 2 минуты заблокировал бы API Mango (и звонки робота) на 2 минуты, поэтому следующая проверка с этим ключом возможна через",
                        "Mango has just refused a request with this API key. A second bad request within 2 minutes would lock Mango's API (and the robot's calls) for 2 minutes, so the next check with this key is possible in",
                    ),
                    lang.t("с.", "s."),
                ),
            )
        }
    };
    Ok(Err(Throttled {
        retry_after,
        message,
    }))
}

/// After Mango refused the keys (a 3xxx answer, or HTTP 401 for a bad key or a lock), the page
/// leaves that key alone for two minutes, so it never causes Mango's lockout.
pub(super) async fn note_refusal(ctx: &Context, creds: &Credentials, e: &MangoError) {
    let refused = match e {
        MangoError::Rejected { code, .. } => (3000..4000).contains(code),
        MangoError::Locked => true,
        _ => false,
    };
    if !refused {
        return;
    }
    let (key_hash, now_us) = (
        crate::crypto::sha256_hex(creds.api_key.expose_secret().as_bytes()),
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
pub(super) async fn run_check(
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
                lang.t(
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
            .run(move |c| store::record_mango_status(c, &mid, err.as_deref(), now))
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
pub(super) async fn json_request(
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
        .run(move |c| -> QueryResult<_> {
            Ok((
                store::find(c, &mid)?,
                store::settings_or_default(c, &mid, now)?,
            ))
        })
        .await?;
    match portal.filter(Portal::is_active) {
        Some(p) => Ok(Ok((auth, p, stored))),
        None => Ok(Err(Box::new(crate::error::refuse(
            Reply::Json.refuse(StatusCode::NOT_FOUND, lang, "unknown portal"),
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
        lang.t("Загружено групп:", "Groups loaded:"),
        groups.len(),
        lang.t("линий:", "lines:"),
        lines.len()
    );
    Ok(json_reply(
        StatusCode::OK,
        domain,
        json!({ "ok": true, "message": message, "groups": groups, "lines": lines }),
    ))
}
