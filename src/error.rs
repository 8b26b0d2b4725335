//! HTTP-facing errors: each variant names its status; 5xx bodies never carry internals.

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
    /// 503: a peer (database, Bitrix24 OAuth server) is unavailable; try again.
    #[error("{0}")]
    Unavailable(String),
    /// 500: logged with its cause chain, answered with a generic message.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<crate::db::DbError> for AppError {
    fn from(e: crate::db::DbError) -> Self {
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
                "internal error; see the application log".to_owned()
            }
            other => {
                // Every refused request leaves a line, whatever the handler logged itself.
                tracing::warn!(status = self.status_code().as_u16(), error = %other, "request refused");
                other.to_string()
            }
        };
        HttpResponse::build(self.status_code()).json(serde_json::json!({ "error": message }))
    }
}
