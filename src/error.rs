//! HTTP-facing errors: each variant names its status; 5xx bodies never carry internals.
//!
//! A refused request is logged once, by the route guard (`http::guard_route`), which knows the
//! client's address and the path: the response carries its reason as a [`Refusal`] extension.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the request is malformed; the message names the bad field.
    #[error("{0}")]
    BadRequest(String),
    /// 401: the caller could not be authenticated.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 503: a peer (database, Bitrix24 OAuth server) is unavailable; try again. The text says
    /// what failed and may quote the peer: it goes to the log only, the body is generic.
    #[error("{0}")]
    Unavailable(String),
    /// 500: logged with its cause chain, answered with a generic message.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<crate::db::DbError> for AppError {
    fn from(e: crate::db::DbError) -> Self {
        if e.is_unavailable() {
            // Nothing was stored: the caller (Bitrix24, a browser) gets 503 and may repeat. Error
            // level, because every request fails until the database is back.
            tracing::error!(error = %e, "the database is unavailable; the request is refused with 503");
            return AppError::Unavailable("the database is unavailable".into());
        }
        AppError::Internal(anyhow::Error::new(e))
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            AppError::Internal(e) => {
                tracing::error!(error.cause_chain = ?e, "internal error");
                return HttpResponse::build(self.status_code())
                    .json(serde_json::json!({ "error": INTERNAL_MESSAGE }));
            }
            // The peer's own words (an error code, a description, a URL) stay in the log.
            AppError::Unavailable(_) => UNAVAILABLE_MESSAGE.to_owned(),
            other => other.to_string(),
        };
        refuse(
            HttpResponse::build(self.status_code()).json(serde_json::json!({ "error": message })),
            self.to_string(),
        )
    }
}

/// The body of a 500.
pub const INTERNAL_MESSAGE: &str = "internal error; see the application log";

/// The body of a 503: Bitrix24 and the administrator's browser both may read it.
pub const UNAVAILABLE_MESSAGE: &str = "Сервис временно недоступен, повторите попытку позже. \
     The service is temporarily unavailable; please try again later.";

/// Why a request was refused, carried by its response to the route guard that logs it once.
#[derive(Clone, Debug)]
pub struct Refusal(pub String);

/// Marks `resp` as a refusal for `reason` (English, for the log; never a secret).
pub fn refuse(mut resp: HttpResponse, reason: impl Into<String>) -> HttpResponse {
    resp.extensions_mut().insert(Refusal(reason.into()));
    resp
}
