//! The outcome loop (#11): the simulated Mango posts the signed `events/call` and
//! `events/summary` of a callback_group as the real PBX would; each call ends in its outcome on
//! the callback, one timeline comment, and — when the robot waits — exactly one
//! `bizproc.event.send` carrying the outcome.

use diesel::prelude::*;
use mango_callback::callback::outcome::Attempt;
use mango_callback::callback::Callback;
use mango_callback::db::schema::{call_attempts, mango_call_events, portal_settings};
use mango_callback::db::Backend;
use mango_callback::sandbox::bitrix::SimPortal;
use mango_callback::sandbox::mango::{CallScenario, Delivery};

use crate::helpers::{spawn_app, TestApp, MANGO_KEY, TRAINEES};
use crate::on_both_backends;

pub(crate) fn answered(talk_seconds: u32) -> CallScenario {
    CallScenario::Answered {
        manager: "101".into(),
        talk_seconds,
    }
}

/// Sets the portal's "robot waits for the call's outcome" and its bound, as stored settings.
pub(crate) async fn wait_for_outcome(app: &TestApp, member_id: &str, minutes: i32) {
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

/// The portal calls once whatever the outcome: these tests are about one attempt's outcome.
pub(crate) async fn no_retries(app: &TestApp, member_id: &str) {
    let mid = member_id.to_owned();
    app.shared
        .db
        .run(move |c| {
            diesel::update(portal_settings::table.find(mid))
                .set((
                    portal_settings::retry_no_answer_times.eq(0),
                    portal_settings::retry_client_times.eq(0),
                ))
                .execute(c)
        })
        .await
        .expect("db");
}

pub(crate) async fn callback_of(app: &TestApp, member_id: &str, deal: u64) -> Callback {
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

pub(crate) async fn attempts_of(app: &TestApp, callback_id: &str) -> Vec<Attempt> {
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

pub(crate) async fn stored_events(app: &TestApp) -> i64 {
    app.shared
        .db
        .run(|c| mango_call_events::table.count().get_result::<i64>(c))
        .await
        .expect("db")
}

/// A robot call on a new deal ringing `phone` (a number the scenario is keyed on), its command
/// accepted; then Mango's events delivered as `delivery` and the jobs run.
pub(crate) async fn call_and_play(
    app: &TestApp,
    p: &SimPortal,
    phone: &str,
    delivery: Delivery,
) -> u64 {
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
    no_retries(&app, &p.member_id).await;
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
