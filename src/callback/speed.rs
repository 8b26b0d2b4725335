//! Speed to lead: how long a robot call took to become a client talking to a manager, and how
//! often managers and clients answered, per portal, for today, 7 and 30 days (days in the
//! portal's time zone), with a daily series for the settings page's chart.
//!
//! Speed to lead is `client_connected_at − created_at`: from the robot call's acceptance to the
//! client being connected, retries and waits for working hours included, because that is what
//! the lead experiences. The SQL only selects a bounded window of rows (portable to SQLite and
//! PostgreSQL); the counting and percentiles are done here in Rust.

use chrono::{Duration, NaiveDate, NaiveDateTime};
use chrono_tz::Tz;
use diesel::prelude::*;

use super::Status;
use crate::db::schema::callbacks;
use crate::db::DbConnection;

/// The zone days are counted in when a portal's `timezone` is not a known IANA name.
pub const DEFAULT_TZ: Tz = chrono_tz::Europe::Moscow;

/// How many days the longest window and the chart cover (today included).
pub const SERIES_DAYS: usize = 30;

/// At most this many callbacks are read for the 30 days (newest first): bounds the page's work
/// on a very busy portal; beyond it the oldest days are counted short.
pub const MAX_ROWS: i64 = 100_000;

/// What one callback contributes: when it was accepted, how it ended, when the client connected.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct CallFact {
    pub created_at: NaiveDateTime,
    pub call_outcome: Option<String>,
    pub client_connected_at: Option<NaiveDateTime>,
}

/// The numbers of one window (today, 7 days, 30 days).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Callbacks accepted in the window (duplicates cut off by the robot are not callbacks).
    pub callbacks: u32,
    /// Of those, the ones whose call ended with a known outcome (not pending, not `unknown`).
    pub known: u32,
    /// A manager answered (`answered` or `client_missed`).
    pub manager_answered: u32,
    /// The client answered too (`answered`).
    pub client_answered: u32,
    /// Callbacks whose client was connected, with a speed to lead.
    pub connected: u32,
    /// Median and 90th percentile speed to lead, whole seconds; `None` with nobody connected.
    pub median_secs: Option<i64>,
    pub p90_secs: Option<i64>,
}

/// One day of the chart, in the portal's zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayPoint {
    pub date: NaiveDate,
    /// Callbacks accepted that day.
    pub callbacks: u32,
    /// Median speed to lead of that day's connected callbacks.
    pub median_secs: Option<i64>,
}

/// The whole panel: three windows and the last [`SERIES_DAYS`] days, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeedReport {
    pub today: WindowStats,
    pub week: WindowStats,
    pub month: WindowStats,
    pub days: Vec<DayPoint>,
}

impl SpeedReport {
    /// Whether there is anything to show at all.
    pub fn is_empty(&self) -> bool {
        self.month.callbacks == 0
    }
}

/// The portal's zone from its `timezone` setting; an unknown name falls back to Moscow (the
/// settings form validates the name, so this only guards rows written before it did).
pub fn zone_of(name: &str) -> Tz {
    name.trim().parse().unwrap_or_else(|_| {
        tracing::warn!(timezone = %name, "unknown portal time zone; days are counted in Europe/Moscow");
        DEFAULT_TZ
    })
}

/// The `p`-th percentile (0–100) of ascending `sorted` values, interpolated linearly between the
/// two nearest ranks (the common "type 7" definition: the median of 60 and 120 is 90), rounded
/// to whole seconds. `None` for no values.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = p.clamp(0.0, 100.0) / 100.0 * last as f64;
    let below = rank.floor() as usize;
    let above = rank.ceil() as usize;
    let (lo, hi) = (sorted[below.min(last)], sorted[above.min(last)]);
    Some((lo as f64 + (hi - lo) as f64 * (rank - below as f64)).round() as i64)
}

