//! The simulated Mango's call events: after a `callback_group` it posts, signed, the
//! `events/call` and `events/summary` the real PBX would, following a scenario configured per
//! client number or per group (a manager answers and the client talks, nobody answers, the client
//! does not answer, the manager hangs up first), and can deliver them reordered or twice.
//!
//! The sequence (Mango's documentation, §2.4/§2.7 of the reference): the group is rung first —
//! one leg per operator, `to.extension` the operator, `to.acd_group` the group; when an operator
//! answers (`Connected`) Mango dials the client on a second leg (`to.number`, no extension):
//! `Appeared`, then `Connected` when the client picks up, `Disconnected` at the end. Every
//! `events/call` carries the command's `command_id`; the final `events/summary` has none.

use serde_json::{json, Value};

use super::MangoSim;

/// How a simulated call goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallScenario {
    /// `manager` answers, the client answers and they talk `talk_seconds`.
    Answered { manager: String, talk_seconds: u32 },
    /// Every operator in `managers` is rung and none answers.
    NobodyAnswers { managers: Vec<String> },
    /// `manager` answers, the client's phone rings out.
    ClientMissed { manager: String },
    /// `manager` answers and hangs up while the client's phone is still ringing.
    ManagerHangsUp { manager: String },
}

/// How the events reach the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// As they happened.
    InOrder,
    /// The summary first, then the call events.
    SummaryFirst,
    /// Last event first.
    Reversed,
    /// Each event twice in a row.
    Duplicated,
}

/// One notification to post: `events/call` or `events/summary` and its `json`.
#[derive(Clone, Debug, PartialEq)]
pub struct SimEvent {
    pub path: &'static str,
    pub json: Value,
}

