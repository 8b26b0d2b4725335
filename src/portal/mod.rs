//! The tenant: one Bitrix24 portal keyed by `member_id`, its sealed tokens and its settings.

pub mod jobs;
pub mod store;
pub mod throttle;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::{portal_settings, portals};

/// A stored portal. Token columns are sealed; open them with [`crate::crypto::Cipher`].
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = portals)]
pub struct Portal {
    pub member_id: String,
    pub domain: String,
    pub client_endpoint: String,
    pub server_endpoint: String,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub application_token: Option<String>,
    pub expires_at: Option<NaiveDateTime>,
    pub scope: String,
    pub status: String,
    pub lang: String,
    pub installed: bool,
    pub needs_reauth: bool,
    pub uninstalled_at: Option<NaiveDateTime>,
    pub token_version: i64,
    pub refresh_lock_until: Option<NaiveDateTime>,
    pub refresh_lock_by: Option<String>,
    pub refreshed_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl Portal {
    /// Usable for robot calls and events: installed and not uninstalled since.
    pub fn is_active(&self) -> bool {
        self.installed && self.uninstalled_at.is_none()
    }
}

/// Per-portal settings edited on the settings page. `mango_api_salt` is sealed.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = portal_settings)]
#[diesel(treat_none_as_null = true)]
pub struct PortalSettings {
    pub member_id: String,
    pub mango_api_key: Option<String>,
    pub mango_api_salt: Option<String>,
    pub line_number: String,
    pub trainee_extension: String,
    pub experienced_extension: String,
    pub duplicate_window_minutes: i32,
    pub contact_wait_seconds: i32,
    pub mango_last_error: Option<String>,
    pub mango_checked_at: Option<NaiveDateTime>,
    pub updated_at: NaiveDateTime,
}

impl PortalSettings {
    pub fn defaults(member_id: &str, now: NaiveDateTime) -> PortalSettings {
        PortalSettings {
            member_id: member_id.to_owned(),
            mango_api_key: None,
            mango_api_salt: None,
            line_number: String::new(),
            trainee_extension: String::new(),
            experienced_extension: String::new(),
            duplicate_window_minutes: 10,
            contact_wait_seconds: 60,
            mango_last_error: None,
            mango_checked_at: None,
            updated_at: now,
        }
    }
}

/// Portal language for texts written into the portal (timeline comments): Russian unless English.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Ru,
    En,
}

impl Lang {
    pub fn parse(code: &str) -> Lang {
        match code.trim().to_ascii_lowercase().as_str() {
            "ru" | "by" | "kz" | "ua" | "" => Lang::Ru,
            _ => Lang::En,
        }
    }
    pub fn code(self) -> &'static str {
        match self {
            Lang::Ru => "ru",
            Lang::En => "en",
        }
    }
    /// Picks the text in this language.
    pub fn pick<'a>(self, ru: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::Ru => ru,
            Lang::En => en,
        }
    }
}
