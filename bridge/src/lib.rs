//! `hb-bridge`: moves readings from MQTT to Kafka without losing any. A message is
//! acknowledged to the MQTT broker only after Kafka confirmed it (or, for input the
//! bridge refuses, after its quarantine record was confirmed), so a crash at any
//! point leaves the message with the broker, which redelivers it.
//!
//! # Layout
//! - `config`: flags and environment → [`Config`].
//! - `inspect`: what may enter the readings topic, and why not.
//! - `mqtt_source`: the persistent, manual-ack MQTT subscription.
//! - `kafka`: producer settings and topic creation.
//! - `forward`: produce, wait for confirmation, then ack; capped in flight.
//! - `stored_relay`: storage confirmations from Kafka back to the devices.
//! - `metrics`: `/metrics` and `/healthz`.

mod config;
mod error;
mod forward;
mod inspect;
mod kafka;
mod metrics;
mod mqtt_source;
mod stored_relay;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::Producer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::{BridgeArgs, Cli, Config};
pub use error::{Error, Result};
pub use kafka::{create_producer, ensure_topics};
pub use metrics::BridgeMetrics;

/// Runs the bridge until `shutdown` is cancelled, then stops taking messages,
/// finishes those in flight (up to the deadline), flushes and disconnects.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Arc<BridgeMetrics>> {
    let metrics = Arc::new(BridgeMetrics::new());
    let http_stop = CancellationToken::new();
    let http = match config.http_addr {
        Some(addr) => {
            let router =
                hb_runtime::http::ops_router(Arc::clone(&metrics.registry), metrics.health.clone());
            let (_, task) = hb_runtime::http::serve(addr, router, http_stop.clone())
                .await
                .map_err(|source| Error::ServeHttp { addr, source })?;
            Some(task)
        }
        None => None,
    };
    let result = run_bridge(config, shutdown, Arc::clone(&metrics)).await;
    http_stop.cancel();
    if let Some(task) = http {
        let _ = task.await;
    }
    result.map(|()| metrics)
}

async fn run_bridge(
    config: Config,
    shutdown: CancellationToken,
    metrics: Arc<BridgeMetrics>,
) -> Result<()> {
    metrics
        .health
        .set("kafka", Err("topics not created yet".into()));
    // A stop during start-up stops at once, even while Kafka does not answer.
    tokio::select! {
        created = kafka::ensure_topics(&config) => created?,
        () = shutdown.cancelled() => {
            tracing::info!("Stopped before the Kafka topics were created.");
            return Ok(());
        }
    }
    metrics.health.set("kafka", Ok(()));
    let producer = kafka::create_producer(&config)?;
    // Room for the incoming window of this connection and of the one before (whose
    // deliveries may still wait for permits after a reconnect during a Kafka
    // outage): the event loop then does not wait on the forwarder (it must keep
    // sending acks and pings); reading pauses in rumqttc instead, once
    // --max-inflight messages are unacknowledged. At most the permits' worth plus
    // this channel's are held: three windows in the worst case.
    let (tx, rx) = mpsc::channel(2 * config.max_inflight + 16);
    let (acker, event_loop) = mqtt_source::connect(&config, tx, Arc::clone(&metrics));
    let mut event_loop = tokio::spawn(event_loop);
    let fatal = CancellationToken::new();
    let mut forwarder = tokio::spawn(forward::run(
        config.clone(),
        producer.clone(),
        acker.clone(),
        rx,
        Arc::clone(&metrics),
        shutdown.clone(),
        fatal.clone(),
    ));
    let mut relay = tokio::spawn(stored_relay::run(
        config.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    tracing::info!(client_id = %config.client_id(), mqtt = %config.mqtt, kafka = %config.kafka_brokers, "Bridge running.");
    let early = tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        r = &mut event_loop => Some(match r {
            Ok(r) => r,
            Err(source) => Err(Error::TaskFailed {
                task: "MQTT event loop",
                source,
            }),
        }),
        _ = fatal.cancelled() => Some(Err(Error::ProducerFatal)),
        r = &mut forwarder => Some(Err(match r {
            Ok(()) => Error::TaskStopped { task: "forwarder" },
            Err(source) => Error::TaskFailed { task: "forwarder", source },
        })),
        r = &mut relay => Some(match r {
            Ok(Ok(())) => Err(Error::TaskStopped { task: "stored-topic relay" }),
            Ok(Err(e)) => Err(e),
            Err(source) => Err(Error::TaskFailed { task: "stored-topic relay", source }),
        }),
    };
    if let Some(r) = early {
        // Whatever is unacknowledged stays with the broker for redelivery.
        shutdown.cancel();
        forwarder.abort();
        event_loop.abort();
        relay.abort();
        return r;
    }
    let _ = forwarder.await;
    if tokio::time::timeout(Duration::from_secs(10), &mut relay)
        .await
        .is_err()
    {
        relay.abort();
    }
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
        received = metrics.received.get(),
        forwarded = metrics.forwarded.get(),
        quarantined = metrics.quarantined_total(),
        retries = metrics.delivery_retries.get(),
        "Bridge stopped."
    );
    Ok(())
}
