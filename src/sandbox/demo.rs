//! `mango-callback sandbox`: the app against simulated Bitrix24 and Mango on local ports, with a
//! scripted demo (install, settings, first and second run, a duplicate pair, a deal nobody in the
//! group answers and that is called again, a deal without a phone) and a readable trace of each
//! callback. The same simulators serve the tests.
//!
//! The demo runs on the real clock except once: the retry of the unanswered call is due five
//! minutes later, so the app's clock (and the simulated Mango's, which follows it) jumps ahead
//! instead of the demo waiting; the jump is printed.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::bitrix::{BitrixSim, BitrixSimOptions, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET};
use super::mango::{CallScenario, Delivery, MangoSim, MangoSimOptions};
use super::seed::{seed_mango, MangoAccount};
use crate::callback::history::AttemptLine;
use crate::callback::{store as callback_store, Callback, Reason, ReportCallback, Status};
use crate::config::{Settings, SettingsArgs};
use crate::startup::{Application, RunOptions};

const LINE: &str = "74951234567";
const ACCOUNT: MangoAccount = MangoAccount {
    key: "sandbox-vpbx-api-key",
    salt: "sandbox-vpbx-api-salt",
    line: LINE,
    trainees: "002",
    experienced: "001",
};

/// The client number of the deal nobody answers at first (its scenario, by number).
const UNANSWERED: &str = "79050003344";
/// How far the demo's clock jumps for the retry: the default delay after nobody answered.
const RETRY_JUMP: Duration = Duration::from_secs(5 * 60);

