//! The tenant: one Bitrix24 portal keyed by `member_id`, its sealed tokens and its settings.
//!
//! - this file: the portal's and its settings' rows;
//! - [`store`]: their SQL (tokens are sealed where they are written);
//! - [`api`]: calling the portal with its stored tokens (single-flight refresh, renamed portals);
//! - [`robot`]: our robot's contract, registering it and binding the app's events;
//! - [`upkeep`]: the jobs that keep a portal working (robot re-registration, token keep-alive,
//!   the self-check, kept ONAPPUPDATEs);
//! - [`reseal`]: re-sealing stored secrets (`rotate-key`); [`throttle`]: the settings page's
//!   Mango throttle.

pub mod api;
pub mod hours;
mod refresh;
pub mod reseal;
pub mod robot;
pub mod store;
pub mod throttle;
pub mod upkeep;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::{portal_settings, portals};

/// Token lifetimes accepted from requests and the OAuth server, in seconds: 1 s to 1 day.
pub const TOKEN_LIFETIME_SECS: std::ops::RangeInclusive<i64> = 1..=86_400;

/// When a token issued at `now` for `lifetime_secs` expires; the lifetime is clamped into
/// [`TOKEN_LIFETIME_SECS`] so that no number, however it got here, can overflow date arithmetic.
pub fn token_expiry(now: NaiveDateTime, lifetime_secs: i64) -> NaiveDateTime {
    let secs = lifetime_secs.clamp(*TOKEN_LIFETIME_SECS.start(), *TOKEN_LIFETIME_SECS.end());
    now.checked_add_signed(chrono::TimeDelta::seconds(secs))
        .unwrap_or(now)
}

/// A stored portal. Token columns are sealed; open them with [`crate::crypto::Cipher`] and the
/// matching [`crate::crypto::Slot`]. `Debug` hides them, sealed or not.
#[derive(Clone, Queryable, Selectable)]
#[diesel(table_name = portals)]
pub struct Portal {
    /// Bitrix24's id of the portal: the key of every row of the tenant; never changes.
    pub member_id: String,
    /// The portal's current domain, from Bitrix24's verified answer; follows a rename.
    pub domain: String,
    /// The portal's REST URL (`https://{domain}/rest/`), from Bitrix24's verified answer.
    pub client_endpoint: String,
    /// The OAuth server's REST URL, which the token refresh goes through.
    pub server_endpoint: String,
    /// Sealed OAuth access token; replaced on every refresh and re-authorisation.
    pub access_token: Option<String>,
    /// Sealed OAuth refresh token; every refresh returns a new one, saved with the access token.
    pub refresh_token: Option<String>,
    /// Sealed application token that proves an event or robot call comes from this portal's
    /// Bitrix24; changed only by an administrator's install or update.
    pub application_token: Option<String>,
    /// When the access token expires; refreshed ahead of it.
    pub expires_at: Option<NaiveDateTime>,
    /// The scopes Bitrix24 granted, as it reports them.
    pub scope: String,
    /// The app's status on the portal as Bitrix24's verified answer reports it (e.g. `F`).
    pub status: String,
    /// The installer's language (`ru` unless it said otherwise), for the texts we write to the
    /// portal without a request to choose one (timeline comments, robot failure reasons).
    pub lang: String,
    /// Set by an install; stays set after an uninstall (see `uninstalled_at`).
    pub installed: bool,
    /// The refresh token was refused: every call to the portal fails at once until an
    /// administrator opens the app and so hands us a fresh pair.
    pub needs_reauth: bool,
    /// When ONAPPUNINSTALL arrived; cleared by a new install. A portal is active only without it.
    pub uninstalled_at: Option<NaiveDateTime>,
    /// Incremented with every token save, so a refresh lease taken on an older pair is void.
    pub token_version: i64,
    /// The refresh lease: until when `refresh_lock_by` may refresh; the lease ends with the save.
    pub refresh_lock_until: Option<NaiveDateTime>,
    /// The app instance holding the refresh lease.
    pub refresh_lock_by: Option<String>,
    /// When the tokens were last saved (install, refresh or re-authorisation).
    pub refreshed_at: Option<NaiveDateTime>,
    /// When the portal was first installed.
    pub created_at: NaiveDateTime,
    /// When the row last changed.
    pub updated_at: NaiveDateTime,
    /// When the self-check last asked Bitrix24 (`event.test`) to send ONAPPTEST.
    pub app_check_sent_at: Option<NaiveDateTime>,
    /// When a verified ONAPPTEST last arrived: Bitrix24 reached the app's public URL.
    pub app_reached_at: Option<NaiveDateTime>,
    /// When the request that brought the stored application token arrived (ordering of updates).
    pub app_token_received_at: Option<NaiveDateTime>,
    /// Why the last token refresh failed, in words for the settings page: an answer that never
    /// came, or (with `needs_reauth`) why the refresh token is gone. Cleared by a token save.
    pub refresh_problem: Option<String>,
}

