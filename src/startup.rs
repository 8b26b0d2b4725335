//! Building and running the application: database, shared state, HTTP server and job worker.

use std::net::TcpListener;
use std::rc::Rc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;

use crate::callback::{PlaceCall, ReportCallback};
use crate::clock::Clock;
use crate::config::Settings;
use crate::context::{Context, Shared};
use crate::db::Db;
use crate::jobs::worker::{self, StopWorker, Worker};
use crate::jobs::Registry;
use crate::portal::upkeep::{ApplyAppUpdate, KeepTokensAlive, RegisterRobot, SelfCheck};

pub struct Application {
    port: u16,
    server: Server,
    shared: Shared,
    worker: Option<RunningWorker>,
}

/// The background worker of this instance: its stop switch and its task.
struct RunningWorker {
    stop: Rc<StopWorker>,
    done: actix_web::rt::task::JoinHandle<()>,
}

/// Stops the application gracefully from another task (a signal handler, a test).
#[derive(Clone)]
pub struct Stopper {
    server: actix_web::dev::ServerHandle,
    worker: Option<Rc<StopWorker>>,
}

impl Stopper {
    /// Stops accepting connections and claiming jobs at once; requests in flight finish, and
    /// [`Application::run_until_stopped`] returns once running jobs finished or, past the
    /// grace period, were released for another instance.
    pub async fn stop(&self) {
        if let Some(w) = &self.worker {
            w.stop();
        }
        self.server.stop(true).await;
    }
}

/// Options that tests and the sandbox change; production uses the defaults.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Start the background job worker (tests drain jobs themselves instead).
    pub background_worker: bool,
    pub clock: Clock,
    pub http_workers: usize,
    /// How long a stop waits for running jobs before releasing them.
    pub shutdown_grace: std::time::Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            background_worker: true,
            clock: Clock::system(),
            http_workers: 2,
            shutdown_grace: worker::DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl Application {
    /// Connects the database (running migrations), binds the listener and prepares the server.
    pub async fn build(settings: Settings, opts: RunOptions) -> anyhow::Result<Application> {
        let url = settings.database_url.clone();
        let (pool_size, lanes) = (settings.db_pool_size, settings.db_commit_lanes);
        let db = tokio::task::spawn_blocking(move || Db::connect_with(&url, pool_size, lanes))
            .await
            .context("database start-up task failed")??;
        let listener = TcpListener::bind(settings.bind)
            .with_context(|| format!("APP_BIND: cannot listen on {}", settings.bind))?;
        let port = listener.local_addr()?.port();
        let mut settings = settings;
        if !settings.public_url_explicit {
            settings.public_url = format!("http://{}:{port}", settings.bind.ip());
        }
        let shared = Shared::new(settings, db, opts.clock.clone());
        crate::portal::reseal::upgrade_at_start(&shared.db, &shared.cipher).await?;
        let server_shared = shared.clone();
        let server = HttpServer::new(move || {
            // One Context (and awc client) per worker thread: awc's client is !Send.
            let ctx = web::Data::new(Context::new(server_shared.clone()));
            App::new()
                .wrap(crate::http::RequestLogger::new())
                .app_data(ctx)
                .app_data(web::PayloadConfig::new(crate::http::MAX_FORM))
                .configure(crate::http::configure)
        })
        .workers(opts.http_workers.max(1))
        .disable_signals()
        .listen(listener)?
        .run();
        let worker = if opts.background_worker {
            let ctx = Rc::new(Context::for_jobs(shared.clone()));
            let (stop, stopped) = worker::stop_switch();
            let worker = Worker::new(ctx.clone(), job_registry(), shared.settings.job_concurrency)
                .with_shutdown_grace(opts.shutdown_grace);
            let done = actix_web::rt::spawn(worker.run(stopped));
            actix_web::rt::spawn(keep_alive_loop(ctx));
            Some(RunningWorker {
                stop: Rc::new(stop),
                done,
            })
        } else {
            None
        };
        Ok(Application {
            port,
            server,
            shared,
            worker,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// What stops this application gracefully (see [`Stopper::stop`]).
    pub fn stopper(&self) -> Stopper {
        Stopper {
            server: self.server.handle(),
            worker: self.worker.as_ref().map(|w| w.stop.clone()),
        }
    }

    /// Serves until stopped; then waits for the job worker to finish or release its jobs.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        if let Some(w) = self.worker {
            // However the server ended, the worker stops with it.
            w.stop.stop();
            let _ = w.done.await;
        }
        served
    }
}

/// The registry: every job kind the worker runs, in one place.
pub fn job_registry() -> Registry {
    Registry::new()
        .with::<PlaceCall>()
        .with_gathered::<ReportCallback>()
        .with::<crate::callback::AnnounceSchedule>()
        .with::<crate::callback::outcome::ReportOutcome>()
        .with::<crate::callback::outcome::CloseUnknown>()
        .with::<crate::callback::outcome::SettleLate>()
        .with::<crate::callback::retry::AnnounceRetry>()
        .with::<RegisterRobot>()
        .with::<KeepTokensAlive>()
        .with::<SelfCheck>()
        .with::<ApplyAppUpdate>()
}

/// Runs every due job to completion, repeatedly, until none is due: the tests' and the
/// sandbox's deterministic alternative to the background worker. Returns how many runs happened.
pub async fn drain(ctx: &Context, worker: &str) -> usize {
    worker::drain(ctx, &job_registry(), worker).await
}

/// Schedules keep-alive refreshes for idle portals a few times a day (never on a tight loop:
/// Bitrix24 may block apps that refresh on a schedule without need), and deletes Mango's call
/// events that can no longer change an outcome.
async fn keep_alive_loop(ctx: Rc<Context>) {
    loop {
        match crate::portal::upkeep::schedule_keep_alive(&ctx).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(
                    portals = n,
                    "queued keep-alive token refreshes for idle portals"
                );
                ctx.shared.notify.notify_one();
            }
            Err(e) => tracing::error!(error = %e, "scheduling keep-alive refreshes failed"),
        }
        let now = ctx.shared.clock.now();
        match ctx
            .shared
            .db
            .run(move |c| crate::callback::outcome::record::purge_old_events(c, now))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "deleted Mango call events older than two days"),
            Err(e) => tracing::error!(error = %e, "deleting old Mango call events failed"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(6 * 3600)).await;
    }
}
