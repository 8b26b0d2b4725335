//! Phone lookups batched across callbacks (#12): a burst on one portal looks its phones up in two
//! `batch` requests, counted on the simulated portal; a lone callback still costs one.

use std::collections::BTreeMap;
use std::time::Duration;

use diesel::prelude::*;
use mango_callback::db::schema::callbacks;
use mango_callback::db::Backend;
use mango_callback::sandbox::bitrix::SimPortal;

use crate::helpers::{spawn_app, TestApp};
use crate::on_both_backends;

const ROBOT: &str = "mango_callback";

/// The `batch` requests that looked phones up (rather than, say, reported): their commands' methods.
fn lookup_batches(app: &TestApp) -> Vec<Vec<String>> {
    app.batch_methods()
        .into_iter()
        .filter(|methods| {
            methods
                .iter()
                .any(|m| m == "crm.deal.contact.items.get" || m == "crm.contact.get")
        })
        .collect()
}

/// Deals `from..from + n`, each with its own contact and mobile phone; returns deal → the phone
/// Mango must get.
fn deals_with_phones(app: &TestApp, p: &SimPortal, from: u32, n: u32) -> BTreeMap<u64, String> {
    (from..from + n)
        .map(|i| {
            let contact = app
                .b24
                .add_contact(&p.member_id, &[("MOBILE", &format!("8 900 100-{i:04}"))]);
            let deal = app.b24.add_deal(&p.member_id, Some(contact));
            (deal, format!("7900100{i:04}"))
        })
        .collect()
}

async fn fire(app: &TestApp, p: &SimPortal, deal: u64) {
    let fired = app
        .b24
        .fire_robot(&p.member_id, ROBOT, deal, &[])
        .await
        .expect("robot");
    assert_eq!(fired.status, 200, "{}", fired.body);
}

/// Mango's commands by deal: the phone each one rang.
fn rung_by_deal(app: &TestApp, p: &SimPortal) -> BTreeMap<u64, Vec<String>> {
    let prefix = format!("b24:{}:", p.member_id);
    let mut rung: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for cmd in app.mango.callbacks() {
        let id = cmd["command_id"].as_str().unwrap_or_default();
        let deal = id
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split(':').next())
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("a command of another portal or deal: {id}"));
        rung.entry(deal)
            .or_default()
            .push(cmd["to"].as_str().unwrap_or_default().to_owned());
    }
    rung
}

async fn a_burst_of_fifty_callbacks_on_one_portal_looks_up_every_phone_in_two_requests(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("burst").await;
    let before = app.b24.calls().len();
    let phones = deals_with_phones(&app, &p, 0, 50);
    for deal in phones.keys() {
        fire(&app, &p, *deal).await;
    }
    // Mango takes 4 callbacks a second: time passes while the burst is rung.
    app.drain_over_time(Duration::from_secs(1), 120).await;

    let lookups = lookup_batches(&app);
    assert!(
        lookups.len() <= 2,
        "50 phones in at most 2 requests, not {}: {lookups:?}",
        lookups.len()
    );
    assert!(
        app.b24.calls_to("crm.contact.get").is_empty(),
        "no contact fetched on its own"
    );
    assert!(lookups.iter().all(|cmds| cmds.len() <= 50), "batch's limit");
    let rung = rung_by_deal(&app, &p);
    let expected: BTreeMap<u64, Vec<String>> = phones
        .iter()
        .map(|(deal, phone)| (*deal, vec![phone.clone()]))
        .collect();
    assert_eq!(
        rung, expected,
        "each deal rung once, at its own contact's phone"
    );
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 50, "each robot call answered once");
    assert!(
        sends
            .iter()
            .all(|s| s["RETURN_VALUES"]["result"] == "started"),
        "{sends:?}"
    );
    // Lookups, reports and comments: everything the burst asked of the portal.
    let requests = app.b24.calls().len() - before;
    assert!(requests <= 50, "the burst of 50 took {requests} requests");
}
on_both_backends!(a_burst_of_fifty_callbacks_on_one_portal_looks_up_every_phone_in_two_requests);

