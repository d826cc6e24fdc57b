//! Delivery to Kafka: each MQTT message becomes one Kafka record (readings or
//! quarantine), retried until Kafka confirms it, and only then acknowledged to
//! MQTT. At most `max_inflight` messages are between "taken" and "confirmed"; when
//! that many are waiting, no more are taken and the broker queues.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use backon::Retryable;
use hb_runtime::log_limit::LogLimit;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::Producer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::inspect::{inspect, Accepted, Rejected, Route};
use crate::metrics::BridgeMetrics;
use crate::mqtt_source::{Acker, Delivery};
use crate::Config;

/// Quarantine warnings, per reason: devices decide how many bad messages arrive
/// (`suppressed` on a line counts those left out before it; the metrics count all).
static LOG_LIMIT: LazyLock<LogLimit> = LazyLock::new(LogLimit::per_minute);

/// Pauses between tries of one delivery: 100 ms doubling up to 5 s, for ever.
fn retry_policy() -> backon::ExponentialBuilder {
    hb_runtime::retry::doubling(Duration::from_millis(100), Duration::from_secs(5))
}

/// The pause before the next try. A stop does not end it (the delivery keeps
/// trying until the shutdown deadline aborts it: the message may still get
/// through) but starts it over.
async fn pause(delay: Duration, stop: CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = stop.cancelled() => tokio::time::sleep(delay).await,
    }
}

/// Shared, immutable context of the forwarding tasks.
struct Context {
    config: Config,
    producer: FutureProducer,
    acker: Acker,
    metrics: Arc<BridgeMetrics>,
    fatal: CancellationToken,
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
    metrics: Arc<BridgeMetrics>,
    stop: CancellationToken,
    fatal: CancellationToken,
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
        metrics,
        fatal,
    });
    let mut tasks = JoinSet::new();
    loop {
        let delivery = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            d = rx.recv() => match d {
                Some(d) => d,
                None => break,
            },
        };
        ctx.metrics.received.inc();
        // Received before a reconnect, a delivery is still forwarded (the broker
        // may no longer have it), only its ack is dropped (see `Acker::ack`).
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => p.expect("semaphore is never closed"),
        };
        ctx.metrics.in_flight.inc();
        let ctx = Arc::clone(&ctx);
        let stop = stop.clone();
        tasks.spawn(async move {
            let started = Instant::now();
            deliver(&ctx, &delivery, &stop).await;
            ctx.metrics.in_flight.dec();
            ctx.metrics
                .delivery_seconds
                .observe_duration(started.elapsed());
            drop(permit);
            if ctx.acker.ack(&delivery).await {
                ctx.metrics.acked.inc();
            } else {
                ctx.metrics.acks_dropped.inc();
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

/// Produces one message, retrying until Kafka confirms it (a message Kafka refuses
/// for good goes to quarantine instead). Returns once Kafka has it, so it can be
/// acknowledged; a task still retrying at the shutdown deadline is aborted, leaving
/// it unacknowledged.
async fn deliver(ctx: &Context, d: &Delivery, stop: &CancellationToken) {
    let topic = d.publish.topic.as_str();
    let received_at = d.received_at_ms.to_string();
    let bridge_id = ctx.config.instance_id.as_str();
    let inspected = match d.publish.truncated_from {
        // Larger than the client's maximum packet size: rumqttc kept the first
        // bytes and discarded the rest (the vendored patch), so the connection
        // and the messages after this one are unaffected.
        Some(size) => Err(Rejected {
            reason: "too_large",
            detail: format!(
                "payload of {size} bytes is larger than the bridge's {} byte packet limit; its first {} bytes are kept",
                crate::mqtt_source::MAX_PACKET_SIZE,
                d.publish.payload.len()
            ),
        }),
        None => inspect(&ctx.config.mqtt_topics, topic, &d.publish.payload),
    };
    let (kafka_topic, key, headers, quarantined_for) = match inspected {
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
            None,
        ),
        Err(rejected) => {
            if let Some(suppressed) = LOG_LIMIT.check(rejected.reason) {
                tracing::warn!(topic, reason = rejected.reason, detail = %rejected.detail,
                    suppressed, "Quarantining message.");
            }
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
                Some(rejected.reason),
            )
        }
    };
    let (key, headers) = (&key, &headers);
    let send = || async move {
        let mut record = FutureRecord::to(kafka_topic)
            .payload(&d.publish.payload[..])
            .headers(headers.clone());
        if let Some(k) = key {
            record = record.key(k.as_str());
        }
        let mut sending = std::pin::pin!(ctx
            .producer
            .send(record, Timeout::After(Duration::from_secs(5))));
        loop {
            // librdkafka retries until Kafka has the message; a long wait is an
            // outage, shown on /healthz.
            match tokio::time::timeout(Duration::from_secs(10), &mut sending).await {
                Ok(sent) => break sent.map(drop).map_err(|(e, _)| e),
                Err(_) => ctx.metrics.health.set(
                    "kafka",
                    Err("deliveries waiting for Kafka for over 10 s".into()),
                ),
            }
        }
    };
    let token = stop.clone();
    let sent = send
        .retry(retry_policy())
        .sleep(move |delay| pause(delay, token.clone()))
        .when(|e| {
            ctx.producer.client().fatal_error().is_none()
                && !(permanent(e) && quarantined_for.is_none())
        })
        .notify(|e, delay| {
            ctx.metrics.delivery_retries.inc();
            ctx.metrics
                .health
                .set("kafka", Err(format!("delivery failing: {e}")));
            tracing::warn!(error = %e, kafka_topic, ?delay, "Kafka delivery failed; retrying.");
        })
        .await;
    let e = match sent {
        Ok(()) => {
            if let Some(reason) = quarantined_for {
                ctx.metrics.quarantined.with(reason).inc();
            } else {
                ctx.metrics.forwarded.inc();
            }
            ctx.metrics.health.set("kafka", Ok(()));
            return;
        }
        Err(e) => e,
    };
    if let Some((code, reason)) = ctx.producer.client().fatal_error() {
        // The idempotent producer cannot continue; retrying would stall forever.
        // Stop the bridge: nothing is acknowledged, so the broker redelivers to the
        // restarted bridge.
        tracing::error!(
            ?code,
            reason,
            "Kafka producer failed fatally; stopping the bridge."
        );
        ctx.fatal.cancel();
        std::future::pending::<()>().await;
    }
    // Kafka refuses this message whatever we do: quarantine it (the payload cut
    // short if it is what is too large) instead of holding an in-flight slot
    // forever.
    if let Some(suppressed) = LOG_LIMIT.check("kafka_refused") {
        tracing::warn!(error = %e, topic, suppressed,
            "Kafka refuses the message; quarantining it.");
    }
    quarantine_refused(ctx, d, topic, &received_at, &e, stop).await
}

/// Errors that no retry can fix.
fn permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::PolicyViolation
        )
    )
}

