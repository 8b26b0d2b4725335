//! The working-hours part of the settings form: what was typed, its validation (the rules are
//! `portal::hours`'), and the stored form it saves. Free of I/O, unit-tested here.

use std::collections::HashMap;

use crate::portal::hours::{
    hhmm, holidays_text, parse_hhmm, parse_holidays, parse_timezone, parse_work_days,
    work_days_text, HoursError, DAY_MINUTES,
};
use crate::portal::{Lang, PortalSettings};

/// The zones offered in the time zone field's suggestions: Russia's, west to east. Any other
/// IANA name may be typed.
pub const COMMON_ZONES: [&str; 11] = [
    "Europe/Kaliningrad",
    "Europe/Moscow",
    "Europe/Samara",
    "Asia/Yekaterinburg",
    "Asia/Omsk",
    "Asia/Novosibirsk",
    "Asia/Krasnoyarsk",
    "Asia/Irkutsk",
    "Asia/Yakutsk",
    "Asia/Vladivostok",
    "Asia/Kamchatka",
];

/// The longest holidays field read: 366 dates one per line fit in 4 KiB.
const MAX_HOLIDAYS_CHARS: usize = 8 * 1024;

/// The working-hours fields as typed, echoed back on errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoursInput {
    /// The form had the working-hours section (its hidden `hours_form` field). A page opened
    /// before the section existed and saved after an upgrade leaves the stored hours as they are
    /// instead of switching them off with its missing checkboxes.
    pub present: bool,
    pub enabled: bool,
    pub timezone: String,
    /// Monday first.
    pub days: [bool; 7],
    pub start: String,
    pub end: String,
    pub holidays: String,
}

/// One weekday checkbox as the template prints it.
pub struct DayBox {
    pub n: usize,
    pub ru: &'static str,
    pub en: &'static str,
    pub checked: bool,
}

impl HoursInput {
    pub fn from_settings(s: &PortalSettings) -> HoursInput {
        HoursInput {
            present: true,
            enabled: s.hours_enabled,
            timezone: s.timezone.clone(),
            days: parse_work_days(&s.work_days).unwrap_or_default(),
            start: hhmm(s.work_start_minute),
            end: hhmm(s.work_end_minute),
            holidays: s.holidays.replace(',', "\n"),
        }
    }

    pub fn from_form(form: &HashMap<String, String>) -> HoursInput {
        let get = |k: &str| form.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        let on = |k: &str| form.get(k).is_some_and(|v| !v.is_empty());
        let mut days = [false; 7];
        for (i, day) in days.iter_mut().enumerate() {
            *day = on(&format!("work_day_{}", i + 1));
        }
        HoursInput {
            present: on("hours_form"),
            enabled: on("hours_enabled"),
            timezone: get("timezone"),
            days,
            start: get("work_start"),
            end: get("work_end"),
            holidays: get("holidays"),
        }
    }

    pub fn day_boxes(&self) -> Vec<DayBox> {
        const NAMES: [(&str, &str); 7] = [
            ("Пн", "Mon"),
            ("Вт", "Tue"),
            ("Ср", "Wed"),
            ("Чт", "Thu"),
            ("Пт", "Fri"),
            ("Сб", "Sat"),
            ("Вс", "Sun"),
        ];
        NAMES
            .iter()
            .zip(self.days)
            .enumerate()
            .map(|(i, ((ru, en), checked))| DayBox {
                n: i + 1,
                ru,
                en,
                checked,
            })
            .collect()
    }

    pub fn zones(&self) -> &'static [&'static str] {
        &COMMON_ZONES
    }
}

/// Messages next to the wrong working-hours fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoursErrors {
    pub timezone: Option<String>,
    pub work_days: Option<String>,
    pub work_start: Option<String>,
    pub work_end: Option<String>,
    pub holidays: Option<String>,
}

impl HoursErrors {
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("timezone", &self.timezone),
            ("work_days", &self.work_days),
            ("work_start", &self.work_start),
            ("work_end", &self.work_end),
            ("holidays", &self.holidays),
        ]
        .into_iter()
        .filter(|(_, e)| e.is_some())
        .map(|(n, _)| n)
        .collect()
    }
}

/// Working hours that passed [`validate_hours`], in their stored form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidHours {
    pub enabled: bool,
    pub timezone: String,
    pub work_days: String,
    pub start_minute: i32,
    pub end_minute: i32,
    pub holidays: String,
}

impl ValidHours {
    pub fn apply(self, s: &mut PortalSettings) {
        s.hours_enabled = self.enabled;
        s.timezone = self.timezone;
        s.work_days = self.work_days;
        s.work_start_minute = self.start_minute;
        s.work_end_minute = self.end_minute;
        s.holidays = self.holidays;
    }
}

