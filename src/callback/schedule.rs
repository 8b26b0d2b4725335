//! Working hours applied to a robot run: a run accepted while the portal is closed is placed at
//! the next opening ([`opening_for`]); the timeline's text for it ([`comment_text`]). Free of
//! jobs and HTTP, so `lifecycle` uses it when accepting a run and `announce` when telling.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::callbacks;
use crate::db::DbConnection;
use crate::portal::hours::{parse_timezone, WorkingHours};
use crate::portal::{Lang, PortalSettings};

/// The `result` a business process receives for a run that waits for working hours.
pub const RESULT_SCHEDULED: &str = "scheduled";

/// When a run accepted at `now` may place its call: `None` for at once (hours off, or open now).
///
/// Stored hours that do not validate (only a hand-edited row could have them: the settings page
/// refuses them) do not hold calls back; the call is placed at once and the problem logged.
pub fn opening_for(settings: &PortalSettings, now: NaiveDateTime) -> Option<NaiveDateTime> {
    match WorkingHours::from_settings(settings) {
        Ok(Some(hours)) if !hours.is_open(now) => Some(hours.next_opening(now)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(portal = %settings.member_id, error = %e.message(Lang::En), "stored working hours are invalid; the call is placed at once");
            None
        }
    }
}

/// Records when the run's call may be placed (its `PlaceCall` job waits for the same time).
/// Kept here beside its only writer rather than in `store`, which is long enough.
pub fn set_scheduled_for(c: &mut DbConnection, id: &str, at: NaiveDateTime) -> QueryResult<usize> {
    diesel::update(callbacks::table.find(id))
        .set(callbacks::scheduled_for.eq(at))
        .execute(c)
}

/// The timeline comment of a scheduled run: the opening in the portal's zone, its name shown.
pub fn comment_text(at_utc: NaiveDateTime, timezone: &str, lang: Lang) -> String {
    // A zone changed to something unreadable since: UTC, named as such, is still true.
    let tz = parse_timezone(timezone).unwrap_or(chrono_tz::UTC);
    let local = chrono::TimeZone::from_utc_datetime(&tz, &at_utc).naive_local();
    match lang {
        Lang::Ru => format!(
            "Mango Office. Звонок будет совершён {} в {} ({}) — сейчас нерабочее время.",
            local.format("%d.%m.%Y"),
            local.format("%H:%M"),
            tz.name()
        ),
        Lang::En => format!(
            "Mango Office. The call will be made on {} at {} ({}) — outside working hours now.",
            local.format("%Y-%m-%d"),
            local.format("%H:%M"),
            tz.name()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").expect("test time")
    }

    #[test]
    fn the_comment_names_the_local_time_and_zone_in_both_languages() {
        let at = utc("2026-12-04 06:00");
        assert_eq!(
            comment_text(at, "Europe/Moscow", Lang::Ru),
            "Mango Office. Звонок будет совершён 04.12.2026 в 09:00 (Europe/Moscow) — сейчас нерабочее время."
        );
        assert!(comment_text(at, "Europe/Moscow", Lang::En)
            .contains("The call will be made on 2026-12-04 at 09:00 (Europe/Moscow)"));
        assert!(comment_text(at, "Nowhere/Land", Lang::En).contains("at 06:00 (UTC)"));
    }

    #[test]
    fn a_run_waits_only_when_hours_are_on_and_closed() {
        let mut s = PortalSettings::defaults("m1", utc("2026-12-01 00:00"));
        let night = utc("2026-12-03 19:00"); // Thursday 22:00 in Moscow
        assert_eq!(opening_for(&s, night), None, "hours off");
        s.hours_enabled = true;
        assert_eq!(opening_for(&s, night), Some(utc("2026-12-04 06:00")));
        assert_eq!(opening_for(&s, utc("2026-12-03 10:00")), None, "open");
        s.work_days = String::new();
        assert_eq!(
            opening_for(&s, night),
            None,
            "invalid hours hold nothing back"
        );
    }
}
