//! The Kafka side: topic creation and the producer's delivery settings.

use std::time::Duration;

use backon::Retryable;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::{Config, Error, Result};

fn client_config(config: &Config) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("compression.type", "lz4")
        .set("linger.ms", "10")
        // No timeout: librdkafka retries a message until Kafka has it, with the
        // same producer id and sequence number. A timed-out message would make the
        // idempotent producer bump its epoch (KIP-360), which tansu 0.6 answers with
        // ProducerFenced for good, and a resend of ours would be a new record.
        .set("message.timeout.ms", "0")
        .set("client.id", config.client_id());
    for (k, v) in &config.kafka_options {
        cc.set(k, v);
    }
    cc.set("bootstrap.servers", &config.kafka_brokers);
    cc
}

/// The producer: idempotent, `acks=all`, lz4, a short linger, no message
/// timeout (librdkafka retries until Kafka has the message). A message Kafka
/// refuses is retried or quarantined by the caller.
pub fn create_producer(config: &Config) -> Result<FutureProducer> {
    client_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .create()
        .map_err(|e| Error::CreateKafkaClient(hb_runtime::kafka_args::without_values(e)))
}

/// Creates the system's topics if they do not exist (Kafka clusters commonly
/// refuse auto-creation, and tansu never auto-creates).
pub async fn ensure_topics(config: &Config) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(|e| Error::CreateKafkaClient(hb_runtime::kafka_args::without_values(e)))?;
    let names = config.kafka_topics.all();
    let stored = config.kafka_topics.stored();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            let t = NewTopic::new(
                n,
                config.kafka_partitions,
                TopicReplication::Fixed(config.kafka_replication_factor),
            );
            // Only each device's newest confirmation matters.
            if *n == stored {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    // Each attempt is bounded (the request timeout would otherwise be librdkafka's
    // 60 s socket timeout), so that start-up gives up after about a minute.
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let attempt = || async {
        let results =
            admin
                .create_topics(&topics, &options)
                .await
                .map_err(|e| Error::CreateTopic {
                    topic: names.join(", "),
                    reason: e.to_string(),
                })?;
        for r in results {
            match r {
                Ok(topic) => tracing::info!(topic, "Created Kafka topic."),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::CreateTopic {
                        topic,
                        reason: code.to_string(),
                    })
                }
            }
        }
        Ok(())
    };
    attempt
        .retry(hb_runtime::retry::startup())
        .notify(|e, after| tracing::warn!(error = %e, ?after, "Kafka not ready, retrying."))
        .await
}
