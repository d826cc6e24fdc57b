//! The agent keeps every reading through broker outages, its own SIGKILL and a
//! corrupt spool tail. Each test has its own Mosquitto (so it can stop it), its own
//! topic root and state directory; a recording subscriber is the receiving side.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hb_testkit::mqtt::{Mosquitto, ReadingSubscriber, SeenReadings};
use hb_testkit::{eventually, unique, Process, Services};

struct Agent {
    root: String,
    prefix: String,
    state: PathBuf,
    work: PathBuf,
}

impl Agent {
    fn new(s: &Services) -> Self {
        let work = s.work_dir.join(unique("agent-"));
        Self {
            root: unique("t"),
            prefix: unique("d"),
            state: work.join("state"),
            work,
        }
    }

    fn start(
        &self,
        s: &Services,
        mqtt_url: &str,
        devices: u32,
        rate_hz: u32,
        count: u32,
    ) -> Process {
        self.start_limited(s, mqtt_url, devices, rate_hz, count, None)
    }

    fn start_limited(
        &self,
        s: &Services,
        mqtt_url: &str,
        devices: u32,
        rate_hz: u32,
        count: u32,
        open_files: Option<u32>,
    ) -> Process {
        let (devices, rate_hz, count) =
            (devices.to_string(), rate_hz.to_string(), count.to_string());
        let template = format!("{}-{{index}}", self.prefix);
        let args = [
            "--devices",
            &devices,
            "--rate-hz",
            &rate_hz,
            "--count",
            &count,
            "--mqtt-url",
            mqtt_url,
            "--mqtt-topic-root",
            &self.root,
            "--device-id-template",
            &template,
            "--connect-stagger-ms",
            "100",
            "--spool-sync-interval-ms",
            "50",
        ];
        match open_files {
            None => crate::common::start_agent(s, &self.state, &args, &self.work),
            limit => crate::common::start_agent_limited(s, &self.state, &args, &self.work, limit),
        }
    }

    fn device(&self, index: u32) -> String {
        format!("{}-{index}", self.prefix)
    }
}

