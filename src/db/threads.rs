//! The threads that run blocking diesel calls: a fixed set per database, shared by every
//! runtime of the process.
//!
//! Tokio's blocking pool is per runtime, and actix runs one runtime per HTTP worker besides the
//! system's: each grew threads of its own for database calls (24 in a 10,000-call burst,
//! measured with `/proc/PID/task`), and glibc gives each new thread a malloc arena of its own,
//! up to 16 on two cores. Their free memory is not shared, so the app's RSS grew with them.
//! [`super::Db`] lets no more calls go than it has connections, so as many threads suffice.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};

type Task = Box<dyn FnOnce() + Send>;

/// A fixed set of threads taking blocking calls in arrival order; they end when the last
/// clone of the [`DbThreads`] is dropped.
#[derive(Clone)]
pub struct DbThreads {
    tasks: mpsc::Sender<Task>,
}

impl DbThreads {
    /// Starts `count` threads named `db-0`, `db-1`, ….
    pub fn start(count: usize) -> std::io::Result<DbThreads> {
        let (tasks, queue) = mpsc::channel::<Task>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..count.max(1) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("db-{i}"))
                .spawn(move || loop {
                    // The lock is held only to take the next call, never while running it.
                    let next = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    match next {
                        Ok(task) => task(),
                        Err(mpsc::RecvError) => return,
                    }
                })?;
        }
        Ok(DbThreads { tasks })
    }

    /// Runs `f` on one of the threads and returns what it returned, or the panic's payload
    /// message; `None` when the threads are gone.
    pub async fn run<T, F>(&self, f: F) -> Option<Result<T, String>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (done, answer) = tokio::sync::oneshot::channel();
        let task: Task = Box::new(move || {
            // A panic stays on this call: the thread goes on with the next one.
            let result = catch_unwind(AssertUnwindSafe(f))
                .map_err(|payload| crate::telemetry::panic_message(payload.as_ref()));
            let _ = done.send(result);
        });
        self.tasks.send(task).ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_that_panics_is_reported_and_the_thread_takes_the_next_one() {
        let threads = DbThreads::start(1).expect("threads");
        let panicked = threads
            .run(|| -> u32 { panic!("broken row") })
            .await
            .expect("ran");
        assert_eq!(panicked, Err("broken row".to_owned()));
        assert_eq!(threads.run(|| 7).await, Some(Ok(7)));
    }

    #[tokio::test]
    async fn calls_run_on_the_named_threads_side_by_side() {
        let threads = DbThreads::start(2).expect("threads");
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let on = |b: Arc<std::sync::Barrier>| {
            threads.run(move || {
                // Both must be running at once for the barrier to open.
                b.wait();
                std::thread::current().name().map(str::to_owned)
            })
        };
        let (a, b) = tokio::join!(on(Arc::clone(&barrier)), on(barrier));
        let mut names = vec![a, b];
        names.sort();
        assert_eq!(
            names,
            [Some(Ok(Some("db-0".into()))), Some(Ok(Some("db-1".into())))]
        );
    }
}
