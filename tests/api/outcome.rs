//! The outcome loop (#11): the simulated Mango posts the signed `events/call` and
//! `events/summary` of a callback_group as the real PBX would; each call ends in its outcome on
//! the callback, one timeline comment, and — when the robot waits — exactly one
//! `bizproc.event.send` carrying the outcome.

use std::time::Duration;

use diesel::prelude::*;
use mango_callback::callback::outcome::Attempt;
use mango_callback::callback::Callback;
use mango_callback::db::schema::{call_attempts, mango_call_events, portal_settings};
use mango_callback::db::Backend;
use mango_callback::sandbox::bitrix::SimPortal;
use mango_callback::sandbox::mango::{CallScenario, Delivery, MangoSim};

use crate::helpers::{spawn_app, TestApp, MANGO_KEY, TRAINEES};
use crate::on_both_backends;

fn answered(talk_seconds: u32) -> CallScenario {
    CallScenario::Answered {
        manager: "101".into(),
        talk_seconds,
    }
}

/// Sets the portal's "robot waits for the call's outcome" and its bound, as stored settings.
async fn wait_for_outcome(app: &TestApp, member_id: &str, minutes: i32) {
    let mid = member_id.to_owned();
    app.shared
        .db
        .run(move |c| {
            diesel::update(portal_settings::table.find(mid))
                .set((
                    portal_settings::wait_for_outcome.eq(true),
                    portal_settings::outcome_wait_minutes.eq(minutes),
                ))
                .execute(c)
        })
        .await
        .expect("db");
}

async fn callback_of(app: &TestApp, member_id: &str, deal: u64) -> Callback {
    let mid = member_id.to_owned();
    app.shared
        .db
        .run(move |c| mango_callback::callback::store::latest(c, &mid, 100))
        .await
        .expect("db")
        .into_iter()
        .find(|cb| cb.deal_id == deal.to_string())
        .expect("the deal's callback")
}

async fn attempts_of(app: &TestApp, callback_id: &str) -> Vec<Attempt> {
    let id = callback_id.to_owned();
    app.shared
        .db
        .run(move |c| {
            call_attempts::table
                .filter(call_attempts::callback_id.eq(id))
                .select(Attempt::as_select())
                .load(c)
        })
        .await
        .expect("db")
}

async fn stored_events(app: &TestApp) -> i64 {
    app.shared
        .db
        .run(|c| mango_call_events::table.count().get_result::<i64>(c))
        .await
        .expect("db")
}

/// A robot call on a new deal ringing `phone` (a number the scenario is keyed on), its command
/// accepted; then Mango's events delivered as `delivery` and the jobs run.
async fn call_and_play(app: &TestApp, p: &SimPortal, phone: &str, delivery: Delivery) -> u64 {
    let deal = app.robot_call_with_phone(&p.member_id, phone).await;
    let i = app.mango.callbacks().len() - 1;
    let statuses = app
        .mango
        .play(&app.mango_url(), MANGO_KEY, i, delivery)
        .await
        .expect("events posted");
    assert!(!statuses.is_empty(), "the scenario played");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    app.drain().await;
    deal
}

async fn a_manager_and_a_client_who_talk_end_as_answered_with_the_talk_time(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("talk").await;
    app.mango.set_scenario(TRAINEES, answered(133));
    let deal = call_and_play(&app, &p, "89001234567", Delivery::InOrder).await;

    let cb = callback_of(&app, &p.member_id, deal).await;
    assert_eq!(cb.call_outcome.as_deref(), Some("answered"));
    assert_eq!(cb.manager_extension.as_deref(), Some("101"));
    assert_eq!(cb.talk_seconds, Some(133));
    assert!(cb.client_connected_at.is_some() && cb.call_ended_at.is_some());
    assert!(cb.outcome_reported_at.is_some());
    let attempts = attempts_of(&app, &cb.id).await;
    assert_eq!(
        attempts.len(),
        1,
        "one attempt, written with the first send"
    );
    let a = &attempts[0];
    assert_eq!(
        (a.n, a.command_id.as_str()),
        (1, app.command_id(0).as_str())
    );
    assert_eq!(
        (a.outcome.as_deref(), a.disconnect_reason),
        (Some("answered"), Some(1120))
    );
    assert!(a.entry_id.is_some());

    let comments = app.b24.timeline_comments(&p.member_id, deal);
    assert_eq!(
        comments.len(),
        2,
        "the call ordered, then its outcome: {comments:?}"
    );
    assert!(
        comments[1].contains("Менеджер 101 ответил, клиент на связи, 2 мин 13 с"),
        "{comments:?}"
    );
    // Not waiting: the robot had its one event when Mango accepted the command.
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0]["RETURN_VALUES"]["result"], "started");
}
on_both_backends!(a_manager_and_a_client_who_talk_end_as_answered_with_the_talk_time);

