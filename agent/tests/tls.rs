//! The agent talks to an `mqtts://` broker, verifying its certificate against the
//! CA file it is given, and refuses a broker its CA did not sign.

mod common;

use std::path::Path;
use std::time::Duration;

use hb_testkit::mqtt::{make_certificates, Mosquitto, ReadingSubscriber};
use hb_testkit::{eventually, unique, Process, Services};

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
    common::start_agent(s, &work.join("state"), &args, work)
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
