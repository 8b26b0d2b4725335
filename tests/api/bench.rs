//! `mango-callback bench` in miniature: a tiny run passes its exactly-once checks on both
//! databases, and a run whose simulated Mango performs every command twice is caught.

use std::time::Duration;

use mango_callback::db::Backend;
use mango_callback::sandbox::bench::{self, BenchOptions, BenchReport};

use crate::helpers::postgres_admin_url;
use crate::on_both_backends;

/// Two portals, three robot calls each, one lone call: small enough for the suite; the bench
/// makes (and removes) its own database, a temp SQLite file or a throwaway PostgreSQL one.
fn tiny(backend: Backend) -> BenchOptions {
    BenchOptions {
        database_url: match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(postgres_admin_url()),
        },
        portals: 2,
        calls: 6,
        rate: None,
        concurrency: 4,
        latency: Duration::from_millis(5),
        lone: true,
        timeout: Duration::from_secs(120),
        app_process: None,
        mango_doubles_commands: false,
    }
}

fn failed(report: &BenchReport) -> Vec<&str> {
    report
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name)
        .collect()
}

async fn a_tiny_bench_run_passes_every_exactly_once_check(backend: Backend) {
    mango_callback::telemetry::init("warn");
    let report = bench::run(&tiny(backend)).await.expect("the bench runs");
    assert!(report.passed(), "checks failed:\n{}", report.table());
    let f = &report.figures;
    assert_eq!(f.calls, 6);
    assert!(f.lone_e2e.is_some(), "the lone call was timed");
    assert_eq!(f.b24_limited + f.mango_limited, 0);
    assert!(f.rest_per_callback > 0.0 && f.e2e_p50 > 0.0 && f.peak_rss_mb > 0.0);
    assert!(
        report
            .table()
            .contains("one Mango command per started callback"),
        "{}",
        report.table()
    );
}
on_both_backends!(a_tiny_bench_run_passes_every_exactly_once_check);

/// `--app-process`: the app is this crate's binary, a child process; its memory and CPU time
/// are read from its own `/proc` entry, and the installs, robot calls and checks are the same.
async fn a_bench_run_with_the_app_as_a_child_process_measures_that_process(backend: Backend) {
    mango_callback::telemetry::init("warn");
    let mut opts = tiny(backend);
    opts.app_process = Some(env!("CARGO_BIN_EXE_mango-callback").into());
    let report = bench::run(&opts).await.expect("the bench runs");
    assert!(report.passed(), "checks failed:\n{}", report.table());
    let f = &report.figures;
    assert_eq!(f.measured, bench::Measured::AppProcess);
    // Read from the child's /proc entry while it ran: zeros would mean it was not found.
    assert!(
        f.rss_before_mb > 1.0 && f.peak_rss_mb >= f.rss_before_mb && f.cpu_s > 0.0,
        "{}",
        report.table()
    );
    assert!(
        report.table().contains("the app's process"),
        "{}",
        report.table()
    );
}
on_both_backends!(a_bench_run_with_the_app_as_a_child_process_measures_that_process);

#[actix_web::test]
async fn a_bench_run_whose_mango_performs_each_command_twice_fails_its_check() {
    mango_callback::telemetry::init("warn");
    let mut opts = tiny(Backend::Sqlite);
    opts.lone = false;
    opts.mango_doubles_commands = true;
    let report = bench::run(&opts).await.expect("the bench runs");
    assert!(!report.passed());
    assert_eq!(
        failed(&report),
        ["one Mango command per started callback"],
        "{}",
        report.table()
    );
    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("JSON output");
    assert_eq!(json["figures"]["calls"], 6);
}

#[test]
fn bench_options_out_of_range_are_refused_naming_the_flag() {
    let args = |f: &dyn Fn(&mut mango_callback::config::BenchArgs)| {
        let mut a = mango_callback::config::BenchArgs {
            database_url: None,
            portals: 10,
            calls: 300,
            rate: None,
            burst: false,
            concurrency: 64,
            latency_ms: 50,
            lone: false,
            timeout_secs: None,
            app_process: false,
            json: false,
        };
        f(&mut a);
        BenchOptions::from_args(&a)
    };
    let ok = args(&|_| {}).expect("the defaults are in range");
    assert_eq!((ok.portals, ok.calls, ok.rate), (10, 300, None));
    for (flag, result) in [
        ("--portals", args(&|a| a.portals = 0)),
        ("--calls", args(&|a| a.calls = 100_001)),
        ("--rate", args(&|a| a.rate = Some(f64::NAN))),
        ("--rate", args(&|a| a.rate = Some(0.0))),
        ("--concurrency", args(&|a| a.concurrency = 0)),
        ("--latency-ms", args(&|a| a.latency_ms = 10_001)),
        ("--timeout-secs", args(&|a| a.timeout_secs = Some(0))),
    ] {
        let e = result.expect_err("out of range");
        assert!(e.starts_with(flag), "{flag}: {e}");
    }
}
