//! Retention drops whole old daily partitions, but never one that still receives
//! readings (a device with an unsynchronised clock stamps fresh readings with an
//! old day).

use hb_collector::Database;
use hb_collector::Store;
use hb_testkit::{connect, fresh_database, Services};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_partitions_are_dropped_but_not_ones_still_receiving_readings() {
    let s = Services::from_env();
    let url = fresh_database(&s).await;
    let database = Database::parse(&url, None).unwrap();
    hb_collector::migrate(&database).await.unwrap();
    let mut store = Store::connect(&database).await.unwrap();
    let db = connect(&url).await;
    db.batch_execute(
        "SELECT hb_ensure_reading_partitions(ARRAY[now() - interval '40 days', now() - interval '39 days', now()]);
         INSERT INTO readings (device_id, epoch, seq, ts, ts_corrected, mono_ms, clock_synced, received_at, bpm,
                               contact, rr_1024, rr_consistent, status, backfill, kafka_partition, kafka_offset)
         VALUES
           ('d', 1, 0, now() - interval '40 days', now() - interval '40 days', 0, true,  now() - interval '40 days', 60, 'detected', '{}', true, 'normal', false, 0, 0),
           ('d', 2, 0, now() - interval '39 days', now(),                      0, false, now(),                      60, 'detected', '{}', true, 'normal', false, 0, 1),
           ('d', 3, 0, now(),                      now(),                      0, true,  now(),                      60, 'detected', '{}', true, 'normal', false, 0, 2);",
    )
    .await
    .unwrap();
    assert_eq!(store.drop_partitions_older_than(30).await.unwrap(), 1);
    let epochs: Vec<i64> = db
        .query("SELECT epoch FROM readings ORDER BY epoch", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        epochs,
        [2, 3],
        "the old partition went; the one receiving fresh readings stayed"
    );
    assert_eq!(store.drop_partitions_older_than(30).await.unwrap(), 0);
}
