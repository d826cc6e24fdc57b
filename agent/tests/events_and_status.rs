//! The priority lane and the retained status: a change of the local classification
//! is published as an event; the status topic says `online` while a device is
//! connected and the Last Will says `offline` when the agent dies.

mod common;

use std::path::Path;
use std::time::Duration;

use hb_shared::{DeviceEvent, DeviceStatus, Presence, Status};
use hb_testkit::mqtt::Mosquitto;
use hb_testkit::{unique, Process, Services};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

/// A subscriber (as hb-bridge) to one filter; returns (topic, payload) pairs.
async fn subscribe(s: &Services, url: &str, filter: &str) -> EventLoop {
    let (host, port) = url.trim_start_matches("mqtt://").rsplit_once(':').unwrap();
    let mut o = MqttOptions::new(unique("sub-"), host, port.parse().unwrap());
    o.set_credentials("hb-bridge", s.mqtt_bridge_password.clone());
    let (client, mut el) = AsyncClient::new(o, 10);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await.unwrap() {
            // Keep the client alive with the event loop.
            std::mem::forget(client);
            return el;
        }
    }
}

async fn next_publish(el: &mut EventLoop, timeout: Duration) -> Option<(String, Vec<u8>, bool)> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Err(_) => return None,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                return Some((p.topic, p.payload.to_vec(), p.retain))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber failed: {e}"),
        }
    }
}

fn start_agent(
    s: &Services,
    url: &str,
    root: &str,
    device: &str,
    extra: &[&str],
    work: &Path,
) -> Process {
    let mut args = vec![
        "--mqtt-url",
        url,
        "--mqtt-topic-root",
        root,
        "--device-id-template",
        device,
        "--connect-stagger-ms",
        "0",
    ];
    args.extend_from_slice(extra);
    common::start_agent(s, &work.join("state"), &args, work)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_the_local_classification_is_published_as_an_event() {
    let s = Services::from_env();
    let broker = Mosquitto::start(&s);
    let root = unique("t");
    let device = unique("d");
    let mut events = subscribe(&s, &broker.url, &format!("{root}/v1/devices/+/events")).await;
    let work = s.work_dir.join(unique("events-"));
    std::fs::create_dir_all(&work).unwrap();
    let recording = work.join("episode.csv");
    std::fs::write(
        &recording,
        "timestamp,bpm\n1764000000000,70\n1764000001000,71\n1764000002000,44\n1764000003000,43\n1764000004000,72\n",
    )
    .unwrap();
    let source = format!("replay:{}", recording.display());
    let mut agent = start_agent(
        &s,
        &broker.url,
        &root,
        &device,
        &["--source", &source, "--speed", "10"],
        &work,
    );

    let mut got = Vec::new();
    while got.len() < 2 {
        let (topic, payload, _) = next_publish(&mut events, Duration::from_secs(20))
            .await
            .expect("an event");
        assert_eq!(topic, format!("{root}/v1/devices/{device}/events"));
        got.push(DeviceEvent::decode(&payload).expect("a valid event"));
    }
    assert_eq!(
        (got[0].previous, got[0].current, got[0].seq, got[0].bpm),
        (Status::Normal, Status::Bradycardia, 2, 44)
    );
    assert_eq!(
        (got[1].previous, got[1].current, got[1].seq),
        (Status::Bradycardia, Status::Normal, 4)
    );
    let status = tokio::task::spawn_blocking(move || agent.wait(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(status.success(), "the agent ends with its recording");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_is_online_while_connected_and_the_last_will_says_offline_after_a_crash() {
    let s = Services::from_env();
    let broker = Mosquitto::start(&s);
    let root = unique("t");
    let device = unique("d");
    let mut status = subscribe(&s, &broker.url, &format!("{root}/v1/devices/+/status")).await;
    let work = s.work_dir.join(unique("status-"));
    let agent = start_agent(
        &s,
        &broker.url,
        &root,
        &device,
        &["--mqtt-keep-alive-s", "5"],
        &work,
    );

    let (topic, payload, _) = next_publish(&mut status, Duration::from_secs(20))
        .await
        .expect("a status");
    assert_eq!(topic, format!("{root}/v1/devices/{device}/status"));
    let online: DeviceStatus = serde_json::from_slice(&payload).unwrap();
    assert_eq!((online.state, online.epoch), (Presence::Online, 1));

    agent.signal("KILL");
    // The broker publishes the Last Will once 1.5 keep-alives pass without a packet.
    let offline = loop {
        let (_, payload, _) = next_publish(&mut status, Duration::from_secs(20))
            .await
            .expect("the Last Will");
        let st: DeviceStatus = serde_json::from_slice(&payload).unwrap();
        if st.state == Presence::Offline {
            break st;
        }
    };
    assert_eq!(offline.epoch, 1);
}
