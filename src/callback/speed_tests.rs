//! Unit tests of the speed-to-lead arithmetic: percentiles, windows, and local day boundaries.

use chrono::{NaiveDate, NaiveDateTime};

use super::*;

fn at(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").expect("a test time")
}

/// A callback accepted at `created` (UTC) whose client connected `secs` later.
fn connected(created: &str, secs: i64) -> CallFact {
    let created_at = at(created);
    CallFact {
        created_at,
        call_outcome: Some("answered".into()),
        client_connected_at: Some(created_at + Duration::seconds(secs)),
    }
}

fn ended(created: &str, outcome: Option<&str>) -> CallFact {
    CallFact {
        created_at: at(created),
        call_outcome: outcome.map(str::to_owned),
        client_connected_at: None,
    }
}

#[test]
fn no_values_have_no_percentile() {
    assert_eq!(percentile(&[], 50.0), None);
    assert_eq!(percentile(&[], 90.0), None);
}

#[test]
fn one_value_is_every_percentile() {
    assert_eq!(percentile(&[42], 0.0), Some(42));
    assert_eq!(percentile(&[42], 50.0), Some(42));
    assert_eq!(percentile(&[42], 90.0), Some(42));
    assert_eq!(percentile(&[42], 100.0), Some(42));
}

#[test]
fn the_median_of_an_even_count_lies_between_the_middle_two() {
    assert_eq!(percentile(&[60, 120], 50.0), Some(90));
    assert_eq!(percentile(&[10, 20, 30, 40], 50.0), Some(25));
}

#[test]
fn the_90th_percentile_interpolates_between_ranks() {
    let ten: Vec<i64> = (1..=10).map(|i| i * 10).collect();
    // rank 0.9 × 9 = 8.1: 90 + 0.1 × (100 − 90) = 91.
    assert_eq!(percentile(&ten, 90.0), Some(91));
    assert_eq!(percentile(&ten, 50.0), Some(55));
    assert_eq!(percentile(&[1, 2, 3, 4, 5], 50.0), Some(3));
}

#[test]
fn out_of_range_percentiles_are_clamped() {
    assert_eq!(percentile(&[1, 5, 9], -10.0), Some(1));
    assert_eq!(percentile(&[1, 5, 9], 250.0), Some(9));
}

#[test]
fn an_empty_report_has_thirty_empty_days_and_no_speeds() {
    let r = report(&[], at("2026-12-03 09:00:00"), DEFAULT_TZ);
    assert!(r.is_empty());
    assert_eq!(r.days.len(), SERIES_DAYS);
    assert!(r
        .days
        .iter()
        .all(|d| d.callbacks == 0 && d.median_secs.is_none()));
    assert_eq!(r.month, WindowStats::default());
    assert_eq!(
        r.days[SERIES_DAYS - 1].date,
        NaiveDate::from_ymd_opt(2026, 12, 3).expect("date")
    );
    assert_eq!(
        r.days[0].date,
        NaiveDate::from_ymd_opt(2026, 11, 4).expect("date")
    );
}

#[test]
fn rates_count_manager_and_client_answers_over_known_outcomes() {
    let facts = vec![
        connected("2026-12-03 08:00:00", 60),
        ended("2026-12-03 08:10:00", Some("client_missed")),
        ended("2026-12-03 08:20:00", Some("manager_missed")),
        ended("2026-12-03 08:30:00", Some("failed")),
        ended("2026-12-03 08:40:00", Some("unknown")),
        ended("2026-12-03 08:50:00", None),
    ];
    let r = report(&facts, at("2026-12-03 09:00:00"), DEFAULT_TZ);
    assert_eq!(
        r.today,
        WindowStats {
            callbacks: 6,
            known: 4,
            manager_answered: 2,
            client_answered: 1,
            connected: 1,
            median_secs: Some(60),
            p90_secs: Some(60),
        }
    );
}

