//! What a batch tells the dashboards, written in the batch's own transaction: the
//! per-minute reading counts, and PostgreSQL notifications on [`CHANNEL`] that
//! every collector's dashboard listens to. PostgreSQL delivers notifications only
//! when (and if) the transaction commits, so a browser sees exactly what is stored.
//!
//! A notification carries the readings themselves (a compact JSON array), so that
//! listeners need no query per batch. A payload is limited to 8000 bytes, so a
//! batch sends one notification per [`MAX_PAYLOAD_BYTES`] of readings. A batch of
//! more than [`MAX_LISTED_READINGS`] readings (a backlog draining) sends only each
//! device's newest reading and how many it summarises: what a person watching
//! sees is the same, and the notification queue's cost stays bounded per batch.
//!
//! The dashboards are not worth a reading: [`publish`] runs under a savepoint, and
//! if it fails the batch commits without it (counted, and logged at most once a
//! minute).

use std::collections::BTreeMap;

use hb_runtime::clock::unix_ms;
use hb_runtime::retry::sleep_unless_cancelled;
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use crate::records::ReadingRow;

/// The PostgreSQL notification channel.
pub const CHANNEL: &str = "hb_live";

/// The most JSON in one notification; PostgreSQL refuses payloads of 8000 bytes
/// or more.
pub const MAX_PAYLOAD_BYTES: usize = 7900;

/// A batch with more inserted readings than this lists only each device's newest.
pub const MAX_LISTED_READINGS: usize = 2000;

/// One stored reading as the dashboards receive it:
/// `[device, ts_ms, bpm, status, backfill, epoch, seq]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveReading(
    pub String,
    pub i64,
    pub i32,
    pub String,
    pub bool,
    pub i64,
    pub i64,
);

/// One notification's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notification {
    /// Readings a batch stored.
    Readings {
        /// The readings.
        rows: Vec<LiveReading>,
        /// How many stored readings these stand for: as many as listed, or,
        /// when the batch was summarised, all of its readings (in its first
        /// notification; 0 in the others).
        summarised: u64,
    },
    /// An alert transition (the `hb.alerts.v1` document).
    Transition(serde_json::Value),
}

fn live(r: &ReadingRow) -> LiveReading {
    LiveReading(
        r.device_id.clone(),
        unix_ms(r.ts),
        r.bpm,
        r.status.to_owned(),
        r.backfill,
        r.epoch,
        r.seq,
    )
}

/// The notification payloads for the readings a batch inserted, each under
/// [`MAX_PAYLOAD_BYTES`].
pub fn payloads(inserted: &[ReadingRow]) -> Vec<String> {
    let summary = inserted.len() > MAX_LISTED_READINGS;
    let rows: Vec<LiveReading> = if summary {
        let mut newest: BTreeMap<&str, &ReadingRow> = BTreeMap::new();
        for r in inserted {
            let e = newest.entry(&r.device_id).or_insert(r);
            if (r.epoch, r.seq) > (e.epoch, e.seq) {
                *e = r;
            }
        }
        newest.values().map(|r| live(r)).collect()
    } else {
        inserted.iter().map(live).collect()
    };
    // The envelope around the rows: `{"readings":{"rows":[…],"summarised":N}}`.
    const ENVELOPE_BYTES: usize = 64;
    let mut chunks: Vec<Vec<LiveReading>> = Vec::new();
    let mut size = ENVELOPE_BYTES;
    for row in rows {
        let bytes = serde_json::to_string(&row).map_or(0, |s| s.len()) + 1;
        if chunks.is_empty() || size + bytes > MAX_PAYLOAD_BYTES {
            chunks.push(Vec::new());
            size = ENVELOPE_BYTES;
        }
        size += bytes;
        chunks.last_mut().expect("pushed above").push(row);
    }
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, rows)| {
            let summarised = match (summary, i) {
                (false, _) => rows.len() as u64,
                (true, 0) => inserted.len() as u64,
                (true, _) => 0,
            };
            serde_json::to_string(&Notification::Readings { rows, summarised })
                .expect("plain data serialises")
        })
        .collect()
}

/// Counts the inserted readings per (minute received, partition, status) and
/// sends the notifications, in the batch's transaction, under a savepoint. The
/// inner error is a failure rolled back to the savepoint (the batch goes on
/// without them); the outer one, the transaction failing (the batch fails).
pub async fn publish(
    tx: &mut tokio_postgres::Transaction<'_>,
    inserted: &[ReadingRow],
) -> Result<Result<(), tokio_postgres::Error>, tokio_postgres::Error> {
    if inserted.is_empty() {
        return Ok(Ok(()));
    }
    let savepoint = tx.savepoint("live").await?;
    match publish_in(&savepoint, inserted).await {
        Ok(()) => savepoint.commit().await.map(Ok),
        Err(e) => {
            savepoint.rollback().await?;
            Ok(Err(e))
        }
    }
}