pub async fn run(
    mut args: SettingsArgs,
    bitrix_port: u16,
    mango_port: u16,
    exit: bool,
) -> anyhow::Result<()> {
    let b24 = BitrixSim::start(BitrixSimOptions {
        port: bitrix_port,
        ..Default::default()
    })
    .await
    .context("cannot start the simulated Bitrix24")?;
    let mango = MangoSim::start(MangoSimOptions {
        port: mango_port,
        ..Default::default()
    })
    .await
    .context("cannot start the simulated Mango")?;
    // SANDBOX_FAULT_RATE / _SEED / _KINDS / _HANG_SECS: peer faults for both simulators.
    let faults = super::faults::FaultPlan::from_env("SANDBOX_FAULT").map_err(anyhow::Error::msg)?;
    b24.set_faults(faults.clone());
    mango.set_faults(faults);

    // A database of its own, fresh each run, so the demo never touches the real one.
    let db_path = std::path::Path::new("data/sandbox.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db_path.display()));
    }
    args.database_url = format!("sqlite://{}", db_path.display());
    args.b24_oauth_url = b24.url();
    args.mango_api_url = mango.api_url();
    args.b24_client_id = Some(SANDBOX_CLIENT_ID.into());
    args.b24_client_secret = Some(crate::config::SecretArg(SANDBOX_CLIENT_SECRET.into()));
    args.public_url = None;
    let mut settings = Settings::from_args(args)?;
    // The simulated portals live on http://127.0.0.1.
    settings.allow_private_peers = true;
    let app = Application::build(settings, RunOptions::default()).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let shared = app.shared().clone();
    let handle = app.stopper();
    // Mango's timestamps and rate limits count the demo's clock jump as time passed, as the app does.
    mango.follow_clock(shared.clock.clone());
    actix_web::rt::spawn(app.run_until_stopped());
    println!("\n== mango-callback sandbox");
    println!("   app               {base}");
    println!(
        "   simulated Bitrix24 {} (OAuth server and portals)",
        b24.url()
    );
    println!("   simulated Mango    {}", mango.api_url());

    let portal = b24.create_portal("demo");
    let http = awc::Client::default();
    let install = b24.iframe_request(&portal.member_id, portal.admin_user_id, "DEFAULT", "ru");
    let resp = http
        .post(format!("{base}/b24/install?{}", install.query_string()))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
        .send_body(install.to_form_body())
        .await
        .map_err(|e| anyhow::anyhow!("installer request failed: {e}"))?;
    anyhow::ensure!(
        resp.status().is_success(),
        "the installer answered {}",
        resp.status()
    );
    println!(
        "\n-- installed into portal {} (member_id {})",
        portal.domain, portal.member_id
    );
    // The installer page's BX24.installFinish(): Bitrix24 then sends ONAPPINSTALL to the handler
    // the installer bound.
    b24.finish_install(&portal.member_id);
    b24.settle().await;
    for d in b24.deliveries(&portal.member_id) {
        let status = d
            .status
            .map_or_else(|| "unreachable".to_owned(), |s| s.to_string());
        println!("   {} → {} answered {status}", d.event, d.handler);
    }
    for (code, fields) in b24.robots(&portal.member_id) {
        println!(
            "   robot {code} → {}",
            fields["HANDLER"].as_str().unwrap_or("?")
        );
    }

    seed_mango(&shared, &mango, ACCOUNT, &portal.member_id, |s| {
        // Short windows so the demo's second run is not a duplicate and the missing contact
        // gives up quickly.
        s.duplicate_window_minutes = 0;
        s.contact_wait_seconds = 6;
        // Nobody answering keeps the default rules (again after 5 minutes, at most twice),
        // escalated to the experienced group: the demo plays one such retry. The client who does
        // not pick up is not called again, so its call ends in its outcome at once.
        s.retry_escalate = true;
        s.retry_client_times = 0;
    })
    .await?;
    println!("-- settings saved: trainees 002, experienced 001, line {LINE}");
    println!("   retries: nobody answers → again after 5 min to the experienced group (at most 2); a client who does not answer → not again");
    // How the simulated calls go: a trainee and an experienced manager who answer and talk, one
    // client who does not pick up, and one deal whose trainees do not answer (its number wins
    // over the group until the retry, see below).
    mango.set_scenario(
        ACCOUNT.trainees,
        CallScenario::Answered {
            manager: "101".into(),
            talk_seconds: 133,
        },
    );
    mango.set_scenario(
        ACCOUNT.experienced,
        CallScenario::Answered {
            manager: "201".into(),
            talk_seconds: 95,
        },
    );
    mango.set_scenario(
        "79120001122",
        CallScenario::ClientMissed {
            manager: "102".into(),
        },
    );
    mango.set_scenario(
        UNANSWERED,
        CallScenario::NobodyAnswers {
            managers: vec!["103".into(), "104".into()],
        },
    );

    let m = &portal.member_id;
    let client = b24.add_contact(
        m,
        &[
            ("WORK", "+7 (495) 540-44-44"),
            ("MOBILE", "8 (900) 123-45-67"),
        ],
    );
    let deal_a = b24.add_deal(m, Some(client));
    let client_b = b24.add_contact(m, &[("MOBILE", "+7 912 000 11 22")]);
    let deal_b = b24.add_deal(m, Some(client_b));
    let deal_c = b24.add_deal(m, None);
    let client_d = b24.add_contact(m, &[("MOBILE", "+7 905 000 33 44")]);
    let deal_d = b24.add_deal(m, Some(client_d));

    println!("\n-- deal {deal_a}: first run (rings the trainees)");
    b24.fire_robot(m, "mango_callback", deal_a, &[])
        .await
        .map_err(anyhow::Error::msg)?;
    wait_until_reported(&shared, m, 1).await?;
    println!("-- deal {deal_a}: second run (rings the experienced managers)");
    b24.fire_robot(m, "mango_callback", deal_a, &[])
        .await
        .map_err(anyhow::Error::msg)?;
    wait_until_reported(&shared, m, 2).await?;
    println!("-- deal {deal_b}: two runs at the same instant (one call, one duplicate)");
    let (x, y) = tokio::join!(
        b24.fire_robot(m, "mango_callback", deal_b, &[]),
        b24.fire_robot(m, "mango_callback", deal_b, &[])
    );
    x.map_err(anyhow::Error::msg)?;
    y.map_err(anyhow::Error::msg)?;
    println!("-- deal {deal_d}: a run nobody in the trainee group will answer");
    b24.fire_robot(m, "mango_callback", deal_d, &[])
        .await
        .map_err(anyhow::Error::msg)?;
    println!("-- deal {deal_c}: no contact linked (no call after the wait)");
    b24.fire_robot(m, "mango_callback", deal_c, &[])
        .await
        .map_err(anyhow::Error::msg)?;
    wait_until_reported(&shared, m, 6).await?;

    println!("\n-- Mango plays the calls: signed events/call and events/summary to {base}/mango");
    for i in 0..mango.callbacks().len() {
        if let Err(e) = mango
            .play(&format!("{base}/mango"), ACCOUNT.key, i, Delivery::InOrder)
            .await
        {
            println!("   call {i}: events not delivered ({e})");
        }
    }
    // Every call but the unanswered one has its outcome; that one waits for its retry.
    let placed = mango.callbacks().len();
    wait_for_outcomes(&shared, m, placed.saturating_sub(1)).await?;

    println!("\n-- 5 minutes later (the demo's clock jumps ahead)");
    // The experienced manager 201 takes the escalated call.
    mango.set_scenario(
        UNANSWERED,
        CallScenario::Answered {
            manager: "201".into(),
            talk_seconds: 48,
        },
    );
    shared.clock.advance(RETRY_JUMP);
    shared.notify.notify_one();
    wait_for_commands(&mango, placed + 1).await?;
    for i in placed..mango.callbacks().len() {
        println!("   Mango received the retry's command; it plays the call");
        if let Err(e) = mango
            .play(&format!("{base}/mango"), ACCOUNT.key, i, Delivery::InOrder)
            .await
        {
            println!("   call {i}: events not delivered ({e})");
        }
    }
    wait_for_outcomes(&shared, m, placed).await?;

    let mid = m.clone();
    let mut log = shared
        .db
        .run(move |c| callback_store::latest(c, &mid, 50))
        .await?;
    log.reverse();
    // The reasons the reports were given: the timeline text is built from them.
    let jobs = shared.db.run(crate::jobs::queue::all).await?;
    let reports: Vec<ReportCallback> = jobs
        .iter()
        .filter(|j| j.kind == <ReportCallback as crate::jobs::Job>::KIND)
        .filter_map(|j| serde_json::from_str(&j.payload).ok())
        .collect();
    let (mid, ids) = (
        m.clone(),
        log.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
    );
    let attempts = shared
        .db
        .run(move |c| crate::callback::history::attempts_of(c, &mid, &ids))
        .await?;
    println!("\n== trace");
    for cb in &log {
        let reason = reports
            .iter()
            .find(|r| r.callback_id == cb.id)
            .and_then(|r| r.reason.as_ref());
        print_trace(cb, reason, &b24, &mango);
        print_attempts(cb, &attempts, &b24);
    }
    print_speed(&shared, m).await?;
    println!("\n   Mango received {} callback_group command(s); Bitrix24 got {} bizproc.event.send command(s).", mango.callbacks().len(), b24.event_sends(&portal.member_id).len());
    println!(
        "   Injected faults: Bitrix24 {}; Mango {}.",
        b24.fault_counts(),
        mango.fault_counts()
    );
    if exit {
        handle.stop().await;
        return Ok(());
    }
    let page = b24.iframe_request(m, portal.admin_user_id, "DEFAULT", "ru");
    println!(
        "\nServing. The app page can be opened with a form POST to {base}/b24/app?{} (fields: {}).",
        page.query_string(),
        page.to_form_body()
    );
    println!("Ctrl+C stops.");
    let _ = tokio::signal::ctrl_c().await;
    handle.stop().await;
    Ok(())
}

