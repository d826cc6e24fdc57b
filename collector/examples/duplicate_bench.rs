//! What a redelivery costs the collector: the time `Store::write` takes for a
//! batch of `--batch` readings of which `--duplicates-pct` are already stored,
//! next to the same size of batch with none, in one run on one database. Run by
//! `scripts/bench-collector.py` (its last table); prints figures, asserts nothing.
//!
//! ```sh
//! cargo run --release -p hb-collector --example duplicate_bench -- \
//!     --database-url postgres://postgres@127.0.0.1:5432/fresh_db
//! ```

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use hb_collector::records::ReadingRow;
use hb_collector::Store;

/// Times batches with and without already stored readings.
#[derive(Debug, Parser)]
struct Args {
    /// PostgreSQL URL of a fresh database (the migrations are applied to it).
    #[arg(long)]
    database_url: String,
    /// Readings per batch.
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// Devices the readings of a batch are spread over.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Share of each duplicate batch already stored, in percent.
    #[arg(long, default_value_t = 10)]
    duplicates_pct: usize,
    /// Timed batches of each kind (alternating).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

/// Readings `first..first + n` of the run, spread round-robin over the devices.
fn rows(args: &Args, first: usize, n: usize) -> Vec<ReadingRow> {
    let base = SystemTime::now() - Duration::from_secs(3600);
    (first..first + n)
        .map(|i| {
            let seq = (i / args.devices) as i64;
            let ts = base + Duration::from_millis(seq as u64 * 1000 + (i % args.devices) as u64);
            ReadingRow {
                device_id: format!("dup-bench-{}", i % args.devices),
                epoch: 1,
                seq,
                ts,
                ts_corrected: ts,
                mono_ms: seq * 1000,
                clock_synced: true,
                received_at: SystemTime::now(),
                bpm: 60 + (i % 40) as i32,
                contact: "detected",
                rr_1024: vec![1000],
                rr_consistent: true,
                energy_kj: None,
                status: "normal",
                local_flag: None,
                backfill: false,
                kafka_partition: 0,
                kafka_offset: i as i64,
                arrival_delay_ms: 100,
            }
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.batch >= 1 && args.devices >= 1 && args.duplicates_pct <= 100);
    let database = hb_collector::Database::parse(&args.database_url, None)?;
    hb_collector::migrate(&database).await?;
    let mut store = Store::connect(&database).await.context("connect")?;
    let dups = args.batch * args.duplicates_pct / 100;
    let mut next = 0;
    let (mut clean, mut with_dups) = (Duration::ZERO, Duration::ZERO);
    // Warm-up: partitions, the staging table, caches.
    for _ in 0..2 {
        let batch = rows(&args, next, args.batch);
        store.ensure_partitions(&batch).await?;
        store.write(&batch[..dups.max(1)], &[], &[]).await?;
        store.write(&batch, &[], &[]).await?;
        next += args.batch;
    }
    for _ in 0..args.rounds {
        let batch = rows(&args, next, args.batch);
        store.ensure_partitions(&batch).await?;
        let t = Instant::now();
        store.write(&batch, &[], &[]).await?;
        clean += t.elapsed();
        next += args.batch;

        // The same size of batch, its last readings stored by an earlier batch (a
        // redelivery overlapping what was committed; last, so that a COPY that
        // fails on the first duplicate has done all the other work first).
        let batch = rows(&args, next, args.batch);
        store.ensure_partitions(&batch).await?;
        if dups > 0 {
            store.write(&batch[args.batch - dups..], &[], &[]).await?;
        }
        let t = Instant::now();
        let (written, _) = store.write(&batch, &[], &[]).await?;
        with_dups += t.elapsed();
        anyhow::ensure!(
            written.duplicates == dups as u64,
            "expected {dups} duplicates, counted {}",
            written.duplicates
        );
        next += args.batch;
    }
    let rate = |d: Duration| (args.rounds * args.batch) as f64 / d.as_secs_f64();
    let (a, b) = (rate(clean), rate(with_dups));
    println!(
        "batches of {} readings over {} devices, {} rounds, at {}",
        args.batch,
        args.devices,
        args.rounds,
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    println!("{:<34} {:>12}", "", "readings/s");
    println!("{:<34} {:>12.0}", "no duplicates", a);
    println!(
        "{:<34} {:>12.0}",
        format!("{} % already stored", args.duplicates_pct),
        b
    );
    println!("ratio: {:.2} (target >= 0.5)", b / a);
    Ok(())
}
