//! The benchmark's own PostgreSQL connection (the database's owner, no TLS) and
//! what it does between phases: migrate, check, `CHECKPOINT`, `TRUNCATE`, count,
//! report the server's settings and time per statement.

use anyhow::{ensure, Context as _};
use tokio_postgres::{Client, NoTls};

/// Connects to `url` and applies the migrations; refuses a database whose
/// `readings` already holds rows.
pub async fn connect_fresh(url: &str) -> anyhow::Result<Client> {
    // The collector's own migration (it retries for about a minute while the
    // database does not answer).
    hb_collector::migrate(&hb_collector::Database::parse(url, None)?).await?;
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connect to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("ingest_bench: PostgreSQL connection: {e}");
        }
    });
    let existing: i64 = client
        .query_one("SELECT count(*) FROM readings", &[])
        .await?
        .get(0);
    ensure!(
        existing == 0,
        "readings already holds {existing} rows: use a fresh database"
    );
    Ok(client)
}

/// The server's version and the settings that decide its write speed, as one
/// line.
pub async fn server_settings(db: &Client) -> anyhow::Result<String> {
    let s = db
        .query_one(
            "SELECT current_setting('server_version'), current_setting('fsync'), \
                    current_setting('synchronous_commit'), current_setting('full_page_writes'), \
                    current_setting('shared_buffers'), current_setting('max_wal_size')",
            &[],
        )
        .await?;
    Ok(format!(
        "PostgreSQL {}: fsync={}, synchronous_commit={}, full_page_writes={}, shared_buffers={}, \
         max_wal_size={}",
        s.get::<_, String>(0),
        s.get::<_, String>(1),
        s.get::<_, String>(2),
        s.get::<_, String>(3),
        s.get::<_, String>(4),
        s.get::<_, String>(5),
    ))
}

/// Empties what the phases write.
pub async fn truncate(db: &Client) -> anyhow::Result<()> {
    db.batch_execute("TRUNCATE readings, devices, stored_ranges")
        .await?;
    Ok(())
}

/// A `CHECKPOINT`, so that no phase pays for the previous one's dirty pages.
pub async fn checkpoint(db: &Client) -> anyhow::Result<()> {
    db.batch_execute("CHECKPOINT")
        .await
        .context("CHECKPOINT (needs a superuser or pg_checkpoint)")?;
    Ok(())
}

/// Checks that `readings` holds `n` rows, each `(device, epoch, seq)` once.
pub async fn expect_rows(db: &Client, n: usize) -> anyhow::Result<()> {
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT (device_id, epoch, seq)) FROM readings",
            &[],
        )
        .await?;
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
    ensure!(
        rows == n as i64 && distinct == n as i64,
        "readings holds {rows} rows ({distinct} distinct), expected {n}"
    );
    Ok(())
}

/// The rows in `readings`.
pub async fn count_rows(db: &Client) -> anyhow::Result<i64> {
    Ok(db
        .query_one("SELECT count(*) FROM readings", &[])
        .await?
        .get(0))
}

/// Starts counting time per statement (`pg_stat_statements`, which must be in
/// `shared_preload_libraries`).
pub async fn reset_statement_times(db: &Client) -> anyhow::Result<()> {
    db.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()",
    )
    .await
    .context("pg_stat_statements (is it in shared_preload_libraries?)")?;
    Ok(())
}

/// The statements of this database by total execution time, formatted.
pub async fn statement_times(db: &Client) -> anyhow::Result<Vec<String>> {
    let rows = db
        .query(
            "SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) \
             FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND query NOT LIKE '%pg_stat_statements%' \
             ORDER BY total_exec_time DESC LIMIT 10",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            format!(
                "{:>8} {:>10.0} {:>9}  {}",
                r.get::<_, i64>(0),
                r.get::<_, f64>(1),
                r.get::<_, i64>(2),
                r.get::<_, String>(3)
            )
        })
        .collect())
}
