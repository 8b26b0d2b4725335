//! The HTTP layer: the whole route table and the parsing of Bitrix24's bracketed forms.

pub mod auth;
pub mod client_addr;
pub mod events;
pub mod install;
pub mod mango;
pub mod robot;
pub mod settings_page;

#[cfg(test)]
mod props;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::AppError;

/// The request logger: `tracing-actix-web`'s, with the client address of [`client_ip`].
pub type RequestLogger = tracing_actix_web::TracingLogger<client_addr::RootSpan>;

/// Largest form body we read; Bitrix24's requests are a few kilobytes.
pub const MAX_FORM: usize = 256 * 1024;

/// Every route, used by the server and by handler tests alike.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(guarded("/health", web::get().to(health)))
        .service(guarded(
            "/b24/install",
            web::post().to(install::install_app),
        ))
        .service(guarded("/b24/events", web::post().to(events::handle_event)))
        .service(guarded(
            "/b24/robot",
            web::post().to(robot::handle_robot_call),
        ))
        .service(guarded("/b24/app", web::post().to(settings_page::show_app)))
        .service(guarded(
            "/b24/app/settings",
            web::post().to(settings_page::save_settings),
        ))
        .service(guarded(
            "/b24/app/mango/check",
            web::post().to(settings_page::check_mango),
        ))
        .service(guarded(
            "/b24/app/mango/options",
            web::post().to(settings_page::mango_options),
        ))
        .service(guarded("/mango/{tail:.*}", web::post().to(mango::receive)))
        .service(actix_files::Files::new(
            "/static",
            concat!(env!("CARGO_MANIFEST_DIR"), "/static"),
        ));
}

/// One route behind [`catch_panics`]. The guard sits on the resource, after routing, because
/// it keeps a handle on the request and the router needs the request to itself while it matches.
fn guarded(path: &str, route: actix_web::Route) -> impl actix_web::dev::HttpServiceFactory {
    web::resource(path)
        .wrap(actix_web::middleware::from_fn(catch_panics))
        .route(route)
}

/// Wraps every route: a panic in a handler (a bug) is answered 500 like any internal error
/// instead of dropping the connection, and the server goes on. The panic hook logs it once;
/// whatever the handler had open in the database is rolled back by the pool.
pub async fn catch_panics(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let http_req = req.request().clone();
    match crate::telemetry::catch_panic(next.call(req)).await {
        Ok(res) => res.map(actix_web::dev::ServiceResponse::map_into_boxed_body),
        Err(_) => Ok(actix_web::dev::ServiceResponse::new(
            http_req,
            HttpResponse::InternalServerError()
                .json(serde_json::json!({ "error": "internal error; see the application log" })),
        )),
    }
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

/// The `auth[...]` block of events and robot calls (all strings; most optional). `Debug` hides
/// the tokens.
#[derive(Clone, Default, Deserialize)]
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

/// Reads a token lifetime from a request (`AUTH_EXPIRES`, `auth[expires_in]`): absent or empty
/// is `None`; otherwise whole seconds within the range [`crate::portal::TOKEN_LIFETIME_SECS`]
/// allows, or a 400 naming the field. Bitrix24 issues one-hour tokens; an absurd number here
/// would only ever come from a forged request.
pub fn token_lifetime(field: &str, raw: Option<&str>) -> Result<Option<i64>, AppError> {
    let Some(raw) = raw.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    raw.parse::<i64>()
        .ok()
        .filter(|s| crate::portal::TOKEN_LIFETIME_SECS.contains(s))
        .map(Some)
        .ok_or_else(|| {
            AppError::BadRequest(format!(
                "{field} must be a token lifetime in whole seconds from {} to {}",
                crate::portal::TOKEN_LIFETIME_SECS.start(),
                crate::portal::TOKEN_LIFETIME_SECS.end()
            ))
        })
}

impl std::fmt::Debug for AuthBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::crypto::Redacted;
        f.debug_struct("AuthBlock")
            .field("member_id", &self.member_id)
            .field("application_token", &Redacted(&self.application_token))
            .field("access_token", &Redacted(&self.access_token))
            .field("refresh_token", &Redacted(&self.refresh_token))
            .field("expires_in", &self.expires_in)
            .field("domain", &self.domain)
            .field("client_endpoint", &self.client_endpoint)
            .field("server_endpoint", &self.server_endpoint)
            .field("scope", &self.scope)
            .field("status", &self.status)
            .field("user_id", &self.user_id)
            .finish()
    }
}