async fn a_waiting_robot_gets_exactly_one_event_carrying_each_reference_outcome(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("waits").await;
    let robots = app.b24.robots(&p.member_id);
    let returns = &robots[0].1["RETURN_PROPERTIES"];
    for key in ["outcome", "manager_extension", "talk_seconds"] {
        assert!(
            returns.get(key).is_some(),
            "the robot declares {key}: {returns}"
        );
    }
    wait_for_outcome(&app, &p.member_id, 30).await;
    let manager = || "102".to_owned();
    let cases = [
        (
            "89001230001",
            answered(75),
            "answered",
            "101".to_owned(),
            75,
            "Менеджер 101 ответил, клиент на связи, 1 мин 15 с",
        ),
        (
            "89001230002",
            CallScenario::NobodyAnswers {
                managers: vec!["101".into(), "102".into()],
            },
            "manager_missed",
            String::new(),
            0,
            "Никто в группе 002 не ответил",
        ),
        (
            "89001230003",
            CallScenario::ClientMissed { manager: manager() },
            "client_missed",
            manager(),
            0,
            "Клиент не ответил (ответил менеджер 102)",
        ),
        (
            "89001230004",
            CallScenario::ManagerHangsUp { manager: manager() },
            "client_missed",
            manager(),
            0,
            "Клиент не ответил: менеджер 102 положил трубку раньше",
        ),
    ];
    for (phone, scenario, outcome, ext, talk, comment) in cases {
        app.mango
            .set_scenario(&format!("7{}", &phone[1..]), scenario);
        let before = app.b24.event_sends(&p.member_id).len();
        let deal = app.robot_call_with_phone(&p.member_id, phone).await;
        assert_eq!(
            app.b24.event_sends(&p.member_id).len(),
            before,
            "{outcome}: a waiting robot gets nothing while the call goes on"
        );
        let i = app.mango.callbacks().len() - 1;
        app.mango
            .play(&app.mango_url(), MANGO_KEY, i, Delivery::InOrder)
            .await
            .expect("events");
        app.drain().await;

        let cb = callback_of(&app, &p.member_id, deal).await;
        assert_eq!(cb.call_outcome.as_deref(), Some(outcome), "{phone}");
        let sends = app.b24.event_sends(&p.member_id);
        assert_eq!(sends.len(), before + 1, "{outcome}: exactly one event");
        let values = &sends[before]["RETURN_VALUES"];
        assert_eq!(values["result"], "started");
        assert_eq!(values["outcome"], outcome);
        assert_eq!(values["manager_extension"], ext.as_str(), "{outcome}");
        assert_eq!(values["talk_seconds"], talk, "{outcome}");
        let comments = app.b24.timeline_comments(&p.member_id, deal);
        assert!(
            comments.last().is_some_and(|c| c.contains(comment)),
            "{outcome}: {comments:?}"
        );
    }
    // Replays after the end change nothing: still one event per callback.
    let sends = app.b24.event_sends(&p.member_id).len();
    app.mango
        .play(&app.mango_url(), MANGO_KEY, 0, Delivery::Duplicated)
        .await
        .expect("events");
    app.drain().await;
    assert_eq!(app.b24.event_sends(&p.member_id).len(), sends);
}
on_both_backends!(a_waiting_robot_gets_exactly_one_event_carrying_each_reference_outcome);

async fn events_out_of_order_or_twice_end_the_same(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("order").await;
    app.mango.set_scenario(TRAINEES, answered(42));
    for delivery in [
        Delivery::SummaryFirst,
        Delivery::Reversed,
        Delivery::Duplicated,
    ] {
        let deal = call_and_play(&app, &p, "89001234567", delivery).await;
        let cb = callback_of(&app, &p.member_id, deal).await;
        assert_eq!(cb.call_outcome.as_deref(), Some("answered"), "{delivery:?}");
        assert_eq!(
            (cb.manager_extension.as_deref(), cb.talk_seconds),
            (Some("101"), Some(42))
        );
        let comments = app.b24.timeline_comments(&p.member_id, deal);
        assert_eq!(
            comments.len(),
            2,
            "{delivery:?}: one outcome comment: {comments:?}"
        );
    }
}
on_both_backends!(events_out_of_order_or_twice_end_the_same);

