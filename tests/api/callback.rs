//! The callback: robot call → Mango callback_group, with the rules of the PHP script this app
//! replaces (see README) done right.

use std::time::{Duration, Instant};

use mango_callback::db::Backend;
use mango_callback::sandbox::bitrix::RobotCallStyle;
use mango_callback::sandbox::mango::Reply;

use crate::helpers::{spawn_app, EXPERIENCED, LINE, MANGO_KEY, TRAINEES};
use crate::on_both_backends;

const ROBOT: &str = "mango_callback";

async fn first_run_rings_trainees_and_a_later_run_the_experienced_group(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("groups").await;
    let contact = app.b24.add_contact(
        &p.member_id,
        &[
            ("WORK", "+7 (495) 540-44-44"),
            ("MOBILE", "8 (900) 123-45-67"),
        ],
    );
    let deal = app.b24.add_deal(&p.member_id, Some(contact));
    let fired = app
        .b24
        .fire_robot(&p.member_id, ROBOT, deal, &[])
        .await
        .expect("robot");
    assert_eq!(fired.status, 200, "{}", fired.body);
    app.drain().await;
    let calls = app.mango.callbacks();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["from"], TRAINEES, "\"002\" stays \"002\"");
    assert_eq!(
        calls[0]["to"], "79001234567",
        "the MOBILE number, normalised"
    );
    assert_eq!(calls[0]["line_number"], LINE);
    let cmd = calls[0]["command_id"].as_str().expect("command id");
    assert!(
        cmd.starts_with(&format!("b24:{}:{deal}:", p.member_id)),
        "{cmd}"
    );
    // Deal → contact → phone in one batch call, which only works if the portal receives the
    // commands in the order they depend on each other.
    assert_eq!(app.batches_with("crm.deal.contact.items.get"), 1);
    assert_eq!(
        app.commands_to("crm.contact.get"),
        1,
        "no second lookup was needed"
    );

    app.advance(Duration::from_secs(11 * 60)); // past the duplicate window
    app.b24
        .fire_robot(&p.member_id, ROBOT, deal, &[])
        .await
        .expect("robot");
    app.drain().await;
    let calls = app.mango.callbacks();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["from"], EXPERIENCED);

    app.advance(Duration::from_secs(11 * 60));
    app.b24
        .fire_robot(
            &p.member_id,
            ROBOT,
            deal,
            &[("group", "trainee"), ("phone", "+7 911 000-00-01")],
        )
        .await
        .expect("robot");
    app.drain().await;
    let calls = app.mango.callbacks();
    assert_eq!(calls[2]["from"], TRAINEES, "the group property overrides");
    assert_eq!(
        calls[2]["to"], "79110000001",
        "the phone property overrides"
    );
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 3);
    assert!(
        sends
            .iter()
            .all(|s| s["RETURN_VALUES"]["result"] == "started"),
        "{sends:?}"
    );
    assert_eq!(sends[0]["RETURN_VALUES"]["group_extension"], TRAINEES);
}
on_both_backends!(first_run_rings_trainees_and_a_later_run_the_experienced_group);

async fn ten_concurrent_robot_calls_for_one_deal_place_exactly_one_call(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("dups").await;
    let deal = app.b24.add_deal(&p.member_id, None);
    let calls = (0..10).map(|_| {
        app.b24
            .fire_robot(&p.member_id, ROBOT, deal, &[("phone", "89001234567")])
    });
    let fired = futures_util::future::join_all(calls).await;
    assert!(
        fired
            .iter()
            .all(|f| f.as_ref().map(|f| f.status) == Ok(200)),
        "{fired:?}"
    );
    app.drain().await;
    assert_eq!(app.mango.callbacks().len(), 1);
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 10, "every robot call is answered");
    let dup = sends
        .iter()
        .filter(|s| s["RETURN_VALUES"]["result"] == "duplicate")
        .count();
    assert_eq!(dup, 9);
    assert_eq!(app.b24.timeline_comments(&p.member_id, deal).len(), 10);
}
on_both_backends!(ten_concurrent_robot_calls_for_one_deal_place_exactly_one_call);

