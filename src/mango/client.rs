//! The outbound HTTP client for Mango's VPBX API: one POST per call, never retried here.
//!
//! Retrying is the job queue's decision, made from [`MangoError::retryable`]; this module only
//! reports precisely whether a failed request may have reached Mango.

use std::time::Duration;

use awc::error::SendRequestError;
use awc::http::header;
use serde_json::Value;

use super::answer::{interpret, Answer, MangoError};
use super::sign::{form_body, Credentials};

/// Larger than any realistic `groups` or `incominglines` answer; bounds memory if a proxy
/// misbehaves.
const MAX_BODY: usize = 2 * 1024 * 1024;

/// The `callback_group` command: ring a group, and when an operator answers, dial `to`.
///
/// All fields are strings on the wire, so a group number like `"002"` keeps its zeros (the
/// PHP script this app replaces sent octal literals, and Mango got `2`). Field order is the serialisation order.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallbackGroup {
    /// Our correlation id (≤128 bytes), echoed in `/result/callback_group` and `/events/call`.
    /// Not an idempotency key: Mango does not deduplicate on it.
    pub command_id: String,
    /// The group's short number (`extension` from `/groups`), rung first.
    pub from: String,
    /// The client's number, digits only, E.164 without '+' (see [`crate::phone`]).
    pub to: String,
    /// The PBX line to call out on (`number`, or the name for SIP lines, from `/incominglines`).
    pub line_number: String,
}

/// Mango took the command. The call outcome arrives later at `/result/callback_group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Mango's `X-Uuid` response header, which their support asks for.
    pub x_uuid: Option<String>,
}

/// A Mango group, for the settings UI's group picker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Group {
    pub id: Option<u64>,
    pub name: String,
    /// The group's short number, used as [`CallbackGroup::from`]. Empty if Mango gave none.
    pub extension: String,
}

/// A PBX line, for the settings UI's `line_number` picker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Line {
    pub number: String,
    pub name: String,
    /// `sip-uac`, `sip`, `toll-free`, … For SIP lines `line_number` must be the line's name.
    pub region: Option<String>,
}

/// Client for one Mango installation (base URL); credentials are per call because each
/// Bitrix24 portal has its own PBX.
///
/// `awc::Client` is `!Send`, so the caller builds one per worker thread and passes it in. It must
/// be built with redirects disabled (see [`crate::context::http_client`]): following a 307/308 would re-POST a
/// call order to wherever the redirect points, and a 301/302 would silently turn it into a GET.
pub struct MangoClient {
    http: awc::Client,
    /// Always ends with '/', so endpoint paths are appended.
    base_url: String,
    /// Whole-exchange limit: connect, send, and reading the answer.
    timeout: Duration,
}

impl MangoClient {
    /// `base_url` is normally `https://app.mango-office.ru/vpbx/`; a missing trailing '/' is added.
    pub fn new(http: awc::Client, base_url: &str, timeout: Duration) -> Self {
        let mut base_url = base_url.to_owned();
        if !base_url.ends_with('/') {
            base_url.push('/');
        }
        Self {
            http,
            base_url,
            timeout,
        }
    }

    /// Orders a `callback_group` call. The JSON is serialised once and those exact bytes are
    /// both signed and sent.
    #[tracing::instrument(skip_all, fields(mango.command_id = %cmd.command_id, mango.x_uuid))]
    pub async fn callback_group(
        &self,
        creds: &Credentials,
        cmd: &CallbackGroup,
    ) -> Result<Accepted, MangoError> {
        let json = serde_json::to_string(cmd)
            .map_err(|e| MangoError::Protocol(format!("cannot serialise the command: {e}")))?;
        let answer = self.post("commands/callback_group", creds, &json).await?;
        Ok(Accepted {
            x_uuid: answer.x_uuid,
        })
    }

    /// Lists the PBX's groups (`POST groups`, json `{}`).
    #[tracing::instrument(skip_all, fields(mango.x_uuid))]
    pub async fn groups(&self, creds: &Credentials) -> Result<Vec<Group>, MangoError> {
        let answer = self.post("groups", creds, "{}").await?;
        list(&answer, "groups", |v| Group {
            id: u64_field(v, "id"),
            name: string_field(v, "name").unwrap_or_default(),
            extension: string_field(v, "extension").unwrap_or_default(),
        })
    }

    /// Lists the PBX's lines (`POST incominglines`, json `{}`).
    #[tracing::instrument(skip_all, fields(mango.x_uuid))]
    pub async fn incoming_lines(&self, creds: &Credentials) -> Result<Vec<Line>, MangoError> {
        let answer = self.post("incominglines", creds, "{}").await?;
        list(&answer, "lines", |v| Line {
            number: string_field(v, "number").unwrap_or_default(),
            name: string_field(v, "name").unwrap_or_default(),
            region: string_field(v, "region"),
        })
    }

