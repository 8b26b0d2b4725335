//! What the settings page shows: the askama templates, the call log's rows, the portal's state
//! in words, and the HTML and JSON replies with the page's Content-Security-Policy.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use askama::Template;
use serde_json::json;

use super::form::{FieldErrors, SettingsInput};
use super::page_token::PageToken;
use super::speed::{human_duration, panel, SpeedPanel};
use crate::callback::history::AttemptLine;
use crate::callback::speed::SpeedReport;
use crate::callback::{Callback, Status};
use crate::context::Context;
use crate::error::AppError;
use crate::http::page::{error_html, html, json_reply};
use crate::mango::describe_code;
use crate::portal::upkeep::SELF_CHECK_ANSWER_WITHIN;
use crate::portal::{Lang, Portal, PortalSettings, Reach};

/// How many callbacks the call log shows.
pub(super) const LOG_ROWS: i64 = 50;

/// One line of the call log, ready to print (the phone already masked).
pub struct LogRow {
    pub time: String,
    pub deal_id: String,
    pub deal_url: String,
    pub phone: String,
    pub group: String,
    pub status: String,
    pub status_class: &'static str,
    pub code: String,
    pub error: String,
    pub outcome: String,
    /// How the call ended, in words, and its badge; empty while Mango has not said.
    pub call_outcome: String,
    pub call_outcome_class: &'static str,
    pub attempts: Vec<AttemptRow>,
}

/// One attempt (first call or retry) under its callback in the call log.
pub struct AttemptRow {
    pub n: i32,
    pub group: String,
    pub time: String,
    pub outcome: String,
}

/// What the page shows of a portal's calls: the latest callbacks, their attempts, and (for an
/// administrator) the speed-to-lead report.
pub struct CallLog {
    pub callbacks: Vec<Callback>,
    pub attempts: Vec<AttemptLine>,
    pub speed: Option<SpeedReport>,
}

/// The result of "Check connection", shown under the keys.
pub struct CheckView {
    pub ok: bool,
    pub message: String,
}

#[derive(Template)]
#[template(path = "app.html")]
pub struct AppPage {
    /// Prints as `ru` or `en`, carried in the URLs of later requests so they answer in the
    /// same language; `lang.t(ru, en)` picks every text of the template.
    pub lang: Lang,
    pub domain: String,
    pub admin: bool,
    pub page_token: String,
    pub reauth: bool,
    /// Why the portal needs re-authorisation (`refresh_problem`), as recorded when it was lost.
    pub reauth_reason: Option<String>,
    pub mango_configured: bool,
    pub mango_checked: bool,
    pub mango_error: Option<String>,
    pub form: SettingsInput,
    /// Only whether a salt is stored; the salt itself never reaches the template.
    pub salt_set: bool,
    pub errors: FieldErrors,
    pub notice: Option<String>,
    pub alert: Option<String>,
    pub check: Option<CheckView>,
    /// What to paste into Mango's "external system" field.
    pub events_url: String,
    /// Whether an application token is stored (robot calls and events are refused without one).
    pub app_token_received: bool,
    /// "Bitrix24 reaches the app": the self-check's answer in the page's language, and its badge.
    pub reach: String,
    pub reach_class: &'static str,
    pub rows: Vec<LogRow>,
    /// The speed-to-lead panel: administrators only, like the call log.
    pub speed: Option<SpeedPanel>,
}

/// What a refused later request looks like: an HTML page for the form, JSON for the scripts.
#[derive(Clone, Copy)]
pub(super) enum Reply {
    Html,
    Json,
}

impl Reply {
    pub(super) fn refuse(self, status: StatusCode, lang: Lang, message: &str) -> HttpResponse {
        match self {
            Reply::Html => error_html(status, lang, message),
            Reply::Json => json_reply(status, None, json!({ "ok": false, "error": message })),
        }
    }
}

pub(super) fn build_page(
    ctx: &Context,
    lang: Lang,
    token: &PageToken,
    portal: &Portal,
    settings: &PortalSettings,
    log: CallLog,
) -> AppPage {
    AppPage {
        lang,
        domain: portal.domain.clone(),
        admin: token.admin,
        page_token: token.encode(&ctx.shared.cipher),
        reauth: portal.needs_reauth,
        reauth_reason: portal
            .refresh_problem
            .clone()
            .filter(|_| portal.needs_reauth),
        mango_configured: settings.mango_api_key.is_some() && settings.mango_api_salt.is_some(),
        mango_checked: settings.mango_checked_at.is_some(),
        mango_error: settings.mango_last_error.clone(),
        form: SettingsInput::from_settings(settings),
        salt_set: settings.mango_api_salt.is_some(),
        errors: FieldErrors::default(),
        notice: None,
        alert: None,
        check: None,
        // Mango posts call events to {this}/events/call, /events/summary and
        // /result/callback_group; the receiving routes arrive with the call-events issue.
        events_url: format!("{}/mango", ctx.shared.settings.public_url),
        app_token_received: portal.application_token.is_some(),
        reach: reach_text(portal, lang, ctx.shared.clock.now()),
        reach_class: match portal.reach(ctx.shared.clock.now(), SELF_CHECK_ANSWER_WITHIN) {
            Reach::Yes(_) => "good",
            Reach::No(_) => "bad",
            Reach::Waiting(_) => "wait",
            Reach::NotChecked => "muted",
        },
        // Deal links and phones are for administrators; others see health and settings only.
        rows: if token.admin {
            let attempts = &log.attempts;
            log.callbacks
                .into_iter()
                .map(|cb| {
                    let of_cb = attempts.iter().filter(|a| a.callback_id == cb.id);
                    let attempts = of_cb.map(|a| attempt_row(a, lang)).collect();
                    LogRow {
                        attempts,
                        ..log_row(cb, &portal.domain, lang)
                    }
                })
                .collect()
        } else {
            Vec::new()
        },
        speed: log
            .speed
            .as_ref()
            .filter(|_| token.admin)
            .map(|r| panel(r, lang)),
    }
}

