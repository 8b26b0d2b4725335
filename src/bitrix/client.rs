//! The Bitrix24 REST transport: `{client_endpoint}{method}` with a JSON body and an `auth`
//! token, the per-portal request budget (shared through the database), its own timeout, the waits Bitrix24 asks for
//! (`QUERY_LIMIT_EXCEEDED`, `OPERATION_TIME_LIMIT`) and `batch`. It knows no stored portal:
//! calling a portal with its stored tokens (refresh, renamed portals) is [`crate::portal::api`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::limiter::RateLimiter;
use super::BitrixError;
use crate::clock::Clock;
use crate::metrics::{Limit, Metrics};

/// Timeout of one Bitrix24 request: the platform allows a single call up to 60 s.
pub const BITRIX_TIMEOUT: Duration = Duration::from_secs(65);

const MAX_LIMIT_RETRIES: u32 = 8;

/// The longest a request waits for its portal's budget by default (HTTP handlers: an install or
/// the settings page waits rather than fail; few of their requests ever wait at all).
pub const HANDLER_BUDGET_WAIT: Duration = Duration::from_secs(30);
/// The longest a job's request waits for its portal's budget; a longer wait snoozes the job
/// ([`BitrixError::Throttled`]) so it does not hold a worker slot.
pub const JOB_BUDGET_WAIT: Duration = Duration::from_secs(1);

/// Cheap to clone: an awc client handle, a shared limiter and a clock.
#[derive(Clone)]
pub struct BitrixClient {
    http: awc::Client,
    limiter: Arc<RateLimiter>,
    clock: Clock,
    /// The longest [`BitrixClient::send`] sleeps for the portal's budget before it gives up.
    max_budget_wait: Duration,
    /// Counts every request by method and status, and every wait for a budget.
    metrics: Arc<Metrics>,
}

/// One raw answer.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub location: Option<String>,
}

impl Answer {
    pub fn error_code(&self) -> String {
        self.body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
    pub fn error_description(&self) -> String {
        self.body
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
    /// The answer as the error of `method` on the portal.
    pub fn into_error(self, member_id: &str, method: &str) -> BitrixError {
        BitrixError::Api {
            member_id: member_id.to_owned(),
            method: method.to_owned(),
            status: self.status,
            code: self.error_code(),
            description: self.error_description(),
        }
    }
}

/// The parts of a batch answer, with PHP's `[]`-for-empty-map quirk smoothed over.
#[derive(Debug, Clone, Default)]
pub struct BatchResult {
    pub result: serde_json::Map<String, Value>,
    pub errors: serde_json::Map<String, Value>,
}

impl BatchResult {
    /// The parameters of `batch` with up to 50 commands `(key, "method?query")`.
    pub fn params(commands: &[(String, String)]) -> Value {
        let cmd: serde_json::Map<String, Value> = commands
            .iter()
            .map(|(k, c)| (k.clone(), Value::String(c.clone())))
            .collect();
        json!({ "halt": 0, "cmd": cmd })
    }

    /// Reads the `result` of a `batch` call.
    pub fn read(r: &Value) -> BatchResult {
        BatchResult {
            result: as_map(&r["result"]),
            errors: as_map(&r["result_error"]),
        }
    }
}

fn as_map(v: &Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m.clone(),
        // PHP turns numeric-keyed maps into arrays; keep their indexes as keys.
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v.clone()))
            .collect(),
        _ => serde_json::Map::new(),
    }
}

