//! Re-sealing every sealed value: `mango-callback rotate-key` (old key → new key, one
//! transaction, all or nothing) and the one-time upgrade of pre-#8 `v1:` values to bound `v2:`
//! values at start-up. The only code that walks every sealed column; which columns those are is
//! [`SealedColumn::ALL`], and the `match`es below make a new one impossible to forget.

use std::collections::BTreeMap;

use diesel::prelude::*;

use crate::config::{SecretArg, Settings, SettingsArgs};
use crate::crypto::{Cipher, SealedColumn, SecretKey, Slot};
use crate::db::schema::{portal_settings, portals};
use crate::db::{write_tx, Db, DbConnection, DbError};

/// One stored sealed value.
struct Stored {
    column: SealedColumn,
    member_id: String,
    sealed: String,
}

impl Stored {
    fn slot(&self) -> Slot<'_> {
        Slot::new(self.column, &self.member_id)
    }
    fn describe(&self) -> String {
        format!("{} of portal {}", self.column, self.member_id)
    }
}

/// What a re-seal did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResealCounts {
    /// Values re-sealed, per column (every column listed, zeros included).
    pub per_column: BTreeMap<SealedColumn, usize>,
    /// How many of them were in the old `v1:` format.
    pub legacy: usize,
    /// Values left as they were because they did not open (upgrade only; rotation refuses).
    pub unreadable: Vec<String>,
}

impl ResealCounts {
    fn new() -> ResealCounts {
        ResealCounts {
            per_column: SealedColumn::ALL.iter().map(|c| (*c, 0)).collect(),
            ..Default::default()
        }
    }
    pub fn total(&self) -> usize {
        self.per_column.values().sum()
    }
}

impl std::fmt::Display for ResealCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} values", self.total())?;
        let parts: Vec<String> = self
            .per_column
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        write!(f, " ({}", parts.join(", "))?;
        write!(f, "; {} were in the old v1 format)", self.legacy)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("{} stored value(s) do not open with the old key, so nothing was changed{}: {}", .values.len(), already_new_hint(*.already_new), .values.join(", "))]
    Unreadable {
        values: Vec<String>,
        /// How many of those open with the new key (a rotation that already ran).
        already_new: usize,
    },
    #[error("{0} changed while re-sealing (is an instance still running?); nothing was changed: stop every instance and run again")]
    Changed(String),
    /// Kept ONAPPUPDATE events (verified later by a job) carry tokens sealed under the current
    /// key inside their job payload, which rotation does not rewrite; they finish within about
    /// an hour.
    #[error("{0} ONAPPUPDATE event(s) wait for verification with tokens sealed under the old key; nothing was changed: run again once they are done (within about an hour)")]
    UpdatesWaiting(i64),
    #[error(transparent)]
    Db(#[from] DbError),
}

fn already_new_hint(n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} of them already open with the new key: was the rotation already done?)")
    }
}

/// The sealed values of one column; `only_legacy` keeps only `v1:` ones.
fn load_column(
    conn: &mut DbConnection,
    column: SealedColumn,
    only_legacy: bool,
) -> QueryResult<Vec<Stored>> {
    let pattern = if only_legacy { "v1:%" } else { "%" };
    let rows: Vec<(String, Option<String>)> = match column {
        SealedColumn::AccessToken => portals::table
            .filter(portals::access_token.like(pattern))
            .select((portals::member_id, portals::access_token))
            .load(conn)?,
        SealedColumn::RefreshToken => portals::table
            .filter(portals::refresh_token.like(pattern))
            .select((portals::member_id, portals::refresh_token))
            .load(conn)?,
        SealedColumn::ApplicationToken => portals::table
            .filter(portals::application_token.like(pattern))
            .select((portals::member_id, portals::application_token))
            .load(conn)?,
        SealedColumn::MangoApiSalt => portal_settings::table
            .filter(portal_settings::mango_api_salt.like(pattern))
            .select((portal_settings::member_id, portal_settings::mango_api_salt))
            .load(conn)?,
    };
    Ok(rows
        .into_iter()
        .filter_map(|(member_id, sealed)| {
            sealed.map(|sealed| Stored {
                column,
                member_id,
                sealed,
            })
        })
        .collect())
}

/// Compare-and-set: replaces the value only if it is still `old`, so a token refresh that
/// committed meanwhile is never overwritten with the re-sealed older token.
fn replace(conn: &mut DbConnection, s: &Stored, new: &str) -> QueryResult<usize> {
    let mid = s.member_id.as_str();
    let old = s.sealed.as_str();
    match s.column {
        SealedColumn::AccessToken => diesel::update(
            portals::table
                .filter(portals::member_id.eq(mid))
                .filter(portals::access_token.eq(old)),
        )
        .set(portals::access_token.eq(new))
        .execute(conn),
        SealedColumn::RefreshToken => diesel::update(
            portals::table
                .filter(portals::member_id.eq(mid))
                .filter(portals::refresh_token.eq(old)),
        )
        .set(portals::refresh_token.eq(new))
        .execute(conn),
        SealedColumn::ApplicationToken => diesel::update(
            portals::table
                .filter(portals::member_id.eq(mid))
                .filter(portals::application_token.eq(old)),
        )
        .set(portals::application_token.eq(new))
        .execute(conn),
        SealedColumn::MangoApiSalt => diesel::update(
            portal_settings::table
                .filter(portal_settings::member_id.eq(mid))
                .filter(portal_settings::mango_api_salt.eq(old)),
        )
        .set(portal_settings::mango_api_salt.eq(new))
        .execute(conn),
    }
}

