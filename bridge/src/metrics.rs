//! What the bridge exposes on `/metrics` (Prometheus text) and `/healthz`.

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
    pub received: Arc<Counter>,
    /// Messages confirmed into the readings, status or events topics.
    pub forwarded: Arc<Counter>,
    /// Messages confirmed into quarantine, by reason.
    pub quarantined: Arc<LabeledCounter>,
    /// Messages taken and not yet confirmed by Kafka.
    pub in_flight: Arc<Gauge>,
    /// Time from receiving a message to Kafka's confirmation.
    pub delivery_seconds: Arc<Histogram>,
    /// Failed delivery attempts (each retried).
    pub delivery_retries: Arc<Counter>,
    /// Acknowledgements queued to the MQTT broker.
    pub acked: Arc<Counter>,
    /// Acks not sent: the message came on an earlier connection, or the ack could
    /// not be queued (the broker redelivers those messages).
    pub acks_dropped: Arc<Counter>,
    /// Incoming messages taken from MQTT and not yet acknowledged, as the MQTT
    /// client counts them (at most `--max-inflight`).
    pub mqtt_unacked: Arc<Gauge>,
    /// MQTT (re)connections.
    pub reconnects: Arc<Counter>,
    /// Storage confirmations relayed to devices and acknowledged by the broker.
    pub confirmations_relayed: Arc<Counter>,
    /// Records on the stored topic that were not valid confirmations (skipped).
    pub confirmations_invalid: Arc<Counter>,
}

impl BridgeMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            received: r.register_counter(
                "hb_bridge_received_total",
                "MQTT messages taken from the broker.",
            ),
            forwarded: r.register_counter(
                "hb_bridge_forwarded_total",
                "Messages confirmed by Kafka into the readings, status or events topics.",
            ),
            quarantined: r.register_labeled_counter(
                "hb_bridge_quarantined_total",
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
                "hb_bridge_delivery_retries_total",
                "Failed Kafka delivery attempts, each retried.",
            ),
            acked: r.register_counter(
                "hb_bridge_acked_total",
                "Acknowledgements queued to the MQTT broker (received minus acked minus acks dropped is what the bridge holds).",
            ),
            acks_dropped: r.register_counter(
                "hb_bridge_acks_dropped_total",
                "Messages forwarded but not acknowledged: they came on an earlier MQTT connection, or the ack could not be queued (the broker redelivers them, if it still has them).",
            ),
            mqtt_unacked: r.register_gauge(
                "hb_bridge_mqtt_unacked",
                "Incoming MQTT messages taken and not yet acknowledged, as the MQTT client counts them (at most --max-inflight).",
            ),
            reconnects: r.register_counter(
                "hb_bridge_mqtt_connects_total",
                "MQTT connections established.",
            ),
            confirmations_relayed: r.register_counter(
                "hb_bridge_confirmations_relayed_total",
                "Storage confirmations relayed to the devices' stored topics and acknowledged by the broker.",
            ),
            confirmations_invalid: r.register_counter(
                "hb_bridge_confirmations_invalid_total",
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
