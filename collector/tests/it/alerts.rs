//! Alert episodes through the collector: readings produced to Kafka become
//! exactly one alert per episode in PostgreSQL, with one `hb.alerts.v1` record
//! per transition; a collector killed mid-episode adds no duplicate; a silent
//! device goes offline and its next reading brings it back.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::common::{produce_all, reading, record, Setup};
use hb_shared::Readings;
use hb_testkit::kafka::{create_topic, read_until};
use hb_testkit::now_ms;
use hb_testkit::{connect, eventually, fresh_database, Services};

/// A readings topic of `partitions`, the alerts topic, and a fresh database.
async fn alert_setup(s: &Services, partitions: i32) -> (Setup, String) {
    let setup = Setup::new(s, &s.kafka_brokers, partitions).await;
    create_topic(
        &s.kafka_brokers,
        &format!("{}hb.alerts.v1", setup.prefix),
        1,
    )
    .await;
    (setup, fresh_database(s).await)
}

/// Readings of `device` at 1 Hz from `base_ms`, one per BPM in `bpms` starting at
/// `first_seq`, in envelopes of 10.
fn series(
    device: &str,
    first_seq: u32,
    base_ms: i64,
    bpms: &[u16],
) -> Vec<(String, Vec<u8>, &'static str)> {
    series_flagged(device, first_seq, base_ms, bpms, false)
}

/// [`series`], sent from a backlog (`backfill`) or live.
fn series_flagged(
    device: &str,
    first_seq: u32,
    base_ms: i64,
    bpms: &[u16],
    backfill: bool,
) -> Vec<(String, Vec<u8>, &'static str)> {
    bpms.chunks(10)
        .enumerate()
        .map(|(c, chunk)| {
            let mut r = Readings::new();
            for (i, &bpm) in chunk.iter().enumerate() {
                let seq = first_seq + (c * 10 + i) as u32;
                let mut one = reading(seq, bpm, base_ms + i64::from(seq) * 1000);
                one.backfill = backfill;
                r.push(one).unwrap();
            }
            record(device, r)
        })
        .collect()
}

/// `n` readings at `bpm`.
fn at(bpm: u16, n: usize) -> Vec<u16> {
    vec![bpm; n]
}

fn episode(normal_before: usize, bpm: u16, len: usize, normal_after: usize) -> Vec<u16> {
    [at(70, normal_before), at(bpm, len), at(70, normal_after)].concat()
}

#[derive(Debug, PartialEq)]
struct Alert {
    kind: String,
    severity: String,
    onset_s: i64,
    opened_s: i64,
    closed_s: Option<i64>,
    peak_bpm: Option<i32>,
    retrospective: bool,
}

/// The device's alerts, times in seconds after `base_ms`.
async fn alerts(db: &tokio_postgres::Client, device: &str, base_ms: i64) -> Vec<Alert> {
    let secs = |t: SystemTime| {
        (t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
            - base_ms)
            / 1000
    };
    db.query(
        "SELECT kind, severity, onset_at, opened_at, closed_at, peak_bpm, retrospective \
         FROM alerts WHERE device_id = $1 ORDER BY id",
        &[&device],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| Alert {
        kind: r.get(0),
        severity: r.get(1),
        onset_s: secs(r.get(2)),
        opened_s: secs(r.get(3)),
        closed_s: r.get::<_, Option<SystemTime>>(4).map(secs),
        peak_bpm: r.get(5),
        retrospective: r.get(6),
    })
    .collect()
}

