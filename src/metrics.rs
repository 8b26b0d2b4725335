//! The operator's numbers: counters behind `GET /metrics` (Prometheus text format) and the job
//! worker's heartbeat behind `GET /health`.
//!
//! Per process: each instance counts what it did itself, so Prometheus scrapes every instance
//! (the queue's gauges, read from the shared database at scrape time, are the same everywhere).
//! Every label comes from a fixed set (results, REST method names, job kinds, Mango result
//! codes), never a portal, a deal or a phone: the number of series stays bounded whatever the
//! traffic.
//!
//! The `prometheus` crate rather than `metrics` + `metrics-exporter-prometheus`: its
//! [`Registry`] is a value, one per application, so the many apps of one test process each count
//! their own (the `metrics` facade wants one global recorder), and without its default
//! `protobuf` feature it adds two small crates.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::NaiveDateTime;
use prometheus::{
    CounterVec, Encoder as _, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::db::gate::{WriterUse, WritersUse};

/// The content type of the text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bitrix24 REST methods this app calls; any other name is counted as `other`, so that a method
/// name never becomes an unbounded label.
const REST_METHODS: &[&str] = &[
    "batch",
    "app.info",
    "profile",
    "user.admin",
    "event.bind",
    "event.unbind",
    "event.get",
    "event.test",
    "bizproc.robot.add",
    "bizproc.robot.update",
    "bizproc.robot.list",
    "bizproc.robot.delete",
    "bizproc.event.send",
    "crm.deal.get",
    "crm.contact.get",
    "crm.company.get",
    "crm.deal.contact.items.get",
    "crm.timeline.comment.add",
];

/// A limit the app waited for instead of tripping it.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// A portal's REST budget (2 requests/s, burst 50), shared through the database.
    BitrixBudget,
    /// One of Mango's 4 callback commands a second per account.
    MangoSlot,
}

/// How a job run ended, as a label.
#[derive(Debug, Clone, Copy)]
pub enum JobOutcome {
    Done,
    /// Waits for a time (a contact not linked yet) or a rate budget: not a failure.
    Waits,
    Retry,
    Dead,
    /// Another worker took the job over; this run was abandoned.
    LeaseLost,
}

impl JobOutcome {
    fn label(self) -> &'static str {
        match self {
            JobOutcome::Done => "done",
            JobOutcome::Waits => "waits",
            JobOutcome::Retry => "retry",
            JobOutcome::Dead => "dead",
            JobOutcome::LeaseLost => "lease_lost",
        }
    }
}

/// The queue as one query saw it: per status, how many jobs and the earliest `run_at`.
#[derive(Debug, Clone)]
pub struct QueueDepth {
    pub status: String,
    pub count: i64,
    pub earliest_run_at: Option<NaiveDateTime>,
}

