//! The consume → write → store-offsets loop.
//!
//! A batch is collected until it holds `batch_max_readings` readings or
//! `batch_max_wait` has passed since its first record, written in one transaction,
//! and only after the COMMIT returned are the batch's offsets stored for the
//! periodic auto-commit. A crash anywhere before that point means Kafka delivers
//! the records again and the unique key absorbs them.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff};
use hb_runtime::log_limit::LogLimit;
use hb_runtime::retry::sleep_unless_cancelled;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::confirm::Pending;

/// Quarantine warnings, per reason: producers decide how many bad records arrive
/// (`suppressed` on a line counts those left out before it; the metrics count all).
static LOG_LIMIT: LazyLock<LogLimit> = LazyLock::new(LogLimit::per_minute);
use crate::consumer::KafkaConsumer;
use crate::metrics::CollectorMetrics;
use crate::records::{self, Outcome, QuarantineRow, ReadingRow, Source};
use crate::store::{self, DeviceRanges, Store, Written};
use crate::{Config, Error, Result};

/// One consumed record: where it came from, and which of the batch's rows and
/// quarantine entries it produced.
struct Record {
    source: Source,
    payload: Vec<u8>,
    received_at: SystemTime,
    rows: std::ops::Range<usize>,
    quarantine: std::ops::Range<usize>,
}

/// Records collected for one transaction, their rows kept in one place so that
/// writing the batch copies nothing.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    rows: Vec<ReadingRow>,
    quarantine: Vec<QuarantineRow>,
}

impl Batch {
    fn push(&mut self, source: Source, payload: &[u8], received_at: SystemTime, outcome: Outcome) {
        let rows = self.rows.len()..self.rows.len() + outcome.rows.len();
        let quarantine = self.quarantine.len()..self.quarantine.len() + outcome.quarantine.len();
        self.rows.extend(outcome.rows);
        self.quarantine.extend(outcome.quarantine);
        self.records.push(Record {
            source,
            payload: payload.to_vec(),
            received_at,
            rows,
            quarantine,
        });
    }

    /// Readings and quarantine entries so far (what the size limit counts).
    fn len(&self) -> usize {
        self.rows.len() + self.quarantine.len()
    }

