//! The processes and databases of a chaos run: a fresh database per run and the real app binary
//! as a child process, started, SIGKILLed, SIGTERMed and restarted on the same port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};
use mango_callback::db::Backend;
use mango_callback::sandbox::bitrix::BitrixSim;
use mango_callback::sandbox::mango::MangoSim;

/// A fresh database: a temp SQLite file or a throwaway PostgreSQL database, dropped at the end.
pub struct Database {
    pub url: String,
    _dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

impl Database {
    pub fn fresh(backend: Backend) -> Database {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => Database {
                url: format!("sqlite://{}", dir.path().join("chaos.db").display()),
                _dir: dir,
                pg: None,
            },
            Backend::Postgres => {
                let admin = std::env::var("TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
                let mut conn = PgConnection::establish(&admin)
                    .unwrap_or_else(|e| panic!("PostgreSQL is required ({admin}): {e}"));
                let name = format!("mango_chaos_{}", uuid::Uuid::new_v4().simple());
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .expect("create database");
                let base = admin
                    .rsplit_once('/')
                    .map_or(admin.clone(), |(b, _)| b.into());
                Database {
                    url: format!("{base}/{name}"),
                    _dir: dir,
                    pg: Some((admin, name)),
                }
            }
        }
    }

    /// Jobs some worker holds a lease on now (status `running`).
    pub fn running_jobs(&self) -> i64 {
        use diesel::sql_types::BigInt;
        let query =
            diesel::dsl::sql::<BigInt>("(SELECT count(*) FROM jobs WHERE status = 'running')");
        let count = match &self.pg {
            Some(_) => PgConnection::establish(&self.url)
                .ok()
                .and_then(|mut c| diesel::select(query).get_result(&mut c).ok()),
            None => diesel::SqliteConnection::establish(
                self.url.strip_prefix("sqlite://").unwrap_or(&self.url),
            )
            .ok()
            .and_then(|mut c| diesel::select(query).get_result(&mut c).ok()),
        };
        count.unwrap_or(0)
    }

    /// PostgreSQL only: takes the database away as a server restart does (every session ended,
    /// new ones refused), or gives it back.
    pub fn set_down(&self, down: bool) {
        let Some((admin, name)) = &self.pg else {
            panic!("only a PostgreSQL database can be taken down");
        };
        let mut conn = PgConnection::establish(admin).expect("PostgreSQL admin connection");
        diesel::sql_query(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {}", !down))
            .execute(&mut conn)
            .expect("alter database");
        if down {
            diesel::sql_query(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            ))
            .execute(&mut conn)
            .expect("end the app's sessions");
        }
    }

    pub fn log_path(&self, instance: usize) -> std::path::PathBuf {
        self._dir.path().join(format!("app-{instance}.log"))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.pg {
            if let Ok(mut conn) = PgConnection::establish(admin) {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn);
            }
        }
    }
}

/// One app instance: the real binary, restarted on the same port after a kill.
pub struct AppProcess {
    pub port: u16,
    env: Vec<(String, String)>,
    log: std::path::PathBuf,
    child: Option<Child>,
    pub starts: usize,
}

impl AppProcess {
    pub fn new(db: &Database, b24: &BitrixSim, mango: &MangoSim, instance: usize) -> AppProcess {
        let port = mango_callback::sandbox::free_port().expect("a free port");
        let mut env =
            mango_callback::sandbox::local_env(port, &db.url, &b24.url(), &mango.api_url());
        env.push(("RUST_LOG", "warn".into()));
        AppProcess {
            port,
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            log: db.log_path(instance),
            child: None,
            starts: 0,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the binary and waits until `/health` answers.
    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = log.try_clone().expect("log file");
        let dir = self.log.parent().expect("log dir").to_owned();
        let child = Command::new(env!("CARGO_BIN_EXE_mango-callback"))
            .current_dir(dir) // no stray .env
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("the app binary starts");
        self.child = Some(child);
        self.starts += 1;
        let http = awc::Client::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/health", self.base())).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the app did not come up: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the process to exit (at most `bound`); kills it after that.
    pub async fn terminate(&mut self, bound: Duration) -> Duration {
        let started = Instant::now();
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            while started.elapsed() < bound {
                if let Ok(Some(_)) = child.try_wait() {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        started.elapsed()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