async fn two_instances_on_one_database_place_one_call_for_simultaneous_runs(backend: Backend) {
    let app = spawn_app(backend).await;
    let second =
        crate::helpers::spawn_instance(&app.db_url, &app.b24, &app.mango, 20.0, None).await;
    let p = app.installed_portal("twins").await;
    let deal = app.b24.add_deal(&p.member_id, None);
    // Same deal, two deliveries: one to each instance.
    let (url1, body1, _) = app
        .b24
        .robot_call_body(
            &p.member_id,
            ROBOT,
            deal,
            &[("phone", "89001234567")],
            RobotCallStyle::default(),
        )
        .expect("robot");
    let body2 = app.robot_body(
        &p,
        deal,
        &[("phone", "89001234567")],
        RobotCallStyle::default(),
    );
    assert!(url1.ends_with("/b24/robot"));
    let (a, b) = tokio::join!(
        app.post_form("/b24/robot", body1),
        second.post_form("/b24/robot", body2)
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    tokio::join!(app.drain(), second.drain());
    assert_eq!(app.mango.callbacks().len(), 1);
}
on_both_backends!(two_instances_on_one_database_place_one_call_for_simultaneous_runs);

async fn the_same_event_token_delivered_twice_is_one_run(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("redeliver").await;
    let deal = app.b24.add_deal(&p.member_id, None);
    let body = app.robot_body(
        &p,
        deal,
        &[("phone", "89001234567")],
        RobotCallStyle {
            percent_encoded_brackets: true,
            old_core: false,
        },
    );
    assert_eq!(app.post_form("/b24/robot", body.clone()).await.0, 200);
    let (status, answer) = app.post_form("/b24/robot", body).await;
    assert_eq!(status, 200);
    assert!(answer.contains("redelivered"), "{answer}");
    app.drain().await;
    assert_eq!(app.mango.callbacks().len(), 1);
    assert_eq!(app.b24.event_sends(&p.member_id).len(), 1);
}
on_both_backends!(the_same_event_token_delivered_twice_is_one_run);

async fn a_late_linked_contact_is_called_and_a_never_linked_one_ends_as_no_phone(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("late").await;
    let late = app.b24.add_deal(&p.member_id, None);
    let never = app.b24.add_deal(&p.member_id, None);
    let old_core = RobotCallStyle {
        percent_encoded_brackets: false,
        old_core: true,
    };
    app.b24
        .fire_robot_styled(&p.member_id, ROBOT, late, &[], old_core)
        .await
        .expect("robot");
    app.b24
        .fire_robot(&p.member_id, ROBOT, never, &[])
        .await
        .expect("robot");
    app.drain().await;
    assert!(
        app.mango.callbacks().is_empty(),
        "no contact yet: nobody is rung"
    );
    app.advance(Duration::from_secs(5));
    let contact = app
        .b24
        .add_contact(&p.member_id, &[("HOME", "+7 912 345 67 89")]);
    app.b24.link_contact(&p.member_id, late, contact);
    app.drain().await;
    let calls = app.mango.callbacks();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["to"], "79123456789");
    for _ in 0..13 {
        app.advance(Duration::from_secs(5));
        app.drain().await;
    }
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 2, "{sends:?}");
    let no_phone = sends
        .iter()
        .find(|s| s["RETURN_VALUES"]["result"] == "no_phone")
        .expect("no_phone reported");
    assert!(
        no_phone["RETURN_VALUES"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("no contact"),
        "{no_phone}"
    );
    assert_eq!(app.mango.callbacks().len(), 1);
}
on_both_backends!(a_late_linked_contact_is_called_and_a_never_linked_one_ends_as_no_phone);

