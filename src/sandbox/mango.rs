//! Simulated Mango Office VPBX API: an actix-web server that speaks Mango's wire format and checks requests like the real service.
//!
//! Tests, the load benchmark and the demo point the app's `MANGO_API_URL` at [`MangoSim::api_url`].
//! The simulator follows `mango-vpbx-api.md` (the team's wire reference):
//!
//! - every request is a `POST` with a form-urlencoded body of `vpbx_api_key`, `sign` and `json`;
//! - `sign` must equal `hex(sha256(vpbx_api_key + json + vpbx_api_salt))` over the `json` field
//!   *as received* (§2.3). The check lives here on purpose, independent of the app's client code,
//!   so that a bug in one is caught by the other;
//! - only one invalid (3xxx) request per account is allowed in 2 minutes; the next one locks
//!   the account, and every request then gets HTTP 401 for 2 minutes (§1.4.1, §2.8);
//! - per-account rate limits answer HTTP 429 with Mango's gateway body (§2.8);
//! - `commands/callback_group` validates the flat-string payload (§2.4), `groups` and
//!   `incominglines` list what the test configured (§2.10).
//!
//! The simulator is deterministic and inspectable: every request is recorded
//! ([`MangoSim::requests`]), accepted callback commands are kept ([`MangoSim::callbacks`]), and
//! answers can be scripted per account ([`MangoSim::push_reply`]). State sits in one
//! `Arc<std::sync::Mutex<_>>` that is never held across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How long an account stays locked after a second invalid request, and the window in which a
/// second invalid request causes the lock (§1.4.1: "1 неверный запрос в 2 минуты").
const LOCKOUT_WINDOW: Duration = Duration::from_secs(120);

/// The sliding window of the rate limits.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Longest `command_id` Mango accepts, in bytes (§2.9).
const MAX_COMMAND_ID_BYTES: usize = 128;

/// The body Mango's gateway sends with HTTP 429 (§0, Doc-new §1.4.2).
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
                .default_service(web::to(handle_request));
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

    /// Changes the delay added before every answer.
    pub fn set_latency(&self, d: Duration) {
        self.lock().latency = d;
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

/// `hex(sha256(key + json + salt))`, lowercase: Mango's request signature (reference §2.3).
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
    accounts: HashMap<String, Account>,
    requests: Vec<MangoRequest>,
    callbacks: Vec<Value>,
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

impl Answer {
    fn new(status: u16, body: String) -> Self {
        Self {
            status,
            body,
            delay: None,
        }
    }

    fn ok(body: Value) -> Self {
        Self::new(200, body.to_string())
    }

    /// Mango's error answer.
    ///
    /// The docs disagree on its shape: Doc-2017 says HTTP 420 "Method Failure" with
    /// `{"code": 3104}`, Doc-new says a 4xx/5xx status with an error code. We pick one
    /// consistent, realistic shape, HTTP 400 with `{"result":CODE,"message":"…"}`; the app's
    /// client reads both `result` and `code`, so either shape would do.
    fn error(code: u32) -> Self {
        Self::error_with_status(400, code)
    }

    fn error_with_status(status: u16, code: u32) -> Self {
        Self::new(
            status,
            json!({ "result": code, "message": message_for(code) }).to_string(),
        )
    }

    /// Unknown key, and the bad-request lockout: both are HTTP 401 at Mango (§1.4.1, §2.6).
    /// The lockout body is not documented; we reuse the bad-key code with its own message.
    fn locked() -> Self {
        Self::new(
            401,
            json!({
                "result": 3105,
                "message": "Too many invalid requests: API access is locked for 2 minutes",
            })
            .to_string(),
        )
    }

    fn rate_limited() -> Self {
        Self::new(429, RATE_LIMITED_BODY.to_owned())
    }
}

/// Human-readable text for a result code (Doc-new "Список кодов результатов").
fn message_for(code: u32) -> &'static str {
    match code {
        1000 => "OK",
        2000..=2999 => "Action is forbidden by the account's billing state",
        3100 => "Invalid request parameters",
        3101 => "Request must be sent with the POST method",
        3102 => "Signature mismatch",
        3103 => "Required parameter is missing",
        3104 => "Parameter has a bad format",
        3105 => "Invalid vpbx_api_key",
        3124 => "Line is not allowed as an outgoing line",
        3136 => "Bad number format",
        3300 => "Object or number not found",
        3400 => "Invalid JSON",
        4001 => "Unsupported command",
        4000..=4999 => "Command cannot be executed",
        5000..=5999 => "Server error",
        _ => "Error",
    }
}

