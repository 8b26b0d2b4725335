//! The product's rules: accept a robot run (duplicate cut-off, trainee-then-experienced), then
//! place the Mango call and report back to the business process and the deal.
//!
//! - this file: the callback's types and its two job payloads;
//! - [`lifecycle`]: accepting a run and finishing a callback, each with its job in one transaction;
//! - [`place_call`]: the [`PlaceCall`] job (find the phone, order Mango's `callback_group`);
//! - [`lookup`]: the phone lookup, batched across the portal's waiting callbacks;
//! - [`report_batch`]: the [`ReportCallback`] job (answer the business process, comment on the
//!   deal), many callbacks of a portal in one `batch`; [`report`]: its texts and shared steps;
//! - [`schedule`]: working hours applied to a run (placed at the next opening); [`announce`]:
//!   the [`AnnounceSchedule`] job (`result=scheduled` and the timeline comment);
//! - [`outcome`]: each attempt's outcome from Mango's call events, copied onto the callback;
//! - [`outcome_report`]: the outcome's report job and the job that closes an unanswered wait;
//! - [`retry`]: retries and escalation after an attempt nobody or the client did not answer;
//!   [`retry_report`]: the timeline comment saying when the next attempt rings;
//! - [`store`]: the SQL of `callbacks` and `deals`;
//! - [`history`]: the attempts of callbacks, for the call log (read only);
//! - [`speed`]: speed to lead and answer rates for the settings page (read only).

pub mod announce;
pub mod history;
pub mod lifecycle;
pub mod lookup;
pub mod outcome;
pub mod outcome_report;
pub mod place_call;
pub mod reason;
pub mod report;
pub mod report_batch;
pub mod resend;
pub mod retry;
pub mod retry_report;
pub mod schedule;
pub mod send;
pub mod speed;
pub mod store;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use crate::db::schema::callbacks;
pub use reason::Reason;

/// A callback's status, stored as its string code (the codes predate the enum and never change:
/// `result` sent to Bitrix24 is one of the four terminal ones).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    diesel::expression::AsExpression,
    diesel::deserialize::FromSqlRow,
)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum Status {
    Queued,
    /// The Mango command is being sent: a crash here must not lead to a second command.
    Calling,
    Started,
    Duplicate,
    NoPhone,
    Failed,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Calling,
        Status::Started,
        Status::Duplicate,
        Status::NoPhone,
        Status::Failed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Calling => "calling",
            Status::Started => "started",
            Status::Duplicate => "duplicate",
            Status::NoPhone => "no_phone",
            Status::Failed => "failed",
        }
    }
    pub fn parse(code: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == code)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The group a callback rings, stored as its string code.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    diesel::expression::AsExpression,
    diesel::deserialize::FromSqlRow,
)]
#[serde(rename_all = "snake_case")]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum Group {
    Trainee,
    Experienced,
}

impl Group {
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Trainee => "trainee",
            Group::Experienced => "experienced",
        }
    }
    pub fn parse(code: &str) -> Option<Group> {
        [Group::Trainee, Group::Experienced]
            .into_iter()
            .find(|g| g.as_str() == code)
    }
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stores an enum as its string code in a TEXT column, for any backend that stores strings
/// (so also diesel's `MultiBackend`, whose `str`/`String` impls these delegate to). An unknown
/// code in the database is a deserialisation error, not a panic.
macro_rules! stored_as_text_code {
    ($t:ty) => {
        impl<DB> diesel::serialize::ToSql<diesel::sql_types::Text, DB> for $t
        where
            DB: diesel::backend::Backend,
            str: diesel::serialize::ToSql<diesel::sql_types::Text, DB>,
        {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, DB>,
            ) -> diesel::serialize::Result {
                self.as_str().to_sql(out)
            }
        }
        impl<DB> diesel::deserialize::FromSql<diesel::sql_types::Text, DB> for $t
        where
            DB: diesel::backend::Backend,
            String: diesel::deserialize::FromSql<diesel::sql_types::Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> diesel::deserialize::Result<Self> {
                let code = String::from_sql(bytes)?;
                <$t>::parse(&code)
                    .ok_or_else(|| format!("unknown {} code {code:?}", stringify!($t)).into())
            }
        }
    };
}
stored_as_text_code!(Status);
stored_as_text_code!(Group);

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
    /// The PHP script's rule (see README), kept: the deal's first run rings trainees, later runs the experienced.
    pub fn resolve(self, run_number: i32) -> Group {
        match self {
            RequestedGroup::Trainee => Group::Trainee,
            RequestedGroup::Experienced => Group::Experienced,
            RequestedGroup::Auto if run_number <= 1 => Group::Trainee,
            RequestedGroup::Auto => Group::Experienced,
        }
    }
}

