//! Configuration: a typed value loaded once from environment variables (and `.env`), passed down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

use crate::crypto::SecretKey;
use crate::net::trusted_proxies::TrustedProxies;
pub use crate::telemetry::LogFormat;

pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/mango-callback.db";

/// Command line: every setting is also an environment variable (shown by `--help`).
#[derive(Debug, Parser)]
#[command(
    name = "mango-callback",
    version,
    about = "Bitrix24 app: a new deal rings a Mango Office group, then the client",
    long_about = "Bitrix24 app: a new deal rings a Mango Office group of managers, and when one answers the client is dialed.\n\
                  Every option can be given as the environment variable shown next to it; a .env file is read if present."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Log lines as text (coloured only on a terminal) or as JSON objects, one per line.
    #[arg(long, env = "APP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the app (the default).
    Serve,
    /// Run the app against simulated Bitrix24 and Mango on local ports and replay a demo.
    Sandbox {
        /// Port of the simulated Bitrix24 portal and OAuth server (0 = any free port).
        #[arg(long, default_value_t = 0)]
        bitrix_port: u16,
        /// Port of the simulated Mango VPBX API (0 = any free port).
        #[arg(long, default_value_t = 0)]
        mango_port: u16,
        /// Exit after the demo instead of serving on.
        #[arg(long)]
        exit: bool,
    },
    /// Measure the app against simulated portals and Mango: install P portals, fire N robot
    /// calls open-loop, wait for every callback, check exactly-once, print one table.
    Bench(BenchArgs),
    /// Re-seal every stored secret under a new key, in one transaction: stop every instance,
    /// set APP_SECRET_KEY to the new key, give the old one, run this, start with the new key.
    RotateKey {
        /// The key the stored values are sealed with now (prefer the environment variable: a
        /// flag shows in the process list). Any text from before keys were checked is accepted.
        #[arg(long, env = "APP_OLD_SECRET_KEY", hide_env_values = true)]
        old_key: Option<SecretArg>,
    },
}

/// `mango-callback bench`: what to run. Kept here (not in `sandbox`) so that the configuration
/// never depends on the simulators; `sandbox::bench` reads it.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Database of the measured app: a fresh temp SQLite file when unset; with a postgres:// URL
    /// a throwaway database is created on that server for the run and dropped after it.
    #[arg(long = "database-url", id = "bench_database_url")]
    pub database_url: Option<String>,
    /// Portals installed and fired at (1–1000).
    #[arg(long, default_value_t = 10)]
    pub portals: u32,
    /// Robot calls fired, spread round-robin over the portals (1–100000).
    #[arg(long, default_value_t = 300)]
    pub calls: u32,
    /// Open-loop robot calls per second (0.1–100000); the default is one burst.
    #[arg(long, conflicts_with = "burst")]
    pub rate: Option<f64>,
    /// Fire every robot call at once (the default when no --rate is given).
    #[arg(long)]
    pub burst: bool,
    /// Robot calls in flight at most (1–1024): the open loop's bound on HTTP concurrency.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Simulated latency of every Bitrix24 and Mango answer, in milliseconds (0–10000).
    #[arg(long, default_value_t = 50)]
    pub latency_ms: u64,
    /// Also fire one robot call on an extra, idle portal 2 s into the run, and time it.
    #[arg(long)]
    pub lone: bool,
    /// Give up waiting for the callbacks after this many seconds (1–86400); default from the
    /// size of the run.
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// Run the measured app as a child process (this binary's `serve`), so that its peak RSS
    /// and CPU time are measured alone; by default it shares this process with the simulators.
    #[arg(long)]
    pub app_process: bool,
    /// Print the figures as one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// A secret given on the command line or in the environment: `Debug` never shows it.
#[derive(Clone)]
pub struct SecretArg(pub String);