/// Every series `/metrics` shows. Cheap to share (`Arc`); counting is lock-free.
pub struct Metrics {
    registry: Registry,
    robot_calls: IntCounterVec,
    mango_commands: IntCounterVec,
    job_runs: HistogramVec,
    rest_calls: IntCounterVec,
    token_refreshes: IntCounterVec,
    limit_waits: IntCounterVec,
    jobs: IntGaugeVec,
    /// Without labels; a vector only so that it can be left out when the queue was not read.
    oldest_due_job: GaugeVec,
    /// SQLite's write lock, by writer (`group_commit`, `other`): totals kept by the write gate
    /// and copied here at scrape time, under `scrape` so two scrapes never interleave.
    sqlite_writes: IntCounterVec,
    sqlite_write_waited: CounterVec,
    sqlite_write_held: CounterVec,
    scrape: parking_lot::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers `m` in `r`. Names and labels are constants, so neither creating nor registering
/// can fail unless this file is wrong, which the unit test below catches.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: prometheus::Result<M>,
) -> M {
    #[allow(clippy::expect_used)]
    let m = m.expect("a valid metric definition");
    #[allow(clippy::expect_used)]
    r.register(Box::new(m.clone()))
        .expect("each metric registered once");
    m
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(&r, IntCounterVec::new(Opts::new(name, help), labels))
        };
        Metrics {
            robot_calls: counter(
                "mango_callback_robot_calls_total",
                "Robot calls received, by result: queued, duplicate (same deal, cut off), redelivered (same event_token again), failed (verified but unusable, reported), refused (4xx), unavailable (503).",
                &["result"],
            ),
            mango_commands: counter(
                "mango_callback_mango_commands_total",
                "callback_group commands sent to Mango, by result: Mango's result code (1000 = accepted), or unavailable / locked / protocol when there is none.",
                &["result"],
            ),
            rest_calls: counter(
                "mango_callback_rest_calls_total",
                "Bitrix24 REST requests, by method (a fixed set; other) and HTTP status (transport_error when none came).",
                &["method", "status"],
            ),
            token_refreshes: counter(
                "mango_callback_token_refreshes_total",
                "OAuth token refreshes sent by this instance, by result: ok or failed.",
                &["result"],
            ),
            limit_waits: counter(
                "mango_callback_limit_waits_total",
                "Times a request waited for a limit instead of tripping it: bitrix_budget (a portal's REST budget) or mango_slot (Mango's 4 commands/s per account).",
                &["limit"],
            ),
            job_runs: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "mango_callback_job_run_seconds",
                        "Run time of one job run, by kind and outcome (done, waits, retry, dead, lease_lost).",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    ]),
                    &["kind", "outcome"],
                ),
            ),
            jobs: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "mango_callback_jobs",
                        "Jobs in the shared queue at scrape time, by status: queued (due or later), running, dead.",
                    ),
                    &["status"],
                ),
            ),
            oldest_due_job: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "mango_callback_oldest_due_job_age_seconds",
                        "How long the longest-waiting due job has been due, at scrape time (0 when none is due).",
                    ),
                    &[],
                ),
            ),
            sqlite_writes: counter(
                "mango_callback_sqlite_writes_total",
                "SQLite only: write transactions of this process, by writer: group_commit (robot calls' acknowledgements, many per transaction) or other (the job worker and the rest).",
                &["writer"],
            ),
            sqlite_write_waited: register(
                &r,
                CounterVec::new(
                    Opts::new(
                        "mango_callback_sqlite_write_wait_seconds_total",
                        "SQLite only: time writers waited on a thread for the database's one write lock, by writer.",
                    ),
                    &["writer"],
                ),
            ),
            sqlite_write_held: register(
                &r,
                CounterVec::new(
                    Opts::new(
                        "mango_callback_sqlite_write_held_seconds_total",
                        "SQLite only: time the database's one write lock was held, by writer. Its rate summed over writers near 1 means the single writer bounds throughput (several instances on PostgreSQL lift it).",
                    ),
                    &["writer"],
                ),
            ),
            scrape: parking_lot::Mutex::new(()),
            registry: r,
        }
    }

    pub fn robot_call(&self, result: &'static str) {
        self.robot_calls.with_label_values(&[result]).inc();
    }

    /// One `callback_group` command's answer: Mango's result code, or why there is none.
    pub fn mango_command(&self, code: Option<u32>, otherwise: &'static str) {
        match code {
            // Mango's codes are four digits; anything else is not a code we pass on as a label.
            Some(c @ 1000..=9999) => self
                .mango_commands
                .with_label_values(&[c.to_string().as_str()])
                .inc(),
            Some(_) => self.mango_commands.with_label_values(&["other"]).inc(),
            None => self.mango_commands.with_label_values(&[otherwise]).inc(),
        }
    }

    /// One REST request's answer; `status` is `None` when no HTTP answer came.
    pub fn rest_call(&self, method: &str, status: Option<u16>) {
        let method = REST_METHODS
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("other");
        let status = match status {
            Some(s @ 100..=599) => s.to_string(),
            Some(_) => "other".to_owned(),
            None => "transport_error".to_owned(),
        };
        self.rest_calls
            .with_label_values(&[method, status.as_str()])
            .inc();
    }

    pub fn token_refresh(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.token_refreshes.with_label_values(&[result]).inc();
    }

    pub fn limit_wait(&self, limit: Limit) {
        let label = match limit {
            Limit::BitrixBudget => "bitrix_budget",
            Limit::MangoSlot => "mango_slot",
        };
        self.limit_waits.with_label_values(&[label]).inc();
    }

    /// `kind` must come from the job registry's fixed list (the caller checks).
    pub fn job_run(&self, kind: &'static str, outcome: JobOutcome, seconds: f64) {
        self.job_runs
            .with_label_values(&[kind, outcome.label()])
            .observe(seconds);
    }

    /// The text exposition of every series, with the queue's gauges set from `depth` (read from
    /// the database just now) at `now`, or left out when it could not be read, and SQLite's
    /// writers' use from `writers` (`None` on PostgreSQL).
    pub fn render(
        &self,
        depth: Option<&[QueueDepth]>,
        writers: Option<WritersUse>,
        now: NaiveDateTime,
    ) -> String {
        let _one_at_a_time = self.scrape.lock();
        self.jobs.reset();
        self.oldest_due_job.reset();
        if let Some(depth) = depth {
            self.set_queue(depth, now);
        }
        if let Some(w) = writers {
            self.set_writers("other", w.other);
            self.set_writers("group_commit", w.group_commit);
        }
        let mut out = Vec::new();
        // Encoding plain families into a Vec cannot fail; an empty page would say so anyway.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Sets the writer's counters to the gate's totals (they only grow, so a counter never goes
    /// back between scrapes).
    fn set_writers(&self, writer: &str, u: WriterUse) {
        let turns = self.sqlite_writes.with_label_values(&[writer]);
        turns.inc_by(u.turns.saturating_sub(turns.get()));
        let waited = self.sqlite_write_waited.with_label_values(&[writer]);
        waited.inc_by((u.waited_seconds - waited.get()).max(0.0));
        let held = self.sqlite_write_held.with_label_values(&[writer]);
        held.inc_by((u.held_seconds - held.get()).max(0.0));
    }

    fn set_queue(&self, depth: &[QueueDepth], now: NaiveDateTime) {
        for status in ["queued", "running", "dead"] {
            self.jobs.with_label_values(&[status]).set(0);
        }
        let mut oldest = 0.0_f64;
        for d in depth {
            if let Some(g) = ["queued", "running", "dead"]
                .iter()
                .find(|s| **s == d.status)
            {
                self.jobs.with_label_values(&[g]).set(d.count);
            }
            if d.status == "queued" {
                if let Some(at) = d.earliest_run_at.filter(|at| *at <= now) {
                    oldest = (now - at).num_milliseconds() as f64 / 1_000.0;
                }
            }
        }
        self.oldest_due_job
            .with_label_values(&[] as &[&str])
            .set(oldest);
    }
}

