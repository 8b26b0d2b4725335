//! Peer faults the simulators inject on a seeded, reproducible fraction of requests, and counts.
//!
//! A [`FaultPlan`] says how often (`rate`), which kinds, and from which seed; a
//! [`FaultInjector`] draws from it request by request with its own `StdRng`, so the same seed and
//! the same request order give the same faults. What each kind does to a request:
//!
//! | kind          | request processed? | what the client sees                                  |
//! |---------------|--------------------|-------------------------------------------------------|
//! | `503`         | no                 | HTTP 503 with a gateway's HTML page                   |
//! | `500`         | no                 | HTTP 500 with an HTML error page                      |
//! | `timeout`     | no                 | nothing until it gives up (the answer waits `hang`)   |
//! | `drop`        | no                 | the connection closed without a complete answer       |
//! | `slow`        | **yes**            | the real answer, but only after `hang`                |
//!
//! `slow` is the nasty one: the peer did the work (Mango placed the call, Bitrix24 accepted the
//! event) but the client times out and cannot know it.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::HttpResponse;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One kind of injected fault; see the module table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerFault {
    Unavailable,
    Internal,
    Timeout,
    Dropped,
    Slow,
}

impl PeerFault {
    pub const ALL: [PeerFault; 5] = [
        PeerFault::Unavailable,
        PeerFault::Internal,
        PeerFault::Timeout,
        PeerFault::Dropped,
        PeerFault::Slow,
    ];

    /// The name used in `SANDBOX_FAULT_KINDS` and in printed counts.
    pub fn name(self) -> &'static str {
        match self {
            PeerFault::Unavailable => "503",
            PeerFault::Internal => "500",
            PeerFault::Timeout => "timeout",
            PeerFault::Dropped => "drop",
            PeerFault::Slow => "slow",
        }
    }

    pub fn parse(s: &str) -> Option<PeerFault> {
        PeerFault::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether the peer does the work before the fault hits (only `slow`).
    pub fn processed(self) -> bool {
        self == PeerFault::Slow
    }
}

/// How a simulator injects faults. The default injects none.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    /// Fraction of requests that get a fault, 0.0–1.0.
    pub rate: f64,
    /// Seed of the injector's RNG: the same seed and request order give the same faults.
    pub seed: u64,
    /// The kinds drawn from, uniformly; empty means none.
    pub kinds: Vec<PeerFault>,
    /// How long `timeout` and `slow` keep the client waiting: longer than its timeout (the app
    /// gives Bitrix24 65 s and Mango 10 s).
    pub hang: Duration,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            rate: 0.0,
            seed: 0,
            kinds: PeerFault::ALL.to_vec(),
            hang: Duration::from_secs(90),
        }
    }
}

impl FaultPlan {
    /// `rate` of requests fail, kinds drawn from all five, from `seed`.
    pub fn new(rate: f64, seed: u64) -> FaultPlan {
        FaultPlan {
            rate,
            seed,
            ..FaultPlan::default()
        }
    }

    /// Parses a comma-separated kind list such as `503,500,timeout,drop,slow`.
    pub fn parse_kinds(list: &str) -> Result<Vec<PeerFault>, String> {
        list.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                PeerFault::parse(s).ok_or_else(|| {
                    format!("unknown fault kind {s:?} (503, 500, timeout, drop, slow)")
                })
            })
            .collect()
    }

    /// The plan from `{prefix}_RATE`, `{prefix}_SEED`, `{prefix}_KINDS` and `{prefix}_HANG_SECS`
    /// (e.g. `SANDBOX_FAULT_RATE=0.2`); unset ones keep the defaults (no faults).
    pub fn from_env(prefix: &str) -> Result<FaultPlan, String> {
        let var = |name: &str| std::env::var(format!("{prefix}_{name}")).ok();
        let mut plan = FaultPlan::default();
        if let Some(v) = var("RATE") {
            plan.rate = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("{prefix}_RATE={v:?} is not a fraction 0.0–1.0"))?;
        }
        if let Some(v) = var("SEED") {
            plan.seed = v
                .trim()
                .parse()
                .map_err(|_| format!("{prefix}_SEED={v:?} is not a whole number"))?;
        }
        if let Some(v) = var("KINDS") {
            plan.kinds = FaultPlan::parse_kinds(&v)?;
        }
        if let Some(v) = var("HANG_SECS") {
            plan.hang = Duration::from_secs(
                v.trim()
                    .parse()
                    .map_err(|_| format!("{prefix}_HANG_SECS={v:?} is not whole seconds"))?,
            );
        }
        Ok(plan)
    }
}

/// What an injector has seen and injected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests the injector drew for (faulted or not).
    pub requests: usize,
    pub injected: BTreeMap<PeerFault, usize>,
}

impl FaultCounts {
    pub fn of(&self, kind: PeerFault) -> usize {
        self.injected.get(&kind).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.injected.values().sum()
    }
}

impl std::fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} requests faulted", self.total(), self.requests)?;
        for kind in PeerFault::ALL {
            write!(f, ", {} {}", kind.name(), self.of(kind))?;
        }
        Ok(())
    }
}

/// Draws faults from a [`FaultPlan`] and counts them.
#[derive(Debug)]
pub struct FaultInjector {
    plan: FaultPlan,
    rng: StdRng,
    counts: FaultCounts,
}