/// One robot run.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = callbacks)]
pub struct Callback {
    /// A UUID v7 (time-ordered), made when the run is accepted; never changes.
    pub id: String,
    /// The portal the run came from; the row goes when the portal's row goes.
    pub member_id: String,
    /// The deal the robot ran on, as Bitrix24 sent it (digits, at most 20).
    pub deal_id: String,
    /// Bitrix24's token for answering this robot run (`bizproc.event.send`); unique per portal,
    /// so a redelivered robot call finds its run instead of making a second one. `None` when
    /// the call carried none: the business process is then not waiting for an answer.
    pub event_token: Option<String>,
    /// The business process instance, as sent with the robot call; kept for the call log.
    pub workflow_id: Option<String>,
    /// The robot's `group` property (`auto`, `trainee`, `experienced`), or `-` for a run
    /// refused before it was read.
    pub requested_group: String,
    /// The group this run rings (`trainee` or `experienced`), resolved when the run is accepted
    /// from the request and the deal's run count; `None` for a duplicate or a refused run.
    pub group_kind: Option<Group>,
    /// The Mango group number rung, taken from the portal's settings when the command is made.
    pub group_extension: Option<String>,
    /// The robot's `phone` property: a number to ring instead of the deal's contact's.
    pub phone_override: Option<String>,
    /// The client's number as sent to Mango (normalised), set when the command is made.
    pub phone: Option<String>,
    /// Where the run is ([`Status`]): `queued` → `calling` → one of the terminal `started`,
    /// `duplicate`, `no_phone`, `failed`; the terminal ones are what Bitrix24 receives.
    pub status: Status,
    /// Our Mango `command_id` of the last send (`b24:{member_id}:{deal_id}:{id}`, a resend with
    /// `:n` appended), set before the command is sent; Mango's notifications for any send find
    /// the run by it.
    pub command_id: Option<String>,
    /// Mango's result code: from the synchronous answer, then from the asynchronous result.
    pub mango_code: Option<i32>,
    /// Why the run did not start (or the last retryable failure while it is still queued).
    pub error: Option<String>,
    /// Mango's asynchronous result, as shown in the call log; written once, so a replayed
    /// notification changes nothing.
    pub outcome: Option<String>,
    /// How many times the command was sent to Mango (each `queued` → `calling`).
    pub attempts: i32,
    /// How many times the deal was looked at for a contact with a phone while waiting for one.
    pub contact_checks: i32,
    /// When `bizproc.event.send` answered the business process; set once, so a retried report
    /// does not answer twice.
    pub event_sent_at: Option<NaiveDateTime>,
    /// When the timeline comment was added to the deal; set once, like `event_sent_at`.
    pub comment_added_at: Option<NaiveDateTime>,
    /// When Mango accepted the command (status `started`).
    pub started_at: Option<NaiveDateTime>,
    /// When the run reached a terminal status (its report job is enqueued in the same
    /// transaction).
    pub finished_at: Option<NaiveDateTime>,
    /// When the robot call was accepted.
    pub created_at: NaiveDateTime,
    /// When the run last changed.
    pub updated_at: NaiveDateTime,
    /// How the call ended (`answered`, `manager_missed`, `client_missed`, `failed`,
    /// `unknown`), from Mango's call events; `None` until the last attempt has ended.
    pub call_outcome: Option<String>,
    /// The manager (extension) who answered.
    pub manager_extension: Option<String>,
    /// The client's talk time.
    pub talk_seconds: Option<i32>,
    /// When the client was connected to a manager: speed-to-lead is this minus `created_at`.
    pub client_connected_at: Option<NaiveDateTime>,
    /// When the last attempt's call ended.
    pub call_ended_at: Option<NaiveDateTime>,
    /// When the next attempt may be placed (working hours, retry delay); `None` for at once.
    pub scheduled_for: Option<NaiveDateTime>,
    /// When the outcome was reported (timeline comment, and the waiting robot's event).
    pub outcome_reported_at: Option<NaiveDateTime>,
}

