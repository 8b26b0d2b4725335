//! The only SQL of the shared Bitrix24 REST budget (`rest_budgets`): one GCRA row per portal.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::db::{now_us_sql, DbConnection};

#[derive(QueryableByName)]
struct Micros {
    #[diesel(sql_type = BigInt)]
    v: i64,
}

/// Runs `sql` with the portal's id as its one parameter, written `{p}` (`?` or `$1`).
fn query(conn: &mut DbConnection, sql: &str, member_id: &str) -> QueryResult<Vec<i64>> {
    let rows: Vec<Micros> = match conn {
        DbConnection::Sqlite(c) => diesel::sql_query(sql.replace("{p}", "?"))
            .bind::<Text, _>(member_id)
            .load(c)?,
        DbConnection::Postgres(c) => diesel::sql_query(sql.replace("{p}", "$1"))
            .bind::<Text, _>(member_id)
            .load(c)?,
    };
    Ok(rows.into_iter().map(|r| r.v).collect())
}

/// Takes one request from the portal's budget (GCRA: a request may go when the theoretical
/// arrival time is at most `tolerance_us` ahead of now, and pushes it `interval_us` further).
/// `Ok(None)` when taken; `Ok(Some(us))` when the budget allows the next one `us` from now.
///
/// One compare-and-set `UPDATE … RETURNING` in the common case: atomic on SQLite (one writer)
/// and on PostgreSQL (a concurrent update re-checks the `WHERE` after the winner commits). Now is
/// the database clock plus `offset_us` (the app clock's test offset).
pub fn take(
    conn: &mut DbConnection,
    member_id: &str,
    offset_us: i64,
    interval_us: i64,
    tolerance_us: i64,
) -> QueryResult<Option<i64>> {
    let now = format!("({} + {offset_us})", now_us_sql(conn));
    let take = format!(
        "UPDATE rest_budgets SET tat_us = \
         (CASE WHEN tat_us > {now} THEN tat_us ELSE {now} END) + {interval_us} \
         WHERE member_id = {{p}} AND tat_us - {now} <= {tolerance_us} RETURNING tat_us AS v"
    );
    // The second round is only for a portal's first request: its row is created, then taken.
    for _ in 0..2 {
        if !query(conn, &take, member_id)?.is_empty() {
            return Ok(None);
        }
        let ahead = format!("SELECT tat_us - {now} AS v FROM rest_budgets WHERE member_id = {{p}}");
        if let Some(ahead) = query(conn, &ahead, member_id)?.first() {
            // At least a microsecond: a race lost to the clock is simply tried again.
            return Ok(Some((ahead - tolerance_us).max(1)));
        }
        let create = format!(
            "INSERT INTO rest_budgets (member_id, tat_us) VALUES ({{p}}, {now}) \
             ON CONFLICT (member_id) DO NOTHING RETURNING tat_us AS v"
        );
        query(conn, &create, member_id)?;
    }
    Ok(Some(1))
}

/// How far the portal's schedule runs ahead of now, in microseconds (0 when its budget is full
/// or the portal has not called yet). Reads only: nothing is taken.
pub fn ahead(conn: &mut DbConnection, member_id: &str, offset_us: i64) -> QueryResult<i64> {
    let now = format!("({} + {offset_us})", now_us_sql(conn));
    let sql = format!("SELECT tat_us - {now} AS v FROM rest_budgets WHERE member_id = {{p}}");
    Ok(query(conn, &sql, member_id)?
        .first()
        .copied()
        .unwrap_or(0)
        .max(0))
}
