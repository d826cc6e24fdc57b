//! Readings into the `readings` table: its columns in `COPY` order, binary `COPY`,
//! and the fallback through a session-local staging table with `INSERT … ON
//! CONFLICT DO NOTHING` when the `COPY` meets a reading stored already.

use std::collections::HashSet;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

use crate::records::ReadingRow;

/// The columns the collector writes into `readings`, in COPY order.
pub const COLUMNS: &str = "device_id, epoch, seq, ts, ts_corrected, mono_ms, clock_synced, received_at, bpm, \
     contact, rr_1024, rr_consistent, energy_kj, status, local_flag, backfill, kafka_partition, kafka_offset, \
     arrival_delay_ms";

/// Their types, for binary COPY.
pub const COLUMN_TYPES: [Type; 19] = [
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::INT8,
    Type::BOOL,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::TEXT,
    Type::INT4_ARRAY,
    Type::BOOL,
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::BOOL,
    Type::INT4,
    Type::INT8,
    Type::INT8,
];

/// A row's values in [`COLUMNS`] order, for COPY or a prepared INSERT.
pub fn row_params(r: &ReadingRow) -> [&(dyn ToSql + Sync); 19] {
    [
        &r.device_id,
        &r.epoch,
        &r.seq,
        &r.ts,
        &r.ts_corrected,
        &r.mono_ms,
        &r.clock_synced,
        &r.received_at,
        &r.bpm,
        &r.contact,
        &r.rr_1024,
        &r.rr_consistent,
        &r.energy_kj,
        &r.status,
        &r.local_flag,
        &r.backfill,
        &r.kafka_partition,
        &r.kafka_offset,
        &r.arrival_delay_ms,
    ]
}

/// What [`insert`] stored.
pub(super) struct Inserted {
    /// New rows in `readings`.
    pub(super) count: u64,
    /// The rows inserted, when the fallback left some of the given ones out
    /// (stored already); `None` when every given row was inserted.
    pub(super) subset: Option<Vec<ReadingRow>>,
    /// Whether this transaction created the session's staging table.
    pub(super) created_staging: bool,
}

/// Inserts `fresh` (not empty) into `readings`. Fast path: `COPY` straight into
/// `readings`. A stored reading the ranges do not show (rare) violates the unique
/// key; then the rows go again through a staging table and `INSERT … ON CONFLICT
/// DO NOTHING`, which skips what is already stored. `staging_ready`: whether this
/// session's staging table exists already.
pub(super) async fn insert(
    tx: &Transaction<'_>,
    fresh: &[ReadingRow],
    staging_ready: bool,
) -> Result<Inserted, tokio_postgres::Error> {
    tx.batch_execute("SAVEPOINT direct").await?;
    match copy_rows(tx, "readings", fresh).await {
        Ok(count) => {
            tx.batch_execute("RELEASE SAVEPOINT direct").await?;
            Ok(Inserted {
                count,
                subset: None,
                created_staging: false,
            })
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT direct").await?;
            if !staging_ready {
                // Session-local; created in the first transaction that needs it
                // (and gone with a rollback of that one).
                tx.batch_execute(
                    "CREATE TEMP TABLE IF NOT EXISTS readings_staging \
                     (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
                )
                .await?;
            }
            copy_rows(tx, "readings_staging", fresh).await?;
            let keys: HashSet<(String, i64, i64)> = tx
                .query(
                    &format!(
                        "INSERT INTO readings ({COLUMNS}) SELECT {COLUMNS} FROM readings_staging \
                         ON CONFLICT (device_id, epoch, seq, ts) DO NOTHING \
                         RETURNING device_id, epoch, seq"
                    ),
                    &[],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            Ok(Inserted {
                count: keys.len() as u64,
                subset: Some(
                    fresh
                        .iter()
                        .filter(|r| keys.contains(&(r.device_id.clone(), r.epoch, r.seq)))
                        .cloned()
                        .collect(),
                ),
                created_staging: !staging_ready,
            })
        }
        Err(e) => Err(e),
    }
}

/// Binary COPY of `rows` into `table`; returns the rows written.
async fn copy_rows(
    tx: &Transaction<'_>,
    table: &str,
    rows: &[ReadingRow],
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!("COPY {table} ({COLUMNS}) FROM STDIN BINARY"))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &COLUMN_TYPES);
    let mut writer = std::pin::pin!(writer);
    for r in rows {
        writer.as_mut().write(&row_params(r)).await?;
    }
    writer.finish().await
}
