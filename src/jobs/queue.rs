//! The only SQL for the `jobs` table: enqueue, claim by compare-and-set lease, finish, reap.
//!
//! Portable by design: no row lock is held while a job runs, because on SQLite an open
//! write transaction would block every other writer for the length of an HTTP call. A claim is an
//! `UPDATE … WHERE id = ? AND status = 'queued'` that only one worker can win. A running job's
//! lease is short and renewed by its worker ([`renew`]); once a crashed worker's lease runs out,
//! [`claim`] takes the job over directly (and [`reap`] puts it back for idle instances).
//!
//! Every `now` a lease is compared with comes from [`crate::db::database_now`] (plus the test
//! clock's offset), so instances with skewed host clocks still agree on who holds a job.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::jobs;
use crate::db::{insert_if_absent, DbConnection, PlannedEachTime};

pub const QUEUED: &str = "queued";
pub const RUNNING: &str = "running";
pub const DONE: &str = "done";
pub const DEAD: &str = "dead";

/// A job to insert, usually in the same transaction as the domain row it acts on (outbox).
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: &'static str,
    pub payload: String,
    pub member_id: Option<String>,
    /// A second enqueue with the same key is a no-op ("already queued").
    pub dedup_key: Option<String>,
    pub run_at: NaiveDateTime,
    pub max_attempts: i32,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = jobs)]
