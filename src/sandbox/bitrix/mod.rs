//! Simulated Bitrix24: one OAuth server plus any number of portals, speaking the real wire formats.
//!
//! [`BitrixSim`] runs an actix-web server on `127.0.0.1:{port}`:
//! - `{url}/oauth/token/`: the OAuth server's token endpoint (refresh grant only; single-use chains);
//! - `{url}/rest/app.info`: the OAuth server's token check (`SERVER_ENDPOINT = {url}/rest/`);
//! - `{url}/p/{name}/rest/{method}`: the REST API of the portal `{name}.bitrix24.test`.
//!
//! It checks what it receives the way the real service does (tokens, scopes of portals, the leaky
//! bucket, robot validation, batch limits) and answers with Bitrix24's JSON shapes and HTTP codes.
//! Every request is recorded ([`BitrixSim::calls`]). Bitrix24 → app traffic (robot calls, events)
//! is built by [`BitrixSim::robot_call_body`] / [`BitrixSim::send_event`] as PHP-style
//! form-urlencoded bodies. Events that Bitrix24 sends by itself (ONAPPINSTALL after
//! [`BitrixSim::finish_install`], ONAPPTEST after the REST method `event.test`) are delivered
//! asynchronously after the triggering call was answered, like Bitrix24's queue, and recorded
//! with their HTTP status ([`BitrixSim::deliveries`]). All state lives behind one
//! `std::sync::Mutex` that is never held across an `.await`.

mod control;
mod events;
mod oauth;
mod php_form;
mod rest;
mod robots;
mod server;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::{header, StatusCode};
use rand::Rng;
use serde_json::{json, Map, Value};

/// client_id the simulated OAuth server accepts.
pub const SANDBOX_CLIENT_ID: &str = "app.sandbox0000000001.00000001";
/// client_secret the simulated OAuth server accepts.
pub const SANDBOX_CLIENT_SECRET: &str = "sandbox-client-secret-0123456789abcdef";
/// Scope every simulated installation grants (comma-separated, as Bitrix24 sends it).
pub const SANDBOX_SCOPE: &str = "crm,bizproc,placement,user_brief";
/// Maximum number of commands in one `batch` call.
pub const BATCH_MAX: usize = 50;

/// Settings of a [`BitrixSim`].
#[derive(Clone, Debug)]
pub struct BitrixSimOptions {
    /// TCP port on 127.0.0.1; `0` picks a free one.
    pub port: u16,
    /// Leaky bucket drain rate per portal, requests per second (Bitrix24 default plan: 2).
    pub drain_per_sec: f64,
    /// Leaky bucket size per portal (Bitrix24 default plan: 50).
    pub burst: u32,
    /// Delay before every answer.
    pub latency: Duration,
    /// Lifetime of access tokens in seconds (`expires_in`).
    pub access_token_ttl_secs: i64,
}

impl Default for BitrixSimOptions {
    fn default() -> Self {
        Self {
            port: 0,
            drain_per_sec: 2.0,
            burst: 50,
            latency: Duration::ZERO,
            access_token_ttl_secs: 3600,
        }
    }
}

/// A portal created with [`BitrixSim::create_portal`]. `Debug` hides the application token.
#[derive(Clone, PartialEq, Eq)]
pub struct SimPortal {
    /// Stable portal id: 32 lowercase hex characters.
    pub member_id: String,
    /// Short name; the domain is `{name}.bitrix24.test`.
    pub name: String,
    /// Portal domain, e.g. `acme.bitrix24.test`.
    pub domain: String,
    /// REST endpoint, `{url}/p/{name}/rest/`.
    pub client_endpoint: String,
    /// The app's `application_token` on this portal (32 hex).
    pub application_token: String,
    /// The installing administrator (always user 1).
    pub admin_user_id: u64,
}

/// A fresh token chain for one user, as the iframe hands it to the app. `Debug` hides the tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct UserAuth {
    /// Access token (`AUTH_ID`).
    pub access_token: String,
    /// Refresh token (`REFRESH_ID`), single use.
    pub refresh_token: String,
    /// Lifetime of the access token in seconds.
    pub expires_in: i64,
}

/// What the user's browser POSTs to the app URL / installer URL when the app opens.
/// `Debug` hides the tokens in the form.
#[derive(Clone, PartialEq, Eq)]
pub struct IframeRequest {
    /// Query string parameters: `DOMAIN`, `PROTOCOL`, `LANG`, `APP_SID`.
    pub query: Vec<(String, String)>,
    /// Form body: `AUTH_ID`, `AUTH_EXPIRES`, `REFRESH_ID`, `SERVER_ENDPOINT`, `member_id`, `status`,
    /// `PLACEMENT`, `PLACEMENT_OPTIONS`, `APPLICATION_TOKEN`, `APPLICATION_SCOPE`.
    pub form: Vec<(String, String)>,
}

