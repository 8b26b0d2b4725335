//! Mango's call events (`events/call`, `events/summary`) read leniently, and the pure rule that
//! turns all the events of one call (`entry_id`) into how the call went: who answered, whether
//! the client talked, for how long, and — once the summary is in — the outcome.
//!
//! Mango types its fields loosely (`seq` is `"1"` in one document and `1` in another, the same
//! for `timestamp`, extensions and `disconnect_reason`), so every number goes through
//! [`crate::json::int`]; events may come in any order and twice, so the rule reads a set of
//! events (each leg ordered by `seq`) and gives the same answer whatever the arrival order.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use serde_json::Value;

/// Longest `entry_id` / `call_id` taken: Mango's are short base64 strings.
pub const MAX_ID_LEN: usize = 256;
/// Mango's limit for `command_id`: a longer one is none of ours.
const MAX_COMMAND_ID_BYTES: usize = 128;
/// Talk time above this (a week) is not a phone call: read as absent.
pub const MAX_TALK_SECONDS: i64 = 7 * 24 * 3600;
/// Timestamps outside 2000-01-01 … 2100-01-01 are read as absent.
const TIMESTAMP_RANGE: std::ops::RangeInclusive<i64> = 946_684_800..=4_102_444_800;

/// A leg's state as `events/call` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    Appeared,
    Connected,
    OnHold,
    Disconnected,
    Other,
}

/// One `events/call`.
#[derive(Debug, Clone, PartialEq)]
pub struct CallEvent {
    pub entry_id: String,
    pub call_id: String,
    pub seq: i64,
    pub timestamp: Option<i64>,
    pub state: CallState,
    /// The employee rung on this leg (empty for the external client's leg).
    pub to_extension: String,
    /// The external number rung on this leg.
    pub to_number: String,
    pub disconnect_reason: Option<i32>,
    pub command_id: Option<String>,
}

/// One `events/summary`: "после получения данного события вызов можно считать завершенным".
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub entry_id: String,
    pub talk_time: Option<i64>,
    pub end_time: Option<i64>,
    pub entry_result: Option<i32>,
    pub disconnect_reason: Option<i32>,
}

/// A string field that may also come as a number (`"29"` or `29`).
fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// A required id: present, at most [`MAX_ID_LEN`] bytes, no control characters.
fn id(v: &Value, key: &str) -> Result<String, String> {
    let s = text(v, key);
    if s.is_empty() {
        return Err(format!("{key} is missing"));
    }
    if s.len() > MAX_ID_LEN || s.chars().any(char::is_control) {
        return Err(format!(
            "{key} is longer than {MAX_ID_LEN} bytes or has control characters"
        ));
    }
    Ok(s)
}

fn timestamp(v: &Value, key: &str) -> Option<i64> {
    v.get(key)
        .and_then(crate::json::int::<i64>)
        .filter(|t| TIMESTAMP_RANGE.contains(t))
}

fn reason(v: &Value) -> Option<i32> {
    v.get("disconnect_reason")
        .and_then(crate::json::int::<i32>)
        .filter(|c| (0..=9999).contains(c))
}

/// Reads an `events/call` body; `Err` says what is wrong with it.
pub fn parse_call(v: &Value) -> Result<CallEvent, String> {
    let seq = v
        .get("seq")
        .and_then(crate::json::int::<i64>)
        .filter(|s| (0..=i64::from(i32::MAX)).contains(s))
        .ok_or("seq is missing or not a number from 0 to 2147483647")?;
    let state = match text(v, "call_state").as_str() {
        "Appeared" => CallState::Appeared,
        "Connected" => CallState::Connected,
        "OnHold" => CallState::OnHold,
        "Disconnected" => CallState::Disconnected,
        _ => CallState::Other,
    };
    let to = v.get("to").cloned().unwrap_or(Value::Null);
    let command_id = Some(text(v, "command_id"))
        .filter(|c| !c.is_empty() && c.len() <= MAX_COMMAND_ID_BYTES)
        .filter(|c| !c.chars().any(char::is_control));
    Ok(CallEvent {
        entry_id: id(v, "entry_id")?,
        call_id: id(v, "call_id")?,
        seq,
        timestamp: timestamp(v, "timestamp"),
        state,
        to_extension: text(&to, "extension").chars().take(32).collect(),
        to_number: text(&to, "number").chars().take(32).collect(),
        disconnect_reason: reason(v),
        command_id,
    })
}

/// Reads an `events/summary` body; `Err` says what is wrong with it.
pub fn parse_summary(v: &Value) -> Result<Summary, String> {
    Ok(Summary {
        entry_id: id(v, "entry_id")?,
        talk_time: v
            .get("talk_time")
            .and_then(crate::json::int::<i64>)
            .filter(|t| (0..=MAX_TALK_SECONDS).contains(t)),
        end_time: timestamp(v, "end_time"),
        entry_result: v.get("entry_result").and_then(crate::json::int::<i32>),
        disconnect_reason: reason(v),
    })
}

