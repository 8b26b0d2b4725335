//! The simulator's HTTP front: each request is routed to the OAuth server or a portal's REST
//! API, recorded, and answered with Bitrix24's JSON shapes; queued events go out afterwards.

use std::sync::Mutex;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::events::deliver_later;
use super::php_form::*;
use super::*;

impl State {
    pub(super) fn dispatch(&mut self, path: &str, query: &str, ctype: &str, body: &[u8]) -> Reply {
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

    pub(super) fn record(
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

    pub(super) fn error_reply(&mut self, e: &ApiErr) -> Reply {
        self.count_rejection(&e.code);
        Reply {
            status: e.status,
            body: json!({"error": e.code, "error_description": e.desc}),
            location: None,
        }
    }
}

pub(super) async fn handle(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    // Injected faults hit the portals' REST API only: the OAuth server's refresh is item 2's
    // own tests (a lost refresh answer loses the portal by design of Bitrix24).
    let (latency, fault, hang) = {
        let mut st = lock(&state);
        let fault = if req.path().starts_with("/p/") {
            st.injector.draw()
        } else {
            None
        };
        (st.latency, fault, st.injector.hang())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = fault {
        if let Some(answer) = crate::sandbox::faults::unprocessed_answer(fault, hang).await {
            return answer;
        }
    }
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (reply, outbox, hold_back, lost) = {
        let mut st = lock(&state);
        let reply = st.dispatch(req.path(), req.query_string(), &ctype, &body);
        let lost = std::mem::take(&mut st.lose_this_answer);
        // Only a refresh grant's answer is held back, and only after dispatch consumed the token.
        let hold_back = if req.path().starts_with("/oauth/token") {
            st.refresh_answer_delay
        } else {
            Duration::ZERO
        };
        (reply, std::mem::take(&mut st.outbox), hold_back, lost)
    };
    if !hold_back.is_zero() {
        tokio::time::sleep(hold_back).await;
    }
    deliver_later(state.into_inner(), outbox);
    if lost {
        return crate::sandbox::faults::dropped();
    }
    if fault.is_some_and(|f| f.processed()) {
        tokio::time::sleep(hang).await;
    }
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
