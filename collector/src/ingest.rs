//! The consume → write → store-offsets loop.
//!
//! A batch is collected until it holds `batch_max_readings` readings or
//! `batch_max_wait` has passed since its first record, written in one transaction,
//! and only after the COMMIT returned are the batch's offsets stored for the
//! periodic auto-commit. A crash anywhere before that point means Kafka delivers
//! the records again and the unique key absorbs them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::records::{self, Accepted, QuarantineRow, ReadingRow, Source};
use crate::store::{self, Store, Written};
use crate::{Config, Error, Result};

/// One consumed record after decoding.
struct Record {
    source: Source,
    payload: Vec<u8>,
    received_at: SystemTime,
    accepted: Accepted,
}

/// Records collected for one transaction.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    readings: usize,
}

impl Batch {
    fn split(records: &[Record]) -> (Vec<ReadingRow>, Vec<QuarantineRow>) {
        let mut readings = Vec::new();
        let mut quarantine = Vec::new();
        for r in records {
            match &r.accepted {
                Accepted::Readings(rows) => readings.extend(rows.iter().cloned()),
                Accepted::Quarantined(q) => quarantine.push(q.clone()),
            }
        }
        (readings, quarantine)
    }

    /// Next offset to consume, per partition.
    fn offsets(&self) -> TopicPartitionList {
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for r in &self.records {
            let e = next
                .entry((r.source.topic.as_str(), r.source.partition))
                .or_insert(0);
            *e = (*e).max(r.source.offset + 1);
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            // Only fails for an invalid offset, which `offset + 1 >= 1` is not.
            let _ = list.add_partition_offset(topic, partition, Offset::Offset(offset));
        }
        list
    }
}

/// Creates the consumer with the collector's delivery settings.
pub fn create_consumer(config: &Config) -> Result<StreamConsumer> {
    let mut cc = ClientConfig::new();
    cc.set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    for (k, v) in &config.kafka_options {
        cc.set(k, v);
    }
    cc.set("bootstrap.servers", &config.kafka_brokers)
        .set("group.id", &config.kafka_group)
        .set("enable.auto.offset.store", "false");
    cc.create().map_err(Error::CreateConsumer)
}

/// Waits until `topic` exists with at least one partition. The bridge creates the
/// topics; a collector started first waits for them instead of subscribing to a
/// topic librdkafka would only notice minutes later.
pub async fn wait_for_topic(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        let c = Arc::clone(consumer);
        let t = topic.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(Some(&t), Duration::from_secs(5))
                .map(|m| {
                    m.topics().iter().any(|mt| {
                        mt.name() == t && mt.error().is_none() && !mt.partitions().is_empty()
                    })
                })
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let reason = match found {
            Ok(true) => return Ok(()),
            Ok(false) => "topic does not exist yet".to_owned(),
            Err(e) => e,
        };
        if Instant::now() >= deadline || shutdown.is_cancelled() {
            return Err(Error::TopicUnavailable {
                topic: topic.to_owned(),
                reason,
            });
        }
        tracing::info!(topic, %reason, "Waiting for the Kafka topic.");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Counters of what the loop did, for logs and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    /// Kafka records consumed.
    pub records: u64,
    /// Totals of the committed batches.
    pub written: Written,
}

/// Runs the loop until `shutdown`, then commits the stored offsets.
pub async fn run(
    config: &Config,
    store: &mut Store,
    consumer: &StreamConsumer,
    shutdown: &CancellationToken,
) -> Result<Totals> {
    let mut totals = Totals::default();
    while !shutdown.is_cancelled() {
        let batch = collect(config, consumer, shutdown).await;
        if batch.records.is_empty() {
            continue;
        }
        let Some(written) = write_until_committed(store, &batch, shutdown).await else {
            tracing::info!(
                records = batch.records.len(),
                "Shutdown before the batch committed; Kafka will redeliver it."
            );
            break;
        };
        totals.records += batch.records.len() as u64;
        totals.written.inserted += written.inserted;
        totals.written.duplicates += written.duplicates;
        totals.written.quarantined += written.quarantined;
        tracing::debug!(
            records = batch.records.len(),
            inserted = written.inserted,
            duplicates = written.duplicates,
            quarantined = written.quarantined,
            "Batch committed."
        );
        // Only now may Kafka forget these records.
        if let Err(e) = consumer.store_offsets(&batch.offsets()) {
            // The partition was revoked meanwhile: its new owner re-reads the records
            // and the unique key absorbs them.
            tracing::warn!(error = %e, "Could not store offsets (partition revoked?); the records will be redelivered.");
        }
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => return Err(Error::CommitOffsets(e)),
    }
    tracing::info!(
        records = totals.records,
        inserted = totals.written.inserted,
        "Collector stopped."
    );
    Ok(totals)
}