fn load_all(conn: &mut DbConnection, only_legacy: bool) -> QueryResult<Vec<Stored>> {
    let mut all = Vec::new();
    for column in SealedColumn::ALL {
        all.extend(load_column(conn, column, only_legacy)?);
    }
    Ok(all)
}

/// Re-seals every sealed value of every portal: opened with `old` (bound `v2:` or old `v1:`),
/// sealed with `new` for the same slot. One transaction: if any value does not open with `old`,
/// or changes underneath, nothing is written.
pub fn rotate(
    conn: &mut DbConnection,
    old: &Cipher,
    new: &Cipher,
) -> Result<ResealCounts, RotateError> {
    let mut changed: Option<String> = None;
    let result = write_tx(conn, |c| {
        let waiting = crate::jobs::queue::count_pending_of_kind(
            c,
            <crate::portal::upkeep::ApplyAppUpdate as crate::jobs::Job>::KIND,
        )?;
        if waiting > 0 {
            return Ok(Err(RotateError::UpdatesWaiting(waiting)));
        }
        let stored = load_all(c, false)?;
        let mut opened = Vec::with_capacity(stored.len());
        let mut unreadable = Vec::new();
        let mut already_new = 0;
        for s in &stored {
            match old.open_for_reseal(s.slot(), &s.sealed) {
                Ok(o) => opened.push((s, o)),
                Err(_) => {
                    if new.open(s.slot(), &s.sealed).is_ok() {
                        already_new += 1;
                    }
                    unreadable.push(s.describe());
                }
            }
        }
        if !unreadable.is_empty() {
            return Ok(Err(RotateError::Unreadable {
                values: unreadable,
                already_new,
            }));
        }
        let mut counts = ResealCounts::new();
        for (s, o) in opened {
            let fresh = new.seal(s.slot(), &o.plain);
            if replace(c, s, &fresh)? != 1 {
                changed = Some(s.describe());
                // Rolls the whole transaction back.
                return Err(DbError::Query(diesel::result::Error::RollbackTransaction));
            }
            *counts.per_column.entry(s.column).or_default() += 1;
            counts.legacy += usize::from(o.legacy);
        }
        Ok(Ok(counts))
    });
    match result {
        Ok(outcome) => outcome,
        Err(e) => Err(match changed {
            Some(what) => RotateError::Changed(what),
            None => RotateError::Db(e),
        }),
    }
}

/// Re-seals the old unbound `v1:` values under the current key, bound to their slot, so that
/// [`Cipher::open`] never needs to read `v1:` (see [`crate::crypto`]). Run at every start; a
/// no-op once done. Values that do not open are left alone and reported (the app then treats
/// them as missing, as it always has); values changed meanwhile by another instance are skipped.
pub fn upgrade_legacy(conn: &mut DbConnection, cipher: &Cipher) -> Result<ResealCounts, DbError> {
    write_tx(conn, |c| {
        let mut counts = ResealCounts::new();
        for s in load_all(c, true)? {
            match cipher.open_for_reseal(s.slot(), &s.sealed) {
                Ok(o) => {
                    let fresh = cipher.seal(s.slot(), &o.plain);
                    if replace(c, &s, &fresh)? == 1 {
                        *counts.per_column.entry(s.column).or_default() += 1;
                        counts.legacy += 1;
                    }
                }
                Err(_) => counts.unreadable.push(s.describe()),
            }
        }
        Ok(counts)
    })
}

/// [`upgrade_legacy`] at start-up, logged.
pub async fn upgrade_at_start(db: &Db, cipher: &Cipher) -> Result<(), DbError> {
    let cipher = cipher.clone();
    let counts = db.run(move |c| upgrade_legacy(c, &cipher)).await?;
    if counts.total() > 0 {
        tracing::info!(%counts, "re-sealed old v1 secrets, now bound to their table, column and portal");
    }
    if !counts.unreadable.is_empty() {
        tracing::warn!(values = %counts.unreadable.join(", "), "old v1 secrets that do not open with APP_SECRET_KEY were left as they are");
    }
    Ok(())
}

/// `mango-callback rotate-key`: the stored values are sealed with the old key
/// (`APP_OLD_SECRET_KEY` / `--old-key`); afterwards they are sealed with `APP_SECRET_KEY`.
pub async fn rotate_key_command(
    args: SettingsArgs,
    old_key: Option<SecretArg>,
) -> anyhow::Result<ResealCounts> {
    use anyhow::Context as _;
    // The new key must be given: silently generating or reading `data/secret.key` here could
    // seal everything under a key nobody wrote down.
    if args
        .secret_key
        .as_ref()
        .is_none_or(|k| k.0.trim().is_empty())
    {
        anyhow::bail!(
            "APP_SECRET_KEY: set it to the new key for rotate-key (e.g. `openssl rand -hex 32`)"
        );
    }
    let old_text = old_key
        .map(|k| k.0)
        .filter(|k| !k.trim().is_empty())
        .context(
            "APP_OLD_SECRET_KEY (or --old-key): give the key the stored values are sealed with now",
        )?;
    let old =
        SecretKey::parse_old(&old_text).map_err(|e| anyhow::anyhow!("APP_OLD_SECRET_KEY: {e}"))?;
    let settings = Settings::from_args(args)?;
    let (old, new) = (Cipher::new(&old), Cipher::new(&settings.secret_key));
    let url = settings.database_url.clone();
    let db = tokio::task::spawn_blocking(move || Db::connect(&url, 2))
        .await
        .context("database start-up task failed")??;
    let counts = tokio::task::spawn_blocking(move || {
        let mut conn = db.get_blocking()?;
        rotate(&mut conn, &old, &new)
    })
    .await
    .context("rotation task failed")??;
    Ok(counts)
}
