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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use hmac::{Hmac, Mac};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{json, Map, Value};
use sha2::Sha256;

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

/// What the user's browser POSTs to the app URL / installer URL when the app opens (§1.2).
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

impl IframeRequest {
    /// The form as an `application/x-www-form-urlencoded` body.
    pub fn to_form_body(&self) -> String {
        encode_pairs(&self.form, true)
    }

    /// The query parameters as a query string (without `?`).
    pub fn query_string(&self) -> String {
        encode_pairs(&self.query, true)
    }

    /// Value of one form field.
    pub fn form_value(&self, key: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
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
    /// Event deliveries fail as if the app's public URL could not be reached while set.
    app_unreachable: bool,
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

    fn issue_chain(&mut self, member_id: &str, user_id: u64) -> UserAuth {
        let access_token = rand_hex(16);
        let refresh_token = rand_hex(16);
        self.access.insert(
            access_token.clone(),
            AccessTok {
                member_id: member_id.to_string(),
                user_id,
                expires_at: now_ts() + self.ttl,
                expired: false,
                revoked: false,
            },
        );
        self.refresh.insert(
            refresh_token.clone(),
            RefreshTok {
                member_id: member_id.to_string(),
                user_id,
                access_token: access_token.clone(),
                used: false,
            },
        );
        UserAuth {
            access_token,
            refresh_token,
            expires_in: self.ttl,
        }
    }

    fn check_token(&self, token: &str) -> TokenCheck {
        match self.access.get(token) {
            None => TokenCheck::Unknown,
            Some(t) if t.revoked => TokenCheck::Revoked,
            Some(t) if t.expired || t.expires_at <= now_ts() => TokenCheck::Expired {
                member_id: t.member_id.clone(),
            },
            Some(t) => TokenCheck::Valid {
                member_id: t.member_id.clone(),
                user_id: t.user_id,
            },
        }
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

    fn issue_event_token(&mut self, member_id: &str, workflow_id: &str) -> String {
        let mut rng = rand::thread_rng();
        let activity = format!(
            "A{:05}_{:05}_{:05}_{:05}",
            rng.gen_range(0..100_000),
            rng.gen_range(0..100_000),
            rng.gen_range(0..100_000),
            rng.gen_range(0..100_000)
        );
        let event_id: String = (&mut rng)
            .sample_iter(&Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let unsigned = format!("{workflow_id}|{activity}|{event_id}");
        let signature = match Hmac::<Sha256>::new_from_slice(&self.sign_key) {
            Ok(mut mac) => {
                mac.update(unsigned.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
            Err(_) => rand_hex(32),
        };
        let token = format!("{unsigned}.{signature}");
        self.event_tokens
            .insert(token.clone(), member_id.to_string());
        token
    }

    /// `auth[...]` pairs for a Bitrix24 → app request.
    fn auth_pairs(
        &mut self,
        member_id: &str,
        user_id: u64,
        with_refresh: bool,
        with_client_id: bool,
    ) -> Vec<(String, String)> {
        let chain = self.issue_chain(member_id, user_id);
        let p = self.portal(member_id);
        let domain = self.domain(p);
        let client_endpoint = self.client_endpoint(p);
        let app_token = p.application_token.clone();
        let mut v = vec![
            ("access_token", chain.access_token),
            ("expires", (now_ts() + self.ttl).to_string()),
            ("expires_in", self.ttl.to_string()),
            ("scope", SANDBOX_SCOPE.to_string()),
            ("domain", domain),
            ("server_endpoint", self.server_endpoint()),
            ("status", "F".to_string()),
            ("client_endpoint", client_endpoint),
            ("member_id", member_id.to_string()),
            ("user_id", user_id.to_string()),
        ];
        if with_refresh {
            v.push(("refresh_token", chain.refresh_token));
        }
        v.push(("application_token", app_token));
        if with_client_id {
            v.push(("client_id", SANDBOX_CLIENT_ID.to_string()));
        }
        v.into_iter()
            .map(|(k, val)| (format!("auth[{k}]"), val))
            .collect()
    }

    /// Queues `event` for every handler bound for it, with the usual event auth of `user_id`
    /// (`full`: with `refresh_token` and `client_id`, as ONAPPINSTALL/ONAPPUPDATE carry them).
    /// Like Bitrix24, nothing is sent before `installFinish()` ([`BitrixSim::finish_install`]),
    /// however successful `event.bind` was.
    fn queue_event(
        &mut self,
        member_id: &str,
        event: &str,
        data: &[(&str, &str)],
        user_id: u64,
        full: bool,
    ) -> usize {
        if !self.portal(member_id).install_finished {
            return 0;
        }
        let targets: Vec<(String, u64)> = self
            .portal(member_id)
            .bindings
            .iter()
            .filter(|b| b.event == event)
            .map(|b| (b.handler.clone(), b.id))
            .collect();
        let n = targets.len();
        for (handler, id) in targets {
            let mut pairs = vec![
                ("event".to_string(), event.to_string()),
                ("event_handler_id".to_string(), id.to_string()),
            ];
            for (k, v) in data {
                pairs.push((data_key(k), (*v).to_string()));
            }
            pairs.push(("ts".into(), now_ts().to_string()));
            pairs.extend(self.auth_pairs(member_id, user_id, full, full));
            self.outbox.push(Outgoing {
                member_id: member_id.to_string(),
                event: event.to_string(),
                handler,
                body: encode_pairs(&pairs, false),
            });
        }
        n
    }

    // ---- HTTP dispatch -----------------------------------------------------------------------

    fn dispatch(&mut self, path: &str, query: &str, ctype: &str, body: &[u8]) -> Reply {
        let parsed = request_params(query, ctype, body);
        let (params, auth) = match parsed {
            Ok(mut m) => {
                let auth = m.remove("auth").and_then(|v| scalar_string(&v));
                (m, auth)
            }
            Err(e) => {
                let reply = self.error_reply(&e);
                self.record(None, path, "", Value::Null, None, &reply);
                return reply;
            }
        };
        let oauth_path = path.starts_with("/oauth/") || path.starts_with("/rest/");
        if oauth_path && self.oauth_unavailable {
            let reply = self.error_reply(&api_err(
                503,
                "SERVICE_UNAVAILABLE",
                "Service temporarily unavailable",
            ));
            let name = if path.starts_with("/oauth/") {
                "oauth.token".to_string()
            } else {
                format!(
                    "oauth.{}",
                    normalize_method(path.trim_start_matches("/rest/"))
                )
            };
            self.record(None, path, &name, Value::Object(params), auth, &reply);
            return reply;
        }
        if path == "/oauth/token/" || path == "/oauth/token" {
            let (member, reply) = self.oauth_token(&params);
            self.record(
                member,
                path,
                "oauth.token",
                Value::Object(params),
                auth,
                &reply,
            );
            return reply;
        }
        if let Some(method) = path.strip_prefix("/rest/") {
            let method = normalize_method(method);
            let (member, reply) = if method == "app.info" {
                self.oauth_app_info(auth.as_deref())
            } else {
                (
                    None,
                    self.error_reply(&api_err(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")),
                )
            };
            let name = if method == "app.info" {
                "oauth.app.info".to_string()
            } else {
                method
            };
            self.record(member, path, &name, Value::Object(params), auth, &reply);
            return reply;
        }
        if let Some(rest) = path.strip_prefix("/p/") {
            if let Some((name, tail)) = rest.split_once('/') {
                if let Some(raw_method) = tail.strip_prefix("rest/") {
                    let method = normalize_method(raw_method);
                    let order = if method == "batch" {
                        batch_order(query, ctype, body)
                    } else {
                        Vec::new()
                    };
                    let (member, reply) =
                        self.portal_rest(name, raw_method, query, &params, auth.as_deref(), &order);
                    self.record(member, path, &method, Value::Object(params), auth, &reply);
                    return reply;
                }
            }
        }
        let reply = self.error_reply(&api_err(404, "NOT_FOUND", "Not found"));
        self.record(None, path, "", Value::Object(params), auth, &reply);
        reply
    }

    fn record(
        &mut self,
        member_id: Option<String>,
        path: &str,
        method: &str,
        params: Value,
        auth: Option<String>,
        reply: &Reply,
    ) {
        let error = reply
            .body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string);
        self.calls.push(RecordedCall {
            member_id,
            path: path.to_string(),
            method: method.to_string(),
            params,
            auth,
            status: reply.status,
            error,
        });
    }

    fn error_reply(&mut self, e: &ApiErr) -> Reply {
        self.count_rejection(&e.code);
        Reply {
            status: e.status,
            body: json!({"error": e.code, "error_description": e.desc}),
            location: None,
        }
    }

    fn oauth_token(&mut self, p: &Map<String, Value>) -> (Option<String>, Reply) {
        let s = |k: &str| p.get(k).and_then(scalar_string).unwrap_or_default();
        let refresh_token = s("refresh_token");
        let member = self
            .refresh
            .get(&refresh_token)
            .map(|r| r.member_id.clone());
        if s("client_id") != SANDBOX_CLIENT_ID || s("client_secret") != SANDBOX_CLIENT_SECRET {
            let r = self.error_reply(&api_err(
                401,
                "invalid_client",
                "Invalid client authentication",
            ));
            return (member, r);
        }
        let grant = s("grant_type");
        if grant != "refresh_token" {
            let desc = if grant.is_empty() {
                "Grant type is missing".to_string()
            } else {
                format!("Unsupported grant_type: {grant}")
            };
            let r = self.error_reply(&api_err(400, "invalid_request", desc));
            return (member, r);
        }
        let (user_id, old_access, member_id) = match self.refresh.get_mut(&refresh_token) {
            Some(r) if !r.used => {
                r.used = true;
                (r.user_id, r.access_token.clone(), r.member_id.clone())
            }
            _ => {
                let r = self.error_reply(&api_err(400, "invalid_grant", "Invalid refresh token"));
                return (member, r);
            }
        };
        if !self.portals.contains_key(&member_id) {
            let r = self.error_reply(&api_err(400, "invalid_grant", "Invalid refresh token"));
            return (member, r);
        }
        if let Some(t) = self.access.get_mut(&old_access) {
            t.revoked = true;
        }
        let chain = self.issue_chain(&member_id, user_id);
        let p = self.portal_mut(&member_id);
        p.refreshes += 1;
        let p = self.portal(&member_id);
        let body = json!({
            "access_token": chain.access_token,
            "client_endpoint": self.client_endpoint(p),
            "domain": self.oauth_host(),
            "expires": now_ts() + self.ttl,
            "expires_in": self.ttl,
            "member_id": member_id,
            "refresh_token": chain.refresh_token,
            "scope": SANDBOX_SCOPE,
            "server_endpoint": self.server_endpoint(),
            "status": "F",
            "user_id": user_id,
        });
        (
            Some(member_id),
            Reply {
                status: 200,
                body,
                location: None,
            },
        )
    }

    fn oauth_app_info(&mut self, auth: Option<&str>) -> (Option<String>, Reply) {
        let token = auth.unwrap_or_default();
        match self.check_token(token) {
            TokenCheck::Unknown | TokenCheck::Revoked => (
                None,
                self.error_reply(&api_err(
                    401,
                    "invalid_token",
                    "The access token provided is invalid.",
                )),
            ),
            TokenCheck::Expired { member_id } => (
                Some(member_id),
                self.error_reply(&api_err(
                    401,
                    "expired_token",
                    "The access token provided has expired.",
                )),
            ),
            TokenCheck::Valid { member_id, user_id } => {
                let expires = self.access.get(token).map(|t| t.expires_at).unwrap_or(0);
                let p = self.portal(&member_id);
                let domain = self.domain(p);
                let body = json!({"result": {
                    "client_id": SANDBOX_CLIENT_ID,
                    "scope": SANDBOX_SCOPE,
                    "expires": expires,
                    "user_id": user_id,
                    "install": {
                        "installed": true,
                        "version": 1,
                        "status": "F",
                        "scope": SANDBOX_SCOPE,
                        "domain": domain,
                        "uri": format!("https://{domain}/"),
                        "client_endpoint": self.client_endpoint(p),
                        "member_id": member_id,
                        "member_type": "PORTAL",
                    }
                }});
                (
                    Some(member_id),
                    Reply {
                        status: 200,
                        body,
                        location: None,
                    },
                )
            }
        }
    }

    /// A 302 from a portal's endpoint to a base URL that is not the portal's (no app.info change).
    fn forced_redirect(
        &self,
        name: &str,
        raw_method: &str,
        query: &str,
    ) -> Option<(Option<String>, Reply)> {
        let base = self.forced_redirects.get(name)?;
        let mut location = format!("{base}{raw_method}");
        if !query.is_empty() {
            location.push('?');
            location.push_str(query);
        }
        let member = self.by_name.get(name).cloned();
        Some((
            member,
            Reply {
                status: 302,
                body: Value::Null,
                location: Some(location),
            },
        ))
    }

    fn portal_rest(
        &mut self,
        name: &str,
        raw_method: &str,
        query: &str,
        params: &Map<String, Value>,
        auth: Option<&str>,
        batch_order: &[String],
    ) -> (Option<String>, Reply) {
        if let Some(reply) = self.forced_redirect(name, raw_method, query) {
            return reply;
        }
        let method = normalize_method(raw_method);
        let method = method.as_str();
        let member_id = match self.by_name.get(name) {
            Some(m) => m.clone(),
            None => {
                if let Some(m) = self.old_names.get(name).cloned() {
                    let new_name = self.portal(&m).name.clone();
                    let mut location = format!("{}/p/{}/rest/{}", self.url, new_name, raw_method);
                    if !query.is_empty() {
                        location.push('?');
                        location.push_str(query);
                    }
                    let reply = Reply {
                        status: 302,
                        body: Value::Null,
                        location: Some(location),
                    };
                    return (Some(m), reply);
                }
                let r = self.error_reply(&api_err(404, "NOT_FOUND", "Portal not found"));
                return (None, r);
            }
        };
        let mid = Some(member_id.clone());
        // injected faults
        let fault = self.portal_mut(&member_id).faults.pop_front();
        if let Some(f) = fault {
            let e = match f {
                Fault::QueryLimit => api_err(503, "QUERY_LIMIT_EXCEEDED", "Too many requests"),
                Fault::Internal => api_err(500, "INTERNAL_SERVER_ERROR", "Internal server error"),
                Fault::OperationTimeLimit => api_err(
                    429,
                    "OPERATION_TIME_LIMIT",
                    "Method is blocked due to operation time limit.",
                ),
            };
            return (mid, self.error_reply(&e));
        }
        // leaky bucket
        let (drain, burst) = (self.drain_per_sec, f64::from(self.burst));
        let p = self.portal_mut(&member_id);
        let now = Instant::now();
        let elapsed = now.duration_since(p.bucket_at).as_secs_f64();
        p.bucket_level = (p.bucket_level - elapsed * drain).max(0.0);
        p.bucket_at = now;
        if p.bucket_level + 1.0 > burst {
            let e = api_err(503, "QUERY_LIMIT_EXCEEDED", "Too many requests");
            return (mid, self.error_reply(&e));
        }
        p.bucket_level += 1.0;
        // auth
        let user_id = match auth.map(|t| self.check_token(t)) {
            None | Some(TokenCheck::Unknown) => {
                let e = api_err(401, "NO_AUTH_FOUND", "Wrong authorization data");
                return (mid, self.error_reply(&e));
            }
            Some(TokenCheck::Expired { member_id: m }) if m == member_id => {
                let e = api_err(
                    401,
                    "expired_token",
                    "The access token provided has expired.",
                );
                return (mid, self.error_reply(&e));
            }
            Some(TokenCheck::Valid {
                member_id: m,
                user_id,
            }) if m == member_id => user_id,
            Some(_) => {
                let e = api_err(
                    401,
                    "invalid_token",
                    "The access token provided is invalid.",
                );
                return (mid, self.error_reply(&e));
            }
        };
        let result = if method == "batch" {
            self.batch(&member_id, user_id, params, batch_order)
        } else {
            self.call_method(&member_id, user_id, method, params)
        };
        match result {
            Ok(v) => (
                mid,
                Reply {
                    status: 200,
                    body: json!({"result": v, "time": time_json()}),
                    location: None,
                },
            ),
            Err(e) => (mid, self.error_reply(&e)),
        }
    }

    fn batch(
        &mut self,
        member_id: &str,
        user_id: u64,
        params: &Map<String, Value>,
        order: &[String],
    ) -> Result<Value, ApiErr> {
        let halt = get_ci(params, "halt").map(truthy).unwrap_or(false);
        let mut cmds: Vec<(String, String)> = match get_ci(params, "cmd") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| (k.clone(), scalar_string(v).unwrap_or_default()))
                .collect(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), scalar_string(v).unwrap_or_default()))
                .collect(),
            _ => Vec::new(),
        };
        // run in the order the client sent them (PHP arrays keep insertion order)
        cmds.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(usize::MAX));
        if cmds.len() > BATCH_MAX {
            return Err(api_err(
                400,
                "ERROR_BATCH_LENGTH_EXCEEDED",
                "Max batch length exceeded",
            ));
        }
        let mut results: Vec<(String, Value)> = Vec::new();
        let mut errors: Vec<(String, Value)> = Vec::new();
        let mut times: Vec<(String, Value)> = Vec::new();
        let mut done = Map::new();
        for (key, cmd) in cmds {
            let (raw_method, query) = cmd.split_once('?').unwrap_or((cmd.as_str(), ""));
            let method = normalize_method(raw_method);
            let outcome = if method == "batch" {
                Err(api_err(
                    400,
                    "ERROR_BATCH_METHOD_NOT_ALLOWED",
                    "Method is not allowed for batch usage",
                ))
            } else {
                match parse_php(query) {
                    Ok(mut p) => {
                        p.remove("auth");
                        let p = match substitute_value(Value::Object(p), &done) {
                            Value::Object(m) => m,
                            _ => Map::new(),
                        };
                        self.call_method(member_id, user_id, &method, &p)
                    }
                    Err(e) => Err(e),
                }
            };
            match outcome {
                Ok(v) => {
                    done.insert(key.clone(), v.clone());
                    times.push((key.clone(), time_json()));
                    results.push((key, v));
                }
                Err(e) => {
                    self.count_rejection(&e.code);
                    errors.push((key, json!({"error": e.code, "error_description": e.desc})));
                    if halt {
                        break;
                    }
                }
            }
        }
        Ok(json!({
            "result": php_map(results),
            "result_error": php_map(errors),
            "result_total": [],
            "result_next": [],
            "result_time": php_map(times),
        }))
    }

    fn call_method(
        &mut self,
        member_id: &str,
        user_id: u64,
        method: &str,
        p: &Map<String, Value>,
    ) -> Result<Value, ApiErr> {
        match method {
            "user.admin" => Ok(Value::Bool(self.is_admin(member_id, user_id))),
            "profile" => Ok(json!({
                "ID": user_id.to_string(),
                "ADMIN": self.is_admin(member_id, user_id),
                "NAME": "User",
                "LAST_NAME": user_id.to_string(),
            })),
            "app.info" => Ok(json!({
                "ID": 1, "CODE": SANDBOX_CLIENT_ID, "VERSION": 1, "STATUS": "F", "INSTALLED": true,
                "PAYMENT_EXPIRED": "N", "DAYS": null, "LANGUAGE_ID": "ru", "LICENSE": "ru_project",
                "LICENSE_TYPE": "project", "LICENSE_FAMILY": "project",
            })),
            "bizproc.robot.add" => self.robot_add(member_id, user_id, p),
            "bizproc.robot.update" => self.robot_update(member_id, user_id, p),
            "bizproc.robot.delete" => {
                self.require_admin(member_id, user_id)?;
                let code = get_ci(p, "CODE")
                    .and_then(scalar_string)
                    .unwrap_or_default();
                let portal = self.portal_mut(member_id);
                let before = portal.robots.len();
                portal
                    .robots
                    .retain(|r| !r.code.eq_ignore_ascii_case(&code));
                if portal.robots.len() == before {
                    return Err(api_err(
                        400,
                        "ERROR_ACTIVITY_NOT_FOUND",
                        "Activity not found!",
                    ));
                }
                Ok(Value::Bool(true))
            }
            "bizproc.robot.list" => {
                self.require_admin(member_id, user_id)?;
                let codes: Vec<Value> = self
                    .portal(member_id)
                    .robots
                    .iter()
                    .map(|r| Value::String(r.code.clone()))
                    .collect();
                Ok(Value::Array(codes))
            }
            "event.bind" => self.event_bind(member_id, user_id, p),
            "event.unbind" => {
                self.require_admin(member_id, user_id)?;
                let event = get_ci(p, "event")
                    .and_then(scalar_string)
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                let handler = get_ci(p, "handler").and_then(scalar_string);
                let portal = self.portal_mut(member_id);
                let before = portal.bindings.len();
                portal.bindings.retain(|b| {
                    !(b.event == event && handler.as_ref().is_none_or(|h| *h == b.handler))
                });
                Ok(json!({"count": before - portal.bindings.len()}))
            }
            "event.test" => {
                // Basic scope; the app calls it with an administrator's token.
                self.require_admin(member_id, user_id)?;
                let query: Vec<(String, String)> = p
                    .iter()
                    .filter_map(|(k, v)| scalar_string(v).map(|v| (format!("QUERY[{k}]"), v)))
                    .collect();
                let data: Vec<(&str, &str)> = query
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .chain([("LANGUAGE_ID", "ru")])
                    .collect();
                self.queue_event(member_id, "ONAPPTEST", &data, user_id, false);
                Ok(Value::Bool(true))
            }
            "event.get" => {
                let list: Vec<Value> = self
                    .portal(member_id)
                    .bindings
                    .iter()
                    .map(|b| {
                        json!({"event": b.event, "handler": b.handler, "auth_type": "0", "offline": 0})
                    })
                    .collect();
                Ok(Value::Array(list))
            }
            "crm.deal.get" => {
                let id = require_id(p)?;
                let portal = self.portal(member_id);
                let deal = portal.deals.get(&id).ok_or_else(not_found)?;
                let contact = deal
                    .contacts
                    .first()
                    .map(|c| Value::String(c.to_string()))
                    .unwrap_or(Value::Null);
                Ok(json!({
                    "ID": id.to_string(), "TITLE": format!("Deal #{id}"), "TYPE_ID": "SALE",
                    "CATEGORY_ID": "0", "STAGE_ID": "NEW", "STAGE_SEMANTIC_ID": "P", "IS_NEW": "Y",
                    "CURRENCY_ID": "RUB", "OPPORTUNITY": "0.00", "COMPANY_ID": "0",
                    "CONTACT_ID": contact, "ASSIGNED_BY_ID": "1", "CREATED_BY_ID": "1",
                    "DATE_CREATE": deal.created, "OPENED": "Y", "CLOSED": "N", "SOURCE_ID": "WEB",
                }))
            }
            "crm.deal.contact.items.get" => {
                let id = require_id(p)?;
                let portal = self.portal(member_id);
                let deal = portal.deals.get(&id).ok_or_else(not_found)?;
                let items: Vec<Value> = deal
                    .contacts
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        json!({"CONTACT_ID": c, "SORT": 10 * (i + 1), "ROLE_ID": 0,
                               "IS_PRIMARY": if i == 0 { "Y" } else { "N" }})
                    })
                    .collect();
                Ok(Value::Array(items))
            }
            "crm.contact.get" => {
                let id = require_id(p)?;
                let portal = self.portal(member_id);
                let c = portal.contacts.get(&id).ok_or_else(not_found)?;
                let mut m = Map::new();
                m.insert("ID".into(), json!(id.to_string()));
                m.insert("NAME".into(), json!("Contact"));
                m.insert("LAST_NAME".into(), json!(id.to_string()));
                m.insert(
                    "HAS_PHONE".into(),
                    json!(if c.phones.is_empty() { "N" } else { "Y" }),
                );
                m.insert("ASSIGNED_BY_ID".into(), json!("1"));
                m.insert("DATE_CREATE".into(), json!(c.created));
                if !c.phones.is_empty() {
                    let phones: Vec<Value> = c
                        .phones
                        .iter()
                        .map(|(pid, t, v)| {
                            json!({"ID": pid.to_string(), "VALUE_TYPE": t, "VALUE": v, "TYPE_ID": "PHONE"})
                        })
                        .collect();
                    m.insert("PHONE".into(), Value::Array(phones));
                }
                Ok(Value::Object(m))
            }
            "crm.timeline.comment.add" => {
                let fields = match p.get("fields") {
                    Some(Value::Object(f)) => f,
                    _ => {
                        return Err(api_err(
                            400,
                            "ERROR_ARGUMENT",
                            "Required parameter \"fields\" is missing or empty",
                        ))
                    }
                };
                let entity_type = get_ci(fields, "ENTITY_TYPE")
                    .and_then(scalar_string)
                    .unwrap_or_default();
                if !entity_type.eq_ignore_ascii_case("deal") {
                    return Err(api_err(400, "ERROR_ARGUMENT", "Wrong ENTITY_TYPE"));
                }
                let entity_id = get_ci(fields, "ENTITY_ID").and_then(as_u64).unwrap_or(0);
                let comment = get_ci(fields, "COMMENT")
                    .and_then(scalar_string)
                    .unwrap_or_default();
                if comment.is_empty() {
                    return Err(api_err(400, "ERROR_ARGUMENT", "Empty COMMENT"));
                }
                let portal = self.portal_mut(member_id);
                if !portal.deals.contains_key(&entity_id) {
                    return Err(api_err(400, "NOT_FOUND", "Entity not found"));
                }
                portal.next_misc += 1;
                let id = portal.next_misc;
                portal.comments.push((id, entity_id, comment));
                Ok(json!(id))
            }
            "bizproc.event.send" => {
                let token = get_ci(p, "EVENT_TOKEN")
                    .and_then(scalar_string)
                    .unwrap_or_default();
                if self.event_tokens.get(&token).map(String::as_str) != Some(member_id) {
                    return Err(api_err(403, "ACCESS_DENIED", "Access denied!"));
                }
                self.portal_mut(member_id)
                    .event_sends
                    .push(Value::Object(p.clone()));
                Ok(Value::Bool(true))
            }
            _ => Err(api_err(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")),
        }
    }

    fn require_admin(&self, member_id: &str, user_id: u64) -> Result<(), ApiErr> {
        if self.is_admin(member_id, user_id) {
            Ok(())
        } else {
            Err(api_err(
                403,
                "ACCESS_DENIED",
                "Access denied! Administrator rights required",
            ))
        }
    }

    fn robot_add(
        &mut self,
        member_id: &str,
        user_id: u64,
        p: &Map<String, Value>,
    ) -> Result<Value, ApiErr> {
        self.require_admin(member_id, user_id)?;
        let fields = upper_keys(p);
        let code = fields
            .get("CODE")
            .and_then(scalar_string)
            .unwrap_or_default();
        validate_code(&code)?;
        validate_robot_fields(&fields, true)?;
        let portal = self.portal_mut(member_id);
        if portal
            .robots
            .iter()
            .any(|r| r.code.eq_ignore_ascii_case(&code))
        {
            return Err(api_err(
                400,
                "ERROR_ACTIVITY_ALREADY_INSTALLED",
                "Activity or Robot already installed!",
            ));
        }
        portal.robots.push(Robot { code, fields });
        Ok(Value::Bool(true))
    }

    fn robot_update(
        &mut self,
        member_id: &str,
        user_id: u64,
        p: &Map<String, Value>,
    ) -> Result<Value, ApiErr> {
        self.require_admin(member_id, user_id)?;
        let top = upper_keys(p);
        let code = top.get("CODE").and_then(scalar_string).unwrap_or_default();
        validate_code(&code)?;
        let update = match top.get("FIELDS") {
            Some(Value::Object(f)) if !f.is_empty() => upper_keys(f),
            _ => {
                return Err(api_err(
                    400,
                    "ERROR_ACTIVITY_VALIDATION_FAILURE",
                    "No fields to update.",
                ))
            }
        };
        validate_robot_fields(&update, false)?;
        let portal = self.portal_mut(member_id);
        let robot = portal
            .robots
            .iter_mut()
            .find(|r| r.code.eq_ignore_ascii_case(&code))
            .ok_or_else(|| api_err(400, "ERROR_ACTIVITY_NOT_FOUND", "Activity not found!"))?;
        for (k, v) in update {
            if k != "CODE" {
                robot.fields.insert(k, v);
            }
        }
        Ok(Value::Bool(true))
    }

    fn event_bind(
        &mut self,
        member_id: &str,
        user_id: u64,
        p: &Map<String, Value>,
    ) -> Result<Value, ApiErr> {
        self.require_admin(member_id, user_id)?;
        let event = get_ci(p, "event")
            .and_then(scalar_string)
            .unwrap_or_default()
            .to_ascii_uppercase();
        if event.is_empty() || !event.starts_with("ON") {
            return Err(api_err(400, "ERROR_EVENT_NOT_FOUND", "Event not found"));
        }
        let handler = get_ci(p, "handler")
            .and_then(scalar_string)
            .unwrap_or_default();
        validate_handler(&handler)?;
        let portal = self.portal_mut(member_id);
        if portal
            .bindings
            .iter()
            .any(|b| b.event == event && b.handler == handler)
        {
            return Err(api_err(400, "", "Handler already binded"));
        }
        portal.next_misc += 1;
        let id = portal.next_misc;
        portal.bindings.push(Binding { event, handler, id });
        Ok(Value::Bool(true))
    }
}

// ---------------------------------------------------------------------------------------------
// Validation helpers

fn validate_code(code: &str) -> Result<(), ApiErr> {
    if code.is_empty() {
        return Err(api_err(
            400,
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
            "Empty activity code!",
        ));
    }
    let ok = code
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        return Err(api_err(
            400,
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
            "Wrong activity code!",
        ));
    }
    Ok(())
}

