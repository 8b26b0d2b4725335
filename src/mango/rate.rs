//! Mango's limit of callback commands per account (4 a second), counted in the shared database
//! so that every portal and app instance using one key shares the budget.

use std::time::Duration;

use diesel::prelude::*;

use crate::clock::Clock;
use crate::db::schema::rate_slots;
use crate::db::{db_now_us, insert_if_absent, write_tx, Db, DbConnection, DbError};
use crate::metrics::{Limit, Metrics};

/// Mango's documented limit for callback commands per account and second.
pub const MANGO_CALLBACKS_PER_SECOND: i64 = 4;
/// The window we count them in: a second plus a margin for the network's jitter, because Mango
/// counts when the requests arrive, not when we sent them.
const MANGO_RATE_WINDOW_US: i64 = 1_150_000;

/// Waits until the account of `api_key` may send one more callback command, and takes the slot.
/// A wait is counted once per command in `metrics` (`limit_waits_total{limit="mango_slot"}`).
pub async fn wait_for_callback_slot(
    db: &Db,
    clock: &Clock,
    metrics: &Metrics,
    api_key: &str,
) -> Result<(), DbError> {
    let bucket = format!("mango:{}", crate::crypto::sha256_hex(api_key.as_bytes()));
    let mut counted = false;
    loop {
        let offset_us = clock.offset_us();
        let b = bucket.clone();
        if db
            .run(move |c| {
                take_rate_slot(
                    c,
                    &b,
                    offset_us,
                    MANGO_CALLBACKS_PER_SECOND,
                    MANGO_RATE_WINDOW_US,
                )
            })
            .await?
        {
            return Ok(());
        }
        if !counted {
            metrics.limit_wait(Limit::MangoSlot);
            counted = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Mango rate: at most `limit` callback commands per account within any `window_us`, counted in
/// the shared database so that every portal and app instance using one key shares the budget.
///
/// A sliding window (Mango's own limit behaves like one), not fixed seconds, which would allow
/// twice the rate across a second boundary. The row at slot -1 is a lock: updating it first
/// (a write that changes nothing) serialises concurrent takers on PostgreSQL as well as on
/// SQLite. Each taken slot is a row keyed by its time in microseconds of the database clock, plus
/// `offset_us` (the app clock's test offset), so instances with drifting host clocks agree.
pub fn take_rate_slot(
    conn: &mut DbConnection,
    bucket: &str,
    offset_us: i64,
    limit: i64,
    window_us: i64,
) -> Result<bool, DbError> {
    write_tx(conn, |c| {
        insert_if_absent(c, |c| {
            diesel::insert_into(rate_slots::table)
                .values((
                    rate_slots::bucket.eq(bucket),
                    rate_slots::slot.eq(-1i64),
                    rate_slots::used.eq(0),
                ))
                .execute(c)
        })?;
        diesel::update(rate_slots::table.find((bucket, -1i64)))
            .set(rate_slots::used.eq(rate_slots::used))
            .execute(c)?;
        // Read after the lock: a taker that waited for it counts from when it got it.
        let now_us = db_now_us(c)?.saturating_add(offset_us);
        diesel::delete(
            rate_slots::table
                .filter(rate_slots::bucket.eq(bucket))
                .filter(rate_slots::slot.ge(0i64))
                .filter(rate_slots::slot.le(now_us - window_us)),
        )
        .execute(c)?;
        let recent: i64 = rate_slots::table
            .filter(rate_slots::bucket.eq(bucket))
            .filter(rate_slots::slot.ge(0i64))
            .count()
            .get_result(c)?;
        if recent >= limit {
            return Ok(false);
        }
        let taken = insert_if_absent(c, |c| {
            diesel::insert_into(rate_slots::table)
                .values((
                    rate_slots::bucket.eq(bucket),
                    rate_slots::slot.eq(now_us),
                    rate_slots::used.eq(1),
                ))
                .execute(c)
        })?;
        Ok(taken)
    })
}
