//! Storage infrastructure: one diesel connection type over SQLite and PostgreSQL, the pool, migrations.
//!
//! The backend is chosen at run time from the `DATABASE_URL` scheme (vaultwarden's approach), so one
//! binary serves the embedded SQLite default and several instances sharing PostgreSQL. Queries are
//! written once against [`DbConnection`]; the few backend-specific statements live in this module.

pub mod gate;
pub mod group;
pub mod schema;
pub mod threads;

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{self, ManageConnection, R2D2Connection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::{Connection, PgConnection, QueryResult, RunQueryDsl, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

// Both folders hold the same migration names (latest: 2026-12-07-000100_callbacks_lookup_holder).
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Per-session limits on PostgreSQL (see [`Manager::connect`]). SQLite has its busy timeout.
pub const POSTGRES_SESSION_LIMITS: &str = "SET idle_in_transaction_session_timeout = '60s'; \
     SET lock_timeout = '15s'; SET statement_timeout = '30s';";

/// A connection to either backend; every query in the crate goes through it.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

/// PostgreSQL's group committers ([`group`]) by default (`APP_DB_COMMIT_LANES`), each with its
/// own connection besides the pool. A lane commits its batches one after another, and each
/// acknowledgement is a round trip per statement, each waiting for a core that the server's
/// other sessions and the job worker share: at 500 robot calls/s with the worker draining,
/// acknowledgements took p99 68–106 ms with 4 lanes, 29–58 ms with 8 and 21–35 ms with 16. The
/// 10,000-call burst drained as fast (39.8 s with 4, 41.6 s with 16: within the bench's noise).
pub const POSTGRES_COMMIT_LANES: usize = 16;

/// A query that PostgreSQL plans for its own parameters and the tables' present size each time it
/// runs (sent as an unnamed statement), where others are prepared once per connection and, from
/// their sixth run on, may run on a generic plan PostgreSQL keeps. The job queue is near-empty
/// between bursts and holds thousands of rows during one: a claim's read of a portal's due jobs
/// planned on the near-empty table walked every due job of every portal for the rest of the
/// connection's life (33 of the server's 53 s in a 10,000-call burst, `auto_explain`). Planning
/// every statement each time instead cost the server ~10 s of planning in the same burst. On
/// SQLite it changes nothing: its statements stay cached and are planned on the data as it is.
#[derive(Debug, Clone, Copy)]
pub struct PlannedEachTime<Q>(pub Q);

impl<Q> diesel::query_builder::QueryId for PlannedEachTime<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: diesel::query_builder::Query> diesel::query_builder::Query for PlannedEachTime<Q> {
    type SqlType = Q::SqlType;
}

impl<Q> diesel::query_builder::QueryFragment<MultiBackend> for PlannedEachTime<Q>
where
    Q: diesel::query_builder::QueryFragment<MultiBackend>,
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, MultiBackend>,
    ) -> QueryResult<()> {
        if matches!(out.backend(), MultiBackend::Postgres(_)) {
            out.unsafe_to_cache_prepared();
        }
        self.0.walk_ast(out.reborrow())
    }
}

impl<Q, Conn> RunQueryDsl<Conn> for PlannedEachTime<Q> {}

