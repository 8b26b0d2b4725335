//! `spawn_app()` and friends: one app per test with its own database and simulators.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use diesel::{Connection, PgConnection, RunQueryDsl};
use mango_callback::clock::Clock;
use mango_callback::config::Settings;
use mango_callback::context::{Context, Shared};
use mango_callback::db::Backend;
use mango_callback::portal::store;
use mango_callback::sandbox::bitrix::{BitrixSim, BitrixSimOptions, RobotCallStyle, SimPortal};
use mango_callback::sandbox::mango::{MangoSim, MangoSimOptions};
use mango_callback::sandbox::seed::seed_mango;
pub use mango_callback::sandbox::seed::MangoAccount;
use mango_callback::sandbox::LocalSettings;
use mango_callback::startup::{Application, RunOptions};

/// Runs the async test body `fn $body(backend)` once per backend, as the tests
/// `$body::on_sqlite` and `$body::on_postgres` (the module shares the function's name: modules and
/// functions live in different namespaces). Without PostgreSQL the second one is skipped loudly, or
/// fails under `CI=true` (see [`can_run_on`]).
#[macro_export]
macro_rules! on_both_backends {
    ($body:ident) => {
        mod $body {
            #[actix_web::test]
            async fn on_sqlite() {
                super::$body(mango_callback::db::Backend::Sqlite).await
            }
            #[actix_web::test]
            async fn on_postgres() {
                let backend = mango_callback::db::Backend::Postgres;
                if $crate::helpers::can_run_on(backend, concat!(module_path!(), "::on_postgres")) {
                    super::$body(backend).await
                }
            }
        }
    };
}

pub const MANGO_KEY: &str = "test-vpbx-key-0001";
pub const MANGO_SALT: &str = "test-vpbx-salt-0001";
pub const LINE: &str = "74951234567";
pub const TRAINEES: &str = "002";
pub const EXPERIENCED: &str = "001";
/// The Mango account of the tests, set up as the sandbox demo sets up its own.
pub const MANGO_ACCOUNT: MangoAccount = MangoAccount {
    key: MANGO_KEY,
    salt: MANGO_SALT,
    line: LINE,
    trainees: TRAINEES,
    experienced: EXPERIENCED,
};

pub struct TestApp {
    pub base: String,
    pub shared: Shared,
    /// Services as an HTTP handler has them (a request waits for its portal's budget).
    pub ctx: Rc<Context>,
    /// Services as the job worker has them (a long wait for a budget snoozes the job).
    pub worker_ctx: Rc<Context>,
    pub b24: BitrixSim,
    pub mango: MangoSim,
    pub clock: Clock,
    pub db_url: String,
    pub http: awc::Client,
    /// Dead jobs the test buries on purpose, by kind (see [`TestApp::expect_dead_jobs`]).
    expected_dead: RefCell<BTreeMap<String, usize>>,
    _db: Option<DatabaseGuard>,
}

/// The reason an uninstall stores on the portal's queued jobs (`ONAPPUNINSTALL` in
/// `src/http/events.rs`): stopped on purpose, not died, so the end-of-test check leaves them out.
/// Were the text reworded there, tests that uninstall would fail loudly here, never pass silently.
const CANCELLED_AT_UNINSTALL: &str = "the app was uninstalled";

/// Every black-box test ends by checking that no job died unexpectedly: when its app goes out of
/// scope at the end of the test, the jobs the queue buried (status `dead`) must be exactly those
/// the test declared with [`TestApp::expect_dead_jobs`]. A `Drop` rather than a call each test
/// must remember: it also covers tests outside `on_both_backends!` and every app of a
/// two-instance test. Drop cannot be async, so it reads the queue over a blocking connection (the
/// test is over, nothing else runs on the reactor); when the test is already panicking it stays
/// silent, since that failure is the one to report.
impl Drop for TestApp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let jobs = self
            .shared
            .db
            .get_blocking()
            .map_err(|e| e.to_string())
            .and_then(|mut c| mango_callback::jobs::queue::all(&mut c).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("the end-of-test check cannot read the job queue: {e}"));
        let mut dead: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for j in jobs.into_iter().filter(|j| {
            j.status == mango_callback::jobs::queue::DEAD
                && j.last_error.as_deref() != Some(CANCELLED_AT_UNINSTALL)
        }) {
            dead.entry(j.kind.clone()).or_default().push(format!(
                "  {} {} after {}/{} attempts: {}",
                j.kind,
                j.id,
                j.attempts,
                j.max_attempts,
                j.last_error.as_deref().unwrap_or("-")
            ));
        }
        let expected = self.expected_dead.borrow();
        let kinds: std::collections::BTreeSet<&String> =
            dead.keys().chain(expected.keys()).collect();
        let wrong: Vec<String> = kinds
            .into_iter()
            .filter_map(|kind| {
                let found = dead.get(kind).map_or(&[][..], |v| v.as_slice());
                let want = expected.get(kind).copied().unwrap_or(0);
                (found.len() != want).then(|| {
                    format!(
                        "{kind}: {} dead, {want} expected\n{}",
                        found.len(),
                        found.join("\n")
                    )
                })
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "jobs died unexpectedly, or a declared death did not happen (declare deliberate \
             ones with app.expect_dead_jobs(kind, count)):\n{}",
            wrong.join("\n")
        );
    }
}

