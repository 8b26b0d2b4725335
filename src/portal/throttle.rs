//! Server-side throttle of the settings page's Mango requests ("Check connection", "Load from
//! Mango"), kept in the shared `rate_slots` table so that every app instance sees one budget.
//!
//! Mango allows one invalid (3xxx) request per API key in 2 minutes; the second locks the key's
//! API for 2 minutes — the robot's callbacks included (Mango's documentation on request limits). The page's
//! own script only slows an honest browser, so the server enforces two rules:
//! - a portal's page asks Mango at most once per [`PAGE_INTERVAL`];
//! - after Mango refused a key (a 3xxx answer or HTTP 401), no page request uses that key for
//!   [`REFUSED_KEY_PAUSE`], whatever salt is typed: we cannot know the next one is right, and a
//!   wrong one would trigger the lock.
//!
//! Rows: bucket `page-mango:{member_id}` holds the time (µs) of the page's last Mango request,
//! bucket `mango-refused:{sha256(key)}` the times Mango refused the key; slot -1 of the portal's
//! bucket is the row that serialises concurrent takers, as in
//! [`crate::mango::rate`]. Old rows are deleted as they are passed.

use std::time::Duration;

use diesel::prelude::*;

use crate::db::schema::rate_slots;
use crate::db::{insert_if_absent, write_tx, DbConnection, DbError};

/// At most one Mango request (or "Load from Mango" pair) from a portal's page this often.
pub const PAGE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a key Mango refused is not used from the page: Mango's own lockout window.
pub const REFUSED_KEY_PAUSE: Duration = Duration::from_secs(120);

/// Why the page has to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The portal's page asked Mango less than [`PAGE_INTERVAL`] ago.
    Portal(Duration),
    /// Mango refused this key less than [`REFUSED_KEY_PAUSE`] ago.
    RefusedKey(Duration),
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn wait_from(until_us: i64, now_us: i64) -> Duration {
    Duration::from_micros(u64::try_from(until_us.saturating_sub(now_us)).unwrap_or(0))
}

fn portal_bucket(member_id: &str) -> String {
    format!("page-mango:{member_id}")
}

fn refused_bucket(key_hash: &str) -> String {
    format!("mango-refused:{key_hash}")
}

/// Takes the portal's turn to ask Mango with the key whose SHA-256 (hex) is `key_hash`, or says
/// how long to wait. A refused turn takes nothing.
pub fn take_page_turn(
    conn: &mut DbConnection,
    member_id: &str,
    key_hash: &str,
    now_us: i64,
) -> Result<Result<(), Wait>, DbError> {
    let portal = portal_bucket(member_id);
    let refused = refused_bucket(key_hash);
    write_tx(conn, |c| {
        insert_if_absent!(
            c,
            diesel::insert_into(rate_slots::table).values((
                rate_slots::bucket.eq(&portal),
                rate_slots::slot.eq(-1i64),
                rate_slots::used.eq(0),
            ))
        )?;
        diesel::update(rate_slots::table.find((&portal, -1i64)))
            .set(rate_slots::used.eq(rate_slots::used + 1))
            .execute(c)?;

        let refused_since = now_us.saturating_sub(micros(REFUSED_KEY_PAUSE));
        diesel::delete(
            rate_slots::table
                .filter(rate_slots::bucket.eq(&refused))
                .filter(rate_slots::slot.le(refused_since)),
        )
        .execute(c)?;
        let last_refusal: Option<i64> = rate_slots::table
            .filter(rate_slots::bucket.eq(&refused))
            .select(diesel::dsl::max(rate_slots::slot))
            .first(c)?;
        if let Some(at) = last_refusal {
            let until = at.saturating_add(micros(REFUSED_KEY_PAUSE));
            return Ok(Err(Wait::RefusedKey(wait_from(until, now_us))));
        }

        let page_since = now_us.saturating_sub(micros(PAGE_INTERVAL));
        diesel::delete(
            rate_slots::table
                .filter(rate_slots::bucket.eq(&portal))
                .filter(rate_slots::slot.ge(0i64))
                .filter(rate_slots::slot.le(page_since)),
        )
        .execute(c)?;
        let last_turn: Option<i64> = rate_slots::table
            .filter(rate_slots::bucket.eq(&portal))
            .filter(rate_slots::slot.ge(0i64))
            .select(diesel::dsl::max(rate_slots::slot))
            .first(c)?;
        if let Some(at) = last_turn {
            let until = at.saturating_add(micros(PAGE_INTERVAL));
            return Ok(Err(Wait::Portal(wait_from(until, now_us))));
        }
        insert_if_absent!(
            c,
            diesel::insert_into(rate_slots::table).values((
                rate_slots::bucket.eq(&portal),
                rate_slots::slot.eq(now_us),
                rate_slots::used.eq(1),
            ))
        )?;
        Ok(Ok(()))
    })
}

/// Notes that Mango refused the key: the page leaves it alone for [`REFUSED_KEY_PAUSE`].
pub fn record_refused_key(
    conn: &mut DbConnection,
    key_hash: &str,
    now_us: i64,
) -> Result<(), DbError> {
    let refused = refused_bucket(key_hash);
    // Keys that are never checked again would leave their rows behind: sweep every old one.
    diesel::delete(
        rate_slots::table
            .filter(rate_slots::bucket.like(refused_bucket("%")))
            .filter(rate_slots::slot.le(now_us.saturating_sub(micros(REFUSED_KEY_PAUSE)))),
    )
    .execute(conn)?;
    insert_if_absent!(
        conn,
        diesel::insert_into(rate_slots::table).values((
            rate_slots::bucket.eq(&refused),
            rate_slots::slot.eq(now_us),
            rate_slots::used.eq(1),
        ))
    )?;
    Ok(())
}