impl AuthBlock {
    /// `auth[expires_in]`, range-checked by [`token_lifetime`].
    pub fn lifetime(&self) -> Result<Option<i64>, AppError> {
        token_lifetime("auth[expires_in]", self.expires_in.as_deref())
    }

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

/// The caller's address for security log lines (see [`client_ip`]).
pub fn peer(req: &HttpRequest) -> String {
    client_ip(req).map_or_else(|| "-".to_owned(), |ip| ip.to_string())
}

/// The client's address: the TCP peer, or what a trusted proxy (`APP_TRUSTED_PROXIES`) says
/// it forwarded for. `None` only when the request has no TCP peer (in-process handler tests).
pub fn client_ip(req: &HttpRequest) -> Option<std::net::IpAddr> {
    client_addr::of_request(
        req.peer_addr(),
        req.headers(),
        req.app_data::<web::Data<crate::context::Context>>(),
    )
}

/// The per-address gate of the unauthenticated browser POSTs, taken before they cost an
/// `app.info` request: `Some(429 page with Retry-After)` when this address is over its limit.
pub fn limit_address(req: &HttpRequest, ctx: &crate::context::Context) -> Option<HttpResponse> {
    let ip = client_ip(req)?;
    let wait = ctx.shared.address_limiter.take(ip).err()?;
    let secs = crate::net::address_limit::retry_after_secs(wait);
    let lang = lang_of(req);
    tracing::warn!(peer = %ip, path = req.path(), retry_after = secs, "request refused: too many from this address");
    let message = format!(
        "{} {secs} {}",
        lang.pick(
            "Слишком много запросов с вашего адреса. Повторите через",
            "Too many requests from your address. Please try again in",
        ),
        lang.pick("с.", "s."),
    );
    let mut resp = settings_page::view::error_html(
        actix_web::http::StatusCode::TOO_MANY_REQUESTS,
        lang,
        &message,
    );
    resp.headers_mut().insert(
        actix_web::http::header::RETRY_AFTER,
        actix_web::http::header::HeaderValue::from(secs),
    );
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test as atest;

    async fn panics() -> HttpResponse {
        panic!("a bug in a handler")
    }

    #[actix_web::test]
    async fn a_panicking_handler_is_answered_500_and_the_app_keeps_serving() {
        let app = atest::init_service(
            actix_web::App::new()
                .service(guarded("/boom", web::get().to(panics)))
                .service(guarded("/health", web::get().to(health))),
        )
        .await;
        let res =
            atest::call_service(&app, atest::TestRequest::get().uri("/boom").to_request()).await;
        assert_eq!(res.status().as_u16(), 500);
        let body = atest::read_body(res).await;
        assert!(
            String::from_utf8_lossy(&body).contains("internal error"),
            "a generic message, no panic text"
        );
        let res =
            atest::call_service(&app, atest::TestRequest::get().uri("/health").to_request()).await;
        assert_eq!(res.status().as_u16(), 200);
    }

    #[test]
    fn token_lifetimes_outside_one_second_to_one_day_are_refused() {
        for ok in ["1", "3600", "86400", " 60 "] {
            assert!(
                token_lifetime("f", Some(ok)).is_ok_and(|v| v.is_some()),
                "{ok}"
            );
        }
        assert!(matches!(token_lifetime("f", None), Ok(None)));
        assert!(matches!(token_lifetime("f", Some("")), Ok(None)));
        for bad in [
            "0",
            "-1",
            "86401",
            "99999999999999999",
            "1e3",
            "3600.0",
            "x",
        ] {
            let e = token_lifetime("AUTH_EXPIRES", Some(bad)).expect_err(bad);
            assert!(e.to_string().contains("AUTH_EXPIRES"), "{e}");
        }
    }
}
