//! The Mango simulator checks what it receives: its own tests.

use super::server::is_phone_number;
use super::*;

const KEY: &str = "test-key";
const SALT: &str = "test-salt";
const GROUP_FIRST: &str =
    r#"{"command_id":"cbk1","from":"1234","to":"74955404444","line_number":"74951234567"}"#;

/// A simulator with one account, one group `1234` and one line `74951234567`.
async fn spawn_sim() -> MangoSim {
    spawn_sim_with(MangoSimOptions::default()).await
}

/// Like [`spawn_sim`], with rate limits high enough for tests that send many commands.
async fn spawn_roomy_sim() -> MangoSim {
    spawn_sim_with(MangoSimOptions {
        callback_limit_per_sec: 100,
        total_limit_per_sec: 100,
        ..MangoSimOptions::default()
    })
    .await
}

async fn spawn_sim_with(options: MangoSimOptions) -> MangoSim {
    let sim = MangoSim::start(options).await.expect("simulator starts");
    sim.add_account(KEY, SALT);
    sim.add_group(KEY, 10051250, "Managers", "1234");
    sim.add_group(KEY, 10051251, "Trainees", "002");
    sim.add_line(KEY, "74951234567", "Main line");
    sim
}

/// Posts a form the way the app's client does; returns the status, body and X-Uuid header.
async fn post_form(sim: &MangoSim, method: &str, fields: &[(&str, &str)]) -> (u16, Value) {
    let (status, body, uuid) = post_raw(sim, method, fields).await;
    assert!(
        uuid.is_some_and(|u| u.len() == 36),
        "every answer carries X-Uuid"
    );
    (status, serde_json::from_str(&body).expect("JSON answer"))
}

async fn post_raw(
    sim: &MangoSim,
    method: &str,
    fields: &[(&str, &str)],
) -> (u16, String, Option<String>) {
    let client = awc::Client::default();
    let mut response = client
        .post(format!("{}{method}", sim.api_url()))
        .send_form(&fields)
        .await
        .expect("simulator answers");
    let uuid = response
        .headers()
        .get("X-Uuid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.body().await.expect("body");
    (
        response.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
        uuid,
    )
}

async fn post_signed(sim: &MangoSim, method: &str, json: &str) -> (u16, Value) {
    let sign = sign(KEY, json, SALT);
    post_form(
        sim,
        method,
        &[("vpbx_api_key", KEY), ("sign", &sign), ("json", json)],
    )
    .await
}

fn callback_json(command_id: &str, from: &str, to: &str) -> String {
    json!({ "command_id": command_id, "from": from, "to": to, "line_number": "74951234567" })
        .to_string()
}

#[test]
fn signature_reproduces_the_official_php_test_vector() {
    let json = r#"{"command_id":"your-command-id","from":{"extension":"<extension>","number":""},"to_number":"<to_number>"}"#;
    assert_eq!(
        sign("<YOUR_API_KEY>", json, "<YOUR_API_SALT>"),
        "afdeb462cd5e0e422a9c9220390124608df06a4472cb1add6ebd6e24184bd15a"
    );
}

#[test]
fn signature_reproduces_the_callback_group_vector() {
    assert_eq!(
        sign(KEY, GROUP_FIRST, SALT),
        "18ea23c77f72359c5fe78bf40ad7be189cdc69b1db8a99e89cbb509c11f6f280"
    );
}

#[test]
fn phone_numbers_are_ten_to_fifteen_digits_only() {
    assert!(is_phone_number("7495540444"));
    assert!(is_phone_number("749554044412345"));
    assert!(!is_phone_number("749554044"));
    assert!(!is_phone_number("7495540444123456"));
    assert!(!is_phone_number("+74955404444"));
    assert!(!is_phone_number("7495 540444"));
}

#[actix_web::test]
async fn a_correctly_signed_callback_group_is_accepted_and_recorded() {
    let sim = spawn_sim().await;
    let (status, body) = post_signed(&sim, "commands/callback_group", GROUP_FIRST).await;
    assert_eq!((status, body), (200, json!({ "result": 1000 })));
    assert_eq!(
        sim.callbacks(),
        vec![serde_json::from_str::<Value>(GROUP_FIRST).expect("valid JSON")]
    );
    let requests = sim.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, "/vpbx/commands/callback_group");
    assert_eq!(request.api_key.as_deref(), Some(KEY));
    assert_eq!(request.json.as_deref(), Some(GROUP_FIRST));
    assert!(request.sign_valid);
    assert_eq!(request.status, 200);
}