/// Panics unless every `(device, epoch, seq)` in `expected` was received.
fn assert_all_received(seen: &SeenReadings, expected: &[(String, u32, std::ops::Range<u32>)]) {
    let mut missing = Vec::new();
    for (device, epoch, seqs) in expected {
        for seq in seqs.clone() {
            if !seen.contains_key(&(device.clone(), *epoch, seq)) {
                missing.push((device.clone(), *epoch, seq));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} readings missing, first: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

fn count_complete(seen: &SeenReadings, expected: &[(String, u32, std::ops::Range<u32>)]) -> usize {
    expected
        .iter()
        .flat_map(|(d, e, r)| r.clone().map(move |s| (d.clone(), *e, s)))
        .filter(|k| seen.contains_key(k))
        .count()
}

/// Waits, off the runtime, for the agent to exit: its status and output.
async fn exited(mut agent: Process, timeout: Duration) -> (ExitStatus, String) {
    tokio::task::spawn_blocking(move || (agent.wait(timeout), agent.output()))
        .await
        .unwrap()
}

/// Waits until the subscriber has seen every reading of `expected`, checks each,
/// and returns what it saw.
async fn all_arrive(
    sub: &ReadingSubscriber,
    expected: &[(String, u32, std::ops::Range<u32>)],
) -> SeenReadings {
    let total: usize = expected.iter().map(|(_, _, r)| r.len()).sum();
    eventually(
        "every reading at the subscriber",
        Duration::from_secs(30),
        || async { (count_complete(&sub.seen(), expected) == total).then_some(()) },
    )
    .await;
    let seen = sub.seen();
    assert_all_received(&seen, expected);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_second_broker_outage_loses_nothing_and_the_backlog_arrives_as_backfill() {
    let s = Services::from_env();
    let mut broker = Mosquitto::start(&s);
    let agent = Agent::new(&s);
    let sub = ReadingSubscriber::start(&s, &broker.url, &agent.root).await;
    let (devices, rate, count) = (3u32, 20u32, 1000u32); // 50 s of readings
    let a = agent.start(&s, &broker.url, devices, rate, count);
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.stop();
    tokio::time::sleep(Duration::from_secs(30)).await;
    broker.resume();
    let (status, output) = exited(a, Duration::from_secs(120)).await;
    assert!(
        status.success(),
        "agent failed:
{output}"
    );
    let expected: Vec<_> = (0..devices)
        .map(|i| (agent.device(i), 1, 0..count))
        .collect();
    let total = (devices * count) as usize;
    let seen = all_arrive(&sub, &expected).await;
    // About 30 s × 20 Hz per device were taken during the outage: sent later, as backfill.
    let backfill = seen.values().filter(|v| v.backfill).count();
    assert!(
        backfill >= (devices * 20 * 25) as usize,
        "only {backfill} readings were flagged backfill"
    );
    assert!(backfill < total, "live readings were flagged backfill too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_agent_resends_its_spool_after_restart_and_never_reuses_a_number() {
    let s = Services::from_env();
    let mut broker = Mosquitto::prepare(&s); // down while the first run records
    let agent = Agent::new(&s);
    let mut first = agent.start(&s, &broker.url, 2, 50, 300);
    tokio::time::sleep(Duration::from_secs(8)).await; // 300 readings at 50 Hz, spooled
    first.signal("KILL");
    let _ = first.wait(Duration::from_secs(10));

    broker.resume();
    let sub = ReadingSubscriber::start(&s, &broker.url, &agent.root).await;
    let second = agent.start(&s, &broker.url, 2, 50, 100);
    let (status, output) = exited(second, Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "agent failed:
{output}"
    );
    let mut expected = Vec::new();
    for i in 0..2 {
        expected.push((agent.device(i), 1, 0..300)); // the killed run, from the spool
        expected.push((agent.device(i), 2, 0..100)); // the restart: a new epoch
    }
    let seen = all_arrive(&sub, &expected).await;
    assert!(
        seen.keys().all(|(_, epoch, _)| *epoch == 1 || *epoch == 2),
        "unexpected epoch"
    );
    assert!(
        seen.iter()
            .filter(|((_, e, _), _)| *e == 1)
            .all(|(_, v)| v.backfill),
        "readings from the spool must be flagged backfill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_spool_tail_is_skipped_counted_and_the_rest_delivered() {
    let s = Services::from_env();
    let mut broker = Mosquitto::prepare(&s);
    let agent = Agent::new(&s);
    let mut first = agent.start(&s, &broker.url, 1, 50, 100);
    tokio::time::sleep(Duration::from_secs(4)).await;
    first.signal("KILL");
    let _ = first.wait(Duration::from_secs(10));
    let segment = agent
        .state
        .join("devices")
        .join(agent.device(0))
        .join("spool")
        .join("0000000001-0000000000.seg");
    let mut bytes = std::fs::read(&segment).expect("segment file exists");
    bytes.extend_from_slice(&[0x30, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]); // a torn record
    std::fs::write(&segment, bytes).unwrap();

    broker.resume();
    let sub = ReadingSubscriber::start(&s, &broker.url, &agent.root).await;
    let second = agent.start(&s, &broker.url, 1, 50, 0);
    let (status, output) = exited(second, Duration::from_secs(60)).await;
    assert!(status.success(), "agent failed:\n{output}");
    assert!(
        output.contains("Skipped a torn or corrupt spool tail."),
        "{output}"
    );
    assert!(output.contains("corrupt_tails=1"), "{output}");
    let expected = vec![(agent.device(0), 1, 0..100)];
    all_arrive(&sub, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_near_the_open_file_limit_loses_nothing_and_one_beyond_it_is_refused_at_start() {
    let s = Services::from_env();
    let broker = Mosquitto::start(&s);
    // 300 descriptors: 200 sockets and the reserve fit, a spool segment per device
    // (and a lock file per device, as before) do not. Most spools must open their
    // segment for each append.
    let limit = 300;
    let agent = Agent::new(&s);
    let sub = ReadingSubscriber::start(&s, &broker.url, &agent.root).await;
    let (devices, rate, count) = (200u32, 10u32, 50u32);
    let a = agent.start_limited(&s, &broker.url, devices, rate, count, Some(limit));
    let (status, output) = exited(a, Duration::from_secs(120)).await;
    assert!(status.success(), "agent failed:\n{output}");
    assert!(!output.contains("Too many open files"), "{output}");
    let expected: Vec<_> = (0..devices)
        .map(|i| (agent.device(i), 1, 0..count))
        .collect();
    all_arrive(&sub, &expected).await;

    let too_many = Agent::new(&s);
    let b = too_many.start_limited(&s, &broker.url, limit, rate, count, Some(limit));
    let (status, output) = exited(b, Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "a fleet beyond the limit started:\n{output}"
    );
    assert!(
        output.contains("300 devices need at least 364 open files and the limit is 300"),
        "{output}"
    );
}

/// Counts the Last Wills (offline statuses with no timestamp, published by the
/// broker when a device's keep-alive lapsed) under `root`.
async fn count_last_wills(s: &Services, url: &str, root: &str) -> Arc<AtomicU32> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let (host, port) = url.trim_start_matches("mqtt://").rsplit_once(':').unwrap();
    let mut o = MqttOptions::new(unique("wills-"), host, port.parse().unwrap());
    o.set_credentials("hb-bridge", s.mqtt_bridge_password.clone());
    let (client, mut el) = AsyncClient::new(o, 10);
    let filter = format!("{root}/v1/devices/+/status");
    let wills = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&wills);
    let (ready, subscribed) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                // A clean session: subscribe again after every (re)connection.
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let (c, f) = (client.clone(), filter.clone());
                    tokio::spawn(async move { c.subscribe(f, QoS::AtLeastOnce).await });
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                // Retained statuses are from before.
                Ok(Event::Incoming(Packet::Publish(p))) if !p.retain => {
                    let st: Option<hb_shared::DeviceStatus> =
                        serde_json::from_slice(&p.payload).ok();
                    if st
                        .is_some_and(|st| st.state == hb_shared::Presence::Offline && st.ts_ms == 0)
                    {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    subscribed.await.unwrap();
    wills
}

/// A spool on a disk that stalls for seconds (an SD card flushing) must stall
/// neither the devices' MQTT connections nor their live readings, while they drain
/// a backlog. The spool's file work once ran on the agent's only runtime thread:
/// each 8-second stall froze every device past its keep-alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_spool_disk_drops_no_connection_and_delays_no_live_reading() {
    let s = Services::from_env();
    let mut broker = Mosquitto::prepare(&s);
    let agent = Agent::new(&s);
    let devices = 100u32;
    // A first run with the broker down leaves a backlog in every spool.
    let first = agent.start(&s, &broker.url, devices, 5, 30);
    tokio::time::sleep(Duration::from_secs(8)).await;
    first.signal("TERM");
    let (status, output) = exited(first, Duration::from_secs(60)).await;
    assert!(status.success(), "first run failed:\n{output}");

    broker.resume();
    let wills = count_last_wills(&s, &broker.url, &agent.root).await;
    let sub = ReadingSubscriber::start(&s, &broker.url, &agent.root).await;
    let (rate, count) = (5u32, 150u32); // 30 s of readings
    let template = format!("{}-{{index}}", agent.prefix);
    let args = [
        "--devices",
        &devices.to_string(),
        "--rate-hz",
        &rate.to_string(),
        "--count",
        &count.to_string(),
        "--mqtt-url",
        &broker.url,
        "--mqtt-topic-root",
        &agent.root,
        "--device-id-template",
        &template,
        "--connect-stagger-ms",
        "100",
        "--mqtt-keep-alive-s",
        "5",
    ];
    // Every 4000th spool write stalls for 8 s: after every 8 s of this fleet's
    // readings, 3 stalls in all, each longer than 1.5 keep-alives.
    let second = crate::common::start_agent_with_env(
        &s,
        &agent.state,
        &args,
        &agent.work,
        &[("HB_FAULT_SPOOL_STALL", "4000,8000")],
    );
    let (status, output) = exited(second, Duration::from_secs(180)).await;
    assert!(status.success(), "agent failed:\n{output}");
    let expected: Vec<_> = (0..devices)
        .map(|i| (agent.device(i), 2, 0..count))
        .collect();
    let seen = all_arrive(&sub, &expected).await;
    for i in 0..devices {
        let backlog = (0..)
            .take_while(|&q| seen.contains_key(&(agent.device(i), 1, q)))
            .count();
        assert!(
            backlog >= 20,
            "device {i}: {backlog} of the first run's readings"
        );
    }
    let live: Vec<i64> = seen
        .iter()
        .filter(|((_, epoch, _), v)| *epoch == 2 && !v.backfill)
        .map(|(_, v)| v.latency_ms)
        .collect();
    let worst = live.iter().copied().max().unwrap_or(0);
    let wills = wills.load(Ordering::Relaxed);
    println!(
        "{} live readings, worst latency {worst} ms; {wills} Last Wills",
        live.len()
    );
    assert!(
        live.len() > (devices * rate * 10) as usize,
        "only {} live readings",
        live.len()
    );
    assert_eq!(wills, 0, "keep-alives lapsed");
    assert!(worst <= 2000, "a live reading took {worst} ms");
}
