//! Load generator for `scripts/bench-bridge.py`: publishes `--count` valid
//! one-reading postcard envelopes, round-robin over devices `bench-0..D`, to
//! `{root}/v1/devices/{id}/readings` with QoS 1 as fast as the broker acknowledges
//! them, waits for every PUBACK, and prints the count and the time taken.
//!
//! ```sh
//! cargo run --release -p hb-bridge --example mqtt_load -- \
//!     --mqtt-url mqtt://127.0.0.1:1883 --root hb --count 100000 --devices 100
//! ```

mod bench;

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use hb_runtime::mqtt_address::MqttAddress;
use hb_shared::{DeviceTopicKind, MqttTopics};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

/// Publishes benchmark readings to MQTT with QoS 1.
#[derive(Debug, Parser)]
struct Args {
    /// MQTT broker, `mqtt://host:port`.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    mqtt_url: String,
    /// Root of the MQTT topic tree.
    #[arg(long, default_value = "hb")]
    root: String,
    /// Messages to publish.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Devices to spread them over.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Most publishes awaiting their PUBACK.
    #[arg(long, default_value_t = 100)]
    inflight: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let address: MqttAddress = args.mqtt_url.parse().map_err(anyhow::Error::msg)?;
    if address.tls {
        bail!("mqtt_load speaks plain mqtt:// only");
    }
    let mut options = MqttOptions::new(
        format!("hb-bench-load-{}", std::process::id()),
        address.host,
        address.port,
    );
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(args.inflight);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);

    let topics = MqttTopics::new(&args.root);
    let count = args.count;
    let devices = args.devices;
    let publisher = tokio::spawn(async move {
        let mut bytes = 0usize;
        for n in 0..count {
            let (id, payload) = bench::message(n, devices);
            bytes += payload.len();
            let topic = topics.device(&id, DeviceTopicKind::Readings);
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .context("publish queue closed")?;
        }
        anyhow::Ok((client, bytes))
    });

    let started = Instant::now();
    let mut acked = 0usize;
    while acked < count {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(Event::Incoming(Packet::ConnAck(ack)))
                if ack.code != rumqttc::ConnectReturnCode::Success =>
            {
                bail!("broker refused the connection: {:?}", ack.code)
            }
            Ok(_) => {}
            Err(e) => bail!("MQTT connection failed after {acked} acknowledgements: {e}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (client, bytes) = publisher.await.context("publisher panicked")??;
    client.disconnect().await.ok();
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    println!(
        "mqtt_load: count={count} seconds={elapsed:.3} rate={:.0} payload_bytes={:.1}",
        count as f64 / elapsed,
        bytes as f64 / count.max(1) as f64
    );
    Ok(())
}