pub struct JobRow {
    pub id: String,
    pub member_id: Option<String>,
    pub kind: String,
    pub payload: String,
    pub dedup_key: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: NaiveDateTime,
    pub locked_by: Option<String>,
    pub locked_until: Option<NaiveDateTime>,
    pub last_error: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// Inserts the job; returns `false` when a job with the same dedup key already exists.
pub fn enqueue(conn: &mut DbConnection, job: &NewJob, now: NaiveDateTime) -> QueryResult<bool> {
    let id = uuid::Uuid::now_v7().to_string();
    insert_if_absent!(
        conn,
        diesel::insert_into(jobs::table).values((
            jobs::id.eq(&id),
            jobs::member_id.eq(&job.member_id),
            jobs::kind.eq(job.kind),
            jobs::payload.eq(&job.payload),
            jobs::dedup_key.eq(&job.dedup_key),
            jobs::status.eq(QUEUED),
            jobs::attempts.eq(0),
            jobs::max_attempts.eq(job.max_attempts),
            jobs::run_at.eq(job.run_at),
            jobs::created_at.eq(now),
            jobs::updated_at.eq(now),
        ))
    )
}

/// [`claim_gathering`] with no kind gathered: every due job is claimed on its own.
pub fn claim(
    conn: &mut DbConnection,
    worker: &str,
    now: NaiveDateTime,
    lease_until: NaiveDateTime,
    limit: i64,
) -> QueryResult<Vec<JobRow>> {
    claim_gathering(conn, worker, now, lease_until, limit, &[])
}

/// Claims up to `limit` due jobs for `worker`, each with a lease until `lease_until`: queued
/// jobs whose `run_at` has come, and running jobs whose lease ran out (their worker died).
///
/// Fair across portals (`member_id`): the portals with due jobs take turns, those running the
/// fewest jobs first and, among them, those with the fewest due, so one portal's burst does not take every slot while another portal's lone
/// job waits.
/// A portal alone still gets every slot.
///
/// Of a kind in `gathered`, one job per portal is claimed: its run gathers the portal's other
/// due jobs of that kind itself ([`adopt`]) and does them together (one Bitrix24 `batch` for
/// many reports), which it could not if each were claimed and run on its own.
///
/// Candidates are read without locks; each is then taken by a compare-and-set that succeeds
/// for exactly one worker even across processes (PostgreSQL re-checks the `WHERE` of a
/// concurrent `UPDATE` after the winner commits; SQLite serialises writers).
pub fn claim_gathering(
    conn: &mut DbConnection,
    worker: &str,
    now: NaiveDateTime,
    lease_until: NaiveDateTime,
    limit: i64,
    gathered: &[&str],
) -> QueryResult<Vec<JobRow>> {
    // The candidates are read outside the write transaction, so SQLite's single writer is not
    // held while they are; the taking is one transaction, one durable commit (a disk sync) for
    // all the jobs the claim takes rather than one per job.
    let candidates = candidates(conn, now, limit)?;
    take_candidates(conn, worker, now, lease_until, limit, gathered, candidates)
}

/// [`claim_gathering`]'s first half, a read only: the due jobs in turn order.
pub type Candidates = Vec<(String, String, Option<String>)>;

/// [`claim_gathering`]'s second half: takes what it can of `candidates` by compare-and-set, in
/// one transaction (one durable commit for all the jobs it takes).
pub fn take_candidates(
    conn: &mut DbConnection,
    worker: &str,
    now: NaiveDateTime,
    lease_until: NaiveDateTime,
    limit: i64,
    gathered: &[&str],
    candidates: Candidates,
) -> QueryResult<Vec<JobRow>> {
    crate::db::write_tx(conn, |conn| {
        take_each(conn, worker, now, lease_until, limit, gathered, candidates)
    })
}

/// The compare-and-set taking of [`claim_gathering`]'s candidates.
fn take_each(
    conn: &mut DbConnection,
    worker: &str,
    now: NaiveDateTime,
    lease_until: NaiveDateTime,
    limit: i64,
    gathered: &[&str],
    candidates: Vec<(String, String, Option<String>)>,
) -> QueryResult<Vec<JobRow>> {
    let due = jobs::status
        .eq(QUEUED)
        .and(jobs::run_at.le(now))
        .or(jobs::status.eq(RUNNING).and(jobs::locked_until.lt(now)));
    let mut claimed: Vec<String> = Vec::new();
    let mut gathering: std::collections::HashSet<(Option<String>, String)> = Default::default();
    for (id, kind, member_id) in candidates {
        if claimed.len() as i64 >= limit {
            break;
        }
        if gathered.contains(&kind.as_str())
            && gathering.contains(&(member_id.clone(), kind.clone()))
        {
            continue;
        }
        let won = diesel::update(jobs::table.filter(jobs::id.eq(&id)).filter(due))
            .set(leased(worker, lease_until, now))
            .execute(conn)?;
        if won == 1 {
            gathering.insert((member_id, kind));
            claimed.push(id);
        }
    }
    rows_in_order(conn, claimed)
}

/// What taking a job sets: it runs under `worker`'s lease until `lease_until`, its attempt
/// counted (a claim and an adoption alike).
type Leased<'a> = (
    diesel::dsl::Eq<jobs::status, &'static str>,
    diesel::dsl::Eq<jobs::locked_by, &'a str>,
    diesel::dsl::Eq<jobs::locked_until, NaiveDateTime>,
    diesel::dsl::Eq<jobs::attempts, diesel::helper_types::Add<jobs::attempts, i32>>,
    diesel::dsl::Eq<jobs::updated_at, NaiveDateTime>,
);

fn leased(worker: &str, lease_until: NaiveDateTime, now: NaiveDateTime) -> Leased<'_> {
    (
        jobs::status.eq(RUNNING),
        jobs::locked_by.eq(worker),
        jobs::locked_until.eq(lease_until),
        jobs::attempts.eq(jobs::attempts + 1),
        jobs::updated_at.eq(now),
    )
}

/// The rows of `ids`, in that order: read in one query after the compare-and-sets that won
/// them, not one by one between them, which held SQLite's one writer longer while robot calls'
/// acknowledgements waited for it (claims at 500 robot calls/s: p99 5.8 ms, longest 12.4 ms
/// one by one; p99 5.1 ms, longest 8.8 ms so).
fn rows_in_order(conn: &mut DbConnection, ids: Vec<String>) -> QueryResult<Vec<JobRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows: std::collections::HashMap<String, JobRow> = PlannedEachTime(
        jobs::table
            .filter(jobs::id.eq_any(&ids))
            .select(JobRow::as_select()),
    )
    .load::<JobRow>(conn)?
    .into_iter()
    .map(|r| (r.id.clone(), r))
    .collect();
    Ok(ids.iter().filter_map(|id| rows.remove(id)).collect())
}

