//! The chaos world: simulators in this process, the real app binary as child processes on a
//! fresh database, portals installed over HTTP, a burst of robot calls, and the exactly-once
//! verdict over what the simulators received.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::process::{AppProcess, Database};
use mango_callback::config::Settings;
use mango_callback::db::Backend;
use mango_callback::sandbox::bitrix::{BitrixSim, BitrixSimOptions, RobotCallStyle, SimPortal};
use mango_callback::sandbox::mango::{MangoSim, MangoSimOptions};
use mango_callback::sandbox::seed::{seed_mango, MangoAccount};
use mango_callback::sandbox::LocalSettings;
use mango_callback::startup::{Application, RunOptions};

/// A whole number from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// `CHAOS_FULL=1`: the sizes instead of the CI ones.
pub fn full() -> bool {
    std::env::var("CHAOS_FULL").is_ok_and(|v| v.trim() == "1")
}

/// One robot call the load fired.
#[derive(Clone, Debug)]
pub struct Fired {
    pub event_token: String,
    /// The app answered 200: Bitrix24 now waits for exactly one `bizproc.event.send`.
    pub acknowledged: bool,
    /// The client's number, digits only, when the deal has one (it should ring once).
    pub phone: Option<String>,
}

/// Simulators, portals and the database of one scenario.
pub struct World {
    pub b24: BitrixSim,
    pub mango: MangoSim,
    pub db: Database,
    pub portals: Vec<SimPortal>,
    keys: Vec<String>,
}

