//! Overload: a broker pushing faster than Kafka confirms. MQTT 3.1.1 has no
//! receive maximum and Mosquitto sends QoS 1 messages without waiting for acks, so
//! the bridge bounds itself: with `--max-inflight` messages taken and not yet
//! acknowledged it stops reading (the broker queues the rest) while it keeps
//! acknowledging and pinging. Checked for a backlog drained at full speed and for
//! a Kafka outage nine keep-alives long: what the bridge holds stays within the
//! window, its memory stays bounded, its MQTT connection never drops, nothing is
//! lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{all_readings, Setup};
use hb_testkit::kafka::Tansu;
use hb_testkit::{unique, Process, Services};

/// The most a bridge held and its largest RSS, sampled until stopped.
#[derive(Debug, Default, Clone, Copy)]
struct Peaks {
    held: f64,
    rss_mib: f64,
    samples: u32,
}

/// Samples a bridge's `/metrics` and RSS every 50 ms on a thread of its own.
struct Sampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<Peaks>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(bridge: Arc<Mutex<Process>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new(Mutex::new(Peaks::default()));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peaks));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                {
                    let b = bridge.lock().unwrap();
                    // One scrape, so that the counters are of one moment.
                    let (_, body) = b.http_get("/metrics");
                    let metrics = hb_testkit::exposition::Exposition::parse(&body).ok();
                    let m =
                        |name: &str| metrics.as_ref().and_then(|e| e.value(name)).unwrap_or(0.0);
                    // Taken and not yet acknowledged, as the MQTT client counts
                    // them. (Received minus acked counters race: an ack is counted
                    // after it is queued, when the next message may be in already.)
                    let held = m("hb_bridge_mqtt_unacked");
                    let rss = b.rss_bytes() as f64 / (1024.0 * 1024.0);
                    let mut p = p.lock().unwrap();
                    p.held = p.held.max(held);
                    p.rss_mib = p.rss_mib.max(rss);
                    p.samples += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Peaks {
        self.halt();
        *self.peaks.lock().unwrap()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sampler {
    /// Also on a failed test: the thread holds the bridge, which is killed only
    /// when its last holder lets go.
    fn drop(&mut self) {
        self.halt();
    }
}

/// Stops `sampler` and checks what every overload must leave: the bridge held
/// at most `window` messages, stayed under 64 MiB and kept its one MQTT
/// connection. Returns the duplicates in `seen`.
fn held_the_window(
    what: &str,
    sampler: Sampler,
    bridge: &Mutex<Process>,
    seen: &HashMap<(String, u32, u32), u32>,
    window: f64,
) -> u32 {
    let peaks = sampler.finish();
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    let connects = bridge
        .lock()
        .unwrap()
        .metric("hb_bridge_mqtt_connects_total");
    println!(
        "{what}: at most {} held, peak RSS {:.1} MiB ({} samples), {duplicates} duplicates, \
         {connects:?} MQTT connections",
        peaks.held, peaks.rss_mib, peaks.samples
    );
    assert!(peaks.samples > 0);
    assert!(
        peaks.held <= window,
        "held {} > window {window}",
        peaks.held
    );
    assert!(peaks.rss_mib < 64.0, "RSS {:.1} MiB", peaks.rss_mib);
    assert_eq!(connects, Some(1.0), "the MQTT connection dropped");
    duplicates
}

/// Waits for the agent to send everything (the broker acknowledged it).
async fn agent_done(mut agent: Process) {
    let (status, out) =
        tokio::task::spawn_blocking(move || (agent.wait(Duration::from_secs(180)), agent.output()))
            .await
            .unwrap();
    assert!(status.success(), "agent failed:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_60000_messages_is_taken_a_window_at_a_time() {
    let s = Services::from_env();
    let setup = Setup::new(&s);
    let instance = unique("b");
    let window = ["--max-inflight", "200"];
    // The persistent session exists, the bridge is away: the broker queues.
    let mut bridge = setup.bridge(&s, &s.mqtt_url, &s.kafka_brokers, &instance, &window);
    bridge.stop(Duration::from_secs(20));
    agent_done(setup.agent(&s, &s.mqtt_url, 100, 100, 600)).await;

    // Back: the broker pushes all 60 000 at once.
    let bridge = Arc::new(Mutex::new(setup.bridge(
        &s,
        &s.mqtt_url,
        &s.kafka_brokers,
        &instance,
        &window,
    )));
    let sampler = Sampler::start(Arc::clone(&bridge));
    let seen = all_readings(&s.kafka_brokers, &setup, 100, 600, Duration::from_secs(180)).await;
    let duplicates = held_the_window("60000-message backlog", sampler, &bridge, &seen, 200.0);
    assert_eq!(duplicates, 0);
    bridge.lock().unwrap().stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_for_nine_keep_alives_keeps_the_mqtt_connection_and_the_window() {
    let s = Services::from_env();
    let tansu = Tansu::start(&s);
    let setup = Setup::new(&s);
    let bridge = Arc::new(Mutex::new(setup.bridge(
        &s,
        &s.mqtt_url,
        &tansu.brokers,
        &unique("b"),
        &["--max-inflight", "100", "--mqtt-keep-alive-s", "5"],
    )));
    let sampler = Sampler::start(Arc::clone(&bridge));
    let agent = setup.agent(&s, &s.mqtt_url, 10, 10, 600); // 60 s of readings
    tokio::time::sleep(Duration::from_secs(5)).await;
    tansu.pause();
    // The bridge takes its window and waits; the broker queues the rest. Its
    // keep-alive must hold with nothing acknowledged for 45 s, and its producer
    // must carry on afterwards (a message timeout once made tansu fence it).
    tokio::time::sleep(Duration::from_secs(45)).await;
    tansu.unpause();
    agent_done(agent).await;
    let seen = all_readings(&tansu.brokers, &setup, 10, 600, Duration::from_secs(180)).await;
    let duplicates = held_the_window("45 s Kafka outage", sampler, &bridge, &seen, 100.0);
    // A produce request that timed out during the outage may have been stored
    // anyway; the producer resends it. At most a window of those.
    assert!(duplicates <= 100, "{duplicates} duplicates");
    bridge.lock().unwrap().stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_stopped_while_kafka_does_not_answer_stops_at_once() {
    let s = Services::from_env();
    let setup = Setup::new(&s);
    let silent = hb_testkit::SilentServer::start();
    let mut bridge = Process::start(
        "bridge",
        std::path::Path::new(env!("CARGO_BIN_EXE_hb-bridge")),
        &[
            "--mqtt-url".into(),
            s.mqtt_url.clone(),
            "--mqtt-username".into(),
            "hb-bridge".into(),
            "--kafka-brokers".into(),
            silent.addr.clone(),
            "--kafka-topic-prefix".into(),
            setup.prefix.clone(),
            "--http-addr".into(),
            "127.0.0.1:0".into(),
        ],
        &[("HB_MQTT_PASSWORD", &s.mqtt_bridge_password)],
        &setup.work,
    );
    hb_testkit::eventually("the bridge to reach Kafka", Duration::from_secs(30), || {
        let n = silent.accepted();
        async move { (n > 0).then_some(()) }
    })
    .await;
    let asked = std::time::Instant::now();
    bridge.signal("TERM");
    let status = bridge.wait(Duration::from_secs(20));
    assert!(status.success(), "{status}:\n{}", bridge.output());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        asked.elapsed()
    );
}