async fn mango_3102_is_not_retried_and_429_then_1000_places_one_call(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("codes").await;
    app.mango.push_reply(MANGO_KEY, Reply::Result(3102));
    let d1 = app.b24.add_deal(&p.member_id, None);
    app.b24
        .fire_robot(&p.member_id, ROBOT, d1, &[("phone", "89001234567")])
        .await
        .expect("robot");
    app.drain().await;
    app.advance(Duration::from_secs(600));
    app.drain().await;
    let cb_requests = app
        .mango
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("callback_group"))
        .count();
    assert_eq!(cb_requests, 1, "3102 is never retried");
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends[0]["RETURN_VALUES"]["result"], "failed");
    assert!(
        sends[0]["RETURN_VALUES"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("3102"),
        "{sends:?}"
    );

    app.mango.push_reply(MANGO_KEY, Reply::RateLimited);
    let d2 = app.b24.add_deal(&p.member_id, None);
    app.b24
        .fire_robot(&p.member_id, ROBOT, d2, &[("phone", "89001234568")])
        .await
        .expect("robot");
    app.drain().await;
    app.advance(Duration::from_secs(60));
    app.drain().await;
    let placed: Vec<_> = app
        .mango
        .callbacks()
        .into_iter()
        .filter(|c| c["to"] == "79001234568")
        .collect();
    assert_eq!(
        placed.len(),
        1,
        "429 is retried, then exactly one call placed"
    );
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[1]["RETURN_VALUES"]["result"], "started");
}
on_both_backends!(mango_3102_is_not_retried_and_429_then_1000_places_one_call);