/// Claims for `worker` up to `limit` more due jobs of `kind` for the portal, for a run that does
/// them together with its own (see [`claim`] on gathered kinds). Only jobs that never failed
/// (`attempts = 0`): a retried one runs on its own, with the care a retry needs. The adopted
/// rows come back claimed, their attempt counted; the adopter finishes each of them.
pub fn adopt(
    conn: &mut DbConnection,
    worker: &str,
    member_id: &str,
    kind: &str,
    now: NaiveDateTime,
    lease_until: NaiveDateTime,
    limit: i64,
) -> QueryResult<Vec<JobRow>> {
    let due = || {
        jobs::table
            .filter(jobs::status.eq(QUEUED))
            .filter(jobs::kind.eq(kind))
            .filter(jobs::member_id.eq(member_id))
            .filter(jobs::run_at.le(now))
            .filter(jobs::attempts.eq(0))
    };
    let ids: Vec<String> = PlannedEachTime(
        due()
            .order((jobs::run_at.asc(), jobs::id.asc()))
            .select(jobs::id)
            .limit(limit),
    )
    .load(conn)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    crate::db::write_tx(conn, |conn| {
        let mut adopted = Vec::with_capacity(ids.len());
        for id in ids {
            let won = diesel::update(due().filter(jobs::id.eq(&id)))
                .set(leased(worker, lease_until, now))
                .execute(conn)?;
            if won == 1 {
                adopted.push(id);
            }
        }
        rows_in_order(conn, adopted)
    })
}

/// Makes the jobs waiting to be gathered ([`super::GATHER_NOTE`]) until `until` due now: the
/// deterministic drain's way to run them without waiting out their window.
pub fn hurry_gathering(
    conn: &mut DbConnection,
    until: NaiveDateTime,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(
        jobs::table
            .filter(jobs::status.eq(QUEUED))
            .filter(jobs::run_at.gt(now))
            .filter(jobs::run_at.le(until))
            .filter(jobs::last_error.like(format!("{}%", super::GATHER_NOTE))),
    )
    .set(jobs::run_at.eq(now))
    .execute(conn)
}

/// Extends `worker`'s lease on a running job; `false` when the job is no longer its own (the
/// lease ran out and another worker took it over, or it was released or cancelled).
pub fn renew(
    conn: &mut DbConnection,
    id: &str,
    worker: &str,
    lease_until: NaiveDateTime,
) -> QueryResult<bool> {
    let n = diesel::update(owned(id, worker))
        .set(jobs::locked_until.eq(lease_until))
        .execute(conn)?;
    Ok(n == 1)
}

/// Whether `worker` holds a live lease on the job at `now`: the fence for a step that must
/// happen at most once (the Mango send), checked in that step's own transaction.
pub fn holds_lease(
    conn: &mut DbConnection,
    id: &str,
    worker: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let n: i64 = owned(id, worker)
        .filter(jobs::locked_until.ge(now))
        .count()
        .get_result(conn)?;
    Ok(n == 1)
}

/// How many portals with due jobs one claim looks at, oldest first: far more than a deployment's
/// busy portals at any moment, and a bound on the claim's work.
const MAX_PORTALS_PER_CLAIM: i64 = 1_000;

