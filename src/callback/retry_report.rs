//! The [`AnnounceRetry`] job: when an attempt ended with nobody or the client not answering and
//! the portal's rules call again, the deal's timeline says how the attempt ended and when, as
//! which attempt, and to which group the next call goes ("… Перезвоним в 14:35 (попытка 2 из 3),
//! группе опытных менеджеров 001"). Without it the deal showed nothing between the first
//! "ringing" comment and the final outcome, however many attempts were made.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::outcome::Attempt;
use super::outcome_report::outcome_text;
use super::report::{add_deal_comment, with_portal};
use super::retry::AnnounceRetry;
use super::{Callback, Group};
use crate::context::Context;
use crate::db::schema::call_attempts;
use crate::jobs::{Job, JobError};
use crate::portal::hours::parse_timezone;
use crate::portal::Lang;

/// The timeline text for a planned retry: the ended attempt's outcome as the final outcome
/// comment words it, then the next call's local time (with its date when that is not the day the
/// attempt ended), its number of the most, and its group.
pub fn retry_text(
    cb: &Callback,
    ended: &Attempt,
    job: &AnnounceRetry,
    (timezone, wait_minutes): (&str, i32),
    lang: Lang,
) -> String {
    // The ended attempt seen as if it were the callback's outcome, so both comments say the
    // same thing the same way.
    let view = Callback {
        call_outcome: ended.outcome.clone(),
        manager_extension: ended.manager_extension.clone(),
        talk_seconds: ended.talk_seconds,
        group_extension: Some(ended.group_extension.clone()),
        ..cb.clone()
    };
    let what = outcome_text(&view, Some(ended), wait_minutes, lang);
    // A zone changed to something unreadable since: UTC is still true.
    let tz = parse_timezone(timezone).unwrap_or(chrono_tz::UTC);
    let local = |t: NaiveDateTime| chrono::TimeZone::from_utc_datetime(&tz, &t).naive_local();
    let at = local(job.at);
    let same_day = ended.ended_at.is_some_and(|e| local(e).date() == at.date());
    let when = match (same_day, lang) {
        (true, _) => at.format("%H:%M").to_string(),
        (false, Lang::Ru) => format!("{} в {}", at.format("%d.%m.%Y"), at.format("%H:%M")),
        (false, Lang::En) => format!("{} at {}", at.format("%Y-%m-%d"), at.format("%H:%M")),
    };
    let (n, of, ext) = (job.ended + 1, job.max_attempts, &job.next_extension);
    match (job.next_group, lang) {
        (Group::Experienced, Lang::Ru) => format!(
            "{what}. Перезвоним в {when} (попытка {n} из {of}), группе опытных менеджеров {ext}"
        ),
        (Group::Trainee, Lang::Ru) => {
            format!("{what}. Перезвоним в {when} (попытка {n} из {of}), группе стажёров {ext}")
        }
        (Group::Experienced, Lang::En) => format!(
            "{what}. Calling again at {when} (attempt {n} of {of}), the experienced group {ext}"
        ),
        (Group::Trainee, Lang::En) => format!(
            "{what}. Calling again at {when} (attempt {n} of {of}), the trainee group {ext}"
        ),
    }
}

impl Job for AnnounceRetry {
    const KIND: &'static str = "announce_retry";

