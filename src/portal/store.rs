//! Portal storage: the only SQL for `portals` and `portal_settings`.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::{Portal, PortalSettings};
use crate::crypto::{Cipher, Slot};
use crate::db::schema::{
    call_attempts, callbacks, deals, jobs, mango_call_events, portal_settings, portals,
    rest_budgets,
};
use crate::db::{insert_if_absent, DbConnection};

pub fn find(conn: &mut DbConnection, member_id: &str) -> QueryResult<Option<Portal>> {
    portals::table
        .find(member_id)
        .select(Portal::as_select())
        .first(conn)
        .optional()
}

/// Verified facts and tokens from an installer POST, ONAPPINSTALL or ONAPPUPDATE. `Debug` hides
/// the tokens.
#[derive(Clone)]
pub struct InstallData {
    pub member_id: String,
    pub domain: String,
    pub client_endpoint: String,
    pub server_endpoint: String,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_in: Option<i64>,
    /// None keeps the stored one (the installer POST may not carry it).
    pub application_token: Option<String>,
    pub scope: String,
    pub status: String,
    pub lang: Option<String>,
}

impl std::fmt::Debug for InstallData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::crypto::Redacted;
        f.debug_struct("InstallData")
            .field("member_id", &self.member_id)
            .field("domain", &self.domain)
            .field("client_endpoint", &self.client_endpoint)
            .field("server_endpoint", &self.server_endpoint)
            .field("access_token", &Redacted(&self.access_token))
            .field("refresh_token", &Redacted(&self.refresh_token))
            .field("expires_in", &self.expires_in)
            .field("application_token", &Redacted(&self.application_token))
            .field("scope", &self.scope)
            .field("status", &self.status)
            .field("lang", &self.lang)
            .finish()
    }
}

/// The columns a repeated install changes.
#[derive(AsChangeset)]
#[diesel(table_name = portals)]
struct Reinstall<'a> {
    domain: &'a str,
    client_endpoint: &'a str,
    server_endpoint: &'a str,
    scope: &'a str,
    status: &'a str,
    lang: Option<&'a str>,
    application_token: Option<String>,
    app_token_received_at: Option<NaiveDateTime>,
    installed: bool,
    uninstalled_at: Option<Option<NaiveDateTime>>,
    updated_at: NaiveDateTime,
}

/// Inserts or updates the portal as installed; a second install updates, never duplicates.
/// Callers run it inside a transaction ([`crate::db::write_tx`]) so a crash leaves no half-update.
pub fn upsert_installed(
    conn: &mut DbConnection,
    cipher: &Cipher,
    d: &InstallData,
    now: NaiveDateTime,
) -> QueryResult<()> {
    let expires_at = d.expires_in.map(|s| super::token_expiry(now, s));
    let inserted = insert_if_absent!(
        conn,
        diesel::insert_into(portals::table).values((
            portals::member_id.eq(&d.member_id),
            portals::domain.eq(&d.domain),
            portals::client_endpoint.eq(&d.client_endpoint),
            portals::server_endpoint.eq(&d.server_endpoint),
            portals::access_token
                .eq(cipher.seal_opt(Slot::access_token(&d.member_id), d.access_token.as_deref())),
            portals::refresh_token.eq(cipher.seal_opt(
                Slot::refresh_token(&d.member_id),
                d.refresh_token.as_deref(),
            )),
            portals::application_token.eq(cipher.seal_opt(
                Slot::application_token(&d.member_id),
                d.application_token.as_deref(),
            )),
            portals::app_token_received_at.eq(d.application_token.as_ref().map(|_| now)),
            portals::expires_at.eq(expires_at),
            portals::scope.eq(&d.scope),
            portals::status.eq(&d.status),
            portals::lang.eq(d.lang.as_deref().unwrap_or("ru")),
            portals::installed.eq(true),
            portals::needs_reauth.eq(false),
            portals::token_version.eq(1i64),
            portals::refreshed_at.eq(now),
            portals::created_at.eq(now),
            portals::updated_at.eq(now),
        ))
    )?;
    if inserted {
        return Ok(());
    }
    // A repeated install: one update; `None` fields (no LANG, no APPLICATION_TOKEN in this
    // request) keep what is stored.
    diesel::update(portals::table.find(&d.member_id))
        .set(&Reinstall {
            domain: &d.domain,
            client_endpoint: &d.client_endpoint,
            server_endpoint: &d.server_endpoint,
            scope: &d.scope,
            status: &d.status,
            lang: d.lang.as_deref(),
            application_token: cipher.seal_opt(
                Slot::application_token(&d.member_id),
                d.application_token.as_deref(),
            ),
            app_token_received_at: d.application_token.as_ref().map(|_| now),
            installed: true,
            uninstalled_at: Some(None),
            updated_at: now,
        })
        .execute(conn)?;
    if let (Some(access), Some(refresh)) = (&d.access_token, &d.refresh_token) {
        store_tokens(
            conn,
            cipher,
            &d.member_id,
            access,
            refresh,
            d.expires_in.unwrap_or(3600),
            now,
        )?;
    }
    Ok(())
}