/// Checks a callback URL like `HandlerHelper::checkCallback`: http/https and a dotted host.
fn validate_handler(handler: &str) -> Result<(), ApiErr> {
    if handler.is_empty() {
        return Err(api_err(
            400,
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
            "Empty activity handler!",
        ));
    }
    let url = url::Url::parse(handler)
        .map_err(|_| api_err(400, "ERROR_WRONG_HANDLER_URL", "Wrong handler URL"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(api_err(
            400,
            "ERROR_UNSUPPORTED_PROTOCOL",
            "Unsupported event handler protocol",
        ));
    }
    match url.host_str() {
        Some(h) if h.contains('.') => Ok(()),
        _ => Err(api_err(400, "ERROR_WRONG_HANDLER_URL", "Wrong handler URL")),
    }
}

fn validate_properties(v: &Value) -> Result<(), ApiErr> {
    let fail = |d: String| api_err(400, "ERROR_ACTIVITY_VALIDATION_FAILURE", d);
    let map = match v {
        Value::Object(m) => m,
        Value::Array(a) if a.is_empty() => return Ok(()),
        Value::String(s) if s.is_empty() => return Ok(()),
        _ => return Err(fail("Wrong properties array!".into())),
    };
    for (key, prop) in map {
        let mut chars = key.chars();
        let key_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            return Err(fail(format!("Wrong property key ({key})!")));
        }
        let name = match prop {
            Value::Object(pm) => get_ci(pm, "Name").cloned(),
            _ => None,
        };
        let name_ok = match name {
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Object(m)) => !m.is_empty(),
            _ => false,
        };
        if !name_ok {
            return Err(fail(format!("Empty property NAME ({key})!")));
        }
    }
    Ok(())
}