impl std::fmt::Debug for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::crypto::Redacted;
        f.debug_struct("Portal")
            .field("member_id", &self.member_id)
            .field("domain", &self.domain)
            .field("client_endpoint", &self.client_endpoint)
            .field("server_endpoint", &self.server_endpoint)
            .field("access_token", &Redacted(&self.access_token))
            .field("refresh_token", &Redacted(&self.refresh_token))
            .field("application_token", &Redacted(&self.application_token))
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("status", &self.status)
            .field("lang", &self.lang)
            .field("installed", &self.installed)
            .field("needs_reauth", &self.needs_reauth)
            .field("uninstalled_at", &self.uninstalled_at)
            .field("token_version", &self.token_version)
            .field("refresh_lock_until", &self.refresh_lock_until)
            .field("refresh_lock_by", &self.refresh_lock_by)
            .field("refreshed_at", &self.refreshed_at)
            .field("refresh_problem", &self.refresh_problem)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

impl Portal {
    /// Usable for robot calls and events: installed and not uninstalled since.
    pub fn is_active(&self) -> bool {
        self.installed && self.uninstalled_at.is_none()
    }

    /// What the self-check found at `now`; a test unanswered for `bound` counts as "no".
    pub fn reach(&self, now: NaiveDateTime, bound: chrono::Duration) -> Reach {
        let Some(sent) = self.app_check_sent_at else {
            // ONAPPTEST can arrive without our asking (an admin calling event.test by hand).
            return self.app_reached_at.map_or(Reach::NotChecked, Reach::Yes);
        };
        match self.app_reached_at {
            Some(reached) if reached >= sent => Reach::Yes(reached),
            _ if now - sent < bound => Reach::Waiting(sent),
            _ => Reach::No(sent),
        }
    }
}

/// Whether Bitrix24 can reach the app's public URL, as the ONAPPTEST self-check last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// No test was ever sent and no ONAPPTEST arrived.
    NotChecked,
    /// A test was sent at this time; its answer may still be on its way.
    Waiting(NaiveDateTime),
    /// A verified ONAPPTEST arrived at this time (after the last test was sent).
    Yes(NaiveDateTime),
    /// The test sent at this time got no verified ONAPPTEST within the bound.
    No(NaiveDateTime),
}

