//! The collector's error type.

/// Everything the collector can fail at, named by the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The database's retention floor (which only the schema owner changes) is
    /// above the configured retention.
    #[error(
        "--retention-days {days} is below the database's floor of {floor} days, which only \
         the schema owner changes (UPDATE reading_retention_floor SET days = …)"
    )]
    RetentionBelowFloor {
        /// `--retention-days`.
        days: u32,
        /// The floor in the database.
        floor: i32,
    },
    /// The dashboard, metrics and health endpoint could not listen.
    #[error("cannot serve HTTP on {addr}: {source}")]
    ServeHttp {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The dashboard's read-only connection pool could not be built.
    #[error("cannot build the dashboard's connection pool: {0}")]
    DashboardPool(#[source] deadpool_postgres::BuildError),
    /// PostgreSQL could not be reached (after retries).
    #[error("cannot connect to PostgreSQL: {0}")]
    ConnectDatabase(#[source] tokio_postgres::Error),
    /// A migration failed; the database is left at the previous version.
    #[error("migration {name} failed: {source}")]
    Migrate {
        /// The migration's file name.
        name: &'static str,
        /// What PostgreSQL said.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A migration is pending and the login may not apply it (the collector's
    /// own login, a member of `hb_writer`, may not change the schema).
    #[error(
        "migration {name} is pending and this login may not apply it: run `hb-collector migrate` with the schema owner's --database-url"
    )]
    MigrateNotPermitted {
        /// The migration's file name.
        name: &'static str,
        /// What PostgreSQL said.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database is at a newer schema version than this build knows.
    #[error("database schema version {found} is newer than this build's {known}")]
    SchemaTooNew {
        /// Highest version recorded in the database.
        found: i32,
        /// Highest version this build ships.
        known: i32,
    },
    /// A statement failed.
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// Creating or configuring the Kafka consumer failed.
    #[error("cannot create the Kafka consumer: {0}")]
    CreateConsumer(#[source] rdkafka::error::KafkaError),
    /// Creating the producer of storage confirmations failed.
    #[error("cannot create the Kafka producer: {0}")]
    CreateProducer(#[source] rdkafka::error::KafkaError),
    /// The Kafka topic did not appear in time.
    #[error("Kafka topic {topic} is not available: {reason}")]
    TopicUnavailable {
        /// The topic waited for.
        topic: String,
        /// The last error seen.
        reason: String,
    },
    /// Consuming from Kafka failed fatally.
    #[error("Kafka consumer error: {0}")]
    Consume(#[source] rdkafka::error::KafkaError),
    /// Kafka did not take the alert transitions (they stay in the outbox).
    #[error("cannot publish alert transitions: {0}")]
    PublishAlerts(#[source] rdkafka::error::KafkaError),
    /// Committing offsets at shutdown failed.
    #[error("cannot commit Kafka offsets: {0}")]
    CommitOffsets(#[source] rdkafka::error::KafkaError),
}

/// Result with the collector's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
