//! Mango's limit of callback commands per account (4 a second), counted in the shared database
//! so that every portal and app instance using one key shares the budget.
//!
//! A sliding window (Mango's own limit behaves like one), not fixed seconds, which would allow
//! twice the rate across a second boundary. Each send is a `rate_slots` row keyed by its time in
//! microseconds of the database clock, plus the app clock's test offset, so instances with
//! drifting host clocks agree. The row at slot -1 of an account's bucket is a lock: updating it
//! first (a write that changes nothing) serialises concurrent takers on PostgreSQL as well as on
//! SQLite.

use std::time::Duration;

use diesel::prelude::*;

use crate::clock::Clock;
use crate::db::schema::{mango_waits, rate_slots};
use crate::db::{db_now_us, insert_if_absent, write_tx, Db, DbConnection, DbError};
use crate::metrics::{Limit, Metrics};

/// Mango's documented limit for callback commands per account and second.
pub const MANGO_CALLBACKS_PER_SECOND: i64 = 4;
/// The window we count them in: a second plus a margin for the network's jitter, because Mango
/// counts when the requests arrive, not when we sent them.
const MANGO_RATE_WINDOW_US: i64 = 1_150_000;

/// The last check before a command leaves this process: the slot was taken in the database
/// some moments earlier, and a send delayed between the two (a busy database, a busy CPU) could
/// arrive at Mango within one second of four later ones that were not. Mango counts arrivals, so
/// this keeps each account's actual sends from this process at most 4 in any
/// [`MANGO_RATE_WINDOW_US`], waiting the difference (a few hundred milliseconds at most).
#[derive(Default)]
pub struct SendPace {
    sent: std::sync::Mutex<std::collections::HashMap<String, std::collections::VecDeque<i64>>>,
}

impl SendPace {
    /// Waits until `api_key`'s account may send by the account's recent sends from this process,
    /// and counts this send. Time is the app's clock, so tests that move it move this too.
    pub async fn wait_turn(&self, clock: &Clock, api_key: &str) {
        let key = crate::crypto::sha256_hex(api_key.as_bytes());
        loop {
            let now = clock.now().and_utc().timestamp_micros();
            let wait_us = {
                let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
                // Accounts that sent nothing for a window are forgotten: the map stays small.
                sent.retain(|_, q| q.back().is_some_and(|t| now - t < MANGO_RATE_WINDOW_US));
                let q = sent.entry(key.clone()).or_default();
                while q.front().is_some_and(|t| now - t >= MANGO_RATE_WINDOW_US) {
                    q.pop_front();
                }
                if q.len() < MANGO_CALLBACKS_PER_SECOND as usize {
                    q.push_back(now);
                    return;
                }
                q.front().map_or(1_000, |t| t + MANGO_RATE_WINDOW_US - now)
            };
            tokio::time::sleep(Duration::from_micros(
                u64::try_from(wait_us.max(1_000)).unwrap_or(1_000),
            ))
            .await;
        }
    }
}

/// What the account's budget says to a callback that wants to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A slot was taken: send at once.
    Now,
    /// The callback has its place in the line: come back after this long (the job snoozes, so
    /// no worker is held while it waits).
    WaitFor(Duration),
}

/// A waiter not seen for this long died (its job was buried or its portal removed): its place
/// in the line is given up.
const STALE_WAIT_US: i64 = 60_000_000;

/// A callback whose slot comes this soon takes it now and waits the remainder in its worker
/// slot, instead of snoozing: a snooze is a round of the job queue (snooze, claim, and the slot
/// asked again: three commits and a claim's reads), and woken waiters found their room a
/// millisecond or two away after every late claim. In a 10,000-call burst each callback went
/// through four slot requests and three snoozes.
const TAKE_AHEAD_US: i64 = 100_000;

/// Asks the account of `api_key` for a callback slot on behalf of `holder` (the callback's id).
/// Every wait it hands out is counted in `metrics` (`limit_waits_total{limit="mango_slot"}`: one
/// per snooze, so a callback woken before its turn counts again). A slot at most
/// [`TAKE_AHEAD_US`] ahead is taken, and waited for here.
pub async fn callback_slot(
    db: &Db,
    clock: &Clock,
    metrics: &Metrics,
    api_key: &str,
    holder: &str,
) -> Result<Slot, DbError> {
    let bucket = bucket_of(api_key);
    let (offset_us, holder) = (clock.offset_us(), holder.to_owned());
    let answer = db
        .run(move |c| take_callback_turn(c, &bucket, &holder, offset_us))
        .await?;
    Ok(act_on(answer, metrics).await)
}

