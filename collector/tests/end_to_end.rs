//! The whole pipeline with real processes and services: simulated agents →
//! Mosquitto → hb-bridge → Kafka (tansu) → hb-collector → PostgreSQL. The assertion
//! is exact: every generated `(device_id, epoch, seq)` is stored exactly once.

use std::time::Duration;

use hb_testkit::{bin, connect, eventually, fresh_database, unique, Process, Services};

const DEVICES: i64 = 50;
const READINGS: i64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_of_a_fleet_is_stored_exactly_once() {
    let s = Services::from_env();
    let db = fresh_database(&s).await;
    let root = unique("t");
    let prefix = format!("{}.", unique("t"));
    let device_prefix = unique("d");
    let work = s.work_dir.join(unique("e2e-"));

    let common = |extra: &[&str]| -> Vec<String> { extra.iter().map(|a| a.to_string()).collect() };
    let mut bridge = Process::start(
        "bridge",
        &bin("hb-bridge"),
        &common(&[
            "--mqtt-url",
            &s.mqtt_url,
            "--kafka-brokers",
            &s.kafka_brokers,
            "--kafka-topic-prefix",
            &prefix,
            "--kafka-partitions",
            "3",
            "--mqtt-topic-root",
            &root,
            "--instance-id",
            &unique("b"),
            "--mqtt-username",
            "hb-bridge",
            "--http-addr",
            "127.0.0.1:0",
        ]),
        &[("HB_MQTT_PASSWORD", &s.mqtt_bridge_password)],
        &work,
    );
    // Messages published before the bridge's (first) subscription exists would
    // have no subscriber to be queued for.
    bridge.wait_for_output("Subscribed to MQTT topics.", Duration::from_secs(60));

    let mut collector = Process::start(
        "collector",
        &bin("hb-collector"),
        &common(&[
            "--database-url",
            &db,
            "--kafka-brokers",
            &s.kafka_brokers,
            "--kafka-topic-prefix",
            &prefix,
            "--kafka-group",
            &unique("g"),
            "--batch-max-wait-ms",
            "100",
            "--http-addr",
            "127.0.0.1:0",
        ]),
        &[],
        &work,
    );

    let mut agent = Process::start(
        "agent",
        &bin("hb-agent"),
        &common(&[
            "--devices",
            &DEVICES.to_string(),
            "--rate-hz",
            "10",
            "--count",
            &READINGS.to_string(),
            "--mqtt-url",
            &s.mqtt_url,
            "--mqtt-topic-root",
            &root,
            "--device-id-template",
            &format!("{device_prefix}-{{index}}"),
            "--state-dir",
            work.join("agent-state").to_str().unwrap(),
            "--connect-stagger-ms",
            "500",
            "--mqtt-username",
            "hb-sim",
        ]),
        &[("HB_MQTT_PASSWORD", &s.mqtt_sim_password)],
        &work,
    );
    let status = agent.wait(Duration::from_secs(120));
    assert!(status.success(), "agent failed:\n{}", agent.output());

    let client = connect(&db).await;
    let expected = DEVICES * READINGS;
    let stored: i64 = eventually(
        "all readings in PostgreSQL",
        Duration::from_secs(120),
        || async {
            let n: i64 = client
                .query_one("SELECT count(*) FROM readings", &[])
                .await
                .ok()?
                .get(0);
            (n >= expected).then_some(n)
        },
    )
    .await;
    // Let any straggling duplicate arrive before the exact check.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT (device_id, epoch, seq)), count(DISTINCT device_id) FROM readings",
            &[],
        )
        .await
        .unwrap();
    let (rows, distinct, devices): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (stored, rows, distinct, devices),
        (expected, expected, expected, DEVICES)
    );
    let per_device = client
        .query(
            "SELECT device_id, count(*), min(seq), max(seq), min(epoch), max(epoch) FROM readings GROUP BY device_id",
            &[],
        )
        .await
        .unwrap();
    for r in per_device {
        let device: String = r.get(0);
        assert!(
            device.starts_with(&device_prefix),
            "foreign device {device}"
        );
        let (n, min_seq, max_seq, min_epoch, max_epoch): (i64, i64, i64, i64, i64) =
            (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        assert_eq!(
            (n, min_seq, max_seq),
            (READINGS, 0, READINGS - 1),
            "{device}"
        );
        assert_eq!((min_epoch, max_epoch), (1, 1), "{device}");
    }
    let devices_known: i64 = client
        .query_one(
            "SELECT count(*) FROM devices WHERE last_seq = 19 AND last_epoch = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        devices_known, DEVICES,
        "the device registry knows every device's latest reading"
    );
    let quarantined: i64 = client
        .query_one("SELECT count(*) FROM quarantine", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(quarantined, 0);

    bridge.stop(Duration::from_secs(20));
    collector.stop(Duration::from_secs(20));
}