impl State {
    fn new(options: MangoSimOptions) -> Self {
        Self {
            latency: options.latency,
            options,
            accounts: HashMap::new(),
            requests: Vec::new(),
            callbacks: Vec::new(),
        }
    }

    fn account_mut(&mut self, api_key: &str) -> &mut Account {
        match self.accounts.get_mut(api_key) {
            Some(account) => account,
            None => panic!("MangoSim: add_account({api_key:?}, …) first"),
        }
    }

    /// Decides the answer to one request and records it. Runs under the lock, with no await.
    fn serve(&mut self, method: &Method, path: &str, body: &[u8], now: Instant) -> Answer {
        // A body that is not a form is treated as one with no fields: it then lacks them (3103).
        let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut request = MangoRequest {
            path: path.to_owned(),
            api_key: field("vpbx_api_key"),
            sign: field("sign"),
            json: field("json"),
            sign_valid: false,
            status: 0,
            response: String::new(),
        };
        let answer = self.decide(method, path, &mut request, now);
        request.status = answer.status;
        request.response.clone_from(&answer.body);
        self.requests.push(request);
        answer
    }

    fn decide(
        &mut self,
        method: &Method,
        path: &str,
        request: &mut MangoRequest,
        now: Instant,
    ) -> Answer {
        if method != Method::POST {
            return Answer::error(3101);
        }
        let endpoint = match path.trim_end_matches('/') {
            "/vpbx/commands/callback_group" => Endpoint::CallbackGroup,
            "/vpbx/groups" => Endpoint::Groups,
            "/vpbx/incominglines" => Endpoint::IncomingLines,
            _ => return Answer::error_with_status(404, 4001),
        };
        let Some(api_key) = request.api_key.clone() else {
            return Answer::error(3103);
        };
        let Some(account) = self.accounts.get_mut(&api_key) else {
            return Answer::error_with_status(401, 3105);
        };
        if account.is_locked(now) {
            return Answer::locked();
        }
        // The gateway counts requests before looking at them; a 429 is not a 3xxx, so it does
        // not feed the lockout.
        if !account.admit(endpoint, now, &self.options) {
            return Answer::rate_limited();
        }
        match account.handle(endpoint, request) {
            Ok(Handled::Answer(answer)) => answer,
            Ok(Handled::Accepted { command, delay }) => {
                self.callbacks.push(command);
                let mut answer = Answer::ok(json!({ "result": 1000 }));
                answer.delay = delay;
                answer
            }
            Err(code) => {
                if (3000..4000).contains(&code) && account.register_invalid(now) {
                    Answer::locked()
                } else {
                    Answer::error(code)
                }
            }
        }
    }
}

/// A request that passed the checks.
enum Handled {
    /// Answer this (a listing, or a scripted non-accepting reply).
    Answer(Answer),
    /// A callback command was accepted: record it and answer 1000, after `delay` if set.
    Accepted {
        command: Value,
        delay: Option<Duration>,
    },
}

impl Account {
    fn new(salt: &str) -> Self {
        Self {
            salt: salt.to_owned(),
            groups: Vec::new(),
            lines: Vec::new(),
            replies: VecDeque::new(),
            last_invalid: None,
            locked_until: None,
            recent_callbacks: VecDeque::new(),
            recent_requests: VecDeque::new(),
        }
    }

    fn is_locked(&mut self, now: Instant) -> bool {
        match self.locked_until {
            Some(until) if now < until => true,
            Some(_) => {
                self.locked_until = None;
                self.last_invalid = None;
                false
            }
            None => false,
        }
    }

    /// Notes an invalid request; returns whether it locks the account (the second within
    /// [`LOCKOUT_WINDOW`]).
    fn register_invalid(&mut self, now: Instant) -> bool {
        match self.last_invalid {
            Some(previous) if now.duration_since(previous) < LOCKOUT_WINDOW => {
                self.locked_until = Some(now + LOCKOUT_WINDOW);
                self.last_invalid = None;
                true
            }
            _ => {
                self.last_invalid = Some(now);
                false
            }
        }
    }