impl World {
    pub async fn new(backend: Backend) -> World {
        let b24 = BitrixSim::start(BitrixSimOptions::default())
            .await
            .expect("Bitrix24 simulator");
        let mango = MangoSim::start(MangoSimOptions::default())
            .await
            .expect("Mango simulator");
        // Real peers take time to answer; without it every job is over in milliseconds and a
        // kill never finds one running.
        let latency = Duration::from_millis(env_usize("CHAOS_LATENCY_MS", 200) as u64);
        b24.set_latency(latency);
        mango.set_latency(latency / 2);
        World {
            b24,
            mango,
            db: Database::fresh(backend),
            portals: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// Installs `n` portals through `app` (each with its own Mango account), then saves their
    /// Mango settings through an in-process app on the same database (no worker, not serving).
    pub async fn install_portals(&mut self, app: &AppProcess, n: usize) {
        let http = awc::Client::default();
        for i in 0..n {
            let portal = self.b24.create_portal(&format!("chaos{i}"));
            let req =
                self.b24
                    .iframe_request(&portal.member_id, portal.admin_user_id, "DEFAULT", "ru");
            let resp = http
                .post(format!("{}/b24/install?{}", app.base(), req.query_string()))
                .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
                .send_body(req.to_form_body())
                .await
                .expect("installer answers");
            assert_eq!(resp.status().as_u16(), 200, "install of portal {i}");
            self.portals.push(portal);
            self.keys.push(format!("chaos-key-{i}"));
        }
        let settings = Settings::for_local(&self.db.url, &self.b24.url(), &self.mango.api_url());
        let seeder = Application::build(
            settings,
            RunOptions {
                background_worker: false,
                ..RunOptions::default()
            },
        )
        .await
        .expect("seeding app");
        for (portal, key) in self.portals.iter().zip(&self.keys) {
            let account = MangoAccount {
                key,
                salt: "chaos-salt",
                line: "74951234567",
                trainees: "002",
                experienced: "001",
            };
            // A deal without a phone gives up after 5 s instead of a minute.
            seed_mango(
                seeder.shared(),
                &self.mango,
                account,
                &portal.member_id,
                |s| {
                    s.contact_wait_seconds = 5;
                },
            )
            .await
            .expect("settings saved");
        }
    }

    /// Fires `calls` robot calls spread over the portals, `CHAOS_RATE` a second (10), at most
    /// `parallel` at a time, at the instances' `bases` in turn: every 10th deal has no phone, every 7th is called twice at once.
    pub async fn burst(&self, bases: &[String], calls: usize, parallel: usize) -> Vec<Fired> {
        let mut plan = Vec::new();
        let mut i = 0;
        while plan.len() < calls {
            let p = i % self.portals.len();
            let member = self.portals[p].member_id.clone();
            let phone = (i % 10 != 9).then(|| format!("79{p:02}{i:07}"));
            let deal = self.b24.add_deal(&member, None);
            let times = if i % 7 == 3 { 2 } else { 1 };
            for _ in 0..times {
                plan.push((
                    member.clone(),
                    deal,
                    phone.clone(),
                    bases[plan.len() % bases.len()].clone(),
                ));
            }
            i += 1;
        }
        plan.truncate(calls);
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let mut tasks = Vec::new();
        // Paced like a busy portal, not all at one instant, so the kills land among the calls.
        let gap = Duration::from_secs(1).div_f64(env_usize("CHAOS_RATE", 10).max(1) as f64);
        for (member, deal, phone, base) in plan {
            tokio::time::sleep(gap).await;
            let b24 = self.b24.clone();
            let sem = sem.clone();
            tasks.push(actix_web::rt::spawn(async move {
                let _slot = sem.acquire().await;
                let props: Vec<(&str, &str)> = phone
                    .as_deref()
                    .map(|ph| vec![("phone", ph)])
                    .unwrap_or_default();
                let (url, body, event_token) = b24
                    .robot_call_body(
                        &member,
                        "mango_callback",
                        deal,
                        &props,
                        RobotCallStyle::default(),
                    )
                    .expect("robot registered");
                // Aimed at this instance: same path, its port.
                let path = url
                    .split_once("//")
                    .and_then(|(_, r)| r.split_once('/'))
                    .map_or("", |(_, p)| p);
                let acknowledged = awc::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .finish()
                    .post(format!("{base}/{path}"))
                    .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
                    .send_body(body)
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 200);
                Fired {
                    event_token,
                    acknowledged,
                    phone,
                }
            }));
        }
        let mut fired = Vec::new();
        for t in tasks {
            fired.push(t.await.expect("firing task"));
        }
        fired
    }

    /// Mango's side of an accepted command: `result/callback_group` with 1000 posted to the app
    /// at `base` (its `/mango` notification URL), retried each tick until the app answers 200.
    /// Stops when the returned guard drops.
    pub fn post_mango_results(&self, base: String) -> ResultsGuard {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let mango = self.mango.clone();
        let keys: HashMap<String, String> = self
            .portals
            .iter()
            .zip(&self.keys)
            .map(|(p, k)| (p.member_id.clone(), k.clone()))
            .collect();
        actix_web::rt::spawn(async move {
            let mut posted = std::collections::HashSet::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for c in mango.callbacks() {
                    let Some(id) = c["command_id"].as_str() else {
                        continue;
                    };
                    // b24:{member_id}:{deal}:{callback id}
                    let member = id.split(':').nth(1).unwrap_or_default();
                    let Some(key) = keys.get(member) else {
                        continue;
                    };
                    if posted.contains(id) {
                        continue;
                    }
                    let url = format!("{base}/mango");
                    if mango.post_result(&url, key, id, 1000).await == Ok(200) {
                        posted.insert(id.to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        ResultsGuard(stop)
    }

    /// Each event token's sends, as the `result` return value of each, in arrival order.
    fn sends_by_token(&self) -> HashMap<String, Vec<String>> {
        let mut by: HashMap<String, Vec<String>> = HashMap::new();
        for p in &self.portals {
            for s in self.b24.event_sends(&p.member_id) {
                let field = |name: &str| {
                    s.as_object()
                        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
                        .map(|(_, v)| v.clone())
                };
                let token = field("event_token")
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let result = field("return_values")
                    .and_then(|v| v.get("result").and_then(|r| r.as_str().map(str::to_owned)))
                    .unwrap_or_default();
                by.entry(token).or_default().push(result);
            }
        }
        by
    }

    fn rings_by_phone(&self) -> HashMap<String, usize> {
        let mut by = HashMap::new();
        for c in self.mango.callbacks() {
            let to: String = c["to"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            *by.entry(to).or_default() += 1;
        }
        by
    }

    /// Waits until every acknowledged call got its `bizproc.event.send`, at most `bound`.
    pub async fn wait_for_finals(&self, fired: &[Fired], bound: Duration) -> Duration {
        let started = Instant::now();
        while started.elapsed() < bound {
            let sends = self.sends_by_token();
            if fired
                .iter()
                .filter(|f| f.acknowledged)
                .all(|f| sends.contains_key(&f.event_token))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        started.elapsed()
    }

    /// The exactly-once verdict over what the simulators received.
    pub fn verdict(&self, fired: &[Fired]) -> Verdict {
        let sends = self.sends_by_token();
        let rings = self.rings_by_phone();
        let acked: Vec<&Fired> = fired.iter().filter(|f| f.acknowledged).collect();
        let mut deals_to_ring: HashMap<String, bool> = HashMap::new();
        for f in fired {
            if let Some(phone) = &f.phone {
                *deals_to_ring.entry(phone.clone()).or_default() |= f.acknowledged;
            }
        }
        Verdict {
            fired: fired.len(),
            acknowledged: acked.len(),
            finals_missing: acked
                .iter()
                .filter(|f| !sends.contains_key(&f.event_token))
                .count(),
            finals_repeated: sends.values().filter(|r| r.len() > 1).count(),
            finals_conflicting: sends
                .values()
                .filter(|r| r.iter().any(|x| *x != r[0]))
                .count(),
            rings_missing: deals_to_ring
                .iter()
                .filter(|(phone, acked)| **acked && !rings.contains_key(*phone))
                .count(),
            rings_doubled: rings.values().filter(|c| **c > 1).count(),
            mango_commands: self.mango.callbacks().len(),
            mango_429: self
                .mango
                .requests()
                .iter()
                .filter(|r| r.status == 429)
                .count(),
            query_limit_exceeded: self.b24.rejections("QUERY_LIMIT_EXCEEDED"),
        }
    }
}

/// Counts of one run; the scenario prints them and asserts the exactly-once ones are zero.
#[derive(Debug, Default)]
pub struct Verdict {
    pub fired: usize,
    pub acknowledged: usize,
    /// Acknowledged calls without a `bizproc.event.send`.
    pub finals_missing: usize,
    /// Event tokens sent more than once: a crash or a lost answer between Bitrix24 taking the
    /// send and the app recording it makes the app send again. Bitrix24 closes the robot on the
    /// first event and drops later ones silently (the platform reference, "Robot callbacks"), so
    /// the workflow still gets exactly one; counted and printed, not a failure.
    pub finals_repeated: usize,
    /// Event tokens whose sends disagree on the outcome: the workflow could have been told the
    /// wrong one. Must be zero.
    pub finals_conflicting: usize,
    /// Deals with an acknowledged call and a phone that Mango never got a command for.
    pub rings_missing: usize,
    /// Numbers Mango got two or more accepted commands for.
    pub rings_doubled: usize,
    pub mango_commands: usize,
    /// Mango answers "rate limit exceeded" (its 4 callbacks/s per account not held).
    pub mango_429: usize,
    pub query_limit_exceeded: usize,
}

impl Verdict {
    pub fn exactly_once(&self) -> bool {
        self.finals_missing == 0
            && self.finals_conflicting == 0
            && self.rings_missing == 0
            && self.rings_doubled == 0
    }
}

/// Stops [`World::post_mango_results`] when dropped.
pub struct ResultsGuard(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for ResultsGuard {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
