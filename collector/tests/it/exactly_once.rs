//! Every `(device, epoch, seq)` is stored exactly once, whatever is replayed or
//! crashes: duplicates in Kafka, a collector killed between COMMIT and the offset
//! store, a PostgreSQL crash mid-stream, and a collector of two killed mid-stream
//! (the survivor taking over; or it restarted), and a lone collector restarted
//! within its session timeout.

use std::time::Duration;

use crate::common::{assert_exactly, produce_all, records, Setup};
use hb_testkit::postgres::Postgres;
use hb_testkit::{connect, eventually, fresh_database, Process, Services};
use rdkafka::mocking::MockCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_records_produced_twice_are_stored_once() {
    let s = Services::from_env();
    let setup = Setup::new(&s, &s.kafka_brokers, 3).await;
    let db_url = fresh_database(&s).await;
    let recs = records(&setup, 5, 200, 10);
    produce_all(&s.kafka_brokers, &setup, &recs).await;
    produce_all(&s.kafka_brokers, &setup, &recs).await;
    let mut collector = setup.collector(&s.kafka_brokers, &db_url, &[], &[]);
    let db = connect(&db_url).await;
    assert_exactly(&db, &setup, 5, 200, Duration::from_secs(60)).await;
    hb_testkit::eventually(
        "all 200 records consumed",
        Duration::from_secs(30),
        || async { (collector.metric("hb_collector_consumed_total") == Some(200.0)).then_some(()) },
    )
    .await;
    assert_eq!(
        collector.metric("hb_collector_inserted_total"),
        Some(1000.0)
    );
    assert_eq!(
        collector.metric("hb_collector_duplicates_total"),
        Some(1000.0)
    );
    collector.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_killed_after_commit_before_storing_offsets_adds_nothing_on_restart() {
    let s = Services::from_env();
    let setup = Setup::new(&s, &s.kafka_brokers, 2).await;
    let db_url = fresh_database(&s).await;
    produce_all(&s.kafka_brokers, &setup, &records(&setup, 4, 250, 5)).await;
    // Small batches; the process aborts right after its third COMMIT.
    let mut crashing = setup.collector(
        &s.kafka_brokers,
        &db_url,
        &[("HB_FAULT_ABORT_AFTER_COMMITS", "3")],
        &["--batch-max-readings", "100"],
    );
    let status = crashing.wait(Duration::from_secs(60));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(6),
        "the fault point aborts (SIGABRT): {status}"
    );
    let db = connect(&db_url).await;
    let committed: i64 = db
        .query_one("SELECT count(*) FROM readings", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        committed >= 300,
        "three batches were committed before the crash ({committed})"
    );

    let mut collector = setup.collector(&s.kafka_brokers, &db_url, &[], &[]);
    assert_exactly(&db, &setup, 4, 250, Duration::from_secs(60)).await;
    // The committed-but-unacknowledged batches came again and were absorbed.
    hb_testkit::eventually("duplicates counted", Duration::from_secs(20), || async {
        collector
            .metric("hb_collector_duplicates_total")
            .filter(|d| *d >= 100.0)
    })
    .await;
    collector.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_crash_mid_stream_loses_and_duplicates_nothing() {
    let s = Services::from_env();
    let mut pg = Postgres::start(&s);
    let setup = Setup::new(&s, &s.kafka_brokers, 3).await;
    let db_url = pg.url.clone();
    let mut collector = setup.collector(&s.kafka_brokers, &db_url, &[], &[]);
    let all = records(&setup, 6, 300, 3); // 600 records
    let (first, rest) = all.split_at(200);
    produce_all(&s.kafka_brokers, &setup, first).await;
    hb_testkit::eventually("readings stored", Duration::from_secs(60), || async {
        collector
            .metric("hb_collector_inserted_total")
            .filter(|n| *n > 0.0)
    })
    .await;
    pg.crash();
    produce_all(&s.kafka_brokers, &setup, &rest[..200]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.resume();
    produce_all(&s.kafka_brokers, &setup, &rest[200..]).await;
    let db = connect(&db_url).await;
    assert_exactly(&db, &setup, 6, 300, Duration::from_secs(90)).await;
    let retries = collector.metric("hb_collector_write_retries_total");
    assert!(
        retries > Some(0.0),
        "the outage was met and retried: {retries:?}"
    );
    collector.stop(Duration::from_secs(20));
}

/// How many partitions a collector owns, once its HTTP server is up.
fn owned(p: &Process) -> Option<f64> {
    p.output()
        .contains("Serving HTTP on")
        .then(|| p.metric("hb_collector_assigned_partitions"))
        .flatten()
}

/// Each device's first half of records, then each device's second half: every
/// device (16 random keys over 4 partitions: in practice every partition) has
/// records produced after the kill, so the dead member's partitions must be
/// taken over for the counts to come out.
type Records = Vec<(String, Vec<u8>, &'static str)>;
fn halves(all: Records) -> (Records, Records) {
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    for device in all.chunk_by(|x, y| x.0 == y.0) {
        let (h, t) = device.split_at(device.len() / 2);
        head.extend_from_slice(h);
        tail.extend_from_slice(t);
    }
    (head, tail)
}

/// Starts `a`, waits until it owns all `partitions`, starts `b`, and waits until
/// the group has split them between the two.
async fn two_collectors(start: impl Fn() -> Process, partitions: f64) -> (Process, Process) {
    let a = start();
    eventually(
        "a owning every partition",
        Duration::from_secs(60),
        || async { (owned(&a)? == partitions).then_some(()) },
    )
    .await;
    let b = start();
    eventually(
        "the two collectors splitting the partitions",
        Duration::from_secs(60),
        || async {
            let (x, y) = (owned(&a)?, owned(&b)?);
            (x >= 1.0 && y >= 1.0 && x + y == partitions).then_some(())
        },
    )
    .await;
    (a, b)
}

/// Kafka's group semantics, from librdkafka's mock cluster: tansu 0.6 never
/// re-forms a group after a member dies (it keeps handing out the old
/// assignment, so the dead member's partitions go unconsumed), which Apache
/// Kafka does. PostgreSQL and the collector processes are the real ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_share_the_partitions_and_the_survivor_takes_over_from_a_killed_one() {
    let s = Services::from_env();
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let setup = Setup::names(&s);
    cluster
        .create_topic(&setup.topic(), 4, 1)
        .expect("create topic");
    let db_url = fresh_database(&s).await;
    let start = || setup.collector(&brokers, &db_url, &[], &["--batch-max-readings", "200"]);
    let (mut a, mut b) = two_collectors(start, 4.0).await;
    let (head, tail) = halves(records(&setup, 16, 240, 4)); // 960 records
    produce_all(&brokers, &setup, &head).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.signal("KILL");
    produce_all(&brokers, &setup, &tail).await;
    let db = connect(&db_url).await;
    assert_exactly(&db, &setup, 16, 240, Duration::from_secs(120)).await;
    eventually(
        "the survivor owning every partition",
        Duration::from_secs(30),
        || async { (owned(&b)? == 4.0).then_some(()) },
    )
    .await;
    b.stop(Duration::from_secs(20));
    let _ = a.wait(Duration::from_secs(5));
}

/// The same against tansu, with the killed collector restarted (as systemd or
/// Kubernetes would): what it had read but not committed is read again from
/// the last committed offsets, and nothing is lost or stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_of_two_killed_mid_stream_and_restarted_loses_and_duplicates_nothing() {
    let s = Services::from_env();
    let setup = Setup::new(&s, &s.kafka_brokers, 4).await;
    let db_url = fresh_database(&s).await;
    let start = || {
        setup.collector(
            &s.kafka_brokers,
            &db_url,
            &[],
            &["--batch-max-readings", "200"],
        )
    };
    let (mut a, mut b) = two_collectors(start, 4.0).await;
    let (head, tail) = halves(records(&setup, 16, 240, 4));
    produce_all(&s.kafka_brokers, &setup, &head).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.signal("KILL");
    let _ = b.wait(Duration::from_secs(5));
    produce_all(&s.kafka_brokers, &setup, &tail).await;
    // Restart once the session (6 s) has expired and tansu dropped the dead
    // member: a join while it still counts hands it partitions that, again,
    // nobody reads.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut b = start();
    let db = connect(&db_url).await;
    assert_exactly(&db, &setup, 16, 240, Duration::from_secs(120)).await;
    a.stop(Duration::from_secs(20));
    b.stop(Duration::from_secs(20));
}

/// tansu as `scripts/test.sh` builds it (its group coordinator patched, see
/// vendor/README.md): a collector killed and started again within its session
/// timeout gets every partition back and stores what came meanwhile. Unpatched,
/// the new member was assigned nothing, for good (this test: 0 of 800 readings
/// stored in 90 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_killed_and_restarted_within_its_session_gets_its_partitions_back() {
    let s = Services::from_env();
    let setup = Setup::new(&s, &s.kafka_brokers, 3).await;
    let db_url = fresh_database(&s).await;
    let (head, tail) = halves(records(&setup, 8, 100, 5));
    produce_all(&s.kafka_brokers, &setup, &head).await;
    let start = || setup.collector(&s.kafka_brokers, &db_url, &[], &[]);
    let mut first = start();
    eventually(
        "the first collector owning every partition",
        Duration::from_secs(60),
        || async { (owned(&first)? == 3.0).then_some(()) },
    )
    .await;
    first.signal("KILL");
    first.wait(Duration::from_secs(10));
    // The replacement joins while the dead member is still in the group, and the
    // dead member's session (6 s) ends while the replacement waits for the group
    // to form: what a crash-restart loop or a quick redeploy does.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut second = start();
    produce_all(&s.kafka_brokers, &setup, &tail).await;
    let db = connect(&db_url).await;
    assert_exactly(&db, &setup, 8, 100, Duration::from_secs(90)).await;
    assert_eq!(owned(&second), Some(3.0));
    second.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_stopped_while_postgresql_does_not_answer_stops_at_once() {
    let s = Services::from_env();
    let setup = Setup::names(&s);
    let silent = hb_testkit::SilentServer::start();
    let mut collector = setup.collector(
        &s.kafka_brokers,
        &format!(
            "postgres://hb@{}/hb?sslmode=disable&connect_timeout=60",
            silent.addr
        ),
        &[],
        &[],
    );
    eventually(
        "the collector to reach PostgreSQL",
        Duration::from_secs(30),
        || {
            let n = silent.accepted();
            async move { (n > 0).then_some(()) }
        },
    )
    .await;
    let asked = std::time::Instant::now();
    collector.signal("TERM");
    let status = collector.wait(Duration::from_secs(20));
    assert!(status.success(), "{status}:\n{}", collector.output());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        asked.elapsed()
    );
}
