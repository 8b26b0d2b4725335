//! Working hours: when a portal lets calls be placed (time zone, weekdays, opening and closing
//! time, holidays), parsed and validated from its settings, and the pure questions asked of them:
//! [`WorkingHours::is_open`] and [`WorkingHours::next_opening`]. No I/O and no clock, so the
//! robot handler and the retries (which place later attempts) get the same answers, and every
//! rule is unit- and property-tested here.

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike};
use chrono_tz::Tz;

use super::{Lang, PortalSettings};

/// At most this many holidays: a year of dates, and the bound of [`MAX_SEARCH_DAYS`].
pub const MAX_HOLIDAYS: usize = 366;

/// Holidays are dates of these years: a typo like `0202-01-01` is refused, not stored.
pub const HOLIDAY_YEARS: std::ops::RangeInclusive<i32> = 2000..=2100;

/// How far [`WorkingHours::next_opening`] looks ahead. Validation guarantees a working weekday;
/// even if every one of [`MAX_HOLIDAYS`] holidays falls on it, the `MAX_HOLIDAYS + 1`-th
/// occurrence of that weekday is open, and it lies within `7 * (MAX_HOLIDAYS + 2)` days.
pub const MAX_SEARCH_DAYS: i64 = 7 * (MAX_HOLIDAYS as i64 + 2);

/// Minutes in a day: the closing time may be 24:00 (`1440`), the opening time at most 23:59.
pub const DAY_MINUTES: i32 = 24 * 60;

/// Why the working-hours settings cannot be used. Each says what is wrong in the page's
/// language ([`HoursError::message`]); raw values are cut short before they are shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoursError {
    /// Not an IANA time zone name (`Europe/Moscow`).
    BadTimezone(String),
    /// A weekday that is not 1–7.
    BadWeekday(String),
    /// No weekday is a working day: no opening would ever come.
    NoWorkDay,
    /// Opening or closing time out of range or not `HH:MM`.
    BadTime(String),
    /// The closing time is not after the opening time (overnight hours are not supported).
    EndNotAfterStart,
    /// A holiday that is not a `YYYY-MM-DD` date of [`HOLIDAY_YEARS`].
    BadHoliday(String),
    /// More than [`MAX_HOLIDAYS`] holidays.
    TooManyHolidays(usize),
}

/// A raw value as shown in a message: at most 40 characters.
fn cut(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    out
}

impl HoursError {
    pub fn message(&self, lang: Lang) -> String {
        match self {
            HoursError::BadTimezone(v) => format!(
                "{} «{}»",
                lang.t(
                    "Неизвестный часовой пояс; укажите имя из базы IANA, например Europe/Moscow:",
                    "Unknown time zone; enter an IANA name such as Europe/Moscow:"
                ),
                cut(v)
            ),
            HoursError::BadWeekday(v) => format!(
                "{} «{}»",
                lang.t(
                    "День недели — число от 1 до 7:",
                    "A weekday is a number from 1 to 7:"
                ),
                cut(v)
            ),
            HoursError::NoWorkDay => lang
                .t(
                    "Отметьте хотя бы один рабочий день",
                    "Tick at least one working day",
                )
                .to_owned(),
            HoursError::BadTime(v) => format!(
                "{} «{}»",
                lang.t(
                    "Время — ЧЧ:ММ от 00:00 до 24:00:",
                    "A time is HH:MM from 00:00 to 24:00:"
                ),
                cut(v)
            ),
            HoursError::EndNotAfterStart => lang
                .t(
                    "Конец рабочего дня должен быть позже начала",
                    "The end of the working day must be after its start",
                )
                .to_owned(),
            HoursError::BadHoliday(v) => format!(
                "{} «{}»",
                lang.t(
                    "Праздник — дата ГГГГ-ММ-ДД (2000–2100):",
                    "A holiday is a YYYY-MM-DD date (2000–2100):"
                ),
                cut(v)
            ),
            HoursError::TooManyHolidays(n) => format!(
                "{} {MAX_HOLIDAYS} ({n})",
                lang.t("Праздников не больше", "At most this many holidays:")
            ),
        }
    }
}

