//! Baseline for `scripts/bench-bridge.py`: a bare rdkafka `FutureProducer` with
//! exactly the bridge's producer settings (built by `hb_bridge::create_producer` from the
//! bridge's own flags, so they cannot drift) sending `--count` records of the same
//! payloads, keys and headers the bridge would write, with at most `--max-inflight`
//! sends outstanding. Waits for every delivery report, then prints the count, the
//! time, the rate and its own CPU time over the sending span.
//!
//! Takes every `hb-bridge` flag; use a distinct `--kafka-topic-prefix` so its
//! records do not mix with the bridge's:
//!
//! ```sh
//! cargo run --release -p hb-bridge --example raw_producer -- \
//!     --kafka-brokers 127.0.0.1:9092 --kafka-topic-prefix raw. --count 100000
//! ```

mod bench;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use hb_bridge::BridgeArgs;
use hb_shared::{ContentType, DeviceTopicKind};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Produces benchmark readings straight to Kafka with the bridge's settings.
#[derive(Debug, Parser)]
struct Args {
    /// Records to produce.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Devices (record keys) to spread them over.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    #[command(flatten)]
    bridge: BridgeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let config = args.bridge.into_config()?;
    hb_bridge::ensure_topics(&config).await?;
    let producer = hb_bridge::create_producer(&config)?;
    let topic: Arc<str> = config.kafka_topics.readings().into();
    let bridge_id: Arc<str> = config.instance_id.as_str().into();

    // Payloads, keys and MQTT topic names prepared up front: not part of the timing.
    let messages: Vec<(String, Vec<u8>, String)> = (0..args.count)
        .map(|n| {
            let (id, payload) = bench::message(n, args.devices);
            let mqtt_topic = config.mqtt_topics.device(&id, DeviceTopicKind::Readings);
            (id.as_str().to_owned(), payload, mqtt_topic)
        })
        .collect();
    let bytes: usize = messages.iter().map(|(_, p, _)| p.len()).sum();

    let permits = Arc::new(Semaphore::new(config.max_inflight));
    let mut tasks = JoinSet::new();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    for (key, payload, mqtt_topic) in messages {
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let producer = producer.clone();
        let topic = Arc::clone(&topic);
        let bridge_id = Arc::clone(&bridge_id);
        tasks.spawn(async move {
            // The same headers as the bridge's readings records.
            let received_at = hb_runtime::clock::now_ms().to_string();
            let headers = OwnedHeaders::new()
                .insert(header("content-type", ContentType::Postcard.as_str()))
                .insert(header("mqtt-topic", &mqtt_topic))
                .insert(header("received-at-ms", &received_at))
                .insert(header("bridge-id", &bridge_id));
            let record = FutureRecord::to(&topic)
                .payload(&payload[..])
                .key(key.as_str())
                .headers(headers);
            let result = producer
                .send(record, Timeout::After(Duration::from_secs(5)))
                .await;
            drop(permit);
            result.map(|_| ()).map_err(|(e, _)| e)
        });
        // Reap finished tasks so the set does not grow.
        while let Some(r) = tasks.try_join_next() {
            r.context("send task panicked")??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.context("send task panicked")??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "raw_producer: count={} seconds={elapsed:.3} rate={:.0} cpu_seconds={cpu:.3} payload_bytes={:.1}",
        args.count,
        args.count as f64 / elapsed,
        bytes as f64 / args.count.max(1) as f64
    );
    Ok(())
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// User plus system CPU time of this process so far, in seconds (0 where
/// `/proc` is not readable).
fn cpu_seconds() -> f64 {
    hb_testkit::proc_stat("self").map_or(0.0, |s| s.cpu_seconds)
}
