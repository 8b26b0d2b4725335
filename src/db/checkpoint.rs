//! SQLite's write-ahead log is copied back into the database file by a thread of its own, outside
//! the writers' turn ([`super::gate`]).
//!
//! By default the connection whose commit takes the log past 1,000 pages copies it back itself,
//! inside that commit: it copies every page and syncs the database file, and the write gate stays
//! held meanwhile, so a robot call's acknowledgement waiting for "the write in progress" waited
//! for the whole copy. Here every connection has `wal_autocheckpoint = 0` and this thread runs a
//! PASSIVE checkpoint a few times a second: it never takes the write lock, so writers go on while
//! it copies, and a page rewritten many times between two checkpoints is copied once.

use std::sync::mpsc;
use std::time::Duration;

use diesel::{Connection, QueryableByName, RunQueryDsl, SqliteConnection};

/// How often the log is copied back: often enough that it stays a few MB long under the bench's
/// heaviest load (reads look pages up in the log's index, which grows with it), rarely enough
/// that a hot page rewritten by many commits is copied once.
pub const INTERVAL: Duration = Duration::from_millis(200);

/// What one checkpoint found and did, as `PRAGMA wal_checkpoint` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct Checkpointed {
    /// 1 when a PASSIVE checkpoint could not copy every frame (a reader still uses them).
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub busy: i32,
    /// Frames in the log.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub log: i32,
    /// Frames of it now in the database file.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub checkpointed: i32,
}

/// The checkpointing thread; it stops when this is dropped.
pub struct Checkpointer {
    asks: mpsc::Sender<mpsc::Sender<Result<Checkpointed, String>>>,
}

impl Checkpointer {
    /// Opens its own connection to the SQLite file at `path` and starts the thread, which runs a
    /// checkpoint every `interval` and whenever [`Checkpointer::now`] asks.
    pub fn start(path: &str, interval: Duration) -> anyhow::Result<Checkpointer> {
        let mut conn = SqliteConnection::establish(path)?;
        diesel::connection::SimpleConnection::batch_execute(
            &mut conn,
            "PRAGMA busy_timeout = 10000; PRAGMA wal_autocheckpoint = 0;",
        )?;
        let (asks, rx) = mpsc::channel::<mpsc::Sender<Result<Checkpointed, String>>>();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || loop {
                let asked = match rx.recv_timeout(interval) {
                    Ok(reply) => Some(reply),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                };
                let done = checkpoint(&mut conn);
                match &done {
                    Ok(c) => tracing::trace!(?c, "SQLite log copied back"),
                    Err(e) => {
                        tracing::warn!(error = %e, "SQLite checkpoint failed; retried shortly")
                    }
                }
                if let Some(reply) = asked {
                    let _ = reply.send(done);
                }
            })?;
        Ok(Checkpointer { asks })
    }

    /// Runs a checkpoint now, on the thread, and returns what it did (blocking: tests and
    /// start-up code only).
    pub fn now(&self) -> Result<Checkpointed, String> {
        let (reply, answer) = mpsc::channel();
        self.asks
            .send(reply)
            .map_err(|_| "the checkpoint thread has stopped".to_owned())?;
        answer
            .recv()
            .map_err(|_| "the checkpoint thread has stopped".to_owned())?
    }
}

fn checkpoint(conn: &mut SqliteConnection) -> Result<Checkpointed, String> {
    diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)")
        .get_result::<Checkpointed>(conn)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Backend, DbConnection, Manager};
    use diesel::connection::SimpleConnection;
    use diesel::r2d2::ManageConnection;

    /// Bytes of the log file beside the database.
    fn wal_len(path: &str) -> u64 {
        std::fs::metadata(format!("{path}-wal"))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    #[test]
    fn writers_leave_the_log_to_the_checkpoint_thread_which_copies_it_back_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        let path = path.to_str().expect("utf-8 path").to_owned();
        // A connection as the app's pool makes them, and a checkpoint thread that never runs on
        // its own: only `now()` makes it copy.
        let manager = Manager {
            url: path.clone(),
            backend: Backend::Sqlite,
        };
        let Ok(DbConnection::Sqlite(mut conn)) = manager.connect() else {
            panic!("a SQLite connection expected");
        };
        let c = &mut conn;
        c.batch_execute("PRAGMA journal_mode = WAL; CREATE TABLE filler (b BLOB)")
            .expect("table");
        let checkpointer = Checkpointer::start(&path, Duration::from_secs(3600)).expect("start");
        // About 2,500 pages in 50 commits: past the 1,000 pages at which a writer would have
        // copied the log back itself.
        for _ in 0..50 {
            c.batch_execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50) \
                 INSERT INTO filler SELECT randomblob(4000) FROM n",
            )
            .expect("insert");
        }
        assert!(
            wal_len(&path) > 2_000 * 4096,
            "the writers did not copy the log back: {} bytes",
            wal_len(&path)
        );
        let done = checkpointer.now().expect("checkpoint");
        assert!(done.log > 2_000, "{done:?}");
        assert_eq!((done.busy, done.checkpointed), (0, done.log), "{done:?}");
        // The next commit starts the log over: it does not grow past what it held.
        let before = wal_len(&path);
        c.batch_execute("INSERT INTO filler VALUES (randomblob(10))")
            .expect("insert");
        let again = checkpointer.now().expect("checkpoint");
        assert!(again.log < 10, "the log started over: {again:?}");
        assert_eq!(wal_len(&path), before, "the log file was reused, not grown");
    }
}