/// Validated working hours of one portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingHours {
    tz: Tz,
    /// Index 0 is Monday (ISO weekday 1).
    days: [bool; 7],
    /// Opening time, minutes after local midnight, `0..DAY_MINUTES`.
    start: i32,
    /// Closing time (exclusive), `start + 1 ..= DAY_MINUTES`.
    end: i32,
    holidays: BTreeSet<NaiveDate>,
}

/// A time zone name: any IANA name chrono-tz knows.
pub fn parse_timezone(s: &str) -> Result<Tz, HoursError> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return Err(HoursError::BadTimezone(s.to_owned()));
    }
    Tz::from_str(s).map_err(|_| HoursError::BadTimezone(s.to_owned()))
}

/// ISO weekdays as stored (`1,2,3,4,5`): each 1–7, at least one.
pub fn parse_work_days(s: &str) -> Result<[bool; 7], HoursError> {
    let mut days = [false; 7];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<usize>() {
            Ok(d @ 1..=7) if part.len() == 1 => days[d - 1] = true,
            _ => return Err(HoursError::BadWeekday(part.to_owned())),
        }
    }
    if days.iter().any(|d| *d) {
        Ok(days)
    } else {
        Err(HoursError::NoWorkDay)
    }
}

/// The stored form of weekdays: `1,2,3,4,5`.
pub fn work_days_text(days: &[bool; 7]) -> String {
    (1..=7)
        .filter(|d| days[d - 1])
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `HH:MM` (one or two hour digits) → minutes after midnight, `00:00..=24:00`.
pub fn parse_hhmm(s: &str) -> Result<i32, HoursError> {
    let bad = || HoursError::BadTime(s.to_owned());
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let digits = |p: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return Err(bad());
    }
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let total = h * 60 + m;
    if h > 24 || m > 59 || total > DAY_MINUTES {
        return Err(bad());
    }
    Ok(total)
}

/// Minutes after midnight as `HH:MM` (`1440` → `24:00`); out-of-range values are clamped.
pub fn hhmm(minutes: i32) -> String {
    let m = minutes.clamp(0, DAY_MINUTES);
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// Holidays typed one per line or comma (or space, semicolon) separated; duplicates collapse.
pub fn parse_holidays(s: &str) -> Result<BTreeSet<NaiveDate>, HoursError> {
    let mut out = BTreeSet::new();
    let mut count = 0usize;
    for part in s
        .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|p| !p.is_empty())
    {
        count += 1;
        if count > MAX_HOLIDAYS * 4 {
            // Far past the limit: stop reading a pasted book, the answer is known.
            break;
        }
        let ok = part.len() == 10 && part.as_bytes()[4] == b'-' && part.as_bytes()[7] == b'-';
        let date = NaiveDate::parse_from_str(part, "%Y-%m-%d")
            .ok()
            .filter(|d| ok && HOLIDAY_YEARS.contains(&d.year()))
            .ok_or_else(|| HoursError::BadHoliday(part.to_owned()))?;
        out.insert(date);
    }
    if out.len() > MAX_HOLIDAYS {
        return Err(HoursError::TooManyHolidays(out.len()));
    }
    Ok(out)
}

