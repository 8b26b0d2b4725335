//! The [`ReportCallback`] job, reporting many callbacks of one portal in one Bitrix24 `batch`: a
//! first run adopts the portal's other due reports ([`queue::adopt`]) and sends every
//! `bizproc.event.send` and timeline comment of them in one request. A lone report is one
//! request for both, sent at once; while the portal's budget runs low, and for 10 s after the
//! last report that found it so ([`crate::bitrix::limiter::SHORT_FOR`]), reports wait for the
//! next whole-second window so that those arriving meanwhile share a request.

use std::time::Instant;

use chrono::NaiveDateTime;
use serde_json::{json, Value};
use tracing::Instrument;

use super::report::{comment_text, event_values, report_error, with_portal, ANSWER_UNKNOWN};
use super::{store, Callback, ReportCallback, Status};
use crate::bitrix::client::BatchResult;
use crate::bitrix::limiter::{Budget, SHORT_FOR};
use crate::bitrix::BitrixError;
use crate::context::Context;
use crate::jobs::queue::{self, JobRow};
use crate::jobs::{cause_chain, worker, Job, JobError};
use crate::portal::Lang;

/// Reports gathered in a low budget go out at the next multiple of this, so that all of them
/// come due together and one run takes them.
const WINDOW_MS: i64 = crate::jobs::GATHER_WINDOW.as_millis() as i64;
/// The note of a report waiting for its window; a run that finds it goes without looking at
/// the budget again (else a busy portal's reports could be put off window after window).
pub const PACED: &str = "gathering: reports wait for the portal's next shared batch";
/// While more than this share of the portal's burst is left, a report goes at once: a lone
/// callback on a quiet portal (its lookup took one request) is reported without waiting.
const SEND_AT_ONCE_SPARE: f64 = 0.9;
/// Two commands per report, 50 per `batch`.
const REPORTS_PER_BATCH: i64 = 25;

/// One report's part of the batch.
struct Item {
    /// `None` for the run's own job.
    job: Option<JobRow>,
    cb: Callback,
    /// `bizproc.event.send`'s parameters, when the business process still waits for them.
    event: Option<Value>,
    /// The timeline comment, when it is still to be added.
    comment: Option<String>,
}

impl Job for ReportCallback {
    const KIND: &'static str = "report_callback";
    /// A waiting business process depends on this answer: with backoff capped at 10 minutes,
    /// 20 attempts ride out a Bitrix24 outage of about two and a half hours.
    const MAX_ATTEMPTS: i32 = 20;

    /// A first run reports together with the portal's other due reports, in one Bitrix24
    /// `batch` (this module); a retried one runs alone, looking before it adds.
    async fn run(self, ctx: &Context, job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        if job.attempts <= 1 {
            return run(self, ctx, job).await;
        }
        self.run_alone(ctx, job).await
    }
}

/// The gathering run of a first report (see the module).
pub(super) async fn run(own: ReportCallback, ctx: &Context, job: &JobRow) -> Result<(), JobError> {
    let Some(member_id) = job.member_id.clone() else {
        return own.run_alone(ctx, job).await;
    };
    let paced = job
        .last_error
        .as_deref()
        .is_some_and(|e| e.starts_with(PACED));
    if !paced {
        let budget = ctx
            .shared
            .limiter
            .gather_or_send(&member_id, SEND_AT_ONCE_SPARE)
            .await?;
        let note = match budget {
            Budget::Plenty => None,
            Budget::Low(spare) => Some(format!(
                "{PACED}: {:.0} % of its request budget left",
                spare * 100.0
            )),
            Budget::RecentlyLow => Some(format!(
                "{PACED}: its request budget ran low within the last {} s",
                SHORT_FOR.as_secs()
            )),
        };
        if let Some(note) = note {
            return Err(JobError::RetryAt(next_window(ctx.shared.clock.now()), note));
        }
    }
    let adopted = adopt(ctx, job, &member_id).await.unwrap_or_else(|e| {
        // Not fatal: this report still goes, the others come on their own.
        tracing::warn!(error = %e, "adopting the portal's other due reports failed");
        Vec::new()
    });
    let started = Instant::now();
    let mut items = Vec::with_capacity(adopted.len() + 1);
    let mut own_result: Option<Result<(), JobError>> = None;
    match prepare(ctx, None, own.callback_id, own.reason.as_ref()).await {
        Ok(Some(item)) => items.push(item),
        Ok(None) => own_result = Some(Ok(())),
        Err(e) => own_result = Some(Err(e)),
    }
    for row in adopted {
        let report: Result<ReportCallback, _> = serde_json::from_str(&row.payload);
        let prepared = match report {
            Ok(r) => prepare(ctx, Some(row.clone()), r.callback_id, r.reason.as_ref()).await,
            Err(e) => Err(JobError::Permanent(
                anyhow::Error::new(e).context("payload of report_callback does not parse"),
            )),
        };
        match prepared {
            Ok(Some(item)) => items.push(item),
            Ok(None) => finish_adopted(ctx, &row, Ok(()), started).await,
            Err(e) => finish_adopted(ctx, &row, Err(e), started).await,
        }
    }
    let results = send(ctx, &member_id, &items).await;
    let mut done = Vec::new();
    for (item, result) in items.into_iter().zip(results) {
        match (item.job, result) {
            (None, result) => own_result = Some(result),
            (Some(row), Ok(())) => done.push(row),
            (Some(row), failed) => finish_adopted(ctx, &row, failed, started).await,
        }
    }
    complete_adopted(ctx, done, started).await;
    own_result.unwrap_or(Ok(()))
}