    async fn post(
        &self,
        path: &str,
        creds: &Credentials,
        json: &str,
    ) -> Result<Answer, MangoError> {
        let url = format!("{}{}", self.base_url, path);
        let body = form_body(creds, json);
        let exchange = async {
            let mut res = self
                .http
                .post(url.as_str())
                .timeout(self.timeout)
                .insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"))
                .insert_header((header::ACCEPT, "application/json"))
                .send_body(body)
                .await
                .map_err(send_error)?;
            let status = res.status().as_u16();
            let x_uuid = res
                .headers()
                .get("x-uuid")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = res.body().limit(MAX_BODY).await.map_err(|e| {
                // The status line arrived, so Mango had the request.
                MangoError::Unavailable {
                    detail: format!("HTTP {status}, reading the body failed: {e}"),
                    maybe_accepted: true,
                }
            })?;
            Ok::<_, MangoError>((status, bytes, x_uuid))
        };
        // awc's own timeout covers sending; this one also bounds reading the body.
        let (status, bytes, x_uuid) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| MangoError::Unavailable {
                detail: format!("no complete answer within {:?}", self.timeout),
                maybe_accepted: true,
            })??;

        if let Some(id) = &x_uuid {
            tracing::Span::current().record("mango.x_uuid", id.as_str());
        }
        let result = interpret(status, &bytes, x_uuid.clone());
        match &result {
            Ok(_) => tracing::debug!(path, status, x_uuid = ?x_uuid, "Mango accepted"),
            Err(e) => {
                tracing::warn!(path, status, x_uuid = ?x_uuid, error.message = %e, "Mango did not accept")
            }
        }
        result
    }
}

/// Classifies a transport failure by whether the request may have reached Mango.
///
/// `false` only where no request byte can have been processed: the URL or request could not be
/// built, or the connection (TCP, DNS, TLS handshake) was never established — awc writes the
/// request only on an established connection. Everything after that is `true`: a send error may
/// be a reset after Mango read the request, and a timeout may fire while Mango is already
/// ringing. A stale pooled connection can therefore cost us a safe retry; we accept that, since a
/// double call cannot be undone.
fn send_error(e: SendRequestError) -> MangoError {
    let maybe_accepted = !matches!(
        e,
        SendRequestError::Url(_)
            | SendRequestError::Connect(_)
            | SendRequestError::Http(_)
            | SendRequestError::TunnelNotSupported
    );
    MangoError::Unavailable {
        detail: e.to_string(),
        maybe_accepted,
    }
}

/// Maps the array under `key` of a successful answer. A missing key is an empty list (Mango may
/// omit it when there is nothing); a key that is not an array is a protocol error.
fn list<T>(answer: &Answer, key: &str, item: impl Fn(&Value) -> T) -> Result<Vec<T>, MangoError> {
    match answer.body.as_ref().and_then(|b| b.get(key)) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items.iter().filter(|v| v.is_object()).map(item).collect()),
        Some(_) => Err(MangoError::Protocol(format!("`{key}` is not an array"))),
    }
}

/// A string field that Mango sometimes types as a number (`extension`, `number`).
fn string_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A numeric id that may arrive as a string.
fn u64_field(v: &Value, key: &str) -> Option<u64> {
    crate::json::int(v.get(key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_group_serializes_compact_in_field_order_with_string_numbers() {
        let cmd = CallbackGroup {
            command_id: "cbk1".into(),
            from: "1234".into(),
            to: "74955404444".into(),
            line_number: "74951234567".into(),
        };
        assert_eq!(
            serde_json::to_string(&cmd).expect("serialises"),
            r#"{"command_id":"cbk1","from":"1234","to":"74955404444","line_number":"74951234567"}"#
        );
        let zeros = CallbackGroup {
            from: "002".into(),
            ..cmd
        };
        assert!(serde_json::to_string(&zeros)
            .expect("serialises")
            .contains(r#""from":"002""#));
    }

    #[test]
    fn groups_are_read_leniently() {
        let answer = interpret(
            200,
            r#"{"result":1000,"groups":[{"id":10051250,"name":"Стажёры","extension":"41","operators":[]},{"id":"7","name":null,"extension":42}]}"#
                .as_bytes(),
            None,
        )
        .expect("success");
        let groups = list(&answer, "groups", |v| Group {
            id: u64_field(v, "id"),
            name: string_field(v, "name").unwrap_or_default(),
            extension: string_field(v, "extension").unwrap_or_default(),
        })
        .expect("list");
        assert_eq!(
            groups,
            vec![
                Group {
                    id: Some(10_051_250),
                    name: "Стажёры".into(),
                    extension: "41".into()
                },
                Group {
                    id: Some(7),
                    name: String::new(),
                    extension: "42".into()
                },
            ]
        );
    }

    #[test]
    fn a_missing_list_is_empty_and_a_malformed_one_is_an_error() {
        let empty = interpret(200, br#"{"result":1000}"#, None).expect("success");
        assert!(list(&empty, "lines", |_| ()).expect("list").is_empty());
        let bad = interpret(200, br#"{"result":1000,"lines":"x"}"#, None).expect("success");
        assert!(matches!(
            list(&bad, "lines", |_| ()),
            Err(MangoError::Protocol(_))
        ));
    }

    #[test]
    fn a_base_url_without_a_trailing_slash_gets_one() {
        let client = MangoClient::new(
            awc::Client::default(),
            "http://127.0.0.1:1/vpbx",
            Duration::from_secs(1),
        );
        assert_eq!(client.base_url, "http://127.0.0.1:1/vpbx/");
    }
}