async fn in_a_burst_the_deals_without_a_phone_end_by_the_usual_rules_and_the_others_are_rung_once(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("mixed").await;
    let phones = deals_with_phones(&app, &p, 0, 40);
    let no_contact: Vec<u64> = (0..4)
        .map(|_| app.b24.add_deal(&p.member_id, None))
        .collect();
    let no_phone: Vec<u64> = (0..3)
        .map(|_| {
            let contact = app.b24.add_contact(&p.member_id, &[]);
            app.b24.add_deal(&p.member_id, Some(contact))
        })
        .collect();
    // Deals the portal does not have (deleted after the robot started): unreadable.
    let deleted: Vec<u64> = (0..3).map(|i| 987_000 + i).collect();
    let mut all: Vec<u64> = phones.keys().copied().collect();
    all.extend(no_contact.iter().chain(&no_phone).chain(&deleted));
    // Interleaved, so the adopted callbacks are not all of one kind.
    all.sort_by_key(|d| d % 7);
    for deal in &all {
        fire(&app, &p, *deal).await;
    }
    // Past the minute a deal waits for its contact.
    app.drain_over_time(Duration::from_secs(2), 120).await;

    let rung = rung_by_deal(&app, &p);
    let expected: BTreeMap<u64, Vec<String>> = phones
        .iter()
        .map(|(deal, phone)| (*deal, vec![phone.clone()]))
        .collect();
    assert_eq!(
        rung, expected,
        "the deals with a phone rung once each, no other"
    );
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 50, "each robot call answered once: {sends:?}");
    let mut results: BTreeMap<String, usize> = BTreeMap::new();
    for s in &sends {
        let r = s["RETURN_VALUES"]["result"].as_str().unwrap_or("-");
        *results.entry(r.to_owned()).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = [("started", 40), ("no_phone", 7), ("failed", 3)]
        .into_iter()
        .map(|(r, n)| (r.to_owned(), n))
        .collect();
    assert_eq!(results, want, "{sends:?}");
    let waited = sends.iter().any(|s| {
        s["RETURN_VALUES"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no contact"))
    });
    assert!(
        waited,
        "a deal without a contact ended after the contact wait: {sends:?}"
    );
    for deal in &deleted {
        assert_eq!(
            app.b24.timeline_comments(&p.member_id, *deal).len(),
            0,
            "an unreadable deal gets no comment"
        );
    }
}
on_both_backends!(
    in_a_burst_the_deals_without_a_phone_end_by_the_usual_rules_and_the_others_are_rung_once
);

async fn a_lone_robot_call_looks_up_its_phone_in_one_request(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("lone").await;
    let phones = deals_with_phones(&app, &p, 0, 1);
    let (deal, phone) = phones.iter().next().expect("one deal");
    fire(&app, &p, *deal).await;
    app.drain().await;
    let lookups = lookup_batches(&app);
    assert_eq!(lookups.len(), 1, "{lookups:?}");
    assert_eq!(lookups[0].len(), 3, "deal → contact → phone: {lookups:?}");
    assert_eq!(rung_by_deal(&app, &p)[deal], vec![phone.clone()]);
}
on_both_backends!(a_lone_robot_call_looks_up_its_phone_in_one_request);

/// Leaves every queued callback of the portal under a lease of a run that crashed, ending `at`.
async fn crashed_adopter_leaves_leases_until(app: &TestApp, at: chrono::NaiveDateTime) {
    app.shared
        .db
        .run(move |c| {
            diesel::update(callbacks::table.filter(callbacks::status.eq("queued")))
                .set((
                    callbacks::phone_lookup_by.eq("instance-gone:run-gone"),
                    callbacks::phone_lookup_until.eq(at),
                ))
                .execute(c)
        })
        .await
        .expect("leases left");
}

async fn callbacks_adopted_by_a_crashed_run_look_up_their_phones_once_its_lease_has_expired(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("crashed").await;
    let phones = deals_with_phones(&app, &p, 0, 3);
    for deal in phones.keys() {
        fire(&app, &p, *deal).await;
    }
    // A lease that already ran out blocks nobody.
    crashed_adopter_leaves_leases_until(&app, app.clock.now() - chrono::Duration::seconds(1)).await;
    app.drain_over_time(Duration::from_secs(1), 30).await;
    assert_eq!(rung_by_deal(&app, &p).len(), 3, "every callback rung");
    assert!(
        lookup_batches(&app).len() <= 2,
        "{:?}",
        lookup_batches(&app)
    );

    // A live one holds its callbacks back until it runs out, then they look up themselves.
    let more = deals_with_phones(&app, &p, 3, 2);
    for deal in more.keys() {
        fire(&app, &p, *deal).await;
    }
    crashed_adopter_leases_until_in_30s(&app).await;
    app.drain().await;
    assert_eq!(
        rung_by_deal(&app, &p).len(),
        3,
        "the live lease is waited for"
    );
    app.drain_over_time(Duration::from_secs(5), 12).await;
    let rung = rung_by_deal(&app, &p);
    assert_eq!(rung.len(), 5, "rung after the lease expired: {rung:?}");
    assert!(rung.values().all(|r| r.len() == 1), "once each: {rung:?}");
}
on_both_backends!(
    callbacks_adopted_by_a_crashed_run_look_up_their_phones_once_its_lease_has_expired
);

async fn crashed_adopter_leases_until_in_30s(app: &TestApp) {
    crashed_adopter_leaves_leases_until(app, app.clock.now() + chrono::Duration::seconds(30)).await;
}

async fn a_job_run_again_after_its_run_died_mid_lookup_frees_what_that_run_adopted_at_once(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("rerun").await;
    let phones = deals_with_phones(&app, &p, 0, 3);
    for deal in phones.keys() {
        fire(&app, &p, *deal).await;
    }
    // One job's run adopted all three callbacks and was stopped before it stored anything; the
    // job itself went back to the queue (a shutdown releases it).
    let jobs = app
        .shared
        .db
        .run(mango_callback::jobs::queue::all)
        .await
        .expect("jobs");
    let job = jobs
        .iter()
        .find(|j| j.kind == "place_call")
        .expect("a place_call job");
    let holder = format!("job:{}/run:dead", job.id);
    let until = app.clock.now() + chrono::Duration::seconds(30);
    app.shared
        .db
        .run(move |c| {
            diesel::update(callbacks::table.filter(callbacks::status.eq("queued")))
                .set((
                    callbacks::phone_lookup_by.eq(holder),
                    callbacks::phone_lookup_until.eq(until),
                ))
                .execute(c)
        })
        .await
        .expect("leases left");
    // No time passes: the job's new run frees the leases and all three are looked up now.
    app.drain().await;
    let rung = rung_by_deal(&app, &p);
    let expected: BTreeMap<u64, Vec<String>> = phones
        .iter()
        .map(|(deal, phone)| (*deal, vec![phone.clone()]))
        .collect();
    assert_eq!(rung, expected);
    assert!(
        lookup_batches(&app).len() <= 2,
        "{:?}",
        lookup_batches(&app)
    );
}
on_both_backends!(
    a_job_run_again_after_its_run_died_mid_lookup_frees_what_that_run_adopted_at_once
);

/// A run ends its lookup leases by its own name (`end_lookup_leases`); without an index on the
/// holder that statement read every callback of every portal, on SQLite while holding its one
/// writer. The plan of the same filter names the partial index on both backends.
async fn ending_a_runs_lookup_leases_reads_only_the_callbacks_it_leased(backend: Backend) {
    let app = spawn_app(backend).await;
    let sqlite = backend == Backend::Sqlite;
    let plan = app
        .shared
        .db
        .run(move |c| -> diesel::QueryResult<String> {
            let update = "UPDATE callbacks SET phone_lookup_by = NULL, phone_lookup_until = NULL \
                          WHERE phone_lookup_by = 'run-1'";
            let lines: Vec<String> = if sqlite {
                #[derive(diesel::QueryableByName)]
                struct Step {
                    #[diesel(sql_type = diesel::sql_types::Text)]
                    detail: String,
                }
                let steps: Vec<Step> =
                    diesel::sql_query(format!("EXPLAIN QUERY PLAN {update}")).load(c)?;
                steps.into_iter().map(|s| s.detail).collect()
            } else {
                #[derive(diesel::QueryableByName)]
                struct Step {
                    #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
                    line: String,
                }
                // A new table is small enough that a scan is cheapest; the question is whether
                // the index serves the filter once the table is not.
                let steps: Vec<Step> = c.transaction(|c| {
                    diesel::sql_query("SET LOCAL enable_seqscan = off").execute(c)?;
                    diesel::sql_query(format!("EXPLAIN {update}")).load(c)
                })?;
                steps.into_iter().map(|s| s.line).collect()
            };
            Ok(lines.join("\n"))
        })
        .await
        .expect("the plan");
    assert!(
        plan.contains("callbacks_lookup_holder"),
        "the leases are found by the index on their holder:\n{plan}"
    );
}
on_both_backends!(ending_a_runs_lookup_leases_reads_only_the_callbacks_it_leased);
