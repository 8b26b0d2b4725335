//! What handlers and jobs work with: [`Shared`] state (thread-safe, one per process) and a
//! per-thread [`Context`] holding the HTTP clients (awc's client is `!Send`: one per thread).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::bitrix::client::{BitrixClient, BITRIX_TIMEOUT, JOB_BUDGET_WAIT};
use crate::bitrix::limiter::{RateLimiter, RefreshGates};
use crate::clock::Clock;
use crate::config::Settings;
use crate::crypto::Cipher;
use crate::db::Db;
use crate::mango::MangoClient;
use crate::metrics::{Heartbeat, Metrics};
use crate::net::address_limit::AddressLimiter;

/// Timeout of one Mango request; a callback command either answers quickly or is in doubt.
pub const MANGO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Shared {
    pub settings: Arc<Settings>,
    pub db: Db,
    pub clock: Clock,
    pub cipher: Cipher,
    /// Signalled after a job is committed, so the worker starts it at once.
    pub notify: Arc<Notify>,
    /// Signalled when a run that adopted other callbacks' phone lookups has stored what it found
    /// (`callback::lookup`), so the jobs waiting for those phones in this process look at once.
    pub lookups: Arc<Notify>,
    /// Spaces each Mango account's sends from this process by arrival (see [`SendPace`]).
    pub mango_pace: Arc<crate::mango::rate::SendPace>,
    pub limiter: Arc<RateLimiter>,
    pub refresh_gates: Arc<RefreshGates>,
    /// Names this process in refresh leases and job claims.
    pub instance_id: String,
    /// Per-client-address limit of the unauthenticated browser POSTs (per instance).
    pub address_limiter: Arc<AddressLimiter>,
    /// This instance's counters (`GET /metrics`).
    pub metrics: Arc<Metrics>,
    /// Beaten by the job worker each time it polls the queue (`GET /health`).
    pub heartbeat: Arc<Heartbeat>,
}

impl Shared {
    pub fn new(settings: Settings, db: Db, clock: Clock) -> Shared {
        let cipher = Cipher::new(&settings.secret_key);
        let limiter = RateLimiter::new(
            db.clone(),
            clock.clone(),
            settings.b24_requests_per_second,
            settings.b24_burst,
        );
        let address_limiter = AddressLimiter::with_limits(
            clock.clone(),
            settings.address_burst,
            settings.address_refill_every,
            crate::net::address_limit::MAX_TRACKED,
        );
        Shared {
            settings: Arc::new(settings),
            db,
            cipher,
            notify: Arc::new(Notify::new()),
            lookups: Arc::new(Notify::new()),
            mango_pace: Arc::new(crate::mango::rate::SendPace::default()),
            limiter: Arc::new(limiter),
            refresh_gates: Arc::new(RefreshGates::default()),
            instance_id: format!("instance-{}", uuid::Uuid::new_v4()),
            address_limiter: Arc::new(address_limiter),
            metrics: Arc::new(Metrics::new()),
            heartbeat: Arc::new(Heartbeat::new(clock.now())),
            clock,
        }
    }
}

/// Per-thread services; cheap to build once per actix worker thread.
pub struct Context {
    pub shared: Shared,
    pub http: awc::Client,
    /// The Bitrix24 REST transport; `ctx.bitrix()` (in `portal::api`) adds a portal's stored
    /// tokens to it.
    pub rest: BitrixClient,
    pub mango: MangoClient,
}

impl Context {
    pub fn new(shared: Shared) -> Context {
        let http = http_client();
        let rest = BitrixClient::new(
            http.clone(),
            shared.limiter.clone(),
            shared.clock.clone(),
            shared.metrics.clone(),
        );
        let mango = MangoClient::new(http.clone(), &shared.settings.mango_api_url, MANGO_TIMEOUT);
        Context {
            shared,
            http,
            rest,
            mango,
        }
    }

    /// The services of a job worker: a request that would wait long for its portal's budget
    /// fails with `Throttled` at once, so the job snoozes instead of holding its slot.
    pub fn for_jobs(shared: Shared) -> Context {
        let mut ctx = Context::new(shared);
        ctx.rest = ctx.rest.with_max_budget_wait(JOB_BUDGET_WAIT);
        ctx
    }
}

/// How long an idle kept-alive connection to a peer is reused. Below the shortest idle timeout
/// servers commonly close on (Apache's and actix-web's 5 s, as on-premise portals and the
/// simulators run): a request written onto a connection the server is closing at that instant
/// fails with no answer ("connector has been disconnected"), and the app must then treat a
/// `batch` of reports as maybe sent. awc's own default (15 s) invited exactly that.
pub const IDLE_CONNECTION_REUSE: std::time::Duration = std::time::Duration::from_secs(4);

/// The one HTTP client configuration: no automatic redirects (a renamed portal's 302 is handled
/// by hand, and following redirects with credentials invites SSRF), TLS via rustls, idle
/// connections reused for [`IDLE_CONNECTION_REUSE`] only.
pub fn http_client() -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().conn_keep_alive(IDLE_CONNECTION_REUSE))
        .disable_redirects()
        .timeout(BITRIX_TIMEOUT)
        .add_default_header((
            "User-Agent",
            concat!("mango-callback/", env!("CARGO_PKG_VERSION")),
        ))
        .finish()
}