/// Waits (at most 20 s) until the simulated Mango has received `n` commands.
async fn wait_for_commands(mango: &MangoSim, n: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    while mango.callbacks().len() < n {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the retry's command did not reach Mango within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Each attempt of a callback that was called more than once, and the deal's retry notes.
fn print_attempts(cb: &Callback, attempts: &[AttemptLine], b24: &BitrixSim) {
    let mine: Vec<&AttemptLine> = attempts.iter().filter(|a| a.callback_id == cb.id).collect();
    if mine.len() < 2 {
        return;
    }
    for a in mine {
        println!(
            "     attempt {}     {} ({}) · {} · manager {} · talk {} s",
            a.n,
            a.group_kind,
            a.group_extension,
            a.outcome.as_deref().unwrap_or("under way"),
            a.manager_extension.as_deref().unwrap_or("-"),
            a.talk_seconds.unwrap_or(0)
        );
    }
    let deal: u64 = cb.deal_id.parse().unwrap_or(0);
    for note in b24
        .timeline_comments(&cb.member_id, deal)
        .into_iter()
        .filter(|c| c.contains("Перезвоним"))
    {
        println!("     retry note    {note}");
    }
}

/// The settings page's speed-to-lead numbers for today (the page draws the 30-day chart).
async fn print_speed(shared: &crate::context::Shared, member_id: &str) -> anyhow::Result<()> {
    let (mid, now) = (member_id.to_owned(), shared.clock.now());
    let report = shared
        .db
        .run(move |c| {
            let tz = crate::portal::store::settings_or_default(c, &mid, now)?.timezone;
            crate::callback::speed::load(c, &mid, &tz, now)
        })
        .await?;
    let t = &report.today;
    let secs = |s: Option<i64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s} s"));
    println!(
        "\n   Speed to lead today: median {}, 90th percentile {} ({} of {} clients connected; managers answered {} of {} known)",
        secs(t.median_secs),
        secs(t.p90_secs),
        t.connected,
        t.callbacks,
        t.manager_answered,
        t.known
    );
    Ok(())
}

/// Waits until `n` callbacks of the portal are finished and reported back to Bitrix24.
async fn wait_until_reported(
    shared: &crate::context::Shared,
    member_id: &str,
    n: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let mid = member_id.to_owned();
        let log = shared
            .db
            .run(move |c| callback_store::latest(c, &mid, 50))
            .await?;
        let done = log
            .iter()
            .filter(|c| c.comment_added_at.is_some() && c.event_sent_at.is_some())
            .count();
        if done >= n {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "callbacks were not reported within 60 s ({done} of {n})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (at most 20 s: injected faults may lose events) until `n` outcomes are reported.
async fn wait_for_outcomes(
    shared: &crate::context::Shared,
    member_id: &str,
    n: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let mid = member_id.to_owned();
        let log = shared
            .db
            .run(move |c| callback_store::latest(c, &mid, 50))
            .await?;
        let done = log
            .iter()
            .filter(|c| c.outcome_reported_at.is_some())
            .count();
        if done >= n || started.elapsed() > Duration::from_secs(20) {
            println!("   {done} of {n} call outcome(s) reported");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_trace(cb: &Callback, reason: Option<&Reason>, b24: &BitrixSim, mango: &MangoSim) {
    let deal: u64 = cb.deal_id.parse().unwrap_or(0);
    println!("\n   deal {} · callback {}", cb.deal_id, cb.id);
    println!("     result        {}", cb.status);
    if let Some(g) = &cb.group_kind {
        println!(
            "     group         {g} ({})",
            cb.group_extension.as_deref().unwrap_or("not rung")
        );
    }
    if let Some(p) = &cb.phone {
        println!("     client phone  {}", crate::phone::mask(p));
    }
    if let Some(cmd) = &cb.command_id {
        let sent = mango
            .callbacks()
            .iter()
            .any(|c| c["command_id"] == cmd.as_str());
        println!(
            "     mango         command_id {cmd} · {}",
            if sent {
                "accepted (1000)"
            } else {
                "not accepted"
            }
        );
    }
    if let Some(e) = &cb.error {
        if cb.status != Status::Started {
            println!("     why           {e}");
        }
    }
    if let Some(o) = &cb.call_outcome {
        println!(
            "     outcome       {o} · manager {} · talk {} s",
            cb.manager_extension.as_deref().unwrap_or("-"),
            cb.talk_seconds.unwrap_or(0)
        );
        let text =
            crate::callback::outcome_report::outcome_text(cb, None, 30, crate::portal::Lang::Ru);
        if b24.timeline_comments(&cb.member_id, deal).contains(&text) {
            println!("     outcome note  {text}");
        }
    }
    // The comment this callback wrote, if the simulated portal has it.
    let ours = crate::callback::report::comment_text(cb, reason, crate::portal::Lang::Ru);
    if b24.timeline_comments(&cb.member_id, deal).contains(&ours) {
        println!("     timeline      {ours}");
    }
}