/// The job that finds the client's phone and orders Mango's `callback_group` ([`place_call`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct PlaceCall {
    pub callback_id: String,
}

/// The job that answers the business process and comments on the deal ([`report`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct ReportCallback {
    pub callback_id: String,
    /// Why the callback ended without a call, as it was decided: the report's texts come from
    /// it. Absent for a started call and in reports queued before reasons were typed (those
    /// show the stored `error` as it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// The job that tells the business process and the deal when a run waiting for working hours
/// will be called ([`announce`]); queued with the run when it is accepted.
#[derive(Debug, Serialize, Deserialize)]
pub struct AnnounceSchedule {
    pub callback_id: String,
}

/// A Bitrix24 deal id as a robot call names it (`DEAL_123` → `123`): 1–[`MAX_DEAL_ID_DIGITS`]
/// ASCII digits. Only [`DealId::parse`] makes one, so a [`RobotRun`] never carries an unchecked
/// id (its length bounds [`command_id`]) and a portal or callback id cannot stand in for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DealId(String);

impl DealId {
    pub fn parse(id: &str) -> Option<DealId> {
        let ok = !id.is_empty()
            && id.len() <= MAX_DEAL_ID_DIGITS
            && id.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| DealId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DealId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A verified robot call, parsed at the HTTP edge.
#[derive(Debug, Clone)]
pub struct RobotRun {
    pub member_id: String,
    pub deal_id: DealId,
    pub event_token: Option<String>,
    pub workflow_id: Option<String>,
    pub requested: RequestedGroup,
    pub phone_override: Option<String>,
}

/// What accepting a robot run decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// A new callback was queued; `group` is trainee or experienced.
    Queued { callback_id: String, group: Group },
    /// A new callback waits for the portal's working hours: its call is placed at `at` (UTC).
    Scheduled {
        callback_id: String,
        group: Group,
        at: NaiveDateTime,
    },
    /// Cut off as a duplicate; it is reported as such.
    Duplicate { callback_id: String },
    /// The same `event_token` was delivered again: nothing new was done.
    Redelivered { callback_id: String },
    /// A verified call whose payload cannot be acted on: recorded as failed and reported, so the
    /// business process gets its answer instead of waiting forever.
    Unusable { callback_id: String },
}

/// Why a verified robot call cannot be acted on. Raw values are kept short ([`shown`]): they
/// come from the request and end up in the business process's `error` and the call log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unusable {
    /// `document_id[2]` is absent.
    NoDocument,
    /// The robot runs on another document type (`LEAD_5`, `DYNAMIC_147_1`).
    NotADeal(String),
    /// `DEAL_…` whose id is not 1–20 digits.
    BadDealId(String),
    /// `properties[group]` is none of auto, trainee, experienced.
    UnknownGroup(String),
    /// `code` names another robot.
    WrongCode(String),
}

/// Longest raw value quoted back in a reason.
const SHOWN_CHARS: usize = 40;

/// A request value quoted for a message: at most `SHOWN_CHARS` (40) characters, control characters escaped.
pub fn shown(raw: &str) -> String {
    let mut s: String = raw.chars().take(SHOWN_CHARS).collect();
    if raw.chars().nth(SHOWN_CHARS).is_some() {
        s.push('…');
    }
    format!("{s:?}")
}

impl Unusable {
    /// The same reason with its raw value cut to what [`shown`] quotes (one character more, so
    /// the "…" stays): it travels in the report's job payload, which need not carry a whole
    /// request value.
    pub fn clipped(&self) -> Unusable {
        let cut = |s: &String| s.chars().take(SHOWN_CHARS + 1).collect::<String>();
        match self {
            Unusable::NoDocument => Unusable::NoDocument,
            Unusable::NotADeal(s) => Unusable::NotADeal(cut(s)),
            Unusable::BadDealId(s) => Unusable::BadDealId(cut(s)),
            Unusable::UnknownGroup(s) => Unusable::UnknownGroup(cut(s)),
            Unusable::WrongCode(s) => Unusable::WrongCode(cut(s)),
        }
    }

