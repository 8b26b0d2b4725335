//! Configuration: a typed value loaded once from environment variables (and `.env`), passed down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::http::client_addr::TrustedProxies;

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
    pub b24_client_secret: Option<String>,
    /// Bitrix24 OAuth server (token refresh and app.info verification).
    #[arg(
        long,
        env = "B24_OAUTH_URL",
        default_value = "https://oauth.bitrix.info"
    )]
    pub b24_oauth_url: String,
    /// Mango Office VPBX API base URL.
    #[arg(
        long,
        env = "MANGO_API_URL",
        default_value = "https://app.mango-office.ru/vpbx/"
    )]
    pub mango_api_url: String,
    /// Encrypts stored secrets and signs page tokens; generated into the data folder when unset on SQLite.
    #[arg(long, env = "APP_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// How many jobs one instance runs at once.
    #[arg(long, env = "APP_JOB_CONCURRENCY", default_value_t = 4)]
    pub job_concurrency: usize,
    /// The portal's REST limit: requests per second drained from its leaky bucket (2; Enterprise 5).
    #[arg(long, env = "B24_REQUESTS_PER_SECOND", default_value_t = 2.0)]
    pub b24_requests_per_second: f64,
    /// The portal's REST burst: bucket size (50; Enterprise 250).
    #[arg(long, env = "B24_BURST", default_value_t = 50)]
    pub b24_burst: u32,
    /// Database connections per instance.
    #[arg(long, env = "APP_DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: u32,
    /// Reverse proxies whose X-Forwarded-For / Forwarded headers name the client: comma-separated
    /// IPs and CIDRs (e.g. 127.0.0.1,10.0.0.0/8); empty trusts nobody.
    #[arg(long, env = "APP_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
}

/// Checked settings, the one configuration value of a running app.
#[derive(Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    /// Without a trailing slash.
    pub public_url: String,
    pub public_url_explicit: bool,
    pub database_url: String,
    pub b24_client_id: Option<String>,
    pub b24_client_secret: Option<String>,
    /// Without a trailing slash.
    pub b24_oauth_url: String,
    /// With a trailing slash, so that `{base}commands/callback_group` works.
    pub mango_api_url: String,
    pub secret_key: String,
    pub job_concurrency: usize,
    pub db_pool_size: u32,
    pub b24_requests_per_second: f64,
    pub b24_burst: u32,
    /// Peers whose forwarding headers are believed for the client address; empty = none.
    pub trusted_proxies: TrustedProxies,
    /// Per-address limit of unauthenticated browser POSTs: burst, and one more per interval.
    /// Not an environment variable; tests slow the refill to count a burst deterministically.
    pub address_burst: u32,
    pub address_refill_every: std::time::Duration,
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
        let secret_key = match a.secret_key.filter(|s| !s.is_empty()) {
            Some(k) if k.len() < 16 => return Err(bad("APP_SECRET_KEY", "must be at least 16 characters")),
            Some(k) => k,
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
        if a.b24_burst == 0 {
            return Err(bad("B24_BURST", "must be at least 1"));
        }
        if a.job_concurrency == 0 {
            return Err(bad("APP_JOB_CONCURRENCY", "must be at least 1"));
        }
        let trusted_proxies =
            TrustedProxies::parse(&a.trusted_proxies).map_err(|e| bad("APP_TRUSTED_PROXIES", e))?;
        Ok(Settings {
            bind,
            public_url,
            public_url_explicit,
            database_url: db,
            b24_client_id: a.b24_client_id.filter(|s| !s.is_empty()),
            b24_client_secret: a.b24_client_secret.filter(|s| !s.is_empty()),
            b24_oauth_url: oauth.as_str().trim_end_matches('/').to_owned(),
            mango_api_url,
            secret_key,
            job_concurrency: a.job_concurrency,
            db_pool_size: a.db_pool_size.max(2),
            b24_requests_per_second: a.b24_requests_per_second,
            b24_burst: a.b24_burst,
            trusted_proxies,
            address_burst: crate::http::throttle::BURST,
            address_refill_every: crate::http::throttle::REFILL_EVERY,
        })
    }

    /// Settings for tests and the sandbox: everything explicit, nothing read from the environment.
    pub fn for_local(database_url: &str, oauth_url: &str, mango_url: &str) -> Settings {
        Settings {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            // Filled in with the bound port by Application::build.
            public_url: "http://127.0.0.1:0".into(),
            public_url_explicit: false,
            database_url: database_url.into(),
            b24_client_id: Some(crate::sandbox::bitrix::SANDBOX_CLIENT_ID.into()),
            b24_client_secret: Some(crate::sandbox::bitrix::SANDBOX_CLIENT_SECRET.into()),
            b24_oauth_url: oauth_url.trim_end_matches('/').into(),
            mango_api_url: format!("{}/", mango_url.trim_end_matches('/')),
            secret_key: "local-test-secret-key-0123456789".into(),
            job_concurrency: 4,
            db_pool_size: 8,
            b24_requests_per_second: 2.0,
            b24_burst: 50,
            trusted_proxies: TrustedProxies::default(),
            address_burst: crate::http::throttle::BURST,
            address_refill_every: crate::http::throttle::REFILL_EVERY,
        }
    }
}

/// Reads, or creates with 0600 permissions, `secret.key` beside the SQLite database file.
fn generated_secret_key(database_url: &str) -> Result<String, String> {
    let path = database_url
        .strip_prefix("sqlite://")
        .unwrap_or(database_url);
    let dir = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file: PathBuf = dir.join("secret.key");
    if let Ok(k) = std::fs::read_to_string(&file) {
        let k = k.trim().to_owned();
        if k.len() >= 16 {
            return Ok(k);
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    let key = hex::encode(bytes);
    write_private(&file, &key).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    tracing::warn!(path = %file.display(), "APP_SECRET_KEY is not set: generated one into {} (keep it: stored tokens cannot be read without it)", file.display());
    Ok(key)
}

#[cfg(unix)]
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    std::fs::write(path, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> SettingsArgs {
        let mut argv = vec![
            "mango-callback",
            "--database-url",
            "postgres://u@h/db",
            "--secret-key",
            "0123456789abcdef0123456789abcdef",
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
}
