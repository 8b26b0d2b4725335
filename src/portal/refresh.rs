//! Refreshing a portal's tokens so that no portal is lost to a slow or dead refresher.
//!
//! Bitrix24 consumes a refresh token the moment it receives it: a refresh whose answer is lost
//! loses the portal. So the OAuth request waits generously (`B24_OAUTH_TIMEOUT_SECONDS`), the
//! refresh lease on the portal row outlives it three times (timed by the app clock, the same
//! one every instance stamps the row with), a received pair is saved whenever the row still
//! holds the pair it replaces, and an `invalid_grant` while another holder's lease is live waits
//! for that holder. When a portal is lost all the same, `refresh_problem` says why.

use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use secrecy::ExposeSecret;

use super::api::PortalApi;
use super::{store, Portal};
use crate::bitrix::oauth::{self, NewTokens, RefreshError};
use crate::bitrix::BitrixError;

/// How often a waiting caller re-reads the portal row.
const POLL: Duration = Duration::from_millis(100);

impl PortalApi {
    /// The refresh lease: three OAuth timeouts, so that a live holder's request has long
    /// ended (answered or timed out) before anybody else may send the same refresh token.
    fn refresh_lease(&self) -> Duration {
        self.settings.b24_oauth_timeout * 3
    }

    async fn read_row(&self, member_id: &str) -> Result<Portal, BitrixError> {
        let id = member_id.to_owned();
        self.db
            .run(move |c| store::find(c, &id))
            .await?
            .ok_or_else(|| BitrixError::NotInstalled(member_id.to_owned()))
    }