/// Puts a message Kafka refused into quarantine, its payload cut to the first
/// 4 KiB (with the original size in a header), retrying like any delivery until
/// Kafka has it.
async fn quarantine_refused(
    ctx: &Context,
    d: &Delivery,
    topic: &str,
    received_at: &str,
    error: &KafkaError,
    stop: &CancellationToken,
) {
    let payload = &d.publish.payload[..d.publish.payload.len().min(4096)];
    let size = d.publish.payload.len().to_string();
    let detail = error.to_string();
    let send = || async {
        let headers = OwnedHeaders::new()
            .insert(header("reason", "kafka_refused"))
            .insert(header("detail", &detail))
            .insert(header("mqtt-topic", topic))
            .insert(header("received-at-ms", received_at))
            .insert(header("original-size", &size))
            .insert(header("bridge-id", ctx.config.instance_id.as_str()));
        let record = FutureRecord::<(), _>::to(&ctx.quarantine_topic)
            .payload(payload)
            .headers(headers);
        ctx.producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .await
            .map_err(|(e, _)| e)
    };
    let token = stop.clone();
    let sent = send
        .retry(retry_policy())
        .sleep(move |delay| pause(delay, token.clone()))
        .notify(|e, delay| {
            ctx.metrics.delivery_retries.inc();
            tracing::warn!(error = %e, ?delay, "Quarantine delivery failed; retrying.");
        })
        .await;
    // No limit and no condition: the retry only ends once Kafka has the message.
    if let Err(e) = sent {
        unreachable!("a delivery retried for ever ended with {e}");
    }
    ctx.metrics.quarantined.with("kafka_refused").inc();
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
