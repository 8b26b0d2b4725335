//! Portal upkeep: registering the robot and event handlers, and keeping idle portals' tokens alive.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::bitrix::client::BitrixClient;
use crate::bitrix::BitrixError;
use crate::context::Context;
use crate::jobs::{Job, JobError};

/// The robot's CODE; part of the public contract with portals that already use it.
pub const ROBOT_CODE: &str = "mango_callback";

/// The `bizproc.robot.add` fields of our robot.
pub fn robot_fields(public_url: &str) -> Value {
    json!({
        "HANDLER": format!("{public_url}/b24/robot"),
        "AUTH_USER_ID": 1,
        // Explicit: empty would let the user choose, and the business process must wait for us.
        "USE_SUBSCRIPTION": "Y",
        "NAME": { "ru": "Обратный звонок через Mango Office", "en": "Mango Office callback" },
        "DESCRIPTION": {
            "ru": "Звонит группе менеджеров в Mango Office, а когда кто-то ответит — клиенту по сделке",
            "en": "Rings a Mango Office group of managers and, once one answers, dials the deal's client"
        },
        "DOCUMENT_TYPE": ["crm", "CCrmDocumentDeal", "DEAL"],
        "PROPERTIES": {
            "phone": {
                "Name": { "ru": "Телефон клиента (необязательно)", "en": "Client phone (optional)" },
                "Description": { "ru": "Если пусто — телефон основного контакта сделки", "en": "Empty: the phone of the deal's primary contact" },
                "Type": "string",
                "Required": "N",
                "Multiple": "N"
            },
            "group": {
                "Name": { "ru": "Группа", "en": "Group" },
                "Type": "select",
                "Options": {
                    "auto": "Авто: стажёры при первом запуске, затем опытные / Auto: trainees first, then experienced",
                    "trainee": "Стажёры / Trainees",
                    "experienced": "Опытные / Experienced"
                },
                "Default": "auto",
                "Required": "N",
                "Multiple": "N"
            }
        },
        "RETURN_PROPERTIES": {
            "result": { "Name": { "ru": "Результат", "en": "Result" }, "Type": "string" },
            "group_extension": { "Name": { "ru": "Номер группы", "en": "Group extension" }, "Type": "string" },
            "command_id": { "Name": { "ru": "ID команды Mango", "en": "Mango command ID" }, "Type": "string" },
            "error": { "Name": { "ru": "Ошибка", "en": "Error" }, "Type": "string" }
        }
    })
}

/// Adds the robot, or updates it when it already exists (the installer may run many times).
pub async fn register_robot(
    bitrix: &BitrixClient,
    member_id: &str,
    public_url: &str,
) -> Result<(), BitrixError> {
    let fields = robot_fields(public_url);
    let mut add = fields.clone();
    if let Value::Object(m) = &mut add {
        m.insert("CODE".into(), Value::String(ROBOT_CODE.into()));
    }
    match bitrix.call(member_id, "bizproc.robot.add", add).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("ERROR_ACTIVITY_ALREADY_INSTALLED") => bitrix
            .call(
                member_id,
                "bizproc.robot.update",
                json!({ "CODE": ROBOT_CODE, "FIELDS": fields }),
            )
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    }
}

/// Binds ONAPPUNINSTALL and ONAPPUPDATE to `/b24/events`; an existing binding is fine.
pub async fn bind_events(
    bitrix: &BitrixClient,
    member_id: &str,
    public_url: &str,
) -> Result<(), BitrixError> {
    let handler = format!("{public_url}/b24/events");
    for event in ["ONAPPUNINSTALL", "ONAPPUPDATE"] {
        match bitrix
            .call(
                member_id,
                "event.bind",
                json!({ "event": event, "handler": handler }),
            )
            .await
        {
            Ok(_) => {}
            Err(BitrixError::Api { description, .. })
                if description.to_lowercase().contains("already binded") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn job_error(e: BitrixError) -> JobError {
    if e.is_transient() {
        JobError::Transient(e.to_string())
    } else {
        JobError::Permanent(e.to_string())
    }
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
        register_robot(&ctx.bitrix, &self.member_id, url)
            .await
            .map_err(job_error)?;
        bind_events(&ctx.bitrix, &self.member_id, url)
            .await
            .map_err(job_error)?;
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
            .run(move |c| Ok(crate::portal::store::find(c, &id)?))
            .await?;
        let Some(p) = portal.filter(|p| p.is_active() && !p.needs_reauth) else {
            return Ok(());
        };
        ctx.bitrix
            .refresh(&self.member_id, p.token_version)
            .await
            .map_err(job_error)
    }
}

/// Enqueues keep-alive refreshes for portals idle longer than [`KEEP_ALIVE_AFTER_DAYS`].
/// The dedup key names the last refresh, so each idle stretch gets exactly one job.
pub async fn schedule_keep_alive(ctx: &Context) -> Result<usize, crate::db::DbError> {
    let now = ctx.shared.clock.now();
    let before = now - chrono::Duration::days(KEEP_ALIVE_AFTER_DAYS);
    ctx.shared
        .db
        .run(move |c| {
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