async fn every_robot_call_gets_one_event_and_one_timeline_comment(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("report").await;
    let no_contact = app.b24.add_deal(&p.member_id, None);
    let bad_phone = app.b24.add_contact(&p.member_id, &[("WORK", "call me")]);
    let d_bad = app.b24.add_deal(&p.member_id, Some(bad_phone));
    let d_ok = app.b24.add_deal(&p.member_id, None);
    app.b24
        .fire_robot(&p.member_id, ROBOT, d_bad, &[])
        .await
        .expect("robot");
    app.b24
        .fire_robot(&p.member_id, ROBOT, d_ok, &[("phone", "+7 900 123 45 67")])
        .await
        .expect("robot");
    app.b24
        .fire_robot(&p.member_id, ROBOT, d_ok, &[("phone", "+7 900 123 45 67")])
        .await
        .expect("robot");
    app.b24
        .fire_robot(&p.member_id, ROBOT, no_contact, &[])
        .await
        .expect("robot");
    for _ in 0..15 {
        app.drain().await;
        app.advance(Duration::from_secs(5));
    }
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 4);
    let mut results: Vec<_> = sends
        .iter()
        .map(|s| {
            s["RETURN_VALUES"]["result"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    results.sort();
    assert_eq!(results, ["duplicate", "no_phone", "no_phone", "started"]);
    for deal in [d_bad, no_contact] {
        assert_eq!(app.b24.timeline_comments(&p.member_id, deal).len(), 1);
    }
    let ok_comments = app.b24.timeline_comments(&p.member_id, d_ok);
    assert_eq!(ok_comments.len(), 2);
    assert!(
        ok_comments
            .iter()
            .any(|c| c.contains("стажёров") && c.contains(TRAINEES)),
        "{ok_comments:?}"
    );
}
on_both_backends!(every_robot_call_gets_one_event_and_one_timeline_comment);

async fn the_robot_handler_answers_without_waiting_for_slow_peers(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("fast").await;
    app.b24.set_latency(Duration::from_secs(2));
    app.mango.set_latency(Duration::from_secs(2));
    let deal = app.b24.add_deal(&p.member_id, None);
    let body = app.robot_body(
        &p,
        deal,
        &[("phone", "89001234567")],
        RobotCallStyle::default(),
    );
    let started = Instant::now();
    let (status, _) = app.post_form("/b24/robot", body).await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    // The point is independence from the peers (2 s each); the bound leaves room for a loaded CI.
    assert!(
        took < Duration::from_millis(500),
        "robot handler took {took:?} with 2 s peers"
    );
    eprintln!("robot handler answered in {took:?} with 2 s simulator latency");
}
on_both_backends!(the_robot_handler_answers_without_waiting_for_slow_peers);

/// The callbacks stored for a portal, newest first.
async fn stored_callbacks(
    app: &crate::helpers::TestApp,
    member_id: &str,
) -> Vec<mango_callback::callback::Callback> {
    let mid = member_id.to_owned();
    app.shared
        .db
        .run(move |c| mango_callback::callback::store::latest(c, &mid, 50))
        .await
        .expect("db")
}

/// Bodies of verified robot calls that cannot be acted on: `(case, body, deal the call names)`.
fn unusable_bodies(
    app: &crate::helpers::TestApp,
    p: &mango_callback::sandbox::bitrix::SimPortal,
) -> Vec<(&'static str, String, Option<u64>)> {
    let body = |deal: u64, props: &[(&str, &str)]| {
        app.robot_body(p, deal, props, RobotCallStyle::default())
    };
    let deal = || app.b24.add_deal(&p.member_id, None);
    let (d1, d2, d3, d4, d5, d6) = (deal(), deal(), deal(), deal(), deal(), deal());
    vec![
        (
            "a lead",
            body(d1, &[]).replace(&format!("DEAL_{d1}"), "LEAD_5"),
            None,
        ),
        (
            "a smart process item",
            body(d2, &[]).replace(&format!("DEAL_{d2}"), "DYNAMIC_147_1"),
            None,
        ),
        ("an unknown group", body(d3, &[("group", "vip")]), Some(d3)),
        (
            "another robot's code",
            body(d4, &[]).replace("&code=mango_callback&", "&code=someone_else&"),
            Some(d4),
        ),
        (
            "a 21-digit deal id",
            body(d5, &[]).replace(&format!("DEAL_{d5}"), "DEAL_123456789012345678901"),
            None,
        ),
        (
            "a deal id with letters",
            body(d6, &[]).replace(&format!("DEAL_{d6}"), "DEAL_12ab"),
            None,
        ),
    ]
}

async fn a_verified_robot_call_that_cannot_be_used_is_reported_as_failed_without_a_call(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("unusable").await;
    let cases = unusable_bodies(&app, &p);
    for (case, body, _) in &cases {
        let (status, answer) = app.post_form("/b24/robot", body.clone()).await;
        assert_eq!(status, 200, "{case}: {answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
        assert_eq!(answer["status"], "failed", "{case}: {answer}");
        assert!(
            !answer["error"].as_str().unwrap_or("").is_empty(),
            "{case}: {answer}"
        );
    }
    // Delivered again, the same call is one run and one answer.
    let (status, again) = app.post_form("/b24/robot", cases[0].1.clone()).await;
    assert_eq!(
        (status, again.contains("redelivered")),
        (200, true),
        "{again}"
    );
    app.drain().await;

    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(
        sends.len(),
        cases.len(),
        "one bizproc.event.send per call: {sends:?}"
    );
    for s in &sends {
        assert_eq!(s["RETURN_VALUES"]["result"], "failed", "{s}");
    }
    // The reason, in the portal's language (the simulated portal speaks Russian).
    let errors: Vec<String> = sends
        .iter()
        .map(|s| {
            s["RETURN_VALUES"]["error"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("только в сделках") && e.contains("LEAD_5")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("DYNAMIC_147_1")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("vip")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("someone_else")),
        "{errors:?}"
    );
    assert_eq!(
        errors.iter().filter(|e| e.contains("1–20")).count(),
        2,
        "{errors:?}"
    );
    assert!(app.mango.requests().is_empty(), "Mango is never called");
    // A call that names a real deal gets its comment there; the others have nowhere to comment.
    for (case, _, deal) in &cases {
        if let Some(deal) = deal {
            let comments = app.b24.timeline_comments(&p.member_id, *deal);
            assert_eq!(comments.len(), 1, "{case}: {comments:?}");
        }
    }
    assert_eq!(app.commands_to("crm.timeline.comment.add"), 2);
    let rows = stored_callbacks(&app, &p.member_id).await;
    assert_eq!(rows.len(), cases.len());
    assert!(rows
        .iter()
        .all(|r| r.status.as_str() == "failed" && r.command_id.is_none()));
    let jobs = app
        .shared
        .db
        .run(mango_callback::jobs::queue::all)
        .await
        .expect("db");
    assert!(
        jobs.iter().all(|j| j.status != "dead"),
        "no job buried: {jobs:?}"
    );
}
on_both_backends!(a_verified_robot_call_that_cannot_be_used_is_reported_as_failed_without_a_call);

async fn unverifiable_or_unanswerable_robot_calls_are_refused_and_store_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("bad").await;
    let forge = |b: &str| b.replace(&p.application_token, "0000000000000000000000000000beef");
    // Unusable payloads with a wrong application token: 401, whatever the payload.
    for (case, body, _) in unusable_bodies(&app, &p) {
        let (status, msg) = app.post_form("/b24/robot", forge(&body)).await;
        assert_eq!(status, 401, "{case}: {msg}");
    }
    let deal = app.b24.add_deal(&p.member_id, None);
    let body = app.robot_body(&p, deal, &[], RobotCallStyle::default());
    assert_eq!(app.post_form("/b24/robot", forge(&body)).await.0, 401);
    let no_token = body.replace("application_token]=", "application_token_x]=");
    assert_eq!(app.post_form("/b24/robot", no_token).await.0, 401);
    let no_member = body.replace("auth[member_id]=", "auth[member_x]=");
    assert_eq!(app.post_form("/b24/robot", no_member).await.0, 401);
    let long_member = body.replace(&p.member_id, &"a".repeat(65));
    assert_eq!(app.post_form("/b24/robot", long_member).await.0, 401);
    let (status, _) = app
        .post_form("/b24/robot", "auth=1&auth[x]=2&%%%[[[=".into())
        .await;
    assert!((400..500).contains(&status), "{status}");
    // Verified but unusable and without an event_token: nobody to tell, so 400.
    let lead = body.replace(&format!("DEAL_{deal}"), "LEAD_5");
    let no_event_token = lead.replace("&event_token=", "&no_event_token=");
    let (status, msg) = app.post_form("/b24/robot", no_event_token).await;
    assert_eq!(status, 400, "{msg}");
    assert!(msg.contains("event_token"), "{msg}");

    let rows = stored_callbacks(&app, &p.member_id).await;
    assert!(rows.is_empty(), "nothing stored: {rows:?}");
    app.drain().await;
    assert!(app.b24.event_sends(&p.member_id).is_empty());
    assert!(app.mango.requests().is_empty());
}
on_both_backends!(unverifiable_or_unanswerable_robot_calls_are_refused_and_store_nothing);

async fn the_same_event_token_on_two_portals_gives_two_runs(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.installed_portal("tokena").await;
    let b = app.installed_portal("tokenb").await;
    let (da, db) = (
        app.b24.add_deal(&a.member_id, None),
        app.b24.add_deal(&b.member_id, None),
    );
    let props = [("phone", "89001234567")];
    let (_, body_a, token_a) = app
        .b24
        .robot_call_body(&a.member_id, ROBOT, da, &props, RobotCallStyle::default())
        .expect("robot a");
    let (_, body_b, token_b) = app
        .b24
        .robot_call_body(&b.member_id, ROBOT, db, &props, RobotCallStyle::default())
        .expect("robot b");
    let enc = |t: &str| url::form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>();
    // Portal A's call first, then portal B's call carrying the very same event_token.
    let body_b = body_b.replace(&enc(&token_b), &enc(&token_a));
    assert_ne!(
        body_b,
        app.robot_body(&b, db, &props, RobotCallStyle::default())
    );
    let (status, answer) = app.post_form("/b24/robot", body_a).await;
    assert_eq!((status, answer.contains("queued")), (200, true), "{answer}");
    let (status, answer) = app.post_form("/b24/robot", body_b).await;
    assert_eq!((status, answer.contains("queued")), (200, true), "{answer}");
    app.drain().await;
    assert_eq!(app.mango.callbacks().len(), 2, "both portals' runs ring");
    assert_eq!(stored_callbacks(&app, &a.member_id).await.len(), 1);
    assert_eq!(stored_callbacks(&app, &b.member_id).await.len(), 1);
}
on_both_backends!(the_same_event_token_on_two_portals_gives_two_runs);

async fn a_replayed_mango_result_does_not_overwrite_the_recorded_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("replay").await;
    app.robot_call_with_phone(&p.member_id, "89001234567").await;
    let command_id = app.command_id(0);
    let mango_url = app.mango_url();
    let post = |code| {
        app.mango
            .post_result(&mango_url, MANGO_KEY, &command_id, code)
    };
    assert_eq!(post(2240).await, Ok(200));
    let recorded = stored_callbacks(&app, &p.member_id).await.remove(0);
    assert_eq!(recorded.mango_code, Some(2240));
    // A signed notification replayed with another result is acknowledged but changes nothing.
    assert_eq!(post(1000).await, Ok(200));
    let after = stored_callbacks(&app, &p.member_id).await.remove(0);
    assert_eq!(after.mango_code, Some(2240));
    assert_eq!(after.outcome, recorded.outcome);
    assert_eq!(post(2240).await, Ok(200));
    let after = stored_callbacks(&app, &p.member_id).await.remove(0);
    assert_eq!(after.updated_at, recorded.updated_at, "not even touched");
}
on_both_backends!(a_replayed_mango_result_does_not_overwrite_the_recorded_one);

async fn mango_gets_at_most_four_callbacks_per_second_per_account(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("burst").await;
    let deals: Vec<u64> = (0..9)
        .map(|_| app.b24.add_deal(&p.member_id, None))
        .collect();
    for (i, deal) in deals.iter().enumerate() {
        let phone = format!("8900123450{i}");
        app.b24
            .fire_robot(&p.member_id, ROBOT, *deal, &[("phone", phone.as_str())])
            .await
            .expect("robot");
    }
    app.drain().await;
    // Four went out at once; the rest wait for the account's budget without holding a worker.
    assert_eq!(app.mango.callbacks().len(), 4, "the first second's four");
    let jobs = app
        .shared
        .db
        .run(mango_callback::jobs::queue::all)
        .await
        .expect("jobs");
    let waiting = jobs
        .iter()
        .filter(|j| j.status == mango_callback::jobs::queue::QUEUED && j.kind == "place_call")
        .count();
    assert_eq!(waiting, 5, "snoozed, not running: {jobs:#?}");
    app.drain_over_time(Duration::from_millis(100), 100).await;
    let requests: Vec<_> = app
        .mango
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("callback_group"))
        .collect();
    assert_eq!(requests.len(), 9, "one command per deal");
    assert!(
        requests.iter().all(|r| r.status == 200),
        "Mango's limit was never hit: {:?}",
        requests.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(app.mango.callbacks().len(), 9);
}
on_both_backends!(mango_gets_at_most_four_callbacks_per_second_per_account);

async fn mango_results_are_verified_and_recorded_on_their_callback(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("results").await;
    app.robot_call_with_phone(&p.member_id, "89001234567").await;
    let command_id = app.command_id(0);
    let mango_url = app.mango_url();

    // Signed with another salt: refused, nothing recorded.
    let stranger = mango_callback::sandbox::mango::MangoSim::start(Default::default())
        .await
        .expect("sim");
    stranger.add_account(MANGO_KEY, "another-salt");
    assert_eq!(
        stranger
            .post_result(&mango_url, MANGO_KEY, &command_id, 2240)
            .await,
        Ok(401)
    );

    assert_eq!(
        app.mango
            .post_result(&mango_url, MANGO_KEY, &command_id, 2240)
            .await,
        Ok(200)
    );
    let mid = p.member_id.clone();
    let log = app
        .shared
        .db
        .run(move |c| mango_callback::callback::store::latest(c, &mid, 1))
        .await
        .expect("db");
    assert_eq!(log[0].mango_code, Some(2240));
    assert!(
        log[0].outcome.as_deref().unwrap_or("").contains("2240"),
        "{:?}",
        log[0].outcome
    );
    // Call events are verified and acknowledged.
    let event = serde_json::json!({ "entry_id": "MzUyODbvczkxMjo0MDE=", "call_id": "x", "seq": 1, "call_state": "Appeared", "command_id": command_id });
    assert_eq!(
        app.mango
            .post_call_event(&mango_url, MANGO_KEY, event)
            .await,
        Ok(200)
    );
}
on_both_backends!(mango_results_are_verified_and_recorded_on_their_callback);

async fn the_event_token_migration_keeps_every_callback_and_scopes_tokens_per_portal(
    backend: Backend,
) {
    use diesel::prelude::*;
    use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
    use mango_callback::db::DbConnection;
    const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
    const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");

    let (url, _guard) = crate::helpers::fresh_database(backend);
    let mut conn = match backend {
        Backend::Sqlite => DbConnection::Sqlite(
            SqliteConnection::establish(url.trim_start_matches("sqlite://")).expect("sqlite"),
        ),
        Backend::Postgres => DbConnection::Postgres(PgConnection::establish(&url).expect("pg")),
    };
    // The schema as it was before the migration, with rows in it.
    match &mut conn {
        DbConnection::Sqlite(c) => c.run_next_migration(SQLITE).map(|_| ()),
        DbConnection::Postgres(c) => c.run_next_migration(POSTGRES).map(|_| ()),
    }
    .expect("first migration");
    let exec = |c: &mut DbConnection, sql: &str| diesel::sql_query(sql).execute(c);
    for m in ["portal_a", "portal_b"] {
        exec(&mut conn, &format!("INSERT INTO portals (member_id, domain, client_endpoint, server_endpoint, created_at, updated_at) VALUES ('{m}', 'x', 'x', 'x', '2026-12-01 00:00:00', '2026-12-01 00:00:00')")).expect("portal");
    }
    let callback = |id: &str, member: &str, token: &str| {
        format!("INSERT INTO callbacks (id, member_id, deal_id, event_token, requested_group, status, command_id, created_at, updated_at) VALUES ('{id}', '{member}', '7', {token}, 'auto', 'started', 'cmd-{id}', '2026-12-01 00:00:00', '2026-12-01 00:00:00')")
    };
    for (id, token) in [
        ("c1", "'t1'"),
        ("c2", "'t2'"),
        ("c3", "NULL"),
        ("c4", "NULL"),
    ] {
        exec(&mut conn, &callback(id, "portal_a", token)).expect("callback");
    }

    mango_callback::db::run_migrations(&mut conn).expect("the remaining migrations");
    let rows = mango_callback::callback::store::latest(&mut conn, "portal_a", 10).expect("rows");
    let mut kept: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                r.event_token.as_deref(),
                r.command_id.as_deref(),
            )
        })
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [
            ("c1", Some("t1"), Some("cmd-c1")),
            ("c2", Some("t2"), Some("cmd-c2")),
            ("c3", None, Some("cmd-c3")),
            ("c4", None, Some("cmd-c4")),
        ]
    );
    // Another portal may carry the same token; the same portal may not.
    exec(&mut conn, &callback("c5", "portal_b", "'t1'")).expect("same token, other portal");
    let again = exec(&mut conn, &callback("c6", "portal_a", "'t1'")).expect_err("same portal");
    assert!(
        matches!(
            again,
            diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            )
        ),
        "{again}"
    );
}
on_both_backends!(the_event_token_migration_keeps_every_callback_and_scopes_tokens_per_portal);

