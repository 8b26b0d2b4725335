//! The real binary's log lines as a service manager collects them: standard output is a pipe,
//! not a terminal, so text lines carry no colour codes, and `APP_LOG_FORMAT=json` makes every
//! line one JSON object.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mango_callback::config::LOCAL_SECRET_KEY;

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mango-callback serve` on a fresh SQLite database with `extra` variables, and returns
/// the lines it wrote to standard output up to and including the one saying it listens.
fn lines_until_listening(extra: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("app.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_mango-callback"))
        .current_dir(dir.path()) // no stray .env
        .env_clear()
        .env("DATABASE_URL", &db)
        .env("APP_BIND", "127.0.0.1:0")
        .env("APP_SECRET_KEY", LOCAL_SECRET_KEY)
        .env("RUST_LOG", "info")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the app binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let _running = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    // A bound for a slow CI machine, not a pause: lines are taken as soon as they come.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        let done = line.contains("listening");
        lines.push(line);
        if done {
            return lines;
        }
    }
    panic!(
        "the app never said it listens; it wrote:\n{}",
        lines.join("\n")
    );
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let lines = lines_until_listening(&[]);
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "escape codes in: {lines:#?}"
    );
    assert!(lines
        .iter()
        .any(|l| l.contains("INFO") && l.contains("starting")));
}

#[test]
fn app_log_format_json_writes_one_json_object_per_line() {
    let lines = lines_until_listening(&[("APP_LOG_FORMAT", "json")]);
    assert!(lines.len() >= 2, "{lines:#?}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert!(v["message"].is_string(), "{line}");
    }
    let listening: serde_json::Value =
        serde_json::from_str(lines.last().expect("a line")).expect("json");
    assert_eq!(listening["message"], "listening");
    assert!(
        listening["port"].as_u64().is_some_and(|p| p > 0),
        "{listening}"
    );
    assert!(
        lines.iter().all(|l| !l.contains(LOCAL_SECRET_KEY)),
        "the secret key is never logged"
    );
}