/// Removes a test's database when the test ends: the temp folder of its SQLite file, or its
/// throwaway PostgreSQL database (CI machines are reused, so nothing may pile up there).
pub enum DatabaseGuard {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin: String, name: String },
}

impl Drop for DatabaseGuard {
    fn drop(&mut self) {
        if let DatabaseGuard::Postgres { admin, name } = self {
            // FORCE closes the connections the test's app still holds.
            if let Ok(mut conn) = PgConnection::establish(admin) {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What this machine can run: a laptop without PostgreSQL or Chromium skips those tests loudly;
// CI (`CI=true`, set by `.ci/run`) fails them instead, so a broken CI machine never passes green.

/// Whether `CI` is set to anything but empty, `0` or `false` (CI services set `CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// The admin URL of the PostgreSQL server the tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Why PostgreSQL cannot be used, or `None` when it answers; asked once per test binary so that a
/// missing server costs one refused connection, not one per test.
/// The answer is what is missing and the driver's error, e.g. ("PostgreSQL not reachable at …",
/// "connection … refused").
fn postgres_unreachable() -> Option<&'static (String, String)> {
    static PROBE: OnceLock<Option<(String, String)>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let admin = postgres_admin_url();
            PgConnection::establish(&admin).err().map(|e| {
                let e = e.to_string();
                let first_line = e.lines().next().unwrap_or_default().trim().to_owned();
                (format!("PostgreSQL not reachable at {admin}"), first_line)
            })
        })
        .as_ref()
}

/// Whether the test named `test` can run on `backend` on this machine. SQLite always can. When
/// PostgreSQL is not reachable the test is skipped (it passes without running) with a line on
/// stderr saying so and how to enable it; under `CI=true` it fails instead.
pub fn can_run_on(backend: Backend, test: &str) -> bool {
    match (backend, postgres_unreachable()) {
        (Backend::Sqlite, _) | (Backend::Postgres, None) => true,
        (Backend::Postgres, Some((what, error))) => skip_or_fail(
            test,
            what,
            error,
            "start PostgreSQL (trust auth for user postgres) or set TEST_POSTGRES_URL",
        ),
    }
}

/// Whether the browser test named `test` can run: it needs `chromedriver` (Debian's
/// `chromium-driver`, which brings `chromium`) on PATH or named by `CHROMEDRIVER`. Skipped loudly
/// without it, failed under `CI=true`, like [`can_run_on`].
pub fn can_run_browser(test: &str) -> bool {
    let what = match std::env::var_os("CHROMEDRIVER") {
        Some(path) if Path::new(&path).is_file() => return true,
        Some(path) => format!("CHROMEDRIVER={} is not a file", Path::new(&path).display()),
        None => {
            let on_path = std::env::var_os("PATH").is_some_and(|paths| {
                std::env::split_paths(&paths).any(|d| d.join("chromedriver").is_file())
            });
            if on_path {
                return true;
            }
            "chromedriver not found on PATH".to_owned()
        }
    };
    skip_or_fail(
        test,
        &what,
        "the browser test drives Chromium through chromedriver, its WebDriver server",
        "apt-get install -y chromium chromium-driver, or set CHROMEDRIVER to the driver's path",
    )
}

/// Under `CI=true` fails the test; elsewhere says loudly that it is skipped and returns `false`.
/// `what` is the missing piece, `detail` why (printed once), `enable` how to get it.
fn skip_or_fail(test: &str, what: &str, detail: &str, enable: &str) -> bool {
    // Test names as the harness prints them, without the binary's crate name.
    let test = test.split_once("::").map_or(test, |(_, rest)| rest);
    if in_ci() {
        panic!("{what} ({detail}); CI=true forbids skipping {test}: {enable}");
    }
    // Straight to the process's stderr: the harness captures `eprintln!` of passing tests, and a
    // skip must be seen. The banner comes once per binary and missing piece.
    static BANNERS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let first = {
        let mut shown = BANNERS.lock().unwrap_or_else(PoisonError::into_inner);
        let first = !shown.iter().any(|s| s == what);
        if first {
            shown.push(what.to_owned());
        }
        first
    };
    let mut err = std::io::stderr().lock();
    if first {
        let rule = "=".repeat(100);
        let _ = writeln!(
            err,
            "\n{rule}\nSKIPPING TESTS: {what}\n  ({detail})\n  The tests that need it pass \
             WITHOUT RUNNING; each is listed as SKIPPED below.\n  To run them: {enable}.\n  \
             With CI=true they fail instead.\n{rule}"
        );
    }
    let _ = writeln!(err, "SKIPPED {test}: {what} — {enable}");
    false
}

/// A fresh database URL: a temp SQLite file, or a throwaway PostgreSQL database (tests reach this
/// through [`can_run_on`], so here a missing server is a plain failure).
pub fn fresh_database(backend: Backend) -> (String, Option<DatabaseGuard>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("test.db").display());
            (url, Some(DatabaseGuard::Sqlite(dir)))
        }
        Backend::Postgres => {
            let admin = postgres_admin_url();
            let mut conn = PgConnection::establish(&admin).unwrap_or_else(|e| {
                panic!("PostgreSQL is required for these tests ({admin}): {e}")
            });
            let name = format!("mango_test_{}", uuid::Uuid::new_v4().simple());
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .expect("create test database");
            let base = admin
                .rsplit_once('/')
                .map(|(b, _)| b.to_owned())
                .unwrap_or(admin.clone());
            (
                format!("{base}/{name}"),
                Some(DatabaseGuard::Postgres { admin, name }),
            )
        }
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(
        backend,
        BitrixSimOptions {
            drain_per_sec: 20.0,
            ..Default::default()
        },
    )
    .await
}