fn validate_robot_fields(f: &Map<String, Value>, adding: bool) -> Result<(), ApiErr> {
    let fail = |d: &str| api_err(400, "ERROR_ACTIVITY_VALIDATION_FAILURE", d);
    match f.get("HANDLER") {
        Some(h) => validate_handler(&scalar_string(h).unwrap_or_default())?,
        None if adding => return Err(fail("Empty activity handler!")),
        None => {}
    }
    match f.get("NAME") {
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(Value::Object(m)) if !m.is_empty() => {}
        None if !adding => {}
        _ => return Err(fail("Empty activity name!")),
    }
    for key in ["PROPERTIES", "RETURN_PROPERTIES"] {
        if let Some(v) = f.get(key) {
            validate_properties(v)?;
        }
    }
    if let Some(dt) = f.get("DOCUMENT_TYPE") {
        let ok = as_list(dt).is_some_and(|l| {
            l.len() == 3 && l.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty()))
        });
        if !ok {
            return Err(fail("Wrong activity DOCUMENT_TYPE!"));
        }
    }
    if let Some(u) = f.get("AUTH_USER_ID") {
        if as_u64(u).is_none() && scalar_string(u).is_some_and(|s| !s.is_empty()) {
            return Err(fail("Wrong AUTH_USER_ID!"));
        }
    }
    Ok(())
}

fn not_found() -> ApiErr {
    api_err(400, "", "Not found")
}

fn require_id(p: &Map<String, Value>) -> Result<u64, ApiErr> {
    get_ci(p, "id")
        .and_then(as_u64)
        .filter(|id| *id > 0)
        .ok_or_else(|| api_err(400, "", "ID is not defined or invalid."))
}

// ---------------------------------------------------------------------------------------------
// Value helpers

fn get_ci<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).or_else(|| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn upper_keys(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
        .collect()
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "" }.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !(s.is_empty() || s == "0" || s.eq_ignore_ascii_case("false")),
        _ => false,
    }
}

/// A JSON array, or a PHP-style map with keys `0..n`, as a list.
fn as_list(v: &Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) => Some(a.clone()),
        Value::Object(m) => (0..m.len())
            .map(|i| m.get(&i.to_string()).cloned())
            .collect(),
        _ => None,
    }
}

/// Serialises ordered pairs as PHP's `json_encode` would: empty → `[]`, keys `0..n` → array.
fn php_map(pairs: Vec<(String, Value)>) -> Value {
    if pairs.is_empty() {
        return Value::Array(Vec::new());
    }
    let sequential = pairs
        .iter()
        .enumerate()
        .all(|(i, (k, _))| *k == i.to_string());
    if sequential {
        Value::Array(pairs.into_iter().map(|(_, v)| v).collect())
    } else {
        Value::Object(pairs.into_iter().collect())
    }
}

fn normalize_method(raw: &str) -> String {
    let m = raw.trim_matches('/').to_ascii_lowercase();
    m.strip_suffix(".json").map(str::to_string).unwrap_or(m)
}

/// Parses a PHP-style query string / form body (`a[b][0]=x`, brackets plain or `%5B%5D`).
fn parse_php(input: &str) -> Result<Map<String, Value>, ApiErr> {
    if input.trim().is_empty() {
        return Ok(Map::new());
    }
    let fixed = input.replace("%5b", "%5B").replace("%5d", "%5D");
    serde_qs::Config::new()
        .max_depth(8)
        .use_form_encoding(true)
        .deserialize_str::<Map<String, Value>>(&fixed)
        .map_err(|e| api_err(400, "INVALID_REQUEST", format!("Malformed parameters: {e}")))
}

fn request_params(query: &str, ctype: &str, body: &[u8]) -> Result<Map<String, Value>, ApiErr> {
    let mut params = parse_php(query)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(params);
    }
    let body_params = if ctype.starts_with("application/json") {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(api_err(400, "INVALID_REQUEST", "JSON object expected")),
            Err(e) => return Err(api_err(400, "INVALID_REQUEST", format!("Bad JSON: {e}"))),
        }
    } else {
        let s = std::str::from_utf8(body)
            .map_err(|_| api_err(400, "INVALID_REQUEST", "Body is not UTF-8"))?;
        parse_php(s)?
    };
    params.extend(body_params);
    Ok(params)
}

