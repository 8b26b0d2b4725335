//! Simulated Mango Office VPBX API: an actix-web server that speaks Mango's wire format and checks requests like the real service.
//!
//! Tests and the demo point the app's `MANGO_API_URL` at [`MangoSim::api_url`].
//! The simulator follows Mango Office's VPBX API documentation:
//!
//! - every request is a `POST` with a form-urlencoded body of `vpbx_api_key`, `sign` and `json`;
//! - `sign` must equal `hex(sha256(vpbx_api_key + json + vpbx_api_salt))` over the `json` field
//!   *as received*. The check lives here on purpose, independent of the app's client code,
//!   so that a bug in one is caught by the other;
//! - only one invalid (3xxx) request per account is allowed in 2 minutes; the next one locks
//!   the account, and every request then gets HTTP 401 for 2 minutes;
//! - per-account rate limits answer HTTP 429 with Mango's gateway body;
//! - `commands/callback_group` validates the flat-string payload, `groups` and
//!   `incominglines` list what the test configured.
//!
//! The simulator is deterministic and inspectable: every request is recorded
//! ([`MangoSim::requests`]), accepted callback commands are kept ([`MangoSim::callbacks`]), and
//! answers can be scripted per account ([`MangoSim::push_reply`]). State sits in one
//! `Arc<std::sync::Mutex<_>>` that is never held across an `.await`.

mod calls;
mod server;
#[cfg(test)]
mod tests;

pub use calls::{call_events, deliver, CallScenario, Delivery, SimEvent};

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::web;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// How long an account stays locked after a second invalid request, and the window in which a
/// second invalid request causes the lock (Mango's documentation: "1 неверный запрос в 2 минуты").
const LOCKOUT_WINDOW: Duration = Duration::from_secs(120);

/// The sliding window of the rate limits.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Longest `command_id` Mango accepts, in bytes.
const MAX_COMMAND_ID_BYTES: usize = 128;

/// The body Mango's gateway sends with HTTP 429.
const RATE_LIMITED_BODY: &str =
    r#"{"name":"Service Unavailable","message":"Rate limit exceeded.","code":0,"status":429}"#;

/// Settings of a simulated Mango server.
#[derive(Clone, Debug)]
pub struct MangoSimOptions {
    /// Port to listen on at 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Delay added before every answer (changeable later with [`MangoSim::set_latency`]).
    pub latency: Duration,
    /// Callback commands allowed per account in any 1-second window (Mango: 4).
    pub callback_limit_per_sec: u32,
    /// Requests of any kind allowed per account in any 1-second window (Mango: 10).
    pub total_limit_per_sec: u32,
}

impl Default for MangoSimOptions {
    fn default() -> Self {
        Self {
            port: 0,
            latency: Duration::ZERO,
            callback_limit_per_sec: 4,
            total_limit_per_sec: 10,
        }
    }
}

/// A scripted answer to the next valid `commands/callback_group` request of an account.
///
/// Replies are queued per account with [`MangoSim::push_reply`] and consumed first in, first
/// out, one per request that passed the signature and payload checks. A request that fails those
/// checks gets its real error and leaves the queue alone. Scripted answers are the test's word:
/// they never count towards the bad-request lockout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer with this result code: 1000 accepts the command (recorded in
    /// [`MangoSim::callbacks`]); any other code gets the error answer (HTTP 400,
    /// `{"result":code,"message":…}`) and the command is not recorded.
    Result(u32),
    /// Answer with this raw HTTP status and body (for example 500 and an HTML page).
    Http(u16, String),
    /// Answer HTTP 429 with Mango's rate-limit body.
    RateLimited,
    /// Accept the command normally, but only after this delay (for client timeout tests). The
    /// command is recorded as accepted *before* the delay, as Mango would have taken it even if
    /// the client gives up waiting.
    Delay(Duration),
}

/// One request received by the simulator, as it was seen and answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MangoRequest {
    /// URL path, for example `/vpbx/commands/callback_group`.
    pub path: String,
    /// The `vpbx_api_key` form field, if present.
    pub api_key: Option<String>,
    /// The `sign` form field, if present.
    pub sign: Option<String>,
    /// The `json` form field exactly as received (URL-decoded, not re-serialized).
    pub json: Option<String>,
    /// Whether the key was known and `sign` matched the key, `json` and the account's salt.
    pub sign_valid: bool,
    /// HTTP status of the answer.
    pub status: u16,
    /// Body of the answer.
    pub response: String,
}

/// A running simulated Mango Office VPBX API. Cheap to clone; clones share the same server state.
#[derive(Clone)]
pub struct MangoSim {
    port: u16,
    state: Arc<Mutex<State>>,
    server: ServerHandle,
}