/// Which backend a `DATABASE_URL` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// `postgres://` and `postgresql://` are PostgreSQL; `sqlite://`, `file:` or a bare path is SQLite.
    pub fn of_url(url: &str) -> Backend {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// Strips the `sqlite://` prefix that diesel's SQLite driver does not understand.
fn sqlite_path(url: &str) -> &str {
    url.strip_prefix("sqlite://").unwrap_or(url)
}

/// r2d2 manager that picks the variant explicitly (the derived `establish` tries each backend in
/// turn and hides the real PostgreSQL error) and applies SQLite's per-connection pragmas.
#[derive(Debug, Clone)]
pub struct Manager {
    url: String,
    backend: Backend,
}

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConnection, r2d2::Error> {
        match self.backend {
            Backend::Postgres => {
                let mut conn =
                    PgConnection::establish(&self.url).map_err(r2d2::Error::ConnectionError)?;
                // Bounds on what one session can hold: a transaction left open by a bug is ended
                // by the server instead of blocking every writer behind its locks, a lock wait
                // gives up instead of queueing for ever, and no statement runs unbounded.
                conn.batch_execute(POSTGRES_SESSION_LIMITS)
                    .map_err(r2d2::Error::QueryError)?;
                Ok(DbConnection::Postgres(conn))
            }
            Backend::Sqlite => {
                let mut conn = SqliteConnection::establish(sqlite_path(&self.url))
                    .map_err(r2d2::Error::ConnectionError)?;
                // busy_timeout lets concurrent writers queue instead of failing at once.
                // synchronous=FULL: a commit (an acknowledged robot call, a callback marked
                // `calling` before Mango is asked) is on disk before we answer; WAL with NORMAL
                // may lose the last commits on power loss. It costs an fsync per commit (~0.4 ms
                // here; the group commit shares it among the robot calls arriving meanwhile).
                // (mmap_size was tried for the reads after other connections' commits: no
                // difference beyond the bench's noise, so none of its risks is taken.)
                conn.batch_execute(
                    "PRAGMA busy_timeout = 10000; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
                )
                .map_err(r2d2::Error::QueryError)?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), r2d2::Error> {
        conn.batch_execute("SELECT 1")
            .map_err(r2d2::Error::QueryError)
    }

    /// A connection given back while its thread unwinds from a panic, or whose transaction
    /// manager still has a transaction open or in error, is discarded rather than reused:
    /// otherwise the next borrower would run inside a transaction nobody commits (on SQLite
    /// holding the write lock for ever). Dropping it closes it, and the server rolls back.
    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        std::thread::panicking() || conn.is_broken()
    }
}

pub type DbPool = r2d2::Pool<Manager>;
pub type PooledConn = r2d2::PooledConnection<Manager>;

/// The group committer's SQLite connection never copies the log back into the database file.
///
/// SQLite's commit that takes the log past 1,000 pages runs the checkpoint itself, inside its
/// writer's turn: a few milliseconds, uniform across every kind of write (p99 ~5 ms against a
/// p50 of 0.5–0.7 ms, probed at 500 robot calls/s). The acknowledgements leave it to the job
/// worker's writes, which go on checkpointing as before, so the log still starts over (a
/// checkpoint thread of its own was tried: beside the pool's constant readers the log never
/// started over, and grew to 1.3 GB in 20 s).
#[derive(Debug)]
struct NoCheckpointInCommit;

impl r2d2::CustomizeConnection<DbConnection, r2d2::Error> for NoCheckpointInCommit {
    fn on_acquire(&self, conn: &mut DbConnection) -> Result<(), r2d2::Error> {
        if let DbConnection::Sqlite(c) = conn {
            c.batch_execute("PRAGMA wal_autocheckpoint = 0")
                .map_err(r2d2::Error::QueryError)?;
        }
        Ok(())
    }
}

/// Errors of the storage layer as seen by callers.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database connection unavailable: {0}")]
    Pool(#[from] r2d2::PoolError),
    #[error("database query failed: {0}")]
    Query(#[from] DieselError),
    #[error("database task was cancelled")]
    Cancelled,
    /// Code running with a connection panicked; the connection was discarded, its transaction
    /// rolled back, and the panic logged by the panic hook.
    #[error("database task panicked: {0}")]
    Panicked(String),
}

impl DbError {
    /// The database cannot be reached (down, restarting, refusing connections), as opposed to a
    /// query that failed: the request may be repeated once it is back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Pool(_) => true,
            DbError::Query(DieselError::DatabaseError(kind, _)) => matches!(
                kind,
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand
            ),
            _ => false,
        }
    }
}

/// The pool plus the rule that blocking diesel never runs on the async reactor.
#[derive(Clone)]
pub struct Db {
    pool: DbPool,
    backend: Backend,
    /// The committer of [`Db::run_grouped`], shared by every clone.
    group: std::sync::Arc<group::GroupCommit>,
    /// SQLite only: the turn of this process's writers ([`gate`]).
    gate: Option<std::sync::Arc<gate::WriteGate>>,
    /// SQLite only: the committer of every [`Db::run`] ([`group::Policy::IN_LINE`]).
    writes: Option<std::sync::Arc<group::GroupCommit>>,
    /// A run's claim on one of the pool's connections, taken before it goes to a thread.
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// As many threads as connections: a run that holds a slot finds one free.
    threads: threads::DbThreads,
}