    /// Next offset to consume, one list per partition (so that a partition
    /// revoked meanwhile cannot keep the others' offsets from being stored).
    fn offsets(&self) -> Vec<TopicPartitionList> {
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for r in &self.records {
            let e = next
                .entry((r.source.topic.as_str(), r.source.partition))
                .or_insert(0);
            *e = (*e).max(r.source.offset + 1);
        }
        next.into_iter()
            .map(|((topic, partition), offset)| {
                let mut list = TopicPartitionList::new();
                // Only fails for an invalid offset, which `offset + 1 >= 1` is not.
                let _ = list.add_partition_offset(topic, partition, Offset::Offset(offset));
                list
            })
            .collect()
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
    consumer: &KafkaConsumer,
    metrics: &CollectorMetrics,
    confirmations: Option<Arc<Pending>>,
    alert_wake: &tokio::sync::Notify,
    shutdown: &CancellationToken,
) -> Result<Totals> {
    // Two halves on this task, overlapping: the reader decodes the next batch while
    // the writer commits the previous one. Batches are committed, and their
    // offsets stored, strictly in the order they were read.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(1);
    let reader = async move {
        while !shutdown.is_cancelled() {
            let batch = collect(config, consumer, metrics, shutdown).await;
            if batch.records.is_empty() {
                continue;
            }
            metrics.consumed.inc_by(batch.records.len() as u64);
            if tx.send(batch).await.is_err() {
                break; // the writer stopped
            }
        }
        // Dropping `tx` lets the writer finish what it has and stop.
    };
    let writer = async {
        let mut totals = Totals::default();
        while let Some(batch) = rx.recv().await {
            let started = Instant::now();
            let Some((written, stored)) =
                write_until_committed(store, &batch, metrics, shutdown).await
            else {
                tracing::info!(
                    records = batch.records.len(),
                    "Shutdown before the batch committed; Kafka will redeliver it."
                );
                break;
            };
            metrics.batch_seconds.observe_duration(started.elapsed());
            metrics.batch_readings.observe(batch.len() as f64);
            metrics.inserted.inc_by(written.inserted);
            metrics.duplicates.inc_by(written.duplicates);
            for q in &batch.quarantine {
                metrics.quarantined.with(q.reason).inc();
            }
            metrics.health.set("database", Ok(()));
            totals.records += batch.records.len() as u64;
            totals.written += written;
            tracing::debug!(
                records = batch.records.len(),
                inserted = written.inserted,
                duplicates = written.duplicates,
                quarantined = written.quarantined,
                "Batch committed."
            );
            fault_point_after_commit();
            metrics.live_failed.inc_by(written.live_failed);
            if written.alert_transitions > 0 {
                metrics.alert_transitions.inc_by(written.alert_transitions);
                alert_wake.notify_one();
            }
            if let Some(c) = &confirmations {
                c.add(stored);
            }
            // Only now may Kafka forget these records.
            for list in batch.offsets() {
                if let Err(e) = consumer.store_offsets(&list) {
                    // The partition was revoked meanwhile: its new owner re-reads the
                    // records and the unique key absorbs them.
                    tracing::warn!(error = %e, "Could not store an offset (partition revoked?); its records will be redelivered.");
                }
            }
        }
        // Anything still queued was not committed: Kafka redelivers it.
        rx.close();
        totals
    };
    let ((), totals) = tokio::join!(reader, writer);
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
    consumer: &KafkaConsumer,
    metrics: &CollectorMetrics,
    shutdown: &CancellationToken,
) -> Batch {
    let mut batch = Batch::default();
    // One timer per batch, armed by its first record.
    let deadline = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(deadline);
    let mut armed = false;
    while batch.len() < config.batch_max_readings {
        let msg = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = &mut deadline, if armed => break,
            msg = consumer.recv() => msg,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consumer error.");
                metrics.health.set("kafka", Err(e.to_string()));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !armed {
            deadline
                .as_mut()
                .reset(Instant::now() + config.batch_max_wait);
            armed = true;
            metrics.health.set("kafka", Ok(()));
        }
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
        let outcome = records::accept(
            &source,
            content_type,
            msg.key(),
            payload,
            &config.rules,
            received_at,
        );
        for q in &outcome.quarantine {
            if let Some(suppressed) = LOG_LIMIT.check(q.reason) {
                tracing::warn!(topic = %source.topic, partition = source.partition, offset = source.offset,
                    reason = q.reason, detail = %q.detail, suppressed, "Quarantined.");
            }
        }
        batch.push(source, payload, received_at, outcome);
    }
    batch
}

/// Writes the batch, retrying transient failures (reconnecting as needed) until
/// it commits. `None` when shutdown came first: nothing of the batch is
/// acknowledged to Kafka then.
async fn write_until_committed(
    store: &mut Store,
    batch: &Batch,
    metrics: &CollectorMetrics,
    shutdown: &CancellationToken,
) -> Option<(Written, Vec<DeviceRanges>)> {
    let (readings, quarantine) = (&batch.rows, &batch.quarantine);
    let mut delays = retry_delays();
    loop {
        if store.is_closed() {
            if let Err(e) = store.reconnect().await {
                metrics.write_retries.inc();
                metrics
                    .health
                    .set("database", Err(format!("unreachable: {e}")));
                tracing::warn!(error = %e, "PostgreSQL still unreachable.");
                if pause(&mut delays, shutdown).await {
                    return None;
                }
                continue;
            }
            tracing::info!("Reconnected to PostgreSQL.");
        }
        let written = match store.ensure_partitions(readings).await {
            Ok(()) => store.write(readings, quarantine, &[]).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(w) => return Some(w),
            Err(e) if store::is_transient(&e) => {
                store.forget_partitions();
                metrics.write_retries.inc();
                metrics
                    .health
                    .set("database", Err(format!("writes failing: {e}")));
                tracing::warn!(error = %e, "Batch write failed; retrying.");
                if pause(&mut delays, shutdown).await {
                    return None;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Batch rejected by PostgreSQL; isolating the bad records.");
                return write_one_by_one(store, batch, shutdown).await;
            }
        }
    }
}

/// The slow path after a non-transient failure: each record in its own
/// transaction; a record PostgreSQL still refuses is quarantined (poison), so it
/// cannot block the partition.
async fn write_one_by_one(
    store: &mut Store,
    batch: &Batch,
    shutdown: &CancellationToken,
) -> Option<(Written, Vec<DeviceRanges>)> {
    let mut total = Written::default();
    let mut stored = Vec::new();
    for r in &batch.records {
        let (readings, quarantine) = (
            &batch.rows[r.rows.clone()],
            &batch.quarantine[r.quarantine.clone()],
        );
        let mut delays = retry_delays();
        let w = loop {
            let written = match store.ensure_partitions(readings).await {
                Ok(()) => store.write(readings, quarantine, &[]).await,
                Err(e) => Err(e),
            };
            match written {
                Ok(w) => break w,
                Err(e) if store::is_transient(&e) || store.is_closed() => {
                    if pause(&mut delays, shutdown).await {
                        return None;
                    }
                    if store.is_closed() {
                        let _ = store.reconnect().await;
                    }
                }
                Err(e) => {
                    if let Some(suppressed) = LOG_LIMIT.check("database_rejected") {
                        tracing::warn!(topic = %r.source.topic, partition = r.source.partition,
                            offset = r.source.offset, error = %e, suppressed, "Poison record quarantined.");
                    }
                    let q = QuarantineRow {
                        source: r.source.clone(),
                        reason: "database_rejected",
                        // PostgreSQL's own words ("… violates check constraint
                        // …"), not tokio-postgres's bare "db error".
                        detail: e
                            .as_db_error()
                            .map(|d| format!("{} (SQLSTATE {})", d.message(), d.code().code()))
                            .unwrap_or_else(|| e.to_string()),
                        payload: std::sync::Arc::from(r.payload.as_slice()),
                        received_at: r.received_at,
                        reading: None,
                    };
                    // Its readings are settled: the device stops resending them.
                    match store.write(&[], &[q], readings).await {
                        Ok(w) => break w,
                        Err(e) => {
                            tracing::warn!(error = %e, "Could not quarantine the poison record; retrying.");
                            if pause(&mut delays, shutdown).await {
                                return None;
                            }
                        }
                    }
                }
            }
        };
        let (w, s) = w;
        stored.extend(s);
        total += w;
    }
    Some((total, stored))
}

/// The pauses between tries of one write: 100 ms doubling up to 5 s, for ever.
/// (The loops above stay loops rather than `backon` retries: a try is a reconnect
/// or a write, each with its own logs, a refused batch falls through to the slow
/// path, and a stop ends the pause but never a try in progress.)
fn retry_delays() -> ExponentialBackoff {
    hb_runtime::retry::doubling(RETRY_MIN, RETRY_MAX).build()
}

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Sleeps for the next of `delays`; true when shutdown interrupted it.
async fn pause(delays: &mut ExponentialBackoff, shutdown: &CancellationToken) -> bool {
    let d = delays.next().unwrap_or(RETRY_MAX);
    sleep_unless_cancelled(d, shutdown).await
}

/// Fault injection for the crash tests: with `HB_FAULT_ABORT_AFTER_COMMITS=N` in
/// the environment, the process aborts right after its N-th committed batch and
/// before that batch's offsets are stored: the worst moment for exactly-once.
fn fault_point_after_commit() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COMMITS: AtomicU64 = AtomicU64::new(0);
    static LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let limit = LIMIT.get_or_init(|| {
        std::env::var("HB_FAULT_ABORT_AFTER_COMMITS")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(limit) = limit {
        if COMMITS.fetch_add(1, Ordering::SeqCst) + 1 >= *limit {
            eprintln!("hb-collector: HB_FAULT_ABORT_AFTER_COMMITS reached; aborting after COMMIT, before storing offsets");
            std::process::abort();
        }
    }
}
