//! Shared set-up of the collector's integration tests: a readings topic of its
//! own, envelopes produced straight into Kafka (no MQTT needed), collector
//! processes, and exact checks of what PostgreSQL holds.

use std::path::Path;
use std::time::Duration;

use hb_shared::{codec, Contact, DeviceId, Envelope, Reading, Readings};
use hb_testkit::kafka::{create_topic, produce};
use hb_testkit::{eventually, now_ms, unique, Process, Services};

/// One test's topic, group and device names.
#[derive(Clone)]
pub struct Setup {
    pub prefix: String,
    pub group: String,
    pub devices: String,
    pub work: std::path::PathBuf,
}

impl Setup {
    pub async fn new(s: &Services, brokers: &str, partitions: i32) -> Self {
        let setup = Self::names(s);
        create_topic(brokers, &setup.topic(), partitions).await;
        setup
    }

    /// Fresh names only; the caller creates the topic.
    pub fn names(s: &Services) -> Self {
        Self {
            prefix: format!("{}.", unique("t")),
            group: unique("g"),
            devices: unique("d"),
            work: s.work_dir.join(unique("collector-")),
        }
    }

    pub fn topic(&self) -> String {
        format!("{}hb.readings.v1", self.prefix)
    }

    pub fn device(&self, i: u32) -> String {
        format!("{}-{i}", self.devices)
    }

    /// Starts a collector; `env` for fault injection.
    pub fn collector(
        &self,
        brokers: &str,
        database_url: &str,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Process {
        let mut args: Vec<String> = [
            "--database-url",
            database_url,
            "--kafka-brokers",
            brokers,
            "--kafka-topic-prefix",
            &self.prefix,
            "--kafka-group",
            &self.group,
            "--batch-max-wait-ms",
            "100",
            "--http-addr",
            "127.0.0.1:0",
            // A killed member leaves the group within seconds. Heartbeats at a
            // sixth of the session: tansu evicts a live member whose heartbeat
            // is late, and the default 3 s is half of this session.
            "-X",
            "session.timeout.ms=6000",
            "-X",
            "heartbeat.interval.ms=1000",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        Process::start(
            "collector",
            Path::new(env!("CARGO_BIN_EXE_hb-collector")),
            &args,
            env,
            &self.work,
        )
    }
}

pub fn reading(seq: u32, bpm: u16, ts_ms: i64) -> Reading {
    Reading {
        mono_ms: u64::from(seq) * 1000,
        local_flag: Some(hb_shared::Status::Normal),
        ..Reading::new(1, seq, ts_ms, bpm, Contact::Detected)
    }
}

/// `devices` × `per_device` readings, in envelopes of `per_envelope`, as
/// `(key, postcard payload, content type)` records.
pub fn records(
    setup: &Setup,
    devices: u32,
    per_device: u32,
    per_envelope: u32,
) -> Vec<(String, Vec<u8>, &'static str)> {
    let base = now_ms() - 60_000;
    let mut out = Vec::new();
    for d in 0..devices {
        let id = setup.device(d);
        let mut seq = 0;
        while seq < per_device {
            let mut r = Readings::new();
            for s in seq..(seq + per_envelope).min(per_device) {
                r.push(reading(s, 60 + (s % 40) as u16, base + i64::from(s) * 10))
                    .unwrap();
            }
            seq += per_envelope;
            out.push(record(&id, r));
        }
    }
    out
}

/// One envelope of `device`'s `readings` as a `(key, postcard payload, content
/// type)` record.
pub fn record(device: &str, readings: Readings) -> (String, Vec<u8>, &'static str) {
    let e = Envelope::new(DeviceId::new(device).unwrap(), readings);
    (
        device.to_owned(),
        codec::encode_postcard(&e).unwrap(),
        "application/x-postcard",
    )
}

pub async fn produce_all(brokers: &str, setup: &Setup, records: &[(String, Vec<u8>, &str)]) {
    produce(brokers, &setup.topic(), records).await;
}

/// Waits until `readings` holds `expected` rows, then checks it holds exactly the
/// expected `(device, epoch, seq)`, each once.
pub async fn assert_exactly(
    db: &tokio_postgres::Client,
    setup: &Setup,
    devices: u32,
    per_device: u32,
    timeout: Duration,
) {
    let expected = i64::from(devices * per_device);
    let seen = std::cell::Cell::new(-1i64);
    let waited = tokio::time::timeout(
        timeout,
        eventually("every reading in PostgreSQL", timeout * 2, || async {
            let n: i64 = db
                .query_one("SELECT count(*) FROM readings", &[])
                .await
                .ok()?
                .get(0);
            seen.set(n);
            (n >= expected).then_some(())
        }),
    )
    .await;
    assert!(
        waited.is_ok(),
        "timed out after {timeout:?}: {} of {expected} readings in PostgreSQL",
        seen.get()
    );
    tokio::time::sleep(Duration::from_secs(1)).await; // a straggling duplicate would show now
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT (device_id, epoch, seq)) FROM readings",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (expected, expected),
        "rows, distinct readings"
    );
    let per = db
        .query(
            "SELECT device_id, count(*), min(seq), max(seq) FROM readings GROUP BY device_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(per.len() as u32, devices);
    for r in per {
        let device: String = r.get(0);
        assert!(device.starts_with(&setup.devices));
        assert_eq!(
            (r.get::<_, i64>(1), r.get::<_, i64>(2), r.get::<_, i64>(3)),
            (i64::from(per_device), 0, i64::from(per_device) - 1),
            "{device}"
        );
    }
}
