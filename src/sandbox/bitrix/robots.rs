//! The robot and event-binding methods (`bizproc.robot.add/update`, `event.bind`) with the
//! validation Bitrix24 applies to their fields.

use serde_json::{Map, Value};

use super::php_form::*;
use super::*;

impl State {
    pub(super) fn require_admin(&self, member_id: &str, user_id: u64) -> Result<(), ApiErr> {
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

    pub(super) fn robot_add(
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

    pub(super) fn robot_update(
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

    pub(super) fn event_bind(
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

pub(super) fn validate_code(code: &str) -> Result<(), ApiErr> {
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
pub(super) fn validate_handler(handler: &str) -> Result<(), ApiErr> {
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

pub(super) fn validate_properties(v: &Value) -> Result<(), ApiErr> {
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

pub(super) fn validate_robot_fields(f: &Map<String, Value>, adding: bool) -> Result<(), ApiErr> {
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

pub(super) fn not_found() -> ApiErr {
    api_err(400, "", "Not found")
}

pub(super) fn require_id(p: &Map<String, Value>) -> Result<u64, ApiErr> {
    get_ci(p, "id")
        .and_then(as_u64)
        .filter(|id| *id > 0)
        .ok_or_else(|| api_err(400, "", "ID is not defined or invalid."))
}
