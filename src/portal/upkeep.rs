//! Portal upkeep jobs: re-registering the robot after an update, keeping idle portals' tokens
//! alive, the ONAPPTEST self-check, and ONAPPUPDATEs that could not be verified at once.

use diesel::QueryResult;
use serde::{Deserialize, Serialize};
use serde_json::json;

use chrono::NaiveDateTime;

use super::api::ask_is_admin;
use super::robot::{bind_event, bind_events, register_robot};
use crate::bitrix::oauth::{self, VerifyError};
use crate::context::Context;
use crate::crypto::{Cipher, Slot};
use crate::db::{DbConnection, DbError};
use crate::jobs::{bitrix_error, queue, Job, JobError};
use crate::portal::store;

/// What a verified administrator's ONAPPUPDATE brings (plain text; only ever held in memory).
pub struct VerifiedUpdate {
    pub member_id: String,
    pub application_token: String,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_in: i64,
    /// When the event arrived: a token brought by a newer request is never overwritten.
    pub received_at: NaiveDateTime,
}

/// Applies a verified administrator's ONAPPUPDATE: the new application token, the new token
/// pair, and the robot's re-registration (an update removes the app's robots). The same for an
/// update verified at once and one verified later by [`ApplyAppUpdate`]. Run it in a write
/// transaction; returns `false` when a newer request's token was already stored.
pub fn apply_verified_update(
    conn: &mut DbConnection,
    cipher: &Cipher,
    u: &VerifiedUpdate,
    now: NaiveDateTime,
) -> Result<bool, DbError> {
    let stored = store::set_application_token(
        conn,
        cipher,
        &u.member_id,
        &u.application_token,
        u.received_at,
        now,
    )?;
    if !stored {
        return Ok(false);
    }
    if let (Some(a), Some(r)) = (&u.access_token, &u.refresh_token) {
        store::store_tokens(conn, cipher, &u.member_id, a, r, u.expires_in, now)?;
    }
    let job = RegisterRobot {
        member_id: u.member_id.clone(),
    }
    .to_new_job(Some(&u.member_id), None, now);
    queue::enqueue(conn, &job, now)?;
    Ok(true)
}

/// Re-registers the robot after ONAPPUPDATE (an update removes the app's robots).
#[derive(Debug, Serialize, Deserialize)]
pub struct RegisterRobot {
    pub member_id: String,
}

impl Job for RegisterRobot {
    const KIND: &'static str = "register_robot";

    async fn run(self, ctx: &Context, _job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        let url = &ctx.shared.settings.public_url;
        register_robot(&ctx.bitrix(), &self.member_id, url)
            .await
            .map_err(bitrix_error)?;
        bind_events(&ctx.bitrix(), &self.member_id, url)
            .await
            .map_err(bitrix_error)?;
        tracing::info!(portal = %self.member_id, "robot re-registered after update");
        Ok(())
    }
}

/// Refreshes an idle portal's tokens before the refresh token can lapse (28 days on the
/// strictest reading of Bitrix24's docs; we refresh after 20 days idle, never more often).
#[derive(Debug, Serialize, Deserialize)]
pub struct KeepTokensAlive {
    pub member_id: String,
}

/// Idle time after which a portal's tokens are refreshed by [`KeepTokensAlive`].
pub const KEEP_ALIVE_AFTER_DAYS: i64 = 20;

impl Job for KeepTokensAlive {
    const KIND: &'static str = "keep_tokens_alive";

    async fn run(self, ctx: &Context, _job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        let id = self.member_id.clone();
        let portal = ctx
            .shared
            .db
            .run(move |c| crate::portal::store::find(c, &id))
            .await?;
        let Some(p) = portal.filter(|p| p.is_active() && !p.needs_reauth) else {
            return Ok(());
        };
        ctx.bitrix()
            .refresh(&self.member_id, p.token_version)
            .await
            .map_err(bitrix_error)
    }
}