/// Due jobs (id, kind, portal) in turn order: each portal's oldest, then each one's second
/// oldest, and so on, portals ordered by how many jobs they are running, then how many they have
/// due, then by their oldest due job; twice `limit` of them, since some may be lost to other workers' claims.
pub fn candidates(
    conn: &mut DbConnection,
    now: NaiveDateTime,
    limit: i64,
) -> QueryResult<Vec<(String, String, Option<String>)>> {
    let want = limit.saturating_mul(2).max(1);
    // Counted in two parts, each read from the index `jobs_portal_due` alone: the queued jobs
    // whose time has come (a burst's thousands), and the running ones whose lease ran out (a
    // handful). One query with the `OR` of both looked up every due job's row.
    // Queued ones counted apart by whether they were woken from a wait for a rate budget, in
    // the index's own order: a portal's read below asks only for the kinds it has.
    let queued: Vec<(Option<String>, bool, Option<NaiveDateTime>, i64)> = PlannedEachTime(
        jobs::table
            .filter(jobs::status.eq(QUEUED))
            .filter(jobs::run_at.le(now))
            .group_by((jobs::member_id, jobs::budget_waited))
            .select((
                jobs::member_id,
                jobs::budget_waited,
                diesel::dsl::min(jobs::run_at),
                diesel::dsl::count_star(),
            )),
    )
    .load(conn)?;
    let mut woken: std::collections::HashMap<Option<String>, i64> = Default::default();
    let mut portals: Vec<PortalDue> = Vec::new();
    for (member_id, waited, oldest, n) in queued {
        if waited {
            woken.insert(member_id.clone(), n);
        }
        add_due(&mut portals, member_id, oldest, n);
    }
    // The running jobs, read once for both uses below: their leases end the job slots of a
    // live worker or, run out, make them due again. They are a few (the job slots of the live
    // workers); two reads of them (expired, live) each walked the index entries of every job
    // that had run since the last vacuum, 2.5 ms a claim on PostgreSQL in a burst.
    let running_rows: Vec<(Option<String>, Option<NaiveDateTime>, NaiveDateTime)> =
        PlannedEachTime(jobs::table.filter(jobs::status.eq(RUNNING)).select((
            jobs::member_id,
            jobs::locked_until,
            jobs::run_at,
        )))
        .load(conn)?;
    let mut expired: Vec<PortalDue> = Vec::new();
    let mut running: std::collections::HashMap<Option<String>, i64> = Default::default();
    for (member_id, locked_until, run_at) in running_rows {
        match locked_until {
            Some(until) if until < now => add_due(&mut expired, member_id, Some(run_at), 1),
            Some(_) => *running.entry(member_id).or_insert(0) += 1,
            // Never written (a claim always sets a lease); counted as neither, as before.
            None => {}
        }
    }
    // Queued jobs whose time has come, and running jobs whose lease ran out (their worker died):
    // the second are a handful, of the portals named here.
    let with_expired: std::collections::HashSet<Option<String>> =
        expired.iter().map(|(m, _, _)| m.clone()).collect();
    for (member_id, oldest, n) in expired {
        add_due(&mut portals, member_id, oldest, n);
    }
    portals.sort_by_key(|(_, oldest, _)| *oldest);
    portals.truncate(usize::try_from(MAX_PORTALS_PER_CLAIM).unwrap_or(usize::MAX));
    // Portals running the fewest jobs go first, so the slots spread over the busy portals (each
    // is held to its own Mango and Bitrix24 pace); among those running as many, the one with the
    // fewest due: a lone callback's portal is served before the next job of a portal in the
    // middle of a burst, though the burst's jobs are older. The burst still gets every slot the
    // quiet portals leave.
    // A stable sort: among portals alike in both, the oldest due job still goes first.
    portals.sort_by_key(|(m, _, due)| (running.get(m).copied().unwrap_or(0), *due));
    portals.truncate(usize::try_from(want).unwrap_or(usize::MAX));
    // Taking turns, `want` candidates need only this many of each portal: a claim of a few
    // slots in a burst over 100 portals reads a few rows, not `want` of each (on PostgreSQL
    // each portal's read is a round trip, and claims run many times a second).
    let n = i64::try_from(portals.len()).unwrap_or(i64::MAX).max(1);
    let per_portal = (want + n - 1) / n;
    let mut queues = Vec::with_capacity(portals.len());
    for (member_id, _, due) in portals {
        // Read apart, each in the index's order: one query with the `OR` of both made
        // PostgreSQL fetch every due row of the portal and sort them (2.3 ms a portal in a burst).
        // Jobs woken from a budget wait first, then the others, each only if the portal has any.
        let m = member_id.as_deref();
        let woken_due = woken.get(&member_id).copied().unwrap_or(0);
        let mut ids = if woken_due > 0 {
            portal_due(conn, m, QUEUED, Some(true), now, per_portal)?
        } else {
            Vec::new()
        };
        let left = per_portal - i64::try_from(ids.len()).unwrap_or(per_portal);
        if left > 0 && due > woken_due {
            ids.extend(portal_due(conn, m, QUEUED, Some(false), now, left)?);
        }
        if with_expired.contains(&member_id) {
            ids.extend(portal_due(conn, m, RUNNING, None, now, per_portal)?);
            ids.sort_by(|a, b| a.2.cmp(&b.2));
            ids.truncate(usize::try_from(per_portal).unwrap_or(usize::MAX));
        }
        let portal = member_id.clone();
        queues.push(
            ids.into_iter()
                .map(move |(id, kind, _)| (id, kind, portal.clone())),
        );
    }
    let mut turns = Vec::new();
    while (turns.len() as i64) < want {
        let before = turns.len();
        turns.extend(queues.iter_mut().filter_map(Iterator::next));
        if turns.len() == before {
            break;
        }
    }
    turns.truncate(usize::try_from(want).unwrap_or(usize::MAX));
    Ok(turns)
}

