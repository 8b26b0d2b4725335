//! Bitrix24 → app traffic: robot calls and events built as Bitrix24 sends them (PHP-style
//! forms with the `auth[...]` block), event tokens, and the asynchronous delivery of queued events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::header;
use hmac::{Hmac, Mac};
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::Sha256;

use super::php_form::*;
use super::*;

impl State {
    pub(super) fn issue_event_token(&mut self, member_id: &str, workflow_id: &str) -> String {
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
    pub(super) fn auth_pairs(
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
    pub(super) fn queue_event(
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
}

pub(super) async fn post_form(url: &str, body: String) -> Result<(u16, String), String> {
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
pub(super) fn deliver_later(state: Arc<Mutex<State>>, outbox: Vec<Outgoing>) {
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

impl BitrixSim {
    /// The robot call Bitrix24 would POST for robot `code` on deal `deal_id`:
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
}
