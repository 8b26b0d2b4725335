//! `mango-callback sandbox --exit`, run as a user runs it: the demo's printout shows the outcomes
//! of its calls and the one retry it plays (the unanswered call, escalated after the demo's clock
//! jumps ahead), with the deal's retry note. The demo keeps its own SQLite database by design, so
//! this test runs once, not on both backends.

use std::process::Command;

#[test]
fn the_sandbox_demo_plays_a_retry_escalated_to_the_experienced_group_and_its_outcome() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
    let out = Command::new(env!("CARGO_BIN_EXE_mango-callback"))
        .args(["sandbox", "--exit"])
        .current_dir(dir.path())
        .env("APP_BIND", "127.0.0.1:0")
        .env_remove("APP_DATABASE_URL")
        .env_remove("SANDBOX_FAULT_RATE")
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "-- 5 minutes later (the demo's clock jumps ahead)",
        "attempt 1     trainee (002) · manager_missed",
        "attempt 2     experienced (001) · answered · manager 201 · talk 48 s",
        "retry note    Mango Office: Никто в группе 002 не ответил. Перезвоним в ",
        "(попытка 2 из 3), группе опытных менеджеров 001",
        "outcome note  Mango Office: Менеджер 201 ответил, клиент на связи, 48 с",
        "outcome note  Mango Office: Клиент не ответил (ответил менеджер 102)",
        "4 of 4 call outcome(s) reported",
        "Speed to lead today: median",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // Five commands: four first calls and the retry; nothing else rang.
    assert!(
        stdout.contains("Mango received 5 callback_group command(s)"),
        "{stdout}"
    );
}
