//! Unit and property tests of working hours: parsing refuses what it cannot use, and
//! `next_opening` is open, not early, and first.

use super::*;
use proptest::prelude::*;

fn utc(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").expect("test time")
}

fn moscow(holidays: &str) -> WorkingHours {
    WorkingHours::new("Europe/Moscow", "1,2,3,4,5", 540, 1080, holidays).expect("valid hours")
}

#[test]
fn a_call_at_22_moscow_on_friday_waits_for_9_on_tuesday_when_monday_is_a_holiday() {
    // 2026-12-04 is a Friday; Moscow is UTC+3 all year.
    let h = moscow("2026-12-07");
    let at = utc("2026-12-04 19:00"); // 22:00 in Moscow
    assert!(!h.is_open(at));
    assert_eq!(h.next_opening(at), utc("2026-12-08 06:00")); // Tuesday 09:00 in Moscow
}

#[test]
fn within_hours_the_opening_is_now_and_the_bounds_are_start_inclusive_end_exclusive() {
    let h = moscow("");
    let at = utc("2026-12-03 10:15");
    assert!(h.is_open(at));
    assert_eq!(h.next_opening(at), at);
    assert!(h.is_open(utc("2026-12-03 06:00")), "09:00 is open");
    assert!(!h.is_open(utc("2026-12-03 05:59")), "08:59 is closed");
    assert!(!h.is_open(utc("2026-12-03 15:00")), "18:00 is closed");
    assert_eq!(
        h.next_opening(utc("2026-12-03 05:59")),
        utc("2026-12-03 06:00")
    );
}

#[test]
fn an_opening_inside_a_half_hour_dst_jump_is_the_jump_itself() {
    // Lord Howe moves its clock from 02:00 to 02:30 on 2028-10-01 (a Sunday). Open 02:01–02:32:
    // the first open instant is 02:30 local (15:30 UTC), not half an hour past 02:01.
    let h = WorkingHours::new("Australia/Lord_Howe", "7", 121, 152, "").expect("valid");
    let next = h.next_opening(utc("2028-09-30 12:00"));
    assert_eq!(next, utc("2028-09-30 15:30"));
    assert!(!h.is_open(next - Duration::seconds(1)));
}

#[test]
fn the_opening_follows_a_dst_change_of_the_portals_zone() {
    // Berlin: 09:00 is 08:00 UTC in winter and 07:00 UTC after 2027-03-28.
    let h = WorkingHours::new("Europe/Berlin", "1,2,3,4,5,6,7", 540, 1080, "").expect("valid");
    assert_eq!(
        h.next_opening(utc("2027-03-27 18:00")),
        utc("2027-03-28 07:00")
    );
    assert_eq!(
        h.next_opening(utc("2027-03-26 18:00")),
        utc("2027-03-27 08:00")
    );
    // Opening at 02:30, which 2027-03-28 skips: the day opens when the clock jumps to 03:00.
    let h = WorkingHours::new("Europe/Berlin", "7", 150, 600, "").expect("valid");
    assert_eq!(
        h.next_opening(utc("2027-03-27 12:00")),
        utc("2027-03-28 01:00")
    );
    assert!(h.is_open(utc("2027-03-28 01:00")));
    assert!(!h.is_open(utc("2027-03-28 00:59")));
    // Opening at 02:30, which 2027-10-31 has twice: the first of them.
    assert_eq!(
        h.next_opening(utc("2027-10-30 12:00")),
        utc("2027-10-31 00:30")
    );
}

#[test]
fn settings_without_a_working_day_or_with_end_before_start_are_refused() {
    let new = |days: &str, s: i32, e: i32| WorkingHours::new("Europe/Moscow", days, s, e, "");
    assert_eq!(new("", 540, 1080), Err(HoursError::NoWorkDay));
    assert_eq!(new(" , ", 540, 1080), Err(HoursError::NoWorkDay));
    assert_eq!(
        new("1,8", 540, 1080),
        Err(HoursError::BadWeekday("8".into()))
    );
    assert_eq!(
        new("01", 540, 1080),
        Err(HoursError::BadWeekday("01".into()))
    );
    assert_eq!(new("1", 1080, 540), Err(HoursError::EndNotAfterStart));
    assert_eq!(new("1", 540, 540), Err(HoursError::EndNotAfterStart));
    assert!(matches!(new("1", -1, 540), Err(HoursError::BadTime(_))));
    assert!(matches!(new("1", 0, 1441), Err(HoursError::BadTime(_))));
    assert!(new("7", 0, 1440).is_ok(), "a whole day is fine");
    for tz in ["Mars/Base", "", "europe/moscow ", &"A".repeat(100)] {
        assert!(
            matches!(
                WorkingHours::new(tz, "1", 0, 60, ""),
                Err(HoursError::BadTimezone(_))
            ),
            "{tz:?}"
        );
    }
    assert!(WorkingHours::new("Asia/Yekaterinburg", "1", 0, 60, "").is_ok());
}

