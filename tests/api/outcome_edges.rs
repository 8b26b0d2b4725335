//! The outcome loop's edges (#11): forged and unreadable events, replays, a summary that never
//! comes (unknown after the bound, clock driven) or comes without all its call events, a command
//! Mango refused after accepting it, and CLEAN uninstall.

use std::time::Duration;

use diesel::prelude::*;
use mango_callback::db::schema::{call_attempts, mango_call_events};
use mango_callback::db::Backend;
use mango_callback::sandbox::mango::{Delivery, MangoSim};

use crate::helpers::{spawn_app, MANGO_KEY, TRAINEES};
use crate::on_both_backends;
use crate::outcome::{
    answered, attempts_of, call_and_play, callback_of, stored_events, wait_for_outcome,
};

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
    // Unsigned: refused.
    let body = format!(
        "vpbx_api_key={MANGO_KEY}&json={}",
        url::form_urlencoded::byte_serialize(events[0].json.to_string().as_bytes())
            .collect::<String>()
    );
    assert_eq!(app.post_form("/mango/events/call", body).await.0, 400);
    // Signed events of calls we did not order (another command, or none on an unknown call):
    // acknowledged, not stored.
    for change in [Some("someone-else:42"), None] {
        let mut other = events[0].clone();
        other.json["entry_id"] = "T3RoZXI=".into();
        match change {
            Some(cmd) => other.json["command_id"] = cmd.into(),
            None => drop(
                other
                    .json
                    .as_object_mut()
                    .expect("object")
                    .remove("command_id"),
            ),
        }
        let status = app
            .mango
            .post_event(&app.mango_url(), MANGO_KEY, &other)
            .await;
        assert_eq!(status, Ok(200));
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
    crate::outcome::no_retries(&app, &p.member_id).await;
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

async fn call_events_older_than_two_days_are_deleted_and_the_outcome_stays(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("purge").await;
    app.mango.set_scenario(TRAINEES, answered(40));
    let deal = call_and_play(&app, &p, "89001234567", Delivery::InOrder).await;
    assert!(stored_events(&app).await > 0);
    app.advance(Duration::from_secs(24 * 3600));
    assert_eq!(purge(&app).await, 0, "a day old: kept");
    app.advance(Duration::from_secs(25 * 3600));
    assert!(purge(&app).await > 0);
    assert_eq!(stored_events(&app).await, 0);
    let cb = callback_of(&app, &p.member_id, deal).await;
    assert_eq!(cb.call_outcome.as_deref(), Some("answered"));
}
on_both_backends!(call_events_older_than_two_days_are_deleted_and_the_outcome_stays);

async fn purge(app: &crate::helpers::TestApp) -> usize {
    let now = app.clock.now();
    app.shared
        .db
        .run(move |c| mango_callback::callback::outcome::record::purge_old_events(c, now))
        .await
        .expect("db")
}
