//! `mango-callback bench`: the measuring instrument of issue #12. It runs the app in-process on
//! SQLite or PostgreSQL against the simulated Bitrix24 and Mango (with a simulated latency),
//! installs P portals through the real install flow, fires N signed robot calls open-loop, waits
//! until every callback is finished and reported, checks exactly-once from what the simulators
//! received, and prints one table. It measures; it changes nothing in the app.

mod app_process;
mod checks;
mod database;
mod figures;
mod fire;
mod report;
mod writers;

use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::bitrix::{BitrixSim, BitrixSimOptions, SimPortal};
use super::mango::{MangoSim, MangoSimOptions};
use super::seed::{seed_mango, MangoAccount};
use super::LocalSettings;
use crate::config::{BenchArgs, Settings};
use crate::startup::{Application, RunOptions};

pub use checks::Check;
pub use figures::{Figures, Measured};
pub use report::BenchReport;
pub use writers::WriterFigures;

/// The robot code our installer registers.
const ROBOT: &str = crate::portal::robot::ROBOT_CODE;
/// When the lone robot call goes, counted from the first robot call of the run.
const LONE_AFTER: Duration = Duration::from_secs(2);
/// The proxy the app is told to believe: each install names its administrator's browser in
/// `X-Forwarded-For`, so the per-address limit of browser POSTs sees many administrators, as
/// it would in production, not the bench's one address.
const INSTALLS_VIA: &str = "127.0.0.1";

/// A checked bench run: [`BenchOptions::from_args`] range-checks every number.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// `None`: a fresh temp SQLite file.
    pub database_url: Option<String>,
    pub portals: u32,
    pub calls: u32,
    /// Robot calls per second; `None` fires them as one burst.
    pub rate: Option<f64>,
    pub concurrency: u32,
    pub latency: Duration,
    pub lone: bool,
    pub timeout: Duration,
    /// Runs the app as a child process of this binary (`serve`), so that memory and CPU are
    /// measured for the app alone; `None` runs it in this process.
    pub app_process: Option<std::path::PathBuf>,
    /// The simulated Mango records every command twice: a broken run the checks must catch
    /// (the bench's own test; no command-line flag).
    pub mango_doubles_commands: bool,
}

impl BenchOptions {
    /// The options of `args`, or what is out of range.
    pub fn from_args(a: &BenchArgs) -> Result<BenchOptions, String> {
        fn within<T: PartialOrd + std::fmt::Display>(
            name: &str,
            v: T,
            lo: T,
            hi: T,
        ) -> Result<T, String> {
            if v >= lo && v <= hi {
                Ok(v)
            } else {
                Err(format!("--{name} must be between {lo} and {hi}, not {v}"))
            }
        }
        let portals = within("portals", a.portals, 1, 1000)?;
        let calls = within("calls", a.calls, 1, 100_000)?;
        let rate = match a.rate {
            Some(r) if r.is_finite() => Some(within("rate", r, 0.1, 100_000.0)?),
            Some(r) => return Err(format!("--rate must be a number, not {r}")),
            None => None,
        };
        let per_portal = u64::from(calls.div_ceil(portals));
        // Generous on purpose: the app today spends ~1.5 s of a portal's REST budget per
        // callback; the timeout is there to fail loudly on a stuck run, not to judge speed.
        let default_timeout = 120 + 4 * per_portal;
        Ok(BenchOptions {
            database_url: a.database_url.clone().filter(|u| !u.trim().is_empty()),
            portals,
            calls,
            rate,
            concurrency: within("concurrency", a.concurrency, 1, 1024)?,
            latency: Duration::from_millis(within("latency-ms", a.latency_ms, 0, 10_000)?),
            lone: a.lone,
            timeout: Duration::from_secs(within(
                "timeout-secs",
                a.timeout_secs.unwrap_or(default_timeout),
                1,
                86_400,
            )?),
            app_process: match a.app_process {
                true => Some(
                    std::env::current_exe()
                        .map_err(|e| format!("--app-process: cannot find this binary: {e}"))?,
                ),
                false => None,
            },
            mango_doubles_commands: false,
        })
    }
}

