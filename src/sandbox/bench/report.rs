//! The bench's result: its figures and checks, as the one table or as one JSON object.

use std::fmt::Write as _;

use serde::Serialize;

use super::checks::Check;
use super::figures::{Figures, Measured, COMMANDS_PER_CALLBACK, ROUND_TRIPS_TO_COMMAND};
use crate::sandbox::bitrix::BATCH_MAX;

/// What [`super::run`] returns: the command exits non-zero unless every check passed.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub figures: Figures,
    pub checks: Vec<Check>,
}

impl BenchReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The one table.
    pub fn table(&self) -> String {
        let f = &self.figures;
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<38} {v}");
        };
        row(
            "run",
            format!(
                "{} · {} portals · {} robot calls · {} · latency {} ms · set-up {:.1} s",
                f.backend, f.portals, f.calls, f.mode, f.latency_ms, f.setup_s
            ),
        );
        row(
            "ack latency p50/p95/p99/max",
            format!(
                "{:.1} / {:.1} / {:.1} / {:.1} ms",
                f.ack_p50, f.ack_p95, f.ack_p99, f.ack_max
            ),
        );
        row("ack rate achieved", format!("{:.0} /s", f.ack_rate));
        row(
            "robot call → Mango command p50/p99",
            format!("{:.0} / {:.0} ms", f.e2e_p50, f.e2e_p99),
        );
        row(
            "  app's own share p50/p99",
            format!(
                "{:.0} / {:.0} ms (minus {ROUND_TRIPS_TO_COMMAND} × latency)",
                f.own_p50, f.own_p99
            ),
        );
        row(
            "Mango command → report sent p50/p99",
            format!("{:.0} / {:.0} ms", f.report_p50, f.report_p99),
        );
        row(
            "REST requests per callback",
            format!(
                "{:.2} ({} in all; {} more for upkeep)",
                f.rest_per_callback, f.rest_requests, f.upkeep_requests
            ),
        );
        row(
            "503/429 answers (must be 0)",
            format!("Bitrix24 {} · Mango {}", f.b24_limited, f.mango_limited),
        );
        row("drain time", format!("{:.1} s", f.drain_s));
        row(
            "limit bound",
            format!(
                "{:.1} s (Mango 4/s per account {:.1} s; Bitrix24 2/s burst 50, {COMMANDS_PER_CALLBACK} commands per callback in batches of {BATCH_MAX}: {:.1} s)",
                f.bound_s, f.mango_bound_s, f.b24_bound_s
            ),
        );
        row("drain / bound", format!("{:.2}×", f.drain_to_bound));
        row(
            "lone portal: robot call → Mango command",
            f.lone_e2e
                .map_or_else(|| "- (no --lone)".to_owned(), |ms| format!("{ms:.0} ms")),
        );
        let whose = match f.measured {
            Measured::AppProcess => "the app's process",
            Measured::WholeBench => "app, simulators and bench in one process",
        };
        row(
            "RSS before firing / peak",
            format!(
                "{:.1} MB / {:.1} MB ({whose})",
                f.rss_before_mb, f.peak_rss_mb
            ),
        );
        row(
            "CPU time of the process",
            format!("{:.2} s ({whose})", f.cpu_s),
        );
        if let Some(w) = &f.sqlite_writer {
            row(
                "SQLite's one writer",
                format!(
                    "busy {:.0} % · per callback {:.2} worker writes (mean {:.2} ms) + {:.2} group commits",
                    w.busy * 100.0,
                    w.other_per_callback,
                    w.other_held_ms,
                    w.group_commits_per_callback
                ),
            );
        }
        for c in &self.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            row(&format!("check {mark} {}", c.name), c.detail.clone());
        }
        let rule = "-".repeat(100);
        format!("mango-callback bench\n{rule}\n{t}{rule}\n")
    }
}
