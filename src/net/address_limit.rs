//! Per-client-address limit on the unauthenticated browser POSTs (`/b24/app`, the installer
//! form): each costs an `app.info` request to the OAuth server before we know who is calling,
//! so a flood from one address must be cut off before it costs anything.
//!
//! A token bucket per address (GCRA: one "theoretical arrival time" per key), driven by the
//! app's [`Clock`] so tests move time instead of sleeping. It lives in memory, per instance:
//! the cost it protects is this instance's outbound requests, a restart forgetting it is
//! harmless, and a database write per unauthenticated request would itself be the cheap flood
//! target. The map is bounded: an attacker with many addresses evicts idle entries first, then
//! the nearest-to-idle ones, never growing it past [`MAX_TRACKED`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::clock::Clock;

/// Requests one address may send at once…
pub const BURST: u32 = 20;
/// …and the pace at which its allowance comes back: one every 3 s, 20 a minute.
pub const REFILL_EVERY: Duration = Duration::from_secs(3);
/// Most addresses remembered at once (about 40 bytes each, so well under a megabyte).
pub const MAX_TRACKED: usize = 16_384;

/// Token buckets keyed by client address.
pub struct AddressLimiter {
    clock: Clock,
    burst: u32,
    interval_ms: i64,
    max_tracked: usize,
    /// Per key: the time (ms) at which its bucket is full again. At or before "now" means a
    /// full bucket, the same as no entry, so such entries are the first to be dropped.
    state: Mutex<HashMap<IpAddr, i64>>,
}

impl AddressLimiter {
    pub fn new(clock: Clock) -> AddressLimiter {
        AddressLimiter::with_limits(clock, BURST, REFILL_EVERY, MAX_TRACKED)
    }

    pub fn with_limits(
        clock: Clock,
        burst: u32,
        refill_every: Duration,
        max_tracked: usize,
    ) -> AddressLimiter {
        AddressLimiter {
            clock,
            burst: burst.max(1),
            interval_ms: i64::try_from(refill_every.as_millis())
                .unwrap_or(i64::MAX)
                .max(1),
            max_tracked: max_tracked.max(1),
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request's allowance for `ip`; `Err` is how long until the next is allowed.
    pub fn take(&self, ip: IpAddr) -> Result<(), Duration> {
        let key = bucket_key(ip);
        let now = self.clock.now_utc().timestamp_millis();
        // Lowest allowed "full again" time beyond now: burst-1 further requests' worth.
        let tolerance = self.interval_ms.saturating_mul(i64::from(self.burst - 1));
        // The map stays consistent under any panic (plain integers), so a poisoned lock is usable.
        let mut map = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let full_at = map.get(&key).copied().unwrap_or(now).max(now);
        if full_at - now > tolerance {
            let wait = full_at - now - tolerance;
            return Err(Duration::from_millis(u64::try_from(wait).unwrap_or(0)));
        }
        if !map.contains_key(&key) && map.len() >= self.max_tracked {
            map.retain(|_, full_at| *full_at > now);
            if map.len() >= self.max_tracked {
                if let Some(nearest) = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                    map.remove(&nearest);
                }
            }
        }
        map.insert(key, full_at.saturating_add(self.interval_ms));
        Ok(())
    }

    /// How many addresses are remembered (for the bound's test).
    pub fn tracked(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// IPv4 per address; IPv6 per /64, the smallest block a customer is usually given — one
/// subscriber owns 2^64 addresses and must not get 2^64 buckets.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// Whole seconds for `Retry-After`, rounded up and at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn a_burst_is_cut_off_at_the_limit_and_the_clock_refills_it() {
        let clock = Clock::system();
        let l = AddressLimiter::with_limits(clock.clone(), 3, Duration::from_secs(2), 100);
        let a = ip("198.51.100.1");
        for _ in 0..3 {
            assert_eq!(l.take(a), Ok(()));
        }
        let wait = l.take(a).expect_err("fourth in a burst");
        assert!(wait > Duration::from_millis(1500) && wait <= Duration::from_secs(2));
        assert_eq!(retry_after_secs(wait), 2);
        assert!(
            l.take(ip("198.51.100.2")).is_ok(),
            "other addresses unaffected"
        );
        clock.advance(Duration::from_secs(2));
        assert_eq!(l.take(a), Ok(()), "one refilled");
        assert!(l.take(a).is_err());
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(l.take(a), Ok(()), "full again after a long pause");
        }
    }

    #[test]
    fn ipv6_addresses_share_their_64_block_and_mapped_ipv4_is_ipv4() {
        let l = AddressLimiter::with_limits(Clock::system(), 2, Duration::from_secs(10), 100);
        assert!(l.take(ip("2001:db8:1:2::1")).is_ok());
        assert!(l.take(ip("2001:db8:1:2:ffff::9")).is_ok());
        assert!(l.take(ip("2001:db8:1:2::77")).is_err(), "same /64");
        assert!(l.take(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        assert!(l.take(ip("10.0.0.1")).is_ok());
        assert!(l.take(ip("::ffff:10.0.0.1")).is_ok());
        assert!(
            l.take(ip("10.0.0.1")).is_err(),
            "mapped form is the same address"
        );
    }

    #[test]
    fn many_addresses_never_grow_the_map_past_its_bound() {
        let l = AddressLimiter::with_limits(Clock::system(), 2, Duration::from_secs(10), 64);
        for i in 0..1000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.take(a).is_ok(), "a new address gets its burst");
            assert!(l.tracked() <= 64);
        }
        assert_eq!(l.tracked(), 64);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::from_secs(120)), 120);
    }
}
