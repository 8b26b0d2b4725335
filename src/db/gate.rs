//! SQLite's writers of this process take turns here instead of in SQLite's busy handler.
//!
//! SQLite has one writer at a time. A connection that finds the write lock taken waits in
//! SQLite's busy handler, which sleeps 1, 2, 5, 10, … up to 100 ms between tries and serves no
//! one in order: under load a robot call's acknowledgement slept hundreds of milliseconds behind
//! the job worker's commits, and writers sat idle while the lock was free (measured with
//! `strace`: thousands of 25–100 ms sleeps in a 2,000-call run). Here a writer waits on a fair
//! lock that hands over to the next waiter the moment it is released.
//!
//! Two classes: the acknowledgements' group committer ([`super::group`]) waits only for the
//! write in progress; everything else waits in line behind the writers before it (in the app,
//! the one committer of every other write, [`super::group::Policy::IN_LINE`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{FairMutex, FairMutexGuard};

/// The turn-taking of one SQLite database's writers in this process.
#[derive(Default)]
pub struct WriteGate {
    /// The line of ordinary writers: one at a time goes on to `lock`.
    line: FairMutex<()>,
    /// The write lock itself: the head of the line and the group committer share it, so the
    /// committer waits for one write at most.
    lock: FairMutex<()>,
    /// What the ordinary writers and the group committer have waited and held.
    other_use: Use,
    group_commit_use: Use,
    /// How many writes the group committer's last turn carried ([`WriteGate::acknowledged`]).
    last_acknowledged: AtomicU64,
}

/// One class of writers' turns so far.
#[derive(Default)]
struct Use {
    turns: AtomicU64,
    waited_us: AtomicU64,
    held_us: AtomicU64,
}

/// How one class of SQLite's writers in this process has used the write lock since the start.
/// Held time over wall time is how busy the one writer is: near 1, the database is what bounds
/// the throughput (`/metrics`, the bench's table).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriterUse {
    pub turns: u64,
    pub waited_seconds: f64,
    pub held_seconds: f64,
}

/// Both classes: `other` is the job worker and every other [`super::Db::run`], `group_commit`
/// the robot calls' shared acknowledgement commits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WritersUse {
    pub other: WriterUse,
    pub group_commit: WriterUse,
}

/// A writer's turn; dropping it lets the next one go.
pub struct Turn<'a> {
    // Field order is drop order: the lock goes to a waiting committer before the line moves.
    _lock: FairMutexGuard<'a, ()>,
    _line: Option<FairMutexGuard<'a, ()>>,
    since: Instant,
    counted: &'a Use,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // Runs before the fields' guards are released: the time counted is the lock's own.
        self.counted
            .held_us
            .fetch_add(micros(self.since.elapsed()), Ordering::Relaxed);
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl WriteGate {
    /// Waits for this writer's turn behind the writers that came before it.
    pub fn in_line(&self) -> Turn<'_> {
        let asked = Instant::now();
        let line = self.line.lock();
        let lock = self.lock.lock();
        turn(lock, Some(line), asked, &self.other_use)
    }

    /// The group committer's turn: after the write in progress, ahead of the line.
    pub fn ahead(&self) -> Turn<'_> {
        let asked = Instant::now();
        let lock = self.lock.lock();
        turn(lock, None, asked, &self.group_commit_use)
    }

    /// The group committer's turn carried `writes`: robot calls flood in when it is many
    /// ([`super::group::Flood`]).
    pub fn acknowledged(&self, writes: u64) {
        self.last_acknowledged.store(writes, Ordering::Relaxed);
    }

    /// How many writes the group committer's last turn carried.
    pub fn last_acknowledged(&self) -> u64 {
        self.last_acknowledged.load(Ordering::Relaxed)
    }

    /// The writers' use of the lock so far.
    pub fn use_so_far(&self) -> WritersUse {
        let read = |u: &Use| WriterUse {
            turns: u.turns.load(Ordering::Relaxed),
            waited_seconds: u.waited_us.load(Ordering::Relaxed) as f64 / 1e6,
            held_seconds: u.held_us.load(Ordering::Relaxed) as f64 / 1e6,
        };
        WritersUse {
            other: read(&self.other_use),
            group_commit: read(&self.group_commit_use),
        }
    }
}

/// A turn that began now, asked for at `asked`, counted in `counted`.
fn turn<'a>(
    lock: FairMutexGuard<'a, ()>,
    line: Option<FairMutexGuard<'a, ()>>,
    asked: Instant,
    counted: &'a Use,
) -> Turn<'a> {
    let since = Instant::now();
    counted.turns.fetch_add(1, Ordering::Relaxed);
    counted
        .waited_us
        .fetch_add(micros(since - asked), Ordering::Relaxed);
    Turn {
        _lock: lock,
        _line: line,
        since,
        counted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn writers_in_line_never_overlap() {
        let gate = Arc::new(WriteGate::default());
        let inside = Arc::new(AtomicUsize::new(0));
        // Eight writers in line and the committer going ahead, all at once.
        let threads: Vec<_> = (0..9)
            .map(|i| {
                let (gate, inside) = (Arc::clone(&gate), Arc::clone(&inside));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _turn = if i == 8 { gate.ahead() } else { gate.in_line() };
                        assert_eq!(
                            inside.fetch_add(1, Ordering::SeqCst),
                            0,
                            "two writers at once"
                        );
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer");
        }
    }

    #[test]
    fn the_gate_counts_each_writers_turns_and_the_time_it_held_the_lock() {
        let gate = WriteGate::default();
        for _ in 0..3 {
            let _turn = gate.in_line();
        }
        {
            let _turn = gate.ahead();
            // Busy for 2 ms by the clock, from after the turn began (no sleep: the turn is held
            // at least this long).
            let held_from = Instant::now();
            while held_from.elapsed() < std::time::Duration::from_millis(2) {
                std::hint::spin_loop();
            }
        }
        let WritersUse {
            other,
            group_commit,
        } = gate.use_so_far();
        assert_eq!((other.turns, group_commit.turns), (3, 1));
        assert!(
            group_commit.held_seconds >= 0.002,
            "the committer held the lock at least 2 ms: {group_commit:?}"
        );
    }
}
