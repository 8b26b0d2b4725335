//! Who is calling: verifying a Bitrix24 user token with the OAuth server, asking whether its
//! user is an administrator, and checking an event's or robot call's application token. Used by
//! the installer, the events, the robot and the settings page alike.

use crate::bitrix::oauth::{self, VerifiedAuth, VerifyError};
use crate::context::Context;
use crate::error::AppError;
use crate::portal::api::ask_is_admin;

/// Maps a failed verification to 401/403/503; the route guard logs the refusal.
pub fn verify_error(e: VerifyError) -> AppError {
    match e {
        VerifyError::Rejected(_) => AppError::Unauthorized(e.to_string()),
        VerifyError::Mismatch(_) => AppError::Forbidden(e.to_string()),
        VerifyError::Unavailable(_) => AppError::Unavailable(e.to_string()),
    }
}

/// Verifies `access_token` via the configured OAuth server and requires our client id and the
/// same `member_id` as the request claims.
pub async fn verify(
    ctx: &Context,
    access_token: &str,
    claimed_member_id: &str,
) -> Result<VerifiedAuth, AppError> {
    let s = &ctx.shared.settings;
    let Some(client_id) = s.b24_client_id.as_deref() else {
        tracing::error!("B24_CLIENT_ID is not configured: cannot verify Bitrix24 requests");
        return Err(AppError::Unavailable(
            "the app is not configured (B24_CLIENT_ID)".into(),
        ));
    };
    let verified =
        oauth::verify_access_token(&ctx.http, &s.b24_oauth_url, access_token, Some(client_id))
            .await
            .map_err(verify_error)?;
    if verified.member_id != claimed_member_id {
        return Err(verify_error(VerifyError::Mismatch(
            "member_id does not match the verified token".into(),
        )));
    }
    Ok(verified)
}

/// Asks the portal, with the user's own verified token, whether the user is an administrator.
/// A portal that cannot answer is a 503: we cannot tell, and must not guess either way.
pub async fn is_admin(
    ctx: &Context,
    verified: &VerifiedAuth,
    auth_id: &str,
) -> Result<bool, AppError> {
    ask_is_admin(ctx.bitrix().rest(), verified, auth_id)
        .await
        .map_err(|e| {
            AppError::Unavailable(format!(
                "could not ask the portal whether the user is an administrator: {e}"
            ))
        })
}

/// Verifies an event's `access_token` like [`verify`] and requires a portal administrator: only
/// an administrator installs or updates the app, so only an administrator's event may change the
/// portal's tokens. Any user who opens the app holds a real token; a non-admin's is a 403.
pub async fn verify_admin(
    ctx: &Context,
    access_token: &str,
    claimed_member_id: &str,
    event: &str,
) -> Result<VerifiedAuth, AppError> {
    let verified = verify(ctx, access_token, claimed_member_id).await?;
    if !is_admin(ctx, &verified, access_token).await? {
        // Logged once, by the route guard, with this reason; the token is real, nothing stored.
        return Err(AppError::Forbidden(format!(
            "{event} must carry a portal administrator's authorisation (user {})",
            verified.user_id.unwrap_or(0)
        )));
    }
    Ok(verified)
}

/// Checks an event's or robot call's `application_token` against the stored one, in constant time.
pub fn application_token_matches(
    cipher: &crate::crypto::Cipher,
    portal: &crate::portal::Portal,
    presented: Option<&str>,
) -> bool {
    let stored = portal.application_token.as_deref().and_then(|t| {
        cipher
            .open(crate::crypto::Slot::application_token(&portal.member_id), t)
            .ok()
    });
    match (stored, presented) {
        (Some(s), Some(p)) if !p.is_empty() => {
            crate::crypto::constant_time_eq(s.as_bytes(), p.as_bytes())
        }
        _ => false,
    }
}
