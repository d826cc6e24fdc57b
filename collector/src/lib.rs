//! `hb-collector`: consumes readings from Kafka in a consumer group, validates and
//! classifies them, and stores each `(device_id, epoch, seq)` exactly once in
//! PostgreSQL. Kafka offsets are stored only after the database COMMIT.
//!
//! # Layout
//! - [`config`]: flags and environment → [`Config`].
//! - [`migrations`]: the `schema/` files, applied once each.
//! - [`records`]: Kafka record → rows or quarantine entry.
//! - [`store`]: the PostgreSQL batch writer.
//! - [`ingest`]: the consume → write → store-offsets loop.

pub mod config;
pub mod error;
pub mod ingest;
pub mod migrations;
pub mod records;
pub mod store;

use std::sync::Arc;

use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Command, Config};
pub use error::{Error, Result};
pub use store::Store;

/// Connects to PostgreSQL (with retries) and applies pending migrations.
pub async fn migrate(config: &Config) -> Result<usize> {
    let mut store = Store::connect_with_retry(&config.database_url).await?;
    migrations::migrate(store.client_mut()).await
}

/// Runs the collector until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<ingest::Totals> {
    let mut store = Store::connect_with_retry(&config.database_url).await?;
    migrations::migrate(store.client_mut()).await?;
    let consumer = Arc::new(ingest::create_consumer(&config)?);
    let topic = config.topics.readings();
    ingest::wait_for_topic(&consumer, &topic, config.topic_wait, &shutdown).await?;
    consumer.subscribe(&[&topic]).map_err(Error::Consume)?;
    tracing::info!(topic, group = %config.kafka_group, "Collector consuming.");
    ingest::run(&config, &mut store, &consumer, &shutdown).await
}
