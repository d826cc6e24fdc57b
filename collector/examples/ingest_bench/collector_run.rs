//! The collector phase: the real collector in-process (`hb_collector::run`,
//! default batch settings unless `--collector-arg` says otherwise), serving
//! `/metrics` on a free loopback port, timed from its start to the first scrape
//! that shows every reading committed.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser as _;
use hb_collector::Config;
use hb_collector::Totals;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::cpu::CpuMeter;
use crate::database;
use crate::scrape::{scrape, Snapshot};
use crate::Args;

/// How often `/metrics` is scraped while the collector runs: the resolution of
/// its timing.
const SCRAPE_INTERVAL: Duration = Duration::from_millis(20);

/// What the collector run measured.
pub struct CollectorRun {
    /// When the collector was started.
    pub started: Instant,
    /// The first scrape that showed a committed batch.
    pub first_commit: Snapshot,
    /// The first scrape that showed every reading committed.
    pub done: Snapshot,
    /// CPU seconds from the start to `done` (this process, PostgreSQL, Kafka).
    pub cpu: [Option<f64>; 3],
    /// What the collector reported when it stopped.
    pub totals: Totals,
    /// PostgreSQL's time per statement, with `--statements`.
    pub statements: Vec<String>,
}

/// The collector's configuration: the benchmark's database and broker, topics
/// of `prefix`, a group of its own (`run_id`), `/metrics` on a free loopback
/// port, then `--collector-arg`s.
pub fn config(args: &Args, prefix: &str, run_id: &str) -> anyhow::Result<Config> {
    let metrics_addr = free_loopback_addr()?.to_string();
    let mut argv: Vec<String> = [
        "hb-collector",
        "--database-url",
        &args.database_url,
        "--kafka-brokers",
        &args.kafka_brokers,
        "--kafka-topic-prefix",
        prefix,
        "--kafka-group",
        run_id,
        "--http-addr",
        &metrics_addr,
    ]
    .map(String::from)
    .to_vec();
    argv.extend(args.collector_args.iter().cloned());
    Ok(hb_collector::Cli::try_parse_from(argv)?
        .collector
        .into_config()?)
}

/// Runs the collector after a `CHECKPOINT` until its `/metrics` shows `n`
/// readings inserted (or `timeout` passes), then stops it.
pub async fn run(
    config: &Config,
    db: &Client,
    n: usize,
    timeout: Duration,
    statements: bool,
    cpu: &CpuMeter,
) -> anyhow::Result<CollectorRun> {
    let metrics_addr = config
        .http_addr
        .context("the collector must serve /metrics (--http-addr)")?;
    database::checkpoint(db).await?;
    if statements {
        database::reset_statement_times(db).await?;
    }
    let cpu_before = cpu.now();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let mut collector = tokio::spawn(hb_collector::run(config.clone(), shutdown.clone()));
    let deadline = started + timeout;
    let mut first_commit: Option<Snapshot> = None;
    let mut last: Option<Snapshot> = None;
    let mut last_error: Option<anyhow::Error> = None;
    let done = loop {
        tokio::select! {
            r = &mut collector => bail!("the collector stopped early: {:?}", r?),
            _ = tokio::time::sleep(SCRAPE_INTERVAL) => {}
        }
        // Refused until the collector serves HTTP.
        match scrape(metrics_addr).await {
            Ok(snapshot) => {
                if first_commit.is_none() && snapshot.batches > 0 {
                    first_commit = Some(snapshot.clone());
                }
                if snapshot.inserted >= n as u64 {
                    break snapshot;
                }
                last = Some(snapshot);
            }
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            shutdown.cancel();
            let stored = database::count_rows(db).await?;
            let reported = match (&last, &last_error) {
                (Some(s), _) => format!(
                    "{} of {n} readings committed in {} batches",
                    s.inserted, s.batches
                ),
                (None, Some(e)) => format!("nothing on http://{metrics_addr}/metrics ({e:#})"),
                (None, None) => "nothing".to_owned(),
            };
            bail!(
                "within {} s the collector reported {reported} (readings holds {stored} rows)",
                timeout.as_secs()
            );
        }
    };
    let cpu_after = cpu.now();
    shutdown.cancel();
    let totals = collector.await??;
    let statements = if statements {
        database::statement_times(db).await?
    } else {
        Vec::new()
    };
    Ok(CollectorRun {
        started,
        // A scrape showing every reading shows at least one batch.
        first_commit: first_commit.unwrap_or_else(|| done.clone()),
        done,
        cpu: cpu_after.since(cpu_before),
        totals,
        statements,
    })
}

/// A loopback address with a port free a moment ago (the collector binds it
/// right after).
fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?)
}
