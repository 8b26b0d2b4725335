//! The bench's database: a fresh temp SQLite file, a SQLite file as given, or a throwaway
//! PostgreSQL database created on the server a `postgres://` URL names; removed after the run
//! (the given SQLite file stays), so a run never measures or harms a database in use.

use std::path::PathBuf;

use anyhow::Context as _;
use diesel::{Connection, PgConnection, RunQueryDsl};

use crate::db::Backend;

/// What to remove when the run ends.
pub(super) enum DbGuard {
    /// A temp folder holding the SQLite file (and its -wal/-shm).
    TempDir(PathBuf),
    /// A throwaway PostgreSQL database, dropped through `admin`.
    Postgres { admin: String, name: String },
    /// A SQLite file the user named: kept.
    Kept,
}

/// The URL the app is given, and what to clean up afterwards.
pub(super) async fn prepare(url: Option<&str>) -> anyhow::Result<(String, DbGuard)> {
    match url {
        None => {
            let dir = std::env::temp_dir().join(format!(
                "mango-callback-bench-{}",
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let url = format!("sqlite://{}", dir.join("bench.db").display());
            Ok((url, DbGuard::TempDir(dir)))
        }
        Some(url) if Backend::of_url(url) == Backend::Postgres => {
            let admin = url.to_owned();
            let name = format!("mango_bench_{}", uuid::Uuid::new_v4().simple());
            let create = format!("CREATE DATABASE {name}");
            let admin_c = admin.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let mut conn = PgConnection::establish(&admin_c)
                    .context("--database-url: cannot connect to PostgreSQL")?;
                diesel::sql_query(create)
                    .execute(&mut conn)
                    .context("cannot create the bench's throwaway database")?;
                Ok(())
            })
            .await??;
            Ok((
                with_database(&admin, &name)?,
                DbGuard::Postgres { admin, name },
            ))
        }
        Some(url) => Ok((url.to_owned(), DbGuard::Kept)),
    }
}

/// `url` with its database name replaced by `name` (the query string, if any, kept).
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let mut u = url::Url::parse(url).context("--database-url is not a URL")?;
    u.set_path(&format!("/{name}"));
    Ok(u.to_string())
}

impl DbGuard {
    /// Removes what [`prepare`] made; a failure is only reported (the figures are what count).
    pub(super) async fn cleanup(self) {
        match self {
            DbGuard::TempDir(dir) => {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    eprintln!("bench: could not remove {}: {e}", dir.display());
                }
            }
            DbGuard::Postgres { admin, name } => {
                let dropped = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                    let mut conn = PgConnection::establish(&admin)?;
                    // FORCE closes the connections the stopped app's pool still holds.
                    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)?;
                    Ok(())
                })
                .await;
                if let Ok(Err(e)) | Err(e) = dropped.map_err(anyhow::Error::from) {
                    eprintln!("bench: could not drop the throwaway database: {e:#}");
                }
            }
            DbGuard::Kept => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_throwaway_database_replaces_the_named_one_and_keeps_the_options() {
        assert_eq!(
            with_database(
                "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
                "b"
            )
            .ok()
            .as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/b?sslmode=disable")
        );
    }
}