async fn publish_in(
    db: &impl GenericClient,
    inserted: &[ReadingRow],
) -> Result<(), tokio_postgres::Error> {
    let mut counts: BTreeMap<(i64, i32, &str), i64> = BTreeMap::new();
    for r in inserted {
        let minute = unix_ms(r.received_at) / 60_000 * 60;
        *counts
            .entry((minute, r.kafka_partition, r.status))
            .or_default() += 1;
    }
    let (mut minutes, mut partitions, mut statuses, mut n) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((minute, partition, status), count) in counts {
        minutes.push(minute as f64);
        partitions.push(partition);
        statuses.push(status);
        n.push(count);
    }
    db.execute(
        "INSERT INTO reading_counts AS c (minute, kafka_partition, status, readings) \
         SELECT to_timestamp(m), p, s, n \
         FROM unnest($1::float8[], $2::int4[], $3::text[], $4::int8[]) AS u(m, p, s, n) \
         ON CONFLICT (minute, kafka_partition, status) \
         DO UPDATE SET readings = c.readings + excluded.readings",
        &[&minutes, &partitions, &statuses, &n],
    )
    .await?;
    let payloads = payloads(inserted);
    db.execute(
        "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
        &[&CHANNEL, &payloads],
    )
    .await?;
    Ok(())
}

/// How long the per-minute reading counts are kept: the dashboard shows 15
/// minutes of them.
pub const COUNTS_KEPT: &str = "2 days";

/// Deletes reading counts older than [`COUNTS_KEPT`] once an hour, until
/// `shutdown`; failures are logged and retried the next hour.
pub async fn prune_counts(
    database: crate::database::Database,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        match crate::Store::connect(&database).await {
            Ok(mut store) => {
                let sql = format!(
                    "DELETE FROM reading_counts WHERE minute < now() - interval '{COUNTS_KEPT}'"
                );
                if let Err(e) = store.client_mut().execute(&sql, &[]).await {
                    tracing::warn!(error = %e, "Pruning the reading counts failed; trying again in an hour.");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot reach PostgreSQL to prune the reading counts; trying again in an hour.")
            }
        }
        if sleep_unless_cancelled(std::time::Duration::from_secs(3600), &shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::sample_row;

    fn decode(p: &str) -> (Vec<LiveReading>, u64) {
        match serde_json::from_str(p).unwrap() {
            Notification::Readings { rows, summarised } => (rows, summarised),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_batch_lists_each_reading_in_payloads_under_the_postgresql_limit() {
        // The longest row there can be: a 64-character id, the largest epoch,
        // sequence and heart rate, the longest status.
        let long = "d".repeat(64);
        let first = i64::from(u32::MAX) - 150;
        let batch: Vec<ReadingRow> = (0..150)
            .map(|s| {
                let mut r = sample_row(&long, i64::from(u32::MAX), first + s);
                r.bpm = 65_535;
                r.status = "bradycardia";
                r.backfill = true;
                r
            })
            .collect();
        let payloads = payloads(&batch);
        let sizes: Vec<usize> = payloads.iter().map(String::len).collect();
        assert!(
            sizes.len() >= 3 && sizes.iter().all(|n| *n < 8000),
            "{sizes:?}"
        );
        let listed: Vec<i64> = payloads
            .iter()
            .flat_map(|p| decode(p).0)
            .map(|r| r.6)
            .collect();
        assert_eq!(listed, (first..first + 150).collect::<Vec<_>>());
        assert_eq!(payloads.iter().map(|p| decode(p).1).sum::<u64>(), 150);
    }

    #[test]
    fn a_large_batch_sends_each_devices_newest_reading_and_the_count() {
        let batch: Vec<ReadingRow> = (0..3000)
            .map(|i| sample_row(&format!("dev-{}", i % 3), 1, i / 3))
            .collect();
        let payloads = payloads(&batch);
        assert_eq!(payloads.len(), 1);
        let (rows, summarised) = decode(&payloads[0]);
        assert_eq!(summarised, 3000);
        assert_eq!(
            rows.iter().map(|r| (r.0.as_str(), r.6)).collect::<Vec<_>>(),
            [("dev-0", 999), ("dev-1", 999), ("dev-2", 999)]
        );
    }
}
