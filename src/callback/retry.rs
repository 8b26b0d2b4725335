//! Retries and escalation (#11): when a callback's attempt ended with nobody in the group
//! answering, or with the client not answering, the portal's rules may call again after a delay,
//! as a new attempt of the same callback (its own Mango `command_id`, its own `call_attempts`
//! row). [`next`] is the rule, pure; [`plan`] applies it in the transaction that would otherwise
//! settle the callback, and queues the [`AnnounceRetry`] job that tells the deal's timeline how
//! the attempt ended and when the next one rings (`retry_report`).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Callback, Group, PlaceCall, Status};
use crate::db::schema::{call_attempts, callbacks, deals};
use crate::db::DbConnection;
use crate::jobs::{queue, Job};
use crate::mango::events::Outcome;
use crate::portal::PortalSettings;

/// The most retries of either kind a portal may set.
pub const MAX_RETRIES: i32 = 5;
/// The longest delay before a retry, in minutes (a day).
pub const MAX_RETRY_MINUTES: i32 = 1440;

/// The portal's retry rules, clamped to their ranges (a hand-edited row cannot ring forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub no_answer_times: i32,
    pub no_answer_minutes: i32,
    pub escalate: bool,
    pub client_times: i32,
    pub client_minutes: i32,
}

impl Rules {
    pub fn of(s: &PortalSettings) -> Rules {
        Rules {
            no_answer_times: s.retry_no_answer_times.clamp(0, MAX_RETRIES),
            no_answer_minutes: s.retry_no_answer_minutes.clamp(1, MAX_RETRY_MINUTES),
            escalate: s.retry_escalate,
            client_times: s.retry_client_times.clamp(0, MAX_RETRIES),
            client_minutes: s.retry_client_minutes.clamp(1, MAX_RETRY_MINUTES),
        }
    }
}

/// The next attempt: after how long, ringing which group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub after: chrono::Duration,
    pub group: Group,
}

/// Whether to call again after an attempt that rang `group` and ended as `ended`, given the
/// outcomes of every ended attempt so far (this one included). Each kind of miss has its own
/// budget: N retries when nobody answered (escalated to the experienced group when set), K when
/// the client did not answer. Any other outcome ends the callback.
pub fn next(rules: &Rules, ended: &str, group: Group, outcomes: &[&str]) -> Option<Retry> {
    let count = |o: Outcome| outcomes.iter().filter(|x| **x == o.as_str()).count() as i32;
    if ended == Outcome::ManagerMissed.as_str() {
        let missed = count(Outcome::ManagerMissed);
        (missed <= rules.no_answer_times).then(|| Retry {
            after: chrono::Duration::minutes(i64::from(rules.no_answer_minutes)),
            group: if rules.escalate {
                Group::Experienced
            } else {
                group
            },
        })
    } else if ended == Outcome::ClientMissed.as_str() {
        let missed = count(Outcome::ClientMissed);
        (missed <= rules.client_times).then(|| Retry {
            after: chrono::Duration::minutes(i64::from(rules.client_minutes)),
            group,
        })
    } else {
        None
    }
}

/// How many more retries of the kind `ended` are left after the one just planned: the count
/// shown as "attempt 2 of 3" (a later miss of the other kind may still add its own).
pub fn remaining(rules: &Rules, ended: &str, outcomes: &[&str]) -> i32 {
    let (times, kind) = if ended == Outcome::ManagerMissed.as_str() {
        (rules.no_answer_times, Outcome::ManagerMissed)
    } else {
        (rules.client_times, Outcome::ClientMissed)
    };
    let missed = outcomes.iter().filter(|x| **x == kind.as_str()).count();
    (times - i32::try_from(missed).unwrap_or(i32::MAX)).max(0)
}

