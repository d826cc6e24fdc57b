//! PostgreSQL writer. One batch is one transaction: the stored ranges (which also
//! tell which of the batch's readings are stored already: a redelivery), binary
//! `COPY` of the other readings straight into `readings`, the device registry,
//! quarantine rows, then `COMMIT`. The unique key makes a replayed batch (after a
//! crash or a COMMIT whose reply was lost) a no-op; a stored reading the ranges
//! no longer show (they keep at most 64 per device and epoch) makes the COPY fail,
//! and the batch goes again through a session-local staging table and `INSERT …
//! SELECT … ON CONFLICT DO NOTHING`.

use std::collections::HashMap;
use std::time::Duration;

use backon::Retryable;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::database::{Database, WRITER_ROLE};

use hb_shared::{AlertRules, EpochRanges};

use crate::alerts::{self, DeviceAlertRow, DEVICE_ALERT_COLUMNS};
use crate::live;
use crate::records::{QuarantineRow, ReadingRow};
use crate::{Error, Result};

/// Most ranges kept per `(device, epoch)` in `stored_ranges` (see
/// `hb_cap_ranges` in `schema/`): a device that skips numbers cannot grow the row
/// without bound.
const MAX_KEPT_RANGES: i32 = hb_shared::MAX_STORED_RANGES as i32;

/// A device's stored sequence numbers of one epoch, after a commit: what the
/// device may release from its buffer.
pub type DeviceRanges = (String, EpochRanges);

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

/// What a committed batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// New rows in `readings`.
    pub inserted: u64,
    /// Readings that were already stored (redeliveries), absorbed by the key.
    pub duplicates: u64,
    /// Rows added to `quarantine`.
    pub quarantined: u64,
    /// Alert transitions written (each with its outbox entry).
    pub alert_transitions: u64,
    /// Batches whose dashboard notifications and counts failed (committed
    /// without them).
    pub live_failed: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, w: Written) {
        self.inserted += w.inserted;
        self.duplicates += w.duplicates;
        self.quarantined += w.quarantined;
        self.alert_transitions += w.alert_transitions;
        self.live_failed += w.live_failed;
    }
}

/// A connection to PostgreSQL prepared for batch writes.
pub struct Store {
    client: Client,
    database: Database,
    /// Days (since 1970) whose readings partition is known to exist.
    partition_days: std::collections::HashSet<u64>,
    /// Whether this session's `readings_staging` table exists.
    staging_ready: bool,
    /// Default alert rules (a device's row may override them).
    alert_rules: AlertRules,
    /// When a failure of the dashboard notifications was last logged.
    live_warned: Option<std::time::Instant>,
}

impl Store {
    /// Connects once, acting as the role `hb_writer`.
    pub async fn connect(database: &Database) -> Result<Self, tokio_postgres::Error> {
        let client = database.open_as(WRITER_ROLE).await?;
        Ok(Self {
            client,
            database: database.clone(),
            partition_days: std::collections::HashSet::new(),
            staging_ready: false,
            alert_rules: AlertRules::default(),
            live_warned: None,
        })
    }

    /// Evaluates alerts under `rules` (the defaults) from now on.
    pub fn set_alert_rules(&mut self, rules: AlertRules) {
        self.alert_rules = rules;
    }

    /// Connects with the start-up retry policy; fails with a one-line error after it.
    pub async fn connect_with_retry(database: &Database) -> Result<Self> {
        (|| Self::connect(database))
            .retry(hb_runtime::retry::startup())
            .notify(|e, after| tracing::warn!(error = %e, ?after, "PostgreSQL not reachable, retrying."))
            .await
            .map_err(Error::ConnectDatabase)
    }