/// Checks the working-hours fields; `Ok(None)` when the form had no such section (the stored
/// hours stay). The fields are checked even with the switch off, so switching it on later
/// cannot meet stored hours that never opened.
pub fn validate_hours(input: &HoursInput, lang: Lang) -> Result<Option<ValidHours>, HoursErrors> {
    if !input.present {
        return Ok(None);
    }
    let mut e = HoursErrors::default();
    let msg = |err: HoursError| Some(err.message(lang));
    let timezone = parse_timezone(&input.timezone).map_err(|x| e.timezone = msg(x));
    let days = work_days_text(&input.days);
    if let Err(x) = parse_work_days(&days) {
        e.work_days = msg(x);
    }
    let start = parse_hhmm(&input.start)
        .and_then(|m| {
            (m < DAY_MINUTES)
                .then_some(m)
                .ok_or_else(|| HoursError::BadTime(input.start.clone()))
        })
        .map_err(|x| e.work_start = msg(x));
    let end = parse_hhmm(&input.end)
        .and_then(|m| {
            (m > 0)
                .then_some(m)
                .ok_or_else(|| HoursError::BadTime(input.end.clone()))
        })
        .map_err(|x| e.work_end = msg(x));
    if let (Ok(s), Ok(en)) = (start, end) {
        if en <= s {
            e.work_end = msg(HoursError::EndNotAfterStart);
        }
    }
    let holidays = if input.holidays.len() > MAX_HOLIDAYS_CHARS {
        // Too long to be a year of dates: counted, not parsed.
        let n = input
            .holidays
            .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .count();
        e.holidays = msg(HoursError::TooManyHolidays(n));
        Err(())
    } else {
        parse_holidays(&input.holidays).map_err(|x| e.holidays = msg(x))
    };
    match (timezone, start, end, holidays) {
        (Ok(tz), Ok(start_minute), Ok(end_minute), Ok(h)) if e.names().is_empty() => {
            Ok(Some(ValidHours {
                enabled: input.enabled,
                timezone: tz.name().to_owned(),
                work_days: days,
                start_minute,
                end_minute,
                holidays: holidays_text(&h),
            }))
        }
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> HoursInput {
        HoursInput {
            present: true,
            enabled: true,
            timezone: "Asia/Yekaterinburg".into(),
            days: [true, true, true, true, true, false, false],
            start: "9:00".into(),
            end: "18:30".into(),
            holidays: "2027-01-07\n2027-01-01, 2027-01-01".into(),
        }
    }

    #[test]
    fn valid_hours_are_stored_in_their_plain_form() {
        let v = validate_hours(&good(), Lang::En)
            .expect("valid")
            .expect("present");
        assert_eq!(v.work_days, "1,2,3,4,5");
        assert_eq!((v.start_minute, v.end_minute), (540, 1110));
        assert_eq!(v.holidays, "2027-01-01,2027-01-07");
        let mut s = PortalSettings::defaults("m1", chrono::NaiveDateTime::default());
        v.apply(&mut s);
        let back = HoursInput::from_settings(&s);
        assert_eq!(back.start, "09:00");
        assert_eq!(back.holidays, "2027-01-01\n2027-01-07");
        assert!(back.enabled && back.days[4] && !back.days[5]);
    }

    #[test]
    fn each_bad_field_gets_its_message_and_a_form_without_the_section_keeps_the_stored_hours() {
        let bad = HoursInput {
            timezone: "Moscow".into(),
            days: [false; 7],
            start: "25:00".into(),
            end: "8:00".into(),
            holidays: "2027-13-01".into(),
            ..good()
        };
        let e = validate_hours(&bad, Lang::Ru).expect_err("all bad");
        assert_eq!(
            e.names(),
            ["timezone", "work_days", "work_start", "holidays"]
        );
        let backwards = HoursInput {
            start: "18:00".into(),
            end: "09:00".into(),
            ..good()
        };
        let e = validate_hours(&backwards, Lang::En).expect_err("end before start");
        assert_eq!(e.names(), ["work_end"]);
        let start_at_24 = HoursInput {
            start: "24:00".into(),
            end: "24:00".into(),
            ..good()
        };
        assert!(validate_hours(&start_at_24, Lang::En).is_err());
        let huge = HoursInput {
            holidays: "2027-01-01\n".repeat(2000),
            ..good()
        };
        assert_eq!(
            validate_hours(&huge, Lang::En)
                .expect_err("too long")
                .names(),
            ["holidays"]
        );
        assert_eq!(validate_hours(&HoursInput::default(), Lang::En), Ok(None));
    }
}
