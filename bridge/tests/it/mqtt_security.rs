//! The broker configuration the project ships (scripts/mosquitto-test.conf, the
//! same rules as deploy/mosquitto/) lets nobody unauthorised publish or read.

use std::time::Duration;

use hb_runtime::mqtt_address::MqttAddress;
use hb_testkit::{unique, Services};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode,
};

fn client(s: &Services, credentials: Option<(&str, &str)>) -> (AsyncClient, EventLoop) {
    let addr: MqttAddress = s.mqtt_url.parse().unwrap();
    let mut o = MqttOptions::new(unique("sec-"), addr.host, addr.port);
    if let Some((u, p)) = credentials {
        o.set_credentials(u, p);
    }
    AsyncClient::new(o, 10)
}

/// Polls until the CONNACK or the connection error.
async fn connect(el: &mut EventLoop) -> Result<(), ConnectionError> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll())
            .await
            .expect("broker answers")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Polls until `f` picks something out of an event, or `timeout` passes.
async fn poll_for<T>(
    el: &mut EventLoop,
    timeout: Duration,
    mut f: impl FnMut(&Event) -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Err(_) => return None,
            Ok(Ok(ev)) => {
                if let Some(v) = f(&ev) {
                    return Some(v);
                }
            }
            Ok(Err(e)) => panic!("connection failed: {e}"),
        }
    }
}

#[tokio::test]
async fn anonymous_clients_and_wrong_passwords_are_refused() {
    let s = Services::from_env();
    let (_c, mut el) = client(&s, None);
    let anonymous = connect(&mut el).await;
    assert!(
        matches!(anonymous, Err(ConnectionError::ConnectionRefused(_))),
        "{anonymous:?}"
    );
    let (_c, mut el) = client(&s, Some(("hb-bridge", "wrong")));
    let wrong = connect(&mut el).await;
    assert!(
        matches!(wrong, Err(ConnectionError::ConnectionRefused(_))),
        "{wrong:?}"
    );
}

#[tokio::test]
async fn a_device_can_publish_only_its_own_readings_and_cannot_read_others() {
    let s = Services::from_env();
    let root = unique("t");
    let (reader, mut reader_el) = client(&s, Some(("hb-bridge", &s.mqtt_bridge_password)));
    connect(&mut reader_el).await.unwrap();
    reader
        .subscribe(format!("{root}/v1/devices/+/readings"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let granted = poll_for(&mut reader_el, Duration::from_secs(10), |e| match e {
        Event::Incoming(Packet::SubAck(a)) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await
    .expect("suback");
    assert!(matches!(granted[0], SubscribeReasonCode::Success(_)));

    let (device, mut device_el) = client(&s, Some(("hb-test-device-1", &s.mqtt_device_password)));
    connect(&mut device_el).await.unwrap();
    let other = format!("{root}/v1/devices/hb-test-device-2/readings");
    let own = format!("{root}/v1/devices/hb-test-device-1/readings");
    device
        .publish(&other, QoS::AtLeastOnce, false, b"spoof".to_vec())
        .await
        .unwrap();
    device
        .publish(&own, QoS::AtLeastOnce, false, b"mine".to_vec())
        .await
        .unwrap();
    // A device may not read other devices' data either.
    device
        .subscribe(format!("{root}/v1/devices/+/readings"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let device_sub = poll_for(&mut device_el, Duration::from_secs(10), |e| match e {
        Event::Incoming(Packet::SubAck(a)) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await
    .expect("device suback");

    let mut topics = Vec::new();
    poll_for(&mut reader_el, Duration::from_secs(3), |e| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            topics.push(p.topic.clone());
        }
        None::<()>
    })
    .await;
    assert_eq!(
        topics,
        vec![own],
        "only the device's own topic may get through"
    );
    // Mosquitto grants the subscription but delivers nothing the ACL forbids: the
    // device must not see its own reading echoed back through the wildcard.
    let echoed = poll_for(&mut device_el, Duration::from_secs(2), |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some(p.topic.clone()),
        _ => None,
    })
    .await;
    assert_eq!(echoed, None, "device read readings (suback {device_sub:?})");
}

#[test]
fn the_test_acl_is_the_production_acl_with_a_wildcard_root() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let rules = |path: &str, topic_root: &str| -> Vec<String> {
        std::fs::read_to_string(format!("{root}/{path}"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| l.replacen(&format!(" {topic_root}/"), " ROOT/", 1))
            .collect()
    };
    let production = rules("deploy/mosquitto/acl", "hb");
    assert!(production.len() > 10);
    assert_eq!(production, rules("scripts/mosquitto-test.acl", "+"));
}
