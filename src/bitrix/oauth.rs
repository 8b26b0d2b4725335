//! Bitrix24 OAuth: refreshing tokens through the `oauth2` crate over awc, and verifying a
//! user's `AUTH_ID` with `app.info` on the configured OAuth server.

use std::time::Duration;

use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AccessToken, AuthType, Client, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    RefreshToken, RequestTokenError, Scope, StandardRevocableToken, TokenResponse, TokenUrl,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// How long a refresh waits for the OAuth server unless `B24_OAUTH_TIMEOUT_SECONDS` says
/// otherwise. Generous: Bitrix24 consumes the refresh token when it receives it, so a refresh
/// given up while the answer is on its way loses the portal.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Bitrix24's token answer: no `token_type`, a comma-separated `scope`, and extra fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct B24TokenResponse {
    access_token: AccessToken,
    #[serde(default)]
    refresh_token: Option<RefreshToken>,
    #[serde(default = "bearer")]
    token_type: BasicTokenType,
    #[serde(default, deserialize_with = "crate::json::lenient_int")]
    expires_in: Option<u64>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub member_id: Option<String>,
    #[serde(default)]
    pub client_endpoint: Option<String>,
    #[serde(default)]
    pub server_endpoint: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "crate::json::lenient_int")]
    pub expires: Option<u64>,
    #[serde(default, deserialize_with = "crate::json::lenient_int")]
    pub user_id: Option<u64>,
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

impl TokenResponse for B24TokenResponse {
    type TokenType = BasicTokenType;
    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }
    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }
    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        // Comma-separated in Bitrix24; read `scope` instead of the space-splitting default.
        None
    }
}

type B24OAuthClient = Client<
    BasicErrorResponse,
    B24TokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// A fresh token pair. `Debug` hides the tokens.
#[derive(Clone)]
pub struct NewTokens {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub expires_in: u64,
    pub client_endpoint: Option<String>,
    pub scope: Option<String>,
}

impl std::fmt::Debug for NewTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewTokens")
            .field("access_token", &format_args!("<redacted>"))
            .field("refresh_token", &format_args!("<redacted>"))
            .field("expires_in", &self.expires_in)
            .field("client_endpoint", &self.client_endpoint)
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The refresh token is used, expired or revoked.
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    /// Our client_id/secret were refused (or the app is not installed there).
    #[error("OAuth server refused the client: {0}")]
    Client(String),
    #[error("B24_CLIENT_ID / B24_CLIENT_SECRET are not configured")]
    NotConfigured,
    #[error("OAuth server unreachable or answered badly: {0}")]
    Unavailable(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AdapterError(String);

/// Converts oauth2's `http` 1.x request into an awc request and the answer back.
async fn send_via_awc(
    http: &awc::Client,
    req: oauth2::HttpRequest,
    timeout: Duration,
) -> Result<oauth2::HttpResponse, AdapterError> {
    let (parts, body) = req.into_parts();
    let method = awc::http::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(|e| AdapterError(e.to_string()))?;
    let mut r = http.request(method, parts.uri.to_string()).timeout(timeout);
    for (name, value) in &parts.headers {
        r = r.insert_header((name.as_str(), value.as_bytes()));
    }
    let mut resp = r
        .send_body(body)
        .await
        .map_err(|e| AdapterError(e.to_string()))?;
    let bytes = resp
        .body()
        .limit(1 << 20)
        .await
        .map_err(|e| AdapterError(e.to_string()))?;
    let mut out = http::Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        out = out.header(name.as_str(), value.as_bytes());
    }
    out.body(bytes.to_vec())
        .map_err(|e| AdapterError(e.to_string()))
}

