//! Shared set-up of the bridge's integration tests: a bridge process on its own
//! topic root, share group and Kafka prefix, a simulated fleet feeding it, and the
//! readings read back from Kafka.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hb_shared::{codec, ContentType};
use hb_testkit::kafka::{read_until, Record};
use hb_testkit::{unique, Process, Services};

/// Names one test's slice of the shared brokers.
pub struct Setup {
    pub root: String,
    pub prefix: String,
    pub group: String,
    pub devices: String,
    pub work: PathBuf,
}

impl Setup {
    pub fn new(s: &Services) -> Self {
        Self {
            root: unique("t"),
            prefix: format!("{}.", unique("t")),
            group: unique("g"),
            devices: unique("d"),
            work: s.work_dir.join(unique("bridge-")),
        }
    }

    pub fn readings_topic(&self) -> String {
        format!("{}hb.readings.v1", self.prefix)
    }

    pub fn quarantine_topic(&self) -> String {
        format!("{}hb.quarantine.v1", self.prefix)
    }

    /// Starts a bridge; waits until it is subscribed.
    pub fn bridge(
        &self,
        s: &Services,
        mqtt_url: &str,
        kafka: &str,
        instance: &str,
        extra: &[&str],
    ) -> Process {
        let mut args: Vec<String> = [
            "--mqtt-url",
            mqtt_url,
            "--kafka-brokers",
            kafka,
            "--kafka-topic-prefix",
            &self.prefix,
            "--kafka-partitions",
            "3",
            "--mqtt-topic-root",
            &self.root,
            "--mqtt-share-group",
            &self.group,
            "--instance-id",
            instance,
            "--mqtt-username",
            "hb-bridge",
            "--shutdown-timeout-ms",
            "5000",
            "--http-addr",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut p = Process::start(
            "bridge",
            Path::new(env!("CARGO_BIN_EXE_hb-bridge")),
            &args,
            &[("HB_MQTT_PASSWORD", &s.mqtt_bridge_password)],
            &self.work,
        );
        // Healthy once Kafka's topics exist and the broker granted the subscription.
        p.wait_until_healthy(Duration::from_secs(60));
        p
    }

    /// Starts a simulated fleet (`hb-agent`, built by `scripts/test.sh`). No
    /// collector runs in the bridge's tests, so it releases readings on PUBACK.
    pub fn agent(
        &self,
        s: &Services,
        mqtt_url: &str,
        devices: u32,
        rate_hz: u32,
        count: u32,
    ) -> Process {
        let args: Vec<String> = [
            "--mqtt-url",
            mqtt_url,
            "--mqtt-topic-root",
            &self.root,
            "--device-id-template",
            &format!("{}-{{index}}", self.devices),
            "--devices",
            &devices.to_string(),
            "--rate-hz",
            &rate_hz.to_string(),
            "--count",
            &count.to_string(),
            "--mqtt-username",
            "hb-sim",
            "--connect-stagger-ms",
            "200",
            "--confirm",
            "puback",
            "--state-dir",
            self.work.join("agent-state").to_str().unwrap(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        Process::start(
            "agent",
            &hb_testkit::bin("hb-agent"),
            &args,
            &[("HB_MQTT_PASSWORD", &s.mqtt_sim_password)],
            &self.work,
        )
    }
}

/// `(device, epoch, seq)` → how many times it is in the readings topic.
pub fn readings_in(records: &[Record]) -> HashMap<(String, u32, u32), u32> {
    let mut seen = HashMap::new();
    for r in records {
        let ct = r
            .headers
            .get("content-type")
            .and_then(|v| ContentType::from_header(v.as_bytes()))
            .expect("content-type header");
        let e = codec::decode(ct, &r.payload).expect("only valid envelopes in the readings topic");
        assert_eq!(
            r.key.as_deref(),
            Some(e.device_id.as_str()),
            "key = device id"
        );
        for reading in &e.readings {
            *seen
                .entry((e.device_id.to_string(), reading.epoch, reading.seq))
                .or_insert(0) += 1;
        }
    }
    seen
}

/// Reads the readings topic until every reading of `devices` × `count` (epoch 1)
/// is there; returns the counts.
pub async fn all_readings(
    kafka: &str,
    setup: &Setup,
    devices: u32,
    count: u32,
    timeout: Duration,
) -> HashMap<(String, u32, u32), u32> {
    let expected = (devices * count) as usize;
    let records = read_until(kafka, &setup.readings_topic(), timeout, |r| {
        readings_in(r).len() >= expected
    })
    .await;
    let seen = readings_in(&records);
    let mut missing = Vec::new();
    for d in 0..devices {
        for seq in 0..count {
            let k = (format!("{}-{d}", setup.devices), 1, seq);
            if !seen.contains_key(&k) {
                missing.push(k);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {expected} readings missing from Kafka, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    seen
}