/// Finishes the adopted jobs whose reports went, in one transaction (one disk sync for all).
async fn complete_adopted(ctx: &Context, done: Vec<JobRow>, started: Instant) {
    if done.is_empty() {
        return;
    }
    let now = ctx.shared.clock.now();
    let jobs: Vec<(String, String)> = done
        .iter()
        .map(|r| (r.id.clone(), r.locked_by.clone().unwrap_or_default()))
        .collect();
    let completed = ctx
        .shared
        .db
        .run(move |c| {
            crate::db::write_tx(c, |c| {
                let mut n = 0;
                for (id, worker) in &jobs {
                    n += usize::from(queue::complete(c, id, worker, now)?);
                }
                Ok::<_, diesel::result::Error>(n)
            })
        })
        .await;
    let seconds = started.elapsed().as_secs_f64();
    for _ in &done {
        ctx.shared.metrics.job_run(
            ReportCallback::KIND,
            crate::metrics::JobOutcome::Done,
            seconds,
        );
    }
    match completed {
        Ok(n) if n == done.len() => {
            tracing::info!(jobs = n, "adopted report jobs done")
        }
        Ok(n) => tracing::warn!(
            jobs = done.len(),
            recorded = n,
            "some adopted report jobs were not recorded done: their lease was lost"
        ),
        Err(e) => {
            tracing::error!(error = %e, "recording adopted report jobs done failed; their leases expire and they re-run")
        }
    }
}

/// The next whole window after `now`.
fn next_window(now: NaiveDateTime) -> NaiveDateTime {
    let ms = now.and_utc().timestamp_millis();
    let next = (ms.div_euclid(WINDOW_MS) + 1) * WINDOW_MS;
    chrono::DateTime::from_timestamp_millis(next).map_or(now, |t| t.naive_utc())
}

/// Claims the portal's other due first reports for this run's worker.
async fn adopt(ctx: &Context, job: &JobRow, member_id: &str) -> Result<Vec<JobRow>, JobError> {
    let Some(worker) = job.locked_by.clone() else {
        return Ok(Vec::new());
    };
    let (clock, member) = (ctx.shared.clock.clone(), member_id.to_owned());
    let lease = chrono::Duration::from_std(ctx.shared.settings.job_lease)
        .unwrap_or(chrono::Duration::seconds(20));
    let adopted = ctx
        .shared
        .db
        .run(move |c| {
            let now = clock.shift(crate::db::database_now(c)?);
            let limit = REPORTS_PER_BATCH - 1;
            Ok::<_, crate::db::DbError>(queue::adopt(
                c,
                &worker,
                &member,
                ReportCallback::KIND,
                now,
                now + lease,
                limit,
            )?)
        })
        .await?;
    if !adopted.is_empty() {
        tracing::debug!(
            adopted = adopted.len(),
            "reports of the portal gathered into one batch"
        );
    }
    Ok(adopted)
}

/// What the report of `callback_id` still has to send; `None` when nothing (already reported,
/// the portal is gone).
async fn prepare(
    ctx: &Context,
    job: Option<JobRow>,
    callback_id: String,
    reason: Option<&super::Reason>,
) -> Result<Option<Item>, JobError> {
    let now = ctx.shared.clock.now();
    let found = ctx
        .shared
        .db
        .read(move |c| with_portal(c, &callback_id, now))
        .await?;
    let Some((cb, portal, settings)) = found else {
        return Ok(None);
    };
    // A robot that waits for the call's outcome gets its one event from the outcome's report.
    let held_for_outcome = settings.wait_for_outcome && cb.status == Status::Started;
    let mut event = None;
    if cb.event_sent_at.is_none() && !held_for_outcome {
        match &cb.event_token {
            Some(token) => {
                event = Some(json!({
                    "EVENT_TOKEN": token,
                    "RETURN_VALUES": event_values(&cb),
                    "LOG_MESSAGE": format!("mango-callback: {}", cb.status.as_str()),
                }));
            }
            // Nobody waits for an event: answered as far as anyone can tell.
            None => {
                let (cid, now) = (cb.id.clone(), ctx.shared.clock.now());
                ctx.shared
                    .db
                    .run(move |c| store::mark_event_sent(c, &cid, now))
                    .await?;
            }
        }
    }
    // A run recorded without a deal (the robot ran on a lead, say) has nowhere to comment.
    let comment = (cb.comment_added_at.is_none() && !cb.deal_id.is_empty())
        .then(|| comment_text(&cb, reason, Lang::parse(&portal.lang)));
    if event.is_none() && comment.is_none() {
        return Ok(None);
    }
    Ok(Some(Item {
        job,
        cb,
        event,
        comment,
    }))
}