    /// Refreshes the portal's tokens once for everyone who saw `seen_version` expire.
    ///
    /// Within the process a per-portal mutex queues the callers; across processes a lease on
    /// the portal row (compare-and-set on `token_version`) lets exactly one refresh while the
    /// others wait for the version to move and then use the winner's tokens. No database
    /// transaction is held across the HTTP call.
    pub async fn refresh(&self, member_id: &str, seen_version: i64) -> Result<(), BitrixError> {
        let gate = self.refresh_gates.gate(member_id);
        let _held = gate.lock().await;
        let lease = self.refresh_lease();
        // A backstop in real time, should the clocks of the instances disagree wildly.
        let deadline = Instant::now() + lease * 2;
        loop {
            let portal = self.read_row(member_id).await?;
            if portal.token_version != seen_version {
                return Ok(());
            }
            if portal.needs_reauth {
                return Err(BitrixError::NeedsReauth {
                    member_id: member_id.to_owned(),
                    detail: portal
                        .refresh_problem
                        .unwrap_or_else(|| "the refresh token was refused".into()),
                });
            }
            let now = self.clock.now();
            let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
            let (id, holder) = (member_id.to_owned(), self.instance_id.clone());
            let won = self
                .db
                .run(move |c| store::try_lock_refresh(c, &id, seen_version, &holder, until, now))
                .await?;
            if won {
                return self.refresh_holding_lease(&portal).await;
            }
            if Instant::now() > deadline {
                return Err(BitrixError::Transport {
                    member_id: member_id.to_owned(),
                    method: "oauth/token".into(),
                    detail: "another instance's token refresh did not finish".into(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends the refresh for the pair `before` holds; the caller holds the lease on it.
    async fn refresh_holding_lease(&self, before: &Portal) -> Result<(), BitrixError> {
        let member_id = before.member_id.as_str();
        let refresh_token = before.refresh_token.as_deref().and_then(|t| {
            self.cipher
                .open(crate::crypto::Slot::refresh_token(member_id), t)
                .ok()
        });
        let s = &self.settings;
        let result = match refresh_token {
            Some(rt) => {
                let sent = oauth::refresh(
                    &self.http,
                    &s.b24_oauth_url,
                    s.b24_client_id.as_deref(),
                    s.b24_client_secret.as_ref().map(|s| s.expose_secret()),
                    &rt,
                    s.b24_oauth_timeout,
                )
                .await;
                self.rest.metrics().token_refresh(sent.is_ok());
                sent
            }
            None => Err(RefreshError::InvalidGrant("no refresh token stored".into())),
        };
        match result {
            Ok(t) => {
                self.save_refreshed(member_id, before.token_version, t)
                    .await
            }
            Err(RefreshError::InvalidGrant(detail)) => self.refused(before, &detail).await,
            Err(e) => {
                let now = self.clock.now();
                // The token may have been consumed with the answer lost: say so now, so that a
                // refusal on the next try can name this attempt as the likely cause.
                let problem = format!(
                    "the refresh sent by {} at {} UTC got no answer that could be used ({e})",
                    self.instance_id,
                    now.format("%Y-%m-%d %H:%M:%S")
                );
                tracing::warn!(portal = member_id, error = %e, "token refresh failed; tried again on the next call");
                let (id, holder) = (member_id.to_owned(), self.instance_id.clone());
                self.db
                    .run(move |c| store::release_refresh(c, &id, &holder, Some(&problem), now))
                    .await?;
                Err(BitrixError::Transport {
                    member_id: member_id.to_owned(),
                    method: "oauth/token".into(),
                    detail: e.to_string(),
                })
            }
        }
    }

    /// Saves the pair just received, whoever holds the lease by now: it is the only live one.
    async fn save_refreshed(
        &self,
        member_id: &str,
        version: i64,
        t: NewTokens,
    ) -> Result<(), BitrixError> {
        let (cipher, id, now) = (self.cipher.clone(), member_id.to_owned(), self.clock.now());
        let expires = i64::try_from(t.expires_in).unwrap_or(3600);
        let saved = self
            .db
            .run(move |c| {
                store::finish_refresh(
                    c,
                    &cipher,
                    &id,
                    version,
                    t.access_token.expose_secret(),
                    t.refresh_token.expose_secret(),
                    expires,
                    now,
                )
            })
            .await?;
        if saved {
            tracing::info!(portal = member_id, "Bitrix24 tokens refreshed");
        } else {
            // Only a new chain (an administrator's re-authorisation) moves the version under a
            // refresh; that pair is live too, and newer.
            tracing::warn!(
                portal = member_id,
                "refreshed tokens not saved: a newer pair was stored meanwhile"
            );
        }
        Ok(())
    }

    /// `invalid_grant` for the pair `before` holds. While another holder's lease is live, its
    /// refresh may be the one that consumed the token and its save may be on the way: wait for
    /// it. Only then, with the version unmoved, is the portal lost, and the row says why.
    async fn refused(&self, before: &Portal, detail: &str) -> Result<(), BitrixError> {
        let member_id = before.member_id.as_str();
        let version = before.token_version;
        let deadline = Instant::now() + self.refresh_lease() * 2;
        loop {
            let current = self.read_row(member_id).await?;
            if current.token_version != version {
                let (id, holder, now) = (
                    member_id.to_owned(),
                    self.instance_id.clone(),
                    self.clock.now(),
                );
                self.db
                    .run(move |c| store::release_refresh(c, &id, &holder, None, now))
                    .await?;
                return Ok(());
            }
            let other_live = current
                .refresh_lock_by
                .as_deref()
                .is_some_and(|h| h != self.instance_id)
                && lease_live(current.refresh_lock_until, self.clock.now());
            if !other_live || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let reason = lost_reason(before, detail, self.clock.now());
        let (id, now, why) = (member_id.to_owned(), self.clock.now(), reason.clone());
        let marked = self
            .db
            .run(move |c| store::mark_refresh_lost(c, &id, version, &why, now))
            .await?;
        if !marked {
            // A new pair arrived between the last read and the mark.
            return Ok(());
        }
        tracing::error!(portal = member_id, %reason, "portal needs re-authorisation (an admin opening the app heals it)");
        Err(BitrixError::NeedsReauth {
            member_id: member_id.to_owned(),
            detail: reason,
        })
    }
}

fn lease_live(until: Option<NaiveDateTime>, now: NaiveDateTime) -> bool {
    until.is_some_and(|u| u > now)
}

/// Why the refresh token of `before` is gone, in words for the settings page and the log:
/// Bitrix24's refusal, and the earlier refresh that most likely consumed the token — a holder
/// whose lease ran out without a save (a killed or hung instance), or a refresh whose answer
/// never came.
fn lost_reason(before: &Portal, detail: &str, now: NaiveDateTime) -> String {
    let refusal = format!("Bitrix24 refused the stored refresh token (invalid_grant: {detail})");
    let stamp = |t: NaiveDateTime| t.format("%Y-%m-%d %H:%M:%S").to_string();
    let cause = match (&before.refresh_lock_by, before.refresh_lock_until) {
        (Some(holder), Some(until)) if until <= now => Some(format!(
            "instance {holder} sent a refresh and never saved its answer (its lease ran out at {} UTC; it was probably stopped or killed mid-refresh)",
            stamp(until)
        )),
        _ => before.refresh_problem.clone(),
    };
    match cause {
        Some(cause) => format!(
            "{refusal}: {cause}. Bitrix24 consumes a refresh token on receipt, so the new pair was lost with that answer"
        ),
        None => format!(
            "{refusal}: it was used or revoked elsewhere (another copy of the app with the same portal, or a reinstall)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(lock_by: Option<&str>, lock_until: Option<i64>, problem: Option<&str>) -> Portal {
        let at = |s: i64| chrono::DateTime::from_timestamp(s, 0).map(|t| t.naive_utc());
        Portal {
            member_id: "m".into(),
            token_version: 1,
            refresh_lock_until: lock_until.and_then(at),
            refresh_lock_by: lock_by.map(str::to_owned),
            refresh_problem: problem.map(str::to_owned),
            ..Portal::blank(at(0).unwrap_or_default())
        }
    }

    #[test]
    fn a_lost_portal_names_the_refresh_that_most_likely_consumed_its_token() {
        let now = chrono::DateTime::from_timestamp(1_000, 0)
            .map(|t| t.naive_utc())
            .unwrap_or_default();
        let dead = lost_reason(&row(Some("instance-a"), Some(900), None), "gone", now);
        assert!(dead.contains("invalid_grant: gone"), "{dead}");
        assert!(
            dead.contains("instance instance-a sent a refresh"),
            "{dead}"
        );
        let unanswered = lost_reason(
            &row(None, None, Some("the refresh sent by x got no answer")),
            "gone",
            now,
        );
        assert!(unanswered.contains("got no answer"), "{unanswered}");
        let elsewhere = lost_reason(&row(None, None, None), "gone", now);
        assert!(
            elsewhere.contains("used or revoked elsewhere"),
            "{elsewhere}"
        );
    }
}
