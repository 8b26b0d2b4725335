//! The operator's view: `GET /health` (database reachable, job worker polling) and `GET /metrics`
//! (Prometheus text format, behind `APP_METRICS_TOKEN`), checked against what the simulated
//! Bitrix24 and Mango received.

use std::time::Duration;

use mango_callback::db::Backend;
use mango_callback::sandbox::mango::Reply;
use serde_json::Value;

use crate::exposition::{parse_exposition, Scrape};
use crate::helpers::{spawn_app, spawn_app_tweaked, TestApp, MANGO_KEY};
use crate::on_both_backends;

const TOKEN: &str = "metrics-token-for-the-tests-0001";
const ROBOT: &str = "mango_callback";

async fn get(app: &TestApp, path: &str, bearer: Option<&str>) -> (u16, String, String) {
    let mut req = app.http.get(format!("{}{path}", app.base));
    if let Some(t) = bearer {
        req = req.insert_header(("Authorization", format!("Bearer {t}")));
    }
    let mut resp = req.send().await.expect("request reaches the app");
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.body().limit(1 << 20).await.expect("body");
    (
        resp.status().as_u16(),
        ctype,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn health(app: &TestApp) -> (u16, Value) {
    let (status, _, body) = get(app, "/health", None).await;
    (
        status,
        serde_json::from_str(&body).expect("health answers JSON"),
    )
}

async fn scrape(app: &TestApp) -> Scrape {
    let (status, ctype, body) = get(app, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    Scrape(parse_exposition(&body))
}

async fn app_with_metrics(backend: Backend) -> TestApp {
    spawn_app_tweaked(backend, |s| s.metrics_token = Some(TOKEN.into())).await
}

async fn health_is_ok_while_the_database_answers_and_the_worker_polls(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = health(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "ok");
    let text = body.to_string();
    assert!(
        !text.contains(&app.db_url) && !text.contains("postgres") && !text.contains("sqlite"),
        "no database address or kind: {text}"
    );

    // Within the bound a quiet worker is still alive.
    app.advance(Duration::from_secs(30));
    assert_eq!(health(&app).await.0, 200);
}
on_both_backends!(health_is_ok_while_the_database_answers_and_the_worker_polls);

async fn health_is_503_naming_a_stalled_worker_until_it_polls_again(backend: Backend) {
    let app = spawn_app(backend).await;
    // The tests' worker is `drain`: nobody polls while the clock moves 90 s on.
    app.advance(Duration::from_secs(90));
    let (status, body) = health(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["database"], "ok");
    let reason = body["reason"].as_str().expect("a reason");
    let secs: u64 = reason
        .strip_prefix("worker stalled for ")
        .and_then(|r| r.strip_suffix(" s"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`worker stalled for N s`: {reason}"));
    assert!((90..100).contains(&secs), "{reason}");

    app.drain().await;
    let (status, body) = health(&app).await;
    assert_eq!(status, 200, "a worker that polls again is alive: {body}");
}
on_both_backends!(health_is_503_naming_a_stalled_worker_until_it_polls_again);

/// PostgreSQL only: SQLite is a file inside the process and cannot be taken away like this.
#[actix_web::test]
async fn health_is_503_naming_the_database_while_it_is_unreachable_and_metrics_still_answer() {
    let test =
        "ops::health_is_503_naming_the_database_while_it_is_unreachable_and_metrics_still_answer";
    if !crate::helpers::can_run_on(Backend::Postgres, test) {
        return;
    }
    let app = app_with_metrics(Backend::Postgres).await;
    assert!(scrape(&app).await.has("mango_callback_jobs"));

    crate::peer_failures::set_database_down(&app, true);
    let (status, body) = health(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "database unreachable");
    assert_eq!(body["database"], "unreachable");
    assert!(!body.to_string().contains(&app.db_url), "{body}");
    let m = scrape(&app).await;
    assert!(
        !m.has("mango_callback_jobs") && !m.has("mango_callback_oldest_due_job_age_seconds"),
        "a queue that cannot be read is left out, not shown as empty"
    );

    crate::peer_failures::set_database_down(&app, false);
    let (status, body) = health(&app).await;
    assert_eq!(
        status, 200,
        "healthy again once the database is back: {body}"
    );
}

async fn metrics_count_robot_calls_mango_commands_rest_calls_refreshes_and_the_queue(
    backend: Backend,
) {
    let app = app_with_metrics(backend).await;
    let p = app.installed_portal("metrics").await;
    app.drain().await;
    let queued_before = scrape(&app)
        .await
        .sum("mango_callback_jobs", &[("status", "queued")]);

    // A robot call not yet worked on: the queue's gauges see it, and its wait grows.
    let deal = app
        .robot_call_accepted(&p.member_id, "+7 900 123-45-67")
        .await;
    app.advance(Duration::from_secs(30));
    let m = scrape(&app).await;
    assert_eq!(
        m.sum("mango_callback_jobs", &[("status", "queued")]),
        queued_before + 1.0
    );
    let age = m.sum("mango_callback_oldest_due_job_age_seconds", &[]);
    assert!((30.0..60.0).contains(&age), "oldest due job age {age}");

    // Its run needs a token refresh first, then rings.
    app.b24.expire_access_tokens(&p.member_id);
    app.drain().await;
    assert_eq!(app.mango.callbacks().len(), 1);
    // The same deal again within the duplicate window; a deal Mango refuses (3102); a caller
    // with a wrong application token.
    app.b24
        .fire_robot(&p.member_id, ROBOT, deal, &[])
        .await
        .expect("robot");
    app.mango.push_reply(MANGO_KEY, Reply::Result(3102));
    let refused_deal = app.b24.add_deal(&p.member_id, None);
    app.b24
        .fire_robot(
            &p.member_id,
            ROBOT,
            refused_deal,
            &[("phone", "+7 900 123-45-68")],
        )
        .await
        .expect("robot");
    let (status, _) = app
        .post_form(
            "/b24/robot",
            format!(
                "auth%5Bmember_id%5D={}&auth%5Bapplication_token%5D=not-ours",
                p.member_id
            ),
        )
        .await;
    assert_eq!(status, 401);
    app.drain().await;

    let m = scrape(&app).await;
    let robot = |r| m.sum("mango_callback_robot_calls_total", &[("result", r)]);
    assert_eq!(
        (robot("queued"), robot("duplicate"), robot("refused")),
        (2.0, 1.0, 1.0)
    );
    let mango = |r| m.sum("mango_callback_mango_commands_total", &[("result", r)]);
    assert_eq!((mango("1000"), mango("3102")), (1.0, 1.0));
    assert_eq!(m.sum("mango_callback_mango_commands_total", &[]), 2.0);

    // Every REST request the portal received is counted under its method, whatever its status.
    let rest: Vec<_> = app
        .b24
        .calls()
        .into_iter()
        .filter(|c| !c.method.starts_with("oauth."))
        .collect();
    assert!(!rest.is_empty());
    for method in ["batch", "bizproc.event.send", "user.admin"] {
        let received = rest.iter().filter(|c| c.method == method).count() as f64;
        assert_eq!(
            m.sum("mango_callback_rest_calls_total", &[("method", method)]),
            received,
            "{method}"
        );
    }
    assert_eq!(
        m.sum("mango_callback_rest_calls_total", &[]),
        rest.len() as f64
    );
    assert_eq!(
        m.sum("mango_callback_rest_calls_total", &[("status", "401")]),
        1.0,
        "the call with the expired token"
    );
    assert_eq!(app.b24.refresh_count(&p.member_id), 1);
    assert_eq!(
        m.sum("mango_callback_token_refreshes_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        m.sum(
            "mango_callback_job_run_seconds_count",
            &[("kind", "place_call"), ("outcome", "done")]
        ),
        2.0
    );
    assert!(m.sum("mango_callback_job_run_seconds_sum", &[]) > 0.0);
    // Drained, but for each started call's outcome bound (due when the portal's wait is over).
    let bounds = app
        .shared
        .db
        .run(mango_callback::jobs::queue::all)
        .await
        .expect("jobs")
        .iter()
        .filter(|j| j.status == "queued" && j.kind == "close_unknown_outcome")
        .count();
    assert_eq!(bounds, 2, "one per started call");
    assert_eq!(
        m.sum("mango_callback_jobs", &[("status", "queued")]),
        queued_before + bounds as f64,
        "drained"
    );
    assert_eq!(m.sum("mango_callback_oldest_due_job_age_seconds", &[]), 0.0);
    // Labels come from fixed sets only: no portal, no deal, no phone.
    let keys: std::collections::BTreeSet<&str> =
        m.0.iter()
            .flat_map(|s| s.labels.keys().map(String::as_str))
            .collect();
    let allowed = [
        "kind", "le", "limit", "method", "outcome", "result", "status", "writer",
    ];
    assert!(keys.iter().all(|k| allowed.contains(k)), "{keys:?}");
    assert!(
        !m.0.iter()
            .flat_map(|s| s.labels.values())
            .any(|v| v.contains(&p.member_id) || v.contains("900")),
        "no portal or phone in a label"
    );
}
on_both_backends!(metrics_count_robot_calls_mango_commands_rest_calls_refreshes_and_the_queue);

/// The worker's write transactions one callback costs on an idle portal, from the robot call to
/// its report, with the tests' `drain` (each of its rounds claims, and hurries the gathered
/// jobs). Each is a durable commit (a disk sync) of SQLite's one writer. 14 before the Mango
/// command's answer and the job's ending shared one.
const WORKER_COMMITS_PER_CALLBACK: f64 = 13.0;

async fn metrics_show_how_busy_sqlites_one_writer_is_and_a_callback_costs_few_commits(
    backend: Backend,
) {
    let app = app_with_metrics(backend).await;
    let p = app.installed_portal("writer").await;
    app.drain().await;
    let before = scrape(&app).await;
    let writes =
        |m: &Scrape, w: &str| m.sum("mango_callback_sqlite_writes_total", &[("writer", w)]);
    let held = |m: &Scrape, w: &str| {
        m.sum(
            "mango_callback_sqlite_write_held_seconds_total",
            &[("writer", w)],
        )
    };
    if backend == Backend::Postgres {
        assert!(
            !before
                .0
                .iter()
                .any(|s| s.name.starts_with("mango_callback_sqlite_")),
            "PostgreSQL has no single writer to show"
        );
        return;
    }
    app.robot_call_accepted(&p.member_id, "+7 900 123-45-67")
        .await;
    let acked = scrape(&app).await;
    assert_eq!(
        writes(&acked, "group_commit") - writes(&before, "group_commit"),
        1.0,
        "the robot call's acknowledgement: one shared transaction"
    );
    assert!(held(&acked, "group_commit") > held(&before, "group_commit"));
    app.drain().await;
    assert_eq!(app.mango.callbacks().len(), 1);
    assert_eq!(app.b24.event_sends(&p.member_id).len(), 1, "reported");
    let after = scrape(&app).await;
    let commits = writes(&after, "other") - writes(&acked, "other");
    assert!(
        (1.0..=WORKER_COMMITS_PER_CALLBACK).contains(&commits),
        "{commits} worker commits for one callback"
    );
    assert!(held(&after, "other") > held(&acked, "other"));
    // Counters only grow: a later scrape never shows less.
    let again = scrape(&app).await;
    assert!(writes(&again, "other") >= writes(&after, "other"));
    assert!(again
        .0
        .iter()
        .any(|s| s.name == "mango_callback_sqlite_write_wait_seconds_total"));
}
on_both_backends!(metrics_show_how_busy_sqlites_one_writer_is_and_a_callback_costs_few_commits);

async fn metrics_count_waits_for_the_bitrix_budget_and_for_mango_slots(backend: Backend) {
    // A budget of one request, refilled 20 times a second: the installer's requests queue for it.
    let app = spawn_app_tweaked(backend, |s| {
        s.metrics_token = Some(TOKEN.into());
        s.b24_burst = 1;
    })
    .await;
    let p = app.installed_portal("waits").await;
    app.drain().await;
    let m = scrape(&app).await;
    assert!(
        m.sum(
            "mango_callback_limit_waits_total",
            &[("limit", "bitrix_budget")]
        ) >= 1.0
    );

    // Mango takes 4 commands a second per account: the fifth of five at once waits.
    for i in 0..5 {
        let deal = app.b24.add_deal(&p.member_id, None);
        let phone = format!("+7 900 123-45-6{i}");
        app.b24
            .fire_robot(&p.member_id, ROBOT, deal, &[("phone", phone.as_str())])
            .await
            .expect("robot");
    }
    app.drain().await;
    assert_eq!(
        app.mango.callbacks().len(),
        4,
        "the fifth snoozes for its slot"
    );
    app.drain_over_time(Duration::from_millis(100), 50).await;
    assert_eq!(app.mango.callbacks().len(), 5);
    let m = scrape(&app).await;
    assert!(
        m.sum(
            "mango_callback_limit_waits_total",
            &[("limit", "mango_slot")]
        ) >= 1.0,
        "the fifth command waited for a slot"
    );
    assert_eq!(
        m.sum("mango_callback_mango_commands_total", &[("result", "1000")]),
        5.0
    );
}
on_both_backends!(metrics_count_waits_for_the_bitrix_budget_and_for_mango_slots);

#[actix_web::test]
async fn metrics_are_off_without_a_token_and_refused_without_the_right_bearer() {
    let app = spawn_app(Backend::Sqlite).await;
    let (status, _, body) = get(&app, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, 404, "off until APP_METRICS_TOKEN is set: {body}");
    assert!(body.contains("APP_METRICS_TOKEN"), "{body}");

    let app = app_with_metrics(Backend::Sqlite).await;
    for (bearer, why) in [
        (None, "no token"),
        (Some("metrics-token-for-the-tests-0002"), "a wrong token"),
        (Some(&TOKEN[..20]), "a prefix of the token"),
    ] {
        let (status, _, body) = get(&app, "/metrics", bearer).await;
        assert_eq!(status, 401, "{why}: {body}");
        assert!(
            !body.contains(TOKEN) && !body.contains("mango_callback_"),
            "{body}"
        );
    }
    let mut resp = app
        .http
        .get(format!("{}/metrics", app.base))
        .insert_header(("Authorization", format!("Basic {TOKEN}")))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401, "only a bearer token counts");
    let _ = resp.body().await;
    assert!(scrape(&app).await.has("mango_callback_jobs"));
}

/// The real background worker (the tests' apps have none): its loop beats the heartbeat on its
/// own, so a clock moved past the bound comes back to healthy without anybody draining.
#[actix_web::test]
async fn the_background_worker_keeps_health_ok_by_polling_on_its_own() {
    use mango_callback::sandbox::LocalSettings as _;
    use mango_callback::startup::{Application, RunOptions};

    mango_callback::telemetry::init("warn");
    let (db_url, _guard) = crate::helpers::fresh_database(Backend::Sqlite);
    let clock = mango_callback::clock::Clock::system();
    // No portal, so no job ever calls these.
    let settings = mango_callback::config::Settings::for_local(
        &db_url,
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
    );
    let app = Application::build(
        settings,
        RunOptions {
            background_worker: true,
            clock: clock.clone(),
            http_workers: 1,
            ..RunOptions::default()
        },
    )
    .await
    .expect("app builds");
    let (base, shared, stopper) = (
        format!("http://127.0.0.1:{}", app.port()),
        app.shared().clone(),
        app.stopper(),
    );
    let running = actix_web::rt::spawn(app.run_until_stopped());
    let http = awc::Client::default();

    clock.advance(Duration::from_secs(90));
    // The worker polls at least every 2 s; a wake-up makes it poll now. The bound is for a slow
    // machine: the loop ends at the first healthy answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        shared.notify.notify_one();
        let status = http
            .get(format!("{base}/health"))
            .send()
            .await
            .expect("health answers")
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never polled again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stopper.stop().await;
    let _ = running.await;
}