/// How a call ended. The strings are stored (`call_attempts.outcome`, `callbacks.call_outcome`)
/// and sent to the business process: they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A manager answered and the client talked to them.
    Answered,
    /// Nobody in the group answered.
    ManagerMissed,
    /// A manager answered, the client did not (or the manager hung up first).
    ClientMissed,
    /// Mango did not place the call (result code other than 1000, or a billing/server code).
    Failed,
    /// No summary came within the portal's bound.
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::ManagerMissed => "manager_missed",
            Outcome::ClientMissed => "client_missed",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        }
    }
    pub fn parse(s: &str) -> Option<Outcome> {
        [
            Outcome::Answered,
            Outcome::ManagerMissed,
            Outcome::ClientMissed,
            Outcome::Failed,
            Outcome::Unknown,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// What the events of one call say so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// The manager whose leg was connected first.
    pub manager_extension: Option<String>,
    /// When the client's leg was connected (unix seconds).
    pub client_connected_at: Option<i64>,
    pub talk_seconds: Option<i64>,
    pub disconnect_reason: Option<i32>,
    /// When the call ended (unix seconds).
    pub ended_at: Option<i64>,
    /// Set once the summary is in: the call is over.
    pub outcome: Option<Outcome>,
    /// The summary is in and so, it seems, is every call event: each leg seen has appeared and
    /// disconnected, and the `seq`s run from 1 without a gap. A summary that overtook the call's
    /// events is applied only then (or after a grace period, see `callback::outcome`).
    pub complete: bool,
}

/// The rule: all stored events of one entry → [`Progress`]. `group_extension` is the group
/// rung, so a leg addressed to the group itself is not taken for a manager.
///
/// A leg to an employee (`to.extension` set) is a manager's; a leg to an external number with no
/// extension is the client's (callback_group rings the group first, then dials the client from
/// the manager who answered). Each leg is read in `seq` order, so duplicates and reordering do
/// not matter.
pub fn progress(calls: &[CallEvent], summary: Option<&Summary>, group_extension: &str) -> Progress {
    let mut legs: BTreeMap<&str, Vec<&CallEvent>> = BTreeMap::new();
    for e in calls {
        legs.entry(e.call_id.as_str()).or_default().push(e);
    }
    // (seq of the Connected event, extension): the earliest answering manager wins.
    let mut manager: Option<(i64, i64, String)> = None;
    let mut client_connected: Option<(i64, Option<i64>)> = None;
    let mut client_end: Option<i64> = None;
    let mut last_disconnect: Option<(i64, i64, Option<i32>)> = None;
    for events in legs.values_mut() {
        events.sort_by_key(|e| e.seq);
        let ext = events
            .iter()
            .map(|e| e.to_extension.as_str())
            .find(|x| !x.is_empty())
            .unwrap_or("");
        let number = events.iter().any(|e| !e.to_number.is_empty());
        let is_manager = !ext.is_empty() && ext != group_extension;
        let is_client = ext.is_empty() && number;
        for e in events.iter() {
            let t = e.timestamp.unwrap_or(0);
            match e.state {
                CallState::Connected
                    if is_manager
                        && manager
                            .as_ref()
                            .is_none_or(|(mt, ms, _)| (t, e.seq) < (*mt, *ms)) =>
                {
                    manager = Some((t, e.seq, ext.to_owned()));
                }
                CallState::Connected
                    if is_client && client_connected.is_none_or(|(s, _)| e.seq < s) =>
                {
                    client_connected = Some((e.seq, e.timestamp));
                }
                CallState::Disconnected => {
                    if is_client && client_connected.is_some() {
                        client_end = client_end.max(e.timestamp);
                    }
                    if last_disconnect.is_none_or(|(lt, ls, _)| (t, e.seq) > (lt, ls)) {
                        last_disconnect = Some((t, e.seq, e.disconnect_reason));
                    }
                }
                _ => {}
            }
        }
    }
    let every_leg_over = legs.values().all(|events| {
        let seen = |st: CallState| events.iter().any(|e| e.state == st);
        seen(CallState::Appeared) && seen(CallState::Disconnected)
    });
    let seqs: std::collections::BTreeSet<i64> = calls.iter().map(|e| e.seq).collect();
    let gapless = seqs.iter().copied().eq(1..=seqs.len() as i64);
    let client_connected_at = client_connected.and_then(|(_, t)| t);
    let mut p = Progress {
        manager_extension: manager.map(|(_, _, x)| x),
        client_connected_at,
        talk_seconds: match (client_connected_at, client_end) {
            (Some(a), Some(b)) if b >= a => Some(b - a),
            _ => None,
        },
        disconnect_reason: last_disconnect.and_then(|(_, _, r)| r),
        ended_at: last_disconnect.map(|(t, _, _)| t).filter(|t| *t > 0),
        outcome: None,
        complete: false,
    };
    let Some(s) = summary else {
        return p;
    };
    // The summary is Mango's final word on times and the reason.
    if s.talk_time.is_some() {
        p.talk_seconds = s.talk_time;
    }
    p.disconnect_reason = s.disconnect_reason.or(p.disconnect_reason);
    p.ended_at = s.end_time.or(p.ended_at);
    let talked = client_connected.is_some();
    p.outcome = Some(if talked {
        Outcome::Answered
    } else if p.manager_extension.is_some() {
        Outcome::ClientMissed
    } else if p.disconnect_reason.is_some_and(|r| r >= 2000) {
        Outcome::Failed
    } else {
        Outcome::ManagerMissed
    });
    if !talked {
        p.talk_seconds = Some(0);
    }
    p.complete = !calls.is_empty() && every_leg_over && gapless;
    p
}

/// A unix time as the naive UTC timestamps the database keeps.
pub fn at(unix: i64) -> Option<NaiveDateTime> {
    chrono::DateTime::from_timestamp(unix, 0).map(|t| t.naive_utc())
}

#[cfg(test)]
mod tests;
