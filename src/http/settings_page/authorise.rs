//! Every later request of the page (save, "Check connection", "Load from Mango") proves itself
//! with the page token; this checks it, and the admin flag for changes.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};

use super::page_token::{PageToken, PAGE_TOKEN_FIELD, PAGE_TOKEN_HEADER};
use super::view::Reply;
use crate::context::Context;
use crate::error::refuse;
use crate::http::request::parse_form;
use crate::portal::Lang;

/// A later request, authorised: the token, the portal it names, and the parsed form.
pub(super) struct Authorised {
    pub(super) token: PageToken,
    pub(super) form: HashMap<String, String>,
}

/// Checks the page token (header first, then form field) and, for changes, the admin flag.
pub(super) fn authorise(
    req: &HttpRequest,
    body: &[u8],
    ctx: &Context,
    lang: Lang,
    reply: Reply,
    need_admin: bool,
) -> Result<Authorised, Box<HttpResponse>> {
    let form: HashMap<String, String> = parse_form(body).map_err(|e| {
        Box::new(refuse(
            reply.refuse(StatusCode::BAD_REQUEST, lang, &e.to_string()),
            e.to_string(),
        ))
    })?;
    let raw = req
        .headers()
        .get(PAGE_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| form.get(PAGE_TOKEN_FIELD).cloned())
        .unwrap_or_default();
    let now = ctx.shared.clock.now_utc().timestamp();
    let token = PageToken::decode(&ctx.shared.cipher, &raw, now).map_err(|e| {
        Box::new(refuse(
            reply.refuse(StatusCode::UNAUTHORIZED, lang, e.message(lang)),
            format!("bad page token: {e}"),
        ))
    })?;
    tracing::Span::current().record("portal", token.member_id.as_str());
    if need_admin && !token.admin {
        return Err(Box::new(refuse(
            reply.refuse(
                StatusCode::FORBIDDEN,
                lang,
                lang.t(
                    "Изменять настройки может только администратор портала.",
                    "Only a portal administrator can change the settings.",
                ),
            ),
            format!("user {} is not a portal administrator", token.user_id),
        )));
    }
    Ok(Authorised { token, form })
}

pub(super) fn field<'a>(form: &'a HashMap<String, String>, name: &str) -> &'a str {
    form.get(name).map(|v| v.trim()).unwrap_or("")
}
