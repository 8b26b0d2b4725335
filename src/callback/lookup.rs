//! Phone lookups batched across callbacks (#12): a [`super::PlaceCall`] job that must look up
//! its deal's phone also adopts the portal's other queued callbacks still without one, and looks
//! them all up in two `batch` requests (each deal's contacts, then each primary contact) instead
//! of one request each. A burst of 50 callbacks on one portal thus costs 2 requests of the
//! portal's 2-a-second budget instead of 50; a lone callback still costs its one request.
//!
//! Adoption lives in the database (a lease on each adopted callback, see
//! [`store::take_lookup_leases`]), so it works across instances, and a crashed adopter's lease
//! simply expires. It only pre-fills phones: a callback whose phone it did not find (no contact,
//! a deal that cannot be read, a contact without a phone) is looked up again by its own job,
//! alone, which applies the usual rules (waiting for a contact, `no_phone`, the error to report).
//! Adoption never decides another callback's end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::store::{self, LookupState};
use super::Callback;
use crate::bitrix::crm::{self, DealContact, PhoneLookup};
use crate::bitrix::BitrixError;
use crate::context::Context;
use crate::jobs::bitrix_error;
use crate::jobs::JobError;
use crate::phone;

/// How long an adopter holds the callbacks it looks up: two requests take well under that; a
/// crashed adopter's callbacks are free again after it.
pub const LEASE: Duration = Duration::from_secs(30);
/// Callbacks adopted besides the job's own: `batch` takes at most 50 commands.
pub const MAX_ADOPTED: i64 = 49;
/// How long a job waits in its slot for another run that is looking its phone up. The wait is
/// about one lookup's length, no longer than the job's own lookup would have held the slot; past
/// it (a slow or crashed adopter) the job snoozes, freeing the slot, until it can look itself.
const WAIT_FOR_ADOPTER: Duration = Duration::from_secs(2);
/// The longest a job that waited in vain snoozes before it looks again: an adopter that was only
/// slow has stored the phones by then; a crashed one's lease may still have most of its 30 s.
const SNOOZE_MAX: Duration = Duration::from_secs(2);
/// How often a waiting job looks at the database: the adopter may be another instance, whose
/// signal does not reach this one.
const RECHECK: Duration = Duration::from_millis(100);

/// The client phone of `cb`'s deal (which has neither a phone yet nor the robot's override):
/// found by another run's adoption, by this run's adoption of the portal's waiting callbacks,
/// or by its own lookup.
///
/// `job_id` names this job in the leases it takes: a later run of the same job (its predecessor
/// was stopped or lost its lease mid-lookup) knows the leases of that dead run and frees them at
/// once, instead of waiting for them to expire.
pub(super) async fn phone_of(
    ctx: &Context,
    cb: &Callback,
    job_id: &str,
) -> Result<PhoneLookup, JobError> {
    // A callback waiting for its contact to be linked looks alone, every few seconds, as before:
    // adoption is for the first look at fresh callbacks, which nearly always finds the phone.
    if cb.contact_checks > 0 {
        return alone(ctx, &cb.member_id, &cb.deal_id)
            .await
            .map_err(bitrix_error);
    }
    let db = &ctx.shared.db;
    let started = Instant::now();
    let mut adoptions_lost = 0;
    loop {
        // Registered before the database is read, so a signal sent in between is not missed.
        let signal = ctx.shared.lookups.notified();
        tokio::pin!(signal);
        signal.as_mut().enable();
        let (id, clock) = (cb.id.clone(), ctx.shared.clock.clone());
        let (state, now) = db
            .run(move |c| {
                let now = clock.shift(crate::db::database_now(c)?);
                Ok::<_, crate::db::DbError>((store::lookup_state(c, &id, now)?, now))
            })
            .await?;
        match state {
            LookupState::Known(phone) => return Ok(PhoneLookup::Found(phone)),
            LookupState::Tried => {
                return alone(ctx, &cb.member_id, &cb.deal_id)
                    .await
                    .map_err(bitrix_error)
            }
            LookupState::Adopted { by, .. } if by.starts_with(&holder_prefix(job_id)) => {
                // A job runs once at a time: this lease's run is gone.
                let now = ctx.shared.clock.now();
                db.run(move |c| store::end_lookup_leases(c, &by, false, now))
                    .await?;
                ctx.shared.lookups.notify_waiters();
            }
            LookupState::Adopted { until, .. } => {
                if started.elapsed() >= WAIT_FOR_ADOPTER {
                    let left = (until - now).to_std().unwrap_or_default();
                    return Err(JobError::Snooze(left.clamp(RECHECK, SNOOZE_MAX)));
                }
                tokio::select! {
                    () = &mut signal => {}
                    () = tokio::time::sleep(RECHECK) => {}
                }
            }
            LookupState::Free => {
                if let Some(found) = adopt(ctx, cb, job_id).await? {
                    return Ok(found);
                }
                // Another run adopted this callback meanwhile: wait for it as above. Should the
                // callback keep slipping away (it moved on meanwhile), look alone rather than loop.
                adoptions_lost += 1;
                if adoptions_lost > 2 {
                    return alone(ctx, &cb.member_id, &cb.deal_id)
                        .await
                        .map_err(bitrix_error);
                }
            }
        }
    }
}