impl Db {
    /// Connects, creates the SQLite file's folder if needed, sets WAL mode and runs migrations.
    pub fn connect(url: &str, max_size: u32) -> anyhow::Result<Db> {
        Db::connect_with(url, max_size, POSTGRES_COMMIT_LANES)
    }

    /// [`Db::connect`] with `lanes` group committers on PostgreSQL (`APP_DB_COMMIT_LANES`);
    /// SQLite always has one.
    pub fn connect_with(url: &str, max_size: u32, lanes: usize) -> anyhow::Result<Db> {
        use anyhow::Context as _;
        let backend = Backend::of_url(url);
        if backend == Backend::Sqlite {
            let path = std::path::Path::new(sqlite_path(url));
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("cannot create the database folder {}", dir.display())
                })?;
            }
        }
        // Every pool of this database: the shared one, and the committers' own connections,
        // opened now (the first robot call does not wait ~6 ms for a PostgreSQL connection).
        let pool_of = |size: u32, customizer: Option<Box<NoCheckpointInCommit>>| {
            let builder = r2d2::Pool::builder()
                .max_size(size)
                .connection_timeout(Duration::from_secs(10));
            let builder = match customizer {
                Some(c) => builder.connection_customizer(c),
                None => builder,
            };
            builder.build(Manager {
                url: url.to_owned(),
                backend,
            })
        };
        let pool = pool_of(max_size, None).with_context(|| match backend {
            Backend::Postgres => "cannot connect to PostgreSQL (check DATABASE_URL)".to_owned(),
            Backend::Sqlite => format!("cannot open the SQLite database {}", sqlite_path(url)),
        })?;
        let mut conn = pool.get().context("cannot get a database connection")?;
        if backend == Backend::Sqlite {
            // WAL is a property of the file, so once is enough; readers then never block the writer.
            conn.batch_execute("PRAGMA journal_mode = WAL;")
                .context("cannot switch SQLite to WAL mode")?;
        }
        run_migrations(&mut conn).context("database migrations failed")?;
        let gate =
            (backend == Backend::Sqlite).then(|| std::sync::Arc::new(gate::WriteGate::default()));
        let lanes = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => lanes.max(1),
        };
        let commit_pool = pool_of(
            u32::try_from(lanes).unwrap_or(1),
            Some(Box::new(NoCheckpointInCommit)),
        )
        .context("cannot open the database for the group committer")?;
        let group = group::GroupCommit::start(
            "group-commit",
            commit_pool,
            gate.clone(),
            lanes,
            group::Policy::ACKNOWLEDGEMENTS,
        )
        .context("cannot start the group-commit threads")?;
        // SQLite's other writes share commits too, on a connection of their own that keeps
        // SQLite's checkpoints (the log is copied back in their turns, not the acknowledgements').
        let writes = match backend {
            Backend::Postgres => None,
            Backend::Sqlite => {
                let pool = pool_of(1, None)
                    .context("cannot open the database for the writers' committer")?;
                let committer = group::GroupCommit::start(
                    "sqlite-writes",
                    pool,
                    gate.clone(),
                    1,
                    group::Policy::IN_LINE,
                )
                .context("cannot start the writers' commit thread")?;
                Some(std::sync::Arc::new(committer))
            }
        };
        let slots = usize::try_from(max_size).unwrap_or(1).max(1);
        let threads =
            threads::DbThreads::start(slots).context("cannot start the database threads")?;
        Ok(Db {
            pool,
            backend,
            group: std::sync::Arc::new(group),
            gate,
            writes,
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(slots)),
            threads,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs `f` with a connection on one of the database threads.
    ///
    /// `f` may fail with any error that converts into [`DbError`], so a store function's
    /// `QueryResult` is passed through as is (`db.run(move |c| store::find(c, &id))`).
    ///
    /// On SQLite, `f` may write: it runs in a savepoint of a transaction shared with the other
    /// writes queued with it ([`group::Policy::IN_LINE`]), one sync for all of them, and its
    /// result comes back once that transaction committed. An error of `f` rolls back `f`'s
    /// writes only. Code that only reads says so with [`Db::read`].
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        DbError: From<E>,
        T: Send + 'static,
    {
        match &self.writes {
            // One sync for the writes queued together, where each waited for its own turn of the
            // one writer and paid its own (measured at [`group::Policy::IN_LINE`]).
            Some(writes) => writes.run("", move |c| Ok(f(c)?)).await,
            None => self.spawn(f).await,
        }
    }

    /// [`Db::run`] for `f` that only reads: on SQLite it runs beside the writers (WAL readers
    /// never wait for the writer), not in their line. A write in `f` would still be correct,
    /// only slower (SQLite's busy timeout instead of the line).
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        DbError: From<E>,
        T: Send + 'static,
    {
        self.spawn(f).await
    }

    async fn spawn<T, E, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        DbError: From<E>,
        T: Send + 'static,
    {
        // Runs wait for a connection here, as futures, and go to a thread only when they can
        // run ([`threads`]): when they waited on threads, a burst's hundred jobs held a hundred
        // threads (the app's peak RSS was 80 MB in a 10,000-call burst; 66 MB with this wait,
        // 55 MB with the fixed threads).
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DbError::Cancelled)?;
        let pool = self.pool.clone();
        let ran = self
            .threads
            .run(move || -> Result<T, DbError> {
                let _slot = slot;
                let mut conn = pool.get()?;
                Ok(f(&mut conn)?)
            })
            .await;
        match ran {
            Some(Ok(result)) => result,
            Some(Err(panic)) => Err(DbError::Panicked(panic)),
            None => Err(DbError::Cancelled),
        }
    }

    /// Runs `f` in a savepoint of a transaction shared with the writes that arrive with it, and
    /// returns once that transaction committed ([`group`]): for short, hot writes whose caller
    /// must not be answered before they are durable.
    ///
    /// `key` (the portal) picks the committer: on PostgreSQL several commit at once, each for
    /// its own portals ([`group::GroupCommit::run`]).
    pub async fn run_grouped<T, F>(&self, key: &str, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        self.group.run(key, f).await
    }

    /// Which committer [`Db::run_grouped`] gives `key`'s writes to.
    pub fn commit_lane(&self, key: &str) -> usize {
        self.group.lane_of(key)
    }

    /// What [`Db::run_grouped`]'s committer has done so far.
    pub fn group_commit_counts(&self) -> group::GroupCounts {
        self.group.counts()
    }

    /// SQLite only: how this process's writers have used the write lock so far
    /// ([`gate::WriteGate::use_so_far`]).
    pub fn sqlite_writers(&self) -> Option<gate::WritersUse> {
        self.gate.as_deref().map(gate::WriteGate::use_so_far)
    }

    /// A connection for synchronous code (tests, start-up); never call it on the reactor.
    pub fn get_blocking(&self) -> Result<PooledConn, DbError> {
        Ok(self.pool.get()?)
    }
}

