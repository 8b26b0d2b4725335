//! The settings page's "Speed to lead" panel: the numbers of [`SpeedReport`] in words (ru/en)
//! and its 30-day chart as inline SVG geometry, so the page needs no script library.

use chrono::{Datelike, NaiveDate};

use crate::callback::speed::{DayPoint, SpeedReport, WindowStats};
use crate::portal::Lang;

/// The chart's drawing box (SVG user units; the CSS scales it to the card's width).
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 180.0;
/// Room for the duration labels on the left and the dates below.
const LEFT: f64 = 80.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 26.0;

/// One line of the panel's table: a measure and its value for today, 7 and 30 days.
pub struct MetricRow {
    pub label: &'static str,
    /// Names the cells (`speed-{id}-{window}`) for tests and for the browser test.
    pub id: &'static str,
    pub values: Vec<(&'static str, String)>,
}

/// One day's bar: its box and what it says when pointed at or read aloud.
pub struct Bar {
    pub x: String,
    pub y: String,
    pub width: String,
    pub height: String,
    pub title: String,
}

/// A labelled point of an axis.
pub struct Tick {
    pub at: String,
    pub label: String,
}

/// A day with callbacks, for the chart's text alternative.
pub struct DayRow {
    pub date: String,
    pub callbacks: u32,
    pub median: String,
}

pub struct SpeedPanel {
    /// No callbacks in 30 days: the panel says so instead of showing zeros.
    pub empty: bool,
    /// The column heads: (window id, label).
    pub windows: Vec<(&'static str, &'static str)>,
    pub rows: Vec<MetricRow>,
    pub bars: Vec<Bar>,
    pub y_ticks: Vec<Tick>,
    pub x_ticks: Vec<Tick>,
    /// The chart's accessible description (also its `<desc>`).
    pub summary: String,
    pub days: Vec<DayRow>,
    pub width: f64,
    pub height: f64,
    pub plot_left: f64,
    pub plot_right: f64,
    pub baseline: String,
}

/// "45 s", "2 min 13 s", "1 h 5 min", "2 d 3 h" (and the Russian forms).
pub fn human_duration(secs: i64, lang: Lang) -> String {
    let s = secs.max(0);
    let (d, h, m, sec) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    let (ud, uh, um, us) = match lang {
        Lang::Ru => ("д", "ч", "мин", "с"),
        Lang::En => ("d", "h", "min", "s"),
    };
    let pair = |a: i64, ua: &str, b: i64, ub: &str| {
        if b == 0 {
            format!("{a} {ua}")
        } else {
            format!("{a} {ua} {b} {ub}")
        }
    };
    match () {
        _ if d > 0 => pair(d, ud, h, uh),
        _ if h > 0 => pair(h, uh, m, um),
        _ if m > 0 => pair(m, um, sec, us),
        _ => format!("{sec} {us}"),
    }
}

/// "67 % (2 из 3)" / "67% (2 of 3)"; "—" with nothing to divide by.
pub fn rate(part: u32, whole: u32, lang: Lang) -> String {
    if whole == 0 {
        return "—".to_owned();
    }
    let pct = (u64::from(part) * 100 + u64::from(whole) / 2) / u64::from(whole);
    match lang {
        Lang::Ru => format!("{pct}\u{a0}% ({part} из {whole})"),
        Lang::En => format!("{pct}% ({part} of {whole})"),
    }
}

/// "3 дек" / "3 Dec".
pub fn short_date(d: NaiveDate, lang: Lang) -> String {
    const RU: [&str; 12] = [
        "янв", "фев", "мар", "апр", "мая", "июн", "июл", "авг", "сен", "окт", "ноя", "дек",
    ];
    const EN: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let months = match lang {
        Lang::Ru => RU,
        Lang::En => EN,
    };
    format!("{} {}", d.day(), months[d.month0() as usize % 12])
}

/// The chart's top: the first round duration at or above the longest median, so the axis reads
/// "5 мин", "2 мин 30 с" rather than odd values.
pub fn axis_top(max_secs: i64) -> i64 {
    const ROUND: [i64; 16] = [
        10, 30, 60, 120, 180, 300, 600, 900, 1_200, 1_800, 3_600, 7_200, 10_800, 21_600, 43_200,
        86_400,
    ];
    ROUND
        .into_iter()
        .find(|r| *r >= max_secs)
        .unwrap_or_else(|| (max_secs + 86_399) / 86_400 * 86_400)
}

fn num(v: f64) -> String {
    format!("{v:.1}")
}

fn metric_rows(r: &SpeedReport, lang: Lang) -> Vec<MetricRow> {
    let windows = [("today", &r.today), ("week", &r.week), ("month", &r.month)];
    let row = |label, id, f: &dyn Fn(&WindowStats) -> String| MetricRow {
        label,
        id,
        values: windows.iter().map(|(w, s)| (*w, f(s))).collect(),
    };
    let dur = |v: Option<i64>| v.map_or_else(|| "—".to_owned(), |s| human_duration(s, lang));
    vec![
        row(
            lang.t("Звонков заказано", "Callbacks"),
            "callbacks",
            &|s| s.callbacks.to_string(),
        ),
        row(
            lang.t("Медиана скорости", "Median speed to lead"),
            "median",
            &|s| dur(s.median_secs),
        ),
        row(
            lang.t("90-й процентиль", "90th percentile"),
            "p90",
            &|s| dur(s.p90_secs),
        ),
        row(
            lang.t("Менеджер ответил", "Manager answered"),
            "manager",
            &|s| rate(s.manager_answered, s.known, lang),
        ),
        row(
            lang.t("Клиент ответил", "Client answered"),
            "client",
            &|s| rate(s.client_answered, s.manager_answered, lang),
        ),
    ]
}

fn bar_title(d: &DayPoint, lang: Lang) -> String {
    let median = d
        .median_secs
        .map_or_else(String::new, |s| human_duration(s, lang));
    match lang {
        Lang::Ru => format!(
            "{}: медиана {median}, звонков {}",
            short_date(d.date, lang),
            d.callbacks
        ),
        Lang::En => format!(
            "{}: median {median}, {} callbacks",
            short_date(d.date, lang),
            d.callbacks
        ),
    }
}

/// The panel for a report, in `lang`.
pub fn panel(r: &SpeedReport, lang: Lang) -> SpeedPanel {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w / r.days.len().max(1) as f64;
    let longest = r
        .days
        .iter()
        .filter_map(|d| d.median_secs)
        .max()
        .unwrap_or(0);
    let max = axis_top(longest) as f64;
    let bars: Vec<Bar> = r
        .days
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let secs = d.median_secs? as f64;
            // At least 2 units high, so a day of very quick answers still shows.
            let h = (secs / max * plot_h).max(2.0);
            Some(Bar {
                x: num(LEFT + i as f64 * slot + slot * 0.15),
                y: num(TOP + plot_h - h),
                width: num(slot * 0.7),
                height: num(h),
                title: bar_title(d, lang),
            })
        })
        .collect();
    let y_ticks = if bars.is_empty() {
        Vec::new()
    } else {
        [1.0, 0.5]
            .iter()
            .map(|f| Tick {
                at: num(TOP + plot_h * (1.0 - f)),
                label: human_duration((max * f).round() as i64, lang),
            })
            .collect()
    };
    let last = r.days.len().saturating_sub(1);
    let x_ticks = [0, last / 2, last]
        .iter()
        .filter_map(|&i| r.days.get(i).map(|d| (i, d)))
        .map(|(i, d)| Tick {
            at: num(LEFT + (i as f64 + 0.5) * slot),
            label: short_date(d.date, lang),
        })
        .collect();
    let days: Vec<DayRow> = r
        .days
        .iter()
        .filter(|d| d.callbacks > 0)
        .map(|d| DayRow {
            date: short_date(d.date, lang),
            callbacks: d.callbacks,
            median: d
                .median_secs
                .map_or_else(|| "—".to_owned(), |s| human_duration(s, lang)),
        })
        .collect();
    let summary = match lang {
        Lang::Ru => format!(
            "Медианная скорость реакции по дням за 30 дней: дней с соединёнными клиентами — {}, самая долгая медиана — {}.",
            bars.len(),
            human_duration(longest, lang)
        ),
        Lang::En => format!(
            "Median speed to lead by day over 30 days: {} days with connected clients, the longest median {}.",
            bars.len(),
            human_duration(longest, lang)
        ),
    };
    SpeedPanel {
        empty: r.is_empty(),
        windows: vec![
            ("today", lang.t("Сегодня", "Today")),
            ("week", lang.t("7 дней", "7 days")),
            ("month", lang.t("30 дней", "30 days")),
        ],
        rows: metric_rows(r, lang),
        bars,
        y_ticks,
        x_ticks,
        summary,
        days,
        width: WIDTH,
        height: HEIGHT,
        plot_left: LEFT,
        plot_right: WIDTH - RIGHT,
        baseline: num(HEIGHT - BOTTOM),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_minutes_and_seconds_in_both_languages() {
        assert_eq!(human_duration(133, Lang::Ru), "2 мин 13 с");
        assert_eq!(human_duration(133, Lang::En), "2 min 13 s");
        assert_eq!(human_duration(45, Lang::En), "45 s");
        assert_eq!(human_duration(0, Lang::Ru), "0 с");
        assert_eq!(human_duration(120, Lang::En), "2 min");
        assert_eq!(human_duration(3_900, Lang::Ru), "1 ч 5 мин");
        assert_eq!(
            human_duration(2 * 86_400 + 3 * 3_600 + 59, Lang::En),
            "2 d 3 h"
        );
    }

    #[test]
    fn rates_round_to_whole_percents_and_show_their_counts() {
        assert_eq!(rate(2, 3, Lang::En), "67% (2 of 3)");
        assert_eq!(rate(1, 3, Lang::Ru), "33\u{a0}% (1 из 3)");
        assert_eq!(rate(0, 0, Lang::En), "—");
    }

    #[test]
    fn the_axis_tops_at_a_round_duration_above_the_longest_median() {
        assert_eq!(axis_top(0), 10);
        assert_eq!(axis_top(286), 300);
        assert_eq!(axis_top(300), 300);
        assert_eq!(axis_top(4_000), 7_200);
        assert_eq!(axis_top(90_000), 2 * 86_400);
    }
}