/// The subcommand: runs, prints the table (or JSON), and fails when a correctness check failed.
pub async fn command(args: BenchArgs) -> anyhow::Result<()> {
    let opts = BenchOptions::from_args(&args).map_err(anyhow::Error::msg)?;
    let report = run(&opts).await?;
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    let failed: Vec<&Check> = report.checks.iter().filter(|c| !c.ok).collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{} correctness check(s) failed: {}",
        failed.len(),
        failed
            .iter()
            .map(|c| format!("{} ({})", c.name, c.detail))
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(())
}

/// One portal of the run (its Mango account is its own, keyed by its index).
struct BenchPortal {
    sim: SimPortal,
}

/// Runs the bench on the current actix system and returns its figures and checks. An error
/// means the run could not be made (set-up failed, or the callbacks did not finish in time).
pub async fn run(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let (db_url, db_guard) = database::prepare(opts.database_url.as_deref()).await?;
    let b24 = BitrixSim::start(BitrixSimOptions {
        latency: opts.latency,
        ..Default::default()
    })
    .await
    .context("cannot start the simulated Bitrix24")?;
    let mango = MangoSim::start(MangoSimOptions {
        latency: opts.latency,
        ..Default::default()
    })
    .await
    .context("cannot start the simulated Mango")?;
    mango.record_commands_twice(opts.mango_doubles_commands);
    // The production defaults, pointed at the simulators: the bench measures the app as shipped.
    let mut settings = Settings::for_local(&db_url, &b24.url(), &mango.api_url());
    settings.trusted_proxies = crate::net::trusted_proxies::TrustedProxies::parse(INSTALLS_VIA)
        .map_err(anyhow::Error::msg)?;
    // The bench reads the app's /metrics (SQLite's writer) with a token of this run's own.
    let metrics_token = uuid::Uuid::new_v4().simple().to_string();
    settings.metrics_token = Some(metrics_token.clone().into());
    // Whatever happens to the run, the simulators stop and the throwaway database goes.
    let result = async {
        match &opts.app_process {
            None => {
                let app = Application::build(settings, RunOptions::default()).await?;
                let base = format!("http://127.0.0.1:{}", app.port());
                let shared = app.shared().clone();
                let stopper = app.stopper();
                let served = actix_web::rt::spawn(app.run_until_stopped());
                let result = measure(opts, &b24, &mango, &shared, &base, &metrics_token, &|| {
                    (Measured::WholeBench, figures::proc_self())
                })
                .await;
                stopper.stop().await;
                let _ = served.await;
                result
            }
            Some(exe) => {
                // The bench's own view of the database (its migrations run first, settings are
                // sealed with the same key, the counts are read through it): no worker, not served.
                let view = Application::build(
                    settings,
                    RunOptions {
                        background_worker: false,
                        ..RunOptions::default()
                    },
                )
                .await?;
                let mut app = app_process::AppProcess::start(
                    exe,
                    &db_url,
                    &b24.url(),
                    &mango.api_url(),
                    &metrics_token,
                )
                .await?;
                let base = format!("http://127.0.0.1:{}", app.port());
                let result = measure(
                    opts,
                    &b24,
                    &mango,
                    view.shared(),
                    &base,
                    &metrics_token,
                    &|| (Measured::AppProcess, app.stats()),
                )
                .await;
                app.stop().await;
                result
            }
        }
    }
    .await;
    b24.stop().await;
    mango.stop().await;
    db_guard.cleanup().await;
    result
}

