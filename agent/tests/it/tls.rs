//! The agent talks to an `mqtts://` broker, verifying its certificate against the
//! CA file it is given, and refuses a broker its CA did not sign. With client
//! certificates (mutual TLS) a device is who its certificate says, under the same
//! ACL as a password login, and the broker refuses unknown certificates, none, and
//! plaintext.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use hb_testkit::mqtt::{make_certificates, make_dev_certs, Mosquitto, ReadingSubscriber};
use hb_testkit::{eventually, unique, Process, Services};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};

fn agent(s: &Services, url: &str, ca: &Path, root: &str, prefix: &str, work: &Path) -> Process {
    let template = format!("{prefix}-{{index}}");
    let args = [
        "--mqtt-url",
        url,
        "--mqtt-ca-file",
        ca.to_str().unwrap(),
        "--mqtt-topic-root",
        root,
        "--device-id-template",
        &template,
        "--devices",
        "2",
        "--rate-hz",
        "20",
        "--count",
        "20",
        "--connect-stagger-ms",
        "10",
    ];
    crate::common::start_agent(s, &work.join("state"), &args, work)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_travel_over_verified_tls_and_an_unknown_ca_is_refused() {
    let s = Services::from_env();
    let broker = Mosquitto::with_tls(&s);
    let tls_url = broker.tls_url.clone().unwrap();
    let root = unique("t");
    let prefix = unique("d");
    let sub = ReadingSubscriber::start(&s, &broker.url, &root).await;

    let work = s.work_dir.join(unique("tls-"));
    let mut good = agent(
        &s,
        &tls_url,
        broker.ca_file.as_ref().unwrap(),
        &root,
        &prefix,
        &work,
    );
    let (status, output) =
        tokio::task::spawn_blocking(move || (good.wait(Duration::from_secs(60)), good.output()))
            .await
            .unwrap();
    assert!(status.success(), "agent over TLS failed:\n{output}");
    eventually("40 readings over TLS", Duration::from_secs(20), || async {
        (sub.seen().len() == 40).then_some(())
    })
    .await;

    // A CA that did not sign the broker's certificate: the handshake fails, nothing
    // is delivered, and the readings stay in the agent's spool.
    let other_dir = s.work_dir.join(unique("other-ca-"));
    std::fs::create_dir_all(&other_dir).unwrap();
    let other_ca = make_certificates(&other_dir);
    let work2 = s.work_dir.join(unique("tls-"));
    let other_prefix = unique("d");
    let mut bad = agent(&s, &tls_url, &other_ca, &root, &other_prefix, &work2);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        bad.try_wait().is_none(),
        "the agent must keep its readings and retry, not exit"
    );
    bad.signal("KILL");
    assert!(
        !sub.seen()
            .keys()
            .any(|(d, _, _)| d.starts_with(&other_prefix)),
        "a broker with an unverified certificate received readings"
    );
    let output = bad.output();
    assert!(
        output.contains("invalid peer certificate"),
        "the refusal should name the certificate problem:
{output}"
    );
}

/// `hb-agent` on the client-certificate listener of `broker`, without user name
/// or password: `devices` devices named after `template`, presenting `cert` and
/// `key` (which may hold `{device}`), 20 readings each at 20 Hz.
fn cert_agent(
    broker: &Mosquitto,
    root: &str,
    (template, devices): (&str, u32),
    (cert, key): (&str, &str),
    work: &Path,
) -> Process {
    let devices = devices.to_string();
    let args = [
        "--mqtt-url",
        broker.tls_url.as_deref().unwrap(),
        "--mqtt-ca-file",
        broker.ca_file.as_ref().unwrap().to_str().unwrap(),
        "--mqtt-cert-file",
        cert,
        "--mqtt-key-file",
        key,
        "--mqtt-topic-root",
        root,
        "--device-id-template",
        template,
        "--devices",
        &devices,
        "--rate-hz",
        "20",
        "--count",
        "20",
        "--connect-stagger-ms",
        "10",
    ];
    crate::common::start_agent_with_certificate(&work.join("state"), &args, work)
}