async fn collect(
    config: &Config,
    consumer: &StreamConsumer,
    shutdown: &CancellationToken,
) -> Batch {
    let mut batch = Batch::default();
    let mut deadline: Option<Instant> = None;
    while batch.readings < config.batch_max_readings {
        let msg = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = sleep_until(deadline) => break,
            msg = consumer.recv() => msg,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consumer error.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        deadline.get_or_insert_with(|| Instant::now() + config.batch_max_wait);
        let received_at = SystemTime::now();
        let source = Source {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
        };
        let content_type = msg.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "content-type")
                .and_then(|h| h.value)
        });
        let payload = msg.payload().unwrap_or_default();
        let accepted = records::accept(
            &source,
            content_type,
            msg.key(),
            payload,
            &config.thresholds,
            received_at,
        );
        match &accepted {
            Accepted::Readings(rows) => batch.readings += rows.len(),
            Accepted::Quarantined(q) => {
                tracing::warn!(topic = %source.topic, partition = source.partition, offset = source.offset,
                    reason = q.reason, detail = %q.detail, "Quarantined record.");
                batch.readings += 1;
            }
        }
        batch.records.push(Record {
            source,
            payload: payload.to_vec(),
            received_at,
            accepted,
        });
    }
    batch
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes the batch, retrying transient failures (reconnecting as needed) until
/// it commits. `None` when shutdown came first: nothing of the batch is
/// acknowledged to Kafka then.
async fn write_until_committed(
    store: &mut Store,
    batch: &Batch,
    shutdown: &CancellationToken,
) -> Option<Written> {
    let (readings, quarantine) = Batch::split(&batch.records);
    let mut delay = Duration::from_millis(100);
    loop {
        if store.is_closed() {
            if let Err(e) = store.reconnect().await {
                tracing::warn!(error = %e, "PostgreSQL still unreachable.");
                if pause(&mut delay, shutdown).await {
                    return None;
                }
                continue;
            }
            tracing::info!("Reconnected to PostgreSQL.");
        }
        match store.write(&readings, &quarantine).await {
            Ok(w) => return Some(w),
            Err(e) if store::is_transient(&e) => {
                tracing::warn!(error = %e, "Batch write failed; retrying.");
                if pause(&mut delay, shutdown).await {
                    return None;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Batch rejected by PostgreSQL; isolating the bad records.");
                return write_one_by_one(store, &batch.records, shutdown).await;
            }
        }
    }
}

/// The slow path after a non-transient failure: each record in its own
/// transaction; a record PostgreSQL still refuses is quarantined (poison), so it
/// cannot block the partition.
async fn write_one_by_one(
    store: &mut Store,
    records: &[Record],
    shutdown: &CancellationToken,
) -> Option<Written> {
    let mut total = Written::default();
    for r in records {
        let (readings, quarantine) = Batch::split(std::slice::from_ref(r));
        let mut delay = Duration::from_millis(100);
        let w = loop {
            match store.write(&readings, &quarantine).await {
                Ok(w) => break w,
                Err(e) if store::is_transient(&e) || store.is_closed() => {
                    if pause(&mut delay, shutdown).await {
                        return None;
                    }
                    if store.is_closed() {
                        let _ = store.reconnect().await;
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %r.source.topic, partition = r.source.partition,
                        offset = r.source.offset, error = %e, "Poison record quarantined.");
                    let q = QuarantineRow {
                        source: r.source.clone(),
                        reason: "database_rejected",
                        detail: e.to_string(),
                        payload: r.payload.clone(),
                        received_at: r.received_at,
                    };
                    match store.write(&[], &[q]).await {
                        Ok(w) => break w,
                        Err(e) => {
                            tracing::warn!(error = %e, "Could not quarantine the poison record; retrying.");
                            if pause(&mut delay, shutdown).await {
                                return None;
                            }
                        }
                    }
                }
            }
        };
        total.inserted += w.inserted;
        total.duplicates += w.duplicates;
        total.quarantined += w.quarantined;
    }
    Some(total)
}

/// Sleeps with exponential backoff; true when shutdown interrupted it.
async fn pause(delay: &mut Duration, shutdown: &CancellationToken) -> bool {
    let d = *delay;
    *delay = (*delay * 2).min(Duration::from_secs(5));
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}
