//! Schema migrations: the numbered files in `schema/`, compiled into the binary,
//! each applied once in its own transaction and recorded in `schema_migrations`.
//! Concurrent collectors starting together serialise on an advisory lock.

use tokio_postgres::Client;

use crate::{Error, Result};

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number, from the file name's prefix.
    pub version: i32,
    /// Its file name without `.sql`.
    pub name: &'static str,
    /// Its SQL.
    pub sql: &'static str,
}

/// Every migration, in order. A unit test checks this matches `schema/`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_readings",
        sql: include_str!("../../schema/0001_readings.sql"),
    },
    Migration {
        version: 2,
        name: "0002_partitions_devices",
        sql: include_str!("../../schema/0002_partitions_devices.sql"),
    },
    Migration {
        version: 3,
        name: "0003_stored_ranges",
        sql: include_str!("../../schema/0003_stored_ranges.sql"),
    },
    Migration {
        version: 4,
        name: "0004_alerts",
        sql: include_str!("../../schema/0004_alerts.sql"),
    },
    Migration {
        version: 5,
        name: "0005_dashboard",
        sql: include_str!("../../schema/0005_dashboard.sql"),
    },
    Migration {
        version: 6,
        name: "0006_quarantine_payloads",
        sql: include_str!("../../schema/0006_quarantine_payloads.sql"),
    },
    Migration {
        version: 7,
        name: "0007_roles",
        sql: include_str!("../../schema/0007_roles.sql"),
    },
];

/// Arbitrary constant naming the advisory lock that serialises migrators.
const LOCK_KEY: i64 = 0x4842_4D49_4752; // "HBMIGR"

/// Applies every migration not yet recorded. Returns how many were applied.
/// With none pending it only reads `schema_migrations`, so a login without DDL
/// rights (the collector's, a member of `hb_writer`) may call it; with some
/// pending, such a login gets [`Error::MigrateNotPermitted`].
pub async fn migrate(client: &mut Client) -> Result<usize> {
    // `CREATE TABLE IF NOT EXISTS` needs the right to create even when the table
    // exists: look first.
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version    integer PRIMARY KEY,
                     name       text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .or_else(ignore_concurrent_create)?;
    }
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    let mut applied = 0;
    for m in MIGRATIONS {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await?;
        let found: Option<i32> = tx
            .query_one("SELECT max(version) FROM schema_migrations", &[])
            .await?
            .get(0);
        if let Some(found) = found.filter(|&f| f > known) {
            return Err(Error::SchemaTooNew { found, known });
        }
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&m.version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(m.sql)
            .await
            .map_err(|source| match not_permitted(m.name, source) {
                Error::Database(source) => Error::Migrate {
                    name: m.name,
                    source,
                },
                e => e,
            })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = m.name, "Applied migration.");
        applied += 1;
    }
    Ok(applied)
}

/// A refusal for lack of privileges as [`Error::MigrateNotPermitted`]; any
/// other error as [`Error::Database`].
fn not_permitted(name: &'static str, e: tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState;
    if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        Error::MigrateNotPermitted { name, source: e }
    } else {
        Error::Database(e)
    }
}

/// Two migrators racing on `CREATE TABLE IF NOT EXISTS` can collide on the catalog's
/// unique index; the table exists either way.
fn ignore_concurrent_create(e: tokio_postgres::Error) -> Result<()> {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::DUPLICATE_TABLE => Ok(()),
        _ => Err(not_permitted(MIGRATIONS[0].name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_matches_the_files_in_schema() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{}.sql", m.name))
            .collect();
        assert_eq!(files, listed);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{} is out of sequence", m.name);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }
}
