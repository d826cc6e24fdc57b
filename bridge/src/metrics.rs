//! What the bridge exposes on `/metrics` (Prometheus text) and `/healthz`.
//!
//! Counters are registered without the `_total` that the exposition appends:
//! `hb_bridge_received` is `hb_bridge_received_total` on `/metrics`.

use std::sync::Arc;

use hb_runtime::http::Health;
use hb_runtime::metrics::{Counter, Gauge, Histogram, LabeledCounter, Registry, LATENCY_SECONDS};

/// The bridge's metrics and health checks, shared by its tasks.
pub struct BridgeMetrics {
    /// Everything registered, for rendering.
    pub registry: Arc<Registry>,
    /// Health checks: `mqtt` (connected and subscribed), `kafka` (deliveries succeed).
    pub health: Health,
    /// MQTT messages taken from the broker.
    pub received: Counter,
    /// Messages confirmed into the readings, status or events topics.
    pub forwarded: Counter,
    /// Messages confirmed into quarantine, by reason.
    pub quarantined: LabeledCounter,
    /// Messages taken and not yet confirmed by Kafka.
    pub in_flight: Gauge,
    /// Time from receiving a message to Kafka's confirmation.
    pub delivery_seconds: Histogram,
    /// Failed delivery attempts (each retried).
    pub delivery_retries: Counter,
    /// Acknowledgements queued to the MQTT broker.
    pub acked: Counter,
    /// Acks not sent: the message came on an earlier connection, or the ack could
    /// not be queued (the broker redelivers those messages).
    pub acks_dropped: Counter,
    /// Incoming messages taken from MQTT and not yet acknowledged, as the MQTT
    /// client counts them (at most `--max-inflight`).
    pub mqtt_unacked: Gauge,
    /// MQTT (re)connections.
    pub reconnects: Counter,
    /// Storage confirmations relayed to devices and acknowledged by the broker.
    pub confirmations_relayed: Counter,
    /// Records on the stored topic that were not valid confirmations (skipped).
    pub confirmations_invalid: Counter,
}

impl BridgeMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut r = Registry::new();
        Self {
            received: r.register_counter(
                "hb_bridge_received",
                "MQTT messages taken from the broker.",
            ),
            forwarded: r.register_counter(
                "hb_bridge_forwarded",
                "Messages confirmed by Kafka into the readings, status or events topics.",
            ),
            quarantined: r.register_labeled_counter(
                "hb_bridge_quarantined",
                "Messages confirmed into the quarantine topic, by reason.",
                "reason",
                32,
            ),
            in_flight: r.register_gauge(
                "hb_bridge_in_flight",
                "Messages taken and not yet confirmed by Kafka.",
            ),
            delivery_seconds: r.register_histogram(
                "hb_bridge_delivery_seconds",
                "Time from receiving a message to Kafka's confirmation.",
                LATENCY_SECONDS,
            ),
            delivery_retries: r.register_counter(
                "hb_bridge_delivery_retries",
                "Failed Kafka delivery attempts, each retried.",
            ),
            acked: r.register_counter(
                "hb_bridge_acked",
                "Acknowledgements queued to the MQTT broker (received minus acked minus acks dropped is what the bridge holds).",
            ),
            acks_dropped: r.register_counter(
                "hb_bridge_acks_dropped",
                "Messages forwarded but not acknowledged: they came on an earlier MQTT connection, or the ack could not be queued (the broker redelivers them, if it still has them).",
            ),
            mqtt_unacked: r.register_gauge(
                "hb_bridge_mqtt_unacked",
                "Incoming MQTT messages taken and not yet acknowledged, as the MQTT client counts them (at most --max-inflight).",
            ),
            reconnects: r.register_counter(
                "hb_bridge_mqtt_connects",
                "MQTT connections established.",
            ),
            confirmations_relayed: r.register_counter(
                "hb_bridge_confirmations_relayed",
                "Storage confirmations relayed to the devices' stored topics and acknowledged by the broker.",
            ),
            confirmations_invalid: r.register_counter(
                "hb_bridge_confirmations_invalid",
                "Records on the stored topic that were not valid confirmations, skipped.",
            ),
            registry: Arc::new(r),
            health: Health::new(),
        }
    }

    /// Quarantined messages of every reason.
    pub fn quarantined_total(&self) -> u64 {
        self.quarantined.snapshot().iter().map(|(_, n)| n).sum()
    }
}

impl Default for BridgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_under_its_name_and_type() {
        let m = BridgeMetrics::new();
        m.quarantined.with("too_large").inc();
        let text = m.registry.render();
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(
            types,
            [
                "# TYPE hb_bridge_received_total counter",
                "# TYPE hb_bridge_forwarded_total counter",
                "# TYPE hb_bridge_quarantined_total counter",
                "# TYPE hb_bridge_in_flight gauge",
                "# TYPE hb_bridge_delivery_seconds histogram",
                "# TYPE hb_bridge_delivery_retries_total counter",
                "# TYPE hb_bridge_acked_total counter",
                "# TYPE hb_bridge_acks_dropped_total counter",
                "# TYPE hb_bridge_mqtt_unacked gauge",
                "# TYPE hb_bridge_mqtt_connects_total counter",
                "# TYPE hb_bridge_confirmations_relayed_total counter",
                "# TYPE hb_bridge_confirmations_invalid_total counter",
            ]
        );
        assert!(text.contains("\nhb_bridge_quarantined_total{reason=\"too_large\"} 1\n"));
    }

    #[test]
    fn the_quarantine_total_adds_up_every_reason() {
        let m = BridgeMetrics::new();
        m.quarantined.with("too_large").inc_by(2);
        m.quarantined.with("device_mismatch").inc();
        assert_eq!(m.quarantined_total(), 3);
    }
}
