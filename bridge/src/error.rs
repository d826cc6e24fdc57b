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
    /// The producer hit a fatal error (the idempotent producer cannot go on;
    /// nothing unconfirmed was acknowledged, so the broker redelivers it).
    #[error("the Kafka producer failed fatally")]
    ProducerFatal,
    /// The stored-topic relay could not subscribe to its topic.
    #[error("cannot subscribe to Kafka topic {topic}: {source}")]
    Subscribe {
        /// The topic.
        topic: String,
        /// What the client said.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The metrics and health endpoint could not listen.
    #[error("cannot serve HTTP on {addr}: {source}")]
    ServeHttp {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A task that runs for the bridge's whole life ended before the stop.
    #[error("the {task} stopped unexpectedly")]
    TaskStopped {
        /// Which task.
        task: &'static str,
    },
    /// A task of ours panicked or was cancelled.
    #[error("the {task} failed: {source}")]
    TaskFailed {
        /// Which task.
        task: &'static str,
        /// How it ended.
        #[source]
        source: tokio::task::JoinError,
    },
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
