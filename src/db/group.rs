//! Group commit: short writes that arrive together share one transaction, each in its own
//! savepoint, and each caller is answered only after the commit.
//!
//! A durable commit (SQLite `synchronous=FULL`, PostgreSQL's WAL flush) costs a disk sync; one
//! sync for every write that arrived while the previous batch was committing keeps each write
//! durable without paying a sync per write. Robot-call acknowledgements have committers of their
//! own ([`Policy::ACKNOWLEDGEMENTS`]); on SQLite every other write of the process (the job
//! worker's) goes through one more ([`Policy::IN_LINE`]), as SQLite has a single writer anyway.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::Connection;

use super::{write_tx, DbConnection, DbError, DbPool};

/// The most writes one transaction takes: a long batch would keep its first caller waiting.
const MAX_BATCH: usize = 64;

/// How a committer fills its batches and, on SQLite, takes its turn of the write lock.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// SQLite: after the write in progress, ahead of the line ([`super::gate::WriteGate::ahead`]),
    /// or in the line.
    pub ahead: bool,
    /// The most batches committed one after another in one turn of the lock.
    pub batches_per_turn: usize,
    /// No further write starts in a batch that has run this long: the acknowledgements that
    /// wait for the lock wait for one such batch at most.
    pub busy_for: Option<Duration>,
    /// SQLite: a longer [`Policy::busy_for`] while robot calls flood in.
    pub in_flood: Option<Flood>,
}

/// While the acknowledgements' last turn of the lock carried at least `from` writes, a batch
/// starts no write after `busy_for`: each of those waits for its own long batch anyway, and the
/// job worker keeps draining.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    pub from: u64,
    pub busy_for: Duration,
}

impl Policy {
    /// Robot-call acknowledgements: ahead of the line, up to 4 batches in a turn so that the
    /// job worker's writes still get theirs while robot calls keep arriving.
    pub const ACKNOWLEDGEMENTS: Policy = Policy {
        ahead: true,
        batches_per_turn: 4,
        busy_for: None,
        in_flood: None,
    };

