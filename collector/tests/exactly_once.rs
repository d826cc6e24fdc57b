//! Every `(device, epoch, seq)` is stored exactly once, whatever is replayed or
//! crashes: duplicates in Kafka, a collector killed between COMMIT and the offset
//! store, a PostgreSQL crash mid-stream, and a collector of two killed mid-stream.

mod common;

use std::time::Duration;

use common::{assert_exactly, produce_all, records, Setup};
use hb_testkit::postgres::Postgres;
use hb_testkit::{connect, fresh_database, Services};

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
    assert!(!status.success(), "the fault point must abort the process");
    assert!(crashing.output().contains("before storing offsets"));
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
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.crash();
    produce_all(&s.kafka_brokers, &setup, &rest[..200]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.resume();
    produce_all(&s.kafka_brokers, &setup, &rest[200..]).await;
    let db = connect(&db_url).await;
    assert_exactly(&db, &setup, 6, 300, Duration::from_secs(90)).await;
    assert!(collector.output().contains("retrying") || collector.output().contains("unreachable"));
    collector.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_share_the_partitions_and_one_killed_mid_stream_loses_nothing() {
    let s = Services::from_env();
    let setup = Setup::new(&s, &s.kafka_brokers, 4).await;
    let db_url = fresh_database(&s).await;
    let mut a = setup.collector(
        &s.kafka_brokers,
        &db_url,
        &[],
        &["--batch-max-readings", "200"],
    );
    let mut b = setup.collector(
        &s.kafka_brokers,
        &db_url,
        &[],
        &["--batch-max-readings", "200"],
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // both in the group
    let all = records(&setup, 8, 500, 4); // 1000 records, 4000 readings
    let (head, tail) = all.split_at(500);
    produce_all(&s.kafka_brokers, &setup, head).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.signal("KILL");
    produce_all(&s.kafka_brokers, &setup, tail).await;
    let db = connect(&db_url).await;
    assert_exactly(&db, &setup, 8, 500, Duration::from_secs(120)).await;
    b.stop(Duration::from_secs(20));
    let _ = a.wait(Duration::from_secs(5));
}
