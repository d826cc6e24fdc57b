//! Bad input never reaches `hb.readings.v1` and never stops the flow: a corpus of
//! malformed and spoofed payloads lands in `hb.quarantine.v1`, each with the right
//! reason, while the good readings around them are forwarded.

use std::time::Duration;

use crate::common::{readings_in, Setup};
use hb_shared::{codec, Contact, DeviceId, Envelope, Reading, Readings};
use hb_testkit::kafka::read_until;
use hb_testkit::mqtt::Mosquitto;
use hb_testkit::{unique, Services};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn reading(seq: u32) -> Reading {
    let ts_ms = 1_764_000_000_000 + i64::from(seq) * 1000;
    Reading {
        mono_ms: u64::from(seq) * 1000,
        ..Reading::new(1, seq, ts_ms, 70, Contact::Detected)
    }
}

fn envelope(device: &str, seqs: std::ops::Range<u32>) -> Envelope {
    let mut r = Readings::new();
    for seq in seqs {
        r.push(reading(seq)).unwrap();
    }
    Envelope::new(DeviceId::new(device).unwrap(), r)
}

/// Publishes `messages` in order as `hb-sim` (QoS 1) and waits for every PUBACK.
async fn publish_all(s: &Services, url: &str, messages: Vec<(String, Vec<u8>)>) {
    let (host, port) = url.trim_start_matches("mqtt://").rsplit_once(':').unwrap();
    let mut o = MqttOptions::new(unique("pub-"), host, port.parse().unwrap());
    o.set_credentials("hb-sim", s.mqtt_sim_password.clone())
        .set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut el) = AsyncClient::new(o, 100);
    let count = messages.len();
    let publisher = tokio::spawn(async move {
        let mut acked = 0;
        while acked < count {
            if let Event::Incoming(Packet::PubAck(_)) =
                el.poll().await.expect("publisher connection")
            {
                acked += 1;
            }
        }
    });
    for (topic, payload) in messages {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(120), publisher)
        .await
        .expect("all published")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_spoofed_payloads_are_quarantined_with_reasons_while_good_ones_flow() {
    let s = Services::from_env();
    let setup = Setup::new(&s);
    let mut bridge = setup.bridge(&s, &s.mqtt_url, &s.kafka_brokers, &unique("b"), &[]);
    let dev = format!("{}-0", setup.devices);
    let other = format!("{}-1", setup.devices);
    let topic = |kind: &str| format!("{}/v1/devices/{dev}/{kind}", setup.root);
    let good = codec::encode_postcard(&envelope(&dev, 0..3)).unwrap();
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 3);
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"xx");
    let mut v2 = good.clone();
    v2[0] = 2;
    let spoofed = codec::encode_postcard(&envelope(&other, 0..1)).unwrap();
    let empty_envelope = codec::encode_postcard(&Envelope::new(
        DeviceId::new(&dev).unwrap(),
        Readings::new(),
    ))
    .unwrap();
    let json_good =
        String::from_utf8(codec::encode_json(&envelope(&dev, 10..11)).unwrap()).unwrap();
    let many = format!(
        r#"{{"version":1,"device_id":"{dev}","readings":[{}]}}"#,
        vec![r#"{"epoch":1,"seq":0,"ts_ms":1764000000000,"bpm":60,"contact":"detected"}"#; 300]
            .join(",")
    );
    let mut bad_utf8 = format!(r#"{{"version":1,"device_id":"{dev}"#).into_bytes();
    bad_utf8.extend_from_slice(&[0xff, 0xfe]);
    bad_utf8.extend_from_slice(br#"","readings":[]}"#);

    // (topic kind, payload, expected reason)
    let corpus: Vec<(&str, Vec<u8>, &str)> = vec![
        ("readings", vec![], "empty_payload"),
        ("readings", b"\x01\xde\xad\xbe\xef".to_vec(), "undecodable"),
        ("readings", truncated, "undecodable"),
        ("readings", trailing, "trailing_bytes"),
        ("readings", vec![1u8; 70 * 1024], "too_large"),
        ("readings", v2, "unsupported_version"),
        ("readings", spoofed, "device_mismatch"),
        ("readings", empty_envelope, "empty_envelope"),
        (
            "readings",
            vec![1, 1, b'x', 0xff, 0xff, 0xff, 0xff, 0x0f],
            "undecodable",
        ),
        ("readings/json", b"{not json".to_vec(), "undecodable"),
        (
            "readings/json",
            br#"{"version":2,"device_id":"x","readings":[]}"#.to_vec(),
            "unsupported_version",
        ),
        (
            "readings/json",
            json_good.replace(&dev, &other).into_bytes(),
            "device_mismatch",
        ),
        ("readings/json", many.into_bytes(), "undecodable"),
        ("readings/json", bad_utf8, "undecodable"),
        (
            "readings/json",
            br#"{"version":1,"device_id":"a/b","readings":[]}"#.to_vec(),
            "undecodable",
        ),
        ("readings/json", vec![b' '; 300 * 1024], "too_large"),
        ("readings/json", b"{}".to_vec(), "undecodable"),
        ("events", b"\x02garbage".to_vec(), "undecodable"),
        ("status", b"online".to_vec(), "undecodable"),
    ];
    assert!(corpus.len() >= 15);

    // Good readings before, between and after the bad ones.
    let mut messages = vec![(topic("readings"), good.clone())];
    messages.extend(corpus.iter().map(|(kind, p, _)| (topic(kind), p.clone())));
    messages.push((topic("readings/json"), json_good.into_bytes()));
    publish_all(&s, &s.mqtt_url, messages).await;

    let quarantined = read_until(
        &s.kafka_brokers,
        &setup.quarantine_topic(),
        Duration::from_secs(60),
        |r| r.len() >= corpus.len(),
    )
    .await;
    assert_eq!(
        quarantined.len(),
        corpus.len(),
        "every bad payload is quarantined once"
    );
    for (kind, payload, reason) in &corpus {
        let q = quarantined
            .iter()
            .find(|q| q.payload == *payload && q.headers.get("mqtt-topic") == Some(&topic(kind)))
            .unwrap_or_else(|| {
                panic!("no quarantine record for the {kind} payload expected as {reason}")
            });
        assert_eq!(
            q.headers.get("reason").map(String::as_str),
            Some(*reason),
            "{kind}: {:?}",
            q.headers.get("detail")
        );
        assert!(q.headers.contains_key("received-at-ms"));
    }
    let readings = read_until(
        &s.kafka_brokers,
        &setup.readings_topic(),
        Duration::from_secs(30),
        |r| readings_in(r).len() >= 4,
    )
    .await;
    let seen = readings_in(&readings);
    let mut keys: Vec<u32> = seen.keys().map(|(_, _, seq)| *seq).collect();
    keys.sort();
    assert_eq!(
        keys,
        [0, 1, 2, 10],
        "exactly the good readings reach hb.readings.v1"
    );

    let (status, health) = bridge.http_get("/healthz");
    assert_eq!((status, health.trim()), (200, "ok"));
    let (status, metrics) = bridge.http_get("/metrics");
    assert_eq!(status, 200);
    for line in [
        "hb_bridge_received_total 21",
        "hb_bridge_forwarded_total 2",
        "hb_bridge_quarantined_total{reason=\"too_large\"} 2",
        "hb_bridge_quarantined_total{reason=\"device_mismatch\"} 2",
        "hb_bridge_in_flight 0",
        "hb_bridge_delivery_seconds_count 21",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in:\n{metrics}"
        );
    }
    bridge.stop(Duration::from_secs(20));
}

/// A broker without the shipped configuration's packet limit and ACL once put the
/// bridge into a reconnect loop on a 1.5 MiB message (redelivered after every
/// reconnect, so nothing after it was forwarded), and dropped messages on topics
/// the bridge did not subscribe to without a trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_and_an_unrouted_topic_are_quarantined_and_the_flow_goes_on() {
    let s = Services::from_env();
    let broker = Mosquitto::without_limits(&s);
    let setup = Setup::new(&s);
    let mut bridge = setup.bridge(&s, &broker.url, &s.kafka_brokers, &unique("b"), &[]);
    let dev = format!("{}-0", setup.devices);
    let topic = |kind: &str| format!("{}/v1/devices/{dev}/{kind}", setup.root);
    let oversized = vec![b' '; 1536 * 1024];
    let unrouted = String::from_utf8(codec::encode_json(&envelope(&dev, 10..11)).unwrap())
        .unwrap()
        .into_bytes();
    publish_all(
        &s,
        &broker.url,
        vec![
            (
                topic("readings"),
                codec::encode_postcard(&envelope(&dev, 0..3)).unwrap(),
            ),
            (topic("readings/json"), oversized.clone()),
            (topic("readings/json/extra"), unrouted.clone()),
            (
                topic("readings"),
                codec::encode_postcard(&envelope(&dev, 3..6)).unwrap(),
            ),
        ],
    )
    .await;

    let readings = read_until(
        &s.kafka_brokers,
        &setup.readings_topic(),
        Duration::from_secs(60),
        |r| readings_in(r).len() >= 6,
    )
    .await;
    let mut seqs: Vec<u32> = readings_in(&readings).keys().map(|k| k.2).collect();
    seqs.sort();
    assert_eq!(
        seqs,
        [0, 1, 2, 3, 4, 5],
        "the readings after the oversized message flow"
    );
    let quarantined = read_until(
        &s.kafka_brokers,
        &setup.quarantine_topic(),
        Duration::from_secs(30),
        |r| r.len() >= 2,
    )
    .await;
    let reason_of = |t: &str| {
        let q = quarantined
            .iter()
            .find(|q| q.headers.get("mqtt-topic").map(String::as_str) == Some(t))
            .unwrap_or_else(|| panic!("no quarantine record for {t}: {quarantined:?}"));
        (
            q.headers["reason"].clone(),
            q.headers["detail"].clone(),
            q.payload.clone(),
        )
    };
    let (reason, detail, payload) = reason_of(&topic("readings/json"));
    assert_eq!(reason, "too_large");
    assert!(detail.contains(&oversized.len().to_string()), "{detail}");
    assert_eq!(payload, oversized[..4096], "the first 4 KiB are kept");
    let (reason, _, payload) = reason_of(&topic("readings/json/extra"));
    assert_eq!(reason, "unknown_topic");
    assert_eq!(payload, unrouted);
    assert_eq!(quarantined.len(), 2);

    assert_eq!(
        bridge.metric("hb_bridge_mqtt_connects_total"),
        Some(1.0),
        "one connection"
    );
    bridge.stop(Duration::from_secs(20));
}

/// A device sending garbage decides how many warnings the bridge would log: one
/// line per message once meant 100 000 lines for 100 000 bad messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_100000_bad_messages_logs_a_bounded_number_of_lines() {
    let s = Services::from_env();
    let setup = Setup::new(&s);
    let mut bridge = setup.bridge(&s, &s.mqtt_url, &s.kafka_brokers, &unique("b"), &[]);
    let topic = format!("{}/v1/devices/{}-0/readings", setup.root, setup.devices);
    let before = bridge.output().lines().count();
    let flood = (0..100_000).map(|_| (topic.clone(), Vec::new())).collect();
    publish_all(&s, &s.mqtt_url, flood).await;
    hb_testkit::eventually("all quarantined", Duration::from_secs(180), || async {
        let (_, metrics) = bridge.http_get("/metrics");
        metrics
            .lines()
            .any(|l| l == "hb_bridge_quarantined_total{reason=\"empty_payload\"} 100000")
            .then_some(())
    })
    .await;
    let out = bridge.output();
    let lines = out.lines().count() - before;
    assert!(
        lines <= 20,
        "{lines} log lines for 100 000 bad messages:\n{out}"
    );
    bridge.stop(Duration::from_secs(20));
}
