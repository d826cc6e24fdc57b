//! Ingest benchmark for `scripts/bench-collector.py`: the collector's rate next to
//! a raw `COPY` loop and a row-by-row `INSERT` loop, in one run, on the same
//! `readings` table (daily partitions, primary key and `readings_device_ts`).
//!
//! 1. Applies the migrations to `--database-url`, which must be a fresh database.
//! 2. Pre-fills a topic of its own (`--partitions`) with `--readings` readings of
//!    `--devices` devices in postcard envelopes of `--per-envelope` (key = device
//!    id, header `content-type`), as the bridge writes them (lz4, `acks=all`), and
//!    waits for every delivery.
//! 3. Runs the real collector in-process (`hb_collector::run`, default batch
//!    settings, `/metrics` on a free loopback port) and times it from start to
//!    the first scrape of its `/metrics` (every 20 ms) that shows every reading
//!    inserted; `hb_collector_batch_readings` gives the batch counts and sizes.
//! 4. Diagnostics that split the collector's time: the same records consumed with
//!    the collector's consumer settings and nothing else, and the same rows written
//!    through the collector's `Store::write` (`COPY`, stored ranges, device
//!    upsert, `COMMIT`) without Kafka.
//! 5. After `TRUNCATE`: the same rows `COPY`ed straight into `readings` with
//!    `BinaryCopyInWriter`, `--copy-batch` rows per transaction.
//! 6. After `TRUNCATE`: one prepared `INSERT` per row, `--insert-batch` rows per
//!    transaction, for `--insert-rows` rows (default a tenth; rates are per row).
//!
//! Every timed phase starts after a `CHECKPOINT`. Rows for phases 4–6 are decoded
//! up front with the collector's own `records::accept`, outside any timing. CPU
//! times: this process (collector or loop plus librdkafka), the PostgreSQL server
//! (all children of the postmaster; needs a local server and `/proc`) and, with
//! `--broker-pid`, the Kafka broker. Prints figures only: no pass or fail.
//!
//! ```sh
//! cargo run --release -p hb-collector --example ingest_bench -- \
//!     --database-url postgres://postgres@127.0.0.1:5432/bench \
//!     --kafka-brokers 127.0.0.1:9092 --readings 200000 --devices 1000
//! ```

mod collector_run;
mod cpu;
mod database;
mod diagnostics;
mod fixtures;
mod loops;
mod report;
mod scrape;

use std::time::Duration;

use anyhow::ensure;
use clap::Parser;
use hb_shared::MAX_READINGS_PER_ENVELOPE;

use crate::cpu::CpuMeter;
use crate::report::{Line, Report};

/// Benchmarks hb-collector against raw COPY and INSERT loops.
#[derive(Debug, Parser)]
struct Args {
    /// PostgreSQL URL of a fresh, empty database (the migrations are applied to it).
    #[arg(long)]
    database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "localhost:9092")]
    kafka_brokers: String,
    /// Readings in total.
    #[arg(long, default_value_t = 200_000)]
    readings: usize,
    /// Devices (record keys) the readings are spread over, round-robin.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Readings per envelope (Kafka record): 1 as devices send live, more when an
    /// agent drains a backlog (at most 256).
    #[arg(long, default_value_t = 1)]
    per_envelope: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Rows per transaction of the raw COPY loop.
    #[arg(long, default_value_t = 10_000)]
    copy_batch: usize,
    /// Rows of the row-by-row INSERT loop (default: a tenth of --readings).
    #[arg(long)]
    insert_rows: Option<usize>,
    /// Rows per transaction of the row-by-row INSERT loop.
    #[arg(long, default_value_t = 1000)]
    insert_batch: usize,
    /// Extra hb-collector flag (repeatable), e.g.
    /// `--collector-arg=--batch-max-readings=10000` (not `--http-addr`: the
    /// benchmark picks it).
    #[arg(long = "collector-arg", allow_hyphen_values = true)]
    collector_args: Vec<String>,
    /// PID of the Kafka broker, to report its CPU time in the collector run.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Give up on the collector after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Also print PostgreSQL's time per statement of the collector run (needs
    /// `shared_preload_libraries=pg_stat_statements`).
    #[arg(long)]
    statements: bool,
}

impl Args {
    /// Refuses values the phases cannot run with.
    fn check(&self) -> anyhow::Result<()> {
        ensure!(self.readings >= 1, "--readings must be at least 1");
        ensure!(self.devices >= 1, "--devices must be at least 1");
        ensure!(
            (1..=MAX_READINGS_PER_ENVELOPE).contains(&self.per_envelope),
            "--per-envelope must be 1–{MAX_READINGS_PER_ENVELOPE}"
        );
        ensure!(
            self.copy_batch >= 1 && self.insert_batch >= 1,
            "batch sizes must be at least 1"
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.check()?;
    let n = args.readings;
    let insert_rows = args.insert_rows.unwrap_or(n / 10).clamp(1, n);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("HB_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .init();

    let mut db = database::connect_fresh(&args.database_url).await?;
    let server_settings = database::server_settings(&db).await?;
    let cpu = CpuMeter::new(&db, args.broker_pid).await;

    // The topic, pre-filled, and the same rows as the collector makes, for the
    // phases without Kafka (not timed).
    let run_id = format!(
        "bench-{}-{}",
        std::process::id(),
        hb_runtime::clock::now_ms()
    );
    let prefix = format!("{run_id}.");
    let fixture = fixtures::prepare(&args, &prefix).await?;
    let rows = &fixture.rows;

    // The collector.
    let config = collector_run::config(&args, &prefix, &run_id)?;
    let collector_run = collector_run::run(
        &config,
        &db,
        n,
        Duration::from_secs(args.timeout_s),
        args.statements,
        &cpu,
    )
    .await?;
    database::expect_rows(&db, n).await?;
    let collector = Line {
        label: format!(
            "hb-collector (Kafka -> PostgreSQL), {}/txn max",
            config.batch_max_readings
        ),
        rows: n,
        elapsed: collector_run.done.at - collector_run.started,
        cpu: collector_run.cpu,
    };

    // Diagnostics: the collector's Kafka side alone, and its database side alone.
    let consume_only =
        diagnostics::consume_only(&config, &run_id, fixture.records, n, &cpu).await?;
    database::truncate(&db).await?;
    let store_only = diagnostics::store_only(
        &db,
        &args.database_url,
        rows,
        config.batch_max_readings,
        &cpu,
    )
    .await?;
    database::expect_rows(&db, n).await?;

    // The raw COPY loop.
    database::truncate(&db).await?;
    let raw_copy = loops::raw_copy(&mut db, rows, args.copy_batch, &cpu).await?;
    database::expect_rows(&db, n).await?;

    // The row-by-row INSERT loop.
    database::truncate(&db).await?;
    let insert_loop =
        loops::insert_loop(&mut db, &rows[..insert_rows], args.insert_batch, &cpu).await?;
    database::expect_rows(&db, insert_rows).await?;

    report::print(&Report {
        args: &args,
        fixture: &fixture,
        server_settings: &server_settings,
        collector_run: &collector_run,
        collector,
        consume_only,
        store_only,
        raw_copy,
        insert_loop,
    });
    Ok(())
}
