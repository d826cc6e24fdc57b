//! `hb-bridge`: moves readings from MQTT to Kafka without losing any. A message is
//! acknowledged to the MQTT broker only after Kafka confirmed it (or, for input the
//! bridge refuses, after its quarantine record was confirmed), so a crash at any
//! point leaves the message with the broker, which redelivers it.
//!
//! # Layout
//! - [`config`]: flags and environment → [`Config`].
//! - [`inspect`]: what may enter the readings topic, and why not.
//! - [`mqtt_source`]: the persistent, manual-ack MQTT subscription.
//! - [`kafka`]: producer settings and topic creation.
//! - [`forward`]: produce, wait for confirmation, then ack; capped in flight.

pub mod config;
pub mod error;
pub mod forward;
pub mod inspect;
pub mod kafka;
pub mod mqtt_source;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::Producer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Config};
pub use error::{Error, Result};
pub use forward::Counters;

/// Runs the bridge until `shutdown` is cancelled, then stops taking messages,
/// finishes those in flight (up to the deadline), flushes and disconnects.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Arc<Counters>> {
    kafka::ensure_topics(&config).await?;
    let producer = kafka::create_producer(&config)?;
    let (tx, rx) = mpsc::channel(64);
    let (acker, event_loop) = mqtt_source::connect(&config, tx);
    let mut event_loop = tokio::spawn(event_loop);
    let counters = Arc::new(Counters::default());
    let forwarder = tokio::spawn(forward::run(
        config.clone(),
        producer.clone(),
        acker.clone(),
        rx,
        Arc::clone(&counters),
        shutdown.clone(),
    ));
    tracing::info!(client_id = %config.client_id(), mqtt = %config.mqtt, kafka = %config.kafka_brokers, "Bridge running.");
    let early = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = &mut event_loop => Some(r),
    };
    if let Some(r) = early {
        shutdown.cancel();
        let _ = forwarder.await;
        return match r {
            Ok(Ok(())) => Ok(counters),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(Error::ConnectMqtt {
                address: config.mqtt.to_string(),
                reason: format!("event loop panicked: {e}"),
            }),
        };
    }
    let _ = forwarder.await;
    if let Err(e) = producer.flush(Duration::from_secs(5)) {
        tracing::warn!(error = %e, "Producer flush incomplete.");
    }
    mqtt_source::disconnect(&acker).await;
    if tokio::time::timeout(Duration::from_secs(5), &mut event_loop)
        .await
        .is_err()
    {
        tracing::warn!("MQTT event loop did not end in time.");
        event_loop.abort();
    }
    tracing::info!(
        received = counters.received.load(std::sync::atomic::Ordering::Relaxed),
        forwarded = counters
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed),
        quarantined = counters
            .quarantined
            .load(std::sync::atomic::Ordering::Relaxed),
        "Bridge stopped."
    );
    Ok(counters)
}
