//! The diagnostics that split the collector's time: its Kafka side alone (the
//! same records read with its consumer settings, nothing else) and its database
//! side alone (the same rows through its `Store::write`, no Kafka).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use hb_collector::records::ReadingRow;
use rdkafka::consumer::Consumer;
use tokio_postgres::Client;

use crate::cpu::CpuMeter;
use crate::database::checkpoint;
use crate::report::Line;

/// How long the consume-only run waits for the next record.
const RECORD_PATIENCE: Duration = Duration::from_secs(30);

/// Reads `records` records with the collector's consumer settings in a group of
/// its own (`{run_id}-consume-only`); timed from the first record to the last,
/// scaled to all of them. `readings`: what they hold, for the rate.
pub async fn consume_only(
    config: &hb_collector::Config,
    run_id: &str,
    records: usize,
    readings: usize,
    cpu: &CpuMeter,
) -> anyhow::Result<Line> {
    let mut config = config.clone();
    config.kafka_group = format!("{run_id}-consume-only");
    let metrics = hb_collector::CollectorMetrics::new();
    let consumer = hb_collector::create_consumer(&config, &metrics)?;
    consumer.subscribe(&[&config.topics.readings()])?;
    let first = consumer.recv().await?;
    let before = cpu.now();
    let started = Instant::now();
    drop(first);
    let mut bytes = 0usize;
    for _ in 1..records {
        let m = tokio::time::timeout(RECORD_PATIENCE, consumer.recv())
            .await
            .context("consume-only: no record for 30 s")??;
        bytes += m.payload_len();
    }
    std::hint::black_box(bytes);
    // Scaled to all records: the first one started the clock.
    let elapsed = started
        .elapsed()
        .mul_f64(records as f64 / (records - 1).max(1) as f64);
    Ok(Line {
        label: "  diag: Kafka consume only (same consumer)".into(),
        rows: readings,
        elapsed,
        cpu: cpu.now().since(before),
    })
}

/// `rows` written through the collector's own `Store` (connected as it
/// connects), `batch` per `Store::write`, after a `CHECKPOINT` of `db`.
pub async fn store_only(
    db: &Client,
    database_url: &str,
    rows: &[ReadingRow],
    batch: usize,
    cpu: &CpuMeter,
) -> anyhow::Result<Line> {
    let mut store =
        hb_collector::Store::connect(&hb_collector::Database::parse(database_url, None)?).await?;
    checkpoint(db).await?;
    let before = cpu.now();
    let started = Instant::now();
    store.ensure_partitions(rows).await?;
    for chunk in rows.chunks(batch) {
        store.write(chunk, &[], &[]).await?;
    }
    Ok(Line {
        label: format!("  diag: Store::write only, {batch}/txn"),
        rows: rows.len(),
        elapsed: started.elapsed(),
        cpu: cpu.now().since(before),
    })
}