/// [`take_or_queue`] with Mango's limit, inside a caller's transaction: for a callback that
/// records its next step with the answer (see `callback::place_call`).
pub fn take_callback_turn(
    conn: &mut DbConnection,
    bucket: &str,
    holder: &str,
    offset_us: i64,
) -> Result<Turn, DbError> {
    take_or_queue(
        conn,
        bucket,
        holder,
        offset_us,
        MANGO_CALLBACKS_PER_SECOND,
        MANGO_RATE_WINDOW_US,
    )
}

/// The account's line for `api_key` in `rate_slots` and `mango_waits` (the key itself is not
/// stored).
pub fn bucket_of(api_key: &str) -> String {
    format!("mango:{}", crate::crypto::sha256_hex(api_key.as_bytes()))
}

/// What a callback does with its [`Turn`]: a slot taken ahead is waited for here; a wait is
/// counted in `metrics` and handed back.
pub async fn act_on(turn: Turn, metrics: &Metrics) -> Slot {
    match turn {
        Turn::Taken { in_us } => {
            // Below a millisecond it is SQLite's µs apart for sends within one: go at once.
            if in_us >= 1_000 {
                tokio::time::sleep(Duration::from_micros(in_us.unsigned_abs())).await;
            }
            Slot::Now
        }
        Turn::Wait { .. } => {
            metrics.limit_wait(Limit::MangoSlot);
            Slot::WaitFor(wait_of(turn).unwrap_or(Duration::from_millis(1)))
        }
    }
}

/// How long a [`Turn::Wait`] waits, as [`act_on`] hands it back; `None` for a slot taken.
pub fn wait_of(turn: Turn) -> Option<Duration> {
    match turn {
        Turn::Taken { .. } => None,
        Turn::Wait { us } => Some(Duration::from_micros(
            u64::try_from(us.max(1_000)).unwrap_or(1_000),
        )),
    }
}

/// The account's answer to one callback asking for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// A slot is the callback's, `in_us` from now (0 to [`TAKE_AHEAD_US`]): send then.
    Taken { in_us: i64 },
    /// The callback has its place in the line: ask again after this long.
    Wait { us: i64 },
}

/// Takes a slot for `holder`, or gives it a place in the account's line and says how long
/// to wait (µs). The line is first come, first served: a newcomer queues behind every waiter,
/// and waiters are woken `window_us / limit` apart (the limit's own pace), so a woken waiter
/// normally finds room; one that does not (network jitter) keeps its place and is told when the
/// oldest send leaves the window. A slot that frees within [`TAKE_AHEAD_US`] is taken at once,
/// dated when it frees. Sends are counted in `rate_slots` (the module's doc); places in the line
/// are `mango_waits` rows, both under the bucket's lock row.
pub fn take_or_queue(
    conn: &mut DbConnection,
    bucket: &str,
    holder: &str,
    offset_us: i64,
    limit: i64,
    window_us: i64,
) -> Result<Turn, DbError> {
    write_tx(conn, |c| {
        lock_bucket(c, bucket)?;
        let now_us = db_now_us(c)?.saturating_add(offset_us);
        forget_old_slots(c, bucket, now_us - window_us)?;
        diesel::delete(
            mango_waits::table
                .filter(mango_waits::bucket.eq(bucket))
                .filter(mango_waits::wake_us.le(now_us - STALE_WAIT_US)),
        )
        .execute(c)?;
        let own: Option<i64> = mango_waits::table
            .find((bucket, holder))
            .select(mango_waits::wake_us)
            .first(c)
            .optional()?;
        if let Some(wake) = own.filter(|w| *w > now_us + TAKE_AHEAD_US) {
            return Ok(Turn::Wait { us: wake - now_us });
        }
        // Sends in the window, newest first (some may be dated ahead): the `limit`-th is the
        // one whose leaving makes room.
        let recent: Vec<i64> = rate_slots::table
            .filter(rate_slots::bucket.eq(bucket))
            .filter(rate_slots::slot.ge(0i64))
            .order(rate_slots::slot.desc())
            .limit(limit)
            .select(rate_slots::slot)
            .load(c)?;
        let frees_at = if (recent.len() as i64) < limit {
            now_us
        } else {
            recent
                .last()
                .map_or(now_us, |oldest| oldest + window_us + 1_000)
        };
        let someone_waits = own.is_none()
            && mango_waits::table
                .filter(mango_waits::bucket.eq(bucket))
                .count()
                .get_result::<i64>(c)?
                > 0;
        if frees_at <= now_us + TAKE_AHEAD_US && !someone_waits {
            // SQLite's clock moves in milliseconds: sends within one get the next free µs.
            let slot_us = recent
                .first()
                .map_or(frees_at, |newest| frees_at.max(newest + 1))
                .max(now_us);
            let taken = insert_slot(c, bucket, slot_us, 1)?;
            if taken {
                diesel::delete(mango_waits::table.find((bucket, holder))).execute(c)?;
                return Ok(Turn::Taken {
                    in_us: slot_us - now_us,
                });
            }
        }
        if let Some(own_wake) = own {
            // Woken but beaten to the room: keep the place, and come back when the sends
            // leaving the window make room for this one and for every waiter ahead of it. All
            // told to come back when the next send leaves, the late waiters of a busy account
            // raced for each freed slot, and each lost race was another round of the queue (a
            // callback went through up to 40 in a 10,000-call burst).
            let ahead: i64 = mango_waits::table
                .filter(mango_waits::bucket.eq(bucket))
                .filter(
                    mango_waits::wake_us.lt(own_wake).or(mango_waits::wake_us
                        .eq(own_wake)
                        .and(mango_waits::holder.lt(holder))),
                )
                .count()
                .get_result(c)?;
            let wake = frees_at.max(now_us + 1_000) + ahead * (window_us / limit.max(1));
            diesel::update(mango_waits::table.find((bucket, holder)))
                .set(mango_waits::wake_us.eq(wake))
                .execute(c)?;
            return Ok(Turn::Wait { us: wake - now_us });
        }
        let last: Option<i64> = mango_waits::table
            .filter(mango_waits::bucket.eq(bucket))
            .select(diesel::dsl::max(mango_waits::wake_us))
            .first(c)?;
        let wake = last.map_or(frees_at, |l| frees_at.max(l + window_us / limit.max(1)));
        diesel::insert_into(mango_waits::table)
            .values((
                mango_waits::bucket.eq(bucket),
                mango_waits::holder.eq(holder),
                mango_waits::wake_us.eq(wake),
            ))
            .execute(c)?;
        Ok(Turn::Wait {
            us: (wake - now_us).max(1_000),
        })
    })
}

