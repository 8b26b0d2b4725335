//! What a request brings, read safely: PHP-style bracketed forms, the `auth[...]` block, token
//! lifetimes, and the user's language.

use actix_web::{web, HttpRequest};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::AppError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
