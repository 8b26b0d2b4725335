//! The simulator checks what it receives: its own tests.

use actix_web::{web, HttpResponse};

use super::php_form::*;
use super::*;

async fn sim_with(opts: BitrixSimOptions) -> BitrixSim {
    BitrixSim::start(opts).await.expect("sim starts")
}

async fn sim() -> BitrixSim {
    sim_with(BitrixSimOptions::default()).await
}

fn client() -> awc::Client {
    awc::Client::builder().disable_redirects().finish()
}

async fn read(
    mut resp: awc::ClientResponse<
        impl futures_util::Stream<Item = Result<web::Bytes, awc::error::PayloadError>> + Unpin,
    >,
) -> (u16, Value) {
    let status = resp.status().as_u16();
    let bytes = resp.body().await.expect("body");
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("json answer")
    };
    (status, v)
}

async fn post_json(url: &str, body: Value) -> (u16, Value) {
    read(client().post(url).send_json(&body).await.expect("send")).await
}

async fn post_form_body(url: &str, body: String) -> (u16, Value) {
    let req = client()
        .post(url)
        .insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"));
    read(req.send_body(body).await.expect("send")).await
}

async fn get(url: &str) -> (u16, Value) {
    read(client().get(url).send().await.expect("send")).await
}

async fn rest(p: &SimPortal, method: &str, token: &str, params: Value) -> (u16, Value) {
    let mut body = params;
    body["auth"] = json!(token);
    post_json(&format!("{}{}", p.client_endpoint, method), body).await
}

fn refresh_form(refresh_token: &str, secret: &str) -> String {
    encode_pairs(
        &[
            ("grant_type".into(), "refresh_token".into()),
            ("client_id".into(), SANDBOX_CLIENT_ID.into()),
            ("client_secret".into(), secret.into()),
            ("refresh_token".into(), refresh_token.into()),
        ],
        true,
    )
}

fn robot_fields(handler: &str) -> Value {
    json!({
        "CODE": "mango_callback",
        "HANDLER": handler,
        "AUTH_USER_ID": 1,
        "USE_SUBSCRIPTION": "Y",
        "NAME": {"ru": "Звонок", "en": "Callback"},
        "PROPERTIES": {"extension": {"Name": "Group", "Type": "string"}},
        "RETURN_PROPERTIES": {"call_status": {"Name": "Status", "Type": "string"}},
        "DOCUMENT_TYPE": ["crm", "CCrmDocumentDeal", "DEAL"],
    })
}

/// A tiny app stand-in that records every body POSTed to it.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let got: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    super::super::serve(listener, move |cfg| {
        let sink = sink.clone();
        cfg.default_service(web::to(move |body: web::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&body).into_owned());
                HttpResponse::Ok().body("OK")
            }
        }));
    })
    .expect("listen");
    (format!("http://127.0.0.1:{port}"), got)
}

#[actix_web::test]
async fn a_reused_refresh_token_is_rejected_with_invalid_grant() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    let first = sim.login(&p.member_id, 1);
    let token_url = format!("{}/oauth/token/", sim.url());

    let (status, body) = post_form_body(
        &token_url,
        refresh_form(&first.refresh_token, SANDBOX_CLIENT_SECRET),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("token_type").is_none());
    assert_eq!(body["member_id"], json!(p.member_id));
    assert_eq!(body["scope"], json!(SANDBOX_SCOPE));
    assert_eq!(body["user_id"], json!(1));
    assert!(body["expires"].is_i64());
    assert_eq!(body["client_endpoint"], json!(p.client_endpoint));
    assert_eq!(body["server_endpoint"], json!(sim.server_endpoint()));
    let second = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();

    // the chain is single-use: same refresh token again (this time by GET) fails
    let url = format!(
        "{token_url}?{}",
        refresh_form(&first.refresh_token, SANDBOX_CLIENT_SECRET)
    );
    let (status, body) = get(&url).await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("invalid_grant"))
    );
    // and the access token issued with the used refresh token is dead
    let (status, body) = rest(&p, "user.admin", &first.access_token, json!({})).await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("invalid_token"))
    );
    let (status, body) = rest(&p, "user.admin", &second, json!({})).await;
    assert_eq!((status, body["result"].clone()), (200, json!(true)));
    assert_eq!(sim.refresh_count(&p.member_id), 1);
    assert_eq!(sim.rejections("invalid_grant"), 1);
}