/// The bucket's lock row (slot -1): updating it first (a write that changes nothing)
/// serialises concurrent takers on PostgreSQL as well as on SQLite.
///
/// The row exists after the account's first send, so it is updated first and made only when
/// that found nothing: one statement a turn. Inserted first every time, it was a second
/// statement that found its key taken on every turn after the first (16,000 in a 10,000-call
/// burst, each, before `insert_if_absent!`, an error in PostgreSQL's log and a savepoint).
fn lock_bucket(c: &mut DbConnection, bucket: &str) -> QueryResult<()> {
    let lock = |c: &mut DbConnection| {
        diesel::update(rate_slots::table.find((bucket, -1i64)))
            .set(rate_slots::used.eq(rate_slots::used))
            .execute(c)
    };
    if lock(c)? == 0 {
        insert_slot(c, bucket, -1, 0)?;
        lock(c)?;
    }
    Ok(())
}

/// The bucket's row at `slot` (a send's time in µs, or -1 for the lock row) unless it exists;
/// `false` when it did (a send already counted at that microsecond).
fn insert_slot(c: &mut DbConnection, bucket: &str, slot: i64, used: i32) -> QueryResult<bool> {
    insert_if_absent!(
        c,
        diesel::insert_into(rate_slots::table).values((
            rate_slots::bucket.eq(bucket),
            rate_slots::slot.eq(slot),
            rate_slots::used.eq(used),
        ))
    )
}

/// Sends at or before `until` no longer count.
fn forget_old_slots(c: &mut DbConnection, bucket: &str, until: i64) -> QueryResult<usize> {
    diesel::delete(
        rate_slots::table
            .filter(rate_slots::bucket.eq(bucket))
            .filter(rate_slots::slot.ge(0i64))
            .filter(rate_slots::slot.le(until)),
    )
    .execute(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_fifth_send_within_the_window_waits_until_the_first_has_left_it() {
        let clock = Clock::system();
        let pace = SendPace::default();
        for _ in 0..4 {
            pace.wait_turn(&clock, "key-a").await;
        }
        // Another account has its own four.
        let other =
            tokio::time::timeout(Duration::from_millis(50), pace.wait_turn(&clock, "key-b"));
        assert!(other.await.is_ok(), "another account is not held up");
        let fifth =
            tokio::time::timeout(Duration::from_millis(50), pace.wait_turn(&clock, "key-a"));
        assert!(fifth.await.is_err(), "the fifth in the window waits");
        clock.advance(Duration::from_micros(MANGO_RATE_WINDOW_US as u64));
        let later =
            tokio::time::timeout(Duration::from_millis(50), pace.wait_turn(&clock, "key-a"));
        assert!(later.await.is_ok(), "once the window has passed it goes");
    }
}
