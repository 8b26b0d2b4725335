//! Logging: `tracing` with an env filter (`RUST_LOG`), one line per event; panics logged once and
//! caught at the boundaries (handlers, jobs, database tasks) instead of taking anything down.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber once; later calls (e.g. from several tests) are ignored.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = fmt().with_env_filter(filter).with_target(false).try_init();
}

/// Replaces the default panic printout with one log line carrying the cause and the place, so a
/// panic caught by [`catch_panic`] or a database task is logged exactly once, in the log stream.
/// The server installs it; tests keep the default hook, whose output the test harness captures.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_else(|| "-".to_owned());
        let thread = std::thread::current();
        tracing::error!(
            panic.message = %panic_message(info.payload()),
            panic.location = %location,
            thread = thread.name().unwrap_or("-"),
            "panic (a bug): the request or job it happened in is answered as an internal error, its transaction rolled back"
        );
    }));
}

/// The text of a panic payload (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Runs `f`, turning a panic inside it into `Err(message)`.
///
/// `AssertUnwindSafe` is sound here because nothing the future borrowed is used after a panic
/// except through the database, where the pool discards the connection and rolls back.
pub async fn catch_panic<F: Future>(f: F) -> Result<F::Output, String> {
    AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|p| panic_message(p.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_panicking_future_becomes_an_error_with_its_message() {
        let caught = catch_panic(async { panic!("boom {}", 42) }).await;
        assert_eq!(caught.expect_err("caught"), "boom 42");
        assert_eq!(catch_panic(async { 7 }).await, Ok(7));
    }
}