/// Exchanges a refresh token for a new pair at `{oauth_url}/oauth/token/`, credentials in the
/// body, waiting up to `timeout` for the answer.
pub async fn refresh(
    http: &awc::Client,
    oauth_url: &str,
    client_id: Option<&str>,
    client_secret: Option<&str>,
    refresh_token: &str,
    timeout: Duration,
) -> Result<NewTokens, RefreshError> {
    let (Some(id), Some(secret)) = (client_id, client_secret) else {
        return Err(RefreshError::NotConfigured);
    };
    let token_url = TokenUrl::new(format!("{oauth_url}/oauth/token/"))
        .map_err(|e| RefreshError::Unavailable(e.to_string()))?;
    let client: B24OAuthClient = Client::new(ClientId::new(id.to_owned()))
        .set_client_secret(ClientSecret::new(secret.to_owned()))
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(token_url);
    let send = |req| send_via_awc(http, req, timeout);
    let answer = client
        .exchange_refresh_token(&RefreshToken::new(refresh_token.to_owned()))
        .request_async(&send)
        .await;
    match answer {
        Ok(t) => {
            let refresh_token = t
                .refresh_token()
                .map(|r| SecretString::from(r.secret().as_str()))
                .ok_or_else(|| {
                    RefreshError::Unavailable("token answer carries no refresh_token".into())
                })?;
            Ok(NewTokens {
                access_token: SecretString::from(t.access_token().secret().as_str()),
                refresh_token,
                expires_in: t.expires_in.unwrap_or(3600),
                client_endpoint: t.client_endpoint.clone(),
                scope: t.scope.clone(),
            })
        }
        Err(RequestTokenError::ServerResponse(e)) => {
            let detail = e
                .error_description()
                .cloned()
                .unwrap_or_else(|| e.error().to_string());
            match e.error() {
                BasicErrorResponseType::InvalidGrant => Err(RefreshError::InvalidGrant(detail)),
                BasicErrorResponseType::InvalidClient
                | BasicErrorResponseType::UnauthorizedClient => Err(RefreshError::Client(detail)),
                _ => Err(RefreshError::Unavailable(format!(
                    "{}: {detail}",
                    e.error()
                ))),
            }
        }
        // oauth2's own text for a transport failure is just "Request failed"; the cause
        // (a timeout, a refused connection) is what an operator needs to read.
        Err(RequestTokenError::Request(e)) => Err(RefreshError::Unavailable(format!(
            "request failed (timeout {} s): {e}",
            timeout.as_secs()
        ))),
        Err(other) => Err(RefreshError::Unavailable(other.to_string())),
    }
}

/// What the OAuth server vouches for about an access token (`app.info`).
#[derive(Debug, Clone)]
pub struct VerifiedAuth {
    pub client_id: String,
    pub user_id: Option<u64>,
    pub member_id: String,
    pub domain: String,
    pub client_endpoint: String,
    pub scope: String,
    pub status: String,
    pub installed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The OAuth server does not accept the token (forged, expired or revoked).
    #[error("the access token was not accepted by the Bitrix24 OAuth server ({0})")]
    Rejected(String),
    /// The token is real but belongs to another application or portal.
    #[error("{0}")]
    Mismatch(String),
    #[error("the Bitrix24 OAuth server could not be asked: {0}")]
    Unavailable(String),
}

/// `GET {oauth_url}/rest/app.info?auth=…` on the configured server — never a URL from the request.
pub async fn verify_access_token(
    http: &awc::Client,
    oauth_url: &str,
    access_token: &str,
    expected_client_id: Option<&str>,
) -> Result<VerifiedAuth, VerifyError> {
    let url = format!("{oauth_url}/rest/app.info");
    let mut resp = http
        .get(&url)
        .query(&[("auth", access_token)])
        .map_err(|e| VerifyError::Unavailable(e.to_string()))?
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(|e| VerifyError::Unavailable(e.to_string()))?;
    let status = resp.status();
    // An overloaded or broken OAuth server says nothing about the token, whatever its body
    // says: 5xx and 429 are "ask again later", never "rejected".
    if status.is_server_error() || status.as_u16() == 429 {
        return Err(VerifyError::Unavailable(format!("HTTP {status}")));
    }
    let body: serde_json::Value = resp
        .json()
        .limit(1 << 20)
        .await
        .map_err(|e| VerifyError::Unavailable(format!("unreadable answer: {e}")))?;
    if status.as_u16() == 401 || status.as_u16() == 400 || body.get("error").is_some() {
        let code = body
            .get("error")
            .and_then(|v| v.as_str())
            .unwrap_or("rejected");
        return Err(VerifyError::Rejected(code.to_owned()));
    }
    if !status.is_success() {
        return Err(VerifyError::Unavailable(format!("HTTP {status}")));
    }
    let r = &body["result"];
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let install = &r["install"];
    let verified = VerifiedAuth {
        client_id: s(&r["client_id"]),
        user_id: crate::json::int(&r["user_id"]),
        member_id: s(&install["member_id"]),
        domain: s(&install["domain"]),
        client_endpoint: s(&install["client_endpoint"]),
        scope: s(&r["scope"]),
        status: s(&install["status"]),
        installed: matches!(&install["installed"], serde_json::Value::Bool(true))
            || s(&install["installed"]) == "Y",
    };
    if verified.member_id.is_empty() || verified.client_endpoint.is_empty() {
        return Err(VerifyError::Unavailable(
            "app.info answer lacks install.member_id or client_endpoint".into(),
        ));
    }
    if let Some(expected) = expected_client_id {
        if verified.client_id != expected {
            return Err(VerifyError::Mismatch(format!(
                "the token belongs to another application ({})",
                verified.client_id
            )));
        }
    }
    Ok(verified)
}