    /// Sliding-window rate limits; an admitted request is counted, a refused one is not.
    fn admit(&mut self, endpoint: Endpoint, now: Instant, options: &MangoSimOptions) -> bool {
        let is_callback = endpoint == Endpoint::CallbackGroup;
        prune(&mut self.recent_requests, now);
        prune(&mut self.recent_callbacks, now);
        if self.recent_requests.len() >= options.total_limit_per_sec as usize
            || (is_callback
                && self.recent_callbacks.len() >= options.callback_limit_per_sec as usize)
        {
            return false;
        }
        self.recent_requests.push_back(now);
        if is_callback {
            self.recent_callbacks.push_back(now);
        }
        true
    }

    /// Checks the fields, the signature and the payload, then serves the method.
    fn handle(&mut self, endpoint: Endpoint, request: &mut MangoRequest) -> Result<Handled, u32> {
        let (Some(api_key), Some(sign_field), Some(raw_json)) =
            (&request.api_key, &request.sign, &request.json)
        else {
            return Err(3103);
        };
        let expected = sign(api_key, raw_json, &self.salt);
        request.sign_valid = bool::from(expected.as_bytes().ct_eq(sign_field.as_bytes()));
        if !request.sign_valid {
            return Err(3102);
        }
        let payload: Value = serde_json::from_str(raw_json).map_err(|_| 3400_u32)?;
        let Value::Object(payload) = payload else {
            return Err(3104);
        };
        match endpoint {
            Endpoint::Groups => Ok(Handled::Answer(Answer::ok(self.groups_listing()))),
            Endpoint::IncomingLines => Ok(Handled::Answer(Answer::ok(self.lines_listing()))),
            Endpoint::CallbackGroup => {
                self.check_callback_group(&payload)?;
                let command = Value::Object(payload);
                Ok(match self.replies.pop_front() {
                    None | Some(Reply::Result(1000)) => Handled::Accepted {
                        command,
                        delay: None,
                    },
                    Some(Reply::Delay(delay)) => Handled::Accepted {
                        command,
                        delay: Some(delay),
                    },
                    Some(Reply::Result(code)) => Handled::Answer(Answer::error(code)),
                    Some(Reply::Http(status, body)) => Handled::Answer(Answer::new(status, body)),
                    Some(Reply::RateLimited) => Handled::Answer(Answer::rate_limited()),
                })
            }
        }
    }

    /// The `callback_group` payload rules (reference §2.4), each failure with Mango's code.
    fn check_callback_group(&self, payload: &serde_json::Map<String, Value>) -> Result<(), u32> {
        match payload.get("command_id") {
            None => {}
            Some(Value::String(id)) if id.len() <= MAX_COMMAND_ID_BYTES => {}
            Some(_) => return Err(3104),
        }
        let required = |name: &str| match payload.get(name) {
            None => Err(3103_u32),
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(3104),
        };
        let from = required("from")?;
        let to = required("to")?;
        let line_number = required("line_number")?;
        let external = match (self.is_group(from), self.is_group(to)) {
            (true, false) => to,
            (false, true) => from,
            _ => return Err(3300),
        };
        if !is_phone_number(external) {
            return Err(3136);
        }
        if !self.lines.iter().any(|l| l.number == line_number) {
            return Err(3124);
        }
        Ok(())
    }

    fn is_group(&self, number: &str) -> bool {
        self.groups.iter().any(|g| g.extension == number)
    }

    fn groups_listing(&self) -> Value {
        let groups: Vec<Value> = self
            .groups
            .iter()
            .map(|g| {
                json!({
                    "id": g.id,
                    "name": g.name,
                    "description": "",
                    "extension": g.extension,
                    "dial_alg_group": 1,
                    "operators": [],
                })
            })
            .collect();
        json!({ "result": 1000, "groups": groups })
    }

    fn lines_listing(&self) -> Value {
        let lines: Vec<Value> = self
            .lines
            .iter()
            .map(|l| {
                json!({
                    "line_id": l.line_id,
                    "number": l.number,
                    "name": l.name,
                    "comment": "",
                    "region": "sip",
                    "schema_id": 1,
                    "schema_name": "default",
                })
            })
            .collect();
        json!({ "result": 1000, "lines": lines })
    }
}