    /// The reason in the portal's language: it is what the business process's `error` shows.
    pub fn message(&self, lang: crate::portal::Lang) -> String {
        use crate::portal::Lang;
        match (self, lang) {
            (Unusable::NoDocument, Lang::Ru) => {
                "робот запущен без документа (нет document_id[2])".into()
            }
            (Unusable::NoDocument, Lang::En) => {
                "the robot was run without a document (document_id[2] is missing)".into()
            }
            (Unusable::NotADeal(d), Lang::Ru) => format!(
                "робот работает только в сделках, а запущен для {}",
                shown(d)
            ),
            (Unusable::NotADeal(d), Lang::En) => format!(
                "the robot works in deals only, but was run for {}",
                shown(d)
            ),
            (Unusable::BadDealId(d), Lang::Ru) => format!(
                "номер сделки должен состоять из 1–{MAX_DEAL_ID_DIGITS} цифр, получено {}",
                shown(d)
            ),
            (Unusable::BadDealId(d), Lang::En) => format!(
                "the deal id must be 1–{MAX_DEAL_ID_DIGITS} digits, got {}",
                shown(d)
            ),
            (Unusable::UnknownGroup(g), Lang::Ru) => format!(
                "свойство group должно быть auto, trainee или experienced, получено {}",
                shown(g)
            ),
            (Unusable::UnknownGroup(g), Lang::En) => format!(
                "properties[group] must be auto, trainee or experienced, got {}",
                shown(g)
            ),
            (Unusable::WrongCode(c), Lang::Ru) => format!(
                "код робота {} — не робот этого приложения ({})",
                shown(c),
                crate::portal::robot::ROBOT_CODE
            ),
            (Unusable::WrongCode(c), Lang::En) => format!(
                "robot code {} is not this app's robot ({})",
                shown(c),
                crate::portal::robot::ROBOT_CODE
            ),
        }
    }
}

/// What Mango's asynchronous result of a command says, as the call log shows it.
pub fn mango_outcome(code: i32) -> String {
    if code == 1000 {
        "mango accepted the command".to_owned()
    } else {
        format!(
            "mango result {code}: {}",
            crate::mango::describe_code(u32::try_from(code).unwrap_or(0)).1
        )
    }
}

/// A deal id has at most this many digits: Bitrix24's ids are 64-bit integers (≤ 20 digits),
/// and the cap keeps [`command_id`] within Mango's 128 bytes.
pub const MAX_DEAL_ID_DIGITS: usize = 20;
/// A `member_id` is 32 hex digits in Bitrix24; anything longer than this is no portal of ours,
/// and the cap keeps [`command_id`] within Mango's 128 bytes.
pub const MAX_MEMBER_ID_LEN: usize = 64;
/// Mango's documented limit for `command_id`.
pub const MAX_COMMAND_ID_BYTES: usize = 128;

/// Whether `member_id` has the shape of a portal id: 1–[`MAX_MEMBER_ID_LEN`] ASCII letters,
/// digits, `-` or `_`.
pub fn is_member_id_shaped(member_id: &str) -> bool {
    !member_id.is_empty()
        && member_id.len() <= MAX_MEMBER_ID_LEN
        && member_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `command_id` for Mango: unique per callback and traceable to portal and deal.
///
/// Never truncated (a cut id could lose the callback id that makes it unique): the robot handler
/// admits only member ids of at most [`MAX_MEMBER_ID_LEN`] bytes and deal ids of at most
/// [`MAX_DEAL_ID_DIGITS`] digits, so `4 + 64 + 1 + 20 + 1 + 36 = 126` bytes is the longest.
pub fn command_id(member_id: &str, deal_id: &str, callback_id: &str) -> String {
    format!("b24:{member_id}:{deal_id}:{callback_id}")
}

/// How many times a command whose outcome stayed unknown is sent again, each with a new id.
pub const MAX_RESENDS: u32 = 2;

/// The `command_id` of resend `n` of a callback whose first command is `base`: `base` itself for
/// the first send, `base:n` after. Mango does not deduplicate `command_id`, and a resend must not
/// be taken for the first command when results come in, so each send has its own id; the suffix
/// keeps every id of one callback derivable from any of them (see [`command_ids_of`]). The
/// longest `base` is 126 bytes, so `base:2` still fits [`MAX_COMMAND_ID_BYTES`].
pub fn command_id_of_send(base: &str, n: u32) -> String {
    if n == 0 {
        base.to_owned()
    } else {
        format!("{base}:{n}")
    }
}

/// `(base, n)` of a `command_id` made by [`command_id_of_send`]. A base ends in the callback's
/// UUID, which always has a `-`, so a digits-only last segment can only be a resend number.
pub fn resend_of(command_id: &str) -> (&str, u32) {
    match command_id.rsplit_once(':') {
        Some((base, n)) if (1..=2).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()) => {
            match n.parse::<u32>() {
                Ok(n) if (1..=MAX_RESENDS).contains(&n) => (base, n),
                _ => (command_id, 0),
            }
        }
        _ => (command_id, 0),
    }
}

