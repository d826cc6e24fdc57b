//! Devices' Last Wills: an `offline` record on Kafka `hb.device-status.v1` (the
//! MQTT Last Will the broker published when a device's connection died, relayed
//! by a bridge) opens `device_offline` at once, instead of after the offline
//! delay. Its own consumer group (`{group}.status`), so that each will is applied
//! by one collector; its offset is stored only after the database COMMIT. A will
//! older than the device's newest reading is stale and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use hb_runtime::retry;
use hb_shared::{DeviceStatus, Presence};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::CollectorMetrics;
use crate::store::{self, Store};
use crate::{alerts, Config, Error, Result};

/// Refusals by PostgreSQL (not connection trouble) before a Last Will is skipped.
const WILL_ATTEMPTS: u32 = 5;

/// Pauses between tries of one Last Will: 200 ms doubling up to 5 s.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Creates the status consumer: the readings consumer's settings, its own group.
fn create_consumer(config: &Config) -> Result<StreamConsumer> {
    crate::consumer::consumer_config(config, &format!("{}.status", config.kafka_group))
        .create()
        .map_err(|e| Error::CreateConsumer(hb_runtime::kafka_args::without_values(e)))
}

/// When the bridge received the status (its `received-at-ms` header), else now.
fn received_at_ms(m: &impl Message) -> i64 {
    let header = m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == "received-at-ms")
            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
    });
    header.unwrap_or_else(hb_runtime::clock::now_ms)
}

/// Applies Last Wills until `shutdown`.
pub async fn run(
    config: Config,
    wake: Arc<Notify>,
    metrics: Arc<CollectorMetrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let consumer = Arc::new(create_consumer(&config)?);
    let topic = config.topics.device_status();
    // The bridge creates the topic; subscribing before it exists makes librdkafka
    // log an error every few seconds. Silent devices still go offline meanwhile.
    loop {
        let (c, t) = (Arc::clone(&consumer), topic.clone());
        let exists = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(Some(&t), Duration::from_secs(5))
                .map(|m| {
                    m.topics().iter().any(|mt| {
                        mt.name() == t && mt.error().is_none() && !mt.partitions().is_empty()
                    })
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if exists {
            break;
        }
        tracing::debug!(topic, "Waiting for the device status topic.");
        if retry::sleep_unless_cancelled(Duration::from_secs(5), &shutdown).await {
            return Ok(());
        }
    }
    consumer.subscribe(&[&topic]).map_err(Error::Consume)?;
    let mut store: Option<Store> = None;
    loop {
        let message = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let m = match message {
            Ok(m) => m,
            Err(e) => {
                // The topic may not exist yet (the bridge creates it); librdkafka
                // keeps trying.
                tracing::debug!(error = %e, "Status consumer error.");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let status = m.key().and_then(|k| std::str::from_utf8(k).ok()).zip(
            m.payload()
                .and_then(|p| serde_json::from_slice::<DeviceStatus>(p).ok()),
        );
        if let Some((device, s)) = &status {
            // What the dashboard shows of the agent; informational, so one try.
            if store.is_none() {
                store = Store::connect(&config.database).await.ok();
            }
            if let Some(db) = store.as_mut() {
                if let Err(e) = record_status(db.client_mut(), device, s, received_at_ms(&m)).await
                {
                    tracing::debug!(%device, error = %e, "Could not record a device status.");
                    if db.is_closed() {
                        store = None;
                    }
                }
            }
        }
        let will = status
            .filter(|(_, s)| s.state == Presence::Offline)
            .map(|(device, s)| (device.to_owned(), s.epoch, received_at_ms(&m)));
        if let Some((device, epoch, at_ms)) = will {
            let mut delays = retry::doubling(RETRY_MIN, RETRY_MAX).build();
            let mut refused = 0;
            loop {
                if store.is_none() {
                    store = Store::connect(&config.database).await.ok();
                }
                if let Some(s) = store.as_mut() {
                    match alerts::apply_last_will(s.client_mut(), &device, epoch, at_ms).await {
                        Ok(n) => {
                            if n > 0 {
                                metrics.alert_transitions.inc_by(n);
                                wake.notify_one();
                            }
                            break;
                        }
                        Err(e) if s.is_closed() || store::is_transient(&e) => {
                            tracing::warn!(%device, error = %e, "Cannot apply a Last Will; retrying.");
                            if s.is_closed() {
                                store = None;
                            }
                        }
                        Err(e) => {
                            refused += 1;
                            if refused >= WILL_ATTEMPTS {
                                // PostgreSQL refuses this one for good: skip it rather
                                // than hold up every later will. Silence still opens
                                // the alert after the offline delay.
                                tracing::warn!(%device, error = %e, "Skipping a Last Will PostgreSQL refuses.");
                                break;
                            }
                        }
                    }
                }
                let delay = delays.next().unwrap_or(RETRY_MAX);
                if retry::sleep_unless_cancelled(delay, &shutdown).await {
                    return Ok(());
                }
            }
        }
        // Applied, or not a will (an online status, or one we cannot read).
        if let Err(e) = consumer.store_offset_from_message(&m) {
            tracing::debug!(error = %e, "Could not store a status offset; it will be read again.");
        }
    }
}

/// Keeps the device's newest status (by the bridge's receive time) in its
/// registry row, for the dashboard.
async fn record_status(
    db: &tokio_postgres::Client,
    device: &str,
    status: &DeviceStatus,
    at_ms: i64,
) -> Result<u64, tokio_postgres::Error> {
    let json = String::from_utf8(status.to_json()).unwrap_or_default();
    db.execute(
        "UPDATE devices SET agent_status = $2::text::jsonb, agent_status_at = to_timestamp($3::int8 / 1000.0) \
         WHERE device_id = $1 AND (agent_status_at IS NULL OR agent_status_at <= to_timestamp($3::int8 / 1000.0))",
        &[&device, &json, &at_ms],
    )
    .await
}