/// An external number as Mango wants it: 10 to 15 digits and nothing else.
fn is_phone_number(s: &str) -> bool {
    (10..=15).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// Drops the instants older than [`RATE_WINDOW`].
fn prune(times: &mut VecDeque<Instant>, now: Instant) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
    {
        times.pop_front();
    }
}

/// A random UUID-shaped request id, like the `X-Uuid` header Mango sends.
fn random_uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The one handler: everything is routed inside [`State::serve`], so every request, even to an
/// unknown path or with the wrong method, is checked and recorded.
async fn handle_request(
    state: web::Data<Arc<Mutex<State>>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let latency = lock(&state).latency;
    if !latency.is_zero() {
        actix_web::rt::time::sleep(latency).await;
    }
    let answer = lock(&state).serve(req.method(), req.path(), &body, Instant::now());
    if let Some(delay) = answer.delay {
        actix_web::rt::time::sleep(delay).await;
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if serde_json::from_str::<Value>(&answer.body).is_ok() {
        "application/json"
    } else {
        "text/html; charset=utf-8"
    };
    HttpResponse::build(status)
        .insert_header(("X-Uuid", random_uuid()))
        .content_type(content_type)
        .body(answer.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "test-key";
    const SALT: &str = "test-salt";
    const GROUP_FIRST: &str =
        r#"{"command_id":"cbk1","from":"1234","to":"74955404444","line_number":"74951234567"}"#;

    /// A simulator with one account, one group `1234` and one line `74951234567`.
    async fn spawn_sim() -> MangoSim {
        spawn_sim_with(MangoSimOptions::default()).await
    }

    /// Like [`spawn_sim`], with rate limits high enough for tests that send many commands.
    async fn spawn_roomy_sim() -> MangoSim {
        spawn_sim_with(MangoSimOptions {
            callback_limit_per_sec: 100,
            total_limit_per_sec: 100,
            ..MangoSimOptions::default()
        })
        .await
    }

    async fn spawn_sim_with(options: MangoSimOptions) -> MangoSim {
        let sim = MangoSim::start(options).await.expect("simulator starts");
        sim.add_account(KEY, SALT);
        sim.add_group(KEY, 10051250, "Managers", "1234");
        sim.add_group(KEY, 10051251, "Trainees", "002");
        sim.add_line(KEY, "74951234567", "Main line");
        sim
    }

    /// Posts a form the way the app's client does; returns the status, body and X-Uuid header.
    async fn post_form(sim: &MangoSim, method: &str, fields: &[(&str, &str)]) -> (u16, Value) {
        let (status, body, uuid) = post_raw(sim, method, fields).await;
        assert!(
            uuid.is_some_and(|u| u.len() == 36),
            "every answer carries X-Uuid"
        );
        (status, serde_json::from_str(&body).expect("JSON answer"))
    }

    async fn post_raw(
        sim: &MangoSim,
        method: &str,
        fields: &[(&str, &str)],
    ) -> (u16, String, Option<String>) {
        let client = awc::Client::default();
        let mut response = client
            .post(format!("{}{method}", sim.api_url()))
            .send_form(&fields)
            .await
            .expect("simulator answers");
        let uuid = response
            .headers()
            .get("X-Uuid")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.body().await.expect("body");
        (
            response.status().as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
            uuid,
        )
    }

    async fn post_signed(sim: &MangoSim, method: &str, json: &str) -> (u16, Value) {
        let sign = sign(KEY, json, SALT);
        post_form(
            sim,
            method,
            &[("vpbx_api_key", KEY), ("sign", &sign), ("json", json)],
        )
        .await
    }

    fn callback_json(command_id: &str, from: &str, to: &str) -> String {
        json!({ "command_id": command_id, "from": from, "to": to, "line_number": "74951234567" })
            .to_string()
    }

    #[test]
    fn signature_reproduces_the_official_php_test_vector() {
        let json = r#"{"command_id":"your-command-id","from":{"extension":"<extension>","number":""},"to_number":"<to_number>"}"#;
        assert_eq!(
            sign("<YOUR_API_KEY>", json, "<YOUR_API_SALT>"),
            "afdeb462cd5e0e422a9c9220390124608df06a4472cb1add6ebd6e24184bd15a"
        );
    }

    #[test]
    fn signature_reproduces_the_callback_group_vector() {
        assert_eq!(
            sign(KEY, GROUP_FIRST, SALT),
            "18ea23c77f72359c5fe78bf40ad7be189cdc69b1db8a99e89cbb509c11f6f280"
        );
    }

    #[test]
    fn phone_numbers_are_ten_to_fifteen_digits_only() {
        assert!(is_phone_number("7495540444"));
        assert!(is_phone_number("749554044412345"));
        assert!(!is_phone_number("749554044"));
        assert!(!is_phone_number("7495540444123456"));
        assert!(!is_phone_number("+74955404444"));
        assert!(!is_phone_number("7495 540444"));
    }

    #[actix_web::test]
    async fn a_correctly_signed_callback_group_is_accepted_and_recorded() {
        let sim = spawn_sim().await;
        let (status, body) = post_signed(&sim, "commands/callback_group", GROUP_FIRST).await;
        assert_eq!((status, body), (200, json!({ "result": 1000 })));
        assert_eq!(
            sim.callbacks(),
            vec![serde_json::from_str::<Value>(GROUP_FIRST).expect("valid JSON")]
        );
        let requests = sim.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.path, "/vpbx/commands/callback_group");
        assert_eq!(request.api_key.as_deref(), Some(KEY));
        assert_eq!(request.json.as_deref(), Some(GROUP_FIRST));
        assert!(request.sign_valid);
        assert_eq!(request.status, 200);
    }

    #[actix_web::test]
    async fn a_client_first_callback_is_accepted_too() {
        let sim = spawn_sim().await;
        let json = callback_json("cbk2", "74955404444", "1234");
        let (status, _) = post_signed(&sim, "commands/callback_group", &json).await;
        assert_eq!(status, 200);
        assert_eq!(sim.callbacks().len(), 1);
    }

    #[actix_web::test]
    async fn a_bad_signature_is_answered_3102_and_a_second_bad_request_locks_the_account() {
        let sim = spawn_sim().await;
        let bad_sign = sign(KEY, GROUP_FIRST, "wrong-salt");
        let fields = [
            ("vpbx_api_key", KEY),
            ("sign", bad_sign.as_str()),
            ("json", GROUP_FIRST),
        ];
        let (status, body) = post_form(&sim, "commands/callback_group", &fields).await;
        assert_eq!((status, &body["result"]), (400, &json!(3102)));
        assert!(!sim.requests()[0].sign_valid);

        let (status, _) = post_form(&sim, "commands/callback_group", &fields).await;
        assert_eq!(
            status, 401,
            "the second invalid request within 2 minutes locks"
        );
        let (status, _) = post_signed(&sim, "commands/callback_group", GROUP_FIRST).await;
        assert_eq!(status, 401, "even a valid request is refused while locked");
        assert!(sim.callbacks().is_empty());

        sim.reset_lockout(KEY);
        let (status, _) = post_signed(&sim, "commands/callback_group", GROUP_FIRST).await;
        assert_eq!(status, 200);
    }

    #[actix_web::test]
    async fn an_unknown_key_is_answered_401_with_3105() {
        let sim = spawn_sim().await;
        let fields = [("vpbx_api_key", "nokey"), ("sign", "x"), ("json", "{}")];
        let (status, body) = post_form(&sim, "groups", &fields).await;
        assert_eq!((status, &body["result"]), (401, &json!(3105)));
    }

    #[actix_web::test]
    async fn an_unknown_group_or_2_instead_of_002_is_rejected() {
        let sim = spawn_sim().await;
        for from in ["9999", "2"] {
            sim.reset_lockout(KEY);
            let json = callback_json("c", from, "74955404444");
            let (status, body) = post_signed(&sim, "commands/callback_group", &json).await;
            assert_eq!(
                (status, &body["result"]),
                (400, &json!(3300)),
                "from {from}"
            );
        }
        sim.reset_lockout(KEY);
        let json = callback_json("c", "002", "74955404444");
        let (status, _) = post_signed(&sim, "commands/callback_group", &json).await;
        assert_eq!(status, 200);
        assert_eq!(sim.callbacks().len(), 1);
    }

    #[actix_web::test]
    async fn malformed_callback_payloads_get_mangos_codes() {
        let sim = spawn_roomy_sim().await;
        let long_id = "x".repeat(129);
        let cases: Vec<(String, u32)> = vec![
            ("not json".to_owned(), 3400),
            (r#"{"from":"1234","to":"74955404444"}"#.to_owned(), 3103),
            (
                r#"{"from":"1234","to":"74955404444","line_number":2}"#.to_owned(),
                3104,
            ),
            (
                json!({"command_id": long_id, "from":"1234","to":"74955404444","line_number":"74951234567"}).to_string(),
                3104,
            ),
            (callback_json("c", "1234", "+74955404444"), 3136),
            (callback_json("c", "1234", "1234"), 3300),
            (
                r#"{"from":"1234","to":"74955404444","line_number":"74950000000"}"#.to_owned(),
                3124,
            ),
        ];
        for (json, code) in cases {
            sim.reset_lockout(KEY);
            let (status, body) = post_signed(&sim, "commands/callback_group", &json).await;
            assert_eq!((status, &body["result"]), (400, &json!(code)), "{json}");
        }
        sim.reset_lockout(KEY);
        let (status, body) =
            post_form(&sim, "commands/callback_group", &[("vpbx_api_key", KEY)]).await;
        assert_eq!((status, &body["result"]), (400, &json!(3103)));
        assert!(sim.callbacks().is_empty());
    }

    #[actix_web::test]
    async fn a_fifth_callback_within_one_second_gets_429() {
        let sim = spawn_sim().await;
        for i in 0..4 {
            let json = callback_json(&format!("c{i}"), "1234", "74955404444");
            let (status, _) = post_signed(&sim, "commands/callback_group", &json).await;
            assert_eq!(status, 200);
        }
        let json = callback_json("c5", "1234", "74955404444");
        let (status, body, _) = post_raw(
            &sim,
            "commands/callback_group",
            &[
                ("vpbx_api_key", KEY),
                ("sign", &sign(KEY, &json, SALT)),
                ("json", &json),
            ],
        )
        .await;
        assert_eq!(status, 429);
        assert_eq!(body, RATE_LIMITED_BODY);
        assert_eq!(sim.callbacks().len(), 4);
        // Other methods still have room under the total limit.
        let (status, _) = post_signed(&sim, "groups", "{}").await;
        assert_eq!(status, 200);
    }

    #[actix_web::test]
    async fn the_total_limit_counts_every_method() {
        let sim = MangoSim::start(MangoSimOptions {
            total_limit_per_sec: 2,
            ..MangoSimOptions::default()
        })
        .await
        .expect("simulator starts");
        sim.add_account(KEY, SALT);
        let statuses: Vec<u16> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(post_signed(&sim, "incominglines", "{}").await.0);
            }
            v
        };
        assert_eq!(statuses, vec![200, 200, 429]);
    }

    #[actix_web::test]
    async fn scripted_replies_are_served_in_order() {
        let sim = spawn_roomy_sim().await;
        sim.push_reply(KEY, Reply::Result(2240));
        sim.push_reply(KEY, Reply::Http(500, "<html>oops</html>".to_owned()));
        sim.push_reply(KEY, Reply::RateLimited);
        sim.push_reply(KEY, Reply::Delay(Duration::from_millis(50)));
        let sign = sign(KEY, GROUP_FIRST, SALT);
        let fields = [
            ("vpbx_api_key", KEY),
            ("sign", sign.as_str()),
            ("json", GROUP_FIRST),
        ];
        let mut answers = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let (status, body, _) = post_raw(&sim, "commands/callback_group", &fields).await;
            answers.push((status, body, started.elapsed()));
        }
        assert_eq!(answers[0].0, 400);
        assert!(answers[0].1.contains("2240"));
        assert_eq!(
            (answers[1].0, answers[1].1.as_str()),
            (500, "<html>oops</html>")
        );
        assert_eq!(
            (answers[2].0, answers[2].1.as_str()),
            (429, RATE_LIMITED_BODY)
        );
        assert_eq!(answers[3].0, 200);
        assert!(answers[3].2 >= Duration::from_millis(50));
        assert_eq!(answers[4].0, 200, "the queue is empty again");
        assert_eq!(
            sim.callbacks().len(),
            2,
            "only the accepted commands are recorded"
        );
    }

    #[actix_web::test]
    async fn groups_and_lines_are_listed_in_mangos_shape() {
        let sim = spawn_sim().await;
        let (status, body) = post_signed(&sim, "groups", r#"{"show_users":1}"#).await;
        assert_eq!(status, 200);
        assert_eq!(body["result"], 1000);
        assert_eq!(body["groups"][0]["extension"], "1234");
        assert_eq!(body["groups"][1]["extension"], "002");
        assert_eq!(body["groups"][0]["id"], 10051250);
        assert!(body["groups"][0]["operators"].is_array());

        let (status, body) = post_signed(&sim, "incominglines", "{}").await;
        assert_eq!(status, 200);
        assert_eq!(body["lines"][0]["number"], "74951234567");
        assert_eq!(body["lines"][0]["schema_name"], "default");
    }

    #[actix_web::test]
    async fn get_is_answered_3101_and_unknown_methods_4001() {
        let sim = spawn_sim().await;
        let client = awc::Client::default();
        let response = client
            .get(format!("{}groups", sim.api_url()))
            .send()
            .await
            .expect("simulator answers");
        assert_eq!(response.status().as_u16(), 400);
        let (status, body) = post_signed(&sim, "ping", "{}").await;
        assert_eq!((status, &body["result"]), (404, &json!(4001)));
        let recorded: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
        assert_eq!(recorded, vec![400, 404]);
        assert!(sim.requests()[0].response.contains("3101"));
    }

    #[actix_web::test]
    async fn results_and_events_are_posted_signed_to_the_app() {
        let sim = spawn_sim().await;
        // The simulator itself stands in for the app: an unknown path answers 404, and the
        // recorded request shows what was sent.
        let status = sim
            .post_result(&sim.url(), KEY, "cbk1", 1000)
            .await
            .expect("posted");
        assert_eq!(status, 404);
        let status = sim
            .post_call_event(
                &sim.url(),
                KEY,
                json!({"call_state": "Appeared", "command_id": "cbk1"}),
            )
            .await
            .expect("posted");
        assert_eq!(status, 404);
        let requests = sim.requests();
        assert_eq!(requests[0].path, "/result/callback_group");
        assert_eq!(
            requests[0].json.as_deref(),
            Some(r#"{"command_id":"cbk1","result":1000}"#)
        );
        assert_eq!(requests[1].path, "/events/call");
        for request in &requests {
            let json = request.json.as_deref().expect("json sent");
            assert_eq!(
                request.sign.as_deref(),
                Some(sign(KEY, json, SALT).as_str())
            );
        }
        assert!(sim
            .post_result(&sim.url(), "nokey", "c", 1000)
            .await
            .is_err());
    }

    #[actix_web::test]
    async fn the_official_wire_body_is_decoded_and_its_signature_accepted() {
        let sim = spawn_sim().await;
        sim.add_account("<YOUR_API_KEY>", "<YOUR_API_SALT>");
        let body = "vpbx_api_key=%3CYOUR_API_KEY%3E&sign=afdeb462cd5e0e422a9c9220390124608df06a4472cb1add6ebd6e24184bd15a&json=%7B%22command_id%22%3A%22your-command-id%22%2C%22from%22%3A%7B%22extension%22%3A%22%3Cextension%3E%22%2C%22number%22%3A%22%22%7D%2C%22to_number%22%3A%22%3Cto_number%3E%22%7D";
        let client = awc::Client::default();
        let response = client
            .post(format!("{}groups", sim.api_url()))
            .content_type("application/x-www-form-urlencoded")
            .send_body(body)
            .await
            .expect("simulator answers");
        assert_eq!(response.status().as_u16(), 200);
        assert!(sim.requests()[0].sign_valid);
    }

    #[test]
    fn the_lockout_lasts_two_minutes_and_a_lone_invalid_request_is_forgiven_after_two() {
        let start = Instant::now();
        let mut account = Account::new(SALT);
        assert!(!account.register_invalid(start));
        assert!(
            !account.register_invalid(start + LOCKOUT_WINDOW),
            "the window has passed"
        );
        assert!(account.register_invalid(start + LOCKOUT_WINDOW + Duration::from_secs(1)));
        assert!(account.is_locked(start + Duration::from_secs(200)));
        assert!(!account.is_locked(start + Duration::from_secs(242)));
        assert!(
            !account.register_invalid(start + Duration::from_secs(243)),
            "a fresh start"
        );
    }
}
