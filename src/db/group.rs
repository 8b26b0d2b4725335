//! Group commit: short writes that arrive together (robot-call acknowledgements) share one
//! transaction, each in its own savepoint, and each caller is answered only after the commit.
//!
//! A durable commit (SQLite `synchronous=FULL`, PostgreSQL's WAL flush) costs a disk sync; one
//! sync for every call that arrived while the previous batch was committing keeps an
//! acknowledgement durable without paying a sync per call. One committer thread per process does
//! it: for SQLite, the single writer it has anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::Connection;

use super::{write_tx, DbConnection, DbError, DbPool};

/// The most writes one transaction takes: a long batch would keep its first caller waiting.
const MAX_BATCH: usize = 64;

/// The most batches committed one after another in one turn of SQLite's write lock, so that the
/// job worker's writes still get their turn while robot calls keep arriving.
const BATCHES_PER_TURN: usize = 4;

/// What a write hands back after its savepoint: it answers its caller once the commit's outcome
/// is known (`None`: committed).
type Deliver = Box<dyn FnOnce(Option<&DbError>) + Send>;

/// A caller's write waiting for the next batch.
trait Pending: Send {
    /// Runs the write in a savepoint of the batch's transaction.
    fn run(self: Box<Self>, c: &mut DbConnection) -> Deliver;
    /// The batch could not start (no connection): the caller gets `e`.
    fn fail(self: Box<Self>, e: &DbError);
}

type Write = Box<dyn Pending>;

struct Item<T, F> {
    f: F,
    answer: tokio::sync::oneshot::Sender<Result<T, DbError>>,
}

impl<T, F> Pending for Item<T, F>
where
    F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Box<Self>, c: &mut DbConnection) -> Deliver {
        let result = c.transaction(self.f);
        let answer = self.answer;
        Box::new(move |commit_error: Option<&DbError>| {
            let _ = answer.send(match commit_error {
                None => result,
                Some(e) => Err(copy(e)),
            });
        })
    }

    fn fail(self: Box<Self>, e: &DbError) {
        let _ = self.answer.send(Err(copy(e)));
    }
}

/// What the committer has done since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCounts {
    /// Writes handed to it.
    pub submitted: u64,
    /// Shared transactions it began.
    pub batches: u64,
    /// Writes those transactions carried.
    pub writes: u64,
}

/// The committers' queues; dropping the last handle stops their threads.
pub struct GroupCommit {
    lanes: Vec<mpsc::Sender<Write>>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    submitted: AtomicU64,
    batches: AtomicU64,
    writes: AtomicU64,
}

impl GroupCommit {
    /// Starts `lanes` committer threads (at least one) on `pool`, a pool of their own: an
    /// acknowledgement never waits for a connection the job worker holds. SQLite has one writer,
    /// so one lane; PostgreSQL commits several transactions at once, and a robot call's write is
    /// a dozen statements, each a round trip: one lane alone took 300 calls in 1.6 s.
    pub fn start(
        pool: DbPool,
        gate: Option<Arc<super::gate::WriteGate>>,
        lanes: usize,
    ) -> std::io::Result<GroupCommit> {
        let stats = Arc::new(Stats::default());
        let mut senders = Vec::new();
        for lane in 0..lanes.max(1) {
            let (queue, rx) = mpsc::channel::<Write>();
            let (counted, pool, gate) = (Arc::clone(&stats), pool.clone(), gate.clone());
            std::thread::Builder::new()
                .name(format!("group-commit-{lane}"))
                .spawn(move || {
                    while let Ok(first) = rx.recv() {
                        // On SQLite, after the write in progress and ahead of the job worker's
                        // writes: an acknowledgement waits for one other commit at most. The
                        // writes that arrive meanwhile join this batch.
                        let _turn = gate.as_deref().map(super::gate::WriteGate::ahead);
                        let mut next = Some(first);
                        let mut batches = 0;
                        while let Some(first) = next.take() {
                            let mut batch = vec![first];
                            while batch.len() < MAX_BATCH {
                                match rx.try_recv() {
                                    Ok(w) => batch.push(w),
                                    Err(_) => break,
                                }
                            }
                            counted.batches.fetch_add(1, Ordering::Relaxed);
                            counted
                                .writes
                                .fetch_add(batch.len() as u64, Ordering::Relaxed);
                            commit(&pool, batch);
                            batches += 1;
                            // Writes that arrived during this commit go next in the same turn:
                            // given back, the lock would go to the job worker's next write
                            // first, and they would wait for it as well.
                            if batches < BATCHES_PER_TURN {
                                next = rx.try_recv().ok();
                            }
                        }
                    }
                })?;
            senders.push(queue);
        }
        Ok(GroupCommit {
            lanes: senders,
            stats,
        })
    }

