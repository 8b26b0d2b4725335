//! Per-portal Bitrix24 request budgets (shared through the database) and per-portal refresh gates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;
use crate::db::{Db, DbError};

/// Each portal's budget under Bitrix24's leaky bucket (drain Y req/s, burst X), shared through
/// the database by every instance using it, so two instances do not each spend the whole budget.
///
/// It keeps a margin (90 % of the rate, 80 % of the burst) because the portal's bucket also
/// counts requests we cannot see (the admin's own iframe calls, other apps on our IP).
pub struct RateLimiter {
    db: Db,
    clock: Clock,
    /// Microseconds between requests at the sustained rate (GCRA's emission interval).
    interval_us: i64,
    /// How far ahead of now the schedule may run: the burst, less the request itself.
    tolerance_us: i64,
    /// Portals found short of budget by [`RateLimiter::gather_or_send`], and until when their
    /// requests are gathered even if the budget is back (this process's own view).
    short_until: Mutex<HashMap<String, chrono::NaiveDateTime>>,
}

/// How long after the last request that found it short (or was gathered because it was) a
/// portal's requests go on being gathered. In a long burst the budget refills at ~2 requests a
/// second while Mango places 4 callbacks a second per account: sending a report alone whenever
/// the refill brought the budget back over the mark spent the whole refill on single reports,
/// 0.51 requests per callback in the 10,000-call burst. Held, a busy portal's reports share one
/// request a second; a portal idle this long sends at once again.
pub const SHORT_FOR: Duration = Duration::from_secs(10);

/// Whether a portal's next request goes now or waits to share a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// At least the share asked for is left: send now.
    Plenty,
    /// Only this share of the burst is left: gather.
    Low(f64),
    /// It ran low within [`SHORT_FOR`] of a request gathered since: gather.
    RecentlyLow,
}

impl RateLimiter {
    pub fn new(db: Db, clock: Clock, requests_per_second: f64, burst: u32) -> RateLimiter {
        let rate = (requests_per_second * 0.9).max(0.1);
        let burst = (f64::from(burst) * 0.8).floor().max(1.0);
        let interval_us = (1_000_000.0 / rate).ceil() as i64;
        RateLimiter {
            db,
            clock,
            interval_us,
            tolerance_us: (burst as i64 - 1) * interval_us,
            short_until: Mutex::default(),
        }
    }

    /// Whether a request of `member_id` that could share a batch goes now: while at least
    /// `at_least` of the burst is left ([`RateLimiter::spare`]) and the portal has not run low
    /// within [`SHORT_FOR`] of one of its gathered requests.
    pub async fn gather_or_send(&self, member_id: &str, at_least: f64) -> Result<Budget, DbError> {
        let now = self.clock.now();
        let hold = chrono::Duration::from_std(SHORT_FOR).unwrap_or_default();
        let short = || self.short_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = short().get_mut(member_id).filter(|until| **until > now) {
            *until = now + hold;
            return Ok(Budget::RecentlyLow);
        }
        let spare = self.spare(member_id).await?;
        if spare >= at_least {
            return Ok(Budget::Plenty);
        }
        let mut short = short();
        // Portals whose hold has passed are forgotten: the map holds the busy ones only.
        short.retain(|_, until| *until > now);
        short.insert(member_id.to_owned(), now + hold);
        Ok(Budget::Low(spare))
    }

    /// Takes one request for `member_id` from the shared budget: `Duration::ZERO` when taken,
    /// else how long until the budget allows one (nothing is taken then).
    pub async fn try_take(&self, member_id: &str) -> Result<Duration, DbError> {
        let (member, offset_us) = (member_id.to_owned(), self.clock.offset_us());
        let (interval_us, tolerance_us) = (self.interval_us, self.tolerance_us);
        let wait = self
            .db
            .run(move |c| super::store::take(c, &member, offset_us, interval_us, tolerance_us))
            .await?;
        Ok(wait.map_or(Duration::ZERO, |us| {
            Duration::from_micros(u64::try_from(us).unwrap_or(1))
        }))
    }

    /// The share of the portal's burst that is left now, from 0.0 (spent: the next request
    /// waits) to 1.0 (full). A read only: callers use it to decide whether to send at once or
    /// gather requests into shared batches.
    pub async fn spare(&self, member_id: &str) -> Result<f64, DbError> {
        let (member, offset_us) = (member_id.to_owned(), self.clock.offset_us());
        let ahead = self
            .db
            .read(move |c| super::store::ahead(c, &member, offset_us))
            .await?;
        let burst_us = (self.tolerance_us + self.interval_us).max(1);
        Ok((1.0 - ahead as f64 / burst_us as f64).clamp(0.0, 1.0))
    }
}

/// One async mutex per portal: concurrent refreshes inside one process coalesce behind it
/// before the database lease settles the race between processes.
#[derive(Default)]
pub struct RefreshGates {
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl RefreshGates {
    pub fn gate(&self, member_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(member_id.to_owned()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn two_limiters_on_one_database_share_a_portals_burst_and_refill_with_the_clock() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = dir.path().join("budget.db").display().to_string();
        let db = Db::connect(&url, 2).expect("database");
        let clock = Clock::system();
        // 10 a second with a burst of 5: 9 a second and 4 at once after the margin.
        let one = RateLimiter::new(db.clone(), clock.clone(), 10.0, 5);
        let other = RateLimiter::new(db.clone(), clock.clone(), 10.0, 5);
        for i in 0..4 {
            let limiter = if i % 2 == 0 { &one } else { &other };
            assert_eq!(limiter.try_take("p1").await.expect("db"), Duration::ZERO);
        }
        let wait = other.try_take("p1").await.expect("db");
        assert!(
            wait > Duration::from_millis(50) && wait <= Duration::from_millis(112),
            "the burst is spent for both: {wait:?}"
        );
        assert_eq!(
            one.try_take("p2").await.expect("db"),
            Duration::ZERO,
            "another portal has its own budget"
        );
        clock.advance(Duration::from_secs(1));
        for _ in 0..4 {
            assert_eq!(one.try_take("p1").await.expect("db"), Duration::ZERO);
        }
    }
}