#[test]
fn windows_cover_today_seven_and_thirty_local_days() {
    let now = at("2026-12-03 09:00:00"); // 12:00 in Moscow
    let facts = vec![
        connected("2026-12-03 07:00:00", 30),  // today
        connected("2026-11-27 07:00:00", 60),  // 6 days back: in the week
        connected("2026-11-26 07:00:00", 90),  // 7 days back: in the month only
        connected("2026-11-04 07:00:00", 120), // 29 days back: the month's first day
        connected("2026-11-03 07:00:00", 999), // 30 days back: outside every window
    ];
    let r = report(&facts, now, DEFAULT_TZ);
    assert_eq!((r.today.callbacks, r.today.median_secs), (1, Some(30)));
    assert_eq!((r.week.callbacks, r.week.median_secs), (2, Some(45)));
    assert_eq!(r.month.callbacks, 4);
    assert_eq!(r.month.median_secs, Some(75));
    assert_eq!(r.month.p90_secs, Some(111));
    let with_data: Vec<(NaiveDate, u32, Option<i64>)> = r
        .days
        .iter()
        .filter(|d| d.callbacks > 0)
        .map(|d| (d.date, d.callbacks, d.median_secs))
        .collect();
    let day = |m, d| NaiveDate::from_ymd_opt(2026, m, d).expect("date");
    assert_eq!(
        with_data,
        vec![
            (day(11, 4), 1, Some(120)),
            (day(11, 26), 1, Some(90)),
            (day(11, 27), 1, Some(60)),
            (day(12, 3), 1, Some(30)),
        ]
    );
}

#[test]
fn days_end_at_the_portals_local_midnight_not_at_utc_midnight() {
    // 22:30 UTC on 2 December is already 3 December in Moscow (UTC+3) but still 2 December in
    // New York (UTC−5), where "now" (3 December 12:00 UTC = 07:00) is 3 December.
    let late = connected("2026-12-02 22:30:00", 10);
    let now = at("2026-12-03 12:00:00");
    let moscow = report(std::slice::from_ref(&late), now, DEFAULT_TZ);
    assert_eq!(moscow.today.callbacks, 1, "Moscow: today");
    let ny = report(
        std::slice::from_ref(&late),
        now,
        chrono_tz::America::New_York,
    );
    assert_eq!(ny.today.callbacks, 0, "New York: yesterday");
    assert_eq!(ny.week.callbacks, 1);
    assert_eq!(ny.days[SERIES_DAYS - 2].callbacks, 1);
    // Just before Moscow's midnight (20:59 UTC) it is still 2 December there.
    let before = connected("2026-12-02 20:59:59", 10);
    let r = report(std::slice::from_ref(&before), now, DEFAULT_TZ);
    assert_eq!(
        (r.today.callbacks, r.days[SERIES_DAYS - 2].callbacks),
        (0, 1)
    );
}

#[test]
fn a_connection_before_the_call_counts_as_no_speed() {
    let mut f = connected("2026-12-03 08:00:00", 0);
    f.client_connected_at = Some(at("2026-12-03 07:59:00"));
    let r = report(&[f], at("2026-12-03 09:00:00"), DEFAULT_TZ);
    assert_eq!((r.today.callbacks, r.today.connected), (1, 0));
    assert_eq!(r.today.median_secs, None);
}

#[test]
fn an_unknown_zone_name_counts_days_in_moscow() {
    assert_eq!(zone_of("Mars/Olympus"), DEFAULT_TZ);
    assert_eq!(zone_of(" Asia/Vladivostok "), chrono_tz::Asia::Vladivostok);
}

#[test]
fn a_callback_dated_after_today_is_left_out() {
    let r = report(
        &[connected("2026-12-05 08:00:00", 10)],
        at("2026-12-03 09:00:00"),
        DEFAULT_TZ,
    );
    assert!(r.is_empty());
    assert!(r.days.iter().all(|d| d.callbacks == 0));
}
