//! The simulated OAuth server: token chains (issue, check, refresh grant) and `app.info`.

use serde_json::{json, Map, Value};

use super::php_form::*;
use super::*;

impl State {
    pub(super) fn issue_chain(&mut self, member_id: &str, user_id: u64) -> UserAuth {
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

    pub(super) fn check_token(&self, token: &str) -> TokenCheck {
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

    pub(super) fn oauth_token(&mut self, p: &Map<String, Value>) -> (Option<String>, Reply) {
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

    pub(super) fn oauth_app_info(&mut self, auth: Option<&str>) -> (Option<String>, Reply) {
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
}