    /// The underlying client, e.g. for migrations.
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Writes one batch in one transaction. On error nothing is committed. Returns
    /// what it wrote and, per `(device, epoch)` it touched, the stored ranges as
    /// they are after the commit. `refused` are readings PostgreSQL refused for
    /// good (their record is in `quarantine`): not stored, but settled, so that
    /// their device stops resending them.
    pub async fn write(
        &mut self,
        readings: &[ReadingRow],
        quarantine: &[QuarantineRow],
        refused: &[ReadingRow],
    ) -> Result<(Written, Vec<DeviceRanges>), tokio_postgres::Error> {
        let mut tx = self.client.transaction().await?;
        let mut created_staging = false;
        let mut written = Written::default();
        // The ranges first: as they were before this batch, they tell which of its
        // readings are stored already, so that a redelivery costs no failed COPY.
        let (stored, before) = update_stored_ranges(&tx, readings, quarantine, refused).await?;
        let fresh = new_readings(readings, &before);
        let fresh = fresh.as_deref().unwrap_or(readings);
        // What this transaction inserted: `fresh`, unless the fallback found some of
        // it stored already.
        let mut fallback_inserted: Option<Vec<ReadingRow>> = None;
        if !fresh.is_empty() {
            // Fast path: COPY straight into `readings`. A stored reading the ranges
            // do not show (rare) violates the unique key; then the batch goes again
            // through a staging table and INSERT … ON CONFLICT DO NOTHING, which
            // skips what is already stored.
            tx.batch_execute("SAVEPOINT direct").await?;
            match copy_rows(&tx, "readings", fresh).await {
                Ok(n) => {
                    tx.batch_execute("RELEASE SAVEPOINT direct").await?;
                    written.inserted = n;
                }
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT direct").await?;
                    if !self.staging_ready {
                        // Session-local; created in the first transaction that needs
                        // it (and gone with a rollback of that one).
                        tx.batch_execute(
                            "CREATE TEMP TABLE IF NOT EXISTS readings_staging \
                             (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
                        )
                        .await?;
                        created_staging = true;
                    }
                    copy_rows(&tx, "readings_staging", fresh).await?;
                    let keys: std::collections::HashSet<(String, i64, i64)> = tx
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
                    written.inserted = keys.len() as u64;
                    fallback_inserted = Some(
                        fresh
                            .iter()
                            .filter(|r| keys.contains(&(r.device_id.clone(), r.epoch, r.seq)))
                            .cloned()
                            .collect(),
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let inserted = fallback_inserted.as_deref().unwrap_or(fresh);
        if !inserted.is_empty() {
            // The registry first: it locks each device's row, which holds its alert
            // state, so that two collectors briefly owning a device take turns.
            let devices = upsert_devices(&tx, inserted).await?;
            let evaluated = alerts::evaluate(&self.alert_rules, devices, inserted);
            alerts::write_states(&tx, &evaluated.states).await?;
            for (device, t) in &evaluated.transitions {
                written.alert_transitions += alerts::write_transition(&tx, device, t).await?;
            }
            if let Err(e) = live::publish(&mut tx, inserted).await? {
                // The readings matter, the dashboards' copy of them does not.
                written.live_failed += 1;
                let now = std::time::Instant::now();
                if self
                    .live_warned
                    .is_none_or(|at| now - at >= Duration::from_secs(60))
                {
                    self.live_warned = Some(now);
                    tracing::warn!(error = %e, "Dashboard notifications failed; the batch is stored without them.");
                }
            }
        }
        written.duplicates = readings.len() as u64 - written.inserted;
        if !quarantine.is_empty() {
            let stmt = tx
                .prepare(
                    "INSERT INTO quarantine (source_topic, source_partition, source_offset, reason, \
                     detail, received_at, device_id, epoch, seq) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                )
                .await?;
            let payload_stmt = tx
                .prepare(
                    "INSERT INTO quarantine_payloads (source_topic, source_partition, source_offset, \
                     payload) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .await?;
            // One payload per record, however many of its readings are refused.
            let mut payloads_written = std::collections::HashSet::new();
            for q in quarantine {
                if payloads_written.insert((&q.source.topic, q.source.partition, q.source.offset)) {
                    tx.execute(
                        &payload_stmt,
                        &[
                            &q.source.topic,
                            &q.source.partition,
                            &q.source.offset,
                            &&*q.payload,
                        ],
                    )
                    .await?;
                }
                let (device, epoch, seq) = match &q.reading {
                    Some((d, e, s)) => (Some(d.as_str()), Some(*e), Some(*s)),
                    None => (None, None, None),
                };
                written.quarantined += tx
                    .execute(
                        &stmt,
                        &[
                            &q.source.topic,
                            &q.source.partition,
                            &q.source.offset,
                            &q.reason,
                            &q.detail,
                            &q.received_at,
                            &device,
                            &epoch,
                            &seq,
                        ],
                    )
                    .await?;
            }
        }
        tx.commit().await?;
        self.staging_ready |= created_staging;
        Ok((written, stored))
    }

    /// Creates the daily partitions the rows will go to, if missing. Outside the
    /// batch's transaction (creating a partition locks the parent table); known
    /// days are remembered.
    pub async fn ensure_partitions(
        &mut self,
        readings: &[ReadingRow],
    ) -> Result<(), tokio_postgres::Error> {
        let day = |t: &std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() / 86_400)
        };
        let mut missing: Vec<std::time::SystemTime> = Vec::new();
        for r in readings {
            let d = day(&r.ts);
            if !self.partition_days.contains(&d) && !missing.iter().any(|m| day(m) == d) {
                missing.push(r.ts);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        self.client
            .execute("SELECT hb_ensure_reading_partitions($1)", &[&missing])
            .await?;
        self.partition_days.extend(missing.iter().map(day));
        Ok(())
    }

    /// The shortest retention the schema owner allows, in days
    /// (`reading_retention_floor`).
    pub async fn retention_floor_days(&mut self) -> Result<i32, tokio_postgres::Error> {
        let row = self
            .client
            .query_one("SELECT days FROM reading_retention_floor", &[])
            .await?;
        Ok(row.get(0))
    }

    /// Drops daily partitions older than `days` (at least the floor the schema
    /// owner set, [`Store::retention_floor_days`]); returns how many.
    pub async fn drop_partitions_older_than(
        &mut self,
        days: u32,
    ) -> Result<i32, tokio_postgres::Error> {
        let row = self
            .client
            .query_one(
                "SELECT hb_drop_reading_partitions_older_than($1::int)",
                &[&(days as i32)],
            )
            .await?;
        self.partition_days.clear();
        Ok(row.get(0))
    }

    /// Forgets the stored ranges of `(device, epoch)`s that received nothing for
    /// `days` (old epochs of restarted agents); returns how many.
    pub async fn forget_stored_ranges_older_than(
        &mut self,
        days: u32,
    ) -> Result<u64, tokio_postgres::Error> {
        self.client
            .execute(
                "DELETE FROM stored_ranges WHERE updated_at < now() - make_interval(days => $1)",
                &[&(days as i32)],
            )
            .await
    }

    /// Reconnects after a lost connection, retrying until it works or `give_up`
    /// resolves.
    pub async fn reconnect(&mut self) -> Result<(), tokio_postgres::Error> {
        let fresh = (|| Self::connect(&self.database))
            .retry(hb_runtime::retry::backoff(
                Duration::from_millis(200),
                Duration::from_secs(5),
                Some(3),
            ))
            .await?;
        *self = Self {
            alert_rules: self.alert_rules,
            ..fresh
        };
        Ok(())
    }

    /// Forgets which daily partitions exist, so that the next write creates them
    /// again if needed.
    pub fn forget_partitions(&mut self) {
        self.partition_days.clear();
    }

    /// Whether the connection is gone (and needs [`Store::reconnect`]).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// A row's values in [`COLUMNS`] order, for COPY or a prepared INSERT.
pub fn row_params(r: &ReadingRow) -> [&(dyn tokio_postgres::types::ToSql + Sync); 19] {
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

/// Binary COPY of `rows` into `table`; returns the rows written.
async fn copy_rows(
    tx: &tokio_postgres::Transaction<'_>,
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

/// Upserts the device registry from a batch: first/last seen, the latest reading
/// and clock skew. Devices in sorted order, so that concurrent collectors cannot
/// deadlock on each other's rows. Returns each device's alert state and rules, as
/// stored before this batch (the upsert does not touch them).
async fn upsert_devices(
    tx: &tokio_postgres::Transaction<'_>,
    readings: &[ReadingRow],
) -> Result<Vec<DeviceAlertRow>, tokio_postgres::Error> {
    let mut latest: std::collections::BTreeMap<&str, &ReadingRow> =
        std::collections::BTreeMap::new();
    for r in readings {
        let e = latest.entry(r.device_id.as_str()).or_insert(r);
        if (r.ts, r.epoch, r.seq) > (e.ts, e.epoch, e.seq) {
            *e = r;
        }
    }
    let ids: Vec<&str> = latest.keys().copied().collect();
    let seen: Vec<std::time::SystemTime> = latest.values().map(|r| r.received_at).collect();
    let ts: Vec<std::time::SystemTime> = latest.values().map(|r| r.ts).collect();
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

/// Per device, per epoch: the stored ranges before a batch, inclusive, in order.
type RangesBefore = HashMap<String, Vec<(i64, Vec<(u32, u32)>)>>;

/// The readings of `readings` to insert: those the ranges did not hold before the
/// batch, each once. `None` when that is all of them (the usual case: no copy).
fn new_readings(readings: &[ReadingRow], before: &RangesBefore) -> Option<Vec<ReadingRow>> {
    let stored = |r: &ReadingRow| {
        let Ok(seq) = u32::try_from(r.seq) else {
            return false;
        };
        let Some((_, ranges)) = before
            .get(r.device_id.as_str())
            .and_then(|epochs| epochs.iter().find(|(e, _)| *e == r.epoch))
        else {
            return false;
        };
        // Sorted and disjoint: the last range starting at or before `seq`.
        let i = ranges.partition_point(|&(first, _)| first <= seq);
        i > 0 && seq <= ranges[i - 1].1
    };
    let mut keys: Vec<(&str, i64, i64)> = readings
        .iter()
        .map(|r| (r.device_id.as_str(), r.epoch, r.seq))
        .collect();
    keys.sort_unstable();
    let repeats = keys.windows(2).any(|w| w[0] == w[1]);
    if !repeats && !readings.iter().any(stored) {
        return None;
    }
    let mut seen = std::collections::HashSet::with_capacity(readings.len());
    Some(
        readings
            .iter()
            .filter(|r| !stored(r) && seen.insert((r.device_id.as_str(), r.epoch, r.seq)))
            .cloned()
            .collect(),
    )
}

/// Adds the batch's readings, and the single readings it quarantined (refused for
/// good: the device must not resend them forever), to `stored_ranges`; returns the
/// ranges of every `(device, epoch)` touched, as stored now, and as they were
/// before. A redelivered batch changes nothing, but still reports the ranges, so
/// that a device resending readings whose confirmation it missed learns that they
/// are stored.
async fn update_stored_ranges(
    tx: &tokio_postgres::Transaction<'_>,
    readings: &[ReadingRow],
    quarantine: &[QuarantineRow],
    refused: &[ReadingRow],
) -> Result<(Vec<DeviceRanges>, RangesBefore), tokio_postgres::Error> {
    // Runs of consecutive numbers per (device, epoch), so that PostgreSQL merges a
    // few ranges per device rather than every reading.
    let mut keys: Vec<(&str, i64, i64)> = readings
        .iter()
        .chain(refused)
        .map(|r| (r.device_id.as_str(), r.epoch, r.seq))
        .chain(
            quarantine
                .iter()
                .filter_map(|q| q.reading.as_ref())
                .map(|(d, e, s)| (d.as_str(), *e, *s)),
        )
        .collect();
    if keys.is_empty() {
        return Ok((Vec::new(), HashMap::new()));
    }
    keys.sort_unstable();
    let (mut devices, mut epochs, mut firsts, mut lasts) = (vec![], vec![], vec![], vec![]);
    for (d, e, q) in keys {
        let extends = devices.last() == Some(&d)
            && epochs.last() == Some(&e)
            && lasts.last().is_some_and(|&l: &i64| q <= l + 1);
        if extends {
            *lasts.last_mut().expect("a run") = q;
        } else {
            devices.push(d);
            epochs.push(e);
            firsts.push(q);
            lasts.push(q);
        }
    }
    // Rows locked in (device, epoch) order, so that two collectors briefly owning
    // the same devices during a rebalance cannot deadlock. All parts of one
    // statement read one snapshot: `before` sees the rows as they were.
    let rows = tx
        .query(
            "WITH batch AS ( \
                 SELECT d, e, range_agg(int8range(a, b, '[]')) AS m \
                 FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[]) AS u(d, e, a, b) \
                 GROUP BY d, e), \
             before AS ( \
                 SELECT s.device_id, s.epoch, s.seqs FROM stored_ranges s \
                 JOIN batch ON s.device_id = batch.d AND s.epoch = batch.e), \
             after AS ( \
                 INSERT INTO stored_ranges AS s (device_id, epoch, seqs, updated_at) \
                 SELECT d, e, m, now() FROM batch ORDER BY d, e \
                 ON CONFLICT (device_id, epoch) DO UPDATE \
                     SET seqs = s.seqs + excluded.seqs, updated_at = excluded.updated_at \
                 RETURNING device_id, epoch, seqs) \
             SELECT after.device_id, after.epoch, after.seqs::text, before.seqs::text \
             FROM after LEFT JOIN before USING (device_id, epoch)",
            &[&devices, &epochs, &firsts, &lasts],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut before = RangesBefore::new();
    for row in rows {
        let (device, epoch, text): (String, i64, String) = (row.get(0), row.get(1), row.get(2));
        if let Some(ranges) = row.get::<_, Option<&str>>(3).and_then(parse_multirange) {
            before
                .entry(device.clone())
                .or_default()
                .push((epoch, ranges));
        }
        let (Ok(epoch), Some(ranges)) = (u32::try_from(epoch), parse_multirange(&text)) else {
            continue; // devices number with u32; the checks upstream keep them there
        };
        if ranges.len() > MAX_KEPT_RANGES as usize {
            // Rare (a device skipping numbers): keep the lowest and the newest.
            tx.execute(
                "UPDATE stored_ranges SET seqs = hb_cap_ranges(seqs, $3) \
                 WHERE device_id = $1 AND epoch = $2",
                &[&device, &i64::from(epoch), &MAX_KEPT_RANGES],
            )
            .await?;
        }
        out.push((device, EpochRanges::capped(epoch, ranges)));
    }
    Ok((out, before))
}

/// Inclusive `(first, last)` ranges of an `int8multirange` in PostgreSQL's text
/// form, `{[0,5),[10,13)}` (int8 ranges are canonical: inclusive lower, exclusive
/// upper). `None` for anything else, or numbers outside `u32`.
fn parse_multirange(text: &str) -> Option<Vec<(u32, u32)>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    inner
        .split("),")
        .map(|r| {
            let r = r.strip_prefix('[')?.trim_end_matches(')');
            let (a, b) = r.split_once(',')?;
            let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
            Some((a, b.checked_sub(1)?))
        })
        .collect()
}

/// Whether retrying the same statement later can succeed: connection trouble,
/// server shutdown, serialisation failures, resource exhaustion. Anything else is a
/// property of the data and must not be retried forever.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true, // I/O error or closed connection
        // "no partition of relation found for row": the day's partition was dropped
        // (by another process's retention) after we last created it. The writer
        // forgets its partition cache on this error and creates it again. It
        // shares its SQLSTATE with the tables' CHECK constraints, but names no
        // constraint: a row that violates a named CHECK is a property of the
        // data, and its record goes to quarantine instead of being retried
        // forever.
        Some(code) if *code == SqlState::CHECK_VIOLATION => {
            e.as_db_error().and_then(|d| d.constraint()).is_none()
        }
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("40") // transaction rollback (serialisation, deadlock)
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57") // operator intervention (shutdown)
                || c.starts_with("58") // system error
                || *code == SqlState::LOCK_NOT_AVAILABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(device: &str, epoch: i64, seq: i64) -> ReadingRow {
        crate::records::sample_row(device, epoch, seq)
    }

    #[test]
    fn a_batch_without_stored_or_repeated_readings_is_written_as_it_is() {
        let batch = [row("a", 1, 5), row("a", 1, 6), row("b", 1, 5)];
        let before = RangesBefore::from([("a".into(), vec![(1, vec![(0, 4)]), (2, vec![(5, 9)])])]);
        assert_eq!(new_readings(&batch, &before), None);
    }

    #[test]
    fn readings_the_ranges_held_before_the_batch_or_repeated_in_it_are_left_out() {
        let batch = [
            row("a", 1, 3),  // stored: in [0, 4]
            row("a", 1, 5),  // new
            row("a", 1, 10), // stored: in [10, 12]
            row("a", 2, 3),  // new: another epoch
            row("b", 1, 3),  // new: another device
            row("a", 1, 5),  // repeated in the batch
        ];
        let before = RangesBefore::from([("a".into(), vec![(1, vec![(0, 4), (10, 12)])])]);
        let fresh = new_readings(&batch, &before).expect("some left out");
        let keys: Vec<_> = fresh
            .iter()
            .map(|r| (r.device_id.as_str(), r.epoch, r.seq))
            .collect();
        assert_eq!(keys, [("a", 1, 5), ("a", 2, 3), ("b", 1, 3)]);
    }

    #[test]
    fn multiranges_parse_from_postgresql_text() {
        assert_eq!(
            parse_multirange("{[0,5),[10,13)}"),
            Some(vec![(0, 4), (10, 12)])
        );
        assert_eq!(parse_multirange("{[7,8)}"), Some(vec![(7, 7)]));
        assert_eq!(parse_multirange("{}"), Some(vec![]));
        assert_eq!(parse_multirange("{[0,5]}"), None);
        assert_eq!(parse_multirange("[0,5)"), None);
        assert_eq!(parse_multirange("{[0,99999999999)}"), None);
    }
}