/// Applies the embedded migrations of the connection's backend.
///
/// Migrations are embedded at compile time: a new folder needs this file touched (the
/// `event_token_per_portal` rebuild of `callbacks` is one).
pub fn run_migrations(conn: &mut DbConnection) -> anyhow::Result<()> {
    let result = match conn {
        DbConnection::Postgres(c) => c.run_pending_migrations(POSTGRES_MIGRATIONS).map(|_| ()),
        DbConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|_| ()),
    };
    result.map_err(|e| anyhow::anyhow!(e))
}

/// A write transaction that is safe on both backends.
///
/// On SQLite a deferred transaction that reads first and writes later can fail with
/// `SQLITE_BUSY` without waiting when another writer committed in between; taking the write lock
/// up front (a no-op write) makes `busy_timeout` apply and serialises writers cleanly. PostgreSQL
/// needs nothing extra: the compare-and-set updates inside re-check their `WHERE` under its locks.
pub fn write_tx<T, E, F>(conn: &mut DbConnection, f: F) -> Result<T, E>
where
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
    E: From<DieselError>,
{
    // Inside a transaction already (a savepoint of a shared commit, [`group`]) the lock was
    // taken by that transaction's first statement: at 500 robot calls/s the no-op ran 9 times
    // per callback on the writer, 10 µs each, for nothing.
    let outermost = match conn {
        DbConnection::Sqlite(s) => {
            use diesel::connection::{AnsiTransactionManager, TransactionManager};
            matches!(
                AnsiTransactionManager::transaction_manager_status_mut(s).transaction_depth(),
                Ok(None)
            )
        }
        DbConnection::Postgres(_) => false,
    };
    conn.transaction(|c| {
        if let (DbConnection::Sqlite(s), true) = (&mut *c, outermost) {
            diesel::sql_query("UPDATE rate_slots SET used = used WHERE 1 = 0").execute(s)?;
        }
        f(c)
    })
}