impl fmt::Debug for SimPortal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimPortal")
            .field("member_id", &self.member_id)
            .field("name", &self.name)
            .field("domain", &self.domain)
            .field("client_endpoint", &self.client_endpoint)
            .field("application_token", &format_args!("<redacted>"))
            .field("admin_user_id", &self.admin_user_id)
            .finish()
    }
}

impl fmt::Debug for UserAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserAuth")
            .field("access_token", &format_args!("<redacted>"))
            .field("refresh_token", &format_args!("<redacted>"))
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

impl fmt::Debug for IframeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SECRET_FIELDS: [&str; 3] = ["AUTH_ID", "REFRESH_ID", "APPLICATION_TOKEN"];
        let form: Vec<(&str, &str)> = self
            .form
            .iter()
            .map(|(k, v)| {
                let shown = if SECRET_FIELDS.contains(&k.as_str()) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("IframeRequest")
            .field("query", &self.query)
            .field("form", &form)
            .finish()
    }
}

/// How a robot call body is shaped; real portals differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RobotCallStyle {
    /// Send bracket keys percent-encoded (`document_id%5B2%5D=…`).
    pub percent_encoded_brackets: bool,
    /// An older core: no `document_type[…]` and no `auth[refresh_token]`.
    pub old_core: bool,
}

/// Result of [`BitrixSim::fire_robot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    /// HTTP status the app answered with.
    pub status: u16,
    /// The app's response body.
    pub body: String,
    /// The `event_token` the call carried (what `bizproc.event.send` must quote).
    pub event_token: String,
}

/// A fault injected with [`BitrixSim::fail_next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 503 `QUERY_LIMIT_EXCEEDED` "Too many requests".
    QueryLimit,
    /// 500 `INTERNAL_SERVER_ERROR`.
    Internal,
    /// 429 `OPERATION_TIME_LIMIT`.
    OperationTimeLimit,
}

/// One request the simulator received, with the answer it gave.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedCall {
    /// Portal the request addressed (or the token belonged to), when known.
    pub member_id: Option<String>,
    /// URL path as received.
    pub path: String,
    /// REST method, lower-case without `.json`; `oauth.token` / `oauth.app.info` on the OAuth server.
    pub method: String,
    /// Parameters (query string merged with the body), without `auth`.
    pub params: Value,
    /// The `auth` parameter, if any.
    pub auth: Option<String>,
    /// HTTP status of the answer.
    pub status: u16,
    /// `error` code of the answer, if it was an error.
    pub error: Option<String>,
}

/// One event POST that Bitrix24 made to an app handler on its own (ONAPPINSTALL, ONAPPTEST, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub member_id: String,
    /// Upper-case event name, e.g. `ONAPPTEST`.
    pub event: String,
    /// The bound handler URL it was POSTed to.
    pub handler: String,
    /// The app's HTTP status; `None` when the handler could not be reached.
    pub status: Option<u16>,
    /// Why the handler could not be reached.
    pub error: Option<String>,
}

/// An event POST waiting to be delivered after the current request is answered.
struct Outgoing {
    member_id: String,
    event: String,
    handler: String,
    body: String,
}

/// Handle to a running simulator. Cheap to clone; all clones share the state.
#[derive(Clone)]
pub struct BitrixSim {
    state: Arc<Mutex<State>>,
    url: String,
    server: ServerHandle,
}

// ---------------------------------------------------------------------------------------------
// State

struct AccessTok {
    member_id: String,
    user_id: u64,
    expires_at: i64,
    expired: bool,
    /// Invalidated by a refresh of its chain or by uninstall: answers `invalid_token`.
    revoked: bool,
}

struct RefreshTok {
    member_id: String,
    user_id: u64,
    access_token: String,
    used: bool,
}

struct Contact {
    /// (phone id, VALUE_TYPE, VALUE)
    phones: Vec<(u64, String, String)>,
    created: String,
}

struct Deal {
    contacts: Vec<u64>,
    created: String,
}

struct Robot {
    code: String,
    fields: Map<String, Value>,
}

struct Binding {
    event: String,
    handler: String,
    id: u64,
}