async fn forged_or_unreadable_events_are_refused_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("forged").await;
    app.mango.set_scenario(TRAINEES, answered(10));
    let deal = app.robot_call_with_phone(&p.member_id, "89001234567").await;
    let events = app.mango.events_of(0, 1_800_000_000).expect("scenario");
    let stranger = MangoSim::start(Default::default()).await.expect("sim");
    stranger.add_account(MANGO_KEY, "another-salt");
    for e in &events {
        let status = stranger.post_event(&app.mango_url(), MANGO_KEY, e).await;
        assert_eq!(status, Ok(401), "{}", e.path);
    }
    // Signed, but without the call's id: refused with what is wrong.
    let mut unreadable = events[0].clone();
    unreadable
        .json
        .as_object_mut()
        .expect("object")
        .remove("entry_id");
    let status = app
        .mango
        .post_event(&app.mango_url(), MANGO_KEY, &unreadable)
        .await;
    assert_eq!(status, Ok(400));
    app.drain().await;
    assert_eq!(stored_events(&app).await, 0, "nothing stored");
    let cb = callback_of(&app, &p.member_id, deal).await;
    assert_eq!((cb.call_outcome, cb.outcome_reported_at), (None, None));
    let a = attempts_of(&app, &cb.id).await.remove(0);
    assert_eq!((a.entry_id, a.outcome, a.ended_at), (None, None, None));
}
on_both_backends!(forged_or_unreadable_events_are_refused_and_change_nothing);

async fn a_replayed_call_changes_nothing_the_second_time(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("replay").await;
    wait_for_outcome(&app, &p.member_id, 30).await;
    app.mango.set_scenario(TRAINEES, answered(20));
    let deal = app.robot_call_with_phone(&p.member_id, "89001234567").await;
    let events = app.mango.events_of(0, 1_800_000_000).expect("scenario");
    let post_all = || async {
        for e in &events {
            let status = app.mango.post_event(&app.mango_url(), MANGO_KEY, e).await;
            assert_eq!(status, Ok(200));
        }
        app.drain().await;
    };
    post_all().await;
    let first = callback_of(&app, &p.member_id, deal).await;
    let stored = stored_events(&app).await;
    assert_eq!(stored, events.len() as i64);
    app.advance(Duration::from_secs(60));
    post_all().await;
    let again = callback_of(&app, &p.member_id, deal).await;
    assert_eq!(again.updated_at, first.updated_at, "not even touched");
    assert_eq!(stored_events(&app).await, stored);
    assert_eq!(app.b24.event_sends(&p.member_id).len(), 1);
    assert_eq!(app.b24.timeline_comments(&p.member_id, deal).len(), 2);
}
on_both_backends!(a_replayed_call_changes_nothing_the_second_time);

async fn with_no_summary_the_call_closes_as_unknown_after_the_bound(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("silent").await;
    wait_for_outcome(&app, &p.member_id, 45).await;
    app.mango.set_scenario(TRAINEES, answered(20));
    let deal = app.robot_call_with_phone(&p.member_id, "89001234567").await;
    let events = app.mango.events_of(0, 1_800_000_000).expect("scenario");
    // Every call event, but the summary never comes.
    for e in events.iter().filter(|e| e.path == "events/call") {
        let status = app.mango.post_event(&app.mango_url(), MANGO_KEY, e).await;
        assert_eq!(status, Ok(200));
    }
    app.drain().await;
    let cb = callback_of(&app, &p.member_id, deal).await;
    assert_eq!(
        cb.call_outcome, None,
        "the call is not over without the summary"
    );
    assert_eq!(app.b24.event_sends(&p.member_id).len(), 0);
    let a = attempts_of(&app, &cb.id).await.remove(0);
    assert_eq!(
        a.manager_extension.as_deref(),
        Some("101"),
        "progress is kept meanwhile"
    );

    app.advance(Duration::from_secs(44 * 60));
    app.drain().await;
    assert_eq!(
        callback_of(&app, &p.member_id, deal).await.call_outcome,
        None
    );
    app.advance(Duration::from_secs(2 * 60));
    app.drain().await;
    let cb = callback_of(&app, &p.member_id, deal).await;
    assert_eq!(cb.call_outcome.as_deref(), Some("unknown"));
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1, "the waiting robot still gets its event");
    assert_eq!(sends[0]["RETURN_VALUES"]["outcome"], "unknown");
    let comments = app.b24.timeline_comments(&p.member_id, deal);
    assert!(
        comments
            .last()
            .is_some_and(|c| c.contains("Итог звонка неизвестен") && c.contains("45 мин")),
        "{comments:?}"
    );
    // A summary after the bound changes nothing.
    let summary = events.last().expect("summary");
    assert_eq!(
        app.mango
            .post_event(&app.mango_url(), MANGO_KEY, summary)
            .await,
        Ok(200)
    );
    app.drain().await;
    assert_eq!(
        callback_of(&app, &p.member_id, deal)
            .await
            .call_outcome
            .as_deref(),
        Some("unknown")
    );
    assert_eq!(app.b24.event_sends(&p.member_id).len(), 1);
}
on_both_backends!(with_no_summary_the_call_closes_as_unknown_after_the_bound);