impl Default for FaultInjector {
    fn default() -> Self {
        FaultInjector::new(FaultPlan::default())
    }
}

impl FaultInjector {
    pub fn new(plan: FaultPlan) -> FaultInjector {
        FaultInjector {
            rng: StdRng::seed_from_u64(plan.seed),
            plan,
            counts: FaultCounts::default(),
        }
    }

    /// Replaces the plan and reseeds; the counts stay.
    pub fn set_plan(&mut self, plan: FaultPlan) {
        self.rng = StdRng::seed_from_u64(plan.seed);
        self.plan = plan;
    }

    pub fn hang(&self) -> Duration {
        self.plan.hang
    }

    pub fn counts(&self) -> FaultCounts {
        self.counts.clone()
    }

    /// The fault for the next request, if any. Always draws twice, so the sequence of decisions
    /// for a seed does not depend on which kinds are enabled.
    pub fn draw(&mut self) -> Option<PeerFault> {
        self.counts.requests += 1;
        let hit = self.rng.gen::<f64>() < self.plan.rate;
        let pick = self.rng.gen::<usize>();
        if !hit || self.plan.kinds.is_empty() {
            return None;
        }
        let kind = self.plan.kinds[pick % self.plan.kinds.len()];
        *self.counts.injected.entry(kind).or_default() += 1;
        Some(kind)
    }
}

/// The answer to a request hit by `fault` before it was processed, after any waiting; `None`
/// for `slow`, whose caller processes the request, waits `hang` and answers normally.
pub(crate) async fn unprocessed_answer(fault: PeerFault, hang: Duration) -> Option<HttpResponse> {
    match fault {
        PeerFault::Unavailable => Some(
            HttpResponse::ServiceUnavailable()
                .content_type("text/html")
                .body("<html><head><title>503 Service Temporarily Unavailable</title></head><body><center><h1>503 Service Temporarily Unavailable</h1></center><hr><center>nginx</center></body></html>"),
        ),
        PeerFault::Internal => Some(
            HttpResponse::InternalServerError()
                .content_type("text/html")
                .body("<html><head><title>500 Internal Server Error</title></head><body><center><h1>500 Internal Server Error</h1></center></body></html>"),
        ),
        PeerFault::Timeout => {
            // The client gives up long before; then the connection is cut like `drop`.
            tokio::time::sleep(hang).await;
            Some(dropped())
        }
        PeerFault::Dropped => Some(dropped()),
        PeerFault::Slow => None,
    }
}

/// A response whose body fails at once: actix-web then closes the connection, so the client
/// never gets a complete answer (it may have seen the status line, never a body).
pub(crate) fn dropped() -> HttpResponse {
    let failing = futures_util::stream::once(async {
        Err::<actix_web::web::Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "injected dropped connection",
        ))
    });
    HttpResponse::Ok().streaming(failing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(plan: FaultPlan, n: usize) -> Vec<Option<PeerFault>> {
        let mut inj = FaultInjector::new(plan);
        (0..n).map(|_| inj.draw()).collect()
    }

    #[test]
    fn the_same_seed_injects_the_same_faults_in_the_same_order() {
        let a = draws(FaultPlan::new(0.3, 42), 500);
        let b = draws(FaultPlan::new(0.3, 42), 500);
        assert_eq!(a, b);
        assert_ne!(
            a,
            draws(FaultPlan::new(0.3, 43), 500),
            "another seed differs"
        );
    }

    #[test]
    fn about_the_configured_fraction_is_faulted_and_every_kind_occurs() {
        let mut inj = FaultInjector::new(FaultPlan::new(0.2, 7));
        for _ in 0..10_000 {
            inj.draw();
        }
        let c = inj.counts();
        assert_eq!(c.requests, 10_000);
        assert!((1_800..=2_200).contains(&c.total()), "{c}");
        for kind in PeerFault::ALL {
            assert!((300..=500).contains(&c.of(kind)), "{kind:?}: {c}");
        }
    }

    #[test]
    fn no_rate_or_no_kinds_injects_nothing_but_still_counts_requests() {
        let mut none = FaultInjector::default();
        let mut kindless = FaultInjector::new(FaultPlan {
            kinds: vec![],
            ..FaultPlan::new(1.0, 1)
        });
        for _ in 0..100 {
            assert_eq!(none.draw(), None);
            assert_eq!(kindless.draw(), None);
        }
        assert_eq!(none.counts().requests, 100);
        assert_eq!(kindless.counts().total(), 0);
    }

    #[test]
    fn a_full_rate_of_one_kind_faults_every_request_with_it() {
        let plan = FaultPlan {
            kinds: vec![PeerFault::Dropped],
            ..FaultPlan::new(1.0, 3)
        };
        assert!(draws(plan, 50)
            .into_iter()
            .all(|f| f == Some(PeerFault::Dropped)));
    }

    #[test]
    fn kind_lists_parse_by_name_and_reject_unknown_ones() {
        assert_eq!(
            FaultPlan::parse_kinds("503, timeout,DROP"),
            Ok(vec![
                PeerFault::Unavailable,
                PeerFault::Timeout,
                PeerFault::Dropped
            ])
        );
        assert!(FaultPlan::parse_kinds("503,teapot").is_err());
    }
}