#[test]
fn times_and_holidays_parse_only_in_their_written_forms() {
    assert_eq!(parse_hhmm("09:00"), Ok(540));
    assert_eq!(parse_hhmm("9:05"), Ok(545));
    assert_eq!(parse_hhmm("24:00"), Ok(1440));
    for bad in [
        "24:01",
        "9",
        "09:60",
        "09:5",
        "-1:00",
        "+9:00",
        "09:00:00",
        "",
        "٠٩:٠٠",
    ] {
        assert!(parse_hhmm(bad).is_err(), "{bad:?}");
    }
    assert_eq!(hhmm(545), "09:05");
    assert_eq!(hhmm(1440), "24:00");
    let h = parse_holidays("2027-01-01\n2027-01-07, 2027-01-01;2026-12-31").expect("dates");
    assert_eq!(holidays_text(&h), "2026-12-31,2027-01-01,2027-01-07");
    for bad in [
        "2027-1-1",
        "2027-02-30",
        "1999-12-31",
        "2101-01-01",
        "01.01.2027",
        "x",
    ] {
        assert_eq!(parse_holidays(bad), Err(HoursError::BadHoliday(bad.into())));
    }
    let many: Vec<String> = (0..367)
        .map(|d| (utc("2027-01-01 00:00").date() + Duration::days(d)).to_string())
        .collect();
    assert_eq!(
        parse_holidays(&many.join(",")),
        Err(HoursError::TooManyHolidays(367))
    );
    assert!(parse_holidays(&many[..366].join("\n")).is_ok());
    assert_eq!(
        work_days_text(&[true, false, true, false, false, false, true]),
        "1,3,7"
    );
}

#[test]
fn every_error_has_a_message_in_both_languages() {
    for e in [
        HoursError::BadTimezone("x".repeat(100)),
        HoursError::BadWeekday("9".into()),
        HoursError::NoWorkDay,
        HoursError::BadTime("25:00".into()),
        HoursError::EndNotAfterStart,
        HoursError::BadHoliday("x".into()),
        HoursError::TooManyHolidays(400),
    ] {
        let (ru, en) = (e.message(Lang::Ru), e.message(Lang::En));
        assert_ne!(ru, en);
        assert!(ru.chars().count() < 120 && en.chars().count() < 120, "{en}");
    }
}

#[test]
fn the_search_ends_even_when_every_holiday_falls_on_the_only_working_day() {
    // 366 Mondays from 2027-01-04 on: the first open Monday is the 367th.
    let mondays: Vec<String> = (0..366)
        .map(|w| (utc("2027-01-04 00:00").date() + Duration::weeks(w)).to_string())
        .collect();
    let h = WorkingHours::new("UTC", "1", 540, 1080, &mondays.join(",")).expect("valid");
    let got = h.next_opening(utc("2027-01-01 00:00"));
    assert_eq!(got, utc("2027-01-04 09:00") + Duration::weeks(366));
}

/// Any validated hours, in zones with and without DST.
fn hours() -> impl Strategy<Value = WorkingHours> {
    let zones = prop::sample::select(vec![
        "Europe/Moscow",
        "Europe/Berlin",
        "America/New_York",
        "Asia/Kamchatka",
        "Australia/Lord_Howe",
        "UTC",
    ]);
    (
        zones,
        prop::array::uniform7(any::<bool>()).prop_filter("a working day", |d| d.iter().any(|x| *x)),
        0..DAY_MINUTES,
        1..=DAY_MINUTES,
        prop::collection::vec(0i64..800, 0..40),
    )
        .prop_filter_map("end after start", |(tz, days, s, e, hol)| {
            let dates: Vec<String> = hol
                .iter()
                .map(|d| (utc("2026-11-01 00:00").date() + Duration::days(*d)).to_string())
                .collect();
            WorkingHours::new(tz, &work_days_text(&days), s, e, &dates.join(",")).ok()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_next_opening_is_open_not_before_now_and_nothing_opens_earlier(
        h in hours(),
        minutes in 0i64..(2 * 366 * 24 * 60),
    ) {
        let at = utc("2026-11-01 00:00") + Duration::minutes(minutes);
        let next = h.next_opening(at);
        prop_assert!(next >= at);
        prop_assert!(h.is_open(next), "{next} is not open");
        if next > at {
            prop_assert!(!h.is_open(at));
            // Nothing in between is open: every minute boundary, and the second before `next`.
            prop_assert!(!h.is_open(next - Duration::seconds(1)));
            let mut t = at;
            let mut checked = 0;
            while t < next && checked < 20_000 {
                prop_assert!(!h.is_open(t), "{t} is open before {next}");
                t += Duration::minutes(7);
                checked += 1;
            }
        }
    }
}
