//! The product's rules: accept a robot run (duplicate cut-off, trainee-then-experienced), then
//! place the Mango call and report back to the business process and the deal.

pub mod jobs;
pub mod store;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::callbacks;

/// Callback statuses; `result` sent to Bitrix24 is one of the four terminal ones.
pub mod status {
    pub const QUEUED: &str = "queued";
    /// The Mango command is being sent: a crash here must not lead to a second command.
    pub const CALLING: &str = "calling";
    pub const STARTED: &str = "started";
    pub const DUPLICATE: &str = "duplicate";
    pub const NO_PHONE: &str = "no_phone";
    pub const FAILED: &str = "failed";
}

/// The group the robot asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedGroup {
    Auto,
    Trainee,
    Experienced,
}

impl RequestedGroup {
    /// Parses the robot's `group` property; empty means auto.
    pub fn parse(s: &str) -> Option<RequestedGroup> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(RequestedGroup::Auto),
            "trainee" | "trainees" => Some(RequestedGroup::Trainee),
            "experienced" => Some(RequestedGroup::Experienced),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RequestedGroup::Auto => "auto",
            RequestedGroup::Trainee => "trainee",
            RequestedGroup::Experienced => "experienced",
        }
    }
    /// The predecessor's rule, kept: the deal's first run rings trainees, later runs the experienced.
    pub fn resolve(self, run_number: i32) -> &'static str {
        match self {
            RequestedGroup::Trainee => "trainee",
            RequestedGroup::Experienced => "experienced",
            RequestedGroup::Auto if run_number <= 1 => "trainee",
            RequestedGroup::Auto => "experienced",
        }
    }
}

/// One robot run.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = callbacks)]
pub struct Callback {
    pub id: String,
    pub member_id: String,
    pub deal_id: String,
    pub event_token: Option<String>,
    pub workflow_id: Option<String>,
    pub requested_group: String,
    pub group_kind: Option<String>,
    pub group_extension: Option<String>,
    pub phone_override: Option<String>,
    pub phone: Option<String>,
    pub status: String,
    pub command_id: Option<String>,
    pub mango_code: Option<i32>,
    pub error: Option<String>,
    pub outcome: Option<String>,
    pub attempts: i32,
    pub contact_checks: i32,
    pub event_sent_at: Option<NaiveDateTime>,
    pub comment_added_at: Option<NaiveDateTime>,
    pub started_at: Option<NaiveDateTime>,
    pub finished_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A verified robot call, parsed at the HTTP edge.
#[derive(Debug, Clone)]
pub struct RobotRun {
    pub member_id: String,
    pub deal_id: String,
    pub event_token: Option<String>,
    pub workflow_id: Option<String>,
    pub requested: RequestedGroup,
    pub phone_override: Option<String>,
}

/// What accepting a robot run decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// A new callback was queued; `group` is trainee or experienced.
    Queued {
        callback_id: String,
        group: &'static str,
    },
    /// Cut off as a duplicate; it is reported as such.
    Duplicate { callback_id: String },
    /// The same `event_token` was delivered again: nothing new was done.
    Redelivered { callback_id: String },
}

/// `command_id` for Mango: unique per callback and traceable to portal and deal (≤128 bytes).
pub fn command_id(member_id: &str, deal_id: &str, callback_id: &str) -> String {
    let mut s = format!("b24:{member_id}:{deal_id}:{callback_id}");
    s.truncate(128);
    s
}
