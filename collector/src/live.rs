//! What a batch tells the dashboards, written in the batch's own transaction: the
//! per-minute reading counts, and PostgreSQL notifications on [`CHANNEL`] that
//! every collector's dashboard listens to. PostgreSQL delivers notifications only
//! when (and if) the transaction commits, so a browser sees exactly what is stored.
//!
//! A notification carries the readings themselves (a compact JSON array), so that
//! listeners need no query per batch. A payload is limited to 8000 bytes, so a
//! batch sends one notification per [`ROWS_PER_NOTIFICATION`] readings. A batch
//! of more than [`MAX_LISTED_READINGS`] readings (a backlog draining) sends only
//! each device's newest reading and how many it summarises: what a person watching
//! sees is the same, and the notification queue's cost stays bounded per batch.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use crate::records::ReadingRow;

/// The PostgreSQL notification channel.
pub const CHANNEL: &str = "hb_live";

/// Readings per notification: each is at most ~110 bytes of JSON (a 64-character
/// device id), so this many stay under PostgreSQL's 8000-byte payload limit.
pub const ROWS_PER_NOTIFICATION: usize = 60;

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
    /// Readings a batch stored. `summarised`: how many stored readings these
    /// stand for (more than listed when the batch was summarised).
    Readings {
        /// The readings.
        rows: Vec<LiveReading>,
        /// Readings stored that these stand for.
        summarised: u64,
    },
    /// An alert transition (the `hb.alerts.v1` document).
    Transition(serde_json::Value),
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn live(r: &ReadingRow) -> LiveReading {
    LiveReading(
        r.device_id.clone(),
        ms(r.ts),
        r.bpm,
        r.status.to_owned(),
        r.backfill,
        r.epoch,
        r.seq,
    )
}

/// The notification payloads for the readings a batch inserted.
pub fn payloads(inserted: &[ReadingRow]) -> Vec<String> {
    let (rows, summarised): (Vec<LiveReading>, u64) = if inserted.len() <= MAX_LISTED_READINGS {
        (inserted.iter().map(live).collect(), 1)
    } else {
        let mut newest: BTreeMap<&str, &ReadingRow> = BTreeMap::new();
        for r in inserted {
            let e = newest.entry(&r.device_id).or_insert(r);
            if (r.epoch, r.seq) > (e.epoch, e.seq) {
                *e = r;
            }
        }
        (newest.values().map(|r| live(r)).collect(), 0)
    };
    let total = inserted.len() as u64;
    rows.chunks(ROWS_PER_NOTIFICATION)
        .enumerate()
        .map(|(i, chunk)| {
            // Listed readings stand for themselves; a summary's count goes with
            // its first chunk.
            let summarised = if summarised == 1 {
                chunk.len() as u64
            } else if i == 0 {
                total
            } else {
                0
            };
            serde_json::to_string(&Notification::Readings {
                rows: chunk.to_vec(),
                summarised,
            })
            .expect("plain data serialises")
        })
        .collect()
}

/// Counts the inserted readings per (minute received, partition, status) and
/// sends the notifications, in the batch's transaction.
pub async fn publish(
    db: &impl GenericClient,
    inserted: &[ReadingRow],
) -> Result<(), tokio_postgres::Error> {
    if inserted.is_empty() {
        return Ok(());
    }
    let mut counts: BTreeMap<(i64, i32, &str), i64> = BTreeMap::new();
    for r in inserted {
        let minute = ms(r.received_at) / 60_000 * 60;
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
        let long = "d".repeat(64);
        let batch: Vec<ReadingRow> = (0..150)
            .map(|s| sample_row(&long, 4_000_000_000, s))
            .collect();
        let payloads = payloads(&batch);
        assert_eq!(payloads.len(), 3);
        assert!(
            payloads.iter().all(|p| p.len() < 8000),
            "{}",
            payloads[0].len()
        );
        let listed: Vec<i64> = payloads
            .iter()
            .flat_map(|p| decode(p).0)
            .map(|r| r.6)
            .collect();
        assert_eq!(listed, (0..150).collect::<Vec<_>>());
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