/// An app whose settings the test adjusts (e.g. trusted proxies, the per-address limit).
pub async fn spawn_app_tweaked(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_configured(
        backend,
        BitrixSimOptions {
            drain_per_sec: 20.0,
            ..Default::default()
        },
        tweak,
    )
    .await
}

pub async fn spawn_app_with(backend: Backend, b24_opts: BitrixSimOptions) -> TestApp {
    spawn_app_configured(backend, b24_opts, |_| {}).await
}

/// [`spawn_app_with`] whose settings are adjusted first, e.g. production's
/// `allow_private_peers = false`.
pub async fn spawn_app_configured(
    backend: Backend,
    b24_opts: BitrixSimOptions,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    mango_callback::telemetry::init("warn");
    let (db_url, dir) = fresh_database(backend);
    let b24 = BitrixSim::start(b24_opts.clone())
        .await
        .expect("bitrix sim");
    let mango = MangoSim::start(MangoSimOptions::default())
        .await
        .expect("mango sim");
    spawn_instance_configured(&db_url, &b24, &mango, b24_opts.drain_per_sec, dir, adjust).await
}

/// Another app instance, e.g. a second one sharing the same PostgreSQL database.
pub async fn spawn_instance(
    db_url: &str,
    b24: &BitrixSim,
    mango: &MangoSim,
    rate: f64,
    db_guard: Option<DatabaseGuard>,
) -> TestApp {
    spawn_instance_configured(db_url, b24, mango, rate, db_guard, |_| {}).await
}

async fn spawn_instance_configured(
    db_url: &str,
    b24: &BitrixSim,
    mango: &MangoSim,
    rate: f64,
    db_guard: Option<DatabaseGuard>,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = Settings::for_local(db_url, &b24.url(), &mango.api_url());
    settings.b24_requests_per_second = rate;
    adjust(&mut settings);
    start_instance(settings, b24, mango, db_guard).await
}