/// The job that writes on the deal's timeline that attempt `ended` is over and attempt
/// `ended + 1` will ring `next_group` at `at` ([`super::retry_report`]). Everything the text
/// needs that may change by the time it runs (the time, the group, the count) is fixed here,
/// when the retry is planned, so a retried job writes the same text and finds it already there.
#[derive(Debug, Serialize, Deserialize)]
pub struct AnnounceRetry {
    pub callback_id: String,
    /// The attempt that ended; its row gives the outcome, group and manager of the text.
    pub ended: i32,
    /// When the next attempt is placed (UTC; shown in the portal's timezone).
    pub at: NaiveDateTime,
    pub next_group: Group,
    /// The next group's extension when the retry was planned.
    pub next_extension: String,
    /// How many attempts the callback has at most, given the misses so far of this kind.
    pub max_attempts: i32,
}

/// The attempt that just ended, as [`plan`] needs it (the callback's `call_attempts` row).
#[derive(Debug, Clone, Copy)]
pub struct Ended<'a> {
    pub n: i32,
    pub outcome: &'a str,
    pub group_kind: &'a str,
}

/// In the transaction that would settle `callback_id` after its last attempt `a` ended: when the
/// portal's rules call again, the callback goes back to `queued` with a new command id, the
/// group of the next attempt and `scheduled_for` (the delay, moved to the next opening of the
/// working hours), its deal is claimed again (later robot runs stay duplicates), and its
/// `place_call` job is queued for then. `true`: a retry is planned and the callback must not
/// settle. A deal another run took meanwhile gets no retry.
pub fn plan(
    c: &mut DbConnection,
    callback_id: &str,
    a: Ended<'_>,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let ended = a.outcome;
    let cb: Callback = callbacks::table
        .find(callback_id)
        .select(Callback::as_select())
        .first(c)?;
    if cb.status != Status::Started {
        return Ok(false);
    }
    let settings = crate::portal::store::settings_or_default(c, &cb.member_id, now)?;
    let outcomes: Vec<Option<String>> = call_attempts::table
        .filter(call_attempts::callback_id.eq(callback_id))
        .order(call_attempts::n)
        .select(call_attempts::outcome)
        .load(c)?;
    let outcomes: Vec<&str> = outcomes.iter().flatten().map(String::as_str).collect();
    let group = Group::parse(a.group_kind).unwrap_or(Group::Trainee);
    let rules = Rules::of(&settings);
    let Some(retry) = next(&rules, ended, group, &outcomes) else {
        return Ok(false);
    };
    let mut at = now + retry.after;
    match crate::portal::hours::WorkingHours::from_settings(&settings) {
        Ok(Some(hours)) => at = hours.next_opening(at),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(callback = %cb.id, error = ?e, "stored working hours do not validate; the retry is not held back")
        }
    }
    let claimed = diesel::update(
        deals::table
            .filter(deals::member_id.eq(&cb.member_id))
            .filter(deals::deal_id.eq(&cb.deal_id))
            .filter(
                deals::active_callback_id
                    .is_null()
                    .or(deals::active_callback_id.eq(&cb.id)),
            ),
    )
    .set((
        deals::active_callback_id.eq(&cb.id),
        deals::updated_at.eq(now),
    ))
    .execute(c)?;
    if claimed == 0 {
        tracing::info!(callback = %cb.id, "no retry: another run of the deal took it meanwhile");
        return Ok(false);
    }
    let command_id = super::command_id(
        &cb.member_id,
        &cb.deal_id,
        &uuid::Uuid::now_v7().to_string(),
    );
    let moved = diesel::update(
        callbacks::table
            .find(callback_id)
            .filter(callbacks::status.eq(Status::Started)),
    )
    .set((
        callbacks::status.eq(Status::Queued),
        callbacks::group_kind.eq(retry.group),
        callbacks::command_id.eq(&command_id),
        callbacks::outcome.eq(None::<String>),
        callbacks::mango_code.eq(None::<i32>),
        callbacks::scheduled_for.eq(Some(at)),
        callbacks::finished_at.eq(None::<NaiveDateTime>),
        callbacks::updated_at.eq(now),
    ))
    .execute(c)?;
    if moved == 0 {
        return Ok(false);
    }
    let mut job = PlaceCall {
        callback_id: cb.id.clone(),
    }
    .to_new_job(
        Some(&cb.member_id),
        Some(format!("place_call:{}:{}", cb.id, a.n + 1)),
        now,
    );
    job.run_at = at;
    queue::enqueue(c, &job, now)?;
    if !cb.deal_id.is_empty() {
        let announce = AnnounceRetry {
            callback_id: cb.id.clone(),
            ended: a.n,
            at,
            next_group: retry.group,
            next_extension: match retry.group {
                Group::Experienced => settings.experienced_extension.clone(),
                Group::Trainee => settings.trainee_extension.clone(),
            },
            max_attempts: a.n + 1 + remaining(&rules, ended, &outcomes),
        };
        let job = announce.to_new_job(
            Some(&cb.member_id),
            Some(format!("announce_retry:{}:{}", cb.id, a.n)),
            now,
        );
        queue::enqueue(c, &job, now)?;
    }
    tracing::info!(callback = %cb.id, attempt = a.n + 1, group = %retry.group, at = %at, after = %ended, "the callback will be called again");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            no_answer_times: 2,
            no_answer_minutes: 5,
            escalate: false,
            client_times: 1,
            client_minutes: 10,
        }
    }

    #[test]
    fn nobody_answering_is_retried_n_times_after_m_minutes_then_not() {
        let r = rules();
        let once = next(&r, "manager_missed", Group::Trainee, &["manager_missed"]);
        assert_eq!(
            once,
            Some(Retry {
                after: chrono::Duration::minutes(5),
                group: Group::Trainee
            })
        );
        let twice = ["manager_missed", "manager_missed"];
        assert!(next(&r, "manager_missed", Group::Trainee, &twice).is_some());
        let thrice = ["manager_missed"; 3];
        assert_eq!(next(&r, "manager_missed", Group::Trainee, &thrice), None);
    }

    #[test]
    fn escalation_rings_the_experienced_group_on_a_retry_after_nobody_answered() {
        let r = Rules {
            escalate: true,
            ..rules()
        };
        let retry = next(&r, "manager_missed", Group::Trainee, &["manager_missed"]);
        assert_eq!(retry.map(|x| x.group), Some(Group::Experienced));
        // A client who did not answer is called again by the same group.
        let retry = next(&r, "client_missed", Group::Trainee, &["client_missed"]);
        assert_eq!(retry.map(|x| x.group), Some(Group::Trainee));
    }

    #[test]
    fn each_kind_of_miss_has_its_own_budget_and_other_outcomes_end_the_callback() {
        let r = rules();
        let history = ["manager_missed", "manager_missed", "client_missed"];
        assert_eq!(
            next(&r, "client_missed", Group::Trainee, &history).map(|x| x.after),
            Some(chrono::Duration::minutes(10))
        );
        let history = ["client_missed", "client_missed"];
        assert_eq!(next(&r, "client_missed", Group::Trainee, &history), None);
        for end in ["answered", "failed", "unknown"] {
            assert_eq!(next(&r, end, Group::Trainee, &[end]), None, "{end}");
        }
        let off = Rules {
            no_answer_times: 0,
            client_times: 0,
            ..r
        };
        assert_eq!(
            next(&off, "manager_missed", Group::Trainee, &["manager_missed"]),
            None
        );
    }

    #[test]
    fn the_attempts_left_count_the_misses_of_the_kind_that_ended() {
        let r = rules();
        assert_eq!(remaining(&r, "manager_missed", &["manager_missed"]), 1);
        let two = ["manager_missed", "manager_missed"];
        assert_eq!(remaining(&r, "manager_missed", &two), 0);
        assert_eq!(
            remaining(&r, "client_missed", &["manager_missed", "client_missed"]),
            0
        );
    }

    #[test]
    fn stored_rules_out_of_range_are_clamped() {
        let mut s = PortalSettings::defaults("m", chrono::NaiveDateTime::default());
        s.retry_no_answer_times = 1000;
        s.retry_no_answer_minutes = -3;
        s.retry_client_minutes = 1_000_000;
        let r = Rules::of(&s);
        assert_eq!(r.no_answer_times, MAX_RETRIES);
        assert_eq!(r.no_answer_minutes, 1);
        assert_eq!(r.client_minutes, MAX_RETRY_MINUTES);
    }
}
