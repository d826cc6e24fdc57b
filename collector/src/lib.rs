//! `hb-collector`: consumes readings from Kafka in a consumer group, validates and
//! classifies them, and stores each `(device_id, epoch, seq)` exactly once in
//! PostgreSQL. Kafka offsets are stored only after the database COMMIT.
//!
//! # Layout
//! - `alerts`: alert episodes evaluated in each batch's transaction, and the
//!   offline sweep.
//! - `alert_outbox`: alert transitions to Kafka, from the outbox.
//! - `last_will`: devices' Last Wills open `device_offline` at once.
//! - `live`: what each batch tells the dashboards (counts, notifications).
//! - `config`: flags and environment → [`Config`].
//! - `migrations`: the `schema/` files, applied once each.
//! - `database`: connection strings, TLS to PostgreSQL, the roles acted as.
//! - [`records`]: Kafka record → rows or quarantine entry.
//! - [`store`]: the PostgreSQL batch writer.
//! - `retention`: dropping old daily partitions.
//! - `consumer`: the Kafka consumer, its rebalance and commit reports, lag.
//! - `ingest`: the consume → write → store-offsets loop.
//! - `confirm`: storage confirmations back to the devices.
//! - `metrics`: `/metrics` and `/healthz`.
//! - `dashboard`: the browser dashboard and its JSON API.

mod alert_outbox;
mod alerts;
mod config;
mod confirm;
mod consumer;
mod dashboard;
mod database;
mod error;
mod ingest;
mod last_will;
mod live;
mod metrics;
mod migrations;
pub mod records;
mod retention;
pub mod store;

use std::sync::Arc;

use backon::Retryable;
use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Command, Config};
pub use consumer::create_consumer;
pub use database::Database;
pub use error::{Error, Result};
pub use ingest::Totals;
pub use metrics::CollectorMetrics;
pub use migrations::MIGRATIONS;
pub use store::Store;

/// Connects to PostgreSQL (with retries) as the connection string's user and
/// applies pending migrations; with nothing pending it changes nothing, so the
/// collector's own login (a member of `hb_writer`) may run it.
pub async fn migrate(database: &Database) -> Result<usize> {
    let mut client = (|| database.open())
        .retry(hb_runtime::retry::startup())
        .notify(
            |e, after| tracing::warn!(error = %e, ?after, "PostgreSQL not reachable, retrying."),
        )
        .await
        .map_err(Error::ConnectDatabase)?;
    migrations::migrate(&mut client).await
}

/// Runs the collector until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Totals> {
    let metrics = Arc::new(CollectorMetrics::new());
    let background = CancellationToken::new();
    let http = match config.http_addr {
        Some(addr) => {
            let mut router =
                hb_runtime::http::ops_router(Arc::clone(&metrics.registry), metrics.health.clone());
            if let Some(dashboard) = &config.dashboard {
                router = router.merge(dashboard::router(
                    dashboard,
                    &config.database,
                    config.alert_rules,
                    background.clone(),
                )?);
            }
            let served = match &config.http_tls {
                Some(tls) => {
                    hb_runtime::http::serve_https(addr, router, Arc::clone(tls), background.clone())
                        .await
                }
                None => hb_runtime::http::serve(addr, router, background.clone()).await,
            };
            let (_, task) = served.map_err(|source| Error::ServeHttp { addr, source })?;
            Some(task)
        }
        None => None,
    };
    let result = run_collector(&config, &shutdown, &metrics, &background).await;
    background.cancel();
    if let Some(task) = http {
        let _ = task.await;
    }
    result
}

async fn run_collector(
    config: &Config,
    shutdown: &CancellationToken,
    metrics: &Arc<CollectorMetrics>,
    background: &CancellationToken,
) -> Result<ingest::Totals> {
    metrics.health.set("database", Err("connecting".into()));
    metrics.health.set("kafka", Err("connecting".into()));
    // A stop during start-up stops at once, even while PostgreSQL does not answer.
    let started = async {
        migrate(&config.database).await?;
        Store::connect_with_retry(&config.database).await
    };
    let mut store = tokio::select! {
        store = started => store?,
        () = shutdown.cancelled() => {
            tracing::info!("Stopped before PostgreSQL was reached.");
            return Ok(ingest::Totals::default());
        }
    };
    if let Some(days) = config.retention_days {
        let floor = store.retention_floor_days().await?;
        if (days as i64) < floor as i64 {
            return Err(Error::RetentionBelowFloor { days, floor });
        }
    }
    store.set_alert_rules(config.alert_rules);
    metrics.health.set("database", Ok(()));
    let alert_wake = Arc::new(tokio::sync::Notify::new());
    let outbox_stop = CancellationToken::new();
    let outbox = tokio::spawn(alert_outbox::run(
        config.database.clone(),
        confirm::create_producer(config)?,
        config.topics.alerts(),
        Arc::clone(&alert_wake),
        Arc::clone(metrics),
        outbox_stop.clone(),
    ));
    let wills = tokio::spawn(last_will::run(
        config.clone(),
        Arc::clone(&alert_wake),
        Arc::clone(metrics),
        background.clone(),
    ));
    tokio::spawn(async move {
        if let Ok(Err(e)) = wills.await {
            tracing::error!(error = %e, "Last Wills are not applied; silent devices still go offline after the delay.");
        }
    });

    tokio::spawn(live::prune_counts(
        config.database.clone(),
        background.clone(),
    ));
    if let Some(days) = config.retention_days {
        tokio::spawn(retention::run(
            config.database.clone(),
            days,
            Arc::clone(metrics),
            background.clone(),
        ));
    }
    let consumer = Arc::new(consumer::create_consumer(config, metrics)?);
    let topic = config.topics.readings();
    consumer::wait_for_topic(&consumer, &topic, config.topic_wait, shutdown).await?;
    if shutdown.is_cancelled() {
        return Ok(ingest::Totals::default());
    }
    consumer.subscribe(&[&topic]).map_err(Error::Consume)?;
    metrics.health.set("kafka", Ok(()));
    tokio::spawn(alerts::sweep_offline_devices(
        config.database.clone(),
        config.alert_rules,
        Arc::clone(&consumer),
        config.batch_max_readings as i64,
        Arc::clone(&alert_wake),
        Arc::clone(metrics),
        background.clone(),
    ));
    tokio::spawn(consumer::report_lag(
        Arc::clone(&consumer),
        Arc::clone(metrics),
        background.clone(),
    ));
    let confirmations = match config.confirm_interval {
        Some(interval) => {
            let pending = Arc::new(confirm::Pending::default());
            let stop = CancellationToken::new();
            let task = tokio::spawn(confirm::run(
                Arc::clone(&pending),
                confirm::create_producer(config)?,
                config.topics.stored(),
                interval,
                Arc::clone(metrics),
                stop.clone(),
            ));
            Some((pending, stop, task))
        }
        None => None,
    };
    tracing::info!(topic, group = %config.kafka_group, "Collector consuming.");
    let pending = confirmations.as_ref().map(|(p, _, _)| Arc::clone(p));
    let result = ingest::run(
        config,
        &mut store,
        &consumer,
        metrics,
        pending,
        &alert_wake,
        shutdown,
    )
    .await;
    // One last drain of the outbox (what the final batches wrote) and one last
    // round of confirmations (what they stored), side by side: a stop waits for
    // the slower of the two, not for both in turn.
    outbox_stop.cancel();
    let outbox_drained = async {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(6), outbox).await;
    };
    let confirmations_sent = async {
        if let Some((_, stop, task)) = confirmations {
            stop.cancel();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
    };
    tokio::join!(outbox_drained, confirmations_sent);
    result
}
