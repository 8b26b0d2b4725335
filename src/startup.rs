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
use crate::jobs::worker::{self, Worker};
use crate::jobs::Registry;
use crate::portal::upkeep::{ApplyAppUpdate, KeepTokensAlive, RegisterRobot, SelfCheck};

pub struct Application {
    port: u16,
    server: Server,
    shared: Shared,
}

/// Options that tests and the sandbox change; production uses the defaults.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Start the background job worker (tests drain jobs themselves instead).
    pub background_worker: bool,
    pub clock: Clock,
    pub http_workers: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            background_worker: true,
            clock: Clock::system(),
            http_workers: 2,
        }
    }
}

impl Application {
    /// Connects the database (running migrations), binds the listener and prepares the server.
    pub async fn build(settings: Settings, opts: RunOptions) -> anyhow::Result<Application> {
        let url = settings.database_url.clone();
        let pool_size = settings.db_pool_size;
        let db = tokio::task::spawn_blocking(move || Db::connect(&url, pool_size))
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
        if opts.background_worker {
            let ctx = Rc::new(Context::new(shared.clone()));
            let worker = Worker::new(ctx.clone(), job_registry(), shared.settings.job_concurrency);
            actix_web::rt::spawn(worker.run());
            actix_web::rt::spawn(keep_alive_loop(ctx));
        }
        Ok(Application {
            port,
            server,
            shared,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// The registry: every job kind the worker runs, in one place.
pub fn job_registry() -> Registry {
    Registry::new()
        .with::<PlaceCall>()
        .with::<ReportCallback>()
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
/// Bitrix24 may block apps that refresh on a schedule without need).
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
        tokio::time::sleep(std::time::Duration::from_secs(6 * 3600)).await;
    }
}