impl BitrixClient {
    pub fn new(
        http: awc::Client,
        limiter: Arc<RateLimiter>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> BitrixClient {
        BitrixClient {
            http,
            limiter,
            clock,
            max_budget_wait: HANDLER_BUDGET_WAIT,
            metrics,
        }
    }

    /// The counters this client adds to (token refreshes are counted by their caller here too).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The same client, waiting at most `wait` for a portal's budget.
    pub fn with_max_budget_wait(mut self, wait: Duration) -> BitrixClient {
        self.max_budget_wait = wait;
        self
    }

    /// Takes one request from the portal's shared budget, sleeping for it up to the client's
    /// bound; a longer wait is [`BitrixError::Throttled`].
    async fn take_budget(&self, member_id: &str, method: &str) -> Result<(), BitrixError> {
        let mut waited = Duration::ZERO;
        loop {
            let wait = self.limiter.try_take(member_id).await?;
            if wait.is_zero() {
                return Ok(());
            }
            if waited.is_zero() {
                // Once per request, however many times it sleeps.
                self.metrics.limit_wait(Limit::BitrixBudget);
            }
            if waited + wait > self.max_budget_wait {
                return Err(BitrixError::Throttled {
                    member_id: member_id.to_owned(),
                    method: method.to_owned(),
                    wait,
                });
            }
            waited += wait;
            tokio::time::sleep(wait).await;
        }
    }

    /// One request, after the portal's rate limit; any HTTP status is an answer.
    pub async fn send(
        &self,
        member_id: &str,
        endpoint: &str,
        token: &str,
        method: &str,
        params: &Value,
    ) -> Result<Answer, BitrixError> {
        let mut body = params.clone();
        if let Value::Object(m) = &mut body {
            m.insert("auth".into(), Value::String(token.to_owned()));
        } else {
            body = json!({ "auth": token });
        }
        self.take_budget(member_id, method).await?;
        let url = format!("{endpoint}{method}");
        let transport = |detail: String| BitrixError::Transport {
            member_id: member_id.to_owned(),
            method: method.to_owned(),
            detail,
        };
        let mut resp = self
            .http
            .post(&url)
            .timeout(BITRIX_TIMEOUT)
            .send_json(&body)
            .await
            .map_err(|e| {
                self.metrics.rest_call(method, None);
                transport(e.to_string())
            })?;
        let status = resp.status().as_u16();
        self.metrics.rest_call(method, Some(status));
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp
            .body()
            .limit(16 << 20)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if body.is_null() && (200..300).contains(&status) {
            return Err(transport(format!(
                "HTTP {status} with a body that is not JSON"
            )));
        }
        Ok(Answer {
            status,
            body,
            location,
        })
    }

    /// How long to wait before repeating a call that Bitrix24 refused for its limits, counting
    /// the repeats in `limit_retries`; `None` when the answer is not a limit or the repeats are
    /// used up. `QUERY_LIMIT_EXCEEDED` backs off exponentially; `OPERATION_TIME_LIMIT` waits
    /// for the reset the answer names.
    pub fn limit_wait(
        &self,
        member_id: &str,
        method: &str,
        ans: &Answer,
        limit_retries: &mut u32,
    ) -> Option<Duration> {
        let code = ans.error_code();
        match ans.status {
            503 if code == "QUERY_LIMIT_EXCEEDED" && *limit_retries < MAX_LIMIT_RETRIES => {
                *limit_retries += 1;
                let wait = Duration::from_millis(500 * (1 << (*limit_retries).min(5)));
                tracing::warn!(
                    portal = member_id,
                    method,
                    retry = *limit_retries,
                    wait_ms = wait.as_millis() as u64,
                    "Bitrix24 QUERY_LIMIT_EXCEEDED; backing off"
                );
                Some(wait)
            }
            429 if code == "OPERATION_TIME_LIMIT" && *limit_retries < 2 => {
                *limit_retries += 1;
                let reset = ans.body["time"]["operating_reset_at"]
                    .as_f64()
                    .map(|t| t - self.clock.now_utc().timestamp() as f64);
                let wait = Duration::from_secs_f64(reset.unwrap_or(10.0).clamp(1.0, 60.0));
                tracing::warn!(
                    portal = member_id,
                    method,
                    wait_s = wait.as_secs(),
                    "Bitrix24 OPERATION_TIME_LIMIT; waiting for the reset"
                );
                Some(wait)
            }
            _ => None,
        }
    }

    /// Calls a method with a given user token (the installer's AUTH_ID) on a verified endpoint,
    /// without stored tokens and without refresh.
    pub async fn call_with_token(
        &self,
        member_id: &str,
        endpoint: &str,
        token: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, BitrixError> {
        let mut limit_retries = 0;
        loop {
            let mut ans = self
                .send(member_id, endpoint, token, method, &params)
                .await?;
            match ans.status {
                200..=299 => {
                    return Ok(ans
                        .body
                        .get_mut("result")
                        .map(Value::take)
                        .unwrap_or(Value::Null))
                }
                503 if ans.error_code() == "QUERY_LIMIT_EXCEEDED"
                    && limit_retries < MAX_LIMIT_RETRIES =>
                {
                    limit_retries += 1;
                    tokio::time::sleep(Duration::from_millis(500 * (1 << limit_retries.min(5))))
                        .await;
                }
                _ => return Err(ans.into_error(member_id, method)),
            }
        }
    }
}
