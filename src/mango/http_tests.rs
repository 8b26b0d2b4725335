//! The client against a real local HTTP server: what goes on the wire, and how transport
//! failures are classified. The answer parsing itself is covered in `answer.rs`.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

use super::*;

/// What the fake Mango saw: path, Content-Type, body.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

async fn record(req: HttpRequest, body: web::Bytes, seen: web::Data<Seen>) -> HttpResponse {
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.lock().expect("test mutex").push((
        req.path().to_owned(),
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    ));
    match req.path() {
        "/vpbx/commands/callback_group" => HttpResponse::Ok()
            .insert_header(("X-Uuid", "uuid-42"))
            .body(r#"{"result":1000}"#),
        "/vpbx/groups" => HttpResponse::Ok()
            .body(r#"{"result":1000,"groups":[{"id":1,"name":"Experienced","extension":"001"}]}"#),
        "/vpbx/incominglines" => HttpResponse::Ok().body(
            r#"{"result":1000,"lines":[{"line_id":5,"number":"74951234567","name":"Main","region":"sip-uac"}]}"#,
        ),
        "/slow/commands/callback_group" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            HttpResponse::Ok().body(r#"{"result":1000}"#)
        }
        _ => HttpResponse::Found()
            .insert_header(("Location", "/vpbx/commands/callback_group"))
            .finish(),
    }
}

/// Starts the fake on a free port; returns its address and what it records.
fn spawn_fake() -> (String, Seen, actix_web::dev::ServerHandle) {
    let seen: Seen = Arc::default();
    let data = web::Data::new(seen.clone());
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("bound").port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(record))
    })
    .workers(1)
    .listen(listener)
    .expect("listen")
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (format!("http://127.0.0.1:{port}"), seen, handle)
}

fn creds() -> Credentials {
    Credentials::new("test-key", "test-salt")
}

fn command() -> CallbackGroup {
    CallbackGroup {
        command_id: "cbk1".into(),
        from: "1234".into(),
        to: "74955404444".into(),
        line_number: "74951234567".into(),
    }
}

#[actix_web::test]
async fn callback_group_posts_the_signed_form_and_returns_the_uuid() {
    let (base, seen, handle) = spawn_fake();
    let client = MangoClient::new(
        crate::context::http_client(),
        &format!("{base}/vpbx/"),
        Duration::from_secs(5),
    );

    let accepted = client
        .callback_group(&creds(), &command())
        .await
        .expect("accepted");
    assert_eq!(accepted.x_uuid.as_deref(), Some("uuid-42"));

    let json =
        r#"{"command_id":"cbk1","from":"1234","to":"74955404444","line_number":"74951234567"}"#;
    let seen = seen.lock().expect("test mutex").clone();
    assert_eq!(
        seen,
        vec![(
            "/vpbx/commands/callback_group".to_owned(),
            "application/x-www-form-urlencoded".to_owned(),
            form_body(&creds(), json),
        )]
    );
    assert!(seen[0]
        .2
        .contains("&sign=18ea23c77f72359c5fe78bf40ad7be189cdc69b1db8a99e89cbb509c11f6f280&"));
    handle.stop(false).await;
}

#[actix_web::test]
async fn groups_and_lines_are_listed() {
    let (base, _seen, handle) = spawn_fake();
    let client = MangoClient::new(
        crate::context::http_client(),
        &format!("{base}/vpbx"),
        Duration::from_secs(5),
    );

    let groups = client.groups(&creds()).await.expect("groups");
    assert_eq!(
        groups,
        vec![Group {
            id: Some(1),
            name: "Experienced".into(),
            extension: "001".into()
        }]
    );
    let lines = client.incoming_lines(&creds()).await.expect("lines");
    assert_eq!(
        lines,
        vec![Line {
            number: "74951234567".into(),
            name: "Main".into(),
            region: Some("sip-uac".into())
        }]
    );
    handle.stop(false).await;
}

#[actix_web::test]
async fn a_redirect_is_not_followed() {
    let (base, seen, handle) = spawn_fake();
    let client = MangoClient::new(
        crate::context::http_client(),
        &format!("{base}/moved/"),
        Duration::from_secs(5),
    );

    let err = client
        .callback_group(&creds(), &command())
        .await
        .expect_err("redirect");
    assert!(matches!(err, MangoError::Protocol(_)), "{err:?}");
    assert_eq!(
        seen.lock().expect("test mutex").len(),
        1,
        "the order was posted once"
    );
    handle.stop(false).await;
}

#[actix_web::test]
async fn a_refused_connection_is_safe_to_retry() {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("bound")
        .port();
    // The listener is dropped here, so the port refuses connections.
    let client = MangoClient::new(
        crate::context::http_client(),
        &format!("http://127.0.0.1:{port}/vpbx/"),
        Duration::from_secs(5),
    );
    let err = client
        .callback_group(&creds(), &command())
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            MangoError::Unavailable {
                maybe_accepted: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.retryable());
}

#[actix_web::test]
async fn a_timeout_after_sending_may_have_been_accepted() {
    let (base, seen, handle) = spawn_fake();
    let client = MangoClient::new(
        crate::context::http_client(),
        &format!("{base}/slow/"),
        Duration::from_millis(300),
    );

    let err = client
        .callback_group(&creds(), &command())
        .await
        .expect_err("timeout");
    assert!(
        matches!(
            err,
            MangoError::Unavailable {
                maybe_accepted: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.retryable());
    assert_eq!(seen.lock().expect("test mutex").len(), 1);
    handle.stop(false).await;
}