/// Speed to lead of one callback in seconds, when its client was connected. A connection
/// recorded before the callback itself (a clock error) counts as no speed rather than negative.
fn speed_secs(f: &CallFact) -> Option<i64> {
    let d = f.client_connected_at? - f.created_at;
    (d >= Duration::zero()).then(|| d.num_seconds())
}

fn window(facts: &[&CallFact]) -> WindowStats {
    let mut s = WindowStats::default();
    let mut speeds = Vec::new();
    for f in facts {
        s.callbacks += 1;
        match f.call_outcome.as_deref() {
            Some("answered") => {
                s.known += 1;
                s.manager_answered += 1;
                s.client_answered += 1;
            }
            Some("client_missed") => {
                s.known += 1;
                s.manager_answered += 1;
            }
            Some("manager_missed" | "failed") => s.known += 1,
            _ => {}
        }
        if let Some(secs) = speed_secs(f) {
            speeds.push(secs);
        }
    }
    speeds.sort_unstable();
    s.connected = u32::try_from(speeds.len()).unwrap_or(u32::MAX);
    s.median_secs = percentile(&speeds, 50.0);
    s.p90_secs = percentile(&speeds, 90.0);
    s
}

/// The report at `now` (UTC) for days in `tz`, from the callbacks of (at least) the last
/// [`SERIES_DAYS`] local days; facts outside those days are ignored.
pub fn report(facts: &[CallFact], now: NaiveDateTime, tz: Tz) -> SpeedReport {
    let local_day = |t: NaiveDateTime| t.and_utc().with_timezone(&tz).date_naive();
    let today = local_day(now);
    // Each fact's local day is worked out once: `by_day[back]` holds the callbacks of the day
    // `back` days before today (a row from the future, a clock error, is left out).
    let mut by_day: Vec<Vec<&CallFact>> = vec![Vec::new(); SERIES_DAYS];
    for f in facts {
        let back = (today - local_day(f.created_at)).num_days();
        if let Some(day) = usize::try_from(back).ok().and_then(|b| by_day.get_mut(b)) {
            day.push(f);
        }
    }
    let in_last = |n: usize| -> Vec<&CallFact> { by_day[..n].concat() };
    let days = by_day
        .iter()
        .enumerate()
        .rev()
        .map(|(back, of_day)| {
            let w = window(of_day);
            DayPoint {
                date: today - Duration::days(back as i64),
                callbacks: w.callbacks,
                median_secs: w.median_secs,
            }
        })
        .collect();
    SpeedReport {
        today: window(&in_last(1)),
        week: window(&in_last(7)),
        month: window(&in_last(SERIES_DAYS)),
        days,
    }
}

/// The portal's callbacks of the last [`SERIES_DAYS`] days and a day more (so every zone's
/// local days are covered; [`report`] cuts them to the local days), newest first, at most
/// [`MAX_ROWS`].
pub fn recent_facts(
    conn: &mut DbConnection,
    member_id: &str,
    now: NaiveDateTime,
) -> QueryResult<Vec<CallFact>> {
    let since = now - Duration::days(SERIES_DAYS as i64 + 1);
    callbacks::table
        .filter(callbacks::member_id.eq(member_id))
        .filter(callbacks::created_at.ge(since))
        .filter(callbacks::status.ne(Status::Duplicate))
        .order(callbacks::created_at.desc())
        .limit(MAX_ROWS)
        .select((
            callbacks::created_at,
            callbacks::call_outcome,
            callbacks::client_connected_at,
        ))
        .load(conn)
}

/// The portal's report at `now`, days counted in the zone named `timezone`.
pub fn load(
    conn: &mut DbConnection,
    member_id: &str,
    timezone: &str,
    now: NaiveDateTime,
) -> QueryResult<SpeedReport> {
    Ok(report(
        &recent_facts(conn, member_id, now)?,
        now,
        zone_of(timezone),
    ))
}

#[cfg(test)]
#[path = "speed_tests.rs"]
mod tests;
