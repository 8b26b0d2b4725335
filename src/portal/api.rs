//! Calling a portal with its stored tokens: the access token read from the store,
//! refresh-and-retry-once on an expired token (single-flight across threads and instances), and
//! a renamed portal's 302 followed once by hand, to a public https endpoint that `app.info`
//! confirms. The wire itself is [`BitrixClient`].

use std::sync::Arc;

use serde_json::{json, Value};

use super::store;
use crate::bitrix::address;
use crate::bitrix::client::{BatchResult, BitrixClient};
use crate::bitrix::limiter::RefreshGates;
use crate::bitrix::oauth::{self, VerifiedAuth, VerifyError};
use crate::bitrix::BitrixError;
use crate::clock::Clock;
use crate::config::Settings;
use crate::context::Context;
use crate::crypto::Cipher;
use crate::db::Db;

/// What calling portals needs: the store, the cipher of the tokens, the OAuth settings.
pub struct PortalApi {
    pub(super) rest: BitrixClient,
    pub(super) http: awc::Client,
    pub(super) settings: Arc<Settings>,
    pub(super) db: Db,
    pub(super) cipher: Cipher,
    pub(super) clock: Clock,
    pub(super) refresh_gates: Arc<RefreshGates>,
    /// Names this process in refresh leases.
    pub(super) instance_id: String,
}

/// A portal's credentials as read for one call.
struct Auth {
    endpoint: String,
    access_token: String,
    version: i64,
}

impl Context {
    /// Bitrix24 REST of a portal, with its stored tokens. Built per use from the thread's
    /// transport and the shared state (a few reference-count bumps), so that `context.rs`, which
    /// portal jobs use, does not need to know this type.
    pub fn bitrix(&self) -> PortalApi {
        let s = &self.shared;
        PortalApi::new(
            self.rest.clone(),
            self.http.clone(),
            s.settings.clone(),
            s.db.clone(),
            s.cipher.clone(),
            s.clock.clone(),
            s.refresh_gates.clone(),
            s.instance_id.clone(),
        )
    }
}