/// A portal with due jobs: (portal, its oldest due job's time, how many are due).
type PortalDue = (Option<String>, Option<NaiveDateTime>, i64);

/// Adds `n` due jobs of a portal, the oldest due at `oldest`, to its count in `portals`.
fn add_due(
    portals: &mut Vec<PortalDue>,
    member_id: Option<String>,
    oldest: Option<NaiveDateTime>,
    n: i64,
) {
    match portals.iter_mut().find(|(m, _, _)| *m == member_id) {
        Some(p) => {
            p.1 = match (p.1, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            p.2 += n;
        }
        None => portals.push((member_id, oldest, n)),
    }
}

/// A job's place in its portal's claim order: (not woken from a budget wait, run_at, id).
type TurnKey = (bool, NaiveDateTime, String);

/// A portal's first `n` due jobs of one status (id, kind, turn key) in claim order: queued ones
/// whose time has come, or running ones whose lease ran out. Jobs woken from a wait for a rate
/// budget go first: their turn passes if they are not claimed, and the portal's jobs that never
/// ran would only join the line behind them.
fn portal_due(
    conn: &mut DbConnection,
    member_id: Option<&str>,
    status: &'static str,
    budget_waited: Option<bool>,
    now: NaiveDateTime,
    n: i64,
) -> QueryResult<Vec<(String, String, TurnKey)>> {
    // Each kind read apart, oldest first, by equality on the index's leading columns and a range
    // on run_at: ordered by the flag in one query, SQLite's planner took `jobs_due` instead,
    // filtered every portal's due jobs and sorted them (the burst's CPU nearly doubled).
    let mut q = jobs::table
        .filter(jobs::status.eq(status))
        .select((jobs::id, jobs::kind, jobs::budget_waited, jobs::run_at))
        .order((jobs::run_at.asc(), jobs::id.asc()))
        .limit(n)
        .into_boxed();
    if let Some(flag) = budget_waited {
        q = q.filter(jobs::budget_waited.eq(flag));
    }
    q = match member_id {
        Some(m) => q.filter(jobs::member_id.eq(m.to_owned())),
        None => q.filter(jobs::member_id.is_null()),
    };
    q = if status == RUNNING {
        q.filter(jobs::locked_until.lt(now))
    } else {
        q.filter(jobs::run_at.le(now))
    };
    let rows: Vec<(String, String, bool, NaiveDateTime)> = PlannedEachTime(q).load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, kind, waited, run_at)| {
            let key = (!waited, run_at, id.clone());
            (id, kind, key)
        })
        .collect())
}

