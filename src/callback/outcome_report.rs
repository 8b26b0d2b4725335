//! Reporting how a callback's call ended: the [`ReportOutcome`] job (a timeline comment in the
//! portal's language, and the waiting robot's `bizproc.event.send` carrying the outcome) and the
//! [`CloseUnknown`] job that ends an attempt with no summary within the portal's bound.

use diesel::QueryResult;
use serde_json::json;

use super::outcome::{self, Attempt, CloseUnknown, ReportOutcome, SettleLate};
use super::report::{add_deal_comment, send_robot_event};
use super::{store, Callback};
use crate::context::Context;
use crate::jobs::{Job, JobError};
use crate::mango::events::Outcome;
use crate::portal::{store as portal_store, Lang};

/// A talk time as people say it: "2 мин 13 с" / "2 min 13 s".
pub fn duration_text(seconds: i64, lang: Lang) -> String {
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    let (hu, mu, su) = match lang {
        Lang::Ru => ("ч", "мин", "с"),
        Lang::En => ("h", "min", "s"),
    };
    let mut parts = Vec::new();
    if h > 0 {
        parts.push(format!("{h} {hu}"));
    }
    if h > 0 || m > 0 {
        parts.push(format!("{m} {mu}"));
    }
    parts.push(format!("{s} {su}"));
    parts.join(" ")
}

/// The timeline comment for a callback's outcome, in the portal's language. `attempt` is the
/// last attempt (its disconnect reason tells a manager who hung up from a client who did not
/// answer); `wait_minutes` is the bound an `unknown` outcome waited.
pub fn outcome_text(
    cb: &Callback,
    attempt: Option<&Attempt>,
    wait_minutes: i32,
    lang: Lang,
) -> String {
    let manager = cb.manager_extension.as_deref().unwrap_or("-");
    let group = cb.group_extension.as_deref().unwrap_or("-");
    let reason = attempt.and_then(|a| a.disconnect_reason);
    let text = match cb.call_outcome.as_deref().and_then(Outcome::parse) {
        Some(Outcome::Answered) => {
            let talk = duration_text(i64::from(cb.talk_seconds.unwrap_or(0)), lang);
            match lang {
                Lang::Ru => format!("Менеджер {manager} ответил, клиент на связи, {talk}"),
                Lang::En => format!("Manager {manager} answered, client connected, {talk}"),
            }
        }
        Some(Outcome::ManagerMissed) => match lang {
            Lang::Ru => format!("Никто в группе {group} не ответил"),
            Lang::En => format!("Nobody in group {group} answered"),
        },
        // 1110: the caller's side — here the manager, who is rung first — hung up.
        Some(Outcome::ClientMissed) if reason == Some(1110) => match lang {
            Lang::Ru => format!("Клиент не ответил: менеджер {manager} положил трубку раньше"),
            Lang::En => format!("Client did not answer: manager {manager} hung up first"),
        },
        Some(Outcome::ClientMissed) => match lang {
            Lang::Ru => format!("Клиент не ответил (ответил менеджер {manager})"),
            Lang::En => format!("Client did not answer (manager {manager} answered)"),
        },
        Some(Outcome::Failed) => {
            let code = cb.mango_code.filter(|c| *c != 1000).or(reason).unwrap_or(0);
            let what = crate::mango::describe_code(u32::try_from(code).unwrap_or(0)).1;
            match lang {
                Lang::Ru => format!("Звонок не состоялся: Mango, код {code} ({what})"),
                Lang::En => format!("The call failed: Mango code {code} ({what})"),
            }
        }
        Some(Outcome::Unknown) | None => match lang {
            Lang::Ru => {
                format!("Итог звонка неизвестен: Mango не прислал итог за {wait_minutes} мин")
            }
            Lang::En => format!(
                "The call's outcome is unknown: Mango sent no summary within {wait_minutes} min"
            ),
        },
    };
    format!("Mango Office: {text}")
}

/// The business process's return values with the outcome (see `portal::robot`'s
/// RETURN_PROPERTIES).
pub fn return_values(cb: &Callback) -> serde_json::Value {
    let mut values = super::report::event_values(cb);
    values["manager_extension"] = json!(cb.manager_extension.clone().unwrap_or_default());
    values["talk_seconds"] = json!(cb.talk_seconds.unwrap_or(0));
    values
}

impl Job for ReportOutcome {
    const KIND: &'static str = "report_outcome";
    /// As the callback's report: a waiting business process depends on it.
    const MAX_ATTEMPTS: i32 = 20;

    async fn run(self, ctx: &Context, job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        let db = &ctx.shared.db;
        let (id, now) = (self.callback_id.clone(), ctx.shared.clock.now());
        let found = db
            .run(move |c| -> QueryResult<_> {
                let Some(cb) = store::find(c, &id)? else {
                    return Ok(None);
                };
                let Some(portal) = portal_store::find(c, &cb.member_id)? else {
                    return Ok(None);
                };
                let wait =
                    portal_store::settings_or_default(c, &cb.member_id, now)?.outcome_wait_minutes;
                let attempt = outcome::last_attempt(c, &cb.id)?;
                Ok(Some((cb, portal, wait, attempt)))
            })
            .await?;
        let Some((cb, portal, wait, attempt)) = found.filter(|f| f.1.is_active()) else {
            return Ok(());
        };
        // The robot's one event: still owed when the callback's report held it back for the
        // outcome (waiting mode), or this report ran first.
        if cb.event_sent_at.is_none() {
            let log = cb.call_outcome.as_deref().unwrap_or("-");
            send_robot_event(ctx, &cb, return_values(&cb), log).await?;
        }
        if cb.outcome_reported_at.is_none() && !cb.deal_id.is_empty() {
            let text = outcome_text(&cb, attempt.as_ref(), wait, Lang::parse(&portal.lang));
            // A deal that does not take it is logged there; the outcome is reported without it.
            add_deal_comment(ctx, &cb, &text, job.attempts > 1).await?;
        }
        let cid = cb.id.clone();
        db.run(move |c| store::mark_outcome_reported(c, &cid, now))
            .await?;
        tracing::info!(callback = %cb.id, outcome = cb.call_outcome.as_deref().unwrap_or("-"), "call outcome reported");
        Ok(())
    }
}

impl Job for CloseUnknown {
    const KIND: &'static str = "close_unknown_outcome";

    async fn run(self, ctx: &Context, _job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        let (id, n, now) = (self.callback_id.clone(), self.n, ctx.shared.clock.now());
        let closed = ctx
            .shared
            .db
            .run(move |c| outcome::close_unknown(c, &id, n, now))
            .await?;
        if closed {
            tracing::warn!(callback = %self.callback_id, attempt = n, "no summary from Mango within the bound: outcome unknown");
            ctx.shared.notify.notify_one();
        }
        Ok(())
    }
}

impl Job for SettleLate {
    const KIND: &'static str = "settle_late_outcome";

    async fn run(self, ctx: &Context, _job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        let (id, n, now) = (self.callback_id.clone(), self.n, ctx.shared.clock.now());
        let ended = ctx
            .shared
            .db
            .run(move |c| outcome::settle_late(c, &id, n, now))
            .await?;
        if ended {
            tracing::warn!(callback = %self.callback_id, attempt = n, "Mango's summary applied without some call events");
            ctx.shared.notify.notify_one();
        }
        Ok(())
    }
}