#[actix_web::test]
async fn a_client_first_callback_is_accepted_too() {
    let sim = spawn_sim().await;
    let json = callback_json("cbk2", "74955404444", "1234");
    let (status, _) = post_signed(&sim, "commands/callback_group", &json).await;
    assert_eq!(status, 200);
    assert_eq!(sim.callbacks().len(), 1);
}

#[actix_web::test]
async fn a_bad_signature_is_answered_3102_and_a_second_bad_request_locks_the_account() {
    let sim = spawn_sim().await;
    let bad_sign = sign(KEY, GROUP_FIRST, "wrong-salt");
    let fields = [
        ("vpbx_api_key", KEY),
        ("sign", bad_sign.as_str()),
        ("json", GROUP_FIRST),
    ];
    let (status, body) = post_form(&sim, "commands/callback_group", &fields).await;
    assert_eq!((status, &body["result"]), (400, &json!(3102)));
    assert!(!sim.requests()[0].sign_valid);

    let (status, _) = post_form(&sim, "commands/callback_group", &fields).await;
    assert_eq!(
        status, 401,
        "the second invalid request within 2 minutes locks"
    );
    let (status, _) = post_signed(&sim, "commands/callback_group", GROUP_FIRST).await;
    assert_eq!(status, 401, "even a valid request is refused while locked");
    assert!(sim.callbacks().is_empty());

    sim.reset_lockout(KEY);
    let (status, _) = post_signed(&sim, "commands/callback_group", GROUP_FIRST).await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn an_unknown_key_is_answered_401_with_3105() {
    let sim = spawn_sim().await;
    let fields = [("vpbx_api_key", "nokey"), ("sign", "x"), ("json", "{}")];
    let (status, body) = post_form(&sim, "groups", &fields).await;
    assert_eq!((status, &body["result"]), (401, &json!(3105)));
}

#[actix_web::test]
async fn an_unknown_group_or_2_instead_of_002_is_rejected() {
    let sim = spawn_sim().await;
    for from in ["9999", "2"] {
        sim.reset_lockout(KEY);
        let json = callback_json("c", from, "74955404444");
        let (status, body) = post_signed(&sim, "commands/callback_group", &json).await;
        assert_eq!(
            (status, &body["result"]),
            (400, &json!(3300)),
            "from {from}"
        );
    }
    sim.reset_lockout(KEY);
    let json = callback_json("c", "002", "74955404444");
    let (status, _) = post_signed(&sim, "commands/callback_group", &json).await;
    assert_eq!(status, 200);
    assert_eq!(sim.callbacks().len(), 1);
}

#[actix_web::test]
async fn malformed_callback_payloads_get_mangos_codes() {
    let sim = spawn_roomy_sim().await;
    let long_id = "x".repeat(129);
    let cases: Vec<(String, u32)> = vec![
        ("not json".to_owned(), 3400),
        (r#"{"from":"1234","to":"74955404444"}"#.to_owned(), 3103),
        (
            r#"{"from":"1234","to":"74955404444","line_number":2}"#.to_owned(),
            3104,
        ),
        (
            json!({"command_id": long_id, "from":"1234","to":"74955404444","line_number":"74951234567"}).to_string(),
            3104,
        ),
        (callback_json("c", "1234", "+74955404444"), 3136),
        (callback_json("c", "1234", "1234"), 3300),
        (
            r#"{"from":"1234","to":"74955404444","line_number":"74950000000"}"#.to_owned(),
            3124,
        ),
    ];
    for (json, code) in cases {
        sim.reset_lockout(KEY);
        let (status, body) = post_signed(&sim, "commands/callback_group", &json).await;
        assert_eq!((status, &body["result"]), (400, &json!(code)), "{json}");
    }
    sim.reset_lockout(KEY);
    let (status, body) = post_form(&sim, "commands/callback_group", &[("vpbx_api_key", KEY)]).await;
    assert_eq!((status, &body["result"]), (400, &json!(3103)));
    assert!(sim.callbacks().is_empty());
}

#[actix_web::test]
async fn a_fifth_callback_within_one_second_gets_429() {
    let sim = spawn_sim().await;
    for i in 0..4 {
        let json = callback_json(&format!("c{i}"), "1234", "74955404444");
        let (status, _) = post_signed(&sim, "commands/callback_group", &json).await;
        assert_eq!(status, 200);
    }
    let json = callback_json("c5", "1234", "74955404444");
    let (status, body, _) = post_raw(
        &sim,
        "commands/callback_group",
        &[
            ("vpbx_api_key", KEY),
            ("sign", &sign(KEY, &json, SALT)),
            ("json", &json),
        ],
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(body, RATE_LIMITED_BODY);
    assert_eq!(sim.callbacks().len(), 4);
    // Other methods still have room under the total limit.
    let (status, _) = post_signed(&sim, "groups", "{}").await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn the_total_limit_counts_every_method() {
    let sim = MangoSim::start(MangoSimOptions {
        total_limit_per_sec: 2,
        ..MangoSimOptions::default()
    })
    .await
    .expect("simulator starts");
    sim.add_account(KEY, SALT);
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(post_signed(&sim, "incominglines", "{}").await.0);
        }
        v
    };
    assert_eq!(statuses, vec![200, 200, 429]);
}

#[actix_web::test]
async fn scripted_replies_are_served_in_order() {
    let sim = spawn_roomy_sim().await;
    sim.push_reply(KEY, Reply::Result(2240));
    sim.push_reply(KEY, Reply::Http(500, "<html>oops</html>".to_owned()));
    sim.push_reply(KEY, Reply::RateLimited);
    sim.push_reply(KEY, Reply::Delay(Duration::from_millis(50)));
    let sign = sign(KEY, GROUP_FIRST, SALT);
    let fields = [
        ("vpbx_api_key", KEY),
        ("sign", sign.as_str()),
        ("json", GROUP_FIRST),
    ];
    let mut answers = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (status, body, _) = post_raw(&sim, "commands/callback_group", &fields).await;
        answers.push((status, body, started.elapsed()));
    }
    assert_eq!(answers[0].0, 400);
    assert!(answers[0].1.contains("2240"));
    assert_eq!(
        (answers[1].0, answers[1].1.as_str()),
        (500, "<html>oops</html>")
    );
    assert_eq!(
        (answers[2].0, answers[2].1.as_str()),
        (429, RATE_LIMITED_BODY)
    );
    assert_eq!(answers[3].0, 200);
    assert!(answers[3].2 >= Duration::from_millis(50));
    assert_eq!(answers[4].0, 200, "the queue is empty again");
    assert_eq!(
        sim.callbacks().len(),
        2,
        "only the accepted commands are recorded"
    );
}

#[actix_web::test]
async fn groups_and_lines_are_listed_in_mangos_shape() {
    let sim = spawn_sim().await;
    let (status, body) = post_signed(&sim, "groups", r#"{"show_users":1}"#).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"], 1000);
    assert_eq!(body["groups"][0]["extension"], "1234");
    assert_eq!(body["groups"][1]["extension"], "002");
    assert_eq!(body["groups"][0]["id"], 10051250);
    assert!(body["groups"][0]["operators"].is_array());

    let (status, body) = post_signed(&sim, "incominglines", "{}").await;
    assert_eq!(status, 200);
    assert_eq!(body["lines"][0]["number"], "74951234567");
    assert_eq!(body["lines"][0]["schema_name"], "default");
}

#[actix_web::test]
async fn get_is_answered_3101_and_unknown_methods_4001() {
    let sim = spawn_sim().await;
    let client = awc::Client::default();
    let response = client
        .get(format!("{}groups", sim.api_url()))
        .send()
        .await
        .expect("simulator answers");
    assert_eq!(response.status().as_u16(), 400);
    let (status, body) = post_signed(&sim, "ping", "{}").await;
    assert_eq!((status, &body["result"]), (404, &json!(4001)));
    let recorded: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(recorded, vec![400, 404]);
    assert!(sim.requests()[0].response.contains("3101"));
}

#[actix_web::test]
async fn results_and_events_are_posted_signed_to_the_app() {
    let sim = spawn_sim().await;
    // The simulator itself stands in for the app: an unknown path answers 404, and the
    // recorded request shows what was sent.
    let status = sim
        .post_result(&sim.url(), KEY, "cbk1", 1000)
        .await
        .expect("posted");
    assert_eq!(status, 404);
    let status = sim
        .post_call_event(
            &sim.url(),
            KEY,
            json!({"call_state": "Appeared", "command_id": "cbk1"}),
        )
        .await
        .expect("posted");
    assert_eq!(status, 404);
    let requests = sim.requests();
    assert_eq!(requests[0].path, "/result/callback_group");
    assert_eq!(
        requests[0].json.as_deref(),
        Some(r#"{"command_id":"cbk1","result":1000}"#)
    );
    assert_eq!(requests[1].path, "/events/call");
    for request in &requests {
        let json = request.json.as_deref().expect("json sent");
        assert_eq!(
            request.sign.as_deref(),
            Some(sign(KEY, json, SALT).as_str())
        );
    }
    assert!(sim
        .post_result(&sim.url(), "nokey", "c", 1000)
        .await
        .is_err());
}

#[actix_web::test]
async fn the_official_wire_body_is_decoded_and_its_signature_accepted() {
    let sim = spawn_sim().await;
    sim.add_account("<YOUR_API_KEY>", "<YOUR_API_SALT>");
    let body = "vpbx_api_key=%3CYOUR_API_KEY%3E&sign=afdeb462cd5e0e422a9c9220390124608df06a4472cb1add6ebd6e24184bd15a&json=%7B%22command_id%22%3A%22your-command-id%22%2C%22from%22%3A%7B%22extension%22%3A%22%3Cextension%3E%22%2C%22number%22%3A%22%22%7D%2C%22to_number%22%3A%22%3Cto_number%3E%22%7D";
    let client = awc::Client::default();
    let response = client
        .post(format!("{}groups", sim.api_url()))
        .content_type("application/x-www-form-urlencoded")
        .send_body(body)
        .await
        .expect("simulator answers");
    assert_eq!(response.status().as_u16(), 200);
    assert!(sim.requests()[0].sign_valid);
}

#[test]
fn the_lockout_lasts_two_minutes_and_a_lone_invalid_request_is_forgiven_after_two() {
    let start = Instant::now();
    let mut account = Account::new(SALT);
    assert!(!account.register_invalid(start));
    assert!(
        !account.register_invalid(start + LOCKOUT_WINDOW),
        "the window has passed"
    );
    assert!(account.register_invalid(start + LOCKOUT_WINDOW + Duration::from_secs(1)));
    assert!(account.is_locked(start + Duration::from_secs(200)));
    assert!(!account.is_locked(start + Duration::from_secs(242)));
    assert!(
        !account.register_invalid(start + Duration::from_secs(243)),
        "a fresh start"
    );
}

/// Sends one valid callback command with a 1 s client timeout; the status, or the client error.
async fn send_command_giving_up_after_1s(sim: &MangoSim, command_id: &str) -> Result<u16, String> {
    let json = GROUP_FIRST.replace("cbk1", command_id);
    let sign = sign(KEY, &json, SALT);
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(1))
        .finish();
    let mut response = client
        .post(format!("{}commands/callback_group", sim.api_url()))
        .send_form(&[
            ("vpbx_api_key", KEY),
            ("sign", sign.as_str()),
            ("json", &json),
        ])
        .await
        .map_err(|e| e.to_string())?;
    response.body().await.map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

#[actix_web::test]
async fn injected_faults_answer_as_their_kind_and_are_counted() {
    use crate::sandbox::faults::{FaultPlan, PeerFault};
    let sim = spawn_roomy_sim().await;
    let only = |kind| FaultPlan {
        kinds: vec![kind],
        hang: Duration::from_secs(3),
        ..FaultPlan::new(1.0, 9)
    };
    sim.set_faults(only(PeerFault::Unavailable));
    assert_eq!(send_command_giving_up_after_1s(&sim, "f1").await, Ok(503));
    sim.set_faults(only(PeerFault::Internal));
    assert_eq!(send_command_giving_up_after_1s(&sim, "f2").await, Ok(500));
    sim.set_faults(only(PeerFault::Dropped));
    assert!(send_command_giving_up_after_1s(&sim, "f3").await.is_err());
    sim.set_faults(only(PeerFault::Timeout));
    assert!(send_command_giving_up_after_1s(&sim, "f4").await.is_err());
    assert!(sim.callbacks().is_empty(), "none of those was processed");

    sim.set_faults(only(PeerFault::Slow));
    assert!(send_command_giving_up_after_1s(&sim, "f5").await.is_err());
    assert_eq!(
        sim.callbacks().len(),
        1,
        "a slow answer comes after the command was accepted"
    );

    sim.set_faults(FaultPlan::default());
    assert_eq!(send_command_giving_up_after_1s(&sim, "f6").await, Ok(200));
    let counts = sim.fault_counts();
    assert_eq!(counts.requests, 6);
    assert_eq!(counts.total(), 5);
    for kind in PeerFault::ALL {
        assert_eq!(counts.of(kind), 1, "{counts}");
    }
}
