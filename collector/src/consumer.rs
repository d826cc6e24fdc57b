//! The Kafka side of the collector: the consumer and its settings, the callbacks
//! that report rebalances and offset commits, waiting for the topic, and the lag
//! gauge.
//!
//! Offsets are committed by librdkafka's periodic auto-commit, but only offsets
//! the ingest loop *stored* after a database COMMIT
//! (`enable.auto.offset.store=false`), so a commit can never run ahead of the
//! database.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use hb_runtime::metrics::Gauge;
use hb_runtime::retry::sleep_unless_cancelled;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::CollectorMetrics;
use crate::{Config, Error, Result};

/// The collector's consumer type.
pub type KafkaConsumer = StreamConsumer<CollectorContext>;

/// Reports what the group coordinator decides: which partitions this collector
/// owns (logged and exported, so an operator sees how the group is split), and
/// offset commits that failed.
pub struct CollectorContext {
    assigned: Gauge,
}

impl ClientContext for CollectorContext {}

impl ConsumerContext for CollectorContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                tracing::info!(partitions = %describe(list), "Partitions assigned.");
            }
            Rebalance::Revoke(list) => {
                // Batches already read from these partitions still commit to the
                // database; storing their offsets then fails (handled), and the
                // new owner re-reads them: the unique key absorbs the repeat.
                tracing::info!(partitions = %describe(list), "Partitions revoked.");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "Rebalance failed."),
        }
        if let Ok(now) = consumer.assignment() {
            self.assigned.set(now.count() as i64);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            // Not data loss: the records are in the database, and a later commit
            // (or the next owner re-reading them) covers these offsets.
            Err(e) => tracing::warn!(error = %e, offsets = %describe(offsets),
                "Offset commit failed; these records may be delivered again."),
        }
    }
}

/// `topic[partition]@offset, …` for logs.
fn describe(list: &TopicPartitionList) -> String {
    list.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => format!("{}[{}]@{o}", e.topic(), e.partition()),
            _ => format!("{}[{}]", e.topic(), e.partition()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Creates the consumer with the collector's delivery settings.
pub fn create_consumer(config: &Config, metrics: &CollectorMetrics) -> Result<KafkaConsumer> {
    let context = CollectorContext {
        assigned: metrics.assigned_partitions.clone(),
    };
    consumer_config(config, &config.kafka_group)
        .create_with_context(context)
        .map_err(|e| Error::CreateConsumer(hb_runtime::kafka_args::without_values(e)))
}

/// The settings of the collector's consumers in `group`: offsets auto-committed,
/// but only those stored after a database COMMIT; the operator's `-X` options.
pub fn consumer_config(config: &Config, group: &str) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // A fetch returns when it has data or after this long. Kafka answers as
        // soon as data arrives; tansu 0.6 holds every fetch for the whole wait
        // (librdkafka's default, 500 ms), which was the floor of the collector's
        // receive latency. Idle, this costs 20 small requests a second.
        .set("fetch.wait.max.ms", "50")
        // Prefetched records librdkafka keeps in memory (default 64 MiB): past the
        // knee it filled, and the collector reached 165 MB RSS. 16 MiB is still
        // about 20 full batches ahead.
        .set("queued.max.messages.kbytes", "16384");
    for (k, v) in &config.kafka_options {
        cc.set(k, v);
    }
    cc.set("bootstrap.servers", &config.kafka_brokers)
        .set("group.id", group)
        .set("enable.auto.offset.store", "false");
    cc
}

/// Waits until `topic` exists with at least one partition. The bridge creates the
/// topics; a collector started first waits for them instead of subscribing to a
/// topic librdkafka would only notice minutes later. Returns early (`Ok`) when
/// `shutdown` is cancelled.
pub async fn wait_for_topic(
    consumer: &Arc<KafkaConsumer>,
    topic: &str,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let look = || async {
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
        match found {
            Ok(true) => Ok(()),
            Ok(false) => Err("topic does not exist yet".to_owned()),
            Err(e) => Err(e),
        }
    };
    // A stop cuts the pause short; the look after it is the last.
    let stop = shutdown.clone();
    let found = look
        .retry(hb_runtime::retry::doubling(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .sleep(move |delay| {
            let stop = stop.clone();
            async move {
                sleep_unless_cancelled(delay, &stop).await;
            }
        })
        .when(|_| !shutdown.is_cancelled() && Instant::now() < deadline)
        .notify(|reason, _| tracing::info!(topic, %reason, "Waiting for the Kafka topic."))
        .await;
    match found {
        Ok(()) => Ok(()),
        // Stopped while waiting: not a failure.
        Err(_) if shutdown.is_cancelled() => Ok(()),
        Err(reason) => Err(Error::TopicUnavailable {
            topic: topic.to_owned(),
            reason,
        }),
    }
}

/// Every 10 s, sets the consumer-lag gauge: for each assigned partition, the high
/// watermark minus the consumer's position.
pub async fn report_lag(
    consumer: Arc<KafkaConsumer>,
    metrics: Arc<CollectorMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        if sleep_unless_cancelled(Duration::from_secs(10), &shutdown).await {
            return;
        }
        if let Some(lag) = lag(&consumer).await {
            metrics.consumer_lag.set(lag);
        }
    }
}

/// Per assigned partition, the records between the consumer's position and the
/// partition's end (a partition not fetched from yet counts whole). `None` when
/// Kafka could not tell.
pub async fn partition_lags(consumer: &Arc<KafkaConsumer>) -> Option<Vec<(i32, i64)>> {
    let c = Arc::clone(consumer);
    tokio::task::spawn_blocking(move || {
        let position = c.position().ok()?;
        let mut lags = Vec::new();
        for e in position.elements() {
            let (_, high) = c
                .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2))
                .ok()?;
            let lag = match e.offset() {
                Offset::Offset(at) => (high - at).max(0),
                _ => high.max(0),
            };
            lags.push((e.partition(), lag));
        }
        Some(lags)
    })
    .await
    .ok()
    .flatten()
}

async fn lag(consumer: &Arc<KafkaConsumer>) -> Option<i64> {
    partition_lags(consumer)
        .await
        .map(|lags| lags.iter().map(|(_, l)| l).sum())
}