/// Order of the batch commands as sent: PHP runs them in insertion order, so `$result[...]`
/// references depend on it.
fn batch_order(query: &str, ctype: &str, body: &[u8]) -> Vec<String> {
    let mut order = Vec::new();
    let mut scan = |raw: &str| {
        for pair in raw.split('&') {
            let key = pair.split('=').next().unwrap_or("").replace('+', " ");
            let key: String = url::form_urlencoded::parse(format!("{key}=").as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if let Some(rest) = key.strip_prefix("cmd[") {
                if let Some((k, _)) = rest.split_once(']') {
                    if !order.iter().any(|o: &String| o == k) {
                        order.push(k.to_string());
                    }
                }
            }
        }
    };
    scan(query);
    // A JSON body needs no scan: serde_json's `preserve_order` keeps the `cmd` keys as sent.
    if !ctype.starts_with("application/json") {
        if let Ok(s) = std::str::from_utf8(body) {
            scan(s);
        }
    }
    order
}

/// Replaces `$result[key][0][FIELD]` references in every string of `v` with earlier batch results.
fn substitute_value(v: Value, done: &Map<String, Value>) -> Value {
    match v {
        Value::String(s) if s.contains("$result[") => Value::String(substitute(&s, done)),
        Value::Array(a) => Value::Array(a.into_iter().map(|x| substitute_value(x, done)).collect()),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, x)| (k, substitute_value(x, done)))
                .collect(),
        ),
        other => other,
    }
}