async fn measure(
    opts: &BenchOptions,
    b24: &BitrixSim,
    mango: &MangoSim,
    shared: &crate::context::Shared,
    base: &str,
    metrics_token: &str,
    app_stats: &dyn Fn() -> (Measured, figures::ProcStats),
) -> anyhow::Result<BenchReport> {
    let setup_started = Instant::now();
    let count = opts.portals as usize + usize::from(opts.lone);
    let portals = install_portals(b24, mango, shared, base, count).await?;
    let setup = setup_started.elapsed();
    let (busy, lone) = portals.split_at(opts.portals as usize);

    let shots = fire::prepare_shots(b24, busy, opts.calls)?;
    let lone_shot = match lone.first() {
        Some(p) => Some(fire::prepare_shots(b24, std::slice::from_ref(p), 1)?.remove(0)),
        None => None,
    };
    let rest_before = b24.calls().len();
    let (measured, proc_before) = app_stats();
    let writers_before = writers::scrape(base, metrics_token).await?;
    let fired = fire::fire(
        shots,
        lone_shot.map(|s| (LONE_AFTER, s)),
        opts.rate,
        opts.concurrency as usize,
    )
    .await;
    let expected = fired.acks.len() + usize::from(fired.lone.is_some());
    fire::wait_until_reported(
        shared,
        b24,
        expected,
        fired.started + opts.timeout,
        opts.timeout,
    )
    .await?;

    let (_, proc_after) = app_stats();
    let writers_after = writers::scrape(base, metrics_token).await?;
    let callbacks = shared.db.run(fire::all_callbacks).await?;
    let sqlite_writer = writers_before
        .zip(writers_after)
        .map(|(before, after)| writers::between(&before, &after, callbacks.len()));
    let observed = figures::Observed {
        opts,
        portals: &portals,
        fired: &fired,
        callbacks,
        sqlite_writer,
        mango_commands: mango.callbacks_timed(),
        mango_statuses: mango.requests().iter().map(|r| r.status).collect(),
        rest_calls: b24.calls().split_off(rest_before),
        b24,
        setup,
        measured,
        proc_before,
        proc_after,
    };
    Ok(BenchReport {
        figures: figures::compute(&observed),
        checks: checks::all(&observed),
    })
}

/// The address of portal `i`'s administrator's browser (10.x.y.z, one per portal).
fn administrator_address(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

/// Creates `count` portals, installs the app into each the way an administrator does (installer
/// page, `installFinish()`, ONAPPINSTALL), waits for the robot, and saves Mango settings with an
/// account of its own for each.
async fn install_portals(
    b24: &BitrixSim,
    mango: &MangoSim,
    shared: &crate::context::Shared,
    base: &str,
    count: usize,
) -> anyhow::Result<Vec<BenchPortal>> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let http = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let portals: Vec<BenchPortal> = stream::iter(0..count)
        .map(|i| {
            let http = http.clone();
            async move {
                let sim = b24.create_portal(&format!("bench{i}"));
                let install =
                    b24.iframe_request(&sim.member_id, sim.admin_user_id, "DEFAULT", "ru");
                let resp = http
                    .post(format!("{base}/b24/install?{}", install.query_string()))
                    .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
                    .insert_header(("X-Forwarded-For", administrator_address(i)))
                    .send_body(install.to_form_body())
                    .await
                    .map_err(|e| anyhow::anyhow!("installer request failed: {e}"))?;
                anyhow::ensure!(
                    resp.status().is_success(),
                    "the installer answered {} on portal {}",
                    resp.status(),
                    sim.domain
                );
                b24.finish_install(&sim.member_id);
                let mango_key = format!("bench-vpbx-key-{i:04}");
                let salt = format!("bench-vpbx-salt-{i:04}");
                let account = MangoAccount {
                    key: &mango_key,
                    salt: &salt,
                    line: "74951234567",
                    trainees: "002",
                    experienced: "001",
                };
                seed_mango(shared, mango, account, &sim.member_id, |_| {}).await?;
                Ok(BenchPortal { sim })
            }
        })
        .buffered(8)
        .try_collect()
        .await?;
    b24.settle().await;
    // ONAPPINSTALL queues a RegisterRobot job per portal (robot and event bindings checked
    // again): its REST requests belong to the set-up, not to the measured run.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pending = shared
            .db
            .run(|c| {
                crate::jobs::queue::count_pending_of_kind(
                    c,
                    <crate::portal::upkeep::RegisterRobot as crate::jobs::Job>::KIND,
                )
            })
            .await?;
        let robots = portals.iter().all(|p| {
            b24.robots(&p.sim.member_id)
                .iter()
                .any(|(code, _)| code == ROBOT)
        });
        if pending == 0 && robots {
            return Ok(portals);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the robots were not registered within 120 s of the installs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
