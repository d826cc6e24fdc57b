//! The collector's numbers, read from its `/metrics` over HTTP: one `GET` per
//! scrape (HTTP/1.0, so that the body comes whole and unchunked), bounded in
//! size and time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use hb_testkit::exposition::Exposition;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Kafka records consumed (a counter).
const CONSUMED: &str = "hb_collector_consumed_total";
/// New rows in `readings` (a counter, raised after each COMMIT).
const INSERTED: &str = "hb_collector_inserted_total";
/// Readings per committed batch (a histogram, observed just before
/// [`INSERTED`] is raised).
const BATCH_READINGS: &str = "hb_collector_batch_readings";

/// The most a `/metrics` response may take, head included.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;
/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The collector's counters at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When the response arrived: every COMMIT it counts happened before.
    pub at: Instant,
    /// Kafka records consumed.
    pub consumed: u64,
    /// Readings inserted.
    pub inserted: u64,
    /// Batches committed.
    pub batches: u64,
    /// Committed batches by size: `(at most this many readings, batches)`,
    /// cumulative, the last bound `+Inf`.
    pub batch_sizes: Vec<(f64, u64)>,
}

/// Scrapes `http://{addr}/metrics` once.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Snapshot> {
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, get(addr, "/metrics"))
        .await
        .with_context(|| format!("no answer from {addr} within {SCRAPE_TIMEOUT:?}"))??;
    let at = Instant::now();
    let metrics = Exposition::parse(&body)?;
    let counter = |name: &str| {
        metrics
            .value(name)
            .map(|v| v as u64)
            .with_context(|| format!("{name} is not on the collector's /metrics"))
    };
    Ok(Snapshot {
        at,
        consumed: counter(CONSUMED)?,
        inserted: counter(INSERTED)?,
        batches: counter(&format!("{BATCH_READINGS}_count"))?,
        batch_sizes: metrics
            .buckets(BATCH_READINGS)
            .into_iter()
            .map(|(le, n)| (le, n as u64))
            .collect(),
    })
}

/// The body of a `GET path` that answered 200.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut raw)
        .await?;
    ensure!(
        raw.len() as u64 <= MAX_RESPONSE_BYTES,
        "GET {path}: the response is over {MAX_RESPONSE_BYTES} bytes"
    );
    let text = String::from_utf8(raw).with_context(|| format!("GET {path}: not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: an incomplete response"))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    ensure!(status == "200", "GET {path}: HTTP status {status}");
    Ok(body.to_owned())
}
