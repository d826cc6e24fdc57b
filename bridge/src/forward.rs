//! Delivery to Kafka: each MQTT message becomes one Kafka record (readings or
//! quarantine), retried until Kafka confirms it, and only then acknowledged to
//! MQTT. At most `max_inflight` messages are between "taken" and "confirmed"; when
//! that many are waiting, no more are taken and the broker queues.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::inspect::{inspect, Accepted, Route};
use crate::mqtt_source::{Acker, Delivery};
use crate::Config;

/// Counters of what the forwarder did.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages taken from MQTT.
    pub received: AtomicU64,
    /// Messages confirmed into the readings topic.
    pub forwarded: AtomicU64,
    /// Messages confirmed into the quarantine topic.
    pub quarantined: AtomicU64,
    /// Failed delivery attempts (each retried).
    pub delivery_retries: AtomicU64,
}

/// Shared, immutable context of the forwarding tasks.
struct Context {
    config: Config,
    producer: FutureProducer,
    acker: Acker,
    counters: Arc<Counters>,
    readings_topic: String,
    status_topic: String,
    events_topic: String,
    quarantine_topic: String,
}

/// Takes deliveries until `stop`, then waits (up to the shutdown deadline) for those
/// in flight to be confirmed and acknowledged.
pub async fn run(
    config: Config,
    producer: FutureProducer,
    acker: Acker,
    mut rx: mpsc::Receiver<Delivery>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(config.max_inflight));
    let ctx = Arc::new(Context {
        readings_topic: config.kafka_topics.readings(),
        status_topic: config.kafka_topics.device_status(),
        events_topic: config.kafka_topics.events(),
        quarantine_topic: config.kafka_topics.quarantine(),
        config,
        producer,
        acker,
        counters,
    });
    let mut tasks = JoinSet::new();
    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => p.expect("semaphore is never closed"),
        };
        let delivery = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            d = rx.recv() => match d {
                Some(d) => d,
                None => break,
            },
        };
        ctx.counters.received.fetch_add(1, Ordering::Relaxed);
        let ctx = Arc::clone(&ctx);
        let stop = stop.clone();
        tasks.spawn(async move {
            if deliver(&ctx, &delivery, &stop).await {
                drop(permit);
                ctx.acker.ack(&delivery).await;
            }
        });
        // Reap finished tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    // Stop taking: whatever is still queued in the channel stays unacknowledged and
    // is redelivered by the broker.
    drop(rx);
    let deadline = ctx.config.shutdown_timeout;
    let in_flight = tasks.len();
    if tokio::time::timeout(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            in_flight,
            "Shutdown deadline passed; unconfirmed messages will be redelivered."
        );
        tasks.abort_all();
    }
}

/// Produces one message, retrying until Kafka confirms it. Returns false only if
/// shutdown interrupted the retries (the message then stays unacknowledged).
async fn deliver(ctx: &Context, d: &Delivery, stop: &CancellationToken) -> bool {
    let topic = d.publish.topic.as_str();
    let received_at = d.received_at_ms.to_string();
    let bridge_id = ctx.config.instance_id.as_str();
    let (kafka_topic, key, headers, quarantined) = match inspect(
        &ctx.config.mqtt_topics,
        topic,
        &d.publish.payload,
    ) {
        Ok(Accepted {
            device,
            content_type,
            route,
        }) => (
            match route {
                Route::Readings => ctx.readings_topic.as_str(),
                Route::Status => ctx.status_topic.as_str(),
                Route::Events => ctx.events_topic.as_str(),
            },
            Some(device.as_str().to_owned()),
            OwnedHeaders::new()
                .insert(header("content-type", content_type.as_str()))
                .insert(header("mqtt-topic", topic))
                .insert(header("received-at-ms", &received_at))
                .insert(header("bridge-id", bridge_id)),
            false,
        ),
        Err(rejected) => {
            tracing::warn!(topic, reason = rejected.reason, detail = %rejected.detail, "Quarantining message.");
            let key = ctx
                .config
                .mqtt_topics
                .parse(topic)
                .map(|(d, _)| d.as_str().to_owned());
            (
                ctx.quarantine_topic.as_str(),
                key,
                OwnedHeaders::new()
                    .insert(header("reason", rejected.reason))
                    .insert(header("detail", &rejected.detail))
                    .insert(header("mqtt-topic", topic))
                    .insert(header("received-at-ms", &received_at))
                    .insert(header("bridge-id", bridge_id)),
                true,
            )
        }
    };
    let mut delay = Duration::from_millis(100);
    loop {
        let mut record = FutureRecord::to(kafka_topic)
            .payload(&d.publish.payload[..])
            .headers(headers.clone());
        if let Some(k) = &key {
            record = record.key(k.as_str());
        }
        match ctx
            .producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .await
        {
            Ok(_) => {
                let c = if quarantined {
                    &ctx.counters.quarantined
                } else {
                    &ctx.counters.forwarded
                };
                c.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Err((e, _)) => {
                ctx.counters
                    .delivery_retries
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, kafka_topic, ?delay, "Kafka delivery failed; retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => {
                        // Keep trying until the shutdown deadline aborts us: the
                        // message may still get through.
                        tokio::time::sleep(delay).await;
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