impl std::str::FromStr for SecretArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretArg(s.to_owned()))
    }
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SecretArg {
    /// The value, or `None` when it is empty (an empty variable counts as unset).
    fn non_empty(self) -> Option<String> {
        Some(self.0).filter(|s| !s.is_empty())
    }
}

/// Raw settings as given; [`Settings::from_args`] checks them.
#[derive(Debug, Clone, Args)]
pub struct SettingsArgs {
    /// Address and port to listen on.
    #[arg(long, env = "APP_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// The https base URL Bitrix24 and Mango reach this app at (robot handler, event URLs).
    #[arg(long, env = "APP_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// sqlite://path/file.db (default, created on first run) or postgres://user@host/db.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Application client_id from the Bitrix24 app card (local.… or app.…).
    #[arg(long, env = "B24_CLIENT_ID")]
    pub b24_client_id: Option<String>,
    /// Application client_secret from the Bitrix24 app card.
    #[arg(long, env = "B24_CLIENT_SECRET", hide_env_values = true)]
    pub b24_client_secret: Option<SecretArg>,
    /// Bitrix24 OAuth server (token refresh and app.info verification).
    #[arg(
        long,
        env = "B24_OAUTH_URL",
        default_value = "https://oauth.bitrix.info"
    )]
    pub b24_oauth_url: String,
    /// How long a token refresh waits for the OAuth server's answer. Generous on purpose:
    /// Bitrix24 consumes the refresh token on receipt, so giving up early loses the portal.
    #[arg(long, env = "B24_OAUTH_TIMEOUT_SECONDS", default_value_t = 60)]
    pub b24_oauth_timeout_seconds: u64,
    /// Mango Office VPBX API base URL.
    #[arg(
        long,
        env = "MANGO_API_URL",
        default_value = "https://app.mango-office.ru/vpbx/"
    )]
    pub mango_api_url: String,
    /// Encrypts stored secrets and signs page tokens: at least 32 random bytes as hex or base64
    /// (`openssl rand -hex 32`); generated into the data folder when unset on SQLite.
    #[arg(long, env = "APP_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<SecretArg>,
    /// How many jobs one instance runs at once. Jobs mostly wait on Bitrix24 and Mango, and a
    /// job waiting for a rate limit gives its slot back, so slots are cheap. A callback's send
    /// holds its slot for Mango's answer: 100 accounts at 4 a second with 50–100 ms answers
    /// keep 40–80 slots busy (with 32, a 10,000-call burst sent at 250 a second, not 400). A
    /// job also holds its slot while it waits for a database connection and for each of its
    /// round trips: on PostgreSQL 96 slots were the bound of a 10,000-call burst (63.6 s; 43.0 s
    /// with 144, 42.1 s with 192), and on SQLite 144 drained it in 35.2 s instead of 41.2 s.
    #[arg(long, env = "APP_JOB_CONCURRENCY", default_value_t = 144)]
    pub job_concurrency: usize,
    /// How long a running job's lease lasts; its worker renews it every third of that, so a
    /// crashed instance's jobs are taken over this long after its last renewal.
    #[arg(long, env = "APP_JOB_LEASE_SECONDS", default_value_t = 20)]
    pub job_lease_seconds: u64,
    /// The portal's REST limit: requests per second drained from its leaky bucket (2; Enterprise 5).
    #[arg(long, env = "B24_REQUESTS_PER_SECOND", default_value_t = 2.0)]
    pub b24_requests_per_second: f64,
    /// The portal's REST burst: bucket size (50; Enterprise 250).
    #[arg(long, env = "B24_BURST", default_value_t = 50)]
    pub b24_burst: u32,
    /// Database connections per instance.
    #[arg(long, env = "APP_DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: u32,
    /// PostgreSQL: the robot calls' acknowledgements commit on this many connections of their
    /// own at once, besides the pool (1–64; SQLite always uses one, its single writer).
    #[arg(long, env = "APP_DB_COMMIT_LANES", default_value_t = crate::db::POSTGRES_COMMIT_LANES)]
    pub db_commit_lanes: usize,
    /// Reverse proxies whose X-Forwarded-For / Forwarded headers name the client: comma-separated
    /// IPs and CIDRs (e.g. 127.0.0.1,10.0.0.0/8); empty trusts nobody.
    #[arg(long, env = "APP_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// The bearer token Prometheus presents on `GET /metrics` (`Authorization: Bearer …`), at
    /// least 16 characters; unset, `/metrics` answers 404.
    #[arg(long, env = "APP_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<SecretArg>,
    /// Harnesses that run this binary against the simulators on http://127.0.0.1 (tests/chaos)
    /// set it; exists only in builds with the `sandbox` feature and is hidden from `--help`.
    #[cfg(feature = "sandbox")]
    #[arg(long, env = "APP_SANDBOX_PRIVATE_PEERS", hide = true)]
    pub sandbox_private_peers: bool,
}

