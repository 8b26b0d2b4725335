//! The callback's two jobs: [`PlaceCall`] (find the phone, order Mango's `callback_group`) and
//! [`ReportCallback`] (answer the business process and write on the deal's timeline).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{status, store, Callback};
use crate::bitrix::BitrixError;
use crate::context::Context;
use crate::jobs::{Job, JobError};
use crate::mango::{CallbackGroup, Credentials, MangoError};
use crate::phone;
use crate::portal::{store as portal_store, Lang, PortalSettings};

/// Mango's documented limit for callback commands per account and second.
pub const MANGO_CALLBACKS_PER_SECOND: i64 = 4;
/// The window we count them in: a second plus a margin for the network's jitter, because Mango
/// counts when the requests arrive, not when we sent them.
const MANGO_RATE_WINDOW_US: i64 = 1_150_000;
/// Mango attempts for one callback when it is surely not accepted (429, refused connection).
const MAX_CALL_ATTEMPTS: i32 = 5;
/// Delay between checks for a contact that a web form links a few seconds after the deal.
pub const CONTACT_RECHECK: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
pub struct PlaceCall {
    pub callback_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReportCallback {
    pub callback_id: String,
}

fn bitrix_error(e: BitrixError) -> JobError {
    if e.is_transient() {
        JobError::Transient(e.to_string())
    } else {
        JobError::Permanent(e.to_string())
    }
}

/// The client phone found for a deal, or why there is none.
enum PhoneLookup {
    Found(String),
    /// No contact linked (yet).
    NoContact,
    /// A contact without any phone.
    NoPhone,
}

fn as_id(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() && s != "0" => Some(s.clone()),
        _ => None,
    }
}