/// Starts an instance with these settings against the simulators.
pub async fn start_instance(
    settings: Settings,
    b24: &BitrixSim,
    mango: &MangoSim,
    db_guard: Option<DatabaseGuard>,
) -> TestApp {
    let db_url = settings.database_url.clone();
    let clock = Clock::system();
    // Mango's rate limits count the test's clock advances as time passed, as the app does.
    mango.follow_clock(clock.clone());
    let app = Application::build(
        settings,
        RunOptions {
            background_worker: false,
            clock: clock.clone(),
            http_workers: 1,
            ..RunOptions::default()
        },
    )
    .await
    .expect("app builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let shared = app.shared().clone();
    actix_web::rt::spawn(app.run_until_stopped());
    let ctx = Rc::new(Context::new(shared.clone()));
    let worker_ctx = Rc::new(Context::for_jobs(shared.clone()));
    TestApp {
        base,
        shared,
        ctx,
        worker_ctx,
        b24: b24.clone(),
        mango: mango.clone(),
        clock,
        db_url,
        http: awc::Client::default(),
        expected_dead: RefCell::default(),
        _db: db_guard,
    }
}

impl TestApp {
    /// Declares that this test buries `count` jobs of `kind` on purpose: the end-of-test check
    /// (the `Drop` of [`TestApp`]) then requires exactly that many dead ones of that kind. Apps
    /// sharing one database each check it, so each needs the declaration.
    pub fn expect_dead_jobs(&self, kind: &str, count: usize) {
        self.expected_dead
            .borrow_mut()
            .insert(kind.to_owned(), count);
    }

    /// Runs every due job until none is left.
    pub async fn drain(&self) -> usize {
        mango_callback::startup::drain(&self.worker_ctx, "test-worker").await
    }

    pub async fn post_form(&self, path_and_query: &str, body: String) -> (u16, String) {
        let mut resp = self
            .http
            .post(format!("{}{}", self.base, path_and_query))
            .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
            .send_body(body)
            .await
            .expect("request reaches the app");
        let status = resp.status().as_u16();
        let body = resp.body().limit(1 << 20).await.expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Opens the installer as the portal's admin would; returns status and page.
    pub async fn open_installer(&self, portal: &SimPortal, user_id: u64) -> (u16, String) {
        let req = self
            .b24
            .iframe_request(&portal.member_id, user_id, "DEFAULT", "ru");
        self.post_form(
            &format!("/b24/install?{}", req.query_string()),
            req.to_form_body(),
        )
        .await
    }

    /// A portal with the app installed and Mango configured (trainees "002", experienced "001").
    pub async fn installed_portal(&self, name: &str) -> SimPortal {
        let portal = self.b24.create_portal(name);
        let (status, page) = self.open_installer(&portal, portal.admin_user_id).await;
        assert_eq!(status, 200, "installer failed: {page}");
        self.configure_mango(&portal.member_id).await;
        portal
    }

    pub async fn configure_mango(&self, member_id: &str) {
        seed_mango(&self.shared, &self.mango, MANGO_ACCOUNT, member_id, |_| {})
            .await
            .expect("settings saved");
    }

    /// The form body Bitrix24 would POST to our robot handler for this deal.
    pub fn robot_body(
        &self,
        portal: &SimPortal,
        deal: u64,
        properties: &[(&str, &str)],
        style: RobotCallStyle,
    ) -> String {
        let (_, body, _) = self
            .b24
            .robot_call_body(&portal.member_id, "mango_callback", deal, properties, style)
            .expect("the robot is registered");
        body
    }

    pub async fn portal_row(&self, member_id: &str) -> Option<mango_callback::portal::Portal> {
        let mid = member_id.to_owned();
        self.shared
            .db
            .run(move |c| store::find(c, &mid))
            .await
            .expect("db")
    }

    /// The text columns of the tables that hold secrets, as stored: what an attacker with the
    /// database would see. Raw columns, not `Portal`'s `Debug`, which hides them anyway.
    pub async fn dump_text(&self) -> String {
        self.shared
            .db
            .run(move |c| -> diesel::QueryResult<_> {
                let jobs = mango_callback::jobs::queue::all(c)?;
                let mut out = format!("{jobs:?}");
                use diesel::prelude::*;
                use mango_callback::db::schema::{portal_settings, portals};
                type Text = Option<String>;
                let p: Vec<(String, String, String, String, Text, Text, Text)> = portals::table
                    .select((
                        portals::member_id,
                        portals::domain,
                        portals::client_endpoint,
                        portals::server_endpoint,
                        portals::access_token,
                        portals::refresh_token,
                        portals::application_token,
                    ))
                    .load(c)?;
                let s: Vec<(String, Text, Text, String, Text)> = portal_settings::table
                    .select((
                        portal_settings::member_id,
                        portal_settings::mango_api_key,
                        portal_settings::mango_api_salt,
                        portal_settings::line_number,
                        portal_settings::mango_last_error,
                    ))
                    .load(c)?;
                out.push_str(&format!("{p:?}{s:?}"));
                Ok(out)
            })
            .await
            .expect("db")
    }

    /// A new deal without a contact, a robot call for it with the `phone` property, accepted
    /// (200) and its jobs run; returns the deal.
    pub async fn robot_call_with_phone(&self, member_id: &str, phone: &str) -> u64 {
        let deal = self.robot_call_accepted(member_id, phone).await;
        self.drain().await;
        deal
    }

    /// [`TestApp::robot_call_with_phone`] without running its jobs: the robot call accepted
    /// (200) and queued; returns the deal.
    pub async fn robot_call_accepted(&self, member_id: &str, phone: &str) -> u64 {
        let deal = self.b24.add_deal(member_id, None);
        let fired = self
            .b24
            .fire_robot(member_id, "mango_callback", deal, &[("phone", phone)])
            .await
            .expect("robot");
        assert_eq!(fired.status, 200, "{}", fired.body);
        deal
    }

    /// The `command_id` of the `i`-th callback Mango received.
    pub fn command_id(&self, i: usize) -> String {
        self.mango.callbacks()[i]["command_id"]
            .as_str()
            .expect("command id")
            .to_owned()
    }

    /// The URL Mango posts its notifications to (the settings page shows it).
    pub fn mango_url(&self) -> String {
        format!("{}/mango", self.base)
    }

    /// Runs the due jobs, then moves the clock on by `step` and runs them again, until nothing
    /// is left queued or `steps` steps went by: time passing for jobs that snooze for a budget.
    pub async fn drain_over_time(&self, step: Duration, steps: usize) {
        self.drain().await;
        for _ in 0..steps {
            let jobs = self
                .shared
                .db
                .run(mango_callback::jobs::queue::all)
                .await
                .expect("jobs");
            if jobs
                .iter()
                .all(|j| j.status != mango_callback::jobs::queue::QUEUED)
            {
                return;
            }
            self.advance(step);
            self.drain().await;
        }
    }

    /// The methods of each `batch` request's commands, in the order sent.
    pub fn batch_methods(&self) -> Vec<Vec<String>> {
        self.b24
            .calls_to("batch")
            .iter()
            .map(batch_methods_of)
            .collect()
    }

    /// How many `batch` requests carried a command of `method`.
    pub fn batches_with(&self, method: &str) -> usize {
        self.batch_methods()
            .iter()
            .filter(|b| b.iter().any(|m| m == method))
            .count()
    }

    /// How many times `method` was asked for: on its own or as a `batch` command.
    pub fn commands_to(&self, method: &str) -> usize {
        let inside: usize = self
            .batch_methods()
            .iter()
            .map(|b| b.iter().filter(|m| *m == method).count())
            .sum();
        self.b24.calls_to(method).len() + inside
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// A genuine robot call on a new deal: answered 200, and after the jobs ran Mango got the
    /// call and the business process got `bizproc.event.send` with `result=started`.
    pub async fn robot_call_completes(&self, portal: &SimPortal, phone: &str) {
        let calls_before = self.mango.callbacks().len();
        let sends_before = self.b24.event_sends(&portal.member_id).len();
        let deal = self.b24.add_deal(&portal.member_id, None);
        let fired = self
            .b24
            .fire_robot(
                &portal.member_id,
                "mango_callback",
                deal,
                &[("phone", phone)],
            )
            .await
            .expect("the robot is registered");
        assert_eq!(
            fired.status, 200,
            "genuine robot call refused: {}",
            fired.body
        );
        self.drain().await;
        assert_eq!(
            self.mango.callbacks().len(),
            calls_before + 1,
            "Mango got the call"
        );
        let sends = self.b24.event_sends(&portal.member_id);
        assert_eq!(sends.len(), sends_before + 1, "bizproc.event.send sent");
        assert_eq!(sends[sends.len() - 1]["RETURN_VALUES"]["result"], "started");
    }

    /// The application token the app has stored for the portal, opened.
    pub async fn stored_application_token(&self, member_id: &str) -> Option<String> {
        let row = self.portal_row(member_id).await?;
        row.application_token.map(|t| {
            self.shared
                .cipher
                .open(
                    mango_callback::crypto::Slot::application_token(member_id),
                    &t,
                )
                .expect("stored token opens")
        })
    }

    /// The app page as user `user_id` sees it when opening the app (status, HTML).
    pub async fn open_app_page(
        &self,
        portal: &SimPortal,
        user_id: u64,
        lang: &str,
    ) -> (u16, String) {
        let req = self
            .b24
            .iframe_request(&portal.member_id, user_id, "DEFAULT", lang);
        self.post_form(
            &format!("/b24/app?{}", req.query_string()),
            req.to_form_body(),
        )
        .await
    }
}

/// An event body as a portal user could build it by hand from their own real token: PHP bracket
/// keys, the user's access and refresh token, and an `application_token` of their choosing.
pub fn event_body_as_user(
    b24: &BitrixSim,
    portal: &SimPortal,
    event: &str,
    user_id: u64,
    application_token: &str,
) -> String {
    let auth = b24.login(&portal.member_id, user_id);
    let pairs = [
        ("event", event.to_owned()),
        ("data[VERSION]", "2".to_owned()),
        ("data[LANGUAGE_ID]", "ru".to_owned()),
        ("ts", chrono::Utc::now().timestamp().to_string()),
        ("auth[access_token]", auth.access_token),
        ("auth[expires_in]", auth.expires_in.to_string()),
        ("auth[scope]", "crm,bizproc,placement,user_brief".to_owned()),
        ("auth[domain]", portal.domain.clone()),
        ("auth[server_endpoint]", b24.server_endpoint()),
        ("auth[status]", "F".to_owned()),
        ("auth[client_endpoint]", portal.client_endpoint.clone()),
        ("auth[member_id]", portal.member_id.clone()),
        ("auth[user_id]", user_id.to_string()),
        ("auth[refresh_token]", auth.refresh_token),
        ("auth[application_token]", application_token.to_owned()),
    ];
    pairs
        .iter()
        .map(|(k, v)| {
            let v: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl TestApp {
    /// Every row of every table (column names read from the catalog, values cast to text),
    /// sorted: two snapshots are equal exactly when nothing stored changed.
    pub async fn snapshot(&self) -> String {
        use diesel::sql_types::Text;
        use mango_callback::db::DbConnection;
        #[derive(diesel::QueryableByName)]
        struct Line {
            #[diesel(sql_type = Text)]
            v: String,
        }
        self.shared
            .db
            .run(|c| -> diesel::QueryResult<_> {
                let sqlite = matches!(c, DbConnection::Sqlite(_));
                let tables: Vec<Line> = diesel::sql_query(if sqlite {
                    "SELECT name AS v FROM sqlite_master WHERE type = 'table' \
                     AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '__diesel%' ORDER BY name"
                } else {
                    "SELECT table_name AS v FROM information_schema.tables \
                     WHERE table_schema = 'public' AND table_name NOT LIKE '__diesel%' ORDER BY table_name"
                })
                .load(c)?;
                let mut out = String::new();
                // The portals' request budgets count what a request cost at the portal (a refused
                // installer still asked it who the user is), not what it stored.
                for t in tables.into_iter().map(|l| l.v).filter(|t| t != "rest_budgets") {
                    let columns: Vec<Line> = diesel::sql_query(if sqlite {
                        format!("SELECT name AS v FROM pragma_table_info('{t}') ORDER BY cid")
                    } else {
                        format!(
                            "SELECT column_name AS v FROM information_schema.columns \
                             WHERE table_schema = 'public' AND table_name = '{t}' ORDER BY ordinal_position"
                        )
                    })
                    .load(c)?;
                    let row = columns
                        .iter()
                        .map(|l| format!("COALESCE(CAST({} AS TEXT), '-')", l.v))
                        .collect::<Vec<_>>()
                        .join(" || '|' || ");
                    let rows: Vec<Line> =
                        diesel::sql_query(format!("SELECT {row} AS v FROM {t} ORDER BY 1"))
                            .load(c)?;
                    out.push_str(&format!("== {t}\n"));
                    for r in rows {
                        out.push_str(&r.v);
                        out.push('\n');
                    }
                }
                Ok(out)
            })
            .await
            .expect("snapshot")
    }
}

/// The methods of a `batch` request's commands, in the order sent.
pub fn batch_methods_of(call: &mango_callback::sandbox::bitrix::RecordedCall) -> Vec<String> {
    call.params["cmd"]
        .as_object()
        .map(|cmds| {
            cmds.values()
                .filter_map(serde_json::Value::as_str)
                .map(|c| c.split('?').next().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}