type Owned<'a> = diesel::dsl::Filter<
    diesel::dsl::Filter<
        diesel::dsl::Filter<jobs::table, diesel::dsl::Eq<jobs::id, &'a str>>,
        diesel::dsl::Eq<jobs::status, &'static str>,
    >,
    diesel::dsl::Eq<jobs::locked_by, &'a str>,
>;

/// The job as long as `worker` still holds its lease. Every finishing update goes through this:
/// a worker whose lease was reaped and re-claimed must not overwrite the newer run.
fn owned<'a>(id: &'a str, worker: &'a str) -> Owned<'a> {
    jobs::table
        .filter(jobs::id.eq(id))
        .filter(jobs::status.eq(RUNNING))
        .filter(jobs::locked_by.eq(worker))
}

pub fn complete(
    conn: &mut DbConnection,
    id: &str,
    worker: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let n = diesel::update(owned(id, worker))
        .set((
            jobs::status.eq(DONE),
            jobs::locked_until.eq(None::<NaiveDateTime>),
            jobs::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

/// A transient failure: back to the queue at `run_at`, the error kept.
pub fn retry(
    conn: &mut DbConnection,
    id: &str,
    worker: &str,
    run_at: NaiveDateTime,
    error: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    requeue(conn, id, worker, run_at, error, Requeue::Retry, now)
}

/// Not a failure: the job asked to run again later (e.g. waiting for a contact to be linked);
/// the attempt it used is given back.
pub fn snooze(
    conn: &mut DbConnection,
    id: &str,
    worker: &str,
    run_at: NaiveDateTime,
    note: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    requeue(conn, id, worker, run_at, note, Requeue::Waits, now)
}

/// Like [`snooze`], for a wait on a rate budget whose turn comes at `run_at`: then the job goes
/// before its portal's jobs that never ran (see [`candidates`]).
pub fn wait_for_budget(
    conn: &mut DbConnection,
    id: &str,
    worker: &str,
    run_at: NaiveDateTime,
    note: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    requeue(conn, id, worker, run_at, note, Requeue::WaitsForBudget, now)
}

/// Why a job goes back to the queue.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Requeue {
    /// A failed attempt, retried later: it counts.
    Retry,
    /// Waiting is no failure: the attempt is given back.
    Waits,
    /// Waiting for a rate budget: given back, and first of its portal when due.
    WaitsForBudget,
}

fn requeue(
    conn: &mut DbConnection,
    id: &str,
    worker: &str,
    run_at: NaiveDateTime,
    note: &str,
    why: Requeue,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let n = diesel::update(owned(id, worker))
        .set((
            jobs::status.eq(QUEUED),
            jobs::run_at.eq(run_at),
            jobs::attempts.eq(jobs::attempts - i32::from(why != Requeue::Retry)),
            jobs::locked_by.eq(None::<String>),
            jobs::locked_until.eq(None::<NaiveDateTime>),
            jobs::last_error.eq(note),
            jobs::budget_waited.eq(why == Requeue::WaitsForBudget),
            jobs::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

/// Gives a running job back at shutdown, due at once and with its attempt refunded: it did not
/// fail, its worker stopped, and another instance (or this one restarted) takes it immediately
/// instead of waiting for the lease to run out.
pub fn release(
    conn: &mut DbConnection,
    id: &str,
    worker: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    requeue(
        conn,
        id,
        worker,
        now,
        "released: its worker shut down before it finished",
        Requeue::Waits,
        now,
    )
}

/// A permanent failure: kept as `dead` with its error, never run again.
pub fn bury(
    conn: &mut DbConnection,
    id: &str,
    worker: &str,
    error: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let n = diesel::update(owned(id, worker))
        .set((
            jobs::status.eq(DEAD),
            jobs::locked_until.eq(None::<NaiveDateTime>),
            jobs::last_error.eq(error),
            jobs::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

/// Puts back jobs whose worker's lease ran out (the worker crashed or was killed).
pub fn reap(conn: &mut DbConnection, now: NaiveDateTime) -> QueryResult<usize> {
    diesel::update(
        jobs::table
            .filter(jobs::status.eq(RUNNING))
            .filter(jobs::locked_until.lt(now)),
    )
    .set((
        jobs::status.eq(QUEUED),
        jobs::locked_by.eq(None::<String>),
        jobs::locked_until.eq(None::<NaiveDateTime>),
        jobs::last_error.eq("lease expired: the worker stopped before finishing"),
        jobs::updated_at.eq(now),
    ))
    .execute(conn)
}

/// Forgets finished jobs older than `before` (their callbacks keep the history); dead jobs stay
/// for inspection.
pub fn purge_done(conn: &mut DbConnection, before: NaiveDateTime) -> QueryResult<usize> {
    diesel::delete(
        jobs::table
            .filter(jobs::status.eq(DONE))
            .filter(jobs::updated_at.lt(before)),
    )
    .execute(conn)
}

/// Stops a portal's pending jobs (uninstall): they stay visible as dead with the reason.
pub fn cancel_for_portal(
    conn: &mut DbConnection,
    member_id: &str,
    reason: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(
        jobs::table
            .filter(jobs::member_id.eq(member_id))
            .filter(jobs::status.eq(QUEUED)),
    )
    .set((
        jobs::status.eq(DEAD),
        jobs::last_error.eq(reason),
        jobs::updated_at.eq(now),
    ))
    .execute(conn)
}

/// Queued or running jobs of one kind for a portal (a cap on what an unverified request may park).
pub fn count_pending(conn: &mut DbConnection, member_id: &str, kind: &str) -> QueryResult<i64> {
    jobs::table
        .filter(jobs::member_id.eq(member_id))
        .filter(jobs::kind.eq(kind))
        .filter(jobs::status.eq_any([QUEUED, RUNNING]))
        .count()
        .get_result(conn)
}

/// Queued or running jobs of `kind`, over every portal.
pub fn count_pending_of_kind(conn: &mut DbConnection, kind: &str) -> QueryResult<i64> {
    jobs::table
        .filter(jobs::kind.eq(kind))
        .filter(jobs::status.eq_any([QUEUED, RUNNING]))
        .count()
        .get_result(conn)
}

/// When the earliest queued job comes due (`None`: nothing queued): the worker sleeps until
/// then rather than a whole poll, so a job snoozed for a rate limit runs when its slot comes.
pub fn next_due(conn: &mut DbConnection) -> QueryResult<Option<NaiveDateTime>> {
    PlannedEachTime(
        jobs::table
            .filter(jobs::status.eq(QUEUED))
            .select(diesel::dsl::min(jobs::run_at)),
    )
    .get_result(conn)
}

/// Per status other than done: how many jobs and the earliest `run_at` (`GET /metrics`). One
/// query over the `(status, run_at)` index; done jobs, the bulk of the table, are not read.
pub fn depth(conn: &mut DbConnection) -> QueryResult<Vec<(String, i64, Option<NaiveDateTime>)>> {
    use diesel::dsl::{count_star, min};
    jobs::table
        .filter(jobs::status.eq_any([QUEUED, RUNNING, DEAD]))
        .group_by(jobs::status)
        .select((jobs::status, count_star(), min(jobs::run_at)))
        .load(conn)
}

pub fn all(conn: &mut DbConnection) -> QueryResult<Vec<JobRow>> {
    jobs::table
        .order(jobs::id.asc())
        .select(JobRow::as_select())
        .load(conn)
}