/// The key of the sandbox's local settings (`Settings::for_local`): public, so good for tests only.
pub const LOCAL_SECRET_KEY: &str =
    "6c6f63616c2d746573742d7365637265742d6b65792d30313233343536373839";

/// Checked settings, the one configuration value of a running app.
#[derive(Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    /// Without a trailing slash.
    pub public_url: String,
    pub public_url_explicit: bool,
    pub database_url: String,
    pub b24_client_id: Option<String>,
    pub b24_client_secret: Option<SecretString>,
    /// Without a trailing slash.
    pub b24_oauth_url: String,
    /// The OAuth refresh request's timeout; the refresh lease lasts three of them.
    pub b24_oauth_timeout: std::time::Duration,
    /// With a trailing slash, so that `{base}commands/callback_group` works.
    pub mango_api_url: String,
    pub secret_key: SecretKey,
    pub job_concurrency: usize,
    /// A running job's lease (see [`crate::jobs::worker`]).
    pub job_lease: std::time::Duration,
    pub db_pool_size: u32,
    /// PostgreSQL's group committers ([`crate::db::group`]); SQLite has one.
    pub db_commit_lanes: usize,
    pub b24_requests_per_second: f64,
    pub b24_burst: u32,
    /// Admits plain-http and loopback/private peers where a public https one is required (a
    /// renamed portal's new endpoint). Only tests and the sandbox, whose simulators listen on
    /// http://127.0.0.1, turn it on; from the environment only in `sandbox` builds
    /// (`APP_SANDBOX_PRIVATE_PEERS`, for the chaos harness that runs the real binary).
    pub allow_private_peers: bool,
    /// Peers whose forwarding headers are believed for the client address; empty = none.
    pub trusted_proxies: TrustedProxies,
    /// Per-address limit of unauthenticated browser POSTs: burst, and one more per interval.
    /// Not an environment variable; tests slow the refill to count a burst deterministically.
    pub address_burst: u32,
    pub address_refill_every: std::time::Duration,
    /// `APP_METRICS_TOKEN`: `/metrics` is served only to a request bearing it; `None` = off.
    pub metrics_token: Option<SecretString>,
}

impl std::fmt::Debug for Settings {
    // Hand-written so that secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("bind", &self.bind)
            .field("public_url", &self.public_url)
            .field("database", &redact_url(&self.database_url))
            .field("b24_client_id", &self.b24_client_id)
            .field("b24_oauth_url", &self.b24_oauth_url)
            .field("mango_api_url", &self.mango_api_url)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish_non_exhaustive()
    }
}

/// A configuration problem, phrased as one line naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn bad(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

fn http_url(var: &'static str, value: &str) -> Result<url::Url, ConfigError> {
    let u = url::Url::parse(value).map_err(|e| {
        bad(
            var,
            format!("expected an http(s) URL such as https://example.com, got {value:?} ({e})"),
        )
    })?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(bad(
            var,
            format!("expected an http(s) URL with a host, got {value:?}"),
        ));
    }
    Ok(u)
}