/// Takes the lease of `cb` and of up to [`MAX_ADOPTED`] other waiting callbacks of its portal and
/// looks them all up; `None` when `cb` was adopted by another run first.
async fn adopt(
    ctx: &Context,
    cb: &Callback,
    job_id: &str,
) -> Result<Option<PhoneLookup>, JobError> {
    let db = &ctx.shared.db;
    let holder = format!("{}{}", holder_prefix(job_id), uuid::Uuid::new_v4());
    let lease = chrono::Duration::from_std(LEASE).unwrap_or_default();
    let (mid, own, h, clock) = (
        cb.member_id.clone(),
        cb.id.clone(),
        holder.clone(),
        ctx.shared.clock.clone(),
    );
    let taken = db
        .run(move |c| {
            let now = clock.shift(crate::db::database_now(c)?);
            Ok::<_, crate::db::DbError>(store::take_lookup_leases(
                c,
                &mid,
                &own,
                &h,
                now,
                now + lease,
                MAX_ADOPTED,
            )?)
        })
        .await?;
    if taken.is_empty() {
        return Ok(None);
    }
    let looked = if taken.len() == 1 {
        // Alone: today's one request of three commands, which also reads the deal's own contact.
        alone(ctx, &cb.member_id, &cb.deal_id).await
    } else {
        look_up_several(ctx, cb, &holder, &taken).await
    };
    // Whatever was not found: answered, its own job looks alone (`Tried`); not asked (an error
    // or a budget wait), it stays free for the next adoption.
    let (h, answered, now) = (holder.clone(), looked.is_ok(), ctx.shared.clock.now());
    db.run(move |c| store::end_lookup_leases(c, &h, answered, now))
        .await?;
    ctx.shared.lookups.notify_waiters();
    let own = looked.map_err(bitrix_error)?;
    match own {
        PhoneLookup::Found(_) => Ok(Some(own)),
        // The deal's own `CONTACT_ID`, a contact without a phone, or the error to report: its
        // own lookup tells, by the usual rules.
        _ if taken.len() > 1 => alone(ctx, &cb.member_id, &cb.deal_id)
            .await
            .map(Some)
            .map_err(bitrix_error),
        _ => Ok(Some(own)),
    }
}

/// The start of the lease holder names of job `job_id`'s runs (each run adds its own id).
fn holder_prefix(job_id: &str) -> String {
    format!("job:{job_id}/run:")
}

/// Round 1: each deal's contacts; round 2: each primary contact. Stores every phone found (but
/// the job's own, which it uses right away) and returns the job's own result: `Found`, or
/// `NoContact` for "not found this way".
async fn look_up_several(
    ctx: &Context,
    cb: &Callback,
    holder: &str,
    taken: &[(String, String)],
) -> Result<PhoneLookup, BitrixError> {
    let deals: Vec<&str> = taken.iter().map(|(_, deal)| deal.as_str()).collect();
    let round1 = ctx
        .bitrix()
        .batch(&cb.member_id, &crm::deal_contacts_batch(&deals))
        .await?;
    let contacts = crm::read_deal_contacts_batch(&round1, deals.len());
    let ids: Vec<&str> = contacts.iter().flatten().map(String::as_str).collect();
    let mut requests = 1;
    let mut phones: HashMap<&str, String> = HashMap::new();
    if !ids.is_empty() {
        let round2 = ctx
            .bitrix()
            .batch(&cb.member_id, &crm::contacts_batch(&ids))
            .await?;
        requests += 1;
        for ((callback_id, _), contact) in taken.iter().zip(&contacts) {
            let phone = contact
                .as_deref()
                .and_then(|c| crm::contact_phone_in(&round2, c));
            if let Some(p) = phone {
                phones.insert(callback_id.as_str(), p);
            }
        }
    }
    // Stored normalised, as a job stores the phone it found; one that does not normalise is left
    // for its own job, which reports it.
    let others: Vec<(String, String)> = phones
        .iter()
        .filter(|(id, _)| **id != cb.id)
        .filter_map(|(id, raw)| {
            phone::normalize(raw)
                .ok()
                .map(|p| ((*id).to_owned(), p.as_str().to_owned()))
        })
        .collect();
    let stored = others.len();
    let (h, now) = (holder.to_owned(), ctx.shared.clock.now());
    let kept = ctx
        .shared
        .db
        .run(move |c| {
            // One transaction, one disk sync, for every phone of the batch.
            crate::db::write_tx(c, |c| {
                let mut kept = 0;
                for (id, phone) in &others {
                    kept += usize::from(store::store_adopted_phone(c, id, &h, phone, now)?);
                }
                Ok::<_, diesel::result::Error>(kept)
            })
        })
        .await;
    if let Err(e) = kept {
        // The phones are lost, not wrong: their jobs look them up themselves.
        tracing::warn!(error = %e, "storing adopted phones failed");
    }
    let found = phones.len();
    tracing::info!(
        portal = %cb.member_id,
        callbacks = taken.len(),
        phones = found,
        stored,
        requests,
        "looked up {found} phones in {requests} requests"
    );
    Ok(phones
        .remove(cb.id.as_str())
        .map_or(PhoneLookup::NoContact, PhoneLookup::Found))
}

/// Deal → primary contact → phone, in one batch call (and a second call when the primary
/// contact is not the first linked one).
async fn alone(ctx: &Context, member_id: &str, deal_id: &str) -> Result<PhoneLookup, BitrixError> {
    let batch = ctx
        .bitrix()
        .batch(member_id, &crm::phone_batch(deal_id))
        .await?;
    let contact = match crm::read_phone_batch(&batch) {
        DealContact::NoContact => return Ok(PhoneLookup::NoContact),
        DealContact::Unreadable(e) => return Ok(PhoneLookup::Unreadable(e)),
        DealContact::Fetched(c) => c,
        DealContact::Other(contact_id) => {
            ctx.bitrix()
                .call(member_id, "crm.contact.get", json!({ "id": contact_id }))
                .await?
        }
    };
    Ok(PhoneLookup::of_contact(&contact))
}