#[actix_web::test]
async fn a_wrong_client_secret_is_rejected_with_invalid_client() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    let auth = sim.login(&p.member_id, 1);
    let token_url = format!("{}/oauth/token/", sim.url());
    let (status, body) =
        post_form_body(&token_url, refresh_form(&auth.refresh_token, "nope")).await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("invalid_client"))
    );
    // the refresh token was not consumed by the rejected attempt
    let (status, _) = post_form_body(
        &token_url,
        refresh_form(&auth.refresh_token, SANDBOX_CLIENT_SECRET),
    )
    .await;
    assert_eq!(status, 200);
    let form = "grant_type=authorization_code&client_id=app.sandbox0000000001.00000001\
                &client_secret=sandbox-client-secret-0123456789abcdef&code=x";
    let (status, body) = post_form_body(&token_url, form.to_string()).await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("invalid_request"))
    );
    let calls = sim.calls_to("oauth.token");
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].error.as_deref(), Some("invalid_client"));
    assert_eq!(calls[0].member_id.as_deref(), Some(p.member_id.as_str()));
}

#[actix_web::test]
async fn an_expired_access_token_answers_401_expired_token() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    let other = sim.create_portal("other");
    let auth = sim.login(&p.member_id, 1);
    let (status, body) = rest(&p, "user.admin", &auth.access_token, json!({})).await;
    assert_eq!((status, body["result"].clone()), (200, json!(true)));
    assert!(body["time"].is_object());

    let (status, body) = rest(&other, "user.admin", &auth.access_token, json!({})).await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("invalid_token"))
    );
    let (status, body) = rest(&p, "user.admin", "bogus", json!({})).await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("NO_AUTH_FOUND"))
    );

    sim.expire_access_tokens(&p.member_id);
    let (status, body) = get(&format!(
        "{}user.admin.json?auth={}",
        p.client_endpoint, auth.access_token
    ))
    .await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("expired_token"))
    );
    let (status, body) = get(&format!(
        "{}/rest/app.info?auth={}",
        sim.url(),
        auth.access_token
    ))
    .await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("expired_token"))
    );
    // a fresh login works again
    let fresh = sim.login(&p.member_id, 1);
    let (status, _) = rest(&p, "user.admin", &fresh.access_token, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(sim.rejections("expired_token"), 2);
}

#[actix_web::test]
async fn the_oauth_server_app_info_describes_the_installation() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    sim.add_user(&p.member_id, 7, false);
    let auth = sim.login(&p.member_id, 7);
    let (status, body) = get(&format!(
        "{}app.info?auth={}",
        sim.server_endpoint(),
        auth.access_token
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    let r = &body["result"];
    assert_eq!(r["client_id"], json!(SANDBOX_CLIENT_ID));
    assert_eq!(r["user_id"], json!(7));
    assert_eq!(r["install"]["member_id"], json!(p.member_id));
    assert_eq!(r["install"]["domain"], json!(p.domain));
    assert_eq!(r["install"]["uri"], json!(format!("https://{}/", p.domain)));
    let (status, body) = get(&format!("{}app.info?auth=unknown", sim.server_endpoint())).await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("invalid_token"))
    );
    let (_, body) = rest(&p, "user.admin", &auth.access_token, json!({})).await;
    assert_eq!(body["result"], json!(false));
    assert_eq!(sim.calls_to("oauth.app.info").len(), 2);
}