async fn a_command_mango_accepted_then_refused_ends_as_failed(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("refused").await;
    wait_for_outcome(&app, &p.member_id, 30).await;
    let deal = app.robot_call_with_phone(&p.member_id, "89001234567").await;
    let status = app
        .mango
        .post_result(&app.mango_url(), MANGO_KEY, &app.command_id(0), 2240)
        .await;
    assert_eq!(status, Ok(200));
    app.drain().await;
    let cb = callback_of(&app, &p.member_id, deal).await;
    assert_eq!(cb.call_outcome.as_deref(), Some("failed"));
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0]["RETURN_VALUES"]["outcome"], "failed");
    let comments = app.b24.timeline_comments(&p.member_id, deal);
    assert!(
        comments.last().is_some_and(|c| c.contains("2240")),
        "{comments:?}"
    );
    // Its bound passes without a second report.
    app.advance(Duration::from_secs(31 * 60));
    app.drain().await;
    assert_eq!(app.b24.event_sends(&p.member_id).len(), 1);
    assert_eq!(
        app.b24.timeline_comments(&p.member_id, deal).len(),
        comments.len()
    );
}
on_both_backends!(a_command_mango_accepted_then_refused_ends_as_failed);

async fn uninstall_with_clean_deletes_the_portals_attempts_and_call_events(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.installed_portal("gone").await;
    let b = app.installed_portal("stays").await;
    app.mango.set_scenario(TRAINEES, answered(5));
    call_and_play(&app, &a, "89001234567", Delivery::InOrder).await;
    call_and_play(&app, &b, "89001234567", Delivery::InOrder).await;
    let statuses = app
        .b24
        .send_event(&a.member_id, "ONAPPUNINSTALL", &[("CLEAN", "1")])
        .await
        .expect("event");
    assert_eq!(statuses, [200]);
    let counts = |m: String| async {
        app.shared
            .db
            .run(move |c| -> QueryResult<(i64, i64)> {
                Ok((
                    call_attempts::table
                        .filter(call_attempts::member_id.eq(&m))
                        .count()
                        .get_result(c)?,
                    mango_call_events::table
                        .filter(mango_call_events::member_id.eq(&m))
                        .count()
                        .get_result(c)?,
                ))
            })
            .await
            .expect("db")
    };
    assert_eq!(counts(a.member_id.clone()).await, (0, 0));
    let (attempts, events) = counts(b.member_id.clone()).await;
    assert_eq!(attempts, 1);
    assert!(events > 0);
}
on_both_backends!(uninstall_with_clean_deletes_the_portals_attempts_and_call_events);

async fn a_summary_whose_call_events_do_not_all_come_is_applied_after_a_grace_period(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("grace").await;
    app.mango.set_scenario(TRAINEES, answered(30));
    let deal = app.robot_call_with_phone(&p.member_id, "89001234567").await;
    let events = app.mango.events_of(0, 1_800_000_000).expect("scenario");
    // The summary and the manager's leg; the client's leg is lost.
    for e in events
        .iter()
        .rev()
        .filter(|e| e.path == "events/summary" || e.json["to"]["extension"] == "101")
    {
        let status = app.mango.post_event(&app.mango_url(), MANGO_KEY, e).await;
        assert_eq!(status, Ok(200));
    }
    app.drain().await;
    assert_eq!(
        callback_of(&app, &p.member_id, deal).await.call_outcome,
        None
    );
    app.advance(Duration::from_secs(61));
    app.drain().await;
    let cb = callback_of(&app, &p.member_id, deal).await;
    // Without the client's leg the events show a manager who answered and no client.
    assert_eq!(cb.call_outcome.as_deref(), Some("client_missed"));
    assert_eq!(app.b24.timeline_comments(&p.member_id, deal).len(), 2);
}
on_both_backends!(a_summary_whose_call_events_do_not_all_come_is_applied_after_a_grace_period);