/// Enqueues keep-alive refreshes for portals idle longer than [`KEEP_ALIVE_AFTER_DAYS`].
/// The dedup key names the last refresh, so each idle stretch gets exactly one job.
pub async fn schedule_keep_alive(ctx: &Context) -> Result<usize, crate::db::DbError> {
    let now = ctx.shared.clock.now();
    let before = now - chrono::Duration::days(KEEP_ALIVE_AFTER_DAYS);
    ctx.shared
        .db
        .run(move |c| -> QueryResult<_> {
            let mut n = 0;
            for (member_id, refreshed_at) in crate::portal::store::stale_token_portals(c, before)? {
                let key = format!(
                    "keepalive:{member_id}:{}",
                    refreshed_at.map(|t| t.and_utc().timestamp()).unwrap_or(0)
                );
                let job = KeepTokensAlive {
                    member_id: member_id.clone(),
                }
                .to_new_job(Some(&member_id), Some(key), now);
                if crate::jobs::queue::enqueue(c, &job, now)? {
                    n += 1;
                }
            }
            Ok(n)
        })
        .await
}

/// How long after the installer POST the install-time self-check runs: Bitrix24 delivers no
/// events until the installer page has called `BX24.installFinish()`.
pub const SELF_CHECK_AFTER_INSTALL: chrono::Duration = chrono::Duration::minutes(2);
/// A self-check older than this is run again when an administrator opens the settings page.
pub const SELF_CHECK_MAX_AGE: chrono::Duration = chrono::Duration::hours(1);
/// A test with no verified ONAPPTEST within this time means "Bitrix24 does not reach the app"
/// (Bitrix24's event queue usually delivers within seconds).
pub const SELF_CHECK_ANSWER_WITHIN: chrono::Duration = chrono::Duration::minutes(5);

/// The self-check: binds ONAPPTEST to `/b24/events` and asks Bitrix24 (`event.test`) to send it.
/// The event's arrival, verified, records "Bitrix24 reached the app" (see `http::events`).
#[derive(Debug, Serialize, Deserialize)]
pub struct SelfCheck {
    pub member_id: String,
}

impl Job for SelfCheck {
    const KIND: &'static str = "app_self_check";
    const MAX_ATTEMPTS: i32 = 5;

    async fn run(self, ctx: &Context, _job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        let id = self.member_id.clone();
        let portal = ctx.shared.db.run(move |c| store::find(c, &id)).await?;
        if !portal.is_some_and(|p| p.is_active() && !p.needs_reauth) {
            return Ok(());
        }
        let handler = format!("{}/b24/events", ctx.shared.settings.public_url);
        // Bound again each time: portals installed before the self-check existed lack it.
        bind_event(&ctx.bitrix(), &self.member_id, "ONAPPTEST", &handler)
            .await
            .map_err(bitrix_error)?;
        let (id, now) = (self.member_id.clone(), ctx.shared.clock.now());
        ctx.shared
            .db
            .run(move |c| store::mark_app_check_sent(c, &id, now))
            .await?;
        ctx.bitrix()
            .call(
                &self.member_id,
                "event.test",
                json!({ "check": "mango-callback self-check" }),
            )
            .await
            .map_err(bitrix_error)?;
        tracing::info!(portal = %self.member_id, "self-check sent: Bitrix24 was asked to deliver ONAPPTEST");
        Ok(())
    }
}

/// Queues a self-check due at `run_at`. `dedup_key` keeps repeated page opens to one job.
pub fn enqueue_self_check(
    conn: &mut DbConnection,
    member_id: &str,
    dedup_key: Option<String>,
    run_at: NaiveDateTime,
    now: NaiveDateTime,
) -> Result<bool, DbError> {
    let mut job = SelfCheck {
        member_id: member_id.to_owned(),
    }
    .to_new_job(Some(member_id), dedup_key, now);
    job.run_at = run_at;
    Ok(queue::enqueue(conn, &job, now)?)
}

/// An ONAPPUPDATE whose verification could not be done when it arrived (the OAuth server or the
/// portal did not answer). Bitrix24 never re-sends an event, so it is kept, its tokens sealed
/// with the app's cipher, and verified by this retried job; a verified administrator's update is
/// applied exactly as one verified at once, anything else is dropped with a log line.
#[derive(Serialize, Deserialize)]
pub struct ApplyAppUpdate {
    pub member_id: String,
    /// Sealed ([`Cipher::seal`]), like every stored token.
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub application_token: String,
    pub expires_in: i64,
    pub received_at: NaiveDateTime,
}

impl std::fmt::Debug for ApplyAppUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyAppUpdate")
            .field("member_id", &self.member_id)
            .field("received_at", &self.received_at)
            .finish_non_exhaustive()
    }
}