impl std::fmt::Debug for MangoSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MangoSim")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl MangoSim {
    /// Binds 127.0.0.1:`opts.port` and starts the server on the current actix runtime.
    ///
    /// The server runs one worker, handles no signals, and stops with the runtime (or with
    /// [`MangoSim::stop`]).
    pub async fn start(opts: MangoSimOptions) -> std::io::Result<MangoSim> {
        let listener = TcpListener::bind(("127.0.0.1", opts.port))?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::new(opts)));
        let shared = web::Data::new(Arc::clone(&state));
        let server = super::serve(listener, move |cfg| {
            cfg.app_data(shared.clone())
                .default_service(web::to(server::handle_request));
        })?;
        Ok(MangoSim {
            port,
            state,
            server,
        })
    }

    /// Stops the server gracefully.
    pub async fn stop(&self) {
        self.server.stop(true).await;
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The VPBX API base, `{url}/vpbx/`: the app's `MANGO_API_URL`.
    pub fn api_url(&self) -> String {
        format!("{}/vpbx/", self.url())
    }

    /// Adds an account (a PBX) with its key and salt. Adding an existing key replaces its salt
    /// and keeps its groups, lines and queued replies.
    pub fn add_account(&self, api_key: &str, api_salt: &str) {
        let mut state = self.lock();
        state
            .accounts
            .entry(api_key.to_owned())
            .and_modify(|a| a.salt = api_salt.to_owned())
            .or_insert_with(|| Account::new(api_salt));
    }

    /// Adds a group of managers to an account. `extension` is the group's short number, the
    /// `from` of a group-first callback; it is compared as a string (`"002"` is not `"2"`).
    ///
    /// # Panics
    /// If the account was not added first (a test set-up mistake).
    pub fn add_group(&self, api_key: &str, id: u64, name: &str, extension: &str) {
        let mut state = self.lock();
        let account = state.account_mut(api_key);
        account.groups.push(Group {
            id,
            name: name.to_owned(),
            extension: extension.to_owned(),
        });
    }

    /// Adds an incoming line (a number the PBX can call from: the `line_number` field).
    ///
    /// # Panics
    /// If the account was not added first (a test set-up mistake).
    pub fn add_line(&self, api_key: &str, number: &str, name: &str) {
        let mut state = self.lock();
        let account = state.account_mut(api_key);
        let line_id = 300_000_000 + account.lines.len() as u64 + 1;
        account.lines.push(Line {
            line_id,
            number: number.to_owned(),
            name: name.to_owned(),
        });
    }

    /// Queues a scripted answer for the account's next valid `commands/callback_group` request
    /// (see [`Reply`]).
    ///
    /// # Panics
    /// If the account was not added first (a test set-up mistake).
    pub fn push_reply(&self, api_key: &str, reply: Reply) {
        let mut state = self.lock();
        state.account_mut(api_key).replies.push_back(reply);
    }

    /// Counts time as `clock` does (real time plus the test's advances) from now on.
    pub fn follow_clock(&self, clock: crate::clock::Clock) {
        self.lock().clock = Some(clock);
    }

    /// Changes the delay added before every answer.
    pub fn set_latency(&self, d: Duration) {
        self.lock().latency = d;
    }

    /// From now on a seeded fraction of requests get a peer fault (503, 500, no answer, dropped
    /// connection, a late answer after the command was accepted); the counts so far stay.
    pub fn set_faults(&self, plan: super::faults::FaultPlan) {
        self.lock().injector.set_plan(plan);
    }

    /// The peer faults injected so far, and how many requests were drawn for.
    pub fn fault_counts(&self) -> super::faults::FaultCounts {
        self.lock().injector.counts()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<MangoRequest> {
        self.lock().requests.clone()
    }

    /// The `json` of every `commands/callback_group` command accepted (answered 1000), parsed,
    /// in arrival order.
    pub fn callbacks(&self) -> Vec<Value> {
        self.lock().callbacks.clone()
    }

    /// [`MangoSim::callbacks`] with the instant each arrived (after the simulated latency):
    /// the end of a robot call's end-to-end path, for `mango-callback bench`.
    pub fn callbacks_timed(&self) -> Vec<(Instant, Value)> {
        let st = self.lock();
        st.accepted_at
            .iter()
            .copied()
            .zip(st.callbacks.iter().cloned())
            .collect()
    }

    /// While `true`, every accepted command is recorded twice, as if Mango had placed the call
    /// twice: a broken run the bench's exactly-once check must catch (its own test).
    pub fn record_commands_twice(&self, on: bool) {
        self.lock().record_twice = on;
    }

    /// Lifts an account's bad-request lockout and forgets its last invalid request.
    pub fn reset_lockout(&self, api_key: &str) {
        if let Some(account) = self.lock().accounts.get_mut(api_key) {
            account.last_invalid = None;
            account.locked_until = None;
        }
    }

    /// Posts Mango's asynchronous command result to the app, as Mango does after a callback:
    /// `POST {app_base_url}/result/callback_group` with `json = {"command_id":…,"result":…}`,
    /// signed with the account's salt. Returns the app's HTTP status.
    pub async fn post_result(
        &self,
        app_base_url: &str,
        api_key: &str,
        command_id: &str,
        result: u32,
    ) -> Result<u16, String> {
        let body = json!({ "command_id": command_id, "result": result }).to_string();
        self.post_signed(app_base_url, "result/callback_group", api_key, body)
            .await
    }

    /// Posts a call event (`POST {app_base_url}/events/call`), signed with the account's salt.
    /// Returns the app's HTTP status.
    pub async fn post_call_event(
        &self,
        app_base_url: &str,
        api_key: &str,
        event: Value,
    ) -> Result<u16, String> {
        self.post_signed(app_base_url, "events/call", api_key, event.to_string())
            .await
    }

    /// Sends a signed notification to the app the way Mango does: form fields
    /// `vpbx_api_key`, `sign`, `json`.
    async fn post_signed(
        &self,
        app_base_url: &str,
        path: &str,
        api_key: &str,
        json: String,
    ) -> Result<u16, String> {
        let salt = self
            .lock()
            .accounts
            .get(api_key)
            .map(|a| a.salt.clone())
            .ok_or_else(|| format!("unknown Mango account {api_key:?}"))?;
        let sign = sign(api_key, &json, &salt);
        let url = format!("{}/{path}", app_base_url.trim_end_matches('/'));
        // awc::Client is !Send and meant to be one per thread: build it here, where it is used.
        let client = awc::Client::default();
        let response = client
            .post(&url)
            .send_form(&[
                ("vpbx_api_key", api_key),
                ("sign", sign.as_str()),
                ("json", json.as_str()),
            ])
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        Ok(response.status().as_u16())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// `hex(sha256(key + json + salt))`, lowercase: Mango's request signature.
fn sign(api_key: &str, json: &str, salt: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(api_key.as_bytes());
    hasher.update(json.as_bytes());
    hasher.update(salt.as_bytes());
    hex::encode(hasher.finalize())
}

/// A poisoned lock only means a test panicked while holding it; the data is still usable.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything the simulator knows; behind one mutex.
struct State {
    options: MangoSimOptions,
    latency: Duration,
    /// Random peer faults on every request ([`MangoSim::set_faults`]).
    injector: super::faults::FaultInjector,
    /// A test's clock: its advances count as time passed for the rate limits and lockouts, so a
    /// test that moves the app's clock on moves Mango's on with it ([`MangoSim::follow_clock`]).
    clock: Option<crate::clock::Clock>,
    accounts: HashMap<String, Account>,
    requests: Vec<MangoRequest>,
    callbacks: Vec<Value>,
    /// How calls go, by client number or group ([`MangoSim::set_scenario`]).
    scenarios: HashMap<String, CallScenario>,
    /// The last `entry_id` number handed out.
    next_entry: u64,
    /// When each of `callbacks` arrived, index for index (after the simulated latency).
    accepted_at: Vec<Instant>,
    /// Records every accepted command twice ([`MangoSim::record_commands_twice`]).
    record_twice: bool,
}

/// One simulated PBX.
struct Account {
    salt: String,
    groups: Vec<Group>,
    lines: Vec<Line>,
    replies: VecDeque<Reply>,
    /// When the last invalid (3xxx) request arrived; a second one within [`LOCKOUT_WINDOW`] locks.
    last_invalid: Option<Instant>,
    /// While set and in the future, every request is answered 401.
    locked_until: Option<Instant>,
    /// Arrival times of admitted callback commands in the last second.
    recent_callbacks: VecDeque<Instant>,
    /// Arrival times of all admitted requests in the last second.
    recent_requests: VecDeque<Instant>,
}

struct Group {
    id: u64,
    name: String,
    extension: String,
}

struct Line {
    line_id: u64,
    number: String,
    name: String,
}

/// The API methods the simulator implements.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    CallbackGroup,
    Groups,
    IncomingLines,
}

/// What the handler sends back.
struct Answer {
    status: u16,
    body: String,
    /// Wait this long before answering (a scripted [`Reply::Delay`]).
    delay: Option<Duration>,
}