async fn a_deal_bitrix24_refuses_to_read_fails_at_once_with_the_reason_instead_of_no_phone(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("gone").await;
    // A deal the portal does not have (deleted after the robot started): every sub-command of
    // the phone batch that reads it answers in `result_error`.
    let deleted = 987_654;
    app.b24
        .fire_robot(&p.member_id, ROBOT, deleted, &[])
        .await
        .expect("robot");
    app.drain().await;
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(
        sends.len(),
        1,
        "answered at once, not after the contact wait: {sends:?}"
    );
    assert_eq!(sends[0]["RETURN_VALUES"]["result"], "failed", "{sends:?}");
    let error = sends[0]["RETURN_VALUES"]["error"].as_str().unwrap_or("");
    assert!(
        error.contains("could not read the deal") && error.contains("Not found"),
        "{error}"
    );
    assert!(app.mango.callbacks().is_empty(), "nobody is rung");
}
on_both_backends!(
    a_deal_bitrix24_refuses_to_read_fails_at_once_with_the_reason_instead_of_no_phone
);

async fn a_mango_that_does_not_answer_is_reported_in_russian_on_a_russian_portal(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("silent").await;
    // A 5xx on the command and on both resends, and no result from Mango for any of them.
    for _ in 0..3 {
        app.mango.push_reply(
            MANGO_KEY,
            Reply::Http(502, "<html>Bad Gateway</html>".into()),
        );
    }
    let deal = app.robot_call_with_phone(&p.member_id, "89001234567").await;
    for _ in 0..3 {
        app.advance(mango_callback::callback::resend::RESULT_WAIT + Duration::from_secs(1));
        app.drain().await;
    }
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0]["RETURN_VALUES"]["result"], "failed", "{sends:?}");
    let comments = app.b24.timeline_comments(&p.member_id, deal);
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(
        comments[0].contains("Mango не ответил") && !comments[0].contains("did not answer"),
        "the Russian timeline does not quote the English message: {comments:?}"
    );
}
on_both_backends!(a_mango_that_does_not_answer_is_reported_in_russian_on_a_russian_portal);