#[actix_web::test]
async fn the_rate_limit_answers_503_query_limit_exceeded_after_the_burst() {
    let sim = sim_with(BitrixSimOptions {
        burst: 5,
        drain_per_sec: 1.0,
        ..BitrixSimOptions::default()
    })
    .await;
    let p = sim.create_portal("acme");
    let auth = sim.login(&p.member_id, 1);
    for _ in 0..5 {
        let (status, _) = rest(&p, "user.admin", &auth.access_token, json!({})).await;
        assert_eq!(status, 200);
    }
    let (status, body) = rest(&p, "user.admin", &auth.access_token, json!({})).await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"})
    );
    assert_eq!(sim.rejections("QUERY_LIMIT_EXCEEDED"), 1);
    // the bucket drains: one slot frees up after a second
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let (status, _) = rest(&p, "user.admin", &auth.access_token, json!({})).await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn injected_faults_answer_with_the_real_error_codes() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    let auth = sim.login(&p.member_id, 1);
    sim.fail_next(&p.member_id, 1, Fault::QueryLimit);
    sim.fail_next(&p.member_id, 1, Fault::Internal);
    sim.fail_next(&p.member_id, 1, Fault::OperationTimeLimit);
    let mut got = Vec::new();
    for _ in 0..4 {
        let (status, body) = rest(&p, "user.admin", &auth.access_token, json!({})).await;
        got.push((status, body["error"].as_str().unwrap_or("").to_string()));
    }
    let expected: Vec<(u16, String)> = vec![
        (503, "QUERY_LIMIT_EXCEEDED".into()),
        (500, "INTERNAL_SERVER_ERROR".into()),
        (429, "OPERATION_TIME_LIMIT".into()),
        (200, String::new()),
    ];
    assert_eq!(got, expected);
}

#[actix_web::test]
async fn robot_add_validates_fields_and_rejects_a_second_install() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    sim.add_user(&p.member_id, 2, false);
    let admin = sim.login(&p.member_id, 1).access_token;
    let user = sim.login(&p.member_id, 2).access_token;
    let good = robot_fields("https://app.example.com/robot");

    let (status, body) = rest(&p, "bizproc.robot.add", &user, good.clone()).await;
    assert_eq!(
        (status, body["error"].clone()),
        (403, json!("ACCESS_DENIED"))
    );

    let bad_cases = [
        (
            "CODE",
            json!("bad code!"),
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
        ),
        ("CODE", json!(""), "ERROR_ACTIVITY_VALIDATION_FAILURE"),
        ("NAME", json!(""), "ERROR_ACTIVITY_VALIDATION_FAILURE"),
        (
            "HANDLER",
            json!("ftp://app.example.com/"),
            "ERROR_UNSUPPORTED_PROTOCOL",
        ),
        (
            "HANDLER",
            json!("http://localhost/robot"),
            "ERROR_WRONG_HANDLER_URL",
        ),
        (
            "PROPERTIES",
            json!({"1phone": {"Name": "x"}}),
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
        ),
        (
            "PROPERTIES",
            json!({"phone": {"Type": "string"}}),
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
        ),
        (
            "RETURN_PROPERTIES",
            json!({"bad-key": {"Name": "x"}}),
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
        ),
        (
            "DOCUMENT_TYPE",
            json!(["crm", "CCrmDocumentDeal"]),
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
        ),
    ];
    for (key, value, code) in bad_cases {
        let mut fields = good.clone();
        fields[key] = value.clone();
        let (status, body) = rest(&p, "bizproc.robot.add", &admin, fields).await;
        assert_eq!(
            (status, body["error"].clone()),
            (400, json!(code)),
            "{key}={value}"
        );
        assert!(body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()));
    }

    // lower-case keys are accepted: the core upper-cases top-level keys
    let lower: Map<String, Value> = good
        .as_object()
        .expect("object")
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let (status, body) = rest(&p, "bizproc.robot.add", &admin, Value::Object(lower)).await;
    assert_eq!(
        (status, body["result"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let (status, body) = rest(&p, "bizproc.robot.add", &admin, good.clone()).await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("ERROR_ACTIVITY_ALREADY_INSTALLED"))
    );
    let (_, body) = rest(&p, "bizproc.robot.list", &admin, json!({})).await;
    assert_eq!(body["result"], json!(["mango_callback"]));

    let update =
        json!({"CODE": "mango_callback", "FIELDS": {"HANDLER": "https://app.example.com/v2"}});
    let (status, _) = rest(&p, "bizproc.robot.update", &admin, update).await;
    assert_eq!(status, 200);
    let robots = sim.robots(&p.member_id);
    assert_eq!(robots[0].1["HANDLER"], json!("https://app.example.com/v2"));
    let missing = json!({"CODE": "nope", "FIELDS": {"NAME": "x"}});
    let (status, body) = rest(&p, "bizproc.robot.update", &admin, missing).await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("ERROR_ACTIVITY_NOT_FOUND"))
    );

    // a PHP-style form body works the same way
    let form = format!(
        "auth={admin}&CODE=second&HANDLER=https%3A%2F%2Fapp.example.com%2Fr\
         &NAME=Second&PROPERTIES%5Bphone%5D%5BName%5D=Phone\
         &DOCUMENT_TYPE[0]=crm&DOCUMENT_TYPE[1]=CCrmDocumentDeal&DOCUMENT_TYPE[2]=DEAL"
    );
    let (status, body) =
        post_form_body(&format!("{}bizproc.robot.add", p.client_endpoint), form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sim.robots(&p.member_id).len(), 2);
}

