//! Outbound Bitrix24: the REST transport (limits, batch), OAuth, CRM reading, peer address checks.

pub mod address;
pub mod client;
pub mod crm;
pub mod limiter;
pub mod oauth;
pub mod store;

/// A Bitrix24 call that did not produce a result; every variant names portal and method.
#[derive(Debug, thiserror::Error)]
pub enum BitrixError {
    #[error("Bitrix24 portal {member_id}: {method} answered HTTP {status} {code}: {description}")]
    Api {
        member_id: String,
        method: String,
        status: u16,
        code: String,
        description: String,
    },
    #[error("Bitrix24 portal {member_id}: {method} could not be sent: {detail}")]
    Transport {
        member_id: String,
        method: String,
        detail: String,
    },
    #[error("Bitrix24 portal {member_id} needs re-authorisation: an administrator should open the app ({detail})")]
    NeedsReauth { member_id: String, detail: String },
    /// A redirect to a new endpoint that is not a public https host or that the OAuth server
    /// does not confirm; the stored endpoint is kept.
    #[error("Bitrix24 portal {member_id}: {method} redirected to {location}, refused: {detail}")]
    RenameRefused {
        member_id: String,
        method: String,
        location: String,
        detail: String,
    },
    /// The portal's shared request budget allows the next request only after `wait`, longer
    /// than this caller waits: a job snoozes for it instead of holding a worker.
    #[error(
        "Bitrix24 portal {member_id}: {method} waits {wait:?} for the portal's request budget"
    )]
    Throttled {
        member_id: String,
        method: String,
        wait: std::time::Duration,
    },
    #[error("Bitrix24 portal {0} is not installed")]
    NotInstalled(String),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

impl BitrixError {
    /// Worth retrying later: transport trouble, limits, server errors.
    pub fn is_transient(&self) -> bool {
        match self {
            BitrixError::Transport { .. } | BitrixError::Db(_) | BitrixError::Throttled { .. } => {
                true
            }
            BitrixError::Api { status, code, .. } => {
                *status >= 500
                    || *status == 429
                    || code == "QUERY_LIMIT_EXCEEDED"
                    || code == "OPERATION_TIME_LIMIT"
            }
            BitrixError::NeedsReauth { .. }
            | BitrixError::NotInstalled(_)
            | BitrixError::RenameRefused { .. } => false,
        }
    }

    /// How long the portal's request budget asks to wait, when that is why this call failed.
    pub fn budget_wait(&self) -> Option<std::time::Duration> {
        match self {
            BitrixError::Throttled { wait, .. } => Some(*wait),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            BitrixError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}