/// Saves a fresh token pair (a new chain from a user, or a refresh) and bumps the version that
/// the single-flight refresh compares.
pub fn store_tokens(
    conn: &mut DbConnection,
    cipher: &Cipher,
    member_id: &str,
    access: &str,
    refresh: &str,
    expires_in: i64,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(portals::table.find(member_id))
        .set((
            TokenChange::new(cipher, member_id, access, refresh, expires_in, now),
            portals::token_version.eq(portals::token_version + 1),
        ))
        .execute(conn)
}

/// The columns every token save writes: the sealed pair, its expiry, and a released lease.
#[derive(AsChangeset)]
#[diesel(table_name = portals, treat_none_as_null = true)]
struct TokenChange {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_at: Option<NaiveDateTime>,
    needs_reauth: bool,
    refreshed_at: Option<NaiveDateTime>,
    refresh_lock_until: Option<NaiveDateTime>,
    refresh_lock_by: Option<String>,
    refresh_problem: Option<String>,
    updated_at: NaiveDateTime,
}

impl TokenChange {
    fn new(
        cipher: &Cipher,
        member_id: &str,
        access: &str,
        refresh: &str,
        expires_in: i64,
        now: NaiveDateTime,
    ) -> TokenChange {
        TokenChange {
            access_token: Some(cipher.seal(Slot::access_token(member_id), access)),
            refresh_token: Some(cipher.seal(Slot::refresh_token(member_id), refresh)),
            expires_at: Some(super::token_expiry(now, expires_in)),
            needs_reauth: false,
            refreshed_at: Some(now),
            refresh_lock_until: None,
            refresh_lock_by: None,
            refresh_problem: None,
            updated_at: now,
        }
    }
}