/// The events of a call for the accepted `command` (`{command_id, from, to, line_number}`),
/// starting at unix time `start`, in the order they happen.
pub fn call_events(
    command: &Value,
    scenario: &CallScenario,
    entry_id: &str,
    start: i64,
) -> Vec<SimEvent> {
    let field = |k: &str| {
        command
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (command_id, group, client, line) = (
        field("command_id"),
        field("from"),
        field("to"),
        field("line_number"),
    );
    let mut out = Vec::new();
    let mut seq = 0;
    let mut ev = |call_id: &str, t: i64, state: &str, to: Value, reason: Option<u32>| {
        seq += 1;
        let mut e = json!({
            "entry_id": entry_id, "call_id": call_id, "timestamp": t, "seq": seq,
            "call_state": state, "location": "abonent",
            "from": { "number": line }, "to": to,
            "command_id": command_id, "callback_initiator": "API",
        });
        if let Some(r) = reason {
            e["disconnect_reason"] = json!(r);
        }
        out.push(SimEvent {
            path: "events/call",
            json: e,
        });
    };
    let operator = |ext: &str| json!({ "extension": ext, "acd_group": group, "line_number": line });
    let to_client = json!({ "number": client, "line_number": line });
    let leg = |n: usize| format!("{entry_id}-leg{n}");
    // (talk time, end time, reason, talked)
    let (talk, end, reason) = match scenario {
        CallScenario::Answered {
            manager,
            talk_seconds,
        } => {
            let talk = i64::from(*talk_seconds);
            ev(&leg(1), start, "Appeared", operator(manager), None);
            ev(&leg(1), start + 5, "Connected", operator(manager), None);
            ev(&leg(2), start + 6, "Appeared", to_client.clone(), None);
            ev(&leg(2), start + 15, "Connected", to_client.clone(), None);
            ev(
                &leg(2),
                start + 15 + talk,
                "Disconnected",
                to_client.clone(),
                Some(1120),
            );
            ev(
                &leg(1),
                start + 15 + talk,
                "Disconnected",
                operator(manager),
                Some(1120),
            );
            (talk, start + 15 + talk, 1120)
        }
        CallScenario::NobodyAnswers { managers } => {
            for (i, m) in managers.iter().enumerate() {
                ev(&leg(i + 1), start, "Appeared", operator(m), None);
            }
            for (i, m) in managers.iter().enumerate() {
                ev(
                    &leg(i + 1),
                    start + 30,
                    "Disconnected",
                    operator(m),
                    Some(1111),
                );
            }
            (0, start + 30, 1111)
        }
        CallScenario::ClientMissed { manager } => {
            ev(&leg(1), start, "Appeared", operator(manager), None);
            ev(&leg(1), start + 5, "Connected", operator(manager), None);
            ev(&leg(2), start + 6, "Appeared", to_client.clone(), None);
            ev(
                &leg(2),
                start + 46,
                "Disconnected",
                to_client.clone(),
                Some(1111),
            );
            ev(
                &leg(1),
                start + 46,
                "Disconnected",
                operator(manager),
                Some(1111),
            );
            (0, start + 46, 1111)
        }
        CallScenario::ManagerHangsUp { manager } => {
            ev(&leg(1), start, "Appeared", operator(manager), None);
            ev(&leg(1), start + 5, "Connected", operator(manager), None);
            ev(&leg(2), start + 6, "Appeared", to_client.clone(), None);
            ev(
                &leg(1),
                start + 12,
                "Disconnected",
                operator(manager),
                Some(1110),
            );
            ev(
                &leg(2),
                start + 12,
                "Disconnected",
                to_client.clone(),
                Some(1110),
            );
            (0, start + 12, 1110)
        }
    };
    out.push(SimEvent {
        path: "events/summary",
        json: json!({
            "entry_id": entry_id, "call_direction": 2,
            "from": { "extension": group }, "to": { "number": client },
            "line_number": line, "create_time": start, "forward_time": start + 5,
            "talk_time": talk, "end_time": end, "entry_result": i32::from(talk > 0),
            "disconnect_reason": reason,
        }),
    });
    out
}

/// `events` as `delivery` hands them over.
pub fn deliver(mut events: Vec<SimEvent>, delivery: Delivery) -> Vec<SimEvent> {
    match delivery {
        Delivery::InOrder => events,
        Delivery::SummaryFirst => {
            events.rotate_right(1);
            events
        }
        Delivery::Reversed => {
            events.reverse();
            events
        }
        Delivery::Duplicated => events.into_iter().flat_map(|e| [e.clone(), e]).collect(),
    }
}

impl MangoSim {
    /// Calls to `key` — a client number (`79001234567`) or a group's short number (`002`) — go
    /// as `scenario`; the number wins over the group.
    pub fn set_scenario(&self, key: &str, scenario: CallScenario) {
        self.lock().scenarios.insert(key.to_owned(), scenario);
    }

    /// The scenario of an accepted command, if one was set for its number or group.
    pub fn scenario_for(&self, command: &Value) -> Option<CallScenario> {
        let st = self.lock();
        ["to", "from"].into_iter().find_map(|k| {
            let key = command.get(k).and_then(Value::as_str)?;
            st.scenarios.get(key).cloned()
        })
    }

    /// The events of the `i`-th accepted command under its scenario, each call with a new
    /// `entry_id`; `None` without a scenario.
    pub fn events_of(&self, i: usize, start: i64) -> Option<Vec<SimEvent>> {
        let command = self.callbacks().get(i)?.clone();
        let scenario = self.scenario_for(&command)?;
        let entry = {
            let mut st = self.lock();
            st.next_entry += 1;
            format!("RW50cnk{}MTAx=", st.next_entry)
        };
        Some(call_events(&command, &scenario, &entry, start))
    }

    /// Posts the `i`-th accepted command's events to the app as Mango would, signed with the
    /// account's salt; returns the app's status for each. Nothing without a scenario.
    pub async fn play(
        &self,
        app_base_url: &str,
        api_key: &str,
        i: usize,
        delivery: Delivery,
    ) -> Result<Vec<u16>, String> {
        // The call happens "now" as the followed clock counts it, so a test or the demo that
        // moved the app's clock on gets events stamped in the app's time.
        let ahead = self.lock().clock.as_ref().map(crate::clock::Clock::offset);
        let start = (chrono::Utc::now() + ahead.unwrap_or_default()).timestamp();
        let events = self.events_of(i, start).unwrap_or_default();
        let mut statuses = Vec::new();
        for e in deliver(events, delivery) {
            statuses.push(self.post_event(app_base_url, api_key, &e).await?);
        }
        Ok(statuses)
    }

    /// Posts one event, signed with the account's salt; returns the app's status.
    pub async fn post_event(
        &self,
        app_base_url: &str,
        api_key: &str,
        e: &SimEvent,
    ) -> Result<u16, String> {
        self.post_signed(app_base_url, e.path, api_key, e.json.to_string())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mango::events::{parse_call, parse_summary, progress, Outcome};

    #[test]
    fn every_scenario_reads_as_its_outcome_in_any_delivery() {
        let cmd = json!({"command_id":"cbk1","from":"002","to":"79001234567","line_number":"74951234567"});
        let cases = [
            (
                CallScenario::Answered {
                    manager: "101".into(),
                    talk_seconds: 133,
                },
                Outcome::Answered,
                Some("101"),
                133,
            ),
            (
                CallScenario::NobodyAnswers {
                    managers: vec!["101".into(), "102".into()],
                },
                Outcome::ManagerMissed,
                None,
                0,
            ),
            (
                CallScenario::ClientMissed {
                    manager: "102".into(),
                },
                Outcome::ClientMissed,
                Some("102"),
                0,
            ),
            (
                CallScenario::ManagerHangsUp {
                    manager: "102".into(),
                },
                Outcome::ClientMissed,
                Some("102"),
                0,
            ),
        ];
        for (scenario, outcome, manager, talk) in cases {
            for delivery in [
                Delivery::InOrder,
                Delivery::SummaryFirst,
                Delivery::Reversed,
                Delivery::Duplicated,
            ] {
                let events = deliver(
                    call_events(&cmd, &scenario, "RW50cnk=", 1_800_000_000),
                    delivery,
                );
                let calls: Vec<_> = events
                    .iter()
                    .filter(|e| e.path == "events/call")
                    .map(|e| parse_call(&e.json).expect("call"))
                    .collect();
                assert!(calls
                    .iter()
                    .all(|c| c.command_id.as_deref() == Some("cbk1")));
                let summary = events
                    .iter()
                    .find(|e| e.path == "events/summary")
                    .map(|e| parse_summary(&e.json).expect("summary"));
                let p = progress(&calls, summary.as_ref(), "002");
                assert_eq!(p.outcome, Some(outcome), "{scenario:?} {delivery:?}");
                assert!(p.complete, "{scenario:?} {delivery:?}");
                assert_eq!(
                    (p.manager_extension.as_deref(), p.talk_seconds),
                    (manager, Some(talk)),
                    "{scenario:?}"
                );
            }
        }
    }
}