/// "yes (checked at …)", "no (checked at …)", "checking…" or "not checked yet".
pub(super) fn reach_text(portal: &Portal, lang: Lang, now: chrono::NaiveDateTime) -> String {
    let t = |at: chrono::NaiveDateTime| at.format("%Y-%m-%d %H:%M UTC").to_string();
    match portal.reach(now, SELF_CHECK_ANSWER_WITHIN) {
        Reach::NotChecked => lang.t("ещё не проверялось", "not checked yet").to_owned(),
        Reach::Waiting(sent) => format!(
            "{} {})",
            lang.t("проверяется (запрос отправлен", "checking (test sent at"),
            t(sent)
        ),
        Reach::Yes(at) => format!("{} {})", lang.t("да (проверено", "yes (checked at"), t(at)),
        Reach::No(sent) => format!(
            "{} {}; {})",
            lang.t("нет (проверено", "no (checked at"),
            t(sent),
            lang.t(
                "тестовое событие не пришло: проверьте, что APP_PUBLIC_URL доступен из интернета",
                "the test event did not arrive: check that APP_PUBLIC_URL is reachable from the internet"
            )
        ),
    }
}

pub(super) fn log_row(cb: Callback, domain: &str, lang: Lang) -> LogRow {
    let (label, class) = match cb.status {
        Status::Queued => (lang.t("в очереди", "queued"), "wait"),
        Status::Calling => (lang.t("звоним", "calling"), "wait"),
        Status::Started => (lang.t("звонок начат", "call started"), "good"),
        Status::Duplicate => (lang.t("повтор, пропущен", "duplicate, skipped"), "muted"),
        Status::NoPhone => (lang.t("нет телефона", "no phone"), "bad"),
        Status::Failed => (lang.t("ошибка", "failed"), "bad"),
    };
    // A run waiting for working hours says until when (UTC, as the log's times).
    let status = match cb.scheduled_for.filter(|_| cb.status == Status::Queued) {
        Some(at) => format!(
            "{} {} UTC",
            lang.t("ждёт рабочего времени:", "waiting for working hours:"),
            at.format("%Y-%m-%d %H:%M")
        ),
        None => label.to_owned(),
    };
    let code = cb
        .mango_code
        .and_then(|c| u32::try_from(c).ok())
        .map(|c| {
            let (ru, en) = describe_code(c);
            format!("{c} — {}", lang.t(ru, en))
        })
        .unwrap_or_default();
    let (call_outcome, outcome_class) = cb
        .call_outcome
        .as_deref()
        .map_or((String::new(), "muted"), |c| outcome_label(c, lang));
    LogRow {
        time: cb.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        deal_url: format!("https://{domain}/crm/deal/details/{}/", cb.deal_id),
        deal_id: cb.deal_id,
        phone: cb
            .phone
            .as_deref()
            .map(crate::phone::mask)
            .unwrap_or_default(),
        group: cb.group_extension.unwrap_or_default(),
        status,
        status_class: class,
        code,
        error: cb.error.unwrap_or_default(),
        outcome: cb.outcome.unwrap_or_default(),
        call_outcome,
        call_outcome_class: outcome_class,
        attempts: Vec::new(),
    }
}

/// A call outcome code in words, and its badge class; unknown codes are shown as they are.
pub(super) fn outcome_label(code: &str, lang: Lang) -> (String, &'static str) {
    let (text, class) = match code {
        "answered" => (lang.t("клиент соединён", "client connected"), "good"),
        "manager_missed" => (
            lang.t("менеджеры не ответили", "no manager answered"),
            "bad",
        ),
        "client_missed" => (lang.t("клиент не ответил", "client did not answer"), "wait"),
        "failed" => (lang.t("звонок не состоялся", "call failed"), "bad"),
        "unknown" => (lang.t("итог неизвестен", "outcome unknown"), "muted"),
        other => (other, "muted"),
    };
    (text.to_owned(), class)
}

fn attempt_row(a: &AttemptLine, lang: Lang) -> AttemptRow {
    let outcome = match &a.outcome {
        None => lang.t("идёт", "in progress").to_owned(),
        Some(code) => {
            let (mut text, _) = outcome_label(code, lang);
            if let Some(ext) = &a.manager_extension {
                text.push_str(&format!(", {} {ext}", lang.t("менеджер", "manager")));
            }
            if let Some(secs) = a.talk_seconds.filter(|s| *s > 0) {
                text.push_str(&format!(", {}", human_duration(i64::from(secs), lang)));
            }
            text
        }
    };
    let kind = match a.group_kind.as_str() {
        "experienced" => lang.t("опытные", "experienced"),
        "trainee" => lang.t("стажёры", "trainees"),
        other => other,
    };
    AttemptRow {
        n: a.n,
        group: format!("{kind} {}", a.group_extension),
        time: a.placed_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        outcome,
    }
}

pub(super) fn render(
    status: StatusCode,
    domain: &str,
    page: &AppPage,
) -> Result<HttpResponse, AppError> {
    let body = page.render().map_err(|e| AppError::Internal(e.into()))?;
    Ok(html(status, Some(domain), body))
}
