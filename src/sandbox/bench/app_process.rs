//! The measured app as a child process (`bench --app-process`): this binary's `serve`, pointed
//! at the simulators by its environment, so the peak RSS and CPU time the bench reports are
//! the app's alone, not the simulators' and the bench's own.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::figures::{proc_stats, ProcStats};

/// How long the child may take to answer `/health` (it runs the migrations first).
const START_WITHIN: Duration = Duration::from_secs(60);
/// How long a SIGTERM may take (the app's own shutdown grace is shorter) before a SIGKILL.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// A running child app; killed when dropped, so a failed run leaves no process behind.
pub(super) struct AppProcess {
    child: Option<Child>,
    port: u16,
}

impl AppProcess {
    /// Starts `exe serve` on a free port of 127.0.0.1 against `database_url`, the simulated
    /// Bitrix24's OAuth server and the simulated Mango, and waits until `/health` says ok. Its
    /// logs (warnings and worse, unless `RUST_LOG` says otherwise) go to this process's stderr.
    pub async fn start(
        exe: &Path,
        database_url: &str,
        oauth_url: &str,
        mango_url: &str,
        metrics_token: &str,
    ) -> anyhow::Result<AppProcess> {
        let port = crate::sandbox::free_port().context("no free port for the app")?;
        let base = format!("http://127.0.0.1:{port}");
        let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let child = Command::new(exe)
            .arg("serve")
            .envs(crate::sandbox::local_env(
                port,
                database_url,
                oauth_url,
                mango_url,
            ))
            .env("APP_TRUSTED_PROXIES", super::INSTALLS_VIA)
            .env("APP_METRICS_TOKEN", metrics_token)
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(std::io::stderr())
            .stderr(std::io::stderr())
            .spawn()
            .with_context(|| format!("cannot start the app: {}", exe.display()))?;
        let mut app = AppProcess {
            child: Some(child),
            port,
        };
        let http = awc::Client::default();
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Ok(r) = http.get(format!("{base}/health")).send().await {
                if r.status().is_success() {
                    return Ok(app);
                }
            }
            if let Some(Ok(Some(status))) = app.child.as_mut().map(Child::try_wait) {
                anyhow::bail!("the app exited before it answered /health: {status}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the app did not answer /health within {} s",
                START_WITHIN.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The child's memory and CPU time now (zeros once it has exited).
    pub fn stats(&self) -> ProcStats {
        match &self.child {
            Some(c) => proc_stats(&format!("/proc/{}", c.id())),
            None => ProcStats::default(),
        }
    }

    /// SIGTERM, as an operator's `systemctl stop` sends; SIGKILL if it has not exited in time.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // std sends only SIGKILL; `kill` is in every Linux base system (procps).
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(
            "the app did not stop within {} s of SIGTERM: killed",
            STOP_WITHIN.as_secs()
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
