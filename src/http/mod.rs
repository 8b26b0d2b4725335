//! The HTTP layer: the whole route table and the parsing of Bitrix24's bracketed forms.

pub mod app;
pub mod events;
pub mod install;
pub mod mango;
pub mod robot;
pub mod settings;

#[cfg(test)]
mod props;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::AppError;

/// Largest form body we read; Bitrix24's requests are a few kilobytes.
pub const MAX_FORM: usize = 256 * 1024;

/// Every route, used by the server and by handler tests alike.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/b24/install", web::post().to(install::install_app))
        .route("/b24/events", web::post().to(events::handle_event))
        .route("/b24/robot", web::post().to(robot::handle_robot_call))
        .route("/b24/app", web::post().to(app::show_app))
        .route("/b24/app/settings", web::post().to(app::save_settings))
        .route("/b24/app/mango/check", web::post().to(app::check_mango))
        .route("/b24/app/mango/options", web::post().to(app::mango_options))
        .route("/mango/{tail:.*}", web::post().to(mango::receive))
        .service(actix_files::Files::new(
            "/static",
            concat!(env!("CARGO_MANIFEST_DIR"), "/static"),
        ));
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Parses a PHP-style bracketed form (`auth[member_id]=…`, `document_id[2]=DEAL_5`).
///
/// Bitrix24 may percent-encode the brackets; serde_qs decodes `%5B`/`%5D` but not the lower-case
/// forms, so those are upper-cased first.
pub fn parse_form<T: DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    let text = form_text(body)?;
    let text = text.replace("%5b", "%5B").replace("%5d", "%5D");
    serde_qs::Config::new()
        .max_depth(5)
        .use_form_encoding(true)
        .deserialize_str::<T>(&text)
        .map_err(|e| AppError::BadRequest(format!("malformed form: {e}")))
}

/// A form body as text: UTF-8 and free of NUL characters, literal or `%00`. No field of ours
/// ever holds one, and PostgreSQL refuses NUL in text, so letting it through would turn a bad
/// request into a 500 on one backend and a stored oddity on the other. (A `%` that is data is
/// sent as `%25`, so `%00` in the raw text is always an encoded NUL.)
pub fn form_text(body: &[u8]) -> Result<&str, AppError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| AppError::BadRequest("the form body is not UTF-8".into()))?;
    if text.contains('\0') || text.contains("%00") {
        return Err(AppError::BadRequest(
            "the form contains a NUL character".into(),
        ));
    }
    Ok(text)
}

/// The `auth[...]` block of events and robot calls (all strings; most optional).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthBlock {
    pub member_id: Option<String>,
    pub application_token: Option<String>,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_in: Option<String>,
    pub domain: Option<String>,
    pub client_endpoint: Option<String>,
    pub server_endpoint: Option<String>,
    pub scope: Option<String>,
    pub status: Option<String>,
    pub user_id: Option<String>,
}

impl AuthBlock {
    /// `auth[member_id]`, required by every event and robot call.
    pub fn require_member_id(&self) -> Result<String, AppError> {
        self.member_id
            .clone()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| AppError::Unauthorized("auth[member_id] is missing".into()))
    }
}

/// The user's Bitrix24 language from the `LANG` query parameter that Bitrix24 adds to page URLs.
pub fn lang_of(req: &HttpRequest) -> crate::portal::Lang {
    let q = web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    crate::portal::Lang::parse(q.get("LANG").map(String::as_str).unwrap_or("ru"))
}

/// The caller's address for security log lines.
pub fn peer(req: &HttpRequest) -> String {
    req.connection_info()
        .realip_remote_addr()
        .unwrap_or("-")
        .to_owned()
}

/// Checks an event's or robot call's `application_token` against the stored one, in constant time.
pub fn application_token_matches(
    cipher: &crate::crypto::Cipher,
    portal: &crate::portal::Portal,
    presented: Option<&str>,
) -> bool {
    let stored = portal
        .application_token
        .as_deref()
        .and_then(|t| cipher.open(t).ok());
    match (stored, presented) {
        (Some(s), Some(p)) if !p.is_empty() => {
            crate::crypto::constant_time_eq(s.as_bytes(), p.as_bytes())
        }
        _ => false,
    }
}