    async fn run(self, ctx: &Context, job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        let (id, n, now) = (self.callback_id.clone(), self.ended, ctx.shared.clock.now());
        let found = ctx
            .shared
            .db
            .run(move |c| -> QueryResult<_> {
                let Some((cb, portal, settings)) = with_portal(c, &id, now)? else {
                    return Ok(None);
                };
                let ended: Option<Attempt> = call_attempts::table
                    .find((&id, n))
                    .select(Attempt::as_select())
                    .first(c)
                    .optional()?;
                Ok(ended.map(|a| (cb, portal, settings, a)))
            })
            .await?;
        let Some((cb, portal, settings, ended)) = found else {
            return Ok(());
        };
        if cb.deal_id.is_empty() {
            return Ok(());
        }
        let text = retry_text(
            &cb,
            &ended,
            &self,
            (&settings.timezone, settings.outcome_wait_minutes),
            Lang::parse(&portal.lang),
        );
        // A deal that does not take it is logged by `add_deal_comment`; the retry goes ahead.
        add_deal_comment(ctx, &cb, &text, job.attempts > 1).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::Status;

    fn utc(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").expect("test time")
    }

    fn callback() -> Callback {
        let t = utc("2026-12-03 11:00");
        Callback {
            id: "cb1".into(),
            member_id: "m1".into(),
            deal_id: "7".into(),
            event_token: None,
            workflow_id: None,
            requested_group: "auto".into(),
            group_kind: Some(Group::Trainee),
            group_extension: Some("002".into()),
            phone_override: None,
            phone: Some("79001234567".into()),
            status: Status::Started,
            command_id: None,
            mango_code: Some(1000),
            error: None,
            outcome: None,
            attempts: 1,
            contact_checks: 0,
            event_sent_at: None,
            comment_added_at: None,
            started_at: Some(t),
            finished_at: None,
            created_at: t,
            updated_at: t,
            call_outcome: None,
            manager_extension: None,
            talk_seconds: None,
            client_connected_at: None,
            call_ended_at: None,
            scheduled_for: None,
            outcome_reported_at: None,
        }
    }

    fn ended(outcome: &str, manager: Option<&str>, at: &str) -> Attempt {
        Attempt {
            callback_id: "cb1".into(),
            n: 1,
            member_id: "m1".into(),
            command_id: "c1".into(),
            group_kind: "trainee".into(),
            group_extension: "002".into(),
            entry_id: None,
            placed_at: utc(at),
            outcome: Some(outcome.into()),
            manager_extension: manager.map(str::to_owned),
            client_connected_at: None,
            talk_seconds: None,
            disconnect_reason: None,
            ended_at: Some(utc(at)),
        }
    }

    fn job(at: &str, next_group: Group, ext: &str, max_attempts: i32) -> AnnounceRetry {
        AnnounceRetry {
            callback_id: "cb1".into(),
            ended: 1,
            at: utc(at),
            next_group,
            next_extension: ext.into(),
            max_attempts,
        }
    }

    #[test]
    fn a_retry_note_names_the_outcome_the_local_time_the_attempt_and_the_group_in_both_languages() {
        let a = ended("manager_missed", None, "2026-12-03 11:30");
        let j = job("2026-12-03 11:35", Group::Experienced, "001", 3);
        let zone = ("Europe/Moscow", 30);
        assert_eq!(
            retry_text(&callback(), &a, &j, zone, Lang::Ru),
            "Mango Office: Никто в группе 002 не ответил. Перезвоним в 14:35 (попытка 2 из 3), группе опытных менеджеров 001"
        );
        assert_eq!(
            retry_text(&callback(), &a, &j, zone, Lang::En),
            "Mango Office: Nobody in group 002 answered. Calling again at 14:35 (attempt 2 of 3), the experienced group 001"
        );
    }

    #[test]
    fn a_retry_on_another_day_shows_its_date_and_a_client_miss_names_the_manager() {
        // 17:55 in Moscow; working hours moved the retry to the next morning.
        let a = ended("client_missed", Some("101"), "2026-12-03 14:55");
        let j = job("2026-12-04 06:00", Group::Trainee, "002", 2);
        let zone = ("Europe/Moscow", 30);
        assert_eq!(
            retry_text(&callback(), &a, &j, zone, Lang::Ru),
            "Mango Office: Клиент не ответил (ответил менеджер 101). Перезвоним в 04.12.2026 в 09:00 (попытка 2 из 2), группе стажёров 002"
        );
        assert!(retry_text(&callback(), &a, &j, zone, Lang::En).ends_with(
            "Calling again at 2026-12-04 at 09:00 (attempt 2 of 2), the trainee group 002"
        ));
    }
}