/// When the job worker last polled the queue, on the app's clock. The worker beats on every
/// loop; `/health` calls the worker stalled once the last beat is older than its bound.
#[derive(Debug)]
pub struct Heartbeat {
    /// Milliseconds since the Unix epoch of the last beat.
    last_ms: AtomicI64,
}

impl Heartbeat {
    /// A heartbeat that counts as beaten at `now` (the worker starts with the application).
    pub fn new(now: NaiveDateTime) -> Heartbeat {
        Heartbeat {
            last_ms: AtomicI64::new(now.and_utc().timestamp_millis()),
        }
    }

    pub fn beat(&self, now: NaiveDateTime) {
        self.last_ms
            .fetch_max(now.and_utc().timestamp_millis(), Ordering::Relaxed);
    }

    /// How long ago the last beat was, at `now` (zero if the clock went back).
    pub fn silent_for(&self, now: NaiveDateTime) -> std::time::Duration {
        let ms = now.and_utc().timestamp_millis() - self.last_ms.load(Ordering::Relaxed);
        std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exposed_with_bounded_labels() {
        let m = Metrics::new();
        m.robot_call("queued");
        m.rest_call("crm.deal.get", Some(200));
        m.rest_call("some.method.of.a.portal.12345", Some(200));
        m.rest_call("batch", None);
        m.mango_command(Some(1000), "unavailable");
        m.mango_command(Some(12), "unavailable");
        m.mango_command(None, "unavailable");
        m.job_run("place_call", JobOutcome::Done, 0.02);
        let now = chrono::Utc::now().naive_utc();
        let text = m.render(
            Some(&[QueueDepth {
                status: "queued".into(),
                count: 3,
                earliest_run_at: Some(now - chrono::Duration::seconds(90)),
            }]),
            Some(WritersUse {
                other: WriterUse {
                    turns: 7,
                    waited_seconds: 0.25,
                    held_seconds: 1.5,
                },
                group_commit: WriterUse {
                    turns: 2,
                    waited_seconds: 0.0,
                    held_seconds: 0.5,
                },
            }),
            now,
        );
        for line in [
            "mango_callback_robot_calls_total{result=\"queued\"} 1",
            "mango_callback_rest_calls_total{method=\"crm.deal.get\",status=\"200\"} 1",
            "mango_callback_rest_calls_total{method=\"other\",status=\"200\"} 1",
            "mango_callback_rest_calls_total{method=\"batch\",status=\"transport_error\"} 1",
            "mango_callback_mango_commands_total{result=\"1000\"} 1",
            "mango_callback_mango_commands_total{result=\"other\"} 1",
            "mango_callback_mango_commands_total{result=\"unavailable\"} 1",
            "mango_callback_job_run_seconds_count{kind=\"place_call\",outcome=\"done\"} 1",
            "mango_callback_jobs{status=\"queued\"} 3",
            "mango_callback_jobs{status=\"dead\"} 0",
            "mango_callback_oldest_due_job_age_seconds 90",
            "mango_callback_sqlite_writes_total{writer=\"other\"} 7",
            "mango_callback_sqlite_writes_total{writer=\"group_commit\"} 2",
            "mango_callback_sqlite_write_wait_seconds_total{writer=\"other\"} 0.25",
            "mango_callback_sqlite_write_held_seconds_total{writer=\"other\"} 1.5",
            "mango_callback_sqlite_write_held_seconds_total{writer=\"group_commit\"} 0.5",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        let later = m.render(
            None,
            Some(WritersUse {
                other: WriterUse {
                    turns: 9,
                    waited_seconds: 0.25,
                    held_seconds: 2.0,
                },
                group_commit: WriterUse::default(),
            }),
            now,
        );
        assert!(
            later.contains("mango_callback_sqlite_writes_total{writer=\"other\"} 9")
                && later
                    .contains("mango_callback_sqlite_write_held_seconds_total{writer=\"other\"} 2"),
            "a second scrape shows the gate's new totals, not their sum with the old:\n{later}"
        );
        let unread = m.render(None, None, now);
        assert!(
            !unread.contains("mango_callback_jobs{")
                && !unread.contains("oldest_due_job_age_seconds "),
            "a queue that was not read is left out, not shown as empty:\n{unread}"
        );
        assert!(unread.contains("mango_callback_robot_calls_total{result=\"queued\"} 1"));
    }

    #[test]
    fn a_heartbeat_tells_how_long_it_has_been_silent() {
        let t0 = chrono::Utc::now().naive_utc();
        let h = Heartbeat::new(t0);
        assert_eq!(h.silent_for(t0 + chrono::Duration::seconds(5)).as_secs(), 5);
        h.beat(t0 + chrono::Duration::seconds(5));
        assert_eq!(h.silent_for(t0 + chrono::Duration::seconds(5)).as_secs(), 0);
        assert_eq!(h.silent_for(t0).as_secs(), 0, "a clock that went back");
    }
}
