//! Firing the robot calls open-loop (each at its scheduled time or all at once, whatever the
//! earlier ones are doing, with a bound on the HTTP requests in flight), and waiting until the
//! app has finished and reported every callback.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use tokio::sync::Semaphore;

use super::BenchPortal;
use crate::callback::Callback;
use crate::db::schema::callbacks;
use crate::db::DbConnection;
use crate::sandbox::bitrix::{BitrixSim, RobotCallStyle};

/// One signed robot call, built before the clock starts so that firing costs only the POST.
pub(super) struct Shot {
    /// Index into the run's portals.
    pub portal: usize,
    pub url: String,
    pub body: String,
    pub event_token: String,
}

/// How the app answered one robot call.
#[derive(Debug, Clone)]
pub(super) struct Ack {
    pub portal: usize,
    pub event_token: String,
    pub sent: Instant,
    pub acked: Instant,
    /// HTTP status, or why no answer came.
    pub status: Result<u16, String>,
}

/// What the firing produced: the acks in firing order, the lone call's, and the start instant
/// (with the wall clock at that instant, to place the database's timestamps).
pub(super) struct Fired {
    pub acks: Vec<Ack>,
    pub lone: Option<Ack>,
    pub started: Instant,
    pub started_wall: chrono::NaiveDateTime,
}

/// `calls` robot calls spread round-robin over `portals`, each on a new deal whose contact has a
/// phone of its own (the real lookup path, and no two calls look like duplicates).
pub(super) fn prepare_shots(
    b24: &BitrixSim,
    portals: &[BenchPortal],
    calls: u32,
) -> anyhow::Result<Vec<Shot>> {
    let mut shots = Vec::with_capacity(calls as usize);
    for i in 0..calls as usize {
        let portal = i % portals.len();
        let member_id = &portals[portal].sim.member_id;
        let phone = format!("+7 900 {:07}", i % 10_000_000);
        let contact = b24.add_contact(member_id, &[("MOBILE", phone.as_str())]);
        let deal = b24.add_deal(member_id, Some(contact));
        let (url, body, event_token) = b24
            .robot_call_body(
                member_id,
                super::ROBOT,
                deal,
                &[],
                RobotCallStyle::default(),
            )
            .ok_or_else(|| anyhow::anyhow!("no robot registered on {member_id}"))?;
        shots.push(Shot {
            portal,
            url,
            body,
            event_token,
        });
    }
    Ok(shots)
}

/// Fires `shots` (at `rate` per second, or at once) with at most `concurrency` in flight, and
/// the `lone` shot on its own after its delay; returns when every one has been answered.
pub(super) async fn fire(
    shots: Vec<Shot>,
    lone: Option<(Duration, Shot)>,
    rate: Option<f64>,
    concurrency: usize,
) -> Fired {
    let client = awc::Client::builder()
        .connector(awc::Connector::new().conn_keep_alive(crate::context::IDLE_CONNECTION_REUSE))
        .timeout(Duration::from_secs(120))
        .finish();
    let started = Instant::now();
    let started_wall = chrono::Utc::now().naive_utc();
    let lone_task = lone.map(|(after, shot)| {
        let client = client.clone();
        actix_web::rt::spawn(async move {
            tokio::time::sleep_until((started + after).into()).await;
            post(&client, shot).await
        })
    });
    let slots = std::sync::Arc::new(Semaphore::new(concurrency));
    let acks: Rc<RefCell<Vec<Option<Ack>>>> = Rc::new(RefCell::new(vec![None; shots.len()]));
    let mut tasks = Vec::with_capacity(shots.len());
    for (i, shot) in shots.into_iter().enumerate() {
        if let Some(rate) = rate {
            let at = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break; // never closed
        };
        let (client, acks) = (client.clone(), acks.clone());
        tasks.push(actix_web::rt::spawn(async move {
            let ack = post(&client, shot).await;
            drop(permit);
            acks.borrow_mut()[i] = Some(ack);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let lone = match lone_task {
        Some(t) => t.await.ok(),
        None => None,
    };
    let acks = acks.borrow_mut().drain(..).flatten().collect();
    Fired {
        acks,
        lone,
        started,
        started_wall,
    }
}

async fn post(client: &awc::Client, shot: Shot) -> Ack {
    let sent = Instant::now();
    let answer = client
        .post(&shot.url)
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
        .send_body(shot.body)
        .await;
    let status = match answer {
        // The body is read so that the connection goes back to the pool.
        Ok(mut resp) => {
            let _ = resp.body().await;
            Ok(resp.status().as_u16())
        }
        Err(e) => Err(e.to_string()),
    };
    Ack {
        portal: shot.portal,
        event_token: shot.event_token,
        sent,
        acked: Instant::now(),
        status,
    }
}

/// Every callback row (the bench's database holds only the bench's).
pub(super) fn all_callbacks(c: &mut DbConnection) -> QueryResult<Vec<Callback>> {
    callbacks::table.select(Callback::as_select()).load(c)
}

/// Callbacks that reached a terminal status and were reported (event sent, comment added).
fn count_reported(c: &mut DbConnection) -> QueryResult<(i64, i64)> {
    let all = callbacks::table.count().get_result(c)?;
    let done = callbacks::table
        .filter(callbacks::event_sent_at.is_not_null())
        .filter(callbacks::comment_added_at.is_not_null())
        .count()
        .get_result(c)?;
    Ok((all, done))
}

/// Waits until `expected` callbacks are reported, as the simulated Bitrix24 saw it and then as
/// the app recorded it; past `deadline` fails loudly. The database is read only once the
/// simulator has every report: polling it ten times a second cost PostgreSQL's server several
/// seconds of the CPU the app under test needs, and on SQLite took turns among its writers.
pub(super) async fn wait_until_reported(
    shared: &crate::context::Shared,
    b24: &crate::sandbox::bitrix::BitrixSim,
    expected: usize,
    deadline: Instant,
    timeout: Duration,
) -> anyhow::Result<()> {
    loop {
        let (sends, comments) = b24.reports_received();
        let detail = if sends.min(comments) >= expected {
            let (all, done) = shared.db.read(count_reported).await?;
            if done as usize >= expected {
                return Ok(());
            }
            format!("{done} of {expected} robot calls recorded as finished and reported ({all} callbacks recorded)")
        } else {
            format!(
                "the simulated Bitrix24 received {sends} bizproc.event.send and {comments} \
                 timeline comments of {expected}"
            )
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out {} s after the first robot call was fired: {detail}; the run is stuck or \
             slower than --timeout-secs allows",
            timeout.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
