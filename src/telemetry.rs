//! Logging: `tracing` with an env filter (`RUST_LOG`), one line per event, as text or JSON
//! (`APP_LOG_FORMAT`); panics logged once and caught at the boundaries (handlers, jobs, database
//! tasks) instead of taking anything down.

use std::any::Any;
use std::future::Future;
use std::io::IsTerminal as _;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, EnvFilter};

/// How log lines are written (`--log-format`, `APP_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour codes only when standard output is a terminal.
    #[default]
    Text,
    /// One JSON object per line (journald, Loki, Elasticsearch): the event's fields at the top
    /// level, the enclosing span's fields under `span`.
    Json,
}

/// [`init_as`] text lines (tests, and the sandbox's own trace).
pub fn init(default_filter: &str) {
    init_as(default_filter, LogFormat::Text);
}

/// Installs the global subscriber once, writing to standard output; later calls (e.g. from
/// several tests) are ignored. Colour codes only on a terminal and without `NO_COLOR`: in a
/// journal or a file they would be noise.
pub fn init_as(default_filter: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = subscriber(filter, format, ansi, std::io::stdout).try_init();
}

/// The subscriber [`init`] installs, writing to `writer` (tests pass a buffer).
pub fn subscriber<W>(
    filter: EnvFilter,
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    }
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
    use std::sync::{Arc, Mutex, PoisonError};

    /// Logs one event inside a span through [`subscriber`] and returns what was written.
    fn log_one(format: LogFormat, ansi: bool) -> String {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let sub = subscriber(EnvFilter::new("info"), format, ansi, move || {
            Sink(sink.clone())
        });
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("job", job.kind = "place_call");
            let _in = span.enter();
            tracing::warn!(
                portal = "p1.bitrix24.ru",
                attempt = 2,
                "job failed, will retry"
            );
        });
        let bytes = buf.lock().unwrap_or_else(PoisonError::into_inner).clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_format_writes_one_parseable_object_per_line_with_the_fields_and_the_span() {
        let out = log_one(LogFormat::Json, true);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "job failed, will retry");
        assert_eq!(v["portal"], "p1.bitrix24.ru");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["span"]["name"], "job");
        assert_eq!(v["span"]["job.kind"], "place_call");
        assert!(v["timestamp"].is_string());
        assert!(!out.contains('\u{1b}'), "no colour codes in JSON: {out:?}");
    }

    #[test]
    fn text_format_has_colour_codes_only_when_asked_for_a_terminal() {
        let plain = log_one(LogFormat::Text, false);
        assert!(plain.contains("job failed, will retry"), "{plain}");
        assert!(!plain.contains('\u{1b}'), "no escape codes: {plain:?}");
        assert!(log_one(LogFormat::Text, true).contains('\u{1b}'));
    }

    #[actix_web::test]
    async fn a_panicking_future_becomes_an_error_with_its_message() {
        let caught = catch_panic(async { panic!("boom {}", 42) }).await;
        assert_eq!(caught.expect_err("caught"), "boom 42");
        assert_eq!(catch_panic(async { 7 }).await, Ok(7));
    }
}
