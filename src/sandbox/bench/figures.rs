//! What a bench run observed (acks, callback rows, what the simulators received), and the
//! figures made from it: latencies, rates, requests per callback, drain time and its bound.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::fire::Fired;
use super::{BenchOptions, BenchPortal};
use crate::callback::Callback;
use crate::sandbox::bitrix::{BitrixSim, RecordedCall, BATCH_MAX};

/// Whether a peer's answer says a limit was tripped.
pub(super) fn limited(status: u16) -> bool {
    status == 503 || status == 429
}

/// Bitrix24 commands one callback's work needs when batched across callbacks: the deal's
/// contacts and the contact (the phone lookup's two rounds), `bizproc.event.send` and the
/// timeline comment. Batched 50 to a request they set the portal's REST bound.
pub(super) const COMMANDS_PER_CALLBACK: usize = 2 + 2;
/// Mango's limit: callback commands per second per account.
const MANGO_PER_SEC: f64 = 4.0;
/// Bitrix24's limit: a leaky bucket of 50 draining 2 requests per second, per portal.
const B24_BURST: f64 = 50.0;
const B24_PER_SEC: f64 = 2.0;
/// Simulated round trips on the path from a robot call to the Mango command (the phone batch,
/// then Mango's own answer delay, which comes before it records the command).
pub(super) const ROUND_TRIPS_TO_COMMAND: u32 = 2;

/// Everything a run observed, gathered after the last callback was reported.
pub(super) struct Observed<'a> {
    pub opts: &'a BenchOptions,
    pub portals: &'a [BenchPortal],
    pub fired: &'a Fired,
    pub callbacks: Vec<Callback>,
    pub mango_commands: Vec<(Instant, Value)>,
    pub mango_statuses: Vec<u16>,
    /// The REST requests the portals received after set-up.
    pub rest_calls: Vec<RecordedCall>,
    pub b24: &'a BitrixSim,
    pub setup: Duration,
    /// Whose memory and CPU the figures are: the app's child process, or this whole process.
    pub measured: Measured,
    /// That process when the first robot call was fired, and after the last was reported.
    pub proc_before: ProcStats,
    pub proc_after: ProcStats,
    /// SQLite's writer between firing and the last report, from the app's `/metrics`.
    pub sqlite_writer: Option<super::WriterFigures>,
}

/// Whose memory and CPU time a run's figures are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measured {
    /// `--app-process`: the app alone, a child process.
    AppProcess,
    /// The default: the app, the simulators and the bench share one process.
    WholeBench,
}

/// The run's figures; times in milliseconds unless named `_s`.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub backend: &'static str,
    pub portals: u32,
    pub calls: u32,
    /// `burst`, or the open-loop rate (`250/s`).
    pub mode: String,
    pub latency_ms: u64,
    pub setup_s: f64,
    pub ack_p50: f64,
    pub ack_p95: f64,
    pub ack_p99: f64,
    pub ack_max: f64,
    /// Robot calls acknowledged per second, first sent to last answered.
    pub ack_rate: f64,
    pub e2e_p50: f64,
    pub e2e_p99: f64,
    /// Mango command → the callback's report sent, ms.
    pub report_p50: f64,
    pub report_p99: f64,
    /// End-to-end minus the simulated latency on the path (limit waits stay in).
    pub own_p50: f64,
    pub own_p99: f64,
    pub rest_requests: usize,
    pub rest_per_callback: f64,
    /// Portal REST requests of the run that were not on a callback's path.
    pub upkeep_requests: usize,
    pub b24_limited: usize,
    pub mango_limited: usize,
    /// First robot call fired → last callback reported.
    pub drain_s: f64,
    pub mango_bound_s: f64,
    pub b24_bound_s: f64,
    pub bound_s: f64,
    pub drain_to_bound: f64,
    pub lone_e2e: Option<f64>,
    pub measured: Measured,
    pub rss_before_mb: f64,
    pub peak_rss_mb: f64,
    pub cpu_s: f64,
    /// SQLite only: how busy its one writer was, and its write transactions per callback.
    pub sqlite_writer: Option<super::WriterFigures>,
}

/// A process's resident memory now and at its peak, and its CPU time (user + system).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ProcStats {
    pub rss_kb: u64,
    pub peak_rss_kb: u64,
    pub cpu_s: f64,
}