#[actix_web::test]
async fn batch_substitution_returns_the_contact_of_the_deal() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    let token = sim.login(&p.member_id, 1).access_token;
    let contact = sim.add_contact(&p.member_id, &[("MOBILE", "+7 (900) 123-45-67")]);
    let deal = sim.add_deal(&p.member_id, Some(contact));

    // raw JSON: commands run in the order sent, "d" before "c" (serde_json::Map would sort them)
    let raw = format!(
        r#"{{"halt":0,"cmd":{{"d":"crm.deal.contact.items.get?id={deal}",
        "c":"crm.contact.get?id=$result[d][0][CONTACT_ID]",
        "g":"crm.deal.get?id={deal}",
        "x":"crm.contact.get?id=$result%5Bg%5D%5BCONTACT_ID%5D",
        "n":"batch?cmd[a]=user.admin","m":"no.such.method"}},"auth":"{token}"}}"#
    );
    let resp = client()
        .post(format!("{}batch", p.client_endpoint))
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .send_body(raw)
        .await
        .expect("send");
    let (status, body) = read(resp).await;
    assert_eq!(status, 200, "{body}");
    let r = &body["result"];
    assert_eq!(r["result"]["d"][0]["CONTACT_ID"], json!(contact));
    assert_eq!(r["result"]["d"][0]["IS_PRIMARY"], json!("Y"));
    assert_eq!(r["result"]["c"]["ID"], json!(contact.to_string()), "{body}");
    assert_eq!(
        r["result"]["c"]["PHONE"][0]["VALUE"],
        json!("+7 (900) 123-45-67")
    );
    assert_eq!(r["result"]["c"]["PHONE"][0]["VALUE_TYPE"], json!("MOBILE"));
    assert_eq!(r["result"]["g"]["CONTACT_ID"], json!(contact.to_string()));
    assert_eq!(r["result"]["x"]["ID"], json!(contact.to_string()));
    assert_eq!(
        r["result_error"]["n"]["error"],
        json!("ERROR_BATCH_METHOD_NOT_ALLOWED")
    );
    assert_eq!(
        r["result_error"]["m"]["error"],
        json!("ERROR_METHOD_NOT_FOUND")
    );
    assert_eq!(r["result_total"], json!([]));

    // no errors → result_error is PHP's empty array
    let cmd = json!({"u": "user.admin"});
    let (_, body) = rest(&p, "batch", &token, json!({"halt": 0, "cmd": cmd})).await;
    assert_eq!(body["result"]["result_error"], json!([]));

    let many: Map<String, Value> = (0..51)
        .map(|i| (format!("k{i}"), json!("user.admin")))
        .collect();
    let (status, body) = rest(&p, "batch", &token, json!({"cmd": many})).await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("ERROR_BATCH_LENGTH_EXCEEDED"))
    );

    // a deal without contacts: no CONTACT_ID, and unknown ids are "Not found"
    let lonely = sim.add_deal(&p.member_id, None);
    let (_, body) = rest(&p, "crm.deal.get", &token, json!({"id": lonely})).await;
    assert_eq!(body["result"]["CONTACT_ID"], Value::Null);
    let (status, body) = rest(&p, "crm.contact.get", &token, json!({"id": 999})).await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "", "error_description": "Not found"}))
    );
}

