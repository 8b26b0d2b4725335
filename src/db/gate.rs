//! SQLite's writers of this process take turns here instead of in SQLite's busy handler.
//!
//! SQLite has one writer at a time. A connection that finds the write lock taken waits in
//! SQLite's busy handler, which sleeps 1, 2, 5, 10, … up to 100 ms between tries and serves no
//! one in order: under load a robot call's acknowledgement slept hundreds of milliseconds behind
//! the job worker's commits, and writers sat idle while the lock was free (measured with
//! `strace`: thousands of 25–100 ms sleeps in a 2,000-call run). Here a writer waits on a fair
//! lock that hands over to the next waiter the moment it is released.
//!
//! Two classes: the group committer (robot-call acknowledgements, [`super::group`]) waits only
//! for the write in progress; everything else waits in line behind the writers before it.

use parking_lot::{FairMutex, FairMutexGuard};

/// SQLite writers waiting in the line on threads: two, so that the next one is ready the moment
/// the write before it ends; the rest wait as futures ([`WriteGate::place_on_a_thread`]).
const WRITERS_ON_THREADS: usize = 2;

/// The turn-taking of one SQLite database's writers in this process.
pub struct WriteGate {
    /// The places of ordinary writers on threads, taken before they go to one.
    on_threads: std::sync::Arc<tokio::sync::Semaphore>,
    /// The line of ordinary writers: one at a time goes on to `lock`.
    line: FairMutex<()>,
    /// The write lock itself: the head of the line and the group committer share it, so the
    /// committer waits for one write at most.
    lock: FairMutex<()>,
}

/// A writer's turn; dropping it lets the next one go.
pub struct Turn<'a> {
    // Field order is drop order: the lock goes to a waiting committer before the line moves.
    _lock: FairMutexGuard<'a, ()>,
    _line: Option<FairMutexGuard<'a, ()>>,
}

impl Default for WriteGate {
    fn default() -> Self {
        WriteGate {
            on_threads: std::sync::Arc::new(tokio::sync::Semaphore::new(WRITERS_ON_THREADS)),
            line: FairMutex::default(),
            lock: FairMutex::default(),
        }
    }
}

impl WriteGate {
    /// Waits, as a future, for one of the places of writers on threads: a writer holds it while
    /// it goes on to [`WriteGate::in_line`] on a thread (a thread waiting in the line is a
    /// thread held, with its stack and its malloc arena). `None` never happens: the places are
    /// never closed.
    pub async fn place_on_a_thread(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.on_threads.clone().acquire_owned().await.ok()
    }

    /// Waits for this writer's turn behind the writers that came before it.
    pub fn in_line(&self) -> Turn<'_> {
        let line = self.line.lock();
        Turn {
            _lock: self.lock.lock(),
            _line: Some(line),
        }
    }

    /// The group committer's turn: after the write in progress, ahead of the line.
    pub fn ahead(&self) -> Turn<'_> {
        Turn {
            _lock: self.lock.lock(),
            _line: None,
        }
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
}
