//! Alert transitions to Kafka `hb.alerts.v1`, for paging and other consumers.
//! A transition is written to `alert_outbox` in the transaction that caused it;
//! this task produces the outbox in order and deletes what Kafka acknowledged.
//! A crash anywhere in between leaves the rows for the next drain (by this or
//! any other collector): at least once, never lost. Each document carries a
//! `transition_id` so consumers can drop a repeat.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::CollectorMetrics;
use crate::store::Store;
use crate::{Error, Result};

/// Names the advisory lock that lets one collector drain at a time.
const DRAIN_LOCK: i64 = 0x4842_414C_5254; // "HBALRT"

/// Rows produced per round (one transaction holds them while Kafka acknowledges).
const ROUND_ROWS: i64 = 500;

/// How often the outbox is drained without being woken: rows a crashed
/// collector left behind go out within this.
const IDLE_DRAIN: Duration = Duration::from_secs(1);

/// Drains the outbox whenever `wake` is notified (a batch wrote transitions) and
/// every second, until `shutdown`; then once more.
pub async fn run(
    database: crate::database::Database,
    producer: FutureProducer,
    topic: String,
    wake: Arc<Notify>,
    metrics: Arc<CollectorMetrics>,
    shutdown: CancellationToken,
) {
    let mut store: Option<Store> = None;
    let mut failing = false;
    loop {
        let stopping = tokio::select! {
            _ = wake.notified() => false,
            _ = tokio::time::sleep(IDLE_DRAIN) => false,
            _ = shutdown.cancelled() => true,
        };
        let round = drain_connected(&mut store, &database, &producer, &topic, &metrics);
        let result = if stopping {
            tokio::time::timeout(Duration::from_secs(5), round)
                .await
                .unwrap_or(Ok(0))
        } else {
            round.await
        };
        match result {
            Ok(_) => failing = false,
            Err(e) => {
                metrics.alerts_publish_failed.inc();
                if !failing {
                    // Once per outage; the rows stay and go out when it ends.
                    tracing::warn!(error = %e, "Cannot publish alert transitions; they stay in the outbox.");
                    failing = true;
                }
                if store.as_ref().is_some_and(Store::is_closed) {
                    store = None;
                }
            }
        }
        if stopping {
            return;
        }
    }
}

async fn drain_connected(
    store: &mut Option<Store>,
    database: &crate::database::Database,
    producer: &FutureProducer,
    topic: &str,
    metrics: &CollectorMetrics,
) -> Result<u64> {
    if store.is_none() {
        *store = Some(Store::connect(database).await.map_err(Error::Database)?);
    }
    let client = store.as_mut().expect("connected").client_mut();
    let mut total = 0;
    loop {
        let n = drain_round(client, producer, topic).await?;
        metrics.alerts_published.inc_by(n);
        total += n;
        if n < ROUND_ROWS as u64 {
            return Ok(total);
        }
    }
}

/// Produces up to [`ROUND_ROWS`] outbox rows, oldest first, and deletes them once
/// Kafka acknowledged every one; returns how many. One collector drains at a time
/// (an advisory lock), so that a device's transitions reach Kafka in order.
async fn drain_round(
    client: &mut tokio_postgres::Client,
    producer: &FutureProducer,
    topic: &str,
) -> Result<u64> {
    let tx = client.transaction().await?;
    let ours: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&DRAIN_LOCK])
        .await?
        .get(0);
    if !ours {
        tx.commit().await?;
        return Ok(0); // another collector is draining
    }
    let rows = tx
        .query(
            "SELECT id, device_id, payload::text FROM alert_outbox ORDER BY id LIMIT $1",
            &[&ROUND_ROWS],
        )
        .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let mut deliveries = Vec::with_capacity(rows.len());
    for row in &rows {
        let (device, payload): (&str, &str) = (row.get(1), row.get(2));
        let record = FutureRecord::to(topic).key(device).payload(payload);
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| Error::PublishAlerts(e))?;
        deliveries.push(delivery);
    }
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(Error::PublishAlerts(e)),
            Err(_) => return Err(Error::PublishAlerts(rdkafka::error::KafkaError::Canceled)),
        }
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    tx.execute("DELETE FROM alert_outbox WHERE id = ANY($1)", &[&ids])
        .await?;
    tx.commit().await?;
    Ok(ids.len() as u64)
}
