//! `mango-callback sandbox`: the app against simulated Bitrix24 and Mango on local ports, with a
//! scripted demo (install, settings, first and second run, a duplicate pair, a deal without a phone)
//! and a readable trace of each callback. The same simulators serve the tests.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::bitrix::{BitrixSim, BitrixSimOptions, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET};
use super::mango::{CallScenario, Delivery, MangoSim, MangoSimOptions};
use super::seed::{seed_mango, MangoAccount};
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
        // The demo runs on the real clock: a retry minutes later would leave its calls
        // unfinished, so each call is played once and ends in its outcome.
        s.retry_no_answer_times = 0;
        s.retry_client_times = 0;
    })
    .await?;
    println!("-- settings saved: trainees 002, experienced 001, line {LINE}, no retries");
    // How the simulated calls go: a trainee who answers and talks, experienced managers who
    // do not answer, and one client who does not pick up.
    mango.set_scenario(
        ACCOUNT.trainees,
        CallScenario::Answered {
            manager: "101".into(),
            talk_seconds: 133,
        },
    );
    mango.set_scenario(
        ACCOUNT.experienced,
        CallScenario::NobodyAnswers {
            managers: vec!["201".into(), "202".into()],
        },
    );
    mango.set_scenario(
        "79120001122",
        CallScenario::ClientMissed {
            manager: "102".into(),
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
    println!("-- deal {deal_c}: no contact linked (no call after the wait)");
    b24.fire_robot(m, "mango_callback", deal_c, &[])
        .await
        .map_err(anyhow::Error::msg)?;
    wait_until_reported(&shared, m, 5).await?;

    println!("\n-- Mango plays the calls: signed events/call and events/summary to {base}/mango");
    for i in 0..mango.callbacks().len() {
        if let Err(e) = mango
            .play(&format!("{base}/mango"), ACCOUNT.key, i, Delivery::InOrder)
            .await
        {
            println!("   call {i}: events not delivered ({e})");
        }
    }
    wait_for_outcomes(&shared, m, mango.callbacks().len()).await?;

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
    println!("\n== trace");
    for cb in &log {
        let reason = reports
            .iter()
            .find(|r| r.callback_id == cb.id)
            .and_then(|r| r.reason.as_ref());
        print_trace(cb, reason, &b24, &mango);
    }
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