/// Waits (off the runtime) for `p` to exit; its status and output.
async fn exit_of(mut p: Process) -> (ExitStatus, String) {
    tokio::task::spawn_blocking(move || (p.wait(Duration::from_secs(30)), p.output()))
        .await
        .unwrap()
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_certificate_publishes_only_as_its_own_device() {
    let s = Services::from_env();
    let broker = Mosquitto::with_client_certificates(&s, &["strap-0", "strap-1"]);
    let certs = broker.cert_dir.clone().unwrap();
    let root = unique("t");
    // Through the password listener: bridges keep logging in with passwords.
    let sub = ReadingSubscriber::start(&s, &broker.url, &root).await;
    let work = s.work_dir.join(unique("mtls-"));

    // Device strap-2 presenting strap-1's certificate is strap-1 to the broker,
    // which acknowledges its readings (MQTT 3.1.1 cannot refuse a publish) and
    // drops them (ACL). All 20 acknowledged: it was connected and published.
    let impostor = cert_agent(
        &broker,
        &root,
        ("strap-2", 1),
        (&path(&certs, "strap-1.pem"), &path(&certs, "strap-1.key")),
        &work.join("impostor"),
    );
    let (status, output) = exit_of(impostor).await;
    assert!(status.success(), "the impostor's agent failed:\n{output}");

    // Then two devices, each with its own certificate (`{device}`). The broker
    // handled all of the impostor's readings before these, and the subscriber
    // receives in that order: once these are in, none of the impostor's is coming.
    let fleet = cert_agent(
        &broker,
        &root,
        ("strap-{index}", 2),
        (&path(&certs, "{device}.pem"), &path(&certs, "{device}.key")),
        &work.join("fleet"),
    );
    let (status, output) = exit_of(fleet).await;
    assert!(
        status.success(),
        "agent with client certificates failed:\n{output}"
    );
    let per_device = |device: &str| sub.seen().keys().filter(|(d, _, _)| d == device).count();
    eventually(
        "20 readings each of strap-0 and strap-1",
        Duration::from_secs(20),
        || async { (per_device("strap-0") == 20 && per_device("strap-1") == 20).then_some(()) },
    )
    .await;
    assert_eq!(
        per_device("strap-2"),
        0,
        "readings published with another device's certificate got through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_listener_refuses_unknown_or_missing_certificates_and_plaintext() {
    let s = Services::from_env();
    let broker = Mosquitto::with_client_certificates(&s, &["strap-1"]);
    let tls_url = broker.tls_url.clone().unwrap();
    let root = unique("t");
    let work = s.work_dir.join(unique("mtls-"));

    // strap-1's certificate, but from another CA; and no certificate, only a
    // (valid) password. The TLS handshake fails, and the agent stops with the
    // reason as it does for a wrong password: retrying cannot help.
    let other = make_dev_certs(&work.join("other-ca"), &["strap-1"]);
    let unknown = cert_agent(
        &broker,
        &root,
        ("strap-1", 1),
        (&path(&other, "strap-1.pem"), &path(&other, "strap-1.key")),
        &work.join("unknown"),
    );
    let ca = broker.ca_file.as_ref().unwrap().to_str().unwrap();
    let password_only = crate::common::start_agent(
        &s,
        &work.join("password-only").join("state"),
        &[
            "--mqtt-url",
            &tls_url,
            "--mqtt-ca-file",
            ca,
            "--mqtt-topic-root",
            &root,
        ],
        &work.join("password-only"),
    );
    for (agent, alert) in [
        (unknown, "UnknownCA"),
        (password_only, "CertificateRequired"),
    ] {
        let (status, output) = exit_of(agent).await;
        assert!(
            !status.success(),
            "connected without a valid certificate:\n{output}"
        );
        let expected =
            format!("the broker refused our credentials (client certificate: TLS alert {alert})");
        assert!(
            output.contains(&expected),
            "expected \"{expected}\":\n{output}"
        );
    }

    // Plaintext MQTT to the TLS port, with a valid password: no CONNACK.
    let port: u16 = tls_url.rsplit(':').next().unwrap().parse().unwrap();
    let first = first_event(&s, port, true).await;
    assert!(
        first.is_err(),
        "plaintext MQTT on the TLS listener got {first:?}"
    );
    // The other listener still wants a password, its settings are not per listener.
    let port: u16 = broker.url.rsplit(':').next().unwrap().parse().unwrap();
    let anonymous = first_event(&s, port, false).await;
    assert!(
        matches!(
            anonymous,
            Err(rumqttc::ConnectionError::ConnectionRefused(_))
        ),
        "an anonymous client on the password listener got {anonymous:?}"
    );
}

/// The first thing a plaintext MQTT client connecting to `port` gets: a CONNACK or
/// an error.
async fn first_event(
    s: &Services,
    port: u16,
    with_password: bool,
) -> Result<Event, rumqttc::ConnectionError> {
    let mut o = MqttOptions::new(unique("plain-"), "127.0.0.1", port);
    if with_password {
        o.set_credentials("hb-sim", s.mqtt_sim_password.clone());
    }
    let (_client, mut eventloop) = AsyncClient::new(o, 10);
    let first = tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
        .await
        .expect("the broker answers or closes the connection");
    if let Ok(event) = &first {
        assert!(
            matches!(event, Event::Incoming(Packet::ConnAck(_))),
            "first event {event:?}"
        );
    }
    first
}