/// The stored form of holidays: sorted `YYYY-MM-DD`, comma separated.
pub fn holidays_text(holidays: &BTreeSet<NaiveDate>) -> String {
    holidays
        .iter()
        .map(|d| d.format("%Y-%m-%d").to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl WorkingHours {
    /// Validates every part; the first problem found is the error.
    pub fn new(
        timezone: &str,
        work_days: &str,
        start_minute: i32,
        end_minute: i32,
        holidays: &str,
    ) -> Result<WorkingHours, HoursError> {
        let tz = parse_timezone(timezone)?;
        let days = parse_work_days(work_days)?;
        if !(0..DAY_MINUTES).contains(&start_minute) {
            return Err(HoursError::BadTime(hhmm(start_minute)));
        }
        if !(1..=DAY_MINUTES).contains(&end_minute) {
            return Err(HoursError::BadTime(hhmm(end_minute)));
        }
        if end_minute <= start_minute {
            return Err(HoursError::EndNotAfterStart);
        }
        Ok(WorkingHours {
            tz,
            days,
            start: start_minute,
            end: end_minute,
            holidays: parse_holidays(holidays)?,
        })
    }

    /// The portal's hours when they are enabled; `Ok(None)` when calls may be placed any time.
    pub fn from_settings(s: &PortalSettings) -> Result<Option<WorkingHours>, HoursError> {
        if !s.hours_enabled {
            return Ok(None);
        }
        WorkingHours::new(
            &s.timezone,
            &s.work_days,
            s.work_start_minute,
            s.work_end_minute,
            &s.holidays,
        )
        .map(Some)
    }

    /// The IANA name of the time zone, as texts show it.
    pub fn timezone_name(&self) -> &'static str {
        self.tz.name()
    }

    /// The wall-clock time in the portal's zone at the UTC instant `at`.
    pub fn local(&self, at_utc: NaiveDateTime) -> NaiveDateTime {
        self.tz.from_utc_datetime(&at_utc).naive_local()
    }

    fn open_day(&self, date: NaiveDate) -> bool {
        let weekday = date.weekday().num_days_from_monday() as usize;
        self.days[weekday] && !self.holidays.contains(&date)
    }

    /// Whether a call may be placed at the UTC instant `at`: a working weekday, not a holiday,
    /// and the local time within `[start, end)`.
    pub fn is_open(&self, at_utc: NaiveDateTime) -> bool {
        let local = self.local(at_utc);
        let minute = (local.hour() * 60 + local.minute()) as i32;
        self.open_day(local.date()) && (self.start..self.end).contains(&minute)
    }

    /// The UTC instant the local wall-clock time `minute` of `date` first happens. In a DST gap
    /// (the clock jumps over it) that is the instant the clock jumps, when the first later local
    /// time exists; in a DST overlap (it happens twice) the earlier one.
    fn first_instant(&self, date: NaiveDate, minute: i32) -> Option<NaiveDateTime> {
        let wall = date.and_hms_opt(0, 0, 0)? + Duration::minutes(i64::from(minute));
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(t) => Some(t.naive_utc()),
            LocalResult::Ambiguous(early, _) => Some(early.naive_utc()),
            // In a gap: the first instant whose local time is past `wall` is the jump itself
            // (a quarter-hour scan would overshoot a half-hour jump such as Lord Howe's). Local
            // time only moves forward across a gap, and every UTC offset lies within 14 hours,
            // so a search to the second over that span finds it.
            LocalResult::None => {
                let (mut lo, mut hi) = (-15 * 3600_i64, 15 * 3600_i64);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if self.local(wall + Duration::seconds(mid)) >= wall {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                Some(wall + Duration::seconds(hi))
            }
        }
    }

    /// When the next call may be placed at or after the UTC instant `at`: `at` itself when open,
    /// else the next opening (UTC), skipping closed weekdays and holidays, in the portal's local
    /// time (so across DST changes too). The search is bounded by [`MAX_SEARCH_DAYS`], which
    /// validation guarantees to contain an opening; should it ever not, `at` is returned (the
    /// call is placed rather than lost).
    pub fn next_opening(&self, at_utc: NaiveDateTime) -> NaiveDateTime {
        if self.is_open(at_utc) {
            return at_utc;
        }
        let first = self.local(at_utc).date();
        for offset in 0..=MAX_SEARCH_DAYS {
            let Some(date) = first.checked_add_signed(Duration::days(offset)) else {
                break;
            };
            if !self.open_day(date) {
                continue;
            }
            if let Some(opening) = self.first_instant(date, self.start) {
                // A DST jump can move the opening past closing time; such a day has no opening.
                if opening > at_utc && self.is_open(opening) {
                    return opening;
                }
            }
        }
        at_utc
    }
}

#[cfg(test)]
mod tests;
