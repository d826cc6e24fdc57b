//! The bridge's error type.

/// Everything the bridge can fail at, named by the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The Kafka producer or admin client could not be created.
    #[error("cannot create the Kafka client: {0}")]
    CreateKafkaClient(#[source] rdkafka::error::KafkaError),
    /// Topics could not be created (after retries).
    #[error("cannot create Kafka topic {topic}: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// What the broker or client said.
        reason: String,
    },
    /// Kafka failed in a way the bridge cannot recover from by itself.
    #[error("Kafka: {0}")]
    Kafka(String),
    /// The MQTT broker could not be reached at start-up (after retries).
    #[error("cannot connect to the MQTT broker at {address}: {reason}")]
    ConnectMqtt {
        /// The broker address.
        address: String,
        /// The last error.
        reason: String,
    },
}

/// Result with the bridge's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