#[actix_web::test]
async fn a_form_encoded_batch_keeps_its_command_order_and_substitutes_results() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    let token = sim.login(&p.member_id, 1).access_token;
    let contact = sim.add_contact(&p.member_id, &[("WORK", "+74950000000")]);
    let deal = sim.add_deal(&p.member_id, Some(contact));
    let pairs: Vec<(String, String)> = vec![
        ("halt".into(), "1".into()),
        (
            "cmd[z]".into(),
            format!("crm.deal.contact.items.get?id={deal}"),
        ),
        (
            "cmd[a]".into(),
            "crm.contact.get?id=$result[z][0][CONTACT_ID]".into(),
        ),
        ("cmd[b]".into(), "crm.contact.get?id=0".into()),
        ("cmd[c]".into(), "user.admin".into()),
    ];
    let url = format!("{}batch.json?auth={token}", p.client_endpoint);
    let (status, body) = post_form_body(&url, encode_pairs(&pairs, true)).await;
    assert_eq!(status, 200, "{body}");
    let r = &body["result"];
    assert_eq!(r["result"]["a"]["PHONE"][0]["VALUE"], json!("+74950000000"));
    assert_eq!(r["result_error"]["b"]["error"], json!(""));
    // halt=1 stops after the first error
    assert!(r["result"].get("c").is_none(), "{body}");
    let calls = sim.calls_to("batch");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].auth.as_deref(), Some(token.as_str()));
}

#[actix_web::test]
async fn timeline_comments_need_lower_case_fields_and_an_existing_deal() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    let token = sim.login(&p.member_id, 1).access_token;
    let deal = sim.add_deal(&p.member_id, None);
    let upper = json!({"FIELDS": {"ENTITY_ID": deal, "ENTITY_TYPE": "deal", "COMMENT": "hi"}});
    let (status, _) = rest(&p, "crm.timeline.comment.add", &token, upper).await;
    assert_eq!(status, 400);
    let missing = json!({"fields": {"ENTITY_ID": 999, "ENTITY_TYPE": "deal", "COMMENT": "hi"}});
    let (status, _) = rest(&p, "crm.timeline.comment.add", &token, missing).await;
    assert_eq!(status, 400);
    let ok = json!({"fields": {"ENTITY_ID": deal, "ENTITY_TYPE": "deal", "COMMENT": "Called"}});
    let (status, body) = rest(&p, "crm.timeline.comment.add", &token, ok).await;
    assert_eq!(status, 200);
    assert!(body["result"].is_u64());
    assert_eq!(
        sim.timeline_comments(&p.member_id, deal),
        vec!["Called".to_string()]
    );
}

#[actix_web::test]
async fn a_robot_call_reaches_the_handler_and_only_its_event_token_is_accepted() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    let (app, got) = receiver().await;
    let token = sim.login(&p.member_id, 1).access_token;
    let (status, _) = rest(
        &p,
        "bizproc.robot.add",
        &token,
        robot_fields(&format!("{app}/robot")),
    )
    .await;
    assert_eq!(status, 200);
    let deal = sim.add_deal(&p.member_id, None);

    let fired = sim
        .fire_robot(
            &p.member_id,
            "mango_callback",
            deal,
            &[("extension", "101")],
        )
        .await
        .expect("robot fired");
    assert_eq!(fired.status, 200);
    let body = got.lock().expect("lock")[0].clone();
    assert!(
        body.contains(&format!("document_id[2]=DEAL_{deal}")),
        "{body}"
    );
    let parsed = parse_php(&body).expect("php form");
    let doc = as_list(&parsed["document_id"]).expect("document_id list");
    assert_eq!(
        doc,
        vec![
            json!("crm"),
            json!("CCrmDocumentDeal"),
            json!(format!("DEAL_{deal}"))
        ]
    );
    assert_eq!(parsed["properties"]["extension"], json!("101"));
    assert_eq!(parsed["event_token"], json!(fired.event_token));
    assert_eq!(parsed["use_subscription"], json!("Y"));
    assert_eq!(
        parsed["auth"]["application_token"],
        json!(p.application_token)
    );
    assert_eq!(parsed["auth"]["member_id"], json!(p.member_id));
    let robot_token = parsed["auth"]["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    assert!(parsed["auth"]["refresh_token"].is_string());

    // percent-encoded and old-core variants
    let style = RobotCallStyle {
        percent_encoded_brackets: true,
        old_core: true,
    };
    let (_, old, _) = sim
        .robot_call_body(&p.member_id, "mango_callback", deal, &[], style)
        .expect("robot registered");
    assert!(old.contains("document_id%5B2%5D=DEAL_"));
    let old = parse_php(&old).expect("php form");
    assert!(old.get("document_type").is_none());
    assert!(old["auth"].get("refresh_token").is_none());
    assert!(sim
        .robot_call_body(&p.member_id, "nope", deal, &[], style)
        .is_none());

    let send = json!({"EVENT_TOKEN": fired.event_token, "RETURN_VALUES": {"call_status": "ok", "undeclared": 1}});
    let (status, body) = rest(&p, "bizproc.event.send", &robot_token, send.clone()).await;
    assert_eq!((status, body["result"].clone()), (200, json!(true)));
    // answering twice is still "true" (the core drops it silently)
    let (status, _) = rest(&p, "bizproc.event.send", &robot_token, send).await;
    assert_eq!(status, 200);
    let forged = json!({"EVENT_TOKEN": "1.2|A1|abc.def", "RETURN_VALUES": {}});
    let (status, body) = rest(&p, "bizproc.event.send", &robot_token, forged).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        json!({"error": "ACCESS_DENIED", "error_description": "Access denied!"})
    );
    let sends = sim.event_sends(&p.member_id);
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[0]["RETURN_VALUES"]["call_status"], json!("ok"));
    assert_eq!(
        sends[0]["RETURN_VALUES"].get("undeclared"),
        None,
        "a value the robot did not declare never reaches the business process"
    );
}