struct Portal {
    member_id: String,
    name: String,
    application_token: String,
    /// Whether the iframe / installer POST carries `APPLICATION_TOKEN` (newly documented; older
    /// portals leave it out).
    iframe_app_token: bool,
    /// Set by [`BitrixSim::finish_install`] (`BX24.installFinish()`).
    install_finished: bool,
    users: BTreeMap<u64, bool>,
    contacts: BTreeMap<u64, Contact>,
    deals: BTreeMap<u64, Deal>,
    robots: Vec<Robot>,
    bindings: Vec<Binding>,
    comments: Vec<(u64, u64, String)>,
    event_sends: Vec<Value>,
    bucket_level: f64,
    bucket_at: Instant,
    faults: VecDeque<Fault>,
    /// Methods whose next answers are lost after the call was carried out
    /// ([`BitrixSim::lose_answers`]): method → how many more.
    lost_answers: HashMap<String, usize>,
    /// Methods whose next calls fail before being carried out ([`BitrixSim::fail_method_next`]).
    method_faults: HashMap<String, VecDeque<Fault>>,
    refreshes: usize,
    next_contact: u64,
    next_deal: u64,
    next_misc: u64,
}

struct State {
    url: String,
    drain_per_sec: f64,
    burst: u32,
    latency: Duration,
    ttl: i64,
    portals: HashMap<String, Portal>,
    by_name: HashMap<String, String>,
    old_names: HashMap<String, String>,
    /// Portal name → base URL its REST endpoint redirects to, whatever app.info says (a
    /// hijacked or misconfigured old host); see [`BitrixSim::redirect_portal_to`].
    forced_redirects: HashMap<String, String>,
    access: HashMap<String, AccessTok>,
    refresh: HashMap<String, RefreshTok>,
    event_tokens: HashMap<String, String>,
    sign_key: [u8; 32],
    calls: Vec<RecordedCall>,
    rejections: HashMap<String, usize>,
    /// Event POSTs to send once the current request is answered.
    outbox: Vec<Outgoing>,
    deliveries: Vec<Delivery>,
    pending_deliveries: usize,
    /// The OAuth server (token endpoint and `app.info`) answers 503 while set.
    oauth_unavailable: bool,
    /// How long the token endpoint holds back its answer to a refresh grant, after it has
    /// already consumed the refresh token (as Bitrix24 does); see [`BitrixSim::delay_refresh_answers`].
    refresh_answer_delay: Duration,
    /// Event deliveries fail as if the app's public URL could not be reached while set.
    app_unreachable: bool,
    /// Random peer faults on the portals' REST API ([`BitrixSim::set_faults`]).
    injector: crate::sandbox::faults::FaultInjector,
    /// Set by a REST call that was carried out but whose answer is to be lost: the server then
    /// cuts the connection instead of answering.
    lose_this_answer: bool,
}

/// An error answer: HTTP status, `error`, `error_description`.
#[derive(Debug)]
struct ApiErr {
    status: u16,
    code: String,
    desc: String,
}

fn api_err(status: u16, code: &str, desc: impl Into<String>) -> ApiErr {
    ApiErr {
        status,
        code: code.to_string(),
        desc: desc.into(),
    }
}

/// What the HTTP layer sends back.
struct Reply {
    status: u16,
    body: Value,
    location: Option<String>,
}

enum TokenCheck {
    Valid { member_id: String, user_id: u64 },
    Expired { member_id: String },
    Revoked,
    Unknown,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn rand_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    let v: Vec<u8> = (0..bytes).map(|_| rng.gen()).collect();
    hex::encode(v)
}

fn now_ts() -> i64 {
    chrono::Utc::now().timestamp()
}

fn time_json() -> Value {
    let now = chrono::Utc::now();
    let t = now.timestamp_micros() as f64 / 1e6;
    json!({
        "start": t, "finish": t, "duration": 0.0001, "processing": 0.0001,
        "date_start": now.to_rfc3339(), "date_finish": now.to_rfc3339(),
        "operating_reset_at": now.timestamp() + 600, "operating": 0
    })
}

impl State {
    fn portal(&self, member_id: &str) -> &Portal {
        match self.portals.get(member_id) {
            Some(p) => p,
            None => panic!("bitrix sim: unknown member_id {member_id}"),
        }
    }

    fn portal_mut(&mut self, member_id: &str) -> &mut Portal {
        match self.portals.get_mut(member_id) {
            Some(p) => p,
            None => panic!("bitrix sim: unknown member_id {member_id}"),
        }
    }

    fn domain(&self, p: &Portal) -> String {
        format!("{}.bitrix24.test", p.name)
    }

    fn client_endpoint(&self, p: &Portal) -> String {
        format!("{}/p/{}/rest/", self.url, p.name)
    }

    fn server_endpoint(&self) -> String {
        format!("{}/rest/", self.url)
    }

    fn oauth_host(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    fn is_admin(&self, member_id: &str, user_id: u64) -> bool {
        self.portals
            .get(member_id)
            .and_then(|p| p.users.get(&user_id).copied())
            .unwrap_or(false)
    }

    fn count_rejection(&mut self, code: &str) {
        *self.rejections.entry(code.to_string()).or_insert(0) += 1;
    }
}
