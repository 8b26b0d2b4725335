//! Per-portal client-side rate limiting and per-portal refresh gates, shared by a process's threads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket per portal that stays under Bitrix24's leaky bucket (drain Y req/s, burst X).
///
/// It keeps a margin (90 % of the rate, 80 % of the burst) because the portal's bucket also
/// counts requests we cannot see (the admin's own iframe calls, other apps on our IP).
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(requests_per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: (requests_per_second * 0.9).max(0.1),
            burst: (f64::from(burst) * 0.8).floor().max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// How long to wait before one request for `member_id` may go; takes the token if zero.
    fn try_take(&self, member_id: &str) -> Duration {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let b = map.entry(member_id.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - b.tokens) / self.rate)
        }
    }

    /// Waits until one request for the portal is allowed.
    pub async fn acquire(&self, member_id: &str) {
        loop {
            let wait = self.try_take(member_id);
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
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