/// Hides a password in a database URL.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl Settings {
    pub fn from_args(a: SettingsArgs) -> Result<Settings, ConfigError> {
        let bind: SocketAddr = a.bind.parse().map_err(|_| {
            bad(
                "APP_BIND",
                format!(
                    "expected host:port such as 127.0.0.1:8080, got {:?}",
                    a.bind
                ),
            )
        })?;
        let (public_url, public_url_explicit) =
            match a.public_url.as_deref().filter(|s| !s.is_empty()) {
                Some(p) => (
                    http_url("APP_PUBLIC_URL", p)?
                        .as_str()
                        .trim_end_matches('/')
                        .to_owned(),
                    true,
                ),
                None => (format!("http://{bind}"), false),
            };
        let oauth = http_url("B24_OAUTH_URL", &a.b24_oauth_url)?;
        let mango = http_url("MANGO_API_URL", &a.mango_api_url)?;
        let mut mango_api_url = mango.as_str().to_owned();
        if !mango_api_url.ends_with('/') {
            mango_api_url.push('/');
        }
        let db = a.database_url.trim().to_owned();
        if db.is_empty() {
            return Err(bad(
                "DATABASE_URL",
                "expected sqlite://path/file.db or postgres://user@host/db",
            ));
        }
        let secret_key = match a.secret_key.and_then(SecretArg::non_empty) {
            Some(k) => SecretKey::parse(&k).map_err(|e| {
                bad(
                    "APP_SECRET_KEY",
                    format!("{e} (to replace a key already in use: `mango-callback rotate-key --help`)"),
                )
            })?,
            None if crate::db::Backend::of_url(&db) == crate::db::Backend::Sqlite => {
                generated_secret_key(&db).map_err(|e| bad("APP_SECRET_KEY", e))?
            }
            None => {
                return Err(bad(
                    "APP_SECRET_KEY",
                    "required with PostgreSQL (every instance must share it); e.g. `openssl rand -hex 32`",
                ))
            }
        };
        if a.b24_requests_per_second.is_nan() || a.b24_requests_per_second <= 0.0 {
            return Err(bad(
                "B24_REQUESTS_PER_SECOND",
                "must be a positive number such as 2",
            ));
        }
        if a.b24_oauth_timeout_seconds == 0 {
            return Err(bad("B24_OAUTH_TIMEOUT_SECONDS", "must be at least 1"));
        }
        if a.b24_burst == 0 {
            return Err(bad("B24_BURST", "must be at least 1"));
        }
        if a.job_lease_seconds < 3 {
            return Err(bad("APP_JOB_LEASE_SECONDS", "must be at least 3"));
        }
        if a.job_concurrency == 0 {
            return Err(bad("APP_JOB_CONCURRENCY", "must be at least 1"));
        }
        if !(1..=64).contains(&a.db_commit_lanes) {
            return Err(bad("APP_DB_COMMIT_LANES", "must be between 1 and 64"));
        }
        let trusted_proxies =
            TrustedProxies::parse(&a.trusted_proxies).map_err(|e| bad("APP_TRUSTED_PROXIES", e))?;
        let metrics_token = a.metrics_token.and_then(SecretArg::non_empty);
        if metrics_token.as_ref().is_some_and(|t| {
            t.len() < MIN_METRICS_TOKEN || t.len() > 512 || !t.chars().all(|c| c.is_ascii_graphic())
        }) {
            return Err(bad(
                "APP_METRICS_TOKEN",
                "must be 16 to 512 printable characters without spaces, e.g. `openssl rand -hex 24`",
            ));
        }
        Ok(Settings {
            bind,
            public_url,
            public_url_explicit,
            database_url: db,
            b24_client_id: a.b24_client_id.filter(|s| !s.is_empty()),
            b24_client_secret: a
                .b24_client_secret
                .and_then(SecretArg::non_empty)
                .map(SecretString::from),
            b24_oauth_url: oauth.as_str().trim_end_matches('/').to_owned(),
            b24_oauth_timeout: std::time::Duration::from_secs(a.b24_oauth_timeout_seconds),
            mango_api_url,
            secret_key,
            job_concurrency: a.job_concurrency,
            job_lease: std::time::Duration::from_secs(a.job_lease_seconds),
            db_pool_size: a.db_pool_size.max(2),
            db_commit_lanes: a.db_commit_lanes,
            b24_requests_per_second: a.b24_requests_per_second,
            b24_burst: a.b24_burst,
            #[cfg(feature = "sandbox")]
            allow_private_peers: a.sandbox_private_peers,
            #[cfg(not(feature = "sandbox"))]
            allow_private_peers: false,
            trusted_proxies,
            address_burst: crate::net::address_limit::BURST,
            address_refill_every: crate::net::address_limit::REFILL_EVERY,
            metrics_token: metrics_token.map(SecretString::from),
        })
    }
}

