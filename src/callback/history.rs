//! The call log's view of `call_attempts`: each callback's attempts (first call and retries),
//! read only. The rows are written as Mango's events arrive (the outcome loop, #11).

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::call_attempts;
use crate::db::DbConnection;

/// One attempt of a callback as the call log prints it.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = call_attempts)]
pub struct AttemptLine {
    pub callback_id: String,
    /// 1 for the first call, then 2, 3… for the retries.
    pub n: i32,
    /// `trainee` or `experienced`, and the Mango group number rung.
    pub group_kind: String,
    pub group_extension: String,
    /// When the command was sent to Mango.
    pub placed_at: NaiveDateTime,
    /// How this attempt ended (the callback's outcome codes); `None` while it is under way.
    pub outcome: Option<String>,
    pub manager_extension: Option<String>,
    pub talk_seconds: Option<i32>,
}

/// The attempts of these callbacks, by callback and then in order (the ids come from one page
/// of the call log, so the list is bounded by it).
pub fn attempts_of(
    conn: &mut DbConnection,
    member_id: &str,
    callback_ids: &[String],
) -> QueryResult<Vec<AttemptLine>> {
    if callback_ids.is_empty() {
        return Ok(Vec::new());
    }
    call_attempts::table
        .filter(call_attempts::member_id.eq(member_id))
        .filter(call_attempts::callback_id.eq_any(callback_ids))
        .order((call_attempts::callback_id, call_attempts::n))
        .select(AttemptLine::as_select())
        .load(conn)
}
