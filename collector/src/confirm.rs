//! Storage confirmations to the devices: after each COMMIT the ingest loop hands
//! over the stored ranges of every `(device, epoch)` the batch touched; they are
//! coalesced per device and published on Kafka `hb.stored.v1` (key = device id)
//! at most once per device per `--confirm-interval-ms`. The bridges relay them to
//! each device's retained MQTT `stored` topic, and the agent releases its buffer
//! only for readings named there.
//!
//! A confirmation is a hint that can be lost without losing data: a device that
//! hears nothing resends, the resend touches the device again, and the next
//! confirmation goes out. So a failed publish is kept for the next round (merged
//! with anything newer), never retried in a loop, and what waits is bounded by
//! the number of devices.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hb_shared::{DeviceId, StoredConfirmation};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::CollectorMetrics;
use crate::store::DeviceRanges;
use crate::{Config, Error, Result};

/// Confirmations waiting for the next round, one per device.
#[derive(Default)]
pub struct Pending {
    by_device: Mutex<HashMap<String, StoredConfirmation>>,
}

impl Pending {
    /// Adds the ranges of a committed batch.
    pub fn add(&self, stored: Vec<DeviceRanges>) {
        if stored.is_empty() {
            return;
        }
        let mut map = self.by_device.lock().expect("pending lock");
        for (device, ranges) in stored {
            let Ok(id) = DeviceId::new(&device) else {
                continue; // the readings table only holds valid ids
            };
            let newer = StoredConfirmation::new(id, vec![ranges]);
            match map.get_mut(&device) {
                Some(c) => c.merge(newer),
                None => {
                    map.insert(device, newer);
                }
            }
        }
    }

    /// Puts back a confirmation that could not be published, under anything
    /// newer for the same device.
    fn restore(&self, mut older: StoredConfirmation) {
        let mut map = self.by_device.lock().expect("pending lock");
        let key = older.device_id.as_str().to_owned();
        if let Some(newer) = map.remove(&key) {
            older.merge(newer);
        }
        map.insert(key, older);
    }

    fn take(&self) -> HashMap<String, StoredConfirmation> {
        std::mem::take(&mut *self.by_device.lock().expect("pending lock"))
    }

    /// Whether nothing waits.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.by_device.lock().expect("pending lock").is_empty()
    }
}

/// The producer for `hb.stored.v1`: `acks=all`, one request in flight, with the
/// operator's security options.
pub fn create_producer(config: &Config) -> Result<FutureProducer> {
    let mut cc = ClientConfig::new();
    cc.set("linger.ms", "5")
        .set("message.timeout.ms", "5000")
        .set("compression.type", "lz4");
    for (k, v) in &config.kafka_options {
        // Consumer tuning means nothing to a producer; connection and security
        // settings apply to both.
        if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
            cc.set(k, v);
        }
    }
    // Not idempotent: after a send timed out, the idempotent producer bumps its
    // epoch, which tansu 0.6 fences for good (no confirmation would go out again).
    // One request in flight keeps a device's confirmations in order; a
    // confirmation sent twice is harmless.
    cc.set("bootstrap.servers", &config.kafka_brokers)
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .set("acks", "all")
        .create()
        .map_err(|e| Error::CreateProducer(hb_runtime::kafka_args::without_values(e)))
}

/// How long the last round at shutdown may take (a round in progress when
/// shutdown comes gets as long to finish). What it cannot publish costs the
/// devices a resend, never a reading.
const FINAL_ROUND: Duration = Duration::from_secs(2);

/// Publishes what is pending every `interval` until `shutdown`, then once more
/// (bounded by [`FINAL_ROUND`]).
pub async fn run(
    pending: Arc<Pending>,
    producer: FutureProducer,
    topic: String,
    interval: Duration,
    metrics: Arc<CollectorMetrics>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            _ = shutdown.cancelled() => true,
        };
        let round = publish_round(&pending, &producer, &topic, &metrics);
        tokio::pin!(round);
        if !last {
            tokio::select! {
                _ = &mut round => continue,
                _ = shutdown.cancelled() => {}
            }
        }
        let _ = tokio::time::timeout(FINAL_ROUND, round).await;
        return;
    }
}

async fn publish_round(
    pending: &Arc<Pending>,
    producer: &FutureProducer,
    topic: &str,
    metrics: &CollectorMetrics,
) {
    let round = pending.take();
    if round.is_empty() {
        return;
    }
    let mut sends = JoinSet::new();
    for (device, confirmation) in round {
        let (producer, topic) = (producer.clone(), topic.to_owned());
        sends.spawn(async move {
            let payload = confirmation.to_json();
            let record = FutureRecord::to(&topic).key(&device).payload(&payload);
            let sent = producer
                .send(record, Timeout::After(Duration::from_secs(5)))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e);
            (sent, confirmation)
        });
    }
    let mut failed = 0u64;
    let mut first_error = None;
    while let Some(joined) = sends.join_next().await {
        let Ok((sent, confirmation)) = joined else {
            continue;
        };
        match sent {
            Ok(()) => {
                metrics.confirmations_published.inc();
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
                pending.restore(confirmation);
            }
        }
    }
    if let Some(e) = first_error {
        metrics.confirmations_failed.inc_by(failed);
        tracing::warn!(error = %e, failed, "Could not publish storage confirmations; trying again next round.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hb_shared::EpochRanges;

    fn ranges(epoch: u32, r: &[(u32, u32)]) -> EpochRanges {
        EpochRanges {
            epoch,
            ranges: r.to_vec(),
        }
    }

    #[test]
    fn batches_coalesce_into_one_confirmation_per_device() {
        let p = Pending::default();
        p.add(vec![("a".into(), ranges(1, &[(0, 4)]))]);
        p.add(vec![
            ("a".into(), ranges(1, &[(0, 9)])),
            ("a".into(), ranges(2, &[(0, 0)])),
            ("b".into(), ranges(7, &[(3, 3)])),
        ]);
        let round = p.take();
        assert_eq!(round.len(), 2);
        assert_eq!(
            round["a"].epochs,
            vec![ranges(1, &[(0, 9)]), ranges(2, &[(0, 0)])]
        );
        assert!(p.is_empty());
    }

    #[test]
    fn a_failed_confirmation_waits_under_newer_ranges() {
        let p = Pending::default();
        p.add(vec![("a".into(), ranges(1, &[(0, 4)]))]);
        let failed = p.take().remove("a").unwrap();
        p.add(vec![("a".into(), ranges(1, &[(0, 9)]))]);
        p.restore(failed);
        assert_eq!(p.take()["a"].epochs, vec![ranges(1, &[(0, 9)])]);
    }
}