/// The shortest `APP_METRICS_TOKEN` accepted: guessing it must be hopeless.
const MIN_METRICS_TOKEN: usize = 16;

/// The generated key file of a SQLite database: `secret.key` in the database's folder.
pub fn key_file_path(database_url: &str) -> PathBuf {
    let path = database_url
        .strip_prefix("sqlite://")
        .unwrap_or(database_url);
    let dir = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join("secret.key")
}

/// Reads `secret.key` beside the SQLite database file, or creates it (0600) on first start.
///
/// An existing file is never replaced: if it cannot be read or holds no valid key, start-up
/// stops. Replacing it would make every stored token unreadable without a word, and a file
/// that is there but unreadable usually means wrong permissions or a damaged volume, which a
/// person must look at.
fn generated_secret_key(database_url: &str) -> Result<SecretKey, String> {
    let file = key_file_path(database_url);
    if let Some(key) = read_key_file(&file)? {
        return Ok(key);
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let key = SecretKey::generate();
    match create_private(&file, key.expose_text()) {
        Ok(()) => {
            tracing::warn!(path = %file.display(), "APP_SECRET_KEY is not set: generated one into {} (keep it: stored tokens cannot be read without it)", file.display());
            Ok(key)
        }
        // Another process starting at the same moment wrote its key first: use that one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key_file(&file)?
            .ok_or_else(|| format!("{} vanished while starting", file.display())),
        Err(e) => Err(format!("cannot write {}: {e}", file.display())),
    }
}

/// `Ok(None)` only when the file does not exist.
fn read_key_file(file: &Path) -> Result<Option<SecretKey>, String> {
    match std::fs::read_to_string(file) {
        // Trimmed: the file ends with a newline, and the code before #8 read it trimmed too.
        Ok(text) => SecretKey::parse(text.trim()).map(Some).map_err(|e| {
            format!(
                "not set, and {} holds no valid key ({e}); restore the file from a backup (it is never replaced: stored tokens need it)",
                file.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "not set, and {} cannot be read ({e}); fix the file (it is never replaced: stored tokens need it)",
            file.display()
        )),
    }
}

/// Creates `path` with `content` only if it does not exist yet, as one atomic step.
///
/// The key is written to a private temporary file (`create_new`, 0600) and published with a
/// hard link, which fails if `path` exists. So a second process either sees no file or the
/// complete key, never a half-written one, and nobody overwrites anybody's key.
fn create_private(path: &Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("key.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = write_new_private(&tmp, content).and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match result {
        // No hard links on this filesystem: create the file itself, still never overwriting.
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => write_new_private(path, content),
        other => other,
    }
}

fn write_new_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args_with_key(key: &str) -> SettingsArgs {
        // `--secret-key=…` in one argument: a URL-safe base64 key begins with `-` one time in
        // 64, and as an argument of its own it would be read as a flag.
        Cli::try_parse_from([
            "mango-callback".to_owned(),
            "--database-url".to_owned(),
            "postgres://app@db.example/app".to_owned(),
            format!("--secret-key={key}"),
        ])
        .expect("parses")
        .settings
    }

    #[test]
    fn a_weak_or_malformed_app_secret_key_is_refused_in_one_line_naming_the_variable() {
        let weak = [
            "short".to_owned(),
            "correct horse battery staple, long enough to pass".to_owned(),
            "ab".repeat(31), // 31 bytes of hex
            "x".repeat(40),  // base64 for 30 bytes
            "0".repeat(64),  // 32 bytes, but all zero
            "local-test-secret-key-0123456789".to_owned(),
        ];
        for key in &weak {
            let err = Settings::from_args(args_with_key(key))
                .err()
                .unwrap_or_else(|| panic!("{key:?} was accepted"))
                .to_string();
            assert!(
                err.starts_with("APP_SECRET_KEY: expected at least 32 random bytes"),
                "{err}"
            );
            assert!(err.contains("openssl rand -hex 32"), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
            assert!(!err.contains(key.as_str()), "the key is not echoed: {err}");
        }
    }

    #[test]
    fn hex_and_base64_keys_of_32_random_bytes_are_accepted() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        use base64::Engine as _;
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
        for key in [
            hex::encode(bytes),
            hex::encode_upper(bytes),
            STANDARD.encode(bytes),
            URL_SAFE_NO_PAD.encode(bytes),
            format!("  {}\n", hex::encode([bytes, bytes].concat())),
            // URL-safe base64 whose first character is `-`.
            format!("-{}", &URL_SAFE_NO_PAD.encode(bytes)[1..]),
        ] {
            assert!(
                Settings::from_args(args_with_key(&key)).is_ok(),
                "{key:?} refused"
            );
        }
    }

    #[test]
    fn commit_lanes_outside_1_to_64_are_refused_naming_the_variable() {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
        let key = hex::encode(bytes);
        let with_lanes = |lanes: &str| {
            let args = Cli::try_parse_from([
                "mango-callback".to_owned(),
                "--database-url".to_owned(),
                "postgres://app@db.example/app".to_owned(),
                format!("--secret-key={key}"),
                format!("--db-commit-lanes={lanes}"),
            ])
            .expect("parses")
            .settings;
            Settings::from_args(args).map(|s| s.db_commit_lanes)
        };
        for lanes in ["0", "65", "1000"] {
            let err = with_lanes(lanes)
                .err()
                .unwrap_or_else(|| panic!("{lanes} lanes accepted"))
                .to_string();
            assert!(err.starts_with("APP_DB_COMMIT_LANES: "), "{err}");
        }
        assert_eq!(with_lanes("1").ok(), Some(1));
        assert_eq!(with_lanes("64").ok(), Some(64));
        assert_eq!(
            Settings::from_args(args_with_key(&key))
                .ok()
                .map(|s| s.db_commit_lanes),
            Some(crate::db::POSTGRES_COMMIT_LANES),
            "the default"
        );
    }

    fn sqlite_url(dir: &Path) -> String {
        format!("sqlite://{}", dir.join("app.db").display())
    }

    #[test]
    fn a_generated_key_file_is_private_and_kept_across_starts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = sqlite_url(dir.path());
        let first = generated_secret_key(&url).expect("generated");
        let file = dir.path().join("secret.key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).expect("file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = generated_secret_key(&url).expect("read back");
        assert_eq!(first.expose_text(), second.expose_text());
    }

    #[test]
    fn processes_starting_at_once_end_up_with_one_generated_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = sqlite_url(dir.path());
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(12));
        let keys: Vec<String> = (0..12)
            .map(|_| {
                let (url, barrier) = (url.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    generated_secret_key(&url)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| {
                h.join()
                    .expect("thread")
                    .expect("key")
                    .expose_text()
                    .to_owned()
            })
            .collect();
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        let on_disk = std::fs::read_to_string(dir.path().join("secret.key")).expect("file");
        assert_eq!(on_disk.trim(), keys[0]);
    }

    #[test]
    fn a_malformed_key_file_stops_the_app_and_is_left_as_it_is() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("secret.key");
        std::fs::write(&file, "too short\n").expect("written");
        let err = generated_secret_key(&sqlite_url(dir.path())).expect_err("refused");
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert_eq!(std::fs::read_to_string(&file).expect("file"), "too short\n");
    }

    #[test]
    fn an_unreadable_key_file_stops_the_app_and_is_left_as_it_is() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("secret.key");
        let garbage = [0xffu8, 0xfe, 0x00, 0x80, 0x81];
        std::fs::write(&file, garbage).expect("written");
        let err = generated_secret_key(&sqlite_url(dir.path())).expect_err("refused");
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert_eq!(std::fs::read(&file).expect("file"), garbage);
        // A folder where the file should be cannot be read either.
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("secret.key")).expect("folder");
        assert!(generated_secret_key(&sqlite_url(dir.path())).is_err());
    }
}