    /// Runs `f` in its own savepoint of the next shared transaction of `key`'s lane; its result
    /// comes back once that transaction committed. An error of `f` rolls back `f`'s writes only;
    /// a failed commit fails every write of the batch (none of them is stored).
    ///
    /// Writes with the same `key` (a portal) always share a lane, so two lanes never write the
    /// same rows at once: no lock waits or deadlocks between their transactions.
    pub async fn run<T, F>(&self, key: &str, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let (answer, rx) = tokio::sync::oneshot::channel();
        let write: Write = Box::new(Item { f, answer });
        self.lanes[self.lane_of(key)]
            .send(write)
            .map_err(|_| DbError::Panicked("the group committer has stopped".into()))?;
        // Counted once it is in the queue (a test waits on it to know so).
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
        // A dropped answer means the batch panicked (the panic hook logged it).
        rx.await
            .map_err(|_| DbError::Panicked("the shared write transaction panicked".into()))?
    }

    /// The committer `key`'s writes go to (a stable hash of it).
    pub fn lane_of(&self, key: &str) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        usize::try_from(h.finish() % self.lanes.len().max(1) as u64).unwrap_or(0)
    }

    /// Writes submitted, transactions begun and writes they carried, since the start.
    pub fn counts(&self) -> GroupCounts {
        GroupCounts {
            submitted: self.stats.submitted.load(Ordering::Relaxed),
            batches: self.stats.batches.load(Ordering::Relaxed),
            writes: self.stats.writes.load(Ordering::Relaxed),
        }
    }
}

/// Runs one batch in one transaction and answers every write.
fn commit(pool: &DbPool, batch: Vec<Write>) {
    let mut conn = match pool.get() {
        Ok(c) => c,
        Err(e) => {
            let e = DbError::Pool(e);
            tracing::error!(error = %e, writes = batch.len(), "no connection for a shared write transaction; its writes are refused");
            for write in batch {
                write.fail(&e);
            }
            return;
        }
    };
    let writes = batch.len();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut delivers = Vec::with_capacity(writes);
        let committed = write_tx(&mut conn, |c| -> Result<(), DbError> {
            for write in batch {
                delivers.push(write.run(c));
            }
            Ok(())
        });
        (delivers, committed)
    }));
    // On a panic every `Deliver` and unrun write was dropped with it, so their callers hear of
    // it; the connection was dropped while unwinding, which makes the pool discard it.
    let Ok((delivers, committed)) = outcome else {
        return;
    };
    let error = committed.err();
    if let Some(e) = &error {
        tracing::error!(error = %e, writes, "a shared write transaction failed; none of its writes is stored");
    }
    for deliver in delivers {
        deliver(error.as_ref());
    }
}

/// The same failure for another caller (`DbError` is not `Clone`), keeping whether the database
/// was unreachable, which decides between 503 and 500.
fn copy(e: &DbError) -> DbError {
    let kind = if e.is_unavailable() {
        DatabaseErrorKind::ClosedConnection
    } else {
        DatabaseErrorKind::Unknown
    };
    DbError::Query(DieselError::DatabaseError(kind, Box::new(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Backend, Manager};

    #[actix_web::test]
    async fn writes_that_arrive_during_a_commit_go_next_in_the_same_turn_of_sqlites_lock() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        let pool = diesel::r2d2::Pool::builder()
            .max_size(1)
            .build(Manager {
                url: path.to_str().expect("utf-8 path").to_owned(),
                backend: Backend::Sqlite,
            })
            .expect("pool");
        crate::db::run_migrations(&mut pool.get().expect("conn")).expect("migrations");
        let gate = Arc::new(super::super::gate::WriteGate::default());
        let group = Arc::new(GroupCommit::start(pool, Some(Arc::clone(&gate)), 1).expect("start"));
        // The first write holds its batch open until the second has been handed over.
        let (started, is_running) = mpsc::channel::<()>();
        let (release, released) = mpsc::channel::<()>();
        let first = {
            let group = Arc::clone(&group);
            actix_web::rt::spawn(async move {
                group
                    .run("portal", move |_c| {
                        let _ = started.send(());
                        let _ = released.recv();
                        Ok(1)
                    })
                    .await
            })
        };
        actix_web::rt::task::spawn_blocking(move || is_running.recv())
            .await
            .expect("join")
            .expect("the first batch began");
        let second = {
            let group = Arc::clone(&group);
            actix_web::rt::spawn(async move { group.run("portal", |_c| Ok(2)).await })
        };
        // The second write is queued once `submitted` counts it.
        while group.counts().submitted < 2 {
            actix_web::rt::task::yield_now().await;
        }
        release.send(()).expect("release");
        assert_eq!(first.await.expect("join").expect("first"), 1);
        assert_eq!(second.await.expect("join").expect("second"), 2);
        assert_eq!(
            (group.counts().batches, gate.use_so_far().group_commit.turns),
            (2, 1),
            "two batches, one turn of the write lock"
        );
    }
}
