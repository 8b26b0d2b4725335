//! Simulated peers (Bitrix24, Mango), the settings that point the app at them, and the sandbox
//! demo and the benchmark (`bench`) built on them. Behind the `sandbox` cargo feature (on by default): nothing outside this
//! folder imports it, so `cargo build --no-default-features` builds the server without it.

pub mod bench;
pub mod bitrix;
pub mod demo;
pub mod faults;
pub mod mango;
pub mod seed;

use std::net::SocketAddr;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};

use crate::config::{Settings, LOCAL_SECRET_KEY};
use crate::crypto::SecretKey;
use crate::net::trusted_proxies::TrustedProxies;

/// `Settings::for_local`: settings that point the app at the simulators. An extension of
/// [`Settings`] kept here so that the configuration never depends on the simulators.
pub trait LocalSettings {
    /// Settings for tests and the sandbox: everything explicit, nothing read from the environment.
    /// Every call gets the same [`LOCAL_SECRET_KEY`], so two instances share one database.
    fn for_local(database_url: &str, oauth_url: &str, mango_url: &str) -> Settings {
        Settings {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            // Filled in with the bound port by Application::build.
            public_url: "http://127.0.0.1:0".into(),
            public_url_explicit: false,
            database_url: database_url.into(),
            b24_client_id: Some(bitrix::SANDBOX_CLIENT_ID.into()),
            b24_client_secret: Some(bitrix::SANDBOX_CLIENT_SECRET.into()),
            b24_oauth_url: oauth_url.trim_end_matches('/').into(),
            b24_oauth_timeout: crate::bitrix::oauth::DEFAULT_TIMEOUT,
            mango_api_url: format!("{}/", mango_url.trim_end_matches('/')),
            secret_key: SecretKey::parse(LOCAL_SECRET_KEY)
                .unwrap_or_else(|e| unreachable!("the local key is valid: {e}")),
            job_concurrency: 144,
            job_lease: crate::jobs::worker::DEFAULT_LEASE,
            db_pool_size: 8,
            db_commit_lanes: crate::db::POSTGRES_COMMIT_LANES,
            b24_requests_per_second: 2.0,
            b24_burst: 50,
            allow_private_peers: true,
            trusted_proxies: TrustedProxies::default(),
            address_burst: crate::net::address_limit::BURST,
            address_refill_every: crate::net::address_limit::REFILL_EVERY,
            metrics_token: None,
        }
    }
}

impl LocalSettings for Settings {}

/// The environment that points this binary's `serve`, listening on 127.0.0.1:`port`, at the
/// simulators: [`LocalSettings::for_local`] for a child process (the bench's `--app-process`,
/// the chaos harness), the same key included so the parent reads what the child sealed.
pub fn local_env(
    port: u16,
    database_url: &str,
    oauth_url: &str,
    mango_url: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("APP_BIND", format!("127.0.0.1:{port}")),
        ("APP_PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ("DATABASE_URL", database_url.into()),
        ("B24_CLIENT_ID", bitrix::SANDBOX_CLIENT_ID.into()),
        ("B24_CLIENT_SECRET", bitrix::SANDBOX_CLIENT_SECRET.into()),
        ("B24_OAUTH_URL", oauth_url.into()),
        ("MANGO_API_URL", mango_url.into()),
        ("APP_SECRET_KEY", LOCAL_SECRET_KEY.into()),
        ("APP_SANDBOX_PRIVATE_PEERS", "true".into()),
    ]
}

/// A port of 127.0.0.1 free now, for a child process to listen on.
pub fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// Serves a simulator's routes from `listener` on one worker of the current actix system (so it
/// runs beside the app in tests and in the sandbox) and returns the handle that stops it.
pub(crate) fn serve<F>(listener: std::net::TcpListener, routes: F) -> std::io::Result<ServerHandle>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let server = HttpServer::new(move || App::new().configure(routes.clone()))
        .workers(1)
        .listen(listener)?
        .disable_signals()
        .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok(handle)
}
