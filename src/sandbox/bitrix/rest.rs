//! A portal's REST API: the endpoint (tokens, scope, leaky bucket, renamed portals), `batch`
//! with its `$result[...]` substitution, and the CRM, user and event methods.

use std::time::Instant;

use serde_json::{json, Map, Value};

use super::php_form::*;
use super::robots::*;
use super::*;

impl State {
    /// A 302 from a portal's endpoint to a base URL that is not the portal's (no app.info change).
    pub(super) fn forced_redirect(
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

    pub(super) fn portal_rest(
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
        let p = self.portal_mut(&member_id);
        let fault = p.faults.pop_front().or_else(|| {
            p.method_faults
                .get_mut(method)
                .and_then(VecDeque::pop_front)
        });
        if let Some(f) = fault {
            return (mid, self.error_reply(&fault_error(f)));
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
        if result.is_ok() {
            let lost = self.portal_mut(&member_id).lost_answers.get_mut(method);
            if let Some(n) = lost.filter(|n| **n > 0) {
                *n -= 1;
                self.lose_this_answer = true;
            }
        }
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

    pub(super) fn batch(
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
                // A fault set for the method (`fail_method_next`) fails this command only, as a
                // real portal reports one command's error in `result_error`.
                let fault = self
                    .portal_mut(member_id)
                    .method_faults
                    .get_mut(&method)
                    .and_then(VecDeque::pop_front);
                match (fault, parse_php(query)) {
                    (Some(f), _) => Err(fault_error(f)),
                    (None, Ok(mut p)) => {
                        p.remove("auth");
                        let p = match substitute_value(Value::Object(p), &done) {
                            Value::Object(m) => m,
                            _ => Map::new(),
                        };
                        let done = self.call_method(member_id, user_id, &method, &p);
                        // A lost answer of a method (`lose_answers`) loses the whole batch's.
                        if done.is_ok() {
                            let lost = self.portal_mut(member_id).lost_answers.get_mut(&method);
                            if let Some(n) = lost.filter(|n| **n > 0) {
                                *n -= 1;
                                self.lose_this_answer = true;
                            }
                        }
                        done
                    }
                    (None, Err(e)) => Err(e),
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

    pub(super) fn call_method(
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
            "crm.timeline.comment.list" => {
                // Bitrix24 requires the owner in the filter; newest first with `order: {ID: DESC}`,
                // pages of 50 like every list method.
                let filter = match get_ci(p, "filter") {
                    Some(Value::Object(f)) => f,
                    _ => return Err(api_err(400, "ERROR_ARGUMENT", "ENTITY_ID is required")),
                };
                let entity_id = get_ci(filter, "ENTITY_ID").and_then(as_u64);
                let entity_type = get_ci(filter, "ENTITY_TYPE").and_then(scalar_string);
                let (Some(entity_id), Some(entity_type)) = (entity_id, entity_type) else {
                    return Err(api_err(
                        400,
                        "ERROR_ARGUMENT",
                        "ENTITY_ID and ENTITY_TYPE are required",
                    ));
                };
                let descending = get_ci(p, "order")
                    .and_then(|o| o.as_object())
                    .and_then(|o| get_ci(o, "ID"))
                    .and_then(scalar_string)
                    .is_some_and(|d| d.eq_ignore_ascii_case("desc"));
                let start = get_ci(p, "start").and_then(as_u64).unwrap_or(0) as usize;
                let portal = self.portal(member_id);
                let mut items: Vec<&(u64, u64, String)> =
                    if entity_type.eq_ignore_ascii_case("deal") {
                        portal
                            .comments
                            .iter()
                            .filter(|c| c.1 == entity_id)
                            .collect()
                    } else {
                        Vec::new()
                    };
                if descending {
                    items.reverse();
                }
                let page: Vec<Value> = items
                    .iter()
                    .skip(start)
                    .take(50)
                    .map(|(id, deal, text)| {
                        json!({"ID": id.to_string(), "ENTITY_ID": deal.to_string(), "ENTITY_TYPE": "deal",
                               "AUTHOR_ID": "1", "COMMENT": text})
                    })
                    .collect();
                Ok(Value::Array(page))
            }
            "bizproc.event.send" => {
                let token = get_ci(p, "EVENT_TOKEN")
                    .and_then(scalar_string)
                    .unwrap_or_default();
                if self.event_tokens.get(&token).map(String::as_str) != Some(member_id) {
                    return Err(api_err(403, "ACCESS_DENIED", "Access denied!"));
                }
                // As on a real portal, only return values the robot declared in its
                // RETURN_PROPERTIES reach the business process; the rest are dropped.
                let portal = self.portal_mut(member_id);
                let declared: Vec<String> = portal
                    .robots
                    .iter()
                    .filter_map(|r| r.fields.get("RETURN_PROPERTIES")?.as_object())
                    .flat_map(|m| m.keys().cloned())
                    .collect();
                let mut send = p.clone();
                if let Some(Value::Object(values)) = get_ci(p, "RETURN_VALUES") {
                    let kept: serde_json::Map<String, Value> = values
                        .iter()
                        .filter(|(k, _)| declared.iter().any(|d| d.eq_ignore_ascii_case(k)))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    send.insert("RETURN_VALUES".into(), Value::Object(kept));
                }
                portal.event_sends.push(Value::Object(send));
                Ok(Value::Bool(true))
            }
            _ => Err(api_err(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")),
        }
    }
}

/// The answer of an injected fault.
fn fault_error(f: Fault) -> ApiErr {
    match f {
        Fault::QueryLimit => api_err(503, "QUERY_LIMIT_EXCEEDED", "Too many requests"),
        Fault::Internal => api_err(500, "INTERNAL_SERVER_ERROR", "Internal server error"),
        Fault::OperationTimeLimit => api_err(
            429,
            "OPERATION_TIME_LIMIT",
            "Method is blocked due to operation time limit.",
        ),
    }
}
