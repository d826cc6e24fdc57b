//! PostgreSQL writer. One batch is one transaction: binary `COPY` of the readings
//! into a session-local staging table, `INSERT … SELECT … ON CONFLICT DO NOTHING`
//! into `readings`, quarantine rows alongside, then `COMMIT`. The unique key makes
//! a replayed batch (after a crash or a COMMIT whose reply was lost) a no-op.

use std::time::Duration;

use backon::Retryable;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

use crate::records::{QuarantineRow, ReadingRow};
use crate::{Error, Result};

const COLUMNS: &str = "device_id, epoch, seq, ts, mono_ms, clock_synced, received_at, bpm, \
     contact, rr_1024, energy_kj, status, local_flag, backfill, kafka_partition, kafka_offset";

const COLUMN_TYPES: [Type; 16] = [
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::INT8,
    Type::BOOL,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::TEXT,
    Type::INT4_ARRAY,
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::BOOL,
    Type::INT4,
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
}

/// A connection to PostgreSQL prepared for batch writes.
pub struct Store {
    client: Client,
    url: String,
}

impl Store {
    /// Connects once.
    pub async fn connect(url: &str) -> Result<Self, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection ended.");
            }
        });
        Ok(Self {
            client,
            url: url.to_owned(),
        })
    }

    /// Connects with the start-up retry policy; fails with a one-line error after it.
    pub async fn connect_with_retry(url: &str) -> Result<Self> {
        (|| Self::connect(url))
            .retry(hb_runtime::retry::startup())
            .notify(|e, after| tracing::warn!(error = %e, ?after, "PostgreSQL not reachable, retrying."))
            .await
            .map_err(Error::ConnectDatabase)
    }

    /// The underlying client, e.g. for migrations.
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Writes one batch in one transaction. On error nothing is committed.
    pub async fn write(
        &mut self,
        readings: &[ReadingRow],
        quarantine: &[QuarantineRow],
    ) -> Result<Written, tokio_postgres::Error> {
        let tx = self.client.transaction().await?;
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS readings_staging \
             (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
        )
        .await?;
        let mut written = Written::default();
        if !readings.is_empty() {
            let sink = tx
                .copy_in(&format!(
                    "COPY readings_staging ({COLUMNS}) FROM STDIN BINARY"
                ))
                .await?;
            let writer = BinaryCopyInWriter::new(sink, &COLUMN_TYPES);
            let mut writer = std::pin::pin!(writer);
            for r in readings {
                writer
                    .as_mut()
                    .write(&[
                        &r.device_id,
                        &r.epoch,
                        &r.seq,
                        &r.ts,
                        &r.mono_ms,
                        &r.clock_synced,
                        &r.received_at,
                        &r.bpm,
                        &r.contact,
                        &r.rr_1024,
                        &r.energy_kj,
                        &r.status,
                        &r.local_flag,
                        &r.backfill,
                        &r.kafka_partition,
                        &r.kafka_offset,
                    ])
                    .await?;
            }
            writer.finish().await?;
            written.inserted = tx
                .execute(
                    &format!(
                        "INSERT INTO readings ({COLUMNS}) SELECT {COLUMNS} FROM readings_staging \
                         ON CONFLICT (device_id, epoch, seq) DO NOTHING"
                    ),
                    &[],
                )
                .await?;
            written.duplicates = readings.len() as u64 - written.inserted;
        }
        if !quarantine.is_empty() {
            let stmt = tx
                .prepare(
                    "INSERT INTO quarantine (source_topic, source_partition, source_offset, reason, \
                     detail, payload, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT DO NOTHING",
                )
                .await?;
            for q in quarantine {
                written.quarantined += tx
                    .execute(
                        &stmt,
                        &[
                            &q.source.topic,
                            &q.source.partition,
                            &q.source.offset,
                            &q.reason,
                            &q.detail,
                            &q.payload,
                            &q.received_at,
                        ],
                    )
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(written)
    }

    /// Reconnects after a lost connection, retrying until it works or `give_up`
    /// resolves.
    pub async fn reconnect(&mut self) -> Result<(), tokio_postgres::Error> {
        let fresh = (|| Self::connect(&self.url))
            .retry(hb_runtime::retry::backoff(
                Duration::from_millis(200),
                Duration::from_secs(5),
                Some(3),
            ))
            .await?;
        *self = fresh;
        Ok(())
    }

    /// Whether the connection is gone (and needs [`Store::reconnect`]).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// Whether retrying the same statement later can succeed: connection trouble,
/// server shutdown, serialisation failures, resource exhaustion. Anything else is a
/// property of the data and must not be retried forever.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true, // I/O error or closed connection
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