/// Sends every item's commands in one `batch` and records what went; one result per item.
async fn send(ctx: &Context, member_id: &str, items: &[Item]) -> Vec<Result<(), JobError>> {
    if items.is_empty() {
        return Vec::new();
    }
    let mut commands = Vec::with_capacity(items.len() * 2);
    for (i, item) in items.iter().enumerate() {
        if let Some(params) = &item.event {
            commands.push((format!("event{i}"), command("bizproc.event.send", params)));
        }
        if let Some(text) = &item.comment {
            let params = json!({ "fields": { "ENTITY_ID": item.cb.deal_id, "ENTITY_TYPE": "deal", "COMMENT": text } });
            commands.push((
                format!("comment{i}"),
                command("crm.timeline.comment.add", &params),
            ));
        }
    }
    let answer = ctx.bitrix().batch(member_id, &commands).await;
    tracing::info!(
        reports = items.len(),
        commands = commands.len(),
        ok = answer.is_ok(),
        "reports sent in one batch"
    );
    match answer {
        Ok(batch) => {
            let read: Vec<Read> = items
                .iter()
                .enumerate()
                .map(|(i, item)| read(i, item, &batch))
                .collect();
            // What went, recorded for every report in one transaction.
            let marks: Vec<(String, bool, bool)> = items
                .iter()
                .zip(&read)
                .map(|(item, r)| (item.cb.id.clone(), r.event_sent, r.comment_added))
                .collect();
            let now = ctx.shared.clock.now();
            let recorded = ctx
                .shared
                .db
                .run(move |c| {
                    crate::db::write_tx(c, |c| {
                        for (cid, event_sent, comment_added) in &marks {
                            if *event_sent {
                                store::mark_event_sent(c, cid, now)?;
                            }
                            if *comment_added {
                                store::mark_comment_added(c, cid, now)?;
                            }
                        }
                        Ok::<_, diesel::result::Error>(())
                    })
                })
                .await;
            match recorded {
                Ok(()) => read.into_iter().map(|r| r.outcome).collect(),
                Err(e) => {
                    // The batch went but is not recorded: each report's retry looks before
                    // sending again (its comment is there).
                    let e = JobError::Transient(anyhow::Error::new(e).context(ANSWER_UNKNOWN));
                    let mut results: Vec<Result<(), JobError>> =
                        items[1..].iter().map(|_| Err(copy(&e))).collect();
                    results.insert(0, Err(e));
                    results
                }
            }
        }
        Err(e) => {
            let unknown = matches!(e, BitrixError::Transport { .. });
            let first = failed(ctx, &items[0].cb, e, unknown);
            let mut results: Vec<Result<(), JobError>> =
                items[1..].iter().map(|_| Err(copy(&first))).collect();
            results.insert(0, Err(first));
            results
        }
    }
}

/// `method?query` of a `batch` command, the parameters in PHP's bracket form.
fn command(method: &str, params: &Value) -> String {
    // Our own JSON objects of strings always serialise.
    let query = serde_qs::to_string(params).unwrap_or_default();
    format!("{method}?{query}")
}

/// The job error for a batch that failed as a whole.
fn failed(ctx: &Context, cb: &Callback, e: BitrixError, unknown: bool) -> JobError {
    match report_error(ctx, cb, e) {
        JobError::Transient(e) if unknown => JobError::Transient(e.context(ANSWER_UNKNOWN)),
        other => other,
    }
}

/// The same failure for another job of the batch (errors are not `Clone`: the text is kept).
fn copy(e: &JobError) -> JobError {
    match e {
        JobError::Transient(e) => JobError::Transient(anyhow::anyhow!(cause_chain(e))),
        JobError::Permanent(e) => JobError::Permanent(anyhow::anyhow!(cause_chain(e))),
        JobError::RetryAt(at, note) => JobError::RetryAt(*at, note.clone()),
        JobError::Snooze(wait) => JobError::Snooze(*wait),
        // An ending one run recorded for its own job says nothing of another's: that one is
        // run again (no batch failure produces it).
        JobError::Recorded(ending) => JobError::Transient(anyhow::anyhow!(
            "another job of the batch recorded its own ending ({ending:?})"
        )),
    }
}

