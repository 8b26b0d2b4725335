//! How busy SQLite's one writer was during the run, read from the app's own `/metrics` before
//! firing and after the last report: the same numbers an operator scrapes, in-process or not.

use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;

use crate::db::gate::{WriterUse, WritersUse};

/// The write-lock totals of both writers at one scrape.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scrape {
    at: Instant,
    uses: WritersUse,
}

/// SQLite's writer between two scrapes (`None` in the figures on PostgreSQL, which has no such
/// series).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct WriterFigures {
    /// Share of the time between the scrapes that the write lock was held (0–1).
    pub busy: f64,
    /// Write transactions per finished callback: the job worker's and the rest's, then the
    /// acknowledgements' group commits.
    pub other_per_callback: f64,
    pub group_commits_per_callback: f64,
    /// Mean time one of the worker's (and the rest's) write transactions held the lock, ms.
    pub other_held_ms: f64,
}

/// Reads `/metrics` of the app at `base` with `token`. `None` when it shows no SQLite writer
/// series (PostgreSQL).
pub(super) async fn scrape(base: &str, token: &str) -> anyhow::Result<Option<Scrape>> {
    let mut answer = awc::Client::default()
        .get(format!("{base}/metrics"))
        .insert_header(("Authorization", format!("Bearer {token}")))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the app's /metrics: {e}"))?;
    anyhow::ensure!(
        answer.status().is_success(),
        "the app's /metrics answered {}",
        answer.status()
    );
    let body = answer
        .body()
        .limit(1 << 20)
        .await
        .context("cannot read the app's /metrics page")?;
    let at = Instant::now();
    let text = std::str::from_utf8(&body).context("the app's /metrics is not UTF-8")?;
    Ok(parse(text, at))
}

/// The three series of both writers in a text exposition; `None` unless all six are there.
fn parse(text: &str, at: Instant) -> Option<Scrape> {
    let value = |name: &str, writer: &str| -> Option<f64> {
        let key = format!("{name}{{writer=\"{writer}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    let writer = |w: &str| -> Option<WriterUse> {
        Some(WriterUse {
            turns: value("mango_callback_sqlite_writes_total", w)? as u64,
            waited_seconds: value("mango_callback_sqlite_write_wait_seconds_total", w)?,
            held_seconds: value("mango_callback_sqlite_write_held_seconds_total", w)?,
        })
    };
    Some(Scrape {
        at,
        uses: WritersUse {
            other: writer("other")?,
            group_commit: writer("group_commit")?,
        },
    })
}

/// The writer's figures between `before` and `after`, per one of `callbacks`.
pub(super) fn between(before: &Scrape, after: &Scrape, callbacks: usize) -> WriterFigures {
    let span = after.at.duration_since(before.at).as_secs_f64().max(1e-6);
    let turns = |a: &WriterUse, b: &WriterUse| a.turns.saturating_sub(b.turns) as f64;
    let held = |a: &WriterUse, b: &WriterUse| (a.held_seconds - b.held_seconds).max(0.0);
    let (a, b) = (&after.uses, &before.uses);
    let other_turns = turns(&a.other, &b.other);
    let other_held = held(&a.other, &b.other);
    let n = callbacks.max(1) as f64;
    WriterFigures {
        busy: ((other_held + held(&a.group_commit, &b.group_commit)) / span).min(1.0),
        other_per_callback: other_turns / n,
        group_commits_per_callback: turns(&a.group_commit, &b.group_commit) / n,
        other_held_ms: if other_turns > 0.0 {
            other_held * 1000.0 / other_turns
        } else {
            0.0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writers_figures_come_from_the_difference_of_two_scrapes() {
        let t0 = Instant::now();
        let page = |other: (u64, f64), group: (u64, f64)| {
            format!(
                "# TYPE mango_callback_sqlite_writes_total counter\n\
                 mango_callback_sqlite_writes_total{{writer=\"group_commit\"}} {}\n\
                 mango_callback_sqlite_writes_total{{writer=\"other\"}} {}\n\
                 mango_callback_sqlite_write_wait_seconds_total{{writer=\"group_commit\"}} 0\n\
                 mango_callback_sqlite_write_wait_seconds_total{{writer=\"other\"}} 0.5\n\
                 mango_callback_sqlite_write_held_seconds_total{{writer=\"group_commit\"}} {}\n\
                 mango_callback_sqlite_write_held_seconds_total{{writer=\"other\"}} {}\n",
                group.0, other.0, group.1, other.1
            )
        };
        let before = parse(&page((100, 1.0), (10, 0.5)), t0).expect("all six series");
        let after = parse(
            &page((500, 4.0), (60, 1.0)),
            t0 + std::time::Duration::from_secs(10),
        )
        .expect("all six series");
        let f = between(&before, &after, 100);
        assert_eq!(f.other_per_callback, 4.0);
        assert_eq!(f.group_commits_per_callback, 0.5);
        assert!((f.busy - 0.35).abs() < 1e-9, "{f:?}");
        assert!((f.other_held_ms - 7.5).abs() < 1e-9, "{f:?}");
        assert!(
            parse(
                "mango_callback_robot_calls_total{result=\"queued\"} 3\n",
                t0
            )
            .is_none(),
            "PostgreSQL's page has no writer series"
        );
    }
}