/// Takes the refresh lease if the tokens are still at `version` and nobody holds it.
pub fn try_lock_refresh(
    conn: &mut DbConnection,
    member_id: &str,
    version: i64,
    holder: &str,
    until: NaiveDateTime,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let n = diesel::update(
        portals::table
            .filter(portals::member_id.eq(member_id))
            .filter(portals::token_version.eq(version))
            .filter(
                portals::refresh_lock_until
                    .is_null()
                    .or(portals::refresh_lock_until.lt(now)),
            ),
    )
    .set((
        portals::refresh_lock_until.eq(until),
        portals::refresh_lock_by.eq(holder),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Saves refreshed tokens if the row still holds the pair they replace (`version`), whoever
/// holds the lease by now: Bitrix24 consumed the old refresh token, so the pair just received
/// is the only live one, and dropping it because a lease ran out would lose the portal.
#[allow(clippy::too_many_arguments)]
pub fn finish_refresh(
    conn: &mut DbConnection,
    cipher: &Cipher,
    member_id: &str,
    version: i64,
    access: &str,
    refresh: &str,
    expires_in: i64,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let n = diesel::update(
        portals::table
            .filter(portals::member_id.eq(member_id))
            .filter(portals::token_version.eq(version)),
    )
    .set((
        TokenChange::new(cipher, member_id, access, refresh, expires_in, now),
        portals::token_version.eq(version + 1),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Gives the lease back without new tokens, noting why the refresh failed (`problem`).
pub fn release_refresh(
    conn: &mut DbConnection,
    member_id: &str,
    holder: &str,
    problem: Option<&str>,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    let target = portals::table
        .filter(portals::member_id.eq(member_id))
        .filter(portals::refresh_lock_by.eq(holder));
    match problem {
        Some(problem) => diesel::update(target)
            .set((
                portals::refresh_lock_until.eq(None::<NaiveDateTime>),
                portals::refresh_lock_by.eq(None::<String>),
                portals::refresh_problem.eq(problem),
                portals::updated_at.eq(now),
            ))
            .execute(conn),
        None => diesel::update(target)
            .set((
                portals::refresh_lock_until.eq(None::<NaiveDateTime>),
                portals::refresh_lock_by.eq(None::<String>),
            ))
            .execute(conn),
    }
}

/// The refresh token of `version` is dead: the portal needs re-authorisation, for `reason`.
/// Only while the row still holds that pair; a newer pair saved meanwhile is live.
pub fn mark_refresh_lost(
    conn: &mut DbConnection,
    member_id: &str,
    version: i64,
    reason: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let n = diesel::update(
        portals::table
            .filter(portals::member_id.eq(member_id))
            .filter(portals::token_version.eq(version)),
    )
    .set((
        portals::refresh_lock_until.eq(None::<NaiveDateTime>),
        portals::refresh_lock_by.eq(None::<String>),
        portals::needs_reauth.eq(true),
        portals::refresh_problem.eq(reason),
        portals::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// A renamed portal: Bitrix24 answered 302 from the old domain.
pub fn move_endpoint(
    conn: &mut DbConnection,
    member_id: &str,
    domain: &str,
    client_endpoint: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(portals::table.find(member_id))
        .set((
            portals::domain.eq(domain),
            portals::client_endpoint.eq(client_endpoint),
            portals::updated_at.eq(now),
        ))
        .execute(conn)
}

/// Stores the application token of a verified update received at `received_at`, unless a token
/// brought by a newer request is already stored; returns whether it was stored.
pub fn set_application_token(
    conn: &mut DbConnection,
    cipher: &Cipher,
    member_id: &str,
    token: &str,
    received_at: NaiveDateTime,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let n = diesel::update(
        portals::table
            .filter(portals::member_id.eq(member_id))
            .filter(
                portals::app_token_received_at
                    .is_null()
                    .or(portals::app_token_received_at.le(received_at)),
            ),
    )
    .set((
        portals::application_token.eq(cipher.seal(Slot::application_token(member_id), token)),
        portals::app_token_received_at.eq(received_at),
        portals::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// ONAPPUNINSTALL without CLEAN: the portal stays for its history but takes no more calls.
pub fn mark_uninstalled(
    conn: &mut DbConnection,
    member_id: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(portals::table.find(member_id))
        .set((
            portals::installed.eq(false),
            portals::uninstalled_at.eq(now),
            portals::access_token.eq(None::<String>),
            portals::refresh_token.eq(None::<String>),
            // A re-installation brings a new application token; the old one must not linger
            // as if it still vouched for events, nor the old install's self-check result.
            portals::application_token.eq(None::<String>),
            portals::app_check_sent_at.eq(None::<NaiveDateTime>),
            portals::app_reached_at.eq(None::<NaiveDateTime>),
            portals::app_token_received_at.eq(None::<NaiveDateTime>),
            portals::updated_at.eq(now),
        ))
        .execute(conn)
}

/// ONAPPUNINSTALL with CLEAN=1: every row of this portal goes, and nothing of any other.
pub fn delete_everything(conn: &mut DbConnection, member_id: &str) -> QueryResult<usize> {
    // Explicit deletes rather than relying on ON DELETE CASCADE, which SQLite honours only with
    // foreign_keys=ON on that very connection.
    let mut n = diesel::delete(jobs::table.filter(jobs::member_id.eq(member_id))).execute(conn)?;
    // Attempts before their callbacks (the foreign key), and the call events Mango posted.
    n += diesel::delete(call_attempts::table.filter(call_attempts::member_id.eq(member_id)))
        .execute(conn)?;
    n +=
        diesel::delete(mango_call_events::table.filter(mango_call_events::member_id.eq(member_id)))
            .execute(conn)?;
    n += diesel::delete(callbacks::table.filter(callbacks::member_id.eq(member_id)))
        .execute(conn)?;
    // The portal's shared REST budget row: a re-installation starts with a full bucket.
    n += diesel::delete(rest_budgets::table.find(member_id)).execute(conn)?;
    n += diesel::delete(deals::table.filter(deals::member_id.eq(member_id))).execute(conn)?;
    n += diesel::delete(portal_settings::table.filter(portal_settings::member_id.eq(member_id)))
        .execute(conn)?;
    n += diesel::delete(portals::table.find(member_id)).execute(conn)?;
    Ok(n)
}

/// Installed portals whose last refresh is older than `before` (keep-alive candidates).
pub fn stale_token_portals(
    conn: &mut DbConnection,
    before: NaiveDateTime,
) -> QueryResult<Vec<(String, Option<NaiveDateTime>)>> {
    portals::table
        .filter(portals::installed.eq(true))
        .filter(portals::needs_reauth.eq(false))
        .filter(portals::refresh_token.is_not_null())
        .filter(
            portals::refreshed_at
                .is_null()
                .or(portals::refreshed_at.lt(before)),
        )
        .select((portals::member_id, portals::refreshed_at))
        .load(conn)
}

pub fn settings(conn: &mut DbConnection, member_id: &str) -> QueryResult<Option<PortalSettings>> {
    portal_settings::table
        .find(member_id)
        .select(PortalSettings::as_select())
        .first(conn)
        .optional()
}

/// Settings or their defaults when the admin has not saved any yet.
pub fn settings_or_default(
    conn: &mut DbConnection,
    member_id: &str,
    now: NaiveDateTime,
) -> QueryResult<PortalSettings> {
    Ok(settings(conn, member_id)?.unwrap_or_else(|| PortalSettings::defaults(member_id, now)))
}

/// Settings of every portal that uses this Mango account (a key may serve several portals).
pub fn settings_by_mango_key(
    conn: &mut DbConnection,
    api_key: &str,
) -> QueryResult<Vec<PortalSettings>> {
    portal_settings::table
        .filter(portal_settings::mango_api_key.eq(api_key))
        .select(PortalSettings::as_select())
        .load(conn)
}

pub fn save_settings(conn: &mut DbConnection, s: &PortalSettings) -> QueryResult<()> {
    let inserted = insert_if_absent!(conn, diesel::insert_into(portal_settings::table).values(s))?;
    if !inserted {
        diesel::update(portal_settings::table.find(&s.member_id))
            .set(s)
            .execute(conn)?;
    }
    Ok(())
}

pub fn record_mango_status(
    conn: &mut DbConnection,
    member_id: &str,
    error: Option<&str>,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(portal_settings::table.find(member_id))
        .set((
            portal_settings::mango_last_error.eq(error),
            portal_settings::mango_checked_at.eq(now),
        ))
        .execute(conn)
}

/// The self-check is about to ask Bitrix24 for ONAPPTEST: recorded before asking, so that an
/// answer arriving while the request is still returning counts as an answer to it.
pub fn mark_app_check_sent(
    conn: &mut DbConnection,
    member_id: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(portals::table.find(member_id))
        .set(portals::app_check_sent_at.eq(now))
        .execute(conn)
}

/// A verified ONAPPTEST arrived: Bitrix24 reaches the app's public URL.
pub fn mark_app_reached(
    conn: &mut DbConnection,
    member_id: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(portals::table.find(member_id))
        .set(portals::app_reached_at.eq(now))
        .execute(conn)
}

/// Stores an application token only where none is stored yet (a verified ONAPPTEST on a portal
/// whose installer POST carried no `APPLICATION_TOKEN`); never replaces one.
pub fn set_application_token_if_missing(
    conn: &mut DbConnection,
    cipher: &Cipher,
    member_id: &str,
    token: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(
        portals::table
            .filter(portals::member_id.eq(member_id))
            .filter(portals::application_token.is_null()),
    )
    .set((
        portals::application_token.eq(cipher.seal(Slot::application_token(member_id), token)),
        portals::app_token_received_at.eq(now),
        portals::updated_at.eq(now),
    ))
    .execute(conn)
}
