//! The bench's correctness checks, from what the simulated peers received: every robot call
//! acknowledged and turned into one started callback, one Mango command per callback, one
//! `bizproc.event.send` per robot call, one timeline comment per deal, no limit tripped.

use std::collections::HashMap;

use serde::Serialize;

use super::figures::{limited, Observed};
use crate::callback::Status;

/// One correctness check: its name, whether it held, and what was found.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &'static str, problems: Vec<String>, counted: String) -> Check {
    let ok = problems.is_empty();
    let mut detail = counted;
    if !ok {
        // The first few are enough to start looking; the count says how many.
        let shown: Vec<&str> = problems.iter().take(3).map(String::as_str).collect();
        detail = format!("{} wrong: {}", problems.len(), shown.join("; "));
    }
    Check { name, ok, detail }
}

/// Every check of the run.
pub(super) fn all(o: &Observed<'_>) -> Vec<Check> {
    let tripped = o.rest_calls.iter().filter(|c| limited(c.status)).count()
        + o.mango_statuses.iter().filter(|s| limited(**s)).count();
    let robot_calls: Vec<&super::fire::Ack> =
        o.fired.acks.iter().chain(o.fired.lone.as_ref()).collect();
    let expected = o.opts.calls as usize + usize::from(o.opts.lone);
    let mut out = Vec::new();

    let mut problems: Vec<String> = robot_calls
        .iter()
        .filter(|a| a.status != Ok(200))
        .map(|a| format!("answered {:?}", a.status))
        .collect();
    if robot_calls.len() != expected {
        problems.push(format!("{} of {expected} fired", robot_calls.len()));
    }
    out.push(check(
        "every robot call acknowledged 200",
        problems,
        format!("{} of {expected}", robot_calls.len()),
    ));

    let mut problems: Vec<String> = o
        .callbacks
        .iter()
        .filter(|c| c.status != Status::Started)
        .map(|c| format!("deal {} ended {} ({:?})", c.deal_id, c.status, c.error))
        .collect();
    if o.callbacks.len() != expected {
        problems.push(format!(
            "{} callbacks for {expected} robot calls",
            o.callbacks.len()
        ));
    }
    out.push(check(
        "one started callback per robot call",
        problems,
        format!("{} started", o.callbacks.len()),
    ));

    let mut commands: HashMap<&str, usize> = HashMap::new();
    for (_, cmd) in &o.mango_commands {
        *commands
            .entry(cmd["command_id"].as_str().unwrap_or("(none)"))
            .or_default() += 1;
    }
    let mut problems = Vec::new();
    for c in o.callbacks.iter().filter(|c| c.status == Status::Started) {
        let n = c
            .command_id
            .as_deref()
            .and_then(|id| commands.remove(id))
            .unwrap_or(0);
        if n != 1 {
            problems.push(format!("deal {}: {n} Mango commands", c.deal_id));
        }
    }
    for (id, n) in commands {
        problems.push(format!("{n} Mango command(s) {id} of no started callback"));
    }
    out.push(check(
        "one Mango command per started callback",
        problems,
        format!("{} commands", o.mango_commands.len()),
    ));

    let mut sends: HashMap<String, usize> = HashMap::new();
    for p in o.portals {
        for s in o.b24.event_sends(&p.sim.member_id) {
            let token = s
                .as_object()
                .and_then(|m| {
                    m.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("event_token"))
                })
                .and_then(|(_, v)| v.as_str())
                .unwrap_or("(none)")
                .to_owned();
            *sends.entry(token).or_default() += 1;
        }
    }
    let total_sends: usize = sends.values().sum();
    let mut problems = Vec::new();
    for a in &robot_calls {
        let n = sends.remove(&a.event_token).unwrap_or(0);
        if n != 1 {
            problems.push(format!("{n} bizproc.event.send for one robot call"));
        }
    }
    for (_, n) in sends {
        problems.push(format!(
            "{n} bizproc.event.send for no robot call of the run"
        ));
    }
    out.push(check(
        "one bizproc.event.send per robot call",
        problems,
        format!("{total_sends} sends"),
    ));

    let mut problems = Vec::new();
    let mut comments = 0;
    for c in &o.callbacks {
        let deal: u64 = c.deal_id.parse().unwrap_or(0);
        let n = o.b24.timeline_comments(&c.member_id, deal).len();
        comments += n;
        if n != 1 {
            problems.push(format!("deal {}: {n} timeline comments", c.deal_id));
        }
    }
    out.push(check(
        "one timeline comment per deal",
        problems,
        format!("{comments} comments"),
    ));

    let problems = if tripped == 0 {
        Vec::new()
    } else {
        vec![format!("{tripped} answers 503/429")]
    };
    out.push(check(
        "no limit tripped",
        problems,
        "0 answers 503/429".into(),
    ));
    out
}