/// The device's transitions as `(transition, ordinal, severity)`, in order.
async fn transitions(db: &tokio_postgres::Client, device: &str) -> Vec<(String, i32, String)> {
    db.query(
        "SELECT t.transition, t.ordinal, t.severity FROM alert_transitions t \
         JOIN alerts a ON a.id = t.alert_id WHERE a.device_id = $1 ORDER BY t.id",
        &[&device],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// A count; 0 until the collector has created the tables.
async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.map_or(0, |r| r.get(0))
}

/// Waits until at least one `device_offline` alert is open (`open`) or closed.
async fn until_offline(db: &tokio_postgres::Client, open: bool, what: &str) {
    let sql = if open {
        "SELECT count(*) FROM alerts WHERE kind = 'device_offline' AND closed_at IS NULL"
    } else {
        "SELECT count(*) FROM alerts WHERE kind = 'device_offline' AND closed_at IS NOT NULL"
    };
    eventually(what, Duration::from_secs(30), || async {
        (count(db, sql).await >= 1).then_some(())
    })
    .await;
}

/// Distinct `transition_id`s on the alerts topic, once it holds `n` of them (the
/// topic is at least once: a repeat is allowed, a missing transition is not).
async fn published(brokers: &str, setup: &Setup, n: usize) -> BTreeSet<String> {
    let topic = format!("{}hb.alerts.v1", setup.prefix);
    let ids = |records: &[hb_testkit::kafka::Record]| -> BTreeSet<String> {
        records
            .iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                assert_eq!(r.key.as_deref(), v["device_id"].as_str(), "keyed by device");
                v["transition_id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let records = read_until(brokers, &topic, Duration::from_secs(60), |r| {
        ids(r).len() >= n
    })
    .await;
    ids(&records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_episode_in_normal_data_is_exactly_one_alert_with_one_record_per_transition() {
    let s = Services::from_env();
    let (setup, db_url) = alert_setup(&s, 2).await;
    let base = now_ms() - 200_000;
    let (brady, tachy, normal) = (setup.device(0), setup.device(1), setup.device(2));
    let mut recs = series(&brady, 0, base, &episode(30, 45, 60, 60));
    // Tachycardia that reaches the high band for 20 s in the middle.
    let tachy_bpms = [
        at(70, 30),
        at(120, 20),
        at(140, 20),
        at(120, 40),
        at(70, 40),
    ]
    .concat();
    recs.extend(series(&tachy, 0, base, &tachy_bpms));
    recs.extend(series(&normal, 0, base, &at(70, 150)));
    // The same bradycardia sent from a backlog: a retrospective alert.
    let backlog = setup.device(3);
    recs.extend(series_flagged(
        &backlog,
        0,
        base,
        &episode(30, 45, 60, 60),
        true,
    ));
    produce_all(&s.kafka_brokers, &setup, &recs).await;
    // Readings 200 s old count as live here; nobody goes offline during the test.
    let mut collector = setup.collector(
        &s.kafka_brokers,
        &db_url,
        &[],
        &["--late-after-s", "86400", "--offline-after-s", "3600"],
    );
    let db = connect(&db_url).await;
    eventually(
        "every transition written and published",
        Duration::from_secs(60),
        || async {
            let done = count(&db, "SELECT count(*) FROM alert_transitions").await == 8
                && count(&db, "SELECT count(*) FROM alert_outbox").await == 0;
            done.then_some(())
        },
    )
    .await;
    assert_eq!(
        alerts(&db, &brady, base).await,
        [Alert {
            kind: "bradycardia".into(),
            severity: "medium".into(),
            onset_s: 30,
            opened_s: 40,
            closed_s: Some(120), // 70 BPM from 90 s, held 30 s
            peak_bpm: Some(45),
            retrospective: false,
        }]
    );
    assert_eq!(
        transitions(&db, &brady).await,
        [
            ("open".into(), 0, "medium".into()),
            ("close".into(), 1, "medium".into())
        ]
    );
    // Opens medium at 40 s, high from 50 s held 10 s (60 s), back to medium from
    // 70 s held 30 s (100 s), clear from 110 s held 30 s (140 s).
    assert_eq!(
        transitions(&db, &tachy).await,
        [
            ("open".into(), 0, "medium".into()),
            ("escalate".into(), 1, "high".into()),
            ("deescalate".into(), 2, "medium".into()),
            ("close".into(), 3, "medium".into()),
        ]
    );
    let t = alerts(&db, &tachy, base).await;
    assert_eq!(
        (t[0].opened_s, t[0].closed_s, t[0].peak_bpm),
        (40, Some(140), Some(140))
    );
    assert!(alerts(&db, &normal, base).await.is_empty());
    let retro = alerts(&db, &backlog, base).await;
    assert_eq!(retro.len(), 1);
    assert!(
        retro[0].retrospective,
        "backfilled readings make retrospective alerts"
    );
    assert_eq!((retro[0].opened_s, retro[0].closed_s), (40, Some(120)));
    let ids = published(&s.kafka_brokers, &setup, 8).await;
    assert_eq!(ids.len(), 8, "{ids:?}");
    assert!(
        ids.contains(&format!("{backlog}/bradycardia/1/30/r#1")),
        "{ids:?}"
    );
    assert!(
        ids.contains(&format!("{brady}/bradycardia/1/30#0")),
        "{ids:?}"
    );
    assert_eq!(
        collector.metric("hb_collector_alert_transitions_total"),
        Some(8.0)
    );
    collector.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_killed_mid_episode_leaves_one_alert_and_no_duplicate_transition() {
    let s = Services::from_env();
    let (setup, db_url) = alert_setup(&s, 1).await;
    let base = now_ms() - 200_000;
    let device = setup.device(0);
    produce_all(
        &s.kafka_brokers,
        &setup,
        &series(&device, 0, base, &episode(30, 45, 60, 60)),
    )
    .await;
    let args = [
        "--late-after-s",
        "86400",
        "--offline-after-s",
        "3600",
        "--batch-max-readings",
        "20",
    ];
    // Batches of 20 readings; the third (readings 40–59, where the alert opens)
    // commits, and the process aborts before storing its offsets: Kafka delivers
    // it again to the next collector.
    let mut crashing = setup.collector(
        &s.kafka_brokers,
        &db_url,
        &[("HB_FAULT_ABORT_AFTER_COMMITS", "3")],
        &args,
    );
    let status = crashing.wait(Duration::from_secs(60));
    assert!(!status.success(), "the fault point must abort the process");
    let db = connect(&db_url).await;
    assert!(count(&db, "SELECT count(*) FROM readings").await >= 60);
    assert_eq!(
        transitions(&db, &device).await.len(),
        1,
        "opened before the crash"
    );

    let mut collector = setup.collector(&s.kafka_brokers, &db_url, &[], &args);
    eventually(
        "the episode closed and published",
        Duration::from_secs(60),
        || async {
            let done = count(&db, "SELECT count(*) FROM readings").await == 150
                && count(&db, "SELECT count(*) FROM alert_outbox").await == 0
                && transitions(&db, &device).await.len() >= 2;
            done.then_some(())
        },
    )
    .await;
    assert!(
        collector
            .metric("hb_collector_duplicates_total")
            .unwrap_or(0.0)
            >= 20.0
    );
    assert_eq!(alerts(&db, &device, base).await.len(), 1);
    assert_eq!(
        transitions(&db, &device).await,
        [
            ("open".into(), 0, "medium".into()),
            ("close".into(), 1, "medium".into())
        ]
    );
    assert_eq!(published(&s.kafka_brokers, &setup, 2).await.len(), 2);
    collector.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_goes_offline_and_its_next_reading_brings_it_back() {
    let s = Services::from_env();
    let (setup, db_url) = alert_setup(&s, 1).await;
    let device = setup.device(0);
    let base = now_ms() - 10_000;
    produce_all(
        &s.kafka_brokers,
        &setup,
        &series(&device, 0, base, &at(70, 10)),
    )
    .await;
    let mut collector =
        setup.collector(&s.kafka_brokers, &db_url, &[], &["--offline-after-s", "2"]);
    let db = connect(&db_url).await;
    until_offline(&db, true, "device_offline opened").await;
    produce_all(
        &s.kafka_brokers,
        &setup,
        &series(&device, 10, now_ms() - 10_000, &at(70, 1)),
    )
    .await;
    until_offline(&db, false, "device_offline closed").await;
    let t = transitions(&db, &device).await;
    assert_eq!(
        &t[..2],
        [
            ("open".into(), 0, "none".into()),
            ("close".into(), 1, "none".into())
        ]
    );
    assert!(published(&s.kafka_brokers, &setup, 2).await.len() >= 2);
    collector.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_will_opens_device_offline_at_once_and_the_next_reading_closes_it() {
    let s = Services::from_env();
    let (setup, db_url) = alert_setup(&s, 1).await;
    let status_topic = format!("{}hb.device-status.v1", setup.prefix);
    create_topic(&s.kafka_brokers, &status_topic, 1).await;
    let (device, other) = (setup.device(0), setup.device(1));
    let mut recs = series(&device, 0, now_ms() - 10_000, &at(70, 10));
    recs.extend(series(&other, 0, now_ms() - 10_000, &at(70, 10)));
    produce_all(&s.kafka_brokers, &setup, &recs).await;
    // Silence alone would take an hour here.
    let mut collector = setup.collector(
        &s.kafka_brokers,
        &db_url,
        &[],
        &["--offline-after-s", "3600"],
    );
    let db = connect(&db_url).await;
    eventually("readings stored", Duration::from_secs(30), || async {
        (count(&db, "SELECT count(*) FROM readings").await == 20).then_some(())
    })
    .await;
    let will = |state: hb_shared::Presence| {
        let status = hb_shared::DeviceStatus {
            state,
            ..hb_shared::DeviceStatus::offline(1)
        };
        (device.clone(), status.to_json(), "application/json")
    };
    // An online status changes nothing; the Last Will opens device_offline.
    hb_testkit::kafka::produce(
        &s.kafka_brokers,
        &status_topic,
        &[will(hb_shared::Presence::Online)],
    )
    .await;
    hb_testkit::kafka::produce(
        &s.kafka_brokers,
        &status_topic,
        &[will(hb_shared::Presence::Offline)],
    )
    .await;
    until_offline(&db, true, "device_offline opened by the will").await;
    produce_all(
        &s.kafka_brokers,
        &setup,
        &series(&device, 10, now_ms() - 10_000, &at(70, 1)),
    )
    .await;
    until_offline(&db, false, "device_offline closed by the next reading").await;
    assert_eq!(
        transitions(&db, &device).await,
        [
            ("open".into(), 0, "none".into()),
            ("close".into(), 1, "none".into())
        ]
    );
    assert!(
        transitions(&db, &other).await.is_empty(),
        "only the device whose will fired"
    );
    collector.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_catching_up_on_a_backlog_does_not_page_its_devices_as_offline() {
    let s = Services::from_env();
    let (setup, db_url) = alert_setup(&s, 2).await;
    let devices: Vec<String> = (0..20).map(|i| setup.device(i)).collect();
    let mut recs = Vec::new();
    for d in &devices {
        recs.extend(series(d, 0, now_ms() - 10_000, &at(70, 10)));
    }
    produce_all(&s.kafka_brokers, &setup, &recs).await;
    let args = ["--offline-after-s", "5", "--batch-max-readings", "500"];
    let mut first = setup.collector(&s.kafka_brokers, &db_url, &[], &args);
    let db = connect(&db_url).await;
    eventually(
        "the first readings stored",
        Duration::from_secs(30),
        || async { (count(&db, "SELECT count(*) FROM readings").await == 200).then_some(()) },
    )
    .await;
    first.stop(Duration::from_secs(20));
    // The collector is away longer than the offline delay while the devices go on
    // sending: a backlog of 20 × 3000 readings waits in Kafka.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut backlog = Vec::new();
    for d in &devices {
        // Measured over the last 50 minutes (stored as backfill: it arrives late).
        backlog.extend(series(d, 10, now_ms() - 3_100_000, &at(70, 3000)));
    }
    produce_all(&s.kafka_brokers, &setup, &backlog).await;
    let before = count(&db, "SELECT coalesce(max(id), 0) FROM alerts").await;
    let mut second = setup.collector(&s.kafka_brokers, &db_url, &[], &args);
    eventually("the backlog stored", Duration::from_secs(60), || async {
        (count(&db, "SELECT count(*) FROM readings").await == 20 * 3010).then_some(())
    })
    .await;
    // An offline alert the second collector opened while the device's readings
    // still waited in Kafka was closed by them: a false page. (Once a partition's
    // backlog is done, its devices really are silent and may go offline; those
    // alerts stay open.)
    let false_pages = db
        .query_one(
            "SELECT count(*) FROM alerts WHERE kind = 'device_offline' AND id > $1 \
             AND closed_at IS NOT NULL",
            &[&before],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(false_pages, 0, "devices paged as offline during catch-up");
    second.stop(Duration::from_secs(20));
}
