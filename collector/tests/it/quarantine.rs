//! A bad-record corpus lands in `quarantine` with the right reasons, one entry per
//! refused record or reading, while the good records and readings around them are
//! stored; the partition is never blocked.

use std::time::Duration;

use crate::common::{produce_all, reading, Setup};
use hb_shared::{codec, DeviceId, Envelope, Readings};
use hb_testkit::now_ms;
use hb_testkit::{connect, eventually, fresh_database, Services};

fn readings(list: Vec<hb_shared::Reading>) -> Readings {
    let mut r = Readings::new();
    for x in list {
        r.push(x).unwrap();
    }
    r
}

fn envelope(device: &str, list: Vec<hb_shared::Reading>) -> Envelope {
    Envelope::new(DeviceId::new(device).unwrap(), readings(list))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_quarantined_with_reasons_and_good_ones_around_them_stored() {
    let s = Services::from_env();
    let setup = Setup::new(&s, &s.kafka_brokers, 1).await;
    let db_url = fresh_database(&s).await;
    let dev = setup.device(0);
    let now = now_ms();
    let pc = "application/x-postcard";
    let postcard = |e: &Envelope| codec::encode_postcard(e).unwrap();
    let mut trailing = postcard(&envelope(&dev, vec![reading(90, 60, now)]));
    trailing.push(0);
    let mut v3 = postcard(&envelope(&dev, vec![reading(91, 60, now)]));
    v3[0] = 3;
    let mixed = envelope(
        &dev,
        vec![
            reading(10, 60, now),                   // stored
            reading(11, 400, now),                  // bpm_out_of_range
            reading(12, 60, now + 3_600_000),       // clock_skew
            reading(13, 60, now - 60 * 86_400_000), // too_old
            reading(14, 45, now),                   // stored, bradycardia
        ],
    );
    let records: Vec<(String, Vec<u8>, &str)> = vec![
        (
            dev.clone(),
            postcard(&envelope(&dev, vec![reading(0, 70, now)])),
            pc,
        ),
        (dev.clone(), b"\x01\xff\xfe".to_vec(), pc),
        (dev.clone(), Vec::new(), pc),
        (
            "someone-else".into(),
            postcard(&envelope(&dev, vec![reading(1, 70, now)])),
            pc,
        ),
        (dev.clone(), b"<xml/>".to_vec(), "text/xml"),
        (dev.clone(), b"{\"version\":1".to_vec(), "application/json"),
        (dev.clone(), trailing, pc),
        (dev.clone(), v3, pc),
        (dev.clone(), postcard(&mixed), pc),
        (
            dev.clone(),
            codec::encode_json(&envelope(&dev, vec![reading(20, 80, now)])).unwrap(),
            "application/json",
        ),
    ];
    produce_all(&s.kafka_brokers, &setup, &records).await;
    let mut collector = setup.collector(&s.kafka_brokers, &db_url, &[], &[]);
    let db = connect(&db_url).await;
    let expected_quarantine = 10i64;
    eventually(
        "the quarantine entries",
        Duration::from_secs(60),
        || async {
            let n: i64 = db
                .query_one("SELECT count(*) FROM quarantine", &[])
                .await
                .ok()?
                .get(0);
            (n >= expected_quarantine).then_some(())
        },
    )
    .await;
    let rows = db
        .query("SELECT source_offset, reason, seq FROM quarantine ORDER BY source_offset, seq NULLS FIRST", &[])
        .await
        .unwrap();
    let got: Vec<(i64, String, Option<i64>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(i64, &str, Option<i64>)> = vec![
        (1, "undecodable", None),
        (2, "empty_payload", None),
        (3, "key_mismatch", None),
        (4, "unknown_content_type", None),
        (5, "undecodable", None),
        (6, "trailing_bytes", None),
        (7, "unsupported_version", None),
        (8, "bpm_out_of_range", Some(11)),
        (8, "clock_skew", Some(12)),
        (8, "too_old", Some(13)),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(o, r, s)| (*o, r.to_string(), *s))
            .collect::<Vec<_>>()
    );
    let payload: Vec<u8> = db
        .query_one(
            "SELECT payload FROM quarantine_entries WHERE source_offset = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(payload, b"\x01\xff\xfe", "the raw payload is kept");
    let stored: Vec<(i64, String)> = db
        .query("SELECT seq, status FROM readings ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        stored,
        [
            (0, "normal".to_string()),
            (10, "normal".into()),
            (14, "bradycardia".into()),
            (20, "normal".into())
        ]
    );
    let (status, body) = collector.http_get("/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (_, metrics) = collector.http_get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "hb_collector_quarantined_total{reason=\"undecodable\"} 2"),
        "{metrics}"
    );
    collector.stop(Duration::from_secs(20));
}

/// A record PostgreSQL refuses for a CHECK constraint (here one the test adds:
/// the collector's own validation allows up to 300 BPM) is quarantined as
/// `database_rejected`, and the records after it on its partition are stored.
/// Before, that SQLSTATE counted as transient (it is also what a missing
/// partition raises) and the batch was retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_violating_a_check_constraint_is_quarantined_and_its_partition_moves_on() {
    let s = Services::from_env();
    let setup = Setup::new(&s, &s.kafka_brokers, 1).await;
    let db_url = fresh_database(&s).await;
    let dev = setup.device(0);
    let now = now_ms();
    let mut collector = setup.collector(&s.kafka_brokers, &db_url, &[], &[]);
    let db = connect(&db_url).await;
    eventually(
        "the collector's migrations",
        Duration::from_secs(60),
        || async {
            db.batch_execute(
                "ALTER TABLE readings ADD CONSTRAINT test_bpm_below_250 CHECK (bpm < 250)",
            )
            .await
            .ok()
        },
    )
    .await;
    let records: Vec<(String, Vec<u8>, &str)> = vec![
        crate::common::record(&dev, readings(vec![reading(0, 70, now)])),
        crate::common::record(&dev, readings(vec![reading(1, 280, now)])),
        crate::common::record(&dev, readings(vec![reading(2, 72, now)])),
    ];
    produce_all(&s.kafka_brokers, &setup, &records).await;
    eventually(
        "the good readings stored, the bad one quarantined",
        Duration::from_secs(60),
        || async {
            let row = db
                .query_one(
                    "SELECT (SELECT array_agg(seq ORDER BY seq) FROM readings), \
                        (SELECT array_agg(reason) FROM quarantine)",
                    &[],
                )
                .await
                .ok()?;
            let (stored, reasons): (Option<Vec<i64>>, Option<Vec<String>>) =
                (row.get(0), row.get(1));
            (stored == Some(vec![0, 2]) && reasons == Some(vec!["database_rejected".to_owned()]))
                .then_some(())
        },
    )
    .await;
    let detail: String = db
        .query_one("SELECT detail FROM quarantine", &[])
        .await
        .unwrap()
        .get(0);
    assert!(detail.contains("test_bpm_below_250"), "{detail}");
    collector.stop(Duration::from_secs(20));
}

/// Each refused reading of an envelope once copied the whole payload into
/// `quarantine`: 256 readings, 256 copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_with_every_reading_refused_stores_its_payload_once() {
    let s = Services::from_env();
    let setup = Setup::new(&s, &s.kafka_brokers, 1).await;
    let db_url = fresh_database(&s).await;
    let dev = setup.device(0);
    let now = now_ms();
    let all_bad = envelope(&dev, (0..256).map(|seq| reading(seq, 400, now)).collect());
    let payload = codec::encode_json(&all_bad).unwrap();
    let records = vec![(dev.clone(), payload.clone(), "application/json")];
    produce_all(&s.kafka_brokers, &setup, &records).await;
    let mut collector = setup.collector(&s.kafka_brokers, &db_url, &[], &[]);
    let db = connect(&db_url).await;
    eventually("256 entries", Duration::from_secs(60), || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM quarantine WHERE reason = 'bpm_out_of_range'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (n == 256).then_some(())
    })
    .await;
    let (copies, bytes): (i64, i64) = db
        .query_one(
            "SELECT count(*), sum(octet_length(payload))::int8 FROM quarantine_payloads",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((copies, bytes), (1, payload.len() as i64), "stored once");
    println!(
        "a {}-byte envelope with 256 refused readings: payload stored once (before: {} bytes)",
        payload.len(),
        256 * payload.len()
    );
    let with_payload: i64 = db
        .query_one(
            "SELECT count(*) FROM quarantine_entries WHERE payload = $1",
            &[&payload],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(with_payload, 256, "every entry shows its record's payload");
    collector.stop(Duration::from_secs(20));
}
