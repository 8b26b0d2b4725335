//! Reading Mango's synchronous answer: one pure function over (HTTP status, body).
//!
//! Kept free of I/O so every status/body combination the documentation and client libraries
//! describe can be unit-tested without a server. The two PDFs disagree (2017: HTTP 420 with
//! `{"code":3104}`; current: 4xx/5xx with a code; commands: 200 with `{"result":1000}`), so we
//! read `result` or `code`, as an integer or a string, and treat a 2xx without either as 1000
//! (as the `mango-vpbx` library does).

use serde_json::Value;

use super::codes::describe_code;

/// Why a Mango request did not succeed, classified by what the caller may safely do next.
///
/// The deciding fact is that Mango does **not** deduplicate `command_id`: a request that might
/// have been accepted must never be repeated automatically, or the client is rung twice.
#[derive(Debug, thiserror::Error)]
pub enum MangoError {
    /// Mango answered with a result code other than 1000 (2xxx billing, 3xxx bad request,
    /// 4xxx not possible, 5xxx application error). Never retried automatically: repeated 3xxx
    /// answers lock the API for two minutes.
    #[error("Mango rejected the request with code {code}: {message}")]
    Rejected {
        code: u32,
        message: String,
        /// Mango's `X-Uuid` response header, which their support asks for.
        x_uuid: Option<String>,
    },
    /// HTTP 401 without a readable code: the key is wrong, or the API is locked for two
    /// minutes after repeated bad requests. Retrying would only extend the lock.
    #[error("Mango refused access (HTTP 401): bad key, or the API is locked for 2 minutes after repeated bad requests")]
    Locked,
    /// HTTP 429 (or code 4290): the request was not accepted; safe to retry after a pause.
    #[error("Mango rate limit exceeded (HTTP 429)")]
    RateLimited,
    /// Transport failure, timeout or HTTP 5xx. `maybe_accepted` tells whether Mango may have
    /// acted on the request; only `false` makes a retry safe.
    #[error("Mango unavailable: {detail}")]
    Unavailable {
        detail: String,
        maybe_accepted: bool,
    },
    /// The answer could not be understood (not JSON, unexpected status, redirect).
    #[error("unexpected answer from Mango: {0}")]
    Protocol(String),
}

impl MangoError {
    /// Whether repeating the same request later cannot cause a second call.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            MangoError::RateLimited
                | MangoError::Unavailable {
                    maybe_accepted: false,
                    ..
                }
        )
    }

    /// The Mango result code, when there is one. A rate limit reports 4290, the code Mango's
    /// own table assigns to HTTP 429.
    pub fn code(&self) -> Option<u32> {
        match self {
            MangoError::Rejected { code, .. } => Some(*code),
            MangoError::RateLimited => Some(4290),
            _ => None,
        }
    }
}

/// A successful (result 1000) answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The parsed JSON body; `None` when the body was empty.
    pub body: Option<Value>,
    /// Mango's `X-Uuid` response header.
    pub x_uuid: Option<String>,
}

/// Classifies one HTTP answer from Mango.
pub fn interpret(status: u16, body: &[u8], x_uuid: Option<String>) -> Result<Answer, MangoError> {
    let blank = body.iter().all(u8::is_ascii_whitespace);
    let json: Option<Value> = if blank {
        None
    } else {
        serde_json::from_slice(body).ok()
    };
    let unreadable = !blank && json.is_none();
    let code = json.as_ref().and_then(result_code);
    let rejected = |code: u32| MangoError::Rejected {
        code,
        message: json
            .as_ref()
            .and_then(|v| v.get("message"))
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .map_or_else(|| describe_code(code).1.to_owned(), str::to_owned),
        x_uuid: x_uuid.clone(),
    };

    match status {
        // The 429 body carries `"code":0`, so the status decides before any code does.
        429 => Err(MangoError::RateLimited),
        _ if code == Some(4290) => Err(MangoError::RateLimited),
        200..=299 => {
            if unreadable {
                // A 2xx whose body is not JSON is more likely a captive portal or proxy page
                // than Mango; we cannot tell whether the command was taken, and Protocol is
                // never retried, so that is the safe reading.
                return Err(MangoError::Protocol(format!(
                    "HTTP {status} with a body that is not JSON: {}",
                    snippet(body)
                )));
            }
            if json.as_ref().is_some_and(|v| !v.is_object()) {
                return Err(MangoError::Protocol(format!(
                    "HTTP {status} with a JSON body that is not an object: {}",
                    snippet(body)
                )));
            }
            match code {
                None | Some(1000) => Ok(Answer { body: json, x_uuid }),
                Some(code) => Err(rejected(code)),
            }
        }
        401 => match code {
            Some(code) => Err(rejected(code)),
            None => Err(MangoError::Locked),
        },
        300..=399 => Err(MangoError::Protocol(format!(
            "HTTP {status}: redirects are not followed (check the base URL)"
        ))),
        // 420 "Method Failure" (Doc-2017) falls in here with the other 4xx.
        400..=499 => match code {
            Some(code) => Err(rejected(code)),
            None => Err(MangoError::Protocol(format!(
                "HTTP {status} without a result code: {}",
                snippet(body)
            ))),
        },
        500..=599 => Err(MangoError::Unavailable {
            detail: match code {
                Some(code) => format!("HTTP {status}, code {code}"),
                None => format!("HTTP {status}"),
            },
            maybe_accepted: server_error_maybe_accepted(status),
        }),
        _ => Err(MangoError::Protocol(format!(
            "unexpected HTTP status {status}"
        ))),
    }
}

