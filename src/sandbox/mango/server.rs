//! The simulator's request handling: every request checked (signature, lockout, rate, payload)
//! and recorded, and answered with Mango's bodies and codes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::*;

impl Answer {
    pub(super) fn new(status: u16, body: String) -> Self {
        Self {
            status,
            body,
            delay: None,
        }
    }

    pub(super) fn ok(body: Value) -> Self {
        Self::new(200, body.to_string())
    }

    /// Mango's error answer.
    ///
    /// The docs disagree on its shape: Doc-2017 says HTTP 420 "Method Failure" with
    /// `{"code": 3104}`, Doc-new says a 4xx/5xx status with an error code. We pick one
    /// consistent, realistic shape, HTTP 400 with `{"result":CODE,"message":"…"}`; the app's
    /// client reads both `result` and `code`, so either shape would do.
    pub(super) fn error(code: u32) -> Self {
        Self::error_with_status(400, code)
    }

    pub(super) fn error_with_status(status: u16, code: u32) -> Self {
        Self::new(
            status,
            json!({ "result": code, "message": message_for(code) }).to_string(),
        )
    }

    /// Unknown key, and the bad-request lockout: both are HTTP 401 at Mango.
    /// The lockout body is not documented; we reuse the bad-key code with its own message.
    pub(super) fn locked() -> Self {
        Self::new(
            401,
            json!({
                "result": 3105,
                "message": "Too many invalid requests: API access is locked for 2 minutes",
            })
            .to_string(),
        )
    }

    pub(super) fn rate_limited() -> Self {
        Self::new(429, RATE_LIMITED_BODY.to_owned())
    }
}

/// Human-readable text for a result code (Doc-new "Список кодов результатов").
pub(super) fn message_for(code: u32) -> &'static str {
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
    pub(super) fn new(options: MangoSimOptions) -> Self {
        Self {
            latency: options.latency,
            injector: Default::default(),
            clock: None,
            options,
            accounts: HashMap::new(),
            requests: Vec::new(),
            callbacks: Vec::new(),
            scenarios: HashMap::new(),
            next_entry: 0,
            accepted_at: Vec::new(),
            record_twice: false,
        }
    }

    pub(super) fn account_mut(&mut self, api_key: &str) -> &mut Account {
        match self.accounts.get_mut(api_key) {
            Some(account) => account,
            None => panic!("MangoSim: add_account({api_key:?}, …) first"),
        }
    }

    /// Decides the answer to one request and records it. Runs under the lock, with no await.
    pub(super) fn serve(
        &mut self,
        method: &Method,
        path: &str,
        body: &[u8],
        now: Instant,
    ) -> Answer {
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

    pub(super) fn decide(
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
                // A broken peer that performs every command twice (`record_twice`, for the
                // bench's own test): recorded as two accepted commands.
                let times = if self.record_twice { 2 } else { 1 };
                for _ in 0..times {
                    self.callbacks.push(command.clone());
                    self.accepted_at.push(now);
                }
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
pub(super) enum Handled {
    /// Answer this (a listing, or a scripted non-accepting reply).
    Answer(Answer),
    /// A callback command was accepted: record it and answer 1000, after `delay` if set.
    Accepted {
        command: Value,
        delay: Option<Duration>,
    },
}

impl Account {
    pub(super) fn new(salt: &str) -> Self {
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

    pub(super) fn is_locked(&mut self, now: Instant) -> bool {
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
    pub(super) fn register_invalid(&mut self, now: Instant) -> bool {
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
    pub(super) fn admit(
        &mut self,
        endpoint: Endpoint,
        now: Instant,
        options: &MangoSimOptions,
    ) -> bool {
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
    pub(super) fn handle(
        &mut self,
        endpoint: Endpoint,
        request: &mut MangoRequest,
    ) -> Result<Handled, u32> {
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

    /// The `callback_group` payload rules, each failure with Mango's code.
    pub(super) fn check_callback_group(
        &self,
        payload: &serde_json::Map<String, Value>,
    ) -> Result<(), u32> {
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

    pub(super) fn is_group(&self, number: &str) -> bool {
        self.groups.iter().any(|g| g.extension == number)
    }

    pub(super) fn groups_listing(&self) -> Value {
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

    pub(super) fn lines_listing(&self) -> Value {
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
pub(super) fn is_phone_number(s: &str) -> bool {
    (10..=15).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// Drops the instants older than [`RATE_WINDOW`].
pub(super) fn prune(times: &mut VecDeque<Instant>, now: Instant) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
    {
        times.pop_front();
    }
}

/// A random UUID-shaped request id, like the `X-Uuid` header Mango sends.
pub(super) fn random_uuid() -> String {
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
pub(super) async fn handle_request(
    state: web::Data<Arc<Mutex<State>>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let (latency, fault, hang) = {
        let mut st = lock(&state);
        let fault = st.injector.draw();
        (st.latency, fault, st.injector.hang())
    };
    if !latency.is_zero() {
        actix_web::rt::time::sleep(latency).await;
    }
    if let Some(fault) = fault {
        if let Some(answer) = crate::sandbox::faults::unprocessed_answer(fault, hang).await {
            return answer;
        }
    }
    let answer = {
        let mut st = lock(&state);
        let ahead = st
            .clock
            .as_ref()
            .map_or(Duration::ZERO, |c| c.offset().to_std().unwrap_or_default());
        st.serve(req.method(), req.path(), &body, Instant::now() + ahead)
    };
    if let Some(delay) = answer.delay {
        actix_web::rt::time::sleep(delay).await;
    }
    if fault.is_some_and(|f| f.processed()) {
        // Done (a callback command is accepted and recorded) but answered too late.
        actix_web::rt::time::sleep(hang).await;
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
