use serde_json::json;

use super::*;

#[test]
fn call_events_are_read_whether_numbers_come_as_strings_or_ints() {
    let doc_2017 = json!({"entry_id":"MzUyODbvczkxMjo0MDE=","call_id":"MToxMDE=","timestamp":"1445288400","seq":"1",
        "call_state":"Connected","to":{"extension":"29","acd_group":"303"},"disconnect_reason":"1120","command_id":"cbk1"});
    let doc_new = json!({"entry_id":"MzUyODbvczkxMjo0MDE=","call_id":"MToxMDE=","timestamp":1445288400,"seq":1,
        "call_state":"Connected","to":{"extension":29,"acd_group":303},"disconnect_reason":1120,"command_id":"cbk1"});
    let a = parse_call(&doc_2017).expect("2017 shape");
    assert_eq!(a, parse_call(&doc_new).expect("new shape"));
    assert_eq!(
        (a.seq, a.timestamp, a.state),
        (1, Some(1445288400), CallState::Connected)
    );
    assert_eq!(
        (a.to_extension.as_str(), a.disconnect_reason),
        ("29", Some(1120))
    );
}

#[test]
fn events_without_their_ids_or_with_numbers_out_of_range_are_refused() {
    assert!(
        parse_call(&json!({"call_id":"c","seq":1})).is_err(),
        "no entry_id"
    );
    assert!(
        parse_call(&json!({"entry_id":"e","seq":1})).is_err(),
        "no call_id"
    );
    assert!(
        parse_call(&json!({"entry_id":"e","call_id":"c"})).is_err(),
        "no seq"
    );
    assert!(parse_call(&json!({"entry_id":"e","call_id":"c","seq":-1})).is_err());
    assert!(parse_call(&json!({"entry_id":"e","call_id":"c","seq":1e30})).is_err());
    assert!(parse_call(&json!({"entry_id":"e\u{0}","call_id":"c","seq":1})).is_err());
    assert!(parse_call(&json!({"entry_id":"e".repeat(300),"call_id":"c","seq":1})).is_err());
    assert!(parse_summary(&json!({"talk_time":5})).is_err());
    let s =
        parse_summary(&json!({"entry_id":"e","talk_time":-5,"end_time":"soon"})).expect("lenient");
    assert_eq!(
        (s.talk_time, s.end_time),
        (None, None),
        "unreadable numbers are absent"
    );
}

fn call(call_id: &str, seq: i64, t: i64, state: CallState, ext: &str, number: &str) -> CallEvent {
    CallEvent {
        entry_id: "e".into(),
        call_id: call_id.into(),
        seq,
        timestamp: Some(t),
        state,
        to_extension: ext.into(),
        to_number: number.into(),
        disconnect_reason: None,
        command_id: None,
    }
}

#[test]
fn without_the_summary_the_call_is_not_over_and_with_it_the_outcome_is_decided() {
    use CallState::*;
    let t = 1_800_000_000;
    let mut calls = vec![
        call("a", 1, t, Appeared, "101", ""),
        call("a", 2, t + 5, Connected, "101", ""),
        call("b", 3, t + 6, Appeared, "", "79001234567"),
        call("b", 4, t + 15, Connected, "", "79001234567"),
        call("b", 5, t + 148, Disconnected, "", "79001234567"),
    ];
    let p = progress(&calls, None, "002");
    assert_eq!(p.outcome, None);
    assert_eq!(p.manager_extension.as_deref(), Some("101"));
    assert_eq!(
        (p.client_connected_at, p.talk_seconds),
        (Some(t + 15), Some(133))
    );
    calls.reverse();
    let s = Summary {
        entry_id: "e".into(),
        talk_time: Some(133),
        end_time: Some(t + 148),
        entry_result: Some(1),
        disconnect_reason: Some(1120),
    };
    let p = progress(&calls, Some(&s), "002");
    assert_eq!(p.outcome, Some(Outcome::Answered));
    assert!(!p.complete, "leg a never disconnected");
    calls.push(call("a", 6, t + 148, Disconnected, "101", ""));
    assert!(progress(&calls, Some(&s), "002").complete);
    calls.retain(|e| e.seq != 3);
    assert!(
        !progress(&calls, Some(&s), "002").complete,
        "seq 3 is missing"
    );
    assert_eq!(
        (p.talk_seconds, p.disconnect_reason, p.ended_at),
        (Some(133), Some(1120), Some(t + 148))
    );
}

#[test]
fn a_leg_to_the_group_itself_is_no_manager_and_a_billing_code_is_a_failure() {
    use CallState::*;
    let calls = vec![call("g", 1, 1_800_000_000, Connected, "002", "")];
    let s = Summary {
        entry_id: "e".into(),
        talk_time: Some(0),
        end_time: None,
        entry_result: Some(0),
        disconnect_reason: Some(2240),
    };
    let p = progress(&calls, Some(&s), "002");
    assert_eq!(
        (p.manager_extension, p.outcome),
        (None, Some(Outcome::Failed))
    );
    let s = Summary {
        disconnect_reason: Some(1111),
        ..s
    };
    assert_eq!(
        progress(&calls, Some(&s), "002").outcome,
        Some(Outcome::ManagerMissed)
    );
}
