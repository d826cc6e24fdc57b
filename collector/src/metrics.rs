//! What the collector exposes on `/metrics` (Prometheus text) and `/healthz`.

use std::sync::Arc;

use hb_runtime::http::Health;
use hb_runtime::metrics::{Counter, Gauge, Histogram, LabeledCounter, Registry, LATENCY_SECONDS};

/// Batch sizes, in readings.
const BATCH_READINGS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// The collector's metrics and health checks.
pub struct CollectorMetrics {
    /// Everything registered, for rendering.
    pub registry: Arc<Registry>,
    /// Health checks: `database` (batches commit), `kafka` (consuming).
    pub health: Health,
    /// Kafka records consumed.
    pub consumed: Arc<Counter>,
    /// New rows in `readings`.
    pub inserted: Arc<Counter>,
    /// Readings already stored (redeliveries) absorbed by the unique key.
    pub duplicates: Arc<Counter>,
    /// Quarantine entries written, by reason.
    pub quarantined: Arc<LabeledCounter>,
    /// Readings per committed batch.
    pub batch_readings: Arc<Histogram>,
    /// Time to write and commit a batch (including retries).
    pub batch_seconds: Arc<Histogram>,
    /// Failed batch writes, each retried.
    pub write_retries: Arc<Counter>,
    /// Records behind the end of the assigned partitions.
    pub consumer_lag: Arc<Gauge>,
    /// Kafka partitions currently assigned to this collector.
    pub assigned_partitions: Arc<Gauge>,
    /// Daily partitions dropped by retention.
    pub partitions_dropped: Arc<Counter>,
    /// Storage confirmations published to the devices.
    pub confirmations_published: Arc<Counter>,
    /// Storage confirmations whose publish failed (kept for the next round).
    pub confirmations_failed: Arc<Counter>,
    /// Alert transitions written (open, escalate, de-escalate, close).
    pub alert_transitions: Arc<Counter>,
    /// Batches stored without their dashboard notifications and counts.
    pub live_failed: Arc<Counter>,
    /// Alert transitions produced to Kafka from the outbox.
    pub alerts_published: Arc<Counter>,
    /// Outbox drains that failed (the rows stay for the next one).
    pub alerts_publish_failed: Arc<Counter>,
}

impl CollectorMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            consumed: r.register_counter("hb_collector_consumed_total", "Kafka records consumed."),
            inserted: r.register_counter("hb_collector_inserted_total", "New rows in readings."),
            duplicates: r.register_counter(
                "hb_collector_duplicates_total",
                "Readings already stored (redeliveries), absorbed by the unique key.",
            ),
            quarantined: r.register_labeled_counter(
                "hb_collector_quarantined_total",
                "Quarantine entries written, by reason.",
                "reason",
                32,
            ),
            batch_readings: r.register_histogram(
                "hb_collector_batch_readings",
                "Readings per committed batch.",
                BATCH_READINGS,
            ),
            batch_seconds: r.register_histogram(
                "hb_collector_batch_seconds",
                "Time to write and commit a batch, retries included.",
                LATENCY_SECONDS,
            ),
            write_retries: r.register_counter(
                "hb_collector_write_retries_total",
                "Failed batch writes and reconnections before one, each retried.",
            ),
            consumer_lag: r.register_gauge(
                "hb_collector_consumer_lag",
                "Records between the consumer's position and the end of its partitions.",
            ),
            assigned_partitions: r.register_gauge(
                "hb_collector_assigned_partitions",
                "Kafka partitions currently assigned to this collector by its group.",
            ),
            partitions_dropped: r.register_counter(
                "hb_collector_partitions_dropped_total",
                "Daily reading partitions dropped by retention.",
            ),
            confirmations_published: r.register_counter(
                "hb_collector_confirmations_published_total",
                "Storage confirmations published on the stored topic, one per device and round.",
            ),
            confirmations_failed: r.register_counter(
                "hb_collector_confirmations_failed_total",
                "Storage confirmations whose publish failed; each is kept for the next round.",
            ),
            alert_transitions: r.register_counter(
                "hb_collector_alert_transitions_total",
                "Alert transitions written: open, escalate, de-escalate, close.",
            ),
            live_failed: r.register_counter(
                "hb_collector_live_failed_total",
                "Batches stored without their dashboard notifications and reading counts (which failed).",
            ),
            alerts_published: r.register_counter(
                "hb_collector_alerts_published_total",
                "Alert transitions produced to Kafka from the outbox.",
            ),
            alerts_publish_failed: r.register_counter(
                "hb_collector_alerts_publish_failed_total",
                "Outbox drains that failed; their rows stay for the next drain.",
            ),
            registry: Arc::new(r),
            health: Health::new(),
        }
    }
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self::new()
    }
}