/// This process's figures.
pub(super) fn proc_self() -> ProcStats {
    proc_stats("/proc/self")
}

/// Reads `status` and `stat` under `dir` (`/proc/self`, `/proc/PID`); zeros where they cannot
/// be read.
pub(super) fn proc_stats(dir: &str) -> ProcStats {
    let status = std::fs::read_to_string(format!("{dir}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).unwrap_or_default();
    // Fields after the command name in parentheses: utime and stime are the 12th and 13th,
    // in clock ticks of 1/100 s (USER_HZ, 100 on Linux).
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    ProcStats {
        rss_kb: kb("VmRSS:"),
        peak_rss_kb: kb("VmHWM:"),
        cpu_s: ticks as f64 / 100.0,
    }
}

/// Nearest-rank percentile of sorted `v`, in milliseconds; 0 when empty.
fn pct(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1].as_secs_f64() * 1000.0
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort_unstable();
    v
}

pub(super) fn compute(o: &Observed<'_>) -> Figures {
    let acks = &o.fired.acks;
    let latency = o.opts.latency;
    let ack_times = sorted(acks.iter().map(|a| a.acked - a.sent).collect());
    let ack_span = acks
        .iter()
        .map(|a| a.acked)
        .max()
        .map_or(Duration::ZERO, |last| last - o.fired.started);
    // The first arrival of each command id (a doubled command is caught by the checks).
    let mut arrival: HashMap<&str, Instant> = HashMap::new();
    for (at, cmd) in &o.mango_commands {
        if let Some(id) = cmd["command_id"].as_str() {
            arrival.entry(id).or_insert(*at);
        }
    }
    let by_token: HashMap<&str, &Callback> = o
        .callbacks
        .iter()
        .filter_map(|c| c.event_token.as_deref().map(|t| (t, c)))
        .collect();
    let e2e_of = |token: &str, sent: Instant| {
        let cb = by_token.get(token)?;
        let at = arrival.get(cb.command_id.as_deref()?)?;
        Some(at.saturating_duration_since(sent))
    };
    let e2e = sorted(
        acks.iter()
            .filter_map(|a| e2e_of(&a.event_token, a.sent))
            .collect(),
    );
    let own = sorted(
        e2e.iter()
            .map(|d| d.saturating_sub(latency * ROUND_TRIPS_TO_COMMAND))
            .collect(),
    );
    let lone_e2e = o
        .fired
        .lone
        .as_ref()
        .and_then(|a| e2e_of(&a.event_token, a.sent))
        .map(|d| d.as_secs_f64() * 1000.0);

    // The requests a callback's work makes; others (the self-check two minutes after an
    // install, token refreshes) are the app's upkeep, counted apart.
    let on_callback_path =
        |m: &str| m == "batch" || m == "bizproc.event.send" || m.starts_with("crm.");
    let portal_calls = || {
        o.rest_calls
            .iter()
            .filter(|c| c.member_id.is_some() && !c.method.starts_with("oauth."))
    };
    let rest: Vec<&RecordedCall> = portal_calls()
        .filter(|c| on_callback_path(&c.method))
        .collect();
    let upkeep_requests = portal_calls().count() - rest.len();
    let b24_limited = o.rest_calls.iter().filter(|c| limited(c.status)).count();
    let mango_limited = o.mango_statuses.iter().filter(|s| limited(**s)).count();
    let finished = o.callbacks.len().max(1);

    // The drain is the busy portals': the lone call, fired later, is timed on its own.
    let busy = &o.portals[..o.opts.portals as usize];
    let last_report = o
        .callbacks
        .iter()
        .filter(|c| busy.iter().any(|p| p.sim.member_id == c.member_id))
        .filter_map(|c| c.event_sent_at.max(c.comment_added_at))
        .max();
    let drain_s = last_report.map_or(0.0, |t| {
        (t - o.fired.started_wall).num_microseconds().unwrap_or(0) as f64 / 1e6
    });
    // Mango's bound per account: each call can go no earlier than it arrived, nor sooner than
    // 1/4 s after the account's previous one (a burst: n/4 s; an open-loop rate: at least the
    // firing time). The busiest account sets the run's bound.
    let mut sent_by_portal: Vec<Vec<Instant>> = vec![Vec::new(); o.opts.portals as usize];
    for a in acks {
        if let Some(v) = sent_by_portal.get_mut(a.portal) {
            v.push(a.sent);
        }
    }
    let mut mango_bound_s: f64 = 0.0;
    for sent in &mut sent_by_portal {
        sent.sort_unstable();
        let mut free_at = 0.0_f64;
        for at in sent.iter() {
            let arrived = (*at - o.fired.started).as_secs_f64();
            free_at = free_at.max(arrived) + 1.0 / MANGO_PER_SEC;
        }
        mango_bound_s = mango_bound_s.max(free_at);
    }
    let busiest = sent_by_portal.iter().map(Vec::len).max().unwrap_or(0);
    let requests = (busiest * COMMANDS_PER_CALLBACK).div_ceil(BATCH_MAX) as f64;
    let b24_bound_s = (requests - B24_BURST).max(0.0) / B24_PER_SEC;
    let bound_s = mango_bound_s.max(b24_bound_s);
    // How long after its Mango command each callback's report (the business process's event
    // and the timeline comment) had gone: the business process waits for it.
    let report_lag = sorted(
        o.callbacks
            .iter()
            .filter_map(|c| {
                let at = arrival.get(c.command_id.as_deref()?)?;
                let reported = c.event_sent_at.max(c.comment_added_at)?;
                let command_wall = o.fired.started_wall
                    + chrono::Duration::from_std(at.duration_since(o.fired.started)).ok()?;
                (reported - command_wall).to_std().ok()
            })
            .collect(),
    );
    let figures = Figures {
        backend: match crate::db::Backend::of_url(o.opts.database_url.as_deref().unwrap_or("")) {
            crate::db::Backend::Postgres => "PostgreSQL",
            crate::db::Backend::Sqlite => "SQLite",
        },
        portals: o.opts.portals,
        calls: o.opts.calls,
        mode: o
            .opts
            .rate
            .map_or_else(|| "burst".to_owned(), |r| format!("{r}/s")),
        latency_ms: latency.as_millis() as u64,
        setup_s: o.setup.as_secs_f64(),
        ack_p50: pct(&ack_times, 50.0),
        ack_p95: pct(&ack_times, 95.0),
        ack_p99: pct(&ack_times, 99.0),
        ack_max: pct(&ack_times, 100.0),
        ack_rate: acks.len() as f64 / ack_span.as_secs_f64().max(1e-6),
        e2e_p50: pct(&e2e, 50.0),
        e2e_p99: pct(&e2e, 99.0),
        report_p50: pct(&report_lag, 50.0),
        report_p99: pct(&report_lag, 99.0),
        own_p50: pct(&own, 50.0),
        own_p99: pct(&own, 99.0),
        rest_requests: rest.len(),
        rest_per_callback: rest.len() as f64 / finished as f64,
        upkeep_requests,
        b24_limited,
        mango_limited,
        drain_s,
        mango_bound_s,
        b24_bound_s,
        bound_s,
        drain_to_bound: if bound_s > 0.0 {
            drain_s / bound_s
        } else {
            0.0
        },
        lone_e2e,
        measured: o.measured,
        rss_before_mb: o.proc_before.rss_kb as f64 / 1024.0,
        peak_rss_mb: o.proc_after.peak_rss_kb as f64 / 1024.0,
        cpu_s: o.proc_after.cpu_s,
        sqlite_writer: o.sqlite_writer,
    };
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_process_figures_are_read_from_its_own_proc_entry_and_are_zero_once_it_is_gone() {
        // `sleep` is a few hundred KB resident; this test binary is several MB.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep starts");
        let dir = format!("/proc/{}", child.id());
        // Until it has exec'd, the child is a copy of this process.
        for _ in 0..500 {
            let comm = std::fs::read_to_string(format!("{dir}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let theirs = proc_stats(&dir);
        let ours = proc_self();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            theirs.rss_kb > 0 && theirs.peak_rss_kb >= theirs.rss_kb,
            "{theirs:?}"
        );
        assert!(theirs.rss_kb < ours.rss_kb, "{theirs:?} vs ours {ours:?}");
        let gone = proc_stats(&dir);
        assert_eq!((gone.rss_kb, gone.peak_rss_kb), (0, 0));
    }
}