#[cfg(test)]
impl Portal {
    /// An installed portal row with nothing else set, for unit tests of the row's rules.
    pub(crate) fn blank(at: NaiveDateTime) -> Portal {
        Portal {
            member_id: String::new(),
            domain: String::new(),
            client_endpoint: String::new(),
            server_endpoint: String::new(),
            access_token: None,
            refresh_token: None,
            application_token: None,
            expires_at: None,
            scope: String::new(),
            status: String::new(),
            lang: String::new(),
            installed: true,
            needs_reauth: false,
            uninstalled_at: None,
            token_version: 0,
            refresh_lock_until: None,
            refresh_lock_by: None,
            refreshed_at: None,
            created_at: at,
            updated_at: at,
            app_check_sent_at: None,
            app_reached_at: None,
            app_token_received_at: None,
            refresh_problem: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(min: i64) -> NaiveDateTime {
        chrono::DateTime::from_timestamp(1_800_000_000 + min * 60, 0)
            .unwrap_or_default()
            .naive_utc()
    }

    fn reach(sent: Option<i64>, reached: Option<i64>, now: i64) -> Reach {
        let p = Portal {
            app_check_sent_at: sent.map(at),
            app_reached_at: reached.map(at),
            ..Portal::blank(at(0))
        };
        p.reach(at(now), chrono::Duration::minutes(5))
    }

    #[test]
    fn reach_is_yes_only_when_an_answer_came_after_the_last_test() {
        assert_eq!(reach(None, None, 0), Reach::NotChecked);
        assert_eq!(reach(Some(0), None, 1), Reach::Waiting(at(0)));
        assert_eq!(reach(Some(0), None, 6), Reach::No(at(0)));
        assert_eq!(reach(Some(0), Some(1), 9), Reach::Yes(at(1)));
        assert_eq!(reach(None, Some(1), 9), Reach::Yes(at(1)));
        // An old answer does not vouch for a newer test.
        assert_eq!(reach(Some(10), Some(1), 11), Reach::Waiting(at(10)));
        assert_eq!(reach(Some(10), Some(1), 20), Reach::No(at(10)));
    }
}

/// Per-portal settings edited on the settings page. `mango_api_salt` is sealed, and hidden by
/// `Debug`.
#[derive(Clone, Queryable, Selectable, Insertable, AsChangeset)]
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
    /// The robot answers the business process when the call has ended (with its outcome)
    /// instead of when Mango accepts the command.
    pub wait_for_outcome: bool,
    /// A callback with no final event from Mango within this closes as `unknown`.
    pub outcome_wait_minutes: i32,
    /// Nobody in the group answered: how many more attempts, and how many minutes apart.
    pub retry_no_answer_times: i32,
    pub retry_no_answer_minutes: i32,
    /// A retry after nobody answered rings the experienced group.
    pub retry_escalate: bool,
    /// The client did not answer: how many more attempts, and how many minutes apart.
    pub retry_client_times: i32,
    pub retry_client_minutes: i32,
    /// Calls are placed only within working hours (below) when set.
    pub hours_enabled: bool,
    /// An IANA time zone name (`Europe/Moscow`).
    pub timezone: String,
    /// ISO weekdays (1 = Monday) on which calls may be placed, comma separated.
    pub work_days: String,
    /// Opening and closing time, in minutes after local midnight.
    pub work_start_minute: i32,
    pub work_end_minute: i32,
    /// Dates (`YYYY-MM-DD`, comma separated) on which no calls are placed.
    pub holidays: String,
}

impl std::fmt::Debug for PortalSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalSettings")
            .field("member_id", &self.member_id)
            .field("mango_api_key", &self.mango_api_key)
            .field(
                "mango_api_salt",
                &crate::crypto::Redacted(&self.mango_api_salt),
            )
            .field("line_number", &self.line_number)
            .field("trainee_extension", &self.trainee_extension)
            .field("experienced_extension", &self.experienced_extension)
            .field("duplicate_window_minutes", &self.duplicate_window_minutes)
            .field("contact_wait_seconds", &self.contact_wait_seconds)
            .field("mango_last_error", &self.mango_last_error)
            .field("mango_checked_at", &self.mango_checked_at)
            .field("updated_at", &self.updated_at)
            .field("wait_for_outcome", &self.wait_for_outcome)
            .field("hours_enabled", &self.hours_enabled)
            .field("timezone", &self.timezone)
            .finish_non_exhaustive()
    }
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
            wait_for_outcome: false,
            outcome_wait_minutes: 30,
            retry_no_answer_times: 2,
            retry_no_answer_minutes: 5,
            retry_escalate: false,
            retry_client_times: 1,
            retry_client_minutes: 10,
            hours_enabled: false,
            timezone: "Europe/Moscow".to_owned(),
            work_days: "1,2,3,4,5".to_owned(),
            work_start_minute: 9 * 60,
            work_end_minute: 18 * 60,
            holidays: String::new(),
        }
    }
}

/// Portal language for texts written into the portal (timeline comments): Russian unless English.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Ru,
    En,
}

/// The language code, as templates print it in `<html lang="…">`.
impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
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
    /// Picks the text in this language: the one translation helper, used by the pages'
    /// templates (`{{ lang.t("…", "…") }}`) and by the code that writes texts alike.
    pub fn t<'a>(self, ru: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::Ru => ru,
            Lang::En => en,
        }
    }
}

#[cfg(test)]
mod expiry_tests {
    use super::*;

    #[test]
    fn a_token_expiry_never_overflows_whatever_the_lifetime() {
        let now = chrono::DateTime::from_timestamp(1_780_000_000, 0)
            .map(|t| t.naive_utc())
            .unwrap_or_default();
        assert_eq!(
            token_expiry(now, 3600) - now,
            chrono::TimeDelta::seconds(3600)
        );
        assert_eq!(
            token_expiry(now, i64::MAX) - now,
            chrono::TimeDelta::days(1)
        );
        assert_eq!(
            token_expiry(now, i64::MIN) - now,
            chrono::TimeDelta::seconds(1)
        );
        assert_eq!(token_expiry(now, 0) - now, chrono::TimeDelta::seconds(1));
    }
}
