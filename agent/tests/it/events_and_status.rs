//! The priority lane and the retained status: a change of the local classification
//! is published as an event; the status topic says `online` while a device is
//! connected and the Last Will says `offline` when the agent dies.

use std::path::Path;
use std::time::Duration;

use hb_shared::{AlertKind, DeviceEvent, DeviceStatus, Presence, Severity, TransitionKind};
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
    crate::common::start_agent(s, &work.join("state"), &args, work)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_episode_is_published_as_onset_and_clear_events() {
    let s = Services::from_env();
    let broker = Mosquitto::start(&s);
    let root = unique("t");
    let device = unique("d");
    let mut events = subscribe(&s, &broker.url, &format!("{root}/v1/devices/+/events")).await;
    let work = s.work_dir.join(unique("events-"));
    std::fs::create_dir_all(&work).unwrap();
    // 5 s normal, a 1 s spike, 20 s of bradycardia, 40 s back to normal; at 10×
    // speed the agent's clock sees a tenth of that, so the delays are shortened.
    let bpms = [
        vec![70; 5],
        vec![44],
        vec![70; 4],
        vec![44; 20],
        vec![72; 40],
    ]
    .concat();
    let mut csv = String::from("timestamp,bpm\n");
    for (i, bpm) in bpms.iter().enumerate() {
        csv.push_str(&format!(
            "{},{bpm}\n",
            1_764_000_000_000i64 + i as i64 * 1000
        ));
    }
    let recording = work.join("episode.csv");
    std::fs::write(&recording, csv).unwrap();
    let source = format!("replay:{}", recording.display());
    let mut agent = start_agent(
        &s,
        &broker.url,
        &root,
        &device,
        &[
            "--source",
            &source,
            "--speed",
            "10",
            "--alert-onset-delay-s",
            "1",
            "--alert-clear-delay-s",
            "2",
        ],
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
    // The spike at seq 5 is no episode; the one beginning at seq 10 is.
    assert_eq!(
        (
            got[0].kind,
            got[0].transition,
            got[0].origin_seq,
            got[0].severity
        ),
        (
            AlertKind::Bradycardia,
            TransitionKind::Open,
            10,
            Severity::Medium
        )
    );
    assert!(
        (15..30).contains(&got[0].seq),
        "opened after the onset delay, at seq {}",
        got[0].seq
    );
    assert_eq!(
        (
            got[1].kind,
            got[1].transition,
            got[1].origin_seq,
            got[1].ordinal
        ),
        (AlertKind::Bradycardia, TransitionKind::Close, 10, 1)
    );
    assert!(
        got[1].seq >= 40,
        "closed after the clear delay, at seq {}",
        got[1].seq
    );
    let status = tokio::task::spawn_blocking(move || agent.wait(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(status.success(), "the agent ends with its recording");
    assert!(
        next_publish(&mut events, Duration::from_secs(1))
            .await
            .is_none(),
        "no other event"
    );
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