#[actix_web::test]
async fn bound_events_are_delivered_and_app_update_rotates_the_application_token() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    let (app, got) = receiver().await;
    let token = sim.login(&p.member_id, 1).access_token;
    for event in ["onAppUpdate", "ONAPPUNINSTALL"] {
        let bind = json!({"event": event, "handler": format!("{app}/event")});
        let (status, _) = rest(&p, "event.bind", &token, bind.clone()).await;
        assert_eq!(status, 200);
        let (status, body) = rest(&p, "event.bind", &token, bind).await;
        assert_eq!(
            (status, body),
            (
                400,
                json!({"error": "", "error_description": "Handler already binded"})
            )
        );
    }
    assert_eq!(sim.bound_events(&p.member_id)[0].0, "ONAPPUPDATE");
    let (_, body) = rest(
        &p,
        "bizproc.robot.add",
        &token,
        robot_fields(&format!("{app}/r")),
    )
    .await;
    assert_eq!(body["result"], json!(true));

    let statuses = sim
        .send_event(
            &p.member_id,
            "ONAPPUPDATE",
            &[("VERSION", "2"), ("PREVIOUS_VERSION", "1")],
        )
        .await
        .expect("delivered");
    assert_eq!(statuses, vec![200]);
    assert!(sim.robots(&p.member_id).is_empty());
    let rotated = sim.application_token(&p.member_id);
    assert_ne!(rotated, p.application_token);
    let update = parse_php(&got.lock().expect("lock")[0]).expect("form");
    assert_eq!(update["event"], json!("ONAPPUPDATE"));
    assert_eq!(update["data"]["VERSION"], json!("2"));
    assert_eq!(update["auth"]["application_token"], json!(rotated));
    assert!(update["auth"]["refresh_token"].is_string());

    let statuses = sim
        .send_event(&p.member_id, "ONAPPUNINSTALL", &[("CLEAN", "1")])
        .await
        .expect("delivered");
    assert_eq!(statuses, vec![200]);
    let uninstall = parse_php(&got.lock().expect("lock")[1]).expect("form");
    let mut keys: Vec<String> = uninstall["auth"]
        .as_object()
        .expect("auth")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "application_token",
            "client_endpoint",
            "domain",
            "member_id",
            "server_endpoint"
        ]
    );
    assert!(sim.bound_events(&p.member_id).is_empty());
    let (status, _) = rest(&p, "user.admin", &token, json!({})).await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn a_renamed_portal_redirects_the_old_endpoint_with_302() {
    let sim = sim().await;
    let p = sim.create_portal("old");
    let token = sim.login(&p.member_id, 1).access_token;
    sim.rename_portal(&p.member_id, "new");
    let resp = client()
        .post(format!("{}user.admin?auth={token}", p.client_endpoint))
        .send_json(&json!({}))
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 302);
    let location = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("location")
        .to_string();
    assert_eq!(
        location,
        format!("{}/p/new/rest/user.admin?auth={token}", sim.url())
    );
    let (status, body) = get(&location).await;
    assert_eq!((status, body["result"].clone()), (200, json!(true)));
    assert_eq!(sim.portal(&p.member_id).domain, "new.bitrix24.test");
    // The OAuth server vouches for the new endpoint, which is how the app confirms a rename.
    let (status, info) = get(&format!("{}app.info?auth={token}", sim.server_endpoint())).await;
    assert_eq!(status, 200);
    assert_eq!(
        info["result"]["install"]["client_endpoint"],
        json!(format!("{}/p/new/rest/", sim.url()))
    );
}

