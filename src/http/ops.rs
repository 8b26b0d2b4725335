//! The operator's endpoints: `GET /health` for load balancers and systemd-style probes, and
//! `GET /metrics` for Prometheus. Both are cheap (one short query each) and say nothing secret.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret as _;

use crate::context::Context;
use crate::error::AppError;
use crate::jobs::{queue, worker::STALLED_AFTER};
use crate::metrics::{QueueDepth, CONTENT_TYPE};

/// The longest `/health` and `/metrics` wait for the database. A pool whose database is gone
/// waits 10 s for a connection; a probe must answer well within a balancer's timeout.
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /health`: 200 `{"status":"ok"}` when the database answers and the job worker has polled
/// the queue within [`STALLED_AFTER`]; otherwise 503 with the reasons. Unauthenticated: it
/// tells a balancer whether to send traffic here, and carries only fixed texts and numbers.
pub async fn health(ctx: web::Data<Context>) -> HttpResponse {
    let shared = &ctx.shared;
    let db = shared.db.clone();
    let database = tokio::time::timeout(DB_CHECK_TIMEOUT, db.run(crate::db::database_now)).await;
    let database_ok = matches!(database, Ok(Ok(_)));
    let silent = shared.heartbeat.silent_for(shared.clock.now());
    let mut reasons = Vec::new();
    if !database_ok {
        reasons.push("database unreachable".to_owned());
    }
    if silent > STALLED_AFTER {
        reasons.push(format!("worker stalled for {} s", silent.as_secs()));
    }
    let body = serde_json::json!({
        "status": if reasons.is_empty() { "ok" } else { "unavailable" },
        "reason": reasons.join("; "),
        "database": if database_ok { "ok" } else { "unreachable" },
        "worker_last_poll_seconds_ago": silent.as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if reasons.is_empty() {
        HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(body)
    } else {
        tracing::warn!(reason = %reasons.join("; "), "health check failed; answered 503");
        HttpResponse::ServiceUnavailable()
            .insert_header(("Cache-Control", "no-store"))
            .json(body)
    }
}

/// `GET /metrics`: this instance's counters and the shared queue's depth, in Prometheus text
/// format. Served only to a request bearing `APP_METRICS_TOKEN` (404 while it is unset): the
/// numbers tell how much business the app does, which is nobody else's affair, and a bearer
/// token works through any proxy, where an address rule would see only the proxy.
pub async fn metrics(req: HttpRequest, ctx: web::Data<Context>) -> Result<HttpResponse, AppError> {
    let shared = &ctx.shared;
    let Some(token) = shared.settings.metrics_token.as_ref() else {
        return Err(AppError::NotFound(
            "metrics are off: set APP_METRICS_TOKEN and scrape with it as a bearer token".into(),
        ));
    };
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        None => {
            return Err(AppError::Unauthorized(
                "metrics need an Authorization: Bearer token".into(),
            ))
        }
        Some(p)
            if !crate::crypto::constant_time_eq(p.as_bytes(), token.expose_secret().as_bytes()) =>
        {
            return Err(AppError::Unauthorized("wrong metrics bearer token".into()))
        }
        Some(_) => {}
    }
    // One query. Ages are measured on the app's clock, the one `run_at` is written with.
    let read = shared.db.run(queue::depth);
    // Without the database the counters are still worth serving; the queue's series are left out.
    let depth = match tokio::time::timeout(DB_CHECK_TIMEOUT, read).await {
        Ok(Ok(rows)) => Some(
            rows.into_iter()
                .map(|(status, count, earliest_run_at)| QueueDepth {
                    status,
                    count,
                    earliest_run_at,
                })
                .collect::<Vec<_>>(),
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: the queue's depth could not be read");
            None
        }
        Err(_) => {
            tracing::warn!("metrics: the queue's depth could not be read in time");
            None
        }
    };
    let page = shared.metrics.render(
        depth.as_deref(),
        shared.db.sqlite_writers(),
        shared.clock.now(),
    );
    Ok(HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .insert_header(("Cache-Control", "no-store"))
        .body(page))
}
