//! What the collector exposes on `/metrics` (Prometheus text) and `/healthz`.
//!
//! Counters are registered without the `_total` that the exposition appends:
//! `hb_collector_consumed` is `hb_collector_consumed_total` on `/metrics`.

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
    pub consumed: Counter,
    /// New rows in `readings`.
    pub inserted: Counter,
    /// Readings already stored (redeliveries) absorbed by the unique key.
    pub duplicates: Counter,
    /// Quarantine entries written, by reason.
    pub quarantined: LabeledCounter,
    /// Readings per committed batch.
    pub batch_readings: Histogram,
    /// Time to write and commit a batch (including retries).
    pub batch_seconds: Histogram,
    /// Failed batch writes, each retried.
    pub write_retries: Counter,
    /// Records behind the end of the assigned partitions.
    pub consumer_lag: Gauge,
    /// Kafka partitions currently assigned to this collector.
    pub assigned_partitions: Gauge,
    /// Daily partitions dropped by retention.
    pub partitions_dropped: Counter,
    /// Storage confirmations published to the devices.
    pub confirmations_published: Counter,
    /// Storage confirmations whose publish failed (kept for the next round).
    pub confirmations_failed: Counter,
    /// Alert transitions written (open, escalate, de-escalate, close).
    pub alert_transitions: Counter,
    /// Batches stored without their dashboard notifications and counts.
    pub live_failed: Counter,
    /// Alert transitions produced to Kafka from the outbox.
    pub alerts_published: Counter,
    /// Outbox drains that failed (the rows stay for the next one).
    pub alerts_publish_failed: Counter,
}

impl CollectorMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut r = Registry::new();
        Self {
            consumed: r.register_counter("hb_collector_consumed", "Kafka records consumed."),
            inserted: r.register_counter("hb_collector_inserted", "New rows in readings."),
            duplicates: r.register_counter(
                "hb_collector_duplicates",
                "Readings already stored (redeliveries), absorbed by the unique key.",
            ),
            quarantined: r.register_labeled_counter(
                "hb_collector_quarantined",
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
                "hb_collector_write_retries",
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
                "hb_collector_partitions_dropped",
                "Daily reading partitions dropped by retention.",
            ),
            confirmations_published: r.register_counter(
                "hb_collector_confirmations_published",
                "Storage confirmations published on the stored topic, one per device and round.",
            ),
            confirmations_failed: r.register_counter(
                "hb_collector_confirmations_failed",
                "Storage confirmations whose publish failed; each is kept for the next round.",
            ),
            alert_transitions: r.register_counter(
                "hb_collector_alert_transitions",
                "Alert transitions written: open, escalate, de-escalate, close.",
            ),
            live_failed: r.register_counter(
                "hb_collector_live_failed",
                "Batches stored without their dashboard notifications and reading counts (which failed).",
            ),
            alerts_published: r.register_counter(
                "hb_collector_alerts_published",
                "Alert transitions produced to Kafka from the outbox.",
            ),
            alerts_publish_failed: r.register_counter(
                "hb_collector_alerts_publish_failed",
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
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_under_its_name_and_type() {
        let m = CollectorMetrics::new();
        m.quarantined.with("undecodable").inc();
        let text = m.registry.render();
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(
            types,
            [
                "# TYPE hb_collector_consumed_total counter",
                "# TYPE hb_collector_inserted_total counter",
                "# TYPE hb_collector_duplicates_total counter",
                "# TYPE hb_collector_quarantined_total counter",
                "# TYPE hb_collector_batch_readings histogram",
                "# TYPE hb_collector_batch_seconds histogram",
                "# TYPE hb_collector_write_retries_total counter",
                "# TYPE hb_collector_consumer_lag gauge",
                "# TYPE hb_collector_assigned_partitions gauge",
                "# TYPE hb_collector_partitions_dropped_total counter",
                "# TYPE hb_collector_confirmations_published_total counter",
                "# TYPE hb_collector_confirmations_failed_total counter",
                "# TYPE hb_collector_alert_transitions_total counter",
                "# TYPE hb_collector_live_failed_total counter",
                "# TYPE hb_collector_alerts_published_total counter",
                "# TYPE hb_collector_alerts_publish_failed_total counter",
            ]
        );
        assert!(text.contains("\nhb_collector_quarantined_total{reason=\"undecodable\"} 1\n"));
    }
}