impl PortalApi {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rest: BitrixClient,
        http: awc::Client,
        settings: Arc<Settings>,
        db: Db,
        cipher: Cipher,
        clock: Clock,
        refresh_gates: Arc<RefreshGates>,
        instance_id: String,
    ) -> PortalApi {
        PortalApi {
            rest,
            http,
            settings,
            db,
            cipher,
            clock,
            refresh_gates,
            instance_id,
        }
    }

    /// The transport, for calls made with a token that is not stored (the installer's).
    pub fn rest(&self) -> &BitrixClient {
        &self.rest
    }

    async fn load_auth(&self, member_id: &str) -> Result<Auth, BitrixError> {
        let id = member_id.to_owned();
        let portal = self.db.read(move |c| store::find(c, &id)).await?;
        let Some(p) = portal.filter(|p| p.is_active()) else {
            return Err(BitrixError::NotInstalled(member_id.to_owned()));
        };
        if p.needs_reauth {
            return Err(BitrixError::NeedsReauth {
                member_id: member_id.to_owned(),
                detail: p
                    .refresh_problem
                    .unwrap_or_else(|| "the refresh token was refused".into()),
            });
        }
        let access_token = p
            .access_token
            .as_deref()
            .and_then(|t| {
                self.cipher
                    .open(crate::crypto::Slot::access_token(member_id), t)
                    .ok()
            })
            .ok_or_else(|| BitrixError::NeedsReauth {
                member_id: member_id.to_owned(),
                detail: "no readable access token stored".into(),
            })?;
        Ok(Auth {
            endpoint: p.client_endpoint,
            access_token,
            version: p.token_version,
        })
    }

    /// Calls `method` on the portal with its stored tokens; returns the answer's `result`.
    pub async fn call(
        &self,
        member_id: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, BitrixError> {
        self.call_full(member_id, method, params)
            .await
            .map(|mut b| b.get_mut("result").map(Value::take).unwrap_or(Value::Null))
    }

    /// Like [`call`](Self::call) but returns the whole answer body (`result`, `time`, `total`…).
    pub async fn call_full(
        &self,
        member_id: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, BitrixError> {
        let mut refreshed = false;
        let mut redirected = false;
        let mut limit_retries = 0;
        loop {
            let auth = self.load_auth(member_id).await?;
            let ans = self
                .rest
                .send(
                    member_id,
                    &auth.endpoint,
                    &auth.access_token,
                    method,
                    &params,
                )
                .await?;
            let code = ans.error_code();
            match ans.status {
                200..=299 => return Ok(ans.body),
                301 | 302 | 307 | 308 if !redirected => {
                    redirected = true;
                    self.follow_rename(member_id, method, ans.location.as_deref(), &auth)
                        .await?;
                }
                401 if !refreshed && (code == "expired_token" || code == "invalid_token") => {
                    refreshed = true;
                    self.refresh(member_id, auth.version).await?;
                }
                _ => match self
                    .rest
                    .limit_wait(member_id, method, &ans, &mut limit_retries)
                {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => return Err(ans.into_error(member_id, method)),
                },
            }
        }
    }

    /// `batch` with up to 50 commands `(key, "method?query")`.
    pub async fn batch(
        &self,
        member_id: &str,
        commands: &[(String, String)],
    ) -> Result<BatchResult, BitrixError> {
        let r = self
            .call(member_id, "batch", BatchResult::params(commands))
            .await?;
        Ok(BatchResult::read(&r))
    }

    /// A renamed portal answers on its old endpoint with a redirect to the new one. The new
    /// endpoint is stored only if it is a public https host ([`address::check_peer`]) and the
    /// OAuth server confirms it: `app.info` with the portal's own access token must name this
    /// portal and exactly this endpoint. A redirect is what the old host says; `app.info` on the
    /// configured OAuth server is what Bitrix24 says, so a hijacked or misconfigured old host
    /// cannot move the portal's tokens somewhere else. Refused: the old endpoint stays.
    async fn follow_rename(
        &self,
        member_id: &str,
        method: &str,
        location: Option<&str>,
        auth: &Auth,
    ) -> Result<(), BitrixError> {
        // Logged and kept in the job's error: no query string (it could echo a token), and short.
        let shown: String = location
            .unwrap_or("-")
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        let refuse = |detail: String| {
            tracing::warn!(portal = member_id, method, location = %shown, %detail, "redirect to a new portal endpoint refused; the stored endpoint is kept");
            BitrixError::RenameRefused {
                member_id: member_id.to_owned(),
                method: method.to_owned(),
                location: shown.clone(),
                detail,
            }
        };
        let location = location.ok_or_else(|| refuse("redirect without a Location".into()))?;
        let url = url::Url::parse(location)
            .map_err(|_| refuse("redirect to an unparseable Location".into()))?;
        let path = url.path();
        let idx = path
            .find("/rest/")
            .ok_or_else(|| refuse("redirect to a URL that is not a REST endpoint".into()))?;
        let endpoint = format!(
            "{}{}",
            &url[..url::Position::BeforePath],
            &path[..idx + "/rest/".len()]
        );
        address::check_peer(&url, self.settings.allow_private_peers)
            .await
            .map_err(refuse)?;
        let verified = self.confirm_installation(member_id, auth).await?;
        if verified.member_id != member_id {
            return Err(refuse(format!(
                "app.info names another portal ({})",
                verified.member_id
            )));
        }
        if !same_endpoint(&verified.client_endpoint, &endpoint) {
            return Err(refuse(format!(
                "app.info confirms {} as the portal's endpoint, not {endpoint}",
                verified.client_endpoint
            )));
        }
        let domain = url.host_str().unwrap_or_default().to_owned();
        tracing::warn!(portal = member_id, new_endpoint = %endpoint, "portal was renamed (confirmed by app.info); storing the new endpoint");
        let (id, now) = (member_id.to_owned(), self.clock.now());
        self.db
            .run(move |c| store::move_endpoint(c, &id, &domain, &endpoint, now))
            .await?;
        Ok(())
    }

    /// `app.info` on the configured OAuth server with the portal's access token, refreshing the
    /// token once if the server says it expired.
    async fn confirm_installation(
        &self,
        member_id: &str,
        auth: &Auth,
    ) -> Result<oauth::VerifiedAuth, BitrixError> {
        let s = &self.settings;
        let verify = |token: String| async move {
            oauth::verify_access_token(
                &self.http,
                &s.b24_oauth_url,
                &token,
                s.b24_client_id.as_deref(),
            )
            .await
        };
        let mut answer = verify(auth.access_token.clone()).await;
        if matches!(&answer, Err(VerifyError::Rejected(code)) if code == "expired_token") {
            self.refresh(member_id, auth.version).await?;
            let fresh = self.load_auth(member_id).await?;
            answer = verify(fresh.access_token).await;
        }
        answer.map_err(|e| match e {
            VerifyError::Unavailable(detail) => BitrixError::Transport {
                member_id: member_id.to_owned(),
                method: "app.info".into(),
                detail,
            },
            other => {
                tracing::warn!(portal = member_id, error = %other, "app.info did not confirm the portal's new endpoint; the stored endpoint is kept");
                BitrixError::RenameRefused {
                    member_id: member_id.to_owned(),
                    method: "app.info".into(),
                    location: String::new(),
                    detail: other.to_string(),
                }
            }
        })
    }
}

/// Asks the portal, with the user's own verified token, whether the user is an administrator.
pub async fn ask_is_admin(
    bitrix: &BitrixClient,
    verified: &VerifiedAuth,
    token: &str,
) -> Result<bool, BitrixError> {
    let answer = bitrix
        .call_with_token(
            &verified.member_id,
            &verified.client_endpoint,
            token,
            "user.admin",
            json!({}),
        )
        .await?;
    Ok(answer == Value::Bool(true))
}

/// Whether two REST endpoints are the same: scheme, host, port and path, a trailing slash aside.
fn same_endpoint(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        url::Url::parse(s).ok().map(|u| {
            (
                u.scheme().to_owned(),
                u.host_str().map(str::to_ascii_lowercase),
                u.port_or_known_default(),
                u.path().trim_end_matches('/').to_owned(),
            )
        })
    };
    matches!((norm(a), norm(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::same_endpoint;

    #[test]
    fn endpoints_compare_by_scheme_host_port_and_path() {
        assert!(same_endpoint(
            "https://new.bitrix24.ru/rest/",
            "https://NEW.bitrix24.ru:443/rest"
        ));
        assert!(!same_endpoint(
            "https://new.bitrix24.ru/rest/",
            "http://new.bitrix24.ru/rest/"
        ));
        assert!(!same_endpoint(
            "https://new.bitrix24.ru/rest/",
            "https://evil.example/rest/"
        ));
        assert!(!same_endpoint("not a url", "not a url"));
    }
}
