//! Stands in for the collector and bridge in the agent benchmark
//! (`scripts/bench-agent.py`): subscribes to every device's readings on a broker
//! and, every `--interval-ms`, publishes to each device that sent something the
//! retained storage confirmation the real pipeline would send once PostgreSQL
//! held the readings. So the benchmark measures the agent with its back channel
//! (subscription, incoming confirmations, spool release) at the real rate.
//!
//! `cargo run --release -p hb-agent --example confirm_echo -- --port 1883`

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use hb_shared::{codec, DeviceId, DeviceTopicKind, EpochRanges, MqttTopics, StoredConfirmation};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Inclusive ranges of one epoch, merged as readings arrive.
type Ranges = Vec<(u32, u32)>;

fn add(ranges: &mut Ranges, seq: u32) {
    let i = ranges.partition_point(|&(_, b)| b.saturating_add(1) < seq);
    match ranges.get_mut(i) {
        Some((a, b)) if *a <= seq.saturating_add(1) && seq <= b.saturating_add(1) => {
            *a = (*a).min(seq);
            *b = (*b).max(seq);
            if let Some(&(na, nb)) = ranges.get(i + 1) {
                if na <= ranges[i].1.saturating_add(1) {
                    ranges[i].1 = nb;
                    ranges.remove(i + 1);
                }
            }
        }
        _ => ranges.insert(i, (seq, seq)),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut port = 1883u16;
    let mut interval_ms = 2000u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|v| v.parse().ok()).expect("--port N"),
            "--interval-ms" => {
                interval_ms = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--interval-ms N")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let topics = MqttTopics::default();
    let mut o = MqttOptions::new("hb-bench-confirm-echo", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_inflight(1000)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(o, 10_000);
    let filter = topics.all_devices(DeviceTopicKind::Readings);
    // The event loop in a task of its own (a poll must never be cancelled).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(10_000);
    let subscriber = client.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = subscriber.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p.payload.to_vec()).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    let mut stored: HashMap<DeviceId, BTreeMap<u32, Ranges>> = HashMap::new();
    let mut touched: HashSet<DeviceId> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for device in touched.drain() {
                    let epochs = stored[&device]
                        .iter()
                        .map(|(&epoch, r)| EpochRanges::capped(epoch, r.clone()))
                        .collect();
                    let c = StoredConfirmation::new(device.clone(), epochs);
                    let topic = topics.device(&device, DeviceTopicKind::Stored);
                    let _ = client.try_publish(topic, QoS::AtLeastOnce, true, c.to_json());
                }
            }
            payload = rx.recv() => {
                let Some(payload) = payload else { return };
                if let Ok(e) = codec::decode_postcard(&payload) {
                    let per_epoch = stored.entry(e.device_id.clone()).or_default();
                    for r in &e.readings {
                        add(per_epoch.entry(r.epoch).or_default(), r.seq);
                    }
                    touched.insert(e.device_id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_merge_into_ranges_in_any_order() {
        let mut r = Ranges::new();
        for seq in [5, 0, 1, 3, 2, 9, 4] {
            add(&mut r, seq);
        }
        assert_eq!(r, [(0, 5), (9, 9)]);
        add(&mut r, 7);
        add(&mut r, 8);
        add(&mut r, 6);
        assert_eq!(r, [(0, 9)]);
    }
}