/// Whether a 5xx answer leaves open that Mango acted on the request.
///
/// Only 503 says "not processed": per RFC 9110 it means the server is currently unable to handle
/// the request, and it is what overload shedding, maintenance pages and proxy rate limiting
/// (nginx `limit_req`) send before anything reaches the application. The others stay `true`:
/// - 500: the application ran and failed somewhere, perhaps after ordering the call;
/// - 502: a proxy sends it both when the upstream refused the connection (not reached) and when
///   the upstream closed mid-answer (reached, maybe processed) — indistinguishable from here;
/// - 504: the upstream had the request and did not answer in time, so it may well be ringing.
///
/// A lost callback is reported to the deal and can be re-ordered by a person; a double call
/// to a client cannot be taken back.
fn server_error_maybe_accepted(status: u16) -> bool {
    status != 503
}

/// `result`, else `code`; integer or numeric string. Zero means "no code" (the 429 body's
/// `"code":0` is an HTTP-level field, not a Mango result).
fn result_code(body: &Value) -> Option<u32> {
    ["result", "code"]
        .iter()
        .filter_map(|key| body.get(*key))
        .filter_map(crate::json::int::<u32>)
        .find(|code| *code != 0)
}

/// The start of a body, for error messages: bounded, and lossy for non-UTF-8 bytes.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid() -> Option<String> {
        Some("a1b2".to_owned())
    }

    #[test]
    fn http_200_with_result_1000_is_success_and_keeps_the_uuid() {
        let answer = interpret(200, br#"{"result":1000}"#, uuid()).expect("success");
        assert_eq!(answer.x_uuid.as_deref(), Some("a1b2"));
        assert_eq!(answer.body, Some(serde_json::json!({"result": 1000})));
    }

    #[test]
    fn http_200_with_result_as_a_string_is_success() {
        assert!(interpret(200, br#"{"result":"1000"}"#, None).is_ok());
    }

    #[test]
    fn a_2xx_without_result_or_with_an_empty_body_is_success() {
        assert!(interpret(200, b"", None).is_ok());
        assert!(interpret(204, b"  \n", None).is_ok());
        assert!(interpret(200, br#"{"groups":[]}"#, None).is_ok());
    }

    #[test]
    fn http_200_with_a_non_1000_result_is_rejected() {
        let err = interpret(200, br#"{"result":2240}"#, uuid()).expect_err("rejected");
        assert!(matches!(
            err,
            MangoError::Rejected { code: 2240, ref x_uuid, .. } if x_uuid.as_deref() == Some("a1b2")
        ));
        assert!(!err.retryable());
    }

    #[test]
    fn http_400_with_result_3102_is_rejected_and_not_retryable() {
        let err = interpret(400, br#"{"result":3102}"#, None).expect_err("rejected");
        assert_eq!(err.code(), Some(3102));
        assert!(!err.retryable());
        assert!(err.to_string().contains("Signature mismatch"), "{err}");
    }

    #[test]
    fn http_420_with_a_string_code_is_rejected() {
        let err = interpret(420, br#"{"code":"3104"}"#, None).expect_err("rejected");
        assert_eq!(err.code(), Some(3104));
        assert!(matches!(err, MangoError::Rejected { .. }));
    }

    #[test]
    fn a_message_in_the_body_is_preferred_to_our_description() {
        let err = interpret(400, br#"{"code":3100,"message":"Bad line_number"}"#, None)
            .expect_err("rejected");
        assert!(
            matches!(err, MangoError::Rejected { ref message, .. } if message == "Bad line_number")
        );
    }

    #[test]
    fn http_401_with_an_empty_body_is_locked() {
        let err = interpret(401, b"", None).expect_err("locked");
        assert!(matches!(err, MangoError::Locked));
        assert!(!err.retryable());
        assert_eq!(err.code(), None);
    }

    #[test]
    fn http_401_with_a_code_is_rejected_with_that_code() {
        let err = interpret(401, br#"{"result":3105}"#, None).expect_err("rejected");
        assert_eq!(err.code(), Some(3105));
    }

    #[test]
    fn http_429_is_rate_limited_and_retryable_despite_its_code_zero() {
        let body = br#"{"name":"Service Unavailable","message":"Rate limit exceeded.","code":0,"status":429}"#;
        let err = interpret(429, body, None).expect_err("rate limited");
        assert!(matches!(err, MangoError::RateLimited));
        assert!(err.retryable());
        assert!(matches!(
            interpret(400, br#"{"code":4290}"#, None),
            Err(MangoError::RateLimited)
        ));
    }

    #[test]
    fn http_500_is_unavailable_and_maybe_accepted() {
        let err = interpret(500, b"<html>oops</html>", None).expect_err("unavailable");
        assert!(matches!(
            err,
            MangoError::Unavailable {
                maybe_accepted: true,
                ..
            }
        ));
        assert!(!err.retryable());
    }

    #[test]
    fn only_http_503_among_server_errors_is_safe_to_retry() {
        for (status, retryable) in [(500, false), (502, false), (503, true), (504, false)] {
            let err = interpret(status, b"", None).expect_err("unavailable");
            assert_eq!(err.retryable(), retryable, "HTTP {status}");
        }
    }

    #[test]
    fn a_2xx_body_that_is_not_json_is_a_protocol_error() {
        let err = interpret(200, b"<html>captive portal</html>", None).expect_err("protocol");
        assert!(matches!(err, MangoError::Protocol(_)));
        assert!(!err.retryable());
    }

    #[test]
    fn a_redirect_is_a_protocol_error_not_followed() {
        assert!(matches!(
            interpret(302, b"", None),
            Err(MangoError::Protocol(_))
        ));
    }

    #[test]
    fn a_4xx_without_a_code_is_a_protocol_error() {
        assert!(matches!(
            interpret(404, b"Not Found", None),
            Err(MangoError::Protocol(_))
        ));
    }
}