fn substitute(s: &str, done: &Map<String, Value>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find("$result[") {
        out.push_str(&rest[..pos]);
        let mut tail = &rest[pos + "$result".len()..];
        let mut segs: Vec<&str> = Vec::new();
        while let Some(inner) = tail.strip_prefix('[') {
            match inner.find(']') {
                Some(end) => {
                    segs.push(&inner[..end]);
                    tail = &inner[end + 1..];
                }
                None => break,
            }
        }
        let mut cur: Option<&Value> = segs.first().and_then(|k| done.get(*k));
        for seg in segs.iter().skip(1) {
            cur = match cur {
                Some(Value::Object(m)) => m.get(*seg),
                Some(Value::Array(a)) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            };
        }
        out.push_str(&cur.and_then(scalar_string).unwrap_or_default());
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Form-encodes pairs; brackets in keys stay plain unless `encode_brackets`.
fn encode_pairs(pairs: &[(String, String)], encode_brackets: bool) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut key: String = url::form_urlencoded::byte_serialize(k.as_bytes()).collect();
            if !encode_brackets {
                key = key.replace("%5B", "[").replace("%5D", "]");
            }
            let val: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
            format!("{key}={val}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `data[...]` key for an event data entry; `FIELDS[ID]` becomes `data[FIELDS][ID]`.
fn data_key(k: &str) -> String {
    match k.split_once('[') {
        Some((head, tail)) => format!("data[{head}][{tail}"),
        None => format!("data[{k}]"),
    }
}

async fn post_form(url: &str, body: String) -> Result<(u16, String), String> {
    let client = awc::Client::builder()
        .disable_redirects()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut resp = client
        .post(url)
        .insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"))
        .send_body(body)
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .body()
        .limit(4 << 20)
        .await
        .map_err(|e| format!("POST {url}: reading body: {e}"))?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Sends queued event POSTs on a spawned task, after the current request is answered (Bitrix24's
/// queue servers deliver events asynchronously), recording each one's HTTP status.
fn deliver_later(state: Arc<Mutex<State>>, outbox: Vec<Outgoing>) {
    if outbox.is_empty() {
        return;
    }
    lock(&state).pending_deliveries += outbox.len();
    actix_web::rt::spawn(async move {
        for o in outbox {
            let unreachable = lock(&state).app_unreachable;
            let (status, error) = if unreachable {
                (
                    None,
                    Some("simulated: the handler URL is unreachable from Bitrix24".to_string()),
                )
            } else {
                match post_form(&o.handler, o.body).await {
                    Ok((status, _)) => (Some(status), None),
                    Err(e) => (None, Some(e)),
                }
            };
            let mut st = lock(&state);
            st.deliveries.push(Delivery {
                member_id: o.member_id,
                event: o.event,
                handler: o.handler,
                status,
                error,
            });
            st.pending_deliveries = st.pending_deliveries.saturating_sub(1);
        }
    });
}

async fn handle(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    let latency = lock(&state).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (reply, outbox) = {
        let mut st = lock(&state);
        let reply = st.dispatch(req.path(), req.query_string(), &ctype, &body);
        (reply, std::mem::take(&mut st.outbox))
    };
    deliver_later(state.into_inner(), outbox);
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = HttpResponse::build(status);
    if let Some(loc) = reply.location {
        builder.insert_header((header::LOCATION, loc));
        return builder.finish();
    }
    builder
        .content_type("application/json")
        .body(reply.body.to_string())
}

// ---------------------------------------------------------------------------------------------
// Public API

impl BitrixSim {
    /// Binds `127.0.0.1:{opts.port}` and runs the simulator on the current actix system.
    pub async fn start(opts: BitrixSimOptions) -> std::io::Result<BitrixSim> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", opts.port))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let url = format!("http://127.0.0.1:{port}");
        let state = Arc::new(Mutex::new(State {
            url: url.clone(),
            drain_per_sec: opts.drain_per_sec,
            burst: opts.burst,
            latency: opts.latency,
            ttl: opts.access_token_ttl_secs,
            portals: HashMap::new(),
            by_name: HashMap::new(),
            old_names: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            event_tokens: HashMap::new(),
            forced_redirects: HashMap::new(),
            sign_key: rand::thread_rng().gen(),
            calls: Vec::new(),
            rejections: HashMap::new(),
            outbox: Vec::new(),
            deliveries: Vec::new(),
            pending_deliveries: 0,
            oauth_unavailable: false,
            app_unreachable: false,
        }));
        let data = web::Data::from(state.clone());
        let server = super::serve(listener, move |cfg| {
            cfg.app_data(data.clone())
                .app_data(web::PayloadConfig::new(8 << 20))
                .default_service(web::to(handle));
        })?;
        Ok(BitrixSim { state, url, server })
    }

    /// Stops the server (state stays readable).
    pub async fn stop(&self) {
        self.server.stop(false).await;
    }

    fn st(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Base URL, `http://127.0.0.1:PORT`: the app's `B24_OAUTH_URL`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The OAuth server's REST endpoint, `{url}/rest/` (`SERVER_ENDPOINT`).
    pub fn server_endpoint(&self) -> String {
        format!("{}/rest/", self.url)
    }

    /// Creates portal `{name}.bitrix24.test` with user 1 as its administrator.
    ///
    /// # Panics
    /// If a portal with this name already exists.
    pub fn create_portal(&self, name: &str) -> SimPortal {
        let mut st = self.st();
        assert!(
            !st.by_name.contains_key(name),
            "bitrix sim: portal {name} already exists"
        );
        let member_id = rand_hex(16);
        let application_token = rand_hex(16);
        let mut users = BTreeMap::new();
        users.insert(1, true);
        st.portals.insert(
            member_id.clone(),
            Portal {
                member_id: member_id.clone(),
                name: name.to_string(),
                application_token: application_token.clone(),
                iframe_app_token: true,
                install_finished: false,
                users,
                contacts: BTreeMap::new(),
                deals: BTreeMap::new(),
                robots: Vec::new(),
                bindings: Vec::new(),
                comments: Vec::new(),
                event_sends: Vec::new(),
                bucket_level: 0.0,
                bucket_at: Instant::now(),
                faults: VecDeque::new(),
                refreshes: 0,
                next_contact: 0,
                next_deal: 0,
                next_misc: 100,
            },
        );
        st.by_name.insert(name.to_string(), member_id.clone());
        st.old_names.remove(name);
        SimPortal {
            member_id,
            name: name.to_string(),
            domain: format!("{name}.bitrix24.test"),
            client_endpoint: format!("{}/p/{name}/rest/", st.url),
            application_token,
            admin_user_id: 1,
        }
    }

    /// Current state of a portal as a [`SimPortal`] (after renames and application token rotations).
    pub fn portal(&self, member_id: &str) -> SimPortal {
        let st = self.st();
        let p = st.portal(member_id);
        SimPortal {
            member_id: p.member_id.clone(),
            name: p.name.clone(),
            domain: st.domain(p),
            client_endpoint: st.client_endpoint(p),
            application_token: p.application_token.clone(),
            admin_user_id: 1,
        }
    }

    /// Adds (or changes) a user of the portal.
    pub fn add_user(&self, member_id: &str, user_id: u64, admin: bool) {
        self.st().portal_mut(member_id).users.insert(user_id, admin);
    }

    /// A fresh token chain for a user, as when the user opens the app in the iframe.
    pub fn login(&self, member_id: &str, user_id: u64) -> UserAuth {
        let mut st = self.st();
        st.portal(member_id);
        st.issue_chain(member_id, user_id)
    }

    /// What Bitrix24's browser POSTs to the app / installer URL (§1.2), with a fresh token chain.
    pub fn iframe_request(
        &self,
        member_id: &str,
        user_id: u64,
        placement: &str,
        lang: &str,
    ) -> IframeRequest {
        let mut st = self.st();
        let chain = st.issue_chain(member_id, user_id);
        let p = st.portal(member_id);
        let domain = st.domain(p);
        let app_token = p.application_token.clone();
        let with_app_token = p.iframe_app_token;
        let s = |a: &str, b: String| (a.to_string(), b);
        let mut req = IframeRequest {
            query: vec![
                s("DOMAIN", domain),
                s("PROTOCOL", "1".into()),
                s("LANG", lang.into()),
                s("APP_SID", rand_hex(16)),
            ],
            form: vec![
                s("AUTH_ID", chain.access_token),
                s("AUTH_EXPIRES", st.ttl.to_string()),
                s("REFRESH_ID", chain.refresh_token),
                s("SERVER_ENDPOINT", st.server_endpoint()),
                s("member_id", member_id.into()),
                s("status", "F".into()),
                s("PLACEMENT", placement.into()),
                s("PLACEMENT_OPTIONS", "{}".into()),
                s("APPLICATION_TOKEN", app_token),
                s("APPLICATION_SCOPE", SANDBOX_SCOPE.into()),
            ],
        };
        if !with_app_token {
            req.form.retain(|(k, _)| k != "APPLICATION_TOKEN");
        }
        req
    }

    /// Whether this portal's iframe / installer POSTs carry `APPLICATION_TOKEN` (default yes;
    /// Bitrix24 documented the field only recently and portals may leave it out).
    pub fn set_iframe_application_token(&self, member_id: &str, sent: bool) {
        self.st().portal_mut(member_id).iframe_app_token = sent;
    }

    /// What `BX24.installFinish()` in the installer page triggers: the app counts as installed
    /// and ONAPPINSTALL goes, asynchronously, to every handler bound for it, with the installing
    /// administrator's (user 1's) full auth: tokens, `expires_in`, endpoints, `user_id` and the
    /// `application_token`. Returns how many deliveries were queued; await [`BitrixSim::settle`].
    pub fn finish_install(&self, member_id: &str) -> usize {
        let (n, outbox) = {
            let mut st = self.st();
            st.portal_mut(member_id).install_finished = true;
            let data = [
                ("VERSION", "1"),
                ("ACTIVE", "Y"),
                ("INSTALLED", "Y"),
                ("LANGUAGE_ID", "ru"),
            ];
            let n = st.queue_event(member_id, "ONAPPINSTALL", &data, 1, true);
            (n, std::mem::take(&mut st.outbox))
        };
        deliver_later(self.state.clone(), outbox);
        n
    }

    /// Whether `BX24.installFinish()` ran ([`BitrixSim::finish_install`]).
    pub fn install_finished(&self, member_id: &str) -> bool {
        self.st().portal(member_id).install_finished
    }

    /// Waits until every queued event delivery has been attempted.
    ///
    /// # Panics
    /// If deliveries are still pending after 30 s.
    pub async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.st().pending_deliveries > 0 {
            assert!(
                Instant::now() < deadline,
                "bitrix sim: event deliveries did not finish within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every asynchronous event delivery (see [`Delivery`]), in order; [`BitrixSim::send_event`]
    /// returns its statuses itself and is not listed.
    pub fn deliveries(&self, member_id: &str) -> Vec<Delivery> {
        self.st()
            .deliveries
            .iter()
            .filter(|d| d.member_id == member_id)
            .cloned()
            .collect()
    }

    /// While `true`, the OAuth server (`/oauth/token/`, `/rest/app.info`) answers 503.
    pub fn set_oauth_unavailable(&self, unavailable: bool) {
        self.st().oauth_unavailable = unavailable;
    }

    /// While `true`, event deliveries fail as if the app's public URL could not be reached
    /// (a firewall, a wrong `APP_PUBLIC_URL`); they are recorded without a status.
    pub fn set_app_unreachable(&self, unreachable: bool) {
        self.st().app_unreachable = unreachable;
    }

    /// Form-urlencoded ONAPPINSTALL event (§1.3) with a fresh token chain for user 1.
    pub fn onappinstall_body(&self, member_id: &str) -> String {
        let mut st = self.st();
        let mut pairs = vec![
            ("event".to_string(), "ONAPPINSTALL".to_string()),
            ("data[VERSION]".into(), "1".into()),
            ("data[ACTIVE]".into(), "Y".into()),
            ("data[INSTALLED]".into(), "Y".into()),
            ("data[LANGUAGE_ID]".into(), "ru".into()),
            ("ts".into(), now_ts().to_string()),
        ];
        pairs.extend(st.auth_pairs(member_id, 1, true, true));
        encode_pairs(&pairs, false)
    }

    /// The app's current `application_token` on the portal.
    pub fn application_token(&self, member_id: &str) -> String {
        self.st().portal(member_id).application_token.clone()
    }

    /// Adds a contact with phones `(VALUE_TYPE, VALUE)`; returns its id.
    pub fn add_contact(&self, member_id: &str, phones: &[(&str, &str)]) -> u64 {
        let mut st = self.st();
        let p = st.portal_mut(member_id);
        p.next_contact += 1;
        let id = p.next_contact;
        let mut list = Vec::new();
        for (t, v) in phones {
            p.next_misc += 1;
            list.push((p.next_misc, t.to_string(), v.to_string()));
        }
        p.contacts.insert(
            id,
            Contact {
                phones: list,
                created: chrono::Utc::now().to_rfc3339(),
            },
        );
        id
    }

    /// Adds a deal, optionally with a (primary) contact; returns its id.
    pub fn add_deal(&self, member_id: &str, contact_id: Option<u64>) -> u64 {
        let mut st = self.st();
        let p = st.portal_mut(member_id);
        p.next_deal += 1;
        let id = p.next_deal;
        p.deals.insert(
            id,
            Deal {
                contacts: contact_id.into_iter().collect(),
                created: chrono::Utc::now().to_rfc3339(),
            },
        );
        id
    }

    /// Links one more contact to a deal (the first linked one is primary).
    pub fn link_contact(&self, member_id: &str, deal_id: u64, contact_id: u64) {
        let mut st = self.st();
        if let Some(d) = st.portal_mut(member_id).deals.get_mut(&deal_id) {
            if !d.contacts.contains(&contact_id) {
                d.contacts.push(contact_id);
            }
        }
    }

    /// The robot call Bitrix24 would POST for robot `code` on deal `deal_id` (§4.2):
    /// `(handler url, form body, event_token)`, or `None` if no such robot is registered.
    pub fn robot_call_body(
        &self,
        member_id: &str,
        code: &str,
        deal_id: u64,
        properties: &[(&str, &str)],
        style: RobotCallStyle,
    ) -> Option<(String, String, String)> {
        let mut st = self.st();
        let robot = st
            .portal(member_id)
            .robots
            .iter()
            .find(|r| r.code.eq_ignore_ascii_case(code))?;
        let handler = robot.fields.get("HANDLER").and_then(scalar_string)?;
        let robot_code = robot.code.clone();
        let user_id = robot
            .fields
            .get("AUTH_USER_ID")
            .and_then(as_u64)
            .filter(|u| *u > 0)
            .unwrap_or(1);
        let use_subscription = match robot.fields.get("USE_SUBSCRIPTION").and_then(scalar_string) {
            Some(s) if s == "Y" => "Y",
            _ => "N",
        };
        let workflow_id = format!(
            "{}.{:08}",
            &rand_hex(7),
            rand::thread_rng().gen_range(0..100_000_000u32)
        );
        let event_token = st.issue_event_token(member_id, &workflow_id);
        let mut pairs: Vec<(String, String)> = vec![
            ("workflow_id".into(), workflow_id),
            ("code".into(), robot_code),
            ("document_id[0]".into(), "crm".into()),
            ("document_id[1]".into(), "CCrmDocumentDeal".into()),
            ("document_id[2]".into(), format!("DEAL_{deal_id}")),
        ];
        if !style.old_core {
            pairs.push(("document_type[0]".into(), "crm".into()));
            pairs.push(("document_type[1]".into(), "CCrmDocumentDeal".into()));
            pairs.push(("document_type[2]".into(), "DEAL".into()));
        }
        pairs.push(("event_token".into(), event_token.clone()));
        for (k, v) in properties {
            pairs.push((format!("properties[{k}]"), v.to_string()));
        }
        pairs.push(("use_subscription".into(), use_subscription.into()));
        pairs.push(("timeout_duration".into(), "0".into()));
        pairs.push(("ts".into(), now_ts().to_string()));
        pairs.extend(st.auth_pairs(member_id, user_id, !style.old_core, false));
        let body = encode_pairs(&pairs, style.percent_encoded_brackets);
        Some((handler, body, event_token))
    }

    /// POSTs a robot call (default style) to the robot's handler and returns the app's answer.
    pub async fn fire_robot(
        &self,
        member_id: &str,
        code: &str,
        deal_id: u64,
        properties: &[(&str, &str)],
    ) -> Result<Fired, String> {
        self.fire_robot_styled(
            member_id,
            code,
            deal_id,
            properties,
            RobotCallStyle::default(),
        )
        .await
    }

    /// [`BitrixSim::fire_robot`] with a chosen body style.
    pub async fn fire_robot_styled(
        &self,
        member_id: &str,
        code: &str,
        deal_id: u64,
        properties: &[(&str, &str)],
        style: RobotCallStyle,
    ) -> Result<Fired, String> {
        let (url, body, event_token) = self
            .robot_call_body(member_id, code, deal_id, properties, style)
            .ok_or_else(|| format!("no robot {code} registered on {member_id}"))?;
        let (status, body) = post_form(&url, body).await?;
        Ok(Fired {
            status,
            body,
            event_token,
        })
    }

    /// Sends `event` to every handler bound for it with `event.bind`; returns the HTTP statuses.
    /// A test's shortcut: it delivers at once and whether or not `installFinish()` ran.
    ///
    /// ONAPPUPDATE first rotates the application token and deletes the app's robots; ONAPPUNINSTALL
    /// carries no tokens and afterwards the app's robots, bindings and tokens are gone.
    pub async fn send_event(
        &self,
        member_id: &str,
        event: &str,
        data: &[(&str, &str)],
    ) -> Result<Vec<u16>, String> {
        let event = event.to_ascii_uppercase();
        let sends: Vec<(String, String)> = {
            let mut st = self.st();
            if event == "ONAPPUPDATE" {
                let p = st.portal_mut(member_id);
                p.application_token = rand_hex(16);
                p.robots.clear();
            }
            let targets: Vec<(String, u64)> = st
                .portal(member_id)
                .bindings
                .iter()
                .filter(|b| b.event == event)
                .map(|b| (b.handler.clone(), b.id))
                .collect();
            let mut out = Vec::new();
            for (handler, id) in targets {
                let mut pairs = vec![
                    ("event".to_string(), event.clone()),
                    ("event_handler_id".to_string(), id.to_string()),
                ];
                for (k, v) in data {
                    pairs.push((data_key(k), v.to_string()));
                }
                pairs.push(("ts".into(), now_ts().to_string()));
                if event == "ONAPPUNINSTALL" {
                    let p = st.portal(member_id);
                    let auth = [
                        ("domain", st.domain(p)),
                        ("server_endpoint", st.server_endpoint()),
                        ("client_endpoint", st.client_endpoint(p)),
                        ("member_id", member_id.to_string()),
                        ("application_token", p.application_token.clone()),
                    ];
                    pairs.extend(auth.into_iter().map(|(k, v)| (format!("auth[{k}]"), v)));
                } else {
                    let full = event == "ONAPPUPDATE" || event == "ONAPPINSTALL";
                    pairs.extend(st.auth_pairs(member_id, 1, full, full));
                }
                out.push((handler, encode_pairs(&pairs, false)));
            }
            if event == "ONAPPUNINSTALL" {
                let p = st.portal_mut(member_id);
                p.robots.clear();
                p.bindings.clear();
                p.install_finished = false;
                for t in st.access.values_mut() {
                    if t.member_id == member_id {
                        t.revoked = true;
                    }
                }
                for r in st.refresh.values_mut() {
                    if r.member_id == member_id {
                        r.used = true;
                    }
                }
            }
            out
        };
        let mut statuses = Vec::new();
        for (url, body) in sends {
            let (status, _) = post_form(&url, body).await?;
            statuses.push(status);
        }
        Ok(statuses)
    }

    /// Every access token of the portal now answers 401 `expired_token`.
    pub fn expire_access_tokens(&self, member_id: &str) {
        let mut st = self.st();
        for t in st.access.values_mut() {
            if t.member_id == member_id {
                t.expired = true;
            }
        }
    }

    /// Delay before every answer.
    pub fn set_latency(&self, d: Duration) {
        self.st().latency = d;
    }

    /// The next `n` REST calls to the portal fail with `fault`.
    pub fn fail_next(&self, member_id: &str, n: usize, fault: Fault) {
        let mut st = self.st();
        let p = st.portal_mut(member_id);
        p.faults.extend(std::iter::repeat_n(fault, n));
    }

    /// Renames the portal; its old endpoint answers 302 to the same method on the new one.
    pub fn rename_portal(&self, member_id: &str, new_name: &str) {
        let mut st = self.st();
        let old = st.portal(member_id).name.clone();
        if old == new_name {
            return;
        }
        st.by_name.remove(&old);
        st.old_names.insert(old, member_id.to_string());
        st.old_names.remove(new_name);
        st.by_name
            .insert(new_name.to_string(), member_id.to_string());
        st.portal_mut(member_id).name = new_name.to_string();
    }

    /// Makes the portal's REST endpoint answer every call with a 302 to `base` (e.g. another
    /// portal's `client_endpoint`) while the OAuth server's app.info keeps reporting the
    /// portal's real endpoint: a redirect that Bitrix24 itself does not confirm.
    pub fn redirect_portal_to(&self, member_id: &str, base: &str) {
        let mut st = self.st();
        let name = st.portal(member_id).name.clone();
        st.forced_redirects.insert(name, base.to_string());
    }

    /// Every request received so far.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.st().calls.clone()
    }

    /// Requests for one method (`crm.deal.get`, `batch`, `oauth.token`, `oauth.app.info`…).
    pub fn calls_to(&self, method: &str) -> Vec<RecordedCall> {
        self.st()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// Registered robots: `(CODE, fields with upper-case top-level keys)`.
    pub fn robots(&self, member_id: &str) -> Vec<(String, Value)> {
        self.st()
            .portal(member_id)
            .robots
            .iter()
            .map(|r| (r.code.clone(), Value::Object(r.fields.clone())))
            .collect()
    }

    /// Event bindings: `(EVENT, handler)`.
    pub fn bound_events(&self, member_id: &str) -> Vec<(String, String)> {
        self.st()
            .portal(member_id)
            .bindings
            .iter()
            .map(|b| (b.event.clone(), b.handler.clone()))
            .collect()
    }

    /// Accepted `bizproc.event.send` parameters, in order.
    pub fn event_sends(&self, member_id: &str) -> Vec<Value> {
        self.st().portal(member_id).event_sends.clone()
    }

    /// Timeline comments added to a deal, in order.
    pub fn timeline_comments(&self, member_id: &str, deal_id: u64) -> Vec<String> {
        self.st()
            .portal(member_id)
            .comments
            .iter()
            .filter(|(_, d, _)| *d == deal_id)
            .map(|(_, _, c)| c.clone())
            .collect()
    }

    /// Number of successful `refresh_token` grants for the portal.
    pub fn refresh_count(&self, member_id: &str) -> usize {
        self.st().portal(member_id).refreshes
    }

    /// Every access and refresh token issued for the portal so far (including refresh grants):
    /// the secrets a test looks for where they must not appear, such as the app's logs.
    pub fn issued_tokens(&self, member_id: &str) -> Vec<String> {
        let st = self.st();
        let access = st.access.iter().filter(|(_, t)| t.member_id == member_id);
        let refresh = st.refresh.iter().filter(|(_, t)| t.member_id == member_id);
        access
            .map(|(k, _)| k.clone())
            .chain(refresh.map(|(k, _)| k.clone()))
            .collect()
    }

    /// Every `event_token` issued with a robot call on the portal so far.
    pub fn issued_event_tokens(&self, member_id: &str) -> Vec<String> {
        self.st()
            .event_tokens
            .iter()
            .filter(|(_, m)| m.as_str() == member_id)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// How many answers (including batch sub-answers) carried this `error` code.
    pub fn rejections(&self, error: &str) -> usize {
        self.st().rejections.get(error).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sim_with(opts: BitrixSimOptions) -> BitrixSim {
        BitrixSim::start(opts).await.expect("sim starts")
    }

    async fn sim() -> BitrixSim {
        sim_with(BitrixSimOptions::default()).await
    }

    fn client() -> awc::Client {
        awc::Client::builder().disable_redirects().finish()
    }

    async fn read(
        mut resp: awc::ClientResponse<
            impl futures_util::Stream<Item = Result<web::Bytes, awc::error::PayloadError>> + Unpin,
        >,
    ) -> (u16, Value) {
        let status = resp.status().as_u16();
        let bytes = resp.body().await.expect("body");
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("json answer")
        };
        (status, v)
    }

    async fn post_json(url: &str, body: Value) -> (u16, Value) {
        read(client().post(url).send_json(&body).await.expect("send")).await
    }

    async fn post_form_body(url: &str, body: String) -> (u16, Value) {
        let req = client()
            .post(url)
            .insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"));
        read(req.send_body(body).await.expect("send")).await
    }

    async fn get(url: &str) -> (u16, Value) {
        read(client().get(url).send().await.expect("send")).await
    }

    async fn rest(p: &SimPortal, method: &str, token: &str, params: Value) -> (u16, Value) {
        let mut body = params;
        body["auth"] = json!(token);
        post_json(&format!("{}{}", p.client_endpoint, method), body).await
    }

    fn refresh_form(refresh_token: &str, secret: &str) -> String {
        encode_pairs(
            &[
                ("grant_type".into(), "refresh_token".into()),
                ("client_id".into(), SANDBOX_CLIENT_ID.into()),
                ("client_secret".into(), secret.into()),
                ("refresh_token".into(), refresh_token.into()),
            ],
            true,
        )
    }

    fn robot_fields(handler: &str) -> Value {
        json!({
            "CODE": "mango_callback",
            "HANDLER": handler,
            "AUTH_USER_ID": 1,
            "USE_SUBSCRIPTION": "Y",
            "NAME": {"ru": "Звонок", "en": "Callback"},
            "PROPERTIES": {"extension": {"Name": "Group", "Type": "string"}},
            "RETURN_PROPERTIES": {"call_status": {"Name": "Status", "Type": "string"}},
            "DOCUMENT_TYPE": ["crm", "CCrmDocumentDeal", "DEAL"],
        })
    }

    /// A tiny app stand-in that records every body POSTed to it.
    async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
        let got: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        super::super::serve(listener, move |cfg| {
            let sink = sink.clone();
            cfg.default_service(web::to(move |body: web::Bytes| {
                let sink = sink.clone();
                async move {
                    sink.lock()
                        .expect("lock")
                        .push(String::from_utf8_lossy(&body).into_owned());
                    HttpResponse::Ok().body("OK")
                }
            }));
        })
        .expect("listen");
        (format!("http://127.0.0.1:{port}"), got)
    }

    #[actix_web::test]
    async fn a_reused_refresh_token_is_rejected_with_invalid_grant() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        let first = sim.login(&p.member_id, 1);
        let token_url = format!("{}/oauth/token/", sim.url());

        let (status, body) = post_form_body(
            &token_url,
            refresh_form(&first.refresh_token, SANDBOX_CLIENT_SECRET),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("token_type").is_none());
        assert_eq!(body["member_id"], json!(p.member_id));
        assert_eq!(body["scope"], json!(SANDBOX_SCOPE));
        assert_eq!(body["user_id"], json!(1));
        assert!(body["expires"].is_i64());
        assert_eq!(body["client_endpoint"], json!(p.client_endpoint));
        assert_eq!(body["server_endpoint"], json!(sim.server_endpoint()));
        let second = body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string();

        // the chain is single-use: same refresh token again (this time by GET) fails
        let url = format!(
            "{token_url}?{}",
            refresh_form(&first.refresh_token, SANDBOX_CLIENT_SECRET)
        );
        let (status, body) = get(&url).await;
        assert_eq!(
            (status, body["error"].clone()),
            (400, json!("invalid_grant"))
        );
        // and the access token issued with the used refresh token is dead
        let (status, body) = rest(&p, "user.admin", &first.access_token, json!({})).await;
        assert_eq!(
            (status, body["error"].clone()),
            (401, json!("invalid_token"))
        );
        let (status, body) = rest(&p, "user.admin", &second, json!({})).await;
        assert_eq!((status, body["result"].clone()), (200, json!(true)));
        assert_eq!(sim.refresh_count(&p.member_id), 1);
        assert_eq!(sim.rejections("invalid_grant"), 1);
    }

    #[actix_web::test]
    async fn a_wrong_client_secret_is_rejected_with_invalid_client() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        let auth = sim.login(&p.member_id, 1);
        let token_url = format!("{}/oauth/token/", sim.url());
        let (status, body) =
            post_form_body(&token_url, refresh_form(&auth.refresh_token, "nope")).await;
        assert_eq!(
            (status, body["error"].clone()),
            (401, json!("invalid_client"))
        );
        // the refresh token was not consumed by the rejected attempt
        let (status, _) = post_form_body(
            &token_url,
            refresh_form(&auth.refresh_token, SANDBOX_CLIENT_SECRET),
        )
        .await;
        assert_eq!(status, 200);
        let form = "grant_type=authorization_code&client_id=app.sandbox0000000001.00000001\
                    &client_secret=sandbox-client-secret-0123456789abcdef&code=x";
        let (status, body) = post_form_body(&token_url, form.to_string()).await;
        assert_eq!(
            (status, body["error"].clone()),
            (400, json!("invalid_request"))
        );
        let calls = sim.calls_to("oauth.token");
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].error.as_deref(), Some("invalid_client"));
        assert_eq!(calls[0].member_id.as_deref(), Some(p.member_id.as_str()));
    }

    #[actix_web::test]
    async fn an_expired_access_token_answers_401_expired_token() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        let other = sim.create_portal("other");
        let auth = sim.login(&p.member_id, 1);
        let (status, body) = rest(&p, "user.admin", &auth.access_token, json!({})).await;
        assert_eq!((status, body["result"].clone()), (200, json!(true)));
        assert!(body["time"].is_object());

        let (status, body) = rest(&other, "user.admin", &auth.access_token, json!({})).await;
        assert_eq!(
            (status, body["error"].clone()),
            (401, json!("invalid_token"))
        );
        let (status, body) = rest(&p, "user.admin", "bogus", json!({})).await;
        assert_eq!(
            (status, body["error"].clone()),
            (401, json!("NO_AUTH_FOUND"))
        );

        sim.expire_access_tokens(&p.member_id);
        let (status, body) = get(&format!(
            "{}user.admin.json?auth={}",
            p.client_endpoint, auth.access_token
        ))
        .await;
        assert_eq!(
            (status, body["error"].clone()),
            (401, json!("expired_token"))
        );
        let (status, body) = get(&format!(
            "{}/rest/app.info?auth={}",
            sim.url(),
            auth.access_token
        ))
        .await;
        assert_eq!(
            (status, body["error"].clone()),
            (401, json!("expired_token"))
        );
        // a fresh login works again
        let fresh = sim.login(&p.member_id, 1);
        let (status, _) = rest(&p, "user.admin", &fresh.access_token, json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(sim.rejections("expired_token"), 2);
    }

    #[actix_web::test]
    async fn the_oauth_server_app_info_describes_the_installation() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        sim.add_user(&p.member_id, 7, false);
        let auth = sim.login(&p.member_id, 7);
        let (status, body) = get(&format!(
            "{}app.info?auth={}",
            sim.server_endpoint(),
            auth.access_token
        ))
        .await;
        assert_eq!(status, 200, "{body}");
        let r = &body["result"];
        assert_eq!(r["client_id"], json!(SANDBOX_CLIENT_ID));
        assert_eq!(r["user_id"], json!(7));
        assert_eq!(r["install"]["member_id"], json!(p.member_id));
        assert_eq!(r["install"]["domain"], json!(p.domain));
        assert_eq!(r["install"]["uri"], json!(format!("https://{}/", p.domain)));
        let (status, body) = get(&format!("{}app.info?auth=unknown", sim.server_endpoint())).await;
        assert_eq!(
            (status, body["error"].clone()),
            (401, json!("invalid_token"))
        );
        let (_, body) = rest(&p, "user.admin", &auth.access_token, json!({})).await;
        assert_eq!(body["result"], json!(false));
        assert_eq!(sim.calls_to("oauth.app.info").len(), 2);
    }

    #[actix_web::test]
    async fn the_rate_limit_answers_503_query_limit_exceeded_after_the_burst() {
        let sim = sim_with(BitrixSimOptions {
            burst: 5,
            drain_per_sec: 1.0,
            ..BitrixSimOptions::default()
        })
        .await;
        let p = sim.create_portal("acme");
        let auth = sim.login(&p.member_id, 1);
        for _ in 0..5 {
            let (status, _) = rest(&p, "user.admin", &auth.access_token, json!({})).await;
            assert_eq!(status, 200);
        }
        let (status, body) = rest(&p, "user.admin", &auth.access_token, json!({})).await;
        assert_eq!(status, 503);
        assert_eq!(
            body,
            json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"})
        );
        assert_eq!(sim.rejections("QUERY_LIMIT_EXCEEDED"), 1);
        // the bucket drains: one slot frees up after a second
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let (status, _) = rest(&p, "user.admin", &auth.access_token, json!({})).await;
        assert_eq!(status, 200);
    }

    #[actix_web::test]
    async fn injected_faults_answer_with_the_real_error_codes() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        let auth = sim.login(&p.member_id, 1);
        sim.fail_next(&p.member_id, 1, Fault::QueryLimit);
        sim.fail_next(&p.member_id, 1, Fault::Internal);
        sim.fail_next(&p.member_id, 1, Fault::OperationTimeLimit);
        let mut got = Vec::new();
        for _ in 0..4 {
            let (status, body) = rest(&p, "user.admin", &auth.access_token, json!({})).await;
            got.push((status, body["error"].as_str().unwrap_or("").to_string()));
        }
        let expected: Vec<(u16, String)> = vec![
            (503, "QUERY_LIMIT_EXCEEDED".into()),
            (500, "INTERNAL_SERVER_ERROR".into()),
            (429, "OPERATION_TIME_LIMIT".into()),
            (200, String::new()),
        ];
        assert_eq!(got, expected);
    }

    #[actix_web::test]
    async fn robot_add_validates_fields_and_rejects_a_second_install() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        sim.add_user(&p.member_id, 2, false);
        let admin = sim.login(&p.member_id, 1).access_token;
        let user = sim.login(&p.member_id, 2).access_token;
        let good = robot_fields("https://app.example.com/robot");

        let (status, body) = rest(&p, "bizproc.robot.add", &user, good.clone()).await;
        assert_eq!(
            (status, body["error"].clone()),
            (403, json!("ACCESS_DENIED"))
        );

        let bad_cases = [
            (
                "CODE",
                json!("bad code!"),
                "ERROR_ACTIVITY_VALIDATION_FAILURE",
            ),
            ("CODE", json!(""), "ERROR_ACTIVITY_VALIDATION_FAILURE"),
            ("NAME", json!(""), "ERROR_ACTIVITY_VALIDATION_FAILURE"),
            (
                "HANDLER",
                json!("ftp://app.example.com/"),
                "ERROR_UNSUPPORTED_PROTOCOL",
            ),
            (
                "HANDLER",
                json!("http://localhost/robot"),
                "ERROR_WRONG_HANDLER_URL",
            ),
            (
                "PROPERTIES",
                json!({"1phone": {"Name": "x"}}),
                "ERROR_ACTIVITY_VALIDATION_FAILURE",
            ),
            (
                "PROPERTIES",
                json!({"phone": {"Type": "string"}}),
                "ERROR_ACTIVITY_VALIDATION_FAILURE",
            ),
            (
                "RETURN_PROPERTIES",
                json!({"bad-key": {"Name": "x"}}),
                "ERROR_ACTIVITY_VALIDATION_FAILURE",
            ),
            (
                "DOCUMENT_TYPE",
                json!(["crm", "CCrmDocumentDeal"]),
                "ERROR_ACTIVITY_VALIDATION_FAILURE",
            ),
        ];
        for (key, value, code) in bad_cases {
            let mut fields = good.clone();
            fields[key] = value.clone();
            let (status, body) = rest(&p, "bizproc.robot.add", &admin, fields).await;
            assert_eq!(
                (status, body["error"].clone()),
                (400, json!(code)),
                "{key}={value}"
            );
            assert!(body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()));
        }

        // lower-case keys are accepted: the core upper-cases top-level keys
        let lower: Map<String, Value> = good
            .as_object()
            .expect("object")
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let (status, body) = rest(&p, "bizproc.robot.add", &admin, Value::Object(lower)).await;
        assert_eq!(
            (status, body["result"].clone()),
            (200, json!(true)),
            "{body}"
        );
        let (status, body) = rest(&p, "bizproc.robot.add", &admin, good.clone()).await;
        assert_eq!(
            (status, body["error"].clone()),
            (400, json!("ERROR_ACTIVITY_ALREADY_INSTALLED"))
        );
        let (_, body) = rest(&p, "bizproc.robot.list", &admin, json!({})).await;
        assert_eq!(body["result"], json!(["mango_callback"]));

        let update =
            json!({"CODE": "mango_callback", "FIELDS": {"HANDLER": "https://app.example.com/v2"}});
        let (status, _) = rest(&p, "bizproc.robot.update", &admin, update).await;
        assert_eq!(status, 200);
        let robots = sim.robots(&p.member_id);
        assert_eq!(robots[0].1["HANDLER"], json!("https://app.example.com/v2"));
        let missing = json!({"CODE": "nope", "FIELDS": {"NAME": "x"}});
        let (status, body) = rest(&p, "bizproc.robot.update", &admin, missing).await;
        assert_eq!(
            (status, body["error"].clone()),
            (400, json!("ERROR_ACTIVITY_NOT_FOUND"))
        );

        // a PHP-style form body works the same way
        let form = format!(
            "auth={admin}&CODE=second&HANDLER=https%3A%2F%2Fapp.example.com%2Fr\
             &NAME=Second&PROPERTIES%5Bphone%5D%5BName%5D=Phone\
             &DOCUMENT_TYPE[0]=crm&DOCUMENT_TYPE[1]=CCrmDocumentDeal&DOCUMENT_TYPE[2]=DEAL"
        );
        let (status, body) =
            post_form_body(&format!("{}bizproc.robot.add", p.client_endpoint), form).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(sim.robots(&p.member_id).len(), 2);
    }

    #[actix_web::test]
    async fn batch_substitution_returns_the_contact_of_the_deal() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        let token = sim.login(&p.member_id, 1).access_token;
        let contact = sim.add_contact(&p.member_id, &[("MOBILE", "+7 (900) 123-45-67")]);
        let deal = sim.add_deal(&p.member_id, Some(contact));

        // raw JSON: commands run in the order sent, "d" before "c" (serde_json::Map would sort them)
        let raw = format!(
            r#"{{"halt":0,"cmd":{{"d":"crm.deal.contact.items.get?id={deal}",
            "c":"crm.contact.get?id=$result[d][0][CONTACT_ID]",
            "g":"crm.deal.get?id={deal}",
            "x":"crm.contact.get?id=$result%5Bg%5D%5BCONTACT_ID%5D",
            "n":"batch?cmd[a]=user.admin","m":"no.such.method"}},"auth":"{token}"}}"#
        );
        let resp = client()
            .post(format!("{}batch", p.client_endpoint))
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .send_body(raw)
            .await
            .expect("send");
        let (status, body) = read(resp).await;
        assert_eq!(status, 200, "{body}");
        let r = &body["result"];
        assert_eq!(r["result"]["d"][0]["CONTACT_ID"], json!(contact));
        assert_eq!(r["result"]["d"][0]["IS_PRIMARY"], json!("Y"));
        assert_eq!(r["result"]["c"]["ID"], json!(contact.to_string()), "{body}");
        assert_eq!(
            r["result"]["c"]["PHONE"][0]["VALUE"],
            json!("+7 (900) 123-45-67")
        );
        assert_eq!(r["result"]["c"]["PHONE"][0]["VALUE_TYPE"], json!("MOBILE"));
        assert_eq!(r["result"]["g"]["CONTACT_ID"], json!(contact.to_string()));
        assert_eq!(r["result"]["x"]["ID"], json!(contact.to_string()));
        assert_eq!(
            r["result_error"]["n"]["error"],
            json!("ERROR_BATCH_METHOD_NOT_ALLOWED")
        );
        assert_eq!(
            r["result_error"]["m"]["error"],
            json!("ERROR_METHOD_NOT_FOUND")
        );
        assert_eq!(r["result_total"], json!([]));

        // no errors → result_error is PHP's empty array
        let cmd = json!({"u": "user.admin"});
        let (_, body) = rest(&p, "batch", &token, json!({"halt": 0, "cmd": cmd})).await;
        assert_eq!(body["result"]["result_error"], json!([]));

        let many: Map<String, Value> = (0..51)
            .map(|i| (format!("k{i}"), json!("user.admin")))
            .collect();
        let (status, body) = rest(&p, "batch", &token, json!({"cmd": many})).await;
        assert_eq!(
            (status, body["error"].clone()),
            (400, json!("ERROR_BATCH_LENGTH_EXCEEDED"))
        );

        // a deal without contacts: no CONTACT_ID, and unknown ids are "Not found"
        let lonely = sim.add_deal(&p.member_id, None);
        let (_, body) = rest(&p, "crm.deal.get", &token, json!({"id": lonely})).await;
        assert_eq!(body["result"]["CONTACT_ID"], Value::Null);
        let (status, body) = rest(&p, "crm.contact.get", &token, json!({"id": 999})).await;
        assert_eq!(
            (status, body),
            (400, json!({"error": "", "error_description": "Not found"}))
        );
    }

    #[actix_web::test]
    async fn a_form_encoded_batch_keeps_its_command_order_and_substitutes_results() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        let token = sim.login(&p.member_id, 1).access_token;
        let contact = sim.add_contact(&p.member_id, &[("WORK", "+74950000000")]);
        let deal = sim.add_deal(&p.member_id, Some(contact));
        let pairs: Vec<(String, String)> = vec![
            ("halt".into(), "1".into()),
            (
                "cmd[z]".into(),
                format!("crm.deal.contact.items.get?id={deal}"),
            ),
            (
                "cmd[a]".into(),
                "crm.contact.get?id=$result[z][0][CONTACT_ID]".into(),
            ),
            ("cmd[b]".into(), "crm.contact.get?id=0".into()),
            ("cmd[c]".into(), "user.admin".into()),
        ];
        let url = format!("{}batch.json?auth={token}", p.client_endpoint);
        let (status, body) = post_form_body(&url, encode_pairs(&pairs, true)).await;
        assert_eq!(status, 200, "{body}");
        let r = &body["result"];
        assert_eq!(r["result"]["a"]["PHONE"][0]["VALUE"], json!("+74950000000"));
        assert_eq!(r["result_error"]["b"]["error"], json!(""));
        // halt=1 stops after the first error
        assert!(r["result"].get("c").is_none(), "{body}");
        let calls = sim.calls_to("batch");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].auth.as_deref(), Some(token.as_str()));
    }

    #[actix_web::test]
    async fn timeline_comments_need_lower_case_fields_and_an_existing_deal() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        let token = sim.login(&p.member_id, 1).access_token;
        let deal = sim.add_deal(&p.member_id, None);
        let upper = json!({"FIELDS": {"ENTITY_ID": deal, "ENTITY_TYPE": "deal", "COMMENT": "hi"}});
        let (status, _) = rest(&p, "crm.timeline.comment.add", &token, upper).await;
        assert_eq!(status, 400);
        let missing = json!({"fields": {"ENTITY_ID": 999, "ENTITY_TYPE": "deal", "COMMENT": "hi"}});
        let (status, _) = rest(&p, "crm.timeline.comment.add", &token, missing).await;
        assert_eq!(status, 400);
        let ok = json!({"fields": {"ENTITY_ID": deal, "ENTITY_TYPE": "deal", "COMMENT": "Called"}});
        let (status, body) = rest(&p, "crm.timeline.comment.add", &token, ok).await;
        assert_eq!(status, 200);
        assert!(body["result"].is_u64());
        assert_eq!(
            sim.timeline_comments(&p.member_id, deal),
            vec!["Called".to_string()]
        );
    }

    #[actix_web::test]
    async fn a_robot_call_reaches_the_handler_and_only_its_event_token_is_accepted() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        let (app, got) = receiver().await;
        let token = sim.login(&p.member_id, 1).access_token;
        let (status, _) = rest(
            &p,
            "bizproc.robot.add",
            &token,
            robot_fields(&format!("{app}/robot")),
        )
        .await;
        assert_eq!(status, 200);
        let deal = sim.add_deal(&p.member_id, None);

        let fired = sim
            .fire_robot(
                &p.member_id,
                "mango_callback",
                deal,
                &[("extension", "101")],
            )
            .await
            .expect("robot fired");
        assert_eq!(fired.status, 200);
        let body = got.lock().expect("lock")[0].clone();
        assert!(
            body.contains(&format!("document_id[2]=DEAL_{deal}")),
            "{body}"
        );
        let parsed = parse_php(&body).expect("php form");
        let doc = as_list(&parsed["document_id"]).expect("document_id list");
        assert_eq!(
            doc,
            vec![
                json!("crm"),
                json!("CCrmDocumentDeal"),
                json!(format!("DEAL_{deal}"))
            ]
        );
        assert_eq!(parsed["properties"]["extension"], json!("101"));
        assert_eq!(parsed["event_token"], json!(fired.event_token));
        assert_eq!(parsed["use_subscription"], json!("Y"));
        assert_eq!(
            parsed["auth"]["application_token"],
            json!(p.application_token)
        );
        assert_eq!(parsed["auth"]["member_id"], json!(p.member_id));
        let robot_token = parsed["auth"]["access_token"]
            .as_str()
            .expect("token")
            .to_string();
        assert!(parsed["auth"]["refresh_token"].is_string());

        // percent-encoded and old-core variants
        let style = RobotCallStyle {
            percent_encoded_brackets: true,
            old_core: true,
        };
        let (_, old, _) = sim
            .robot_call_body(&p.member_id, "mango_callback", deal, &[], style)
            .expect("robot registered");
        assert!(old.contains("document_id%5B2%5D=DEAL_"));
        let old = parse_php(&old).expect("php form");
        assert!(old.get("document_type").is_none());
        assert!(old["auth"].get("refresh_token").is_none());
        assert!(sim
            .robot_call_body(&p.member_id, "nope", deal, &[], style)
            .is_none());

        let send =
            json!({"EVENT_TOKEN": fired.event_token, "RETURN_VALUES": {"call_status": "ok"}});
        let (status, body) = rest(&p, "bizproc.event.send", &robot_token, send.clone()).await;
        assert_eq!((status, body["result"].clone()), (200, json!(true)));
        // answering twice is still "true" (the core drops it silently)
        let (status, _) = rest(&p, "bizproc.event.send", &robot_token, send).await;
        assert_eq!(status, 200);
        let forged = json!({"EVENT_TOKEN": "1.2|A1|abc.def", "RETURN_VALUES": {}});
        let (status, body) = rest(&p, "bizproc.event.send", &robot_token, forged).await;
        assert_eq!(status, 403);
        assert_eq!(
            body,
            json!({"error": "ACCESS_DENIED", "error_description": "Access denied!"})
        );
        let sends = sim.event_sends(&p.member_id);
        assert_eq!(sends.len(), 2);
        assert_eq!(sends[0]["RETURN_VALUES"]["call_status"], json!("ok"));
    }

    #[actix_web::test]
    async fn bound_events_are_delivered_and_app_update_rotates_the_application_token() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        let (app, got) = receiver().await;
        let token = sim.login(&p.member_id, 1).access_token;
        for event in ["onAppUpdate", "ONAPPUNINSTALL"] {
            let bind = json!({"event": event, "handler": format!("{app}/event")});
            let (status, _) = rest(&p, "event.bind", &token, bind.clone()).await;
            assert_eq!(status, 200);
            let (status, body) = rest(&p, "event.bind", &token, bind).await;
            assert_eq!(
                (status, body),
                (
                    400,
                    json!({"error": "", "error_description": "Handler already binded"})
                )
            );
        }
        assert_eq!(sim.bound_events(&p.member_id)[0].0, "ONAPPUPDATE");
        let (_, body) = rest(
            &p,
            "bizproc.robot.add",
            &token,
            robot_fields(&format!("{app}/r")),
        )
        .await;
        assert_eq!(body["result"], json!(true));

        let statuses = sim
            .send_event(
                &p.member_id,
                "ONAPPUPDATE",
                &[("VERSION", "2"), ("PREVIOUS_VERSION", "1")],
            )
            .await
            .expect("delivered");
        assert_eq!(statuses, vec![200]);
        assert!(sim.robots(&p.member_id).is_empty());
        let rotated = sim.application_token(&p.member_id);
        assert_ne!(rotated, p.application_token);
        let update = parse_php(&got.lock().expect("lock")[0]).expect("form");
        assert_eq!(update["event"], json!("ONAPPUPDATE"));
        assert_eq!(update["data"]["VERSION"], json!("2"));
        assert_eq!(update["auth"]["application_token"], json!(rotated));
        assert!(update["auth"]["refresh_token"].is_string());

        let statuses = sim
            .send_event(&p.member_id, "ONAPPUNINSTALL", &[("CLEAN", "1")])
            .await
            .expect("delivered");
        assert_eq!(statuses, vec![200]);
        let uninstall = parse_php(&got.lock().expect("lock")[1]).expect("form");
        let mut keys: Vec<String> = uninstall["auth"]
            .as_object()
            .expect("auth")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "application_token",
                "client_endpoint",
                "domain",
                "member_id",
                "server_endpoint"
            ]
        );
        assert!(sim.bound_events(&p.member_id).is_empty());
        let (status, _) = rest(&p, "user.admin", &token, json!({})).await;
        assert_eq!(status, 401);
    }

    #[actix_web::test]
    async fn a_renamed_portal_redirects_the_old_endpoint_with_302() {
        let sim = sim().await;
        let p = sim.create_portal("old");
        let token = sim.login(&p.member_id, 1).access_token;
        sim.rename_portal(&p.member_id, "new");
        let resp = client()
            .post(format!("{}user.admin?auth={token}", p.client_endpoint))
            .send_json(&json!({}))
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 302);
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .expect("location")
            .to_string();
        assert_eq!(
            location,
            format!("{}/p/new/rest/user.admin?auth={token}", sim.url())
        );
        let (status, body) = get(&location).await;
        assert_eq!((status, body["result"].clone()), (200, json!(true)));
        assert_eq!(sim.portal(&p.member_id).domain, "new.bitrix24.test");
        // The OAuth server vouches for the new endpoint, which is how the app confirms a rename.
        let (status, info) = get(&format!("{}app.info?auth={token}", sim.server_endpoint())).await;
        assert_eq!(status, 200);
        assert_eq!(
            info["result"]["install"]["client_endpoint"],
            json!(format!("{}/p/new/rest/", sim.url()))
        );
    }

    #[actix_web::test]
    async fn iframe_and_install_payloads_carry_working_tokens() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        let iframe = sim.iframe_request(&p.member_id, 1, "DEFAULT", "ru");
        assert!(iframe.query_string().contains("DOMAIN=acme.bitrix24.test"));
        assert_eq!(iframe.form_value("member_id"), Some(p.member_id.as_str()));
        let body = parse_php(&iframe.to_form_body()).expect("form");
        assert_eq!(body["APPLICATION_TOKEN"], json!(p.application_token));
        let token = iframe.form_value("AUTH_ID").expect("AUTH_ID");
        let (status, _) = rest(&p, "user.admin", token, json!({})).await;
        assert_eq!(status, 200);

        let install = parse_php(&sim.onappinstall_body(&p.member_id)).expect("form");
        assert_eq!(install["event"], json!("ONAPPINSTALL"));
        assert_eq!(
            install["auth"]["application_token"],
            json!(p.application_token)
        );
        let refresh = install["auth"]["refresh_token"].as_str().expect("refresh");
        let url = format!(
            "{}/oauth/token/?{}",
            sim.url(),
            refresh_form(refresh, SANDBOX_CLIENT_SECRET)
        );
        let (status, _) = get(&url).await;
        assert_eq!(status, 200);
    }

    #[actix_web::test]
    async fn event_test_needs_an_admin_and_delivers_onapptest_after_answering() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        sim.add_user(&p.member_id, 7, false);
        let (app, got) = receiver().await;
        let admin = sim.login(&p.member_id, 1).access_token;
        let manager = sim.login(&p.member_id, 7).access_token;
        let bind = json!({"event": "ONAPPTEST", "handler": format!("{app}/events")});
        let (status, _) = rest(&p, "event.bind", &manager, bind.clone()).await;
        assert_eq!(status, 403, "event.bind requires an administrator");
        let (status, _) = rest(&p, "event.bind", &admin, bind).await;
        assert_eq!(status, 200);

        let (status, body) = rest(&p, "event.test", &manager, json!({"any": "data"})).await;
        assert_eq!(
            (status, body["error"].clone()),
            (403, json!("ACCESS_DENIED"))
        );
        // Before installFinish() Bitrix24 answers but delivers no event.
        let (status, _) = rest(&p, "event.test", &admin, json!({})).await;
        assert_eq!(status, 200);
        sim.settle().await;
        assert!(sim.deliveries(&p.member_id).is_empty());
        assert_eq!(
            sim.finish_install(&p.member_id),
            0,
            "no ONAPPINSTALL handler bound"
        );
        let (status, body) = rest(&p, "event.test", &admin, json!({"any": "data"})).await;
        assert_eq!((status, body["result"].clone()), (200, json!(true)));
        sim.settle().await;
        let deliveries = sim.deliveries(&p.member_id);
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0].event, "ONAPPTEST");
        assert_eq!(deliveries[0].status, Some(200));
        let event = parse_php(&got.lock().expect("lock")[0]).expect("form");
        assert_eq!(event["event"], json!("ONAPPTEST"));
        assert_eq!(event["data"]["QUERY"]["any"], json!("data"));
        assert_eq!(
            event["auth"]["application_token"],
            json!(p.application_token)
        );
        assert_eq!(event["auth"]["member_id"], json!(p.member_id));
        assert_eq!(event["auth"]["user_id"], json!("1"));
        assert!(event["auth"].get("refresh_token").is_none());

        // An unreachable app: the delivery is recorded without a status.
        sim.set_app_unreachable(true);
        rest(&p, "event.test", &admin, json!({})).await;
        sim.settle().await;
        assert_eq!(sim.deliveries(&p.member_id)[1].status, None);
        assert_eq!(got.lock().expect("lock").len(), 1);
    }

    #[actix_web::test]
    async fn install_finish_delivers_onappinstall_with_the_admins_full_auth() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        sim.set_iframe_application_token(&p.member_id, false);
        let iframe = sim.iframe_request(&p.member_id, 1, "DEFAULT", "ru");
        assert_eq!(iframe.form_value("APPLICATION_TOKEN"), None);
        assert_eq!(
            sim.finish_install(&p.member_id),
            0,
            "nothing bound, nothing sent"
        );
        let (app, got) = receiver().await;
        let admin = sim.login(&p.member_id, 1).access_token;
        let bind = json!({"event": "ONAPPINSTALL", "handler": format!("{app}/install")});
        rest(&p, "event.bind", &admin, bind).await;
        assert_eq!(sim.finish_install(&p.member_id), 1);
        assert!(sim.install_finished(&p.member_id));
        sim.settle().await;
        let event = parse_php(&got.lock().expect("lock")[0]).expect("form");
        assert_eq!(event["event"], json!("ONAPPINSTALL"));
        assert_eq!(event["data"]["INSTALLED"], json!("Y"));
        let auth = event["auth"].as_object().expect("auth");
        for key in [
            "access_token",
            "refresh_token",
            "expires_in",
            "member_id",
            "domain",
            "client_endpoint",
            "server_endpoint",
            "user_id",
            "application_token",
        ] {
            assert!(
                auth.get(key)
                    .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty())),
                "{key}"
            );
        }
        assert_eq!(auth["application_token"], json!(p.application_token));
        assert_eq!(auth["user_id"], json!("1"));
        let (status, _) = rest(
            &p,
            "user.admin",
            auth["access_token"].as_str().unwrap_or(""),
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "the delivered token works");
    }

    #[actix_web::test]
    async fn an_unavailable_oauth_server_answers_503_until_it_is_back() {
        let sim = sim().await;
        let p = sim.create_portal("acme");
        let auth = sim.login(&p.member_id, 1);
        sim.set_oauth_unavailable(true);
        let url = format!(
            "{}app.info?auth={}",
            sim.server_endpoint(),
            auth.access_token
        );
        assert_eq!(get(&url).await.0, 503);
        let token_url = format!("{}/oauth/token/", sim.url());
        let form = refresh_form(&auth.refresh_token, SANDBOX_CLIENT_SECRET);
        assert_eq!(post_form_body(&token_url, form.clone()).await.0, 503);
        // The portal's REST API is a different server and keeps answering.
        let (status, _) = rest(&p, "user.admin", &auth.access_token, json!({})).await;
        assert_eq!(status, 200);
        sim.set_oauth_unavailable(false);
        assert_eq!(get(&url).await.0, 200);
        assert_eq!(
            post_form_body(&token_url, form).await.0,
            200,
            "the refresh token was not used up"
        );
    }
}