/// Every `command_id` a callback may have had, given any one of them: a result Mango posts for
/// an earlier send of the callback still belongs to it.
pub fn command_ids_of(command_id: &str) -> Vec<String> {
    let (base, _) = resend_of(command_id);
    (0..=MAX_RESENDS)
        .map(|n| command_id_of_send(base, n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deal_id_is_one_to_twenty_ascii_digits() {
        for ok in ["1", "0042", &"9".repeat(MAX_DEAL_ID_DIGITS)] {
            assert_eq!(
                DealId::parse(ok).map(|d| d.to_string()),
                Some(ok.to_owned())
            );
        }
        for bad in [
            "",
            "12a",
            "-1",
            " 1",
            "１２",
            &"9".repeat(MAX_DEAL_ID_DIGITS + 1),
        ] {
            assert_eq!(DealId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_longest_admitted_command_id_fits_mangos_limit() {
        let member = "f".repeat(MAX_MEMBER_ID_LEN);
        let deal = "9".repeat(MAX_DEAL_ID_DIGITS);
        let id = uuid::Uuid::now_v7().to_string();
        assert!(is_member_id_shaped(&member));
        let cmd = command_id(&member, &deal, &id);
        assert!(cmd.len() <= MAX_COMMAND_ID_BYTES, "{} bytes", cmd.len());
        assert!(cmd.ends_with(&id), "the callback id survives whole");
        let last = command_id_of_send(&cmd, MAX_RESENDS);
        assert!(last.len() <= MAX_COMMAND_ID_BYTES, "{} bytes", last.len());
    }

    #[test]
    fn every_send_of_a_callback_has_its_own_id_and_each_leads_back_to_all_of_them() {
        let base = command_id("m1", "42", &uuid::Uuid::now_v7().to_string());
        let ids: Vec<String> = (0..=MAX_RESENDS)
            .map(|n| command_id_of_send(&base, n))
            .collect();
        assert_eq!(ids[0], base);
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(resend_of(id), (base.as_str(), n as u32));
            assert_eq!(command_ids_of(id), ids);
        }
        assert_eq!(
            resend_of("cmd-c4"),
            ("cmd-c4", 0),
            "a foreign id is its own base"
        );
    }

    #[test]
    fn member_ids_of_another_shape_are_not_admitted() {
        for bad in [
            "",
            "a b",
            "x".repeat(MAX_MEMBER_ID_LEN + 1).as_str(),
            "абв",
            "a:b",
        ] {
            assert!(!is_member_id_shaped(bad), "{bad:?}");
        }
        assert!(is_member_id_shaped("a223c6b3710f85df22e9377d6c4f7553"));
    }

    #[test]
    fn statuses_and_groups_keep_their_stored_codes() {
        let codes: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        // The strings stored before the enums existed: changing one would need a migration.
        assert_eq!(
            codes,
            [
                "queued",
                "calling",
                "started",
                "duplicate",
                "no_phone",
                "failed"
            ]
        );
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("Failed"), None);
        for g in [Group::Trainee, Group::Experienced] {
            assert_eq!(Group::parse(g.as_str()), Some(g));
        }
        assert_eq!(Group::parse("trainees"), None);
    }

    #[test]
    fn quoted_values_are_cut_and_escaped() {
        assert_eq!(shown("LEAD_5"), "\"LEAD_5\"");
        let long = shown(&"7".repeat(500));
        assert!(long.chars().count() < 50, "{long}");
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
        let raw = Unusable::NotADeal("Я".repeat(500));
        assert_eq!(
            raw.clipped().message(crate::portal::Lang::Ru),
            raw.message(crate::portal::Lang::Ru),
            "clipping changes no text"
        );
    }
}