#[actix_web::test]
async fn iframe_and_install_payloads_carry_working_tokens() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    let iframe = sim.iframe_request(&p.member_id, 1, "DEFAULT", "ru");
    assert!(iframe.query_string().contains("DOMAIN=acme.bitrix24.test"));
    assert_eq!(iframe.form_value("member_id"), Some(p.member_id.as_str()));
    let body = parse_php(&iframe.to_form_body()).expect("form");
    assert_eq!(body["APPLICATION_TOKEN"], json!(p.application_token));
    let token = iframe.form_value("AUTH_ID").expect("AUTH_ID");
    let (status, _) = rest(&p, "user.admin", token, json!({})).await;
    assert_eq!(status, 200);

    let install = parse_php(&sim.onappinstall_body(&p.member_id)).expect("form");
    assert_eq!(install["event"], json!("ONAPPINSTALL"));
    assert_eq!(
        install["auth"]["application_token"],
        json!(p.application_token)
    );
    let refresh = install["auth"]["refresh_token"].as_str().expect("refresh");
    let url = format!(
        "{}/oauth/token/?{}",
        sim.url(),
        refresh_form(refresh, SANDBOX_CLIENT_SECRET)
    );
    let (status, _) = get(&url).await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn event_test_needs_an_admin_and_delivers_onapptest_after_answering() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    sim.add_user(&p.member_id, 7, false);
    let (app, got) = receiver().await;
    let admin = sim.login(&p.member_id, 1).access_token;
    let manager = sim.login(&p.member_id, 7).access_token;
    let bind = json!({"event": "ONAPPTEST", "handler": format!("{app}/events")});
    let (status, _) = rest(&p, "event.bind", &manager, bind.clone()).await;
    assert_eq!(status, 403, "event.bind requires an administrator");
    let (status, _) = rest(&p, "event.bind", &admin, bind).await;
    assert_eq!(status, 200);

    let (status, body) = rest(&p, "event.test", &manager, json!({"any": "data"})).await;
    assert_eq!(
        (status, body["error"].clone()),
        (403, json!("ACCESS_DENIED"))
    );
    // Before installFinish() Bitrix24 answers but delivers no event.
    let (status, _) = rest(&p, "event.test", &admin, json!({})).await;
    assert_eq!(status, 200);
    sim.settle().await;
    assert!(sim.deliveries(&p.member_id).is_empty());
    assert_eq!(
        sim.finish_install(&p.member_id),
        0,
        "no ONAPPINSTALL handler bound"
    );
    let (status, body) = rest(&p, "event.test", &admin, json!({"any": "data"})).await;
    assert_eq!((status, body["result"].clone()), (200, json!(true)));
    sim.settle().await;
    let deliveries = sim.deliveries(&p.member_id);
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].event, "ONAPPTEST");
    assert_eq!(deliveries[0].status, Some(200));
    let event = parse_php(&got.lock().expect("lock")[0]).expect("form");
    assert_eq!(event["event"], json!("ONAPPTEST"));
    assert_eq!(event["data"]["QUERY"]["any"], json!("data"));
    assert_eq!(
        event["auth"]["application_token"],
        json!(p.application_token)
    );
    assert_eq!(event["auth"]["member_id"], json!(p.member_id));
    assert_eq!(event["auth"]["user_id"], json!("1"));
    assert!(event["auth"].get("refresh_token").is_none());

    // An unreachable app: the delivery is recorded without a status.
    sim.set_app_unreachable(true);
    rest(&p, "event.test", &admin, json!({})).await;
    sim.settle().await;
    assert_eq!(sim.deliveries(&p.member_id)[1].status, None);
    assert_eq!(got.lock().expect("lock").len(), 1);
}

