//! The replies of the app's pages inside the portal's iframe: HTML and JSON with `no-store` and a
//! Content-Security-Policy that lets only the portal frame them, and the error page.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use askama::Template;

use crate::error::AppError;
use crate::portal::Lang;

#[derive(Template)]
#[template(path = "app_error.html")]
pub struct ErrorPage<'a> {
    pub lang: Lang,
    pub title: &'a str,
    pub message: &'a str,
}

/// `frame-ancestors` names exactly the portal that may frame the page (never X-Frame-Options,
/// which cannot name a third-party origin); the rest keeps the page to its own scripts and styles.
pub fn csp(domain: &str) -> String {
    format!(
        "default-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; \
         frame-ancestors https://{domain}"
    )
}

pub fn html(status: StatusCode, domain: Option<&str>, body: String) -> HttpResponse {
    let mut r = HttpResponse::build(status);
    r.content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"));
    if let Some(d) = domain {
        r.insert_header(("Content-Security-Policy", csp(d)));
    }
    r.body(body)
}

pub fn error_html(status: StatusCode, lang: Lang, message: &str) -> HttpResponse {
    let page = ErrorPage {
        lang,
        title: lang.t("Mango Office: обратный звонок", "Mango Office callback"),
        message,
    };
    match page.render() {
        Ok(body) => html(status, None, body),
        Err(e) => actix_web::ResponseError::error_response(&AppError::Internal(e.into())),
    }
}

pub fn json_reply(
    status: StatusCode,
    domain: Option<&str>,
    body: serde_json::Value,
) -> HttpResponse {
    let mut r = HttpResponse::build(status);
    r.insert_header(("Cache-Control", "no-store"));
    if let Some(d) = domain {
        r.insert_header(("Content-Security-Policy", csp(d)));
    }
    r.json(body)
}