    /// Every other SQLite write ([`super::Db::run`]): in the line, one batch per turn, and a
    /// batch starts no write after 0.5 ms, so that an acknowledgement waits for about that much
    /// of the worker's writes and one sync. Measured at 500 robot calls/s (acknowledgement p99,
    /// drain of 5,000): each write alone 7.0–7.5 ms, 19.1–19.3 s; 0.25 ms 7.2–8.2 ms, 18.2 s;
    /// 0.5 ms 7.9–9.3 ms, 17.0–18.3 s; 2 ms 10.5–11.5 ms, 16.1–17.2 s.
    ///
    /// While robot calls flood in (32 or more in the acknowledgements' last turn; 500 a second
    /// make 1–2), a batch runs up to 5 ms: in the 10,000-call burst the job worker had all but
    /// stood still while the calls were acknowledged (2–3 s of turns of 4 batches of 64). With
    /// it the burst drained in 31.2–31.9 s against 33.7–35.0 s, and the calls were still
    /// acknowledged at 2,551–2,824/s (~4,300/s before). A 5 ms cap once no acknowledgement came
    /// for 100 ms changed nothing: Mango's notifications keep coming all through a drain. The
    /// count holds until the acknowledgements' next turn, so the first robot call after a flood
    /// waits for one such batch at most.
    pub const IN_LINE: Policy = Policy {
        ahead: false,
        batches_per_turn: 1,
        busy_for: Some(Duration::from_micros(500)),
        in_flood: Some(Flood {
            from: 32,
            busy_for: Duration::from_millis(5),
        }),
    };
}

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
    /// Starts `lanes` committer threads (at least one) named `name-N` on `pool`, a pool of
    /// their own: an acknowledgement never waits for a connection the job worker holds. SQLite
    /// has one writer, so one lane; PostgreSQL commits several transactions at once, and a robot
    /// call's write is a dozen statements, each a round trip: one lane alone took 300 calls in
    /// 1.6 s.
    pub fn start(
        name: &str,
        pool: DbPool,
        gate: Option<Arc<super::gate::WriteGate>>,
        lanes: usize,
        policy: Policy,
    ) -> std::io::Result<GroupCommit> {
        let stats = Arc::new(Stats::default());
        let mut senders = Vec::new();
        for lane in 0..lanes.max(1) {
            let (queue, rx) = mpsc::channel::<Write>();
            let (counted, pool, gate) = (Arc::clone(&stats), pool.clone(), gate.clone());
            std::thread::Builder::new()
                .name(format!("{name}-{lane}"))
                .spawn(move || {
                    // Writes taken from the queue but not started when their batch ran out of
                    // time ([`Policy::busy_for`]): they go first in the next one.
                    let mut held = VecDeque::new();
                    loop {
                        let first = match held.pop_front() {
                            Some(w) => w,
                            None => match rx.recv() {
                                Ok(w) => w,
                                Err(_) => return,
                            },
                        };
                        // On SQLite the acknowledgements go after the write in progress and
                        // ahead of the line: they wait for one other commit at most.
                        let _turn =
                            gate.as_deref().map(
                                |g| {
                                    if policy.ahead {
                                        g.ahead()
                                    } else {
                                        g.in_line()
                                    }
                                },
                            );
                        let mut next = Some(first);
                        let (mut batches, mut carried) = (0, 0);
                        while let Some(first) = next.take() {
                            // The writes queued now join; those arriving while it runs wait.
                            let mut batch = vec![first];
                            while batch.len() < MAX_BATCH {
                                match held.pop_front().or_else(|| rx.try_recv().ok()) {
                                    Some(w) => batch.push(w),
                                    None => break,
                                }
                            }
                            counted.batches.fetch_add(1, Ordering::Relaxed);
                            let busy_for = match (gate.as_deref(), policy.in_flood) {
                                (Some(g), Some(f)) if g.last_acknowledged() >= f.from => {
                                    Some(f.busy_for)
                                }
                                _ => policy.busy_for,
                            };
                            let taken = batch.len();
                            let left = commit(&pool, batch, busy_for, &counted.writes);
                            carried += taken - left.len();
                            for w in left.into_iter().rev() {
                                held.push_front(w);
                            }
                            batches += 1;
                            // Writes that arrived during this commit go next in the same turn:
                            // given back, the lock would go to the job worker's next write
                            // first, and they would wait for it as well.
                            if batches < policy.batches_per_turn {
                                next = held.pop_front().or_else(|| rx.try_recv().ok());
                            }
                        }
                        if let Some(g) = gate.as_deref().filter(|_| policy.ahead) {
                            g.acknowledged(u64::try_from(carried).unwrap_or(u64::MAX));
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
        // SQLite's committers have one lane: no hash on every write.
        if self.lanes.len() <= 1 {
            return 0;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        usize::try_from(h.finish() % self.lanes.len() as u64).unwrap_or(0)
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

/// Runs `batch` in one transaction and answers every write, counting each in `taken` as it
/// starts. With `busy_for`, no write starts after the batch has run that long: those are given
/// back, unstarted, for the next batch.
fn commit(
    pool: &DbPool,
    batch: Vec<Write>,
    busy_for: Option<Duration>,
    taken: &AtomicU64,
) -> Vec<Write> {
    let mut conn = match pool.get() {
        Ok(c) => c,
        Err(e) => {
            let e = DbError::Pool(e);
            tracing::error!(error = %e, writes = batch.len(), "no connection for a shared write transaction; its writes are refused");
            for write in batch {
                write.fail(&e);
            }
            return Vec::new();
        }
    };
    let began = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut delivers = Vec::with_capacity(batch.len());
        let mut writes = batch.into_iter();
        let committed = write_tx(&mut conn, |c| -> Result<(), DbError> {
            for write in writes.by_ref() {
                taken.fetch_add(1, Ordering::Relaxed);
                delivers.push(write.run(c));
                if busy_for.is_some_and(|d| began.elapsed() >= d) {
                    break;
                }
            }
            Ok(())
        });
        (delivers, committed, writes.collect::<Vec<_>>())
    }));
    // On a panic every `Deliver` and unrun write was dropped with it, so their callers hear of
    // it; the connection was dropped while unwinding, which makes the pool discard it.
    let Ok((delivers, committed, left)) = outcome else {
        return Vec::new();
    };
    let writes = delivers.len();
    let error = committed.err();
    if let Some(e) = &error {
        tracing::error!(error = %e, writes, "a shared write transaction failed; none of its writes is stored");
    }
    for deliver in delivers {
        deliver(error.as_ref());
    }
    left
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

    /// A committer of `policy` on a fresh SQLite file, and its gate.
    fn sqlite_committer(
        dir: &tempfile::TempDir,
        policy: Policy,
    ) -> (Arc<GroupCommit>, Arc<super::super::gate::WriteGate>) {
        let pool = diesel::r2d2::Pool::builder()
            .max_size(1)
            .build(Manager {
                url: dir
                    .path()
                    .join("app.db")
                    .to_str()
                    .expect("utf-8 path")
                    .to_owned(),
                backend: Backend::Sqlite,
            })
            .expect("pool");
        crate::db::run_migrations(&mut pool.get().expect("conn")).expect("migrations");
        let gate = Arc::new(super::super::gate::WriteGate::default());
        let group =
            GroupCommit::start("test", pool, Some(Arc::clone(&gate)), 1, policy).expect("start");
        (Arc::new(group), gate)
    }

    /// Starts a write that holds its batch open until the returned sender is used; returns
    /// once the batch began.
    async fn hold(
        group: &Arc<GroupCommit>,
    ) -> (
        mpsc::Sender<()>,
        actix_web::rt::task::JoinHandle<Result<i32, DbError>>,
    ) {
        let (started, is_running) = mpsc::channel::<()>();
        let (release, released) = mpsc::channel::<()>();
        let first = {
            let group = Arc::clone(group);
            actix_web::rt::spawn(async move {
                group
                    .run("", move |_c| {
                        let _ = started.send(());
                        let _ = released.recv();
                        Ok(0)
                    })
                    .await
            })
        };
        actix_web::rt::task::spawn_blocking(move || is_running.recv())
            .await
            .expect("join")
            .expect("the first batch began");
        (release, first)
    }

    /// Stores a marker row named `bucket` in `rate_slots`, then fails if `fail`.
    fn mark(c: &mut DbConnection, bucket: &str, fail: bool) -> Result<i32, DbError> {
        use crate::db::schema::rate_slots;
        use diesel::prelude::*;
        diesel::insert_into(rate_slots::table)
            .values((
                rate_slots::bucket.eq(bucket),
                rate_slots::slot.eq(1i64),
                rate_slots::used.eq(1),
            ))
            .execute(c)?;
        if fail {
            return Err(DbError::Query(DieselError::NotFound));
        }
        Ok(1)
    }

    fn marks(group_dir: &tempfile::TempDir) -> Vec<String> {
        use crate::db::schema::rate_slots;
        use diesel::prelude::*;
        let mut c = diesel::SqliteConnection::establish(
            group_dir.path().join("app.db").to_str().expect("utf-8"),
        )
        .expect("conn");
        let mut v: Vec<String> = rate_slots::table
            .select(rate_slots::bucket)
            .load(&mut c)
            .expect("marks");
        v.sort();
        v
    }

    /// Hands `writes` (a marker each, failing if asked) to the committer behind the held one;
    /// returns once every one is queued.
    async fn queue_behind(
        group: &Arc<GroupCommit>,
        writes: &[(&'static str, bool)],
    ) -> Vec<actix_web::rt::task::JoinHandle<Result<i32, DbError>>> {
        let before = group.counts().submitted;
        let handles = writes
            .iter()
            .map(|&(name, fail)| {
                let group = Arc::clone(group);
                actix_web::rt::spawn(
                    async move { group.run("", move |c| mark(c, name, fail)).await },
                )
            })
            .collect();
        // Queued once `submitted` counts it.
        while group.counts().submitted < before + writes.len() as u64 {
            actix_web::rt::task::yield_now().await;
        }
        handles
    }

    #[actix_web::test]
    async fn writes_that_arrive_during_a_commit_go_next_in_the_same_turn_of_sqlites_lock() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (group, gate) = sqlite_committer(&dir, Policy::ACKNOWLEDGEMENTS);
        // The first write holds its batch open until the second has been handed over.
        let (release, first) = hold(&group).await;
        let second = queue_behind(&group, &[("second", false)]).await;
        release.send(()).expect("release");
        assert_eq!(first.await.expect("join").expect("first"), 0);
        for w in second {
            assert_eq!(w.await.expect("join").expect("second"), 1);
        }
        assert_eq!(
            (group.counts().batches, gate.use_so_far().group_commit.turns),
            (2, 1),
            "two batches, one turn of the write lock"
        );
        // Told to the line once the turn is over, just after the answers went out.
        let told_by = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while gate.last_acknowledged() != 2 && std::time::Instant::now() < told_by {
            actix_web::rt::task::yield_now().await;
        }
        assert_eq!(
            gate.last_acknowledged(),
            2,
            "the line hears how many writes the turn carried"
        );
    }

    #[actix_web::test]
    async fn sqlite_writes_queued_behind_a_write_share_its_commit_and_a_failed_one_leaves_nothing()
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let (group, gate) = sqlite_committer(
            &dir,
            Policy {
                busy_for: Some(std::time::Duration::from_secs(60)),
                ..Policy::IN_LINE
            },
        );
        let (release, first) = hold(&group).await;
        let writes = queue_behind(
            &group,
            &[("kept-1", false), ("failed", true), ("kept-2", false)],
        )
        .await;
        release.send(()).expect("release");
        assert_eq!(first.await.expect("join").expect("first"), 0);
        let mut answers = Vec::new();
        for w in writes {
            answers.push(w.await.expect("join").is_ok());
        }
        assert_eq!(answers, [true, false, true], "the failed write alone fails");
        assert_eq!(
            marks(&dir),
            ["kept-1", "kept-2"],
            "the failed write's row is gone"
        );
        assert_eq!(
            (group.counts().batches, group.counts().writes),
            (2, 4),
            "the held write's commit, then one for the three queued behind it"
        );
        assert_eq!(
            gate.use_so_far().other.turns,
            2,
            "a turn of the lock each, in the line"
        );
    }

    /// A line committer whose batches have no time to spare, and an hour while robot calls
    /// flood in (the acknowledgements' last turn carried 32 or more).
    fn no_time_but_in_a_flood() -> Policy {
        Policy {
            busy_for: Some(std::time::Duration::ZERO),
            in_flood: Some(Flood {
                from: 32,
                busy_for: std::time::Duration::from_secs(3600),
            }),
            ..Policy::IN_LINE
        }
    }

    /// On a committer of [`no_time_but_in_a_flood`] whose gate heard the acknowledgements' last
    /// turn carried `acknowledged`: two writes queued behind a held one, each answered and
    /// stored; the commits and the turns of the lock they took.
    async fn two_queued_behind_a_held_write(acknowledged: u64) -> (u64, u64) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (group, gate) = sqlite_committer(&dir, no_time_but_in_a_flood());
        gate.acknowledged(acknowledged);
        let (release, first) = hold(&group).await;
        // The next batch takes both queued writes.
        let queued = queue_behind(&group, &[("second", false), ("third", false)]).await;
        release.send(()).expect("release");
        assert_eq!(first.await.expect("join").expect("first"), 0);
        for q in queued {
            assert_eq!(q.await.expect("join").expect("queued"), 1);
        }
        assert_eq!(marks(&dir), ["second", "third"]);
        (group.counts().batches, gate.use_so_far().other.turns)
    }

    #[actix_web::test]
    async fn a_sqlite_batch_that_has_run_its_time_leaves_the_writes_queued_behind_it_to_the_next() {
        // A turn of 31 is no flood: with no time to spare the batch runs the first write only.
        assert_eq!(
            two_queued_behind_a_held_write(31).await,
            (3, 3),
            "one commit and one turn of the lock each"
        );
    }

    #[actix_web::test]
    async fn while_robot_calls_flood_in_a_sqlite_batch_takes_its_longer_time_for_the_writes_queued_behind_it(
    ) {
        assert_eq!(
            two_queued_behind_a_held_write(32).await,
            (2, 2),
            "the held write's commit, then one for both queued behind it"
        );
    }
}