/// MOBILE first, then WORK, then whatever comes first.
fn pick_phone(contact: &Value) -> Option<String> {
    let phones = contact.get("PHONE")?.as_array()?;
    let value_of = |p: &Value| {
        p.get("VALUE")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    for wanted in ["MOBILE", "WORK"] {
        if let Some(v) = phones
            .iter()
            .filter(|p| p.get("VALUE_TYPE").and_then(Value::as_str) == Some(wanted))
            .find_map(value_of)
        {
            return Some(v);
        }
    }
    phones.iter().find_map(value_of)
}

impl PlaceCall {
    /// Deal → primary contact → phone, in one batch call.
    async fn lookup_phone(
        ctx: &Context,
        member_id: &str,
        deal_id: &str,
    ) -> Result<PhoneLookup, BitrixError> {
        // The portal runs the commands in the order sent (serde_json keeps it: `preserve_order`),
        // so `items` must come before the `$result[items]` that uses it.
        let cmds = vec![
            (
                "items".to_owned(),
                format!("crm.deal.contact.items.get?id={deal_id}"),
            ),
            ("deal".to_owned(), format!("crm.deal.get?id={deal_id}")),
            (
                "contact".to_owned(),
                "crm.contact.get?id=$result[items][0][CONTACT_ID]".to_owned(),
            ),
        ];
        let batch = ctx.bitrix.batch(member_id, &cmds).await?;
        let items = batch
            .result
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let primary = items
            .iter()
            .find(|i| i.get("IS_PRIMARY").and_then(Value::as_str) == Some("Y"))
            .or(items.first());
        let contact_id = primary
            .and_then(|i| i.get("CONTACT_ID"))
            .and_then(as_id)
            .or_else(|| {
                batch
                    .result
                    .get("deal")
                    .and_then(|d| d.get("CONTACT_ID"))
                    .and_then(as_id)
            });
        let Some(contact_id) = contact_id else {
            return Ok(PhoneLookup::NoContact);
        };
        let first_item = items
            .first()
            .and_then(|i| i.get("CONTACT_ID"))
            .and_then(as_id);
        // The batch fetched the first linked contact; the primary one may be another.
        let contact = match batch.result.get("contact") {
            Some(c) if first_item.as_deref() == Some(contact_id.as_str()) => c.clone(),
            _ => {
                ctx.bitrix
                    .call(member_id, "crm.contact.get", json!({ "id": contact_id }))
                    .await?
            }
        };
        Ok(pick_phone(&contact).map_or(PhoneLookup::NoPhone, PhoneLookup::Found))
    }
}

/// Ends a callback that never reached Mango (no phone, not configured, given up) with its reason.
async fn end_without_call(
    ctx: &Context,
    cb: &Callback,
    st: &'static str,
    reason: impl Into<String>,
) -> Result<(), JobError> {
    finish(ctx, cb, st, None, None, None, Some(reason.into())).await
}

/// Ends the callback with a terminal status and queues its report.
#[allow(clippy::too_many_arguments)]
async fn finish(
    ctx: &Context,
    cb: &Callback,
    st: &'static str,
    ext: Option<String>,
    phone: Option<String>,
    code: Option<i32>,
    error: Option<String>,
) -> Result<(), JobError> {
    let now = ctx.shared.clock.now();
    let cb2 = cb.clone();
    let changed = ctx
        .shared
        .db
        .run(move |c| {
            store::finish(
                c,
                &cb2,
                st,
                ext.as_deref(),
                phone.as_deref(),
                code,
                error.as_deref(),
                now,
            )
        })
        .await?;
    if changed {
        tracing::info!(callback = %cb.id, deal = %cb.deal_id, status = st, "callback finished");
        ctx.shared.notify.notify_one();
    }
    Ok(())
}

impl Job for PlaceCall {
    const KIND: &'static str = "place_call";
    const MAX_ATTEMPTS: i32 = 12;

    /// Whatever goes wrong, the callback ends in a terminal state with a report: a buried job
    /// would leave the business process waiting and the deal blocked for new runs.
    async fn run(self, ctx: &Context, job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        let id = self.callback_id.clone();
        let give_up = |e: String| async move {
            let Some(cb) = ctx.shared.db.run(move |c| Ok(store::find(c, &id)?)).await? else {
                return Ok(());
            };
            end_without_call(ctx, &cb, status::FAILED, e).await
        };
        match self.place(ctx).await {
            Err(JobError::Permanent(e)) => give_up(e).await,
            Err(JobError::Transient(e)) if job.attempts >= job.max_attempts => give_up(e).await,
            other => other,
        }
    }
}

impl PlaceCall {
    async fn place(&self, ctx: &Context) -> Result<(), JobError> {
        let db = &ctx.shared.db;
        let id = self.callback_id.clone();
        let Some(cb) = db.run(move |c| Ok(store::find(c, &id)?)).await? else {
            return Ok(());
        };
        if cb.status == status::CALLING {
            // A previous run sent (or was sending) the command and stopped before recording the
            // answer. Mango does not deduplicate command_id, so sending again could ring twice.
            let msg = "interrupted while ordering the call; not repeated so nobody is rung twice"
                .to_owned();
            return end_without_call(ctx, &cb, status::FAILED, msg).await;
        }
        if cb.status != status::QUEUED {
            return Ok(());
        }
        let (mid, now) = (cb.member_id.clone(), ctx.shared.clock.now());
        let settings: PortalSettings = db
            .run(move |c| Ok(portal_store::settings_or_default(c, &mid, now)?))
            .await?;

        let group_kind = cb.group_kind.as_deref().unwrap_or("trainee");
        let extension = if group_kind == "experienced" {
            &settings.experienced_extension
        } else {
            &settings.trainee_extension
        };
        let creds = match (
            &settings.mango_api_key,
            settings.mango_api_salt.as_deref().map(|s| {
                let slot = crate::crypto::Slot::mango_api_salt(&settings.member_id);
                ctx.shared.cipher.open(slot, s)
            }),
        ) {
            (Some(key), Some(Ok(salt))) if !key.is_empty() && !salt.is_empty() => Credentials {
                api_key: key.clone(),
                api_salt: salt,
            },
            _ => {
                return end_without_call(
                    ctx,
                    &cb,
                    status::FAILED,
                    "Mango keys are not set in the app's settings",
                )
                .await
            }
        };
        if extension.is_empty() || settings.line_number.is_empty() {
            let msg = format!("the {group_kind} group extension or the outgoing line is not set in the app's settings");
            return end_without_call(ctx, &cb, status::FAILED, msg).await;
        }

        // The phone: the robot's override, else the deal's primary contact (possibly linked late).
        let raw_phone = match cb
            .phone_override
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            Some(p) => p.to_owned(),
            None => match PlaceCall::lookup_phone(ctx, &cb.member_id, &cb.deal_id)
                .await
                .map_err(bitrix_error)?
            {
                PhoneLookup::Found(p) => p,
                PhoneLookup::NoContact => {
                    let waited = (now - cb.created_at).num_seconds();
                    if waited < i64::from(settings.contact_wait_seconds) {
                        let cid = cb.id.clone();
                        db.run(move |c| Ok(store::count_contact_check(c, &cid, now)?))
                            .await?;
                        let at =
                            now + chrono::Duration::from_std(CONTACT_RECHECK).unwrap_or_default();
                        return Err(JobError::RetryAt(
                            at,
                            "no contact linked to the deal yet".into(),
                        ));
                    }
                    let msg = format!(
                        "no contact linked to the deal after {}s",
                        settings.contact_wait_seconds
                    );
                    return end_without_call(ctx, &cb, status::NO_PHONE, msg).await;
                }
                PhoneLookup::NoPhone => {
                    return end_without_call(
                        ctx,
                        &cb,
                        status::NO_PHONE,
                        "the deal's contact has no phone number",
                    )
                    .await
                }
            },
        };
        let phone = match phone::normalize(&raw_phone) {
            Ok(p) => p,
            Err(e) => {
                return end_without_call(
                    ctx,
                    &cb,
                    status::NO_PHONE,
                    format!("invalid phone number: {e}"),
                )
                .await
            }
        };

        // Mango allows 4 callback commands per second per account, across all our instances.
        let bucket = format!(
            "mango:{}",
            crate::crypto::sha256_hex(creds.api_key.as_bytes())
        );
        loop {
            let now_us = ctx.shared.clock.now_utc().timestamp_micros();
            let b = bucket.clone();
            if db
                .run(move |c| {
                    store::take_rate_slot(
                        c,
                        &b,
                        now_us,
                        MANGO_CALLBACKS_PER_SECOND,
                        MANGO_RATE_WINDOW_US,
                    )
                })
                .await?
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let command_id = super::command_id(&cb.member_id, &cb.deal_id, &cb.id);
        let (cid, ext, ph, cmd_id) = (
            cb.id.clone(),
            extension.clone(),
            phone.as_str().to_owned(),
            command_id.clone(),
        );
        let now = ctx.shared.clock.now();
        if !db
            .run(move |c| Ok(store::mark_calling(c, &cid, &ext, &ph, &cmd_id, now)?))
            .await?
        {
            return Ok(());
        }
        let cmd = CallbackGroup {
            command_id,
            from: extension.clone(),
            to: phone.as_str().to_owned(),
            line_number: settings.line_number.clone(),
        };
        let answer = ctx.mango.callback_group(&creds, &cmd).await;
        let (ext, ph) = (Some(extension.clone()), Some(phone.as_str().to_owned()));
        let mid = cb.member_id.clone();
        match answer {
            Ok(_) => {
                let now = ctx.shared.clock.now();
                db.run(move |c| Ok(portal_store::record_mango_status(c, &mid, None, now)?))
                    .await?;
                finish(ctx, &cb, status::STARTED, ext, ph, Some(1000), None).await
            }
            Err(e) if e.retryable() && cb.attempts + 1 < MAX_CALL_ATTEMPTS => {
                let (cid, msg, now) = (cb.id.clone(), e.to_string(), ctx.shared.clock.now());
                db.run(move |c| Ok(store::back_to_queued(c, &cid, &msg, now)?))
                    .await?;
                Err(JobError::Transient(format!(
                    "Mango did not accept the command, will retry: {e}"
                )))
            }
            Err(e) => {
                let code = e.code().and_then(|c| i32::try_from(c).ok());
                let msg = match &e {
                    MangoError::Rejected { code, .. } => format!("Mango {code}: {}", crate::mango::describe_code(*code).1),
                    MangoError::Unavailable { maybe_accepted: true, .. } => format!("Mango did not answer; the call may have been placed, so it is not repeated ({e})"),
                    other => other.to_string(),
                };
                let (m, now, stored) = (mid.clone(), ctx.shared.clock.now(), msg.clone());
                db.run(move |c| {
                    Ok(portal_store::record_mango_status(
                        c,
                        &m,
                        Some(&stored),
                        now,
                    )?)
                })
                .await?;
                finish(ctx, &cb, status::FAILED, ext, ph, code, Some(msg)).await
            }
        }
    }
}

/// The timeline comment for a finished callback, in the portal's language.
pub fn comment_text(cb: &Callback, lang: Lang) -> String {
    let group = match (cb.group_kind.as_deref(), lang) {
        (Some("experienced"), Lang::Ru) => "опытных менеджеров",
        (Some("experienced"), Lang::En) => "experienced managers",
        (_, Lang::Ru) => "стажёров",
        (_, Lang::En) => "trainees",
    };
    let ext = cb.group_extension.as_deref().unwrap_or("-");
    let phone = cb.phone.as_deref().unwrap_or("-");
    let error = localized_reason(cb, lang);
    match (cb.status.as_str(), lang) {
        (status::STARTED, Lang::Ru) => format!("Mango Office: звоним группе {group} (номер группы {ext}); когда менеджер ответит, наберём клиента +{phone}."),
        (status::STARTED, Lang::En) => format!("Mango Office: ringing the {group} group (extension {ext}); once a manager answers, the client +{phone} is dialed."),
        (status::DUPLICATE, Lang::Ru) => "Mango Office: повторный запуск робота для этой сделки — звонок уже заказан недавно, второй не заказываем.".into(),
        (status::DUPLICATE, Lang::En) => "Mango Office: repeated robot run for this deal — a call was ordered recently, so no second one.".into(),
        (status::NO_PHONE, Lang::Ru) => format!("Mango Office: звонок не заказан — нет телефона клиента ({error})."),
        (status::NO_PHONE, Lang::En) => format!("Mango Office: no call ordered — no client phone ({error})."),
        (_, Lang::Ru) => format!("Mango Office: звонок не заказан — ошибка: {error}"),
        (_, Lang::En) => format!("Mango Office: no call ordered — error: {error}"),
    }
}

/// The reason of a callback without a call, in the portal's language. `callbacks.error` is kept in
/// English (logs, the business process's `error` value); the known reasons are translated here.
fn localized_reason(cb: &Callback, lang: Lang) -> String {
    let e = cb.error.as_deref().unwrap_or("");
    if let Some(code) = cb
        .mango_code
        .filter(|c| *c != 1000)
        .and_then(|c| u32::try_from(c).ok())
    {
        let (ru, en) = crate::mango::describe_code(code);
        return format!("Mango {code}: {}", lang.pick(ru, en));
    }
    if lang == Lang::En {
        return e.to_owned();
    }
    let ru = if e.starts_with("no contact linked") {
        "к сделке не привязан контакт"
    } else if e.starts_with("the deal's contact has no phone") {
        "у контакта сделки нет телефона"
    } else if e.starts_with("invalid phone number") {
        "номер телефона клиента некорректен"
    } else if e.contains("not set in the app's settings") {
        "в настройках приложения не заданы ключи Mango, номер группы или линия"
    } else if e.starts_with("interrupted while ordering") {
        "заказ звонка прервался; повторно не заказываем, чтобы не позвонить дважды"
    } else {
        e
    };
    ru.to_owned()
}

/// How long a report waits for a portal to be re-authorised before it is given up.
const REPORT_WAIT_FOR_REAUTH_DAYS: i64 = 3;

/// Report errors: a portal that needs re-authorisation is waited for (an admin opening the app
/// heals it), so the business process still gets its answer.
fn report_error(ctx: &Context, cb: &Callback, e: BitrixError) -> JobError {
    let now = ctx.shared.clock.now();
    match e {
        BitrixError::NeedsReauth { .. }
            if now - cb.created_at < chrono::Duration::days(REPORT_WAIT_FOR_REAUTH_DAYS) =>
        {
            JobError::RetryAt(now + chrono::Duration::minutes(15), e.to_string())
        }
        e => bitrix_error(e),
    }
}

impl Job for ReportCallback {
    const KIND: &'static str = "report_callback";
    /// A waiting business process depends on this answer: with backoff capped at 10 minutes,
    /// 20 attempts ride out a Bitrix24 outage of about two and a half hours.
    const MAX_ATTEMPTS: i32 = 20;

    async fn run(self, ctx: &Context, _job: &crate::jobs::queue::JobRow) -> Result<(), JobError> {
        let db = &ctx.shared.db;
        let id = self.callback_id.clone();
        let found = db
            .run(move |c| {
                let Some(cb) = store::find(c, &id)? else {
                    return Ok(None);
                };
                let portal = portal_store::find(c, &cb.member_id)?;
                Ok(portal.map(|p| (cb, p)))
            })
            .await?;
        let Some((cb, portal)) = found.filter(|(_, p)| p.is_active()) else {
            return Ok(());
        };
        if cb.event_sent_at.is_none() {
            if let Some(token) = &cb.event_token {
                let values = json!({
                    "result": cb.status,
                    "group_extension": cb.group_extension.clone().unwrap_or_default(),
                    "command_id": cb.command_id.clone().unwrap_or_default(),
                    "error": cb.error.clone().unwrap_or_default(),
                });
                let params = json!({ "EVENT_TOKEN": token, "RETURN_VALUES": values, "LOG_MESSAGE": format!("mango-callback: {}", cb.status) });
                match ctx
                    .bitrix
                    .call(&cb.member_id, "bizproc.event.send", params)
                    .await
                {
                    Ok(_) => {}
                    // A refused event token will never be accepted; the comment still goes out.
                    Err(e) if e.code() == Some("ACCESS_DENIED") => {
                        tracing::error!(callback = %cb.id, error = %e, "bizproc.event.send refused the event token")
                    }
                    Err(e) => return Err(report_error(ctx, &cb, e)),
                }
            }
            let (cid, now) = (cb.id.clone(), ctx.shared.clock.now());
            db.run(move |c| Ok(store::mark_event_sent(c, &cid, now)?))
                .await?;
        }
        // A run recorded without a deal (the robot ran on a lead, say) has nowhere to comment.
        if cb.comment_added_at.is_none() && !cb.deal_id.is_empty() {
            let text = comment_text(&cb, Lang::parse(&portal.lang));
            let params = json!({ "fields": { "ENTITY_ID": cb.deal_id, "ENTITY_TYPE": "deal", "COMMENT": text } });
            ctx.bitrix
                .call(&cb.member_id, "crm.timeline.comment.add", params)
                .await
                .map_err(|e| report_error(ctx, &cb, e))?;
            let (cid, now) = (cb.id.clone(), ctx.shared.clock.now());
            db.run(move |c| Ok(store::mark_comment_added(c, &cid, now)?))
                .await?;
        }
        Ok(())
    }
}