/// What a batch's answer says of one report.
struct Read {
    event_sent: bool,
    comment_added: bool,
    outcome: Result<(), JobError>,
}

/// Reads item `i`'s commands in the batch's answer.
fn read(i: usize, item: &Item, batch: &BatchResult) -> Read {
    let cb = &item.cb;
    let error_of = |key: &str| {
        batch.errors.get(key).map(|e| {
            let text = |f: &str| {
                e.get(f)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            (text("error"), text("error_description"))
        })
    };
    let mut outcome = Ok(());
    let mut event_sent = false;
    if item.event.is_some() {
        let key = format!("event{i}");
        match error_of(&key) {
            None if batch.result.contains_key(&key) => event_sent = true,
            Some((code, description)) if code == "ACCESS_DENIED" => {
                tracing::error!(callback = %cb.id, error = %description, "bizproc.event.send refused the event token");
                event_sent = true;
            }
            found => {
                let (code, description) = found.unwrap_or_default();
                let e = anyhow::anyhow!(
                    "Bitrix24 portal {}: bizproc.event.send in a batch failed: {code} {description}",
                    cb.member_id
                );
                outcome = Err(if transient(&code) {
                    JobError::Transient(e)
                } else {
                    JobError::Permanent(e)
                });
            }
        }
    }
    let mut comment_added = false;
    if item.comment.is_some() {
        let key = format!("comment{i}");
        match error_of(&key) {
            None if batch.result.contains_key(&key) => comment_added = true,
            Some((code, description)) if !transient(&code) => {
                // The deal was deleted or cannot be written by the app's user: no retry can
                // add it, and the business process has its answer.
                tracing::warn!(callback = %cb.id, deal = %cb.deal_id, code = %code, error = %description, "the deal does not take the timeline comment (deleted or not writable)");
                comment_added = true;
            }
            found => {
                let (code, description) = found.unwrap_or_default();
                if outcome.is_ok() {
                    outcome = Err(JobError::Transient(anyhow::anyhow!(
                        "Bitrix24 portal {}: crm.timeline.comment.add in a batch failed: {code} {description}",
                        cb.member_id
                    )));
                }
            }
        }
    }
    Read {
        event_sent,
        comment_added,
        outcome,
    }
}

/// A command's error worth another try: limits and server trouble, or no answer for it at all.
fn transient(code: &str) -> bool {
    code.is_empty() || crate::bitrix::crm::transient_code(code)
}

/// Records how an adopted job's part went, in its own log span.
async fn finish_adopted(
    ctx: &Context,
    row: &JobRow,
    result: Result<(), JobError>,
    started: Instant,
) {
    let span = tracing::info_span!("job", job.id = %row.id, job.kind = ReportCallback::KIND, portal = row.member_id.as_deref().unwrap_or("-"), adopted = true);
    let worker = row.locked_by.clone().unwrap_or_default();
    worker::finish(ctx, ReportCallback::KIND, &worker, row, result, started)
        .instrument(span)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_report_is_known_as_gathered_to_the_job_queue() {
        assert!(PACED.starts_with(crate::jobs::GATHER_NOTE));
    }

    #[test]
    fn a_report_waits_for_the_next_whole_second() {
        let at = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.3f").expect("time");
        assert_eq!(
            next_window(at("2026-12-03 10:00:00.250")),
            at("2026-12-03 10:00:01.000")
        );
        assert_eq!(
            next_window(at("2026-12-03 10:00:01.000")),
            at("2026-12-03 10:00:02.000"),
            "a report made at a window's edge waits for the next one"
        );
    }

    #[test]
    fn a_batch_command_carries_nested_parameters_in_php_brackets() {
        let c = command(
            "bizproc.event.send",
            &json!({"EVENT_TOKEN": "t|1", "RETURN_VALUES": {"result": "started"}, "LOG_MESSAGE": "a b+c"}),
        );
        assert!(c.starts_with("bizproc.event.send?"), "{c}");
        let query = c.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let back: Value = serde_qs::Config::new()
            .use_form_encoding(true)
            .deserialize_str(query)
            .expect("parses as PHP would");
        assert_eq!(back["RETURN_VALUES"]["result"], "started");
        assert_eq!(back["LOG_MESSAGE"], "a b+c");
        assert_eq!(back["EVENT_TOKEN"], "t|1");
    }
}