/// Makes the write transactions that name the same `key` run one after another: on PostgreSQL a
/// transaction-scoped advisory lock (released at commit or rollback); SQLite needs nothing, as
/// [`write_tx`] already serialises every writer. Unlike a no-op update of a shared row, it takes no
/// row lock, so it cannot deadlock with transactions that lock rows in another order.
pub fn serialise_on(conn: &mut DbConnection, key: &str) -> QueryResult<()> {
    if let DbConnection::Postgres(pg) = conn {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind::<diesel::sql_types::Text, _>(key)
            .execute(pg)?;
    }
    Ok(())
}

/// The database clock in microseconds since the Unix epoch, as an SQL expression of `conn`'s
/// backend. Shared budgets and windows count in it, so that instances whose host clocks disagree
/// still agree on one time. Stable within one statement on both backends (SQLite's `'now'` is
/// fixed per statement; PostgreSQL's `statement_timestamp()` likewise).
pub fn now_us_sql(conn: &DbConnection) -> &'static str {
    match conn {
        DbConnection::Sqlite(_) => {
            "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"
        }
        DbConnection::Postgres(_) => {
            "CAST(EXTRACT(EPOCH FROM statement_timestamp()) * 1000000 AS BIGINT)"
        }
    }
}

#[derive(diesel::QueryableByName)]
struct Micros {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    v: i64,
}

/// The database clock now, in microseconds since the Unix epoch (see [`now_us_sql`]).
pub fn db_now_us(conn: &mut DbConnection) -> QueryResult<i64> {
    let sql = format!("SELECT {} AS v", now_us_sql(conn));
    let row: Micros = match conn {
        DbConnection::Sqlite(c) => diesel::sql_query(sql).get_result(c)?,
        DbConnection::Postgres(c) => diesel::sql_query(sql).get_result(c)?,
    };
    Ok(row.v)
}

/// Inserts a row unless one with the same key exists, as `INSERT … ON CONFLICT DO NOTHING` on
/// both backends; `Ok(false)` when one did. The statement is given unexecuted, since diesel runs an
/// `ON CONFLICT` clause on a backend's own connection only.
///
/// A unique violation caught instead needed a savepoint on PostgreSQL (it aborts the enclosing
/// transaction otherwise): two more round trips for every insert, and one more with an error in
/// the server's log for every row that existed. A robot call's acknowledgement made three.
macro_rules! insert_if_absent {
    ($conn:expr, $insert:expr) => {{
        use diesel::RunQueryDsl as _;
        match $conn {
            $crate::db::DbConnection::Postgres(pg) => $insert.on_conflict_do_nothing().execute(pg),
            $crate::db::DbConnection::Sqlite(lite) => {
                $insert.on_conflict_do_nothing().execute(lite)
            }
        }
        .map(|rows: usize| rows > 0)
    }};
}
pub(crate) use insert_if_absent;

impl From<DbError> for std::io::Error {
    fn from(e: DbError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// The database server's current UTC time, read fresh (the statement's, not the transaction's start).
///
/// Leases are compared across instances, so they are measured on one clock, the database's,
/// rather than on each host's (a host whose clock runs ahead would take live jobs over).
pub fn database_now(conn: &mut DbConnection) -> QueryResult<chrono::NaiveDateTime> {
    // The same reading as the shared budgets' ([`db_now_us`]), as a timestamp.
    let us = db_now_us(conn)?;
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.naive_utc())
        .ok_or_else(|| {
            DieselError::DeserializationError(format!("database time {us} µs out of range").into())
        })
}