#[cfg(test)]
mod proxy_tests {
    use super::*;

    fn args(extra: &[&str]) -> SettingsArgs {
        let mut argv = vec![
            "mango-callback",
            "--database-url",
            "postgres://u@h/db",
            "--secret-key",
            LOCAL_SECRET_KEY,
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("arguments parse").settings
    }

    #[test]
    fn trusted_proxies_default_to_nobody_and_a_bad_entry_is_one_line_naming_the_variable() {
        let s = Settings::from_args(args(&[])).expect("defaults are valid");
        assert!(s.trusted_proxies.is_empty());
        let s = Settings::from_args(args(&["--trusted-proxies", "127.0.0.1, 10.0.0.0/8"]))
            .expect("valid list");
        assert!(s
            .trusted_proxies
            .contains("10.20.30.40".parse().expect("ip")));
        let e = Settings::from_args(args(&["--trusted-proxies", "127.0.0.1,10.0.0.0/33"]))
            .expect_err("a bad CIDR is refused")
            .to_string();
        assert!(e.starts_with("APP_TRUSTED_PROXIES: "), "{e}");
        assert!(e.contains("10.0.0.0/33") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn the_metrics_token_is_off_by_default_and_a_short_one_is_refused_without_being_echoed() {
        let s = Settings::from_args(args(&[])).expect("defaults are valid");
        assert!(
            s.metrics_token.is_none(),
            "/metrics is off until a token is set"
        );
        let s = Settings::from_args(args(&["--metrics-token", "0123456789abcdef0123"]))
            .expect("valid token");
        assert!(s.metrics_token.is_some());
        for bad_token in ["short-secret", "has spaces in the middle of it"] {
            let e = Settings::from_args(args(&["--metrics-token", bad_token]))
                .expect_err("refused")
                .to_string();
            assert!(e.starts_with("APP_METRICS_TOKEN: "), "{e}");
            assert!(!e.contains(bad_token), "the token is not echoed: {e}");
        }
    }

    #[test]
    fn the_oauth_timeout_defaults_to_a_generous_minute_and_zero_is_refused() {
        let s = Settings::from_args(args(&[])).expect("defaults are valid");
        assert_eq!(s.b24_oauth_timeout, std::time::Duration::from_secs(60));
        let s = Settings::from_args(args(&["--b24-oauth-timeout-seconds", "90"])).expect("valid");
        assert_eq!(s.b24_oauth_timeout, std::time::Duration::from_secs(90));
        let e = Settings::from_args(args(&["--b24-oauth-timeout-seconds", "0"]))
            .expect_err("zero would give up at once")
            .to_string();
        assert!(e.starts_with("B24_OAUTH_TIMEOUT_SECONDS: "), "{e}");
    }
}