#[actix_web::test]
async fn install_finish_delivers_onappinstall_with_the_admins_full_auth() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    sim.set_iframe_application_token(&p.member_id, false);
    let iframe = sim.iframe_request(&p.member_id, 1, "DEFAULT", "ru");
    assert_eq!(iframe.form_value("APPLICATION_TOKEN"), None);
    assert_eq!(
        sim.finish_install(&p.member_id),
        0,
        "nothing bound, nothing sent"
    );
    let (app, got) = receiver().await;
    let admin = sim.login(&p.member_id, 1).access_token;
    let bind = json!({"event": "ONAPPINSTALL", "handler": format!("{app}/install")});
    rest(&p, "event.bind", &admin, bind).await;
    assert_eq!(sim.finish_install(&p.member_id), 1);
    assert!(sim.install_finished(&p.member_id));
    sim.settle().await;
    let event = parse_php(&got.lock().expect("lock")[0]).expect("form");
    assert_eq!(event["event"], json!("ONAPPINSTALL"));
    assert_eq!(event["data"]["INSTALLED"], json!("Y"));
    let auth = event["auth"].as_object().expect("auth");
    for key in [
        "access_token",
        "refresh_token",
        "expires_in",
        "member_id",
        "domain",
        "client_endpoint",
        "server_endpoint",
        "user_id",
        "application_token",
    ] {
        assert!(
            auth.get(key)
                .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty())),
            "{key}"
        );
    }
    assert_eq!(auth["application_token"], json!(p.application_token));
    assert_eq!(auth["user_id"], json!("1"));
    let (status, _) = rest(
        &p,
        "user.admin",
        auth["access_token"].as_str().unwrap_or(""),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "the delivered token works");
}

#[actix_web::test]
async fn an_unavailable_oauth_server_answers_503_until_it_is_back() {
    let sim = sim().await;
    let p = sim.create_portal("acme");
    let auth = sim.login(&p.member_id, 1);
    sim.set_oauth_unavailable(true);
    let url = format!(
        "{}app.info?auth={}",
        sim.server_endpoint(),
        auth.access_token
    );
    assert_eq!(get(&url).await.0, 503);
    let token_url = format!("{}/oauth/token/", sim.url());
    let form = refresh_form(&auth.refresh_token, SANDBOX_CLIENT_SECRET);
    assert_eq!(post_form_body(&token_url, form.clone()).await.0, 503);
    // The portal's REST API is a different server and keeps answering.
    let (status, _) = rest(&p, "user.admin", &auth.access_token, json!({})).await;
    assert_eq!(status, 200);
    sim.set_oauth_unavailable(false);
    assert_eq!(get(&url).await.0, 200);
    assert_eq!(
        post_form_body(&token_url, form).await.0,
        200,
        "the refresh token was not used up"
    );
}

#[actix_web::test]
async fn random_peer_faults_hit_the_configured_share_of_rest_calls_and_never_look_like_the_rate_limit(
) {
    use crate::sandbox::faults::{FaultPlan, PeerFault};
    let sim = sim().await;
    let p = sim.create_portal("acme");
    let auth = sim.login(&p.member_id, 1);
    sim.set_faults(FaultPlan {
        kinds: vec![PeerFault::Unavailable, PeerFault::Internal],
        ..FaultPlan::new(0.5, 11)
    });
    let mut failed = 0;
    for _ in 0..40 {
        let resp = client()
            .post(format!("{}user.admin", p.client_endpoint))
            .send_json(&json!({"auth": auth.access_token}))
            .await
            .expect("send");
        if !resp.status().is_success() {
            assert!([500, 503].contains(&resp.status().as_u16()));
            failed += 1;
        }
    }
    let (status, _) = get(&format!(
        "{}/rest/app.info?auth={}",
        sim.url(),
        auth.access_token
    ))
    .await;
    assert_eq!(status, 200, "the OAuth server is never faulted");
    let counts = sim.fault_counts();
    assert_eq!(counts.requests, 40, "only portal REST calls are drawn for");
    assert_eq!(counts.total(), failed);
    assert!((10..=30).contains(&failed), "{counts}");
    assert_eq!(sim.rejections("QUERY_LIMIT_EXCEEDED"), 0);
    assert_eq!(
        sim.calls_to("user.admin").len(),
        40 - failed,
        "faulted calls never reached the portal"
    );
}
