//! Our robot on a portal: its contract (CODE, fields), registering it, and binding the app's
//! event handlers.

use serde_json::{json, Value};

use super::api::PortalApi;
use crate::bitrix::BitrixError;

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
            "error": { "Name": { "ru": "Ошибка", "en": "Error" }, "Type": "string" },
            // How the call ended (answered, manager_missed, client_missed, failed, unknown):
            // filled when the robot waits for the outcome, empty otherwise.
            "outcome": { "Name": { "ru": "Итог звонка", "en": "Call outcome" }, "Type": "string" },
            "manager_extension": { "Name": { "ru": "Ответивший менеджер", "en": "Manager who answered" }, "Type": "string" },
            "talk_seconds": { "Name": { "ru": "Разговор, секунд", "en": "Talk time, seconds" }, "Type": "int" }
        }
    })
}

/// Adds the robot, or updates it when it already exists (the installer may run many times).
pub async fn register_robot(
    bitrix: &PortalApi,
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

/// The app's event handlers: ONAPPINSTALL goes to the installer route, which tells the event
/// from the installer page by its body (Bitrix24 documents binding it from the installer, and
/// then delivers it after `installFinish()` with the installing admin's auth and the
/// application token); the rest go to `/b24/events`.
pub fn event_handlers(public_url: &str) -> [(&'static str, String); 4] {
    let events = format!("{public_url}/b24/events");
    [
        ("ONAPPINSTALL", format!("{public_url}/b24/install")),
        ("ONAPPUNINSTALL", events.clone()),
        ("ONAPPUPDATE", events.clone()),
        ("ONAPPTEST", events),
    ]
}

/// Binds one event handler; an existing binding is fine.
pub(super) async fn bind_event(
    bitrix: &PortalApi,
    member_id: &str,
    event: &str,
    handler: &str,
) -> Result<(), BitrixError> {
    match bitrix
        .call(
            member_id,
            "event.bind",
            json!({ "event": event, "handler": handler }),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(BitrixError::Api { description, .. })
            if description.to_lowercase().contains("already binded") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Binds every handler of [`event_handlers`]; existing bindings are fine.
pub async fn bind_events(
    bitrix: &PortalApi,
    member_id: &str,
    public_url: &str,
) -> Result<(), BitrixError> {
    for (event, handler) in event_handlers(public_url) {
        bind_event(bitrix, member_id, event, &handler).await?;
    }
    Ok(())
}
