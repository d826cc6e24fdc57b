//! The device registry (`devices`) upserted from a batch: first and last seen,
//! the latest reading, clock skew, Kafka partition.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tokio_postgres::Transaction;

use crate::alerts::{DeviceAlertRow, DEVICE_ALERT_COLUMNS};
use crate::records::ReadingRow;

/// Upserts the device registry from a batch: first/last seen, the latest reading
/// and clock skew. Devices in sorted order, so that concurrent collectors cannot
/// deadlock on each other's rows. Returns each device's alert state and rules, as
/// stored before this batch (the upsert does not touch them).
pub(super) async fn upsert(
    tx: &Transaction<'_>,
    readings: &[ReadingRow],
) -> Result<Vec<DeviceAlertRow>, tokio_postgres::Error> {
    let mut latest: BTreeMap<&str, &ReadingRow> = BTreeMap::new();
    for r in readings {
        let e = latest.entry(r.device_id.as_str()).or_insert(r);
        if (r.ts, r.epoch, r.seq) > (e.ts, e.epoch, e.seq) {
            *e = r;
        }
    }
    let ids: Vec<&str> = latest.keys().copied().collect();
    let seen: Vec<SystemTime> = latest.values().map(|r| r.received_at).collect();
    let ts: Vec<SystemTime> = latest.values().map(|r| r.ts).collect();
    let epochs: Vec<i64> = latest.values().map(|r| r.epoch).collect();
    let seqs: Vec<i64> = latest.values().map(|r| r.seq).collect();
    let bpms: Vec<i32> = latest.values().map(|r| r.bpm).collect();
    let statuses: Vec<&str> = latest.values().map(|r| r.status).collect();
    let skews: Vec<Option<i64>> = latest.values().map(|r| r.clock_skew_ms()).collect();
    let partitions: Vec<i32> = latest.values().map(|r| r.kafka_partition).collect();
    let rows = tx
        .query(
        &format!("INSERT INTO devices AS d (device_id, first_seen, last_seen, last_ts, last_epoch, last_seq, \
                                   last_bpm, last_status, clock_skew_ms, kafka_partition) \
         SELECT id, seen, seen, ts, epoch, seq, bpm, status, skew, part \
         FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::int8[], $5::int8[], \
                     $6::int4[], $7::text[], $8::int8[], $9::int4[]) \
              AS u(id, seen, ts, epoch, seq, bpm, status, skew, part) \
         ON CONFLICT (device_id) DO UPDATE SET \
             last_seen = greatest(d.last_seen, excluded.last_seen), \
             last_ts = CASE WHEN excluded.last_ts >= d.last_ts THEN excluded.last_ts ELSE d.last_ts END, \
             last_epoch = CASE WHEN excluded.last_ts >= d.last_ts THEN excluded.last_epoch ELSE d.last_epoch END, \
             last_seq = CASE WHEN excluded.last_ts >= d.last_ts THEN excluded.last_seq ELSE d.last_seq END, \
             last_bpm = CASE WHEN excluded.last_ts >= d.last_ts THEN excluded.last_bpm ELSE d.last_bpm END, \
             last_status = CASE WHEN excluded.last_ts >= d.last_ts THEN excluded.last_status ELSE d.last_status END, \
             clock_skew_ms = coalesce(excluded.clock_skew_ms, d.clock_skew_ms), \
             kafka_partition = excluded.kafka_partition \
         RETURNING {DEVICE_ALERT_COLUMNS}"),
        &[&ids, &seen, &ts, &epochs, &seqs, &bpms, &statuses, &skews, &partitions],
    )
    .await?;
    Ok(rows.iter().map(DeviceAlertRow::from_row).collect())
}
