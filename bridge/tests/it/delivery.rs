//! No reading is lost between MQTT and Kafka: not when the bridge is SIGKILLed with
//! thousands in flight, not when Kafka is down for 20 s, and two bridges in one
//! share group together forward everything. Duplicates in Kafka are allowed (the
//! collector absorbs them) and reported; missing readings fail the test.

use std::time::Duration;

use crate::common::{all_readings, Setup};
use hb_testkit::kafka::Tansu;
use hb_testkit::{unique, Services};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_bridge_loses_nothing_of_10000_readings_in_flight() {
    let s = Services::from_env();
    let setup = Setup::new(&s);
    let instance = unique("b");
    let mut bridge = setup.bridge(&s, &s.mqtt_url, &s.kafka_brokers, &instance, &[]);
    let mut agent = setup.agent(&s, &s.mqtt_url, 20, 250, 500); // 10 000 readings in ~2 s
                                                                // Killed mid-stream: messages taken from the broker and not yet acknowledged.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (received, unacked) = loop {
        let metric = |name| bridge.metric(name).unwrap_or(0.0);
        let (received, unacked) = (
            metric("hb_bridge_received_total"),
            metric("hb_bridge_mqtt_unacked"),
        );
        if received >= 500.0 && unacked > 0.0 {
            bridge.signal("KILL");
            break (received, unacked);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bridge took no messages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = bridge.wait(Duration::from_secs(10));
    assert!(
        received < 10_000.0,
        "killed before the stream ended: {received} received"
    );
    let status =
        tokio::task::spawn_blocking(move || (agent.wait(Duration::from_secs(120)), agent.output()))
            .await
            .unwrap();
    assert!(status.0.success(), "agent failed:\n{}", status.1);
    // The broker kept the rest for the bridge's persistent session: the same
    // instance picks it up.
    let mut again = setup.bridge(&s, &s.mqtt_url, &s.kafka_brokers, &instance, &[]);
    let seen = all_readings(&s.kafka_brokers, &setup, 20, 500, Duration::from_secs(120)).await;
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    println!(
        "10000 readings in Kafka, {duplicates} duplicates after a SIGKILL with {unacked} unacknowledged of {received} received"
    );
    again.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_for_20_seconds_loses_nothing() {
    let s = Services::from_env();
    let mut tansu = Tansu::start(&s);
    let setup = Setup::new(&s);
    let mut bridge = setup.bridge(&s, &s.mqtt_url, &tansu.brokers, &unique("b"), &[]);
    let mut agent = setup.agent(&s, &s.mqtt_url, 10, 10, 400); // 40 s of readings
    tokio::time::sleep(Duration::from_secs(5)).await;
    tansu.kill();
    tokio::time::sleep(Duration::from_secs(20)).await;
    tansu.resume();
    let status =
        tokio::task::spawn_blocking(move || (agent.wait(Duration::from_secs(120)), agent.output()))
            .await
            .unwrap();
    assert!(status.0.success(), "agent failed:\n{}", status.1);
    let seen = all_readings(&tansu.brokers, &setup, 10, 400, Duration::from_secs(120)).await;
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    println!("4000 readings in Kafka after a 20 s outage, {duplicates} duplicates");
    let forwarded = bridge.metric("hb_bridge_forwarded_total").unwrap_or(0.0);
    assert!(forwarded >= 4000.0, "{forwarded} forwarded");
    bridge.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_share_the_load_and_together_forward_everything_as_sent() {
    let s = Services::from_env();
    let setup = Setup::new(&s);
    let mut b1 = setup.bridge(&s, &s.mqtt_url, &s.kafka_brokers, &unique("b"), &[]);
    let mut b2 = setup.bridge(&s, &s.mqtt_url, &s.kafka_brokers, &unique("b"), &[]);
    let mut agent = setup.agent(&s, &s.mqtt_url, 10, 100, 200);
    let status =
        tokio::task::spawn_blocking(move || (agent.wait(Duration::from_secs(120)), agent.output()))
            .await
            .unwrap();
    assert!(status.0.success(), "agent failed:\n{}", status.1);
    let seen = all_readings(&s.kafka_brokers, &setup, 10, 200, Duration::from_secs(60)).await;
    assert!(
        seen.values().all(|&n| n == 1),
        "without failures every reading is forwarded exactly once"
    );
    let forwarded = |b: &hb_testkit::Process| b.metric("hb_bridge_forwarded_total").unwrap_or(0.0);
    let (f1, f2) = (forwarded(&b1), forwarded(&b2));
    b1.stop(Duration::from_secs(20));
    b2.stop(Duration::from_secs(20));
    assert!(
        f1 > 0.0 && f2 > 0.0,
        "both bridges must take a share: {f1} and {f2}"
    );
    println!("bridge 1 forwarded {f1} messages, bridge 2 {f2}");
}