/// At most this many unverified updates wait per portal: anyone who knows a member id can post
/// one while the OAuth server is down, and they must not pile up.
pub const MAX_PENDING_UPDATES: i64 = 10;

impl Job for ApplyAppUpdate {
    const KIND: &'static str = "apply_app_update";
    // Backoff doubles from 2 s and is capped at 10 minutes: over an hour of retries, about the
    // life of the event's access token (after that it could not verify anyway).
    const MAX_ATTEMPTS: i32 = 16;

    async fn run(self, ctx: &Context, _job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        let s = &ctx.shared;
        let mid = self.member_id.as_str();
        let open = |slot: Slot, sealed: &str| {
            s.cipher.open(slot, sealed).map_err(|e| {
                JobError::Permanent(anyhow::anyhow!("the kept update cannot be opened: {e}"))
            })
        };
        let access = open(Slot::access_token(mid), &self.access_token)?;
        let refresh = self
            .refresh_token
            .as_deref()
            .map(|r| open(Slot::refresh_token(mid), r))
            .transpose()?;
        let app_token = open(Slot::application_token(mid), &self.application_token)?;
        let Some(client_id) = s.settings.b24_client_id.as_deref() else {
            return Err(JobError::Transient(anyhow::anyhow!(
                "B24_CLIENT_ID is not configured: cannot verify the kept ONAPPUPDATE"
            )));
        };
        let give_up = |why: &str| {
            tracing::warn!(portal = %self.member_id, reason = why, "kept ONAPPUPDATE refused for good: dropped, nothing changed");
            Ok(())
        };
        let verified = match oauth::verify_access_token(
            &ctx.http,
            &s.settings.b24_oauth_url,
            &access,
            Some(client_id),
        )
        .await
        {
            Ok(v) => v,
            Err(VerifyError::Unavailable(e)) => {
                return Err(JobError::Transient(anyhow::anyhow!(
                    "the OAuth server still cannot verify the kept ONAPPUPDATE: {e}"
                )))
            }
            Err(e) => return give_up(&e.to_string()),
        };
        if verified.member_id != self.member_id {
            return give_up("the token belongs to another portal");
        }
        match ask_is_admin(ctx.bitrix().rest(), &verified, &access).await {
            Ok(true) => {}
            Ok(false) => return give_up("the user is not a portal administrator"),
            Err(e) if e.is_transient() => return Err(bitrix_error(e)),
            Err(e) => return give_up(&e.to_string()),
        }
        let update = VerifiedUpdate {
            member_id: self.member_id.clone(),
            application_token: app_token,
            access_token: Some(access),
            refresh_token: refresh,
            expires_in: self.expires_in,
            received_at: self.received_at,
        };
        let (cipher, now) = (s.cipher.clone(), s.clock.now());
        let applied =
            s.db.run(move |c| {
                crate::db::write_tx(c, |c| apply_verified_update(c, &cipher, &update, now))
            })
            .await?;
        if applied {
            s.notify.notify_one();
            tracing::info!(portal = %self.member_id, "kept ONAPPUPDATE verified and applied: application token rotated, robot re-registration queued");
        } else {
            tracing::info!(portal = %self.member_id, "kept ONAPPUPDATE verified but superseded by a newer one; not applied");
        }
        Ok(())
    }
}

/// Queues a self-check when an administrator opens the settings page and the last one is older
/// than [`SELF_CHECK_MAX_AGE`] (or there was none). One job per portal and hour, however often
/// the page is opened; a database trouble only skips the check (logged), never the page.
pub async fn self_check_if_stale(ctx: &Context, portal: &super::Portal) {
    let now = ctx.shared.clock.now();
    if portal
        .app_check_sent_at
        .is_some_and(|t| now - t < SELF_CHECK_MAX_AGE)
    {
        return;
    }
    let mid = portal.member_id.clone();
    let key = format!("appcheck:{mid}:{}", now.and_utc().timestamp() / 3600);
    let queued = ctx
        .shared
        .db
        .run(move |c| enqueue_self_check(c, &mid, Some(key), now, now))
        .await;
    match queued {
        Ok(true) => {
            ctx.shared.notify.notify_one();
            tracing::info!("self-check queued: the last one is older than an hour");
        }
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "queueing the self-check failed"),
    }
}
