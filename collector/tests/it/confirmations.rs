//! The stored ranges a batch reports to its devices, against a real PostgreSQL:
//! gaps and their backfill, epochs, redeliveries, quarantined readings and the
//! cap on ranges per epoch.

use std::time::SystemTime;

use hb_collector::records::{accept, Outcome, Rules, Source};
use hb_collector::Database;
use hb_collector::Store;
use hb_shared::{codec, Contact, DeviceId, Envelope, EpochRanges, Reading, Readings};
use hb_testkit::{fresh_database, now_ms, Services};

/// The collector's rows for one envelope of `device`, epoch `epoch`, with these
/// `(seq, bpm)`.
fn outcome(device: &str, epoch: u32, readings: &[(u32, u16)]) -> Outcome {
    let mut r = Readings::new();
    for &(seq, bpm) in readings {
        r.push(Reading::new(
            epoch,
            seq,
            now_ms() - 1000,
            bpm,
            Contact::Detected,
        ))
        .unwrap();
    }
    let e = Envelope::new(DeviceId::new(device).unwrap(), r);
    let payload = codec::encode_postcard(&e).unwrap();
    let source = Source {
        topic: "t".into(),
        partition: 0,
        offset: i64::from(readings[0].0) + i64::from(epoch) * 1_000_000,
    };
    accept(
        &source,
        None,
        Some(device.as_bytes()),
        &payload,
        &Rules::default(),
        SystemTime::now(),
    )
}

/// Writes one batch and returns the ranges it reports for `device`.
async fn write(store: &mut Store, device: &str, epoch: u32, seqs: &[u32]) -> Vec<EpochRanges> {
    let readings: Vec<(u32, u16)> = seqs.iter().map(|&s| (s, 70)).collect();
    write_outcome(store, device, outcome(device, epoch, &readings)).await
}

async fn write_outcome(store: &mut Store, device: &str, o: Outcome) -> Vec<EpochRanges> {
    store.ensure_partitions(&o.rows).await.unwrap();
    let (_, stored) = store.write(&o.rows, &o.quarantine, &[]).await.unwrap();
    stored
        .into_iter()
        .filter(|(d, _)| d == device)
        .map(|(_, r)| r)
        .collect()
}

fn ranges(epoch: u32, r: &[(u32, u32)]) -> Vec<EpochRanges> {
    vec![EpochRanges {
        epoch,
        ranges: r.to_vec(),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_ranges_follow_gaps_backfill_epochs_redeliveries_and_quarantine() {
    let s = Services::from_env();
    let url = fresh_database(&s).await;
    let database = Database::parse(&url, None).unwrap();
    hb_collector::migrate(&database).await.unwrap();
    let mut store = Store::connect(&database).await.unwrap();

    let w = write(&mut store, "d", 1, &[0, 1, 2, 3, 4]).await;
    assert_eq!(w, ranges(1, &[(0, 4)]));
    assert_eq!(w[0].watermark(), Some(4));
    // A gap: 5..=9 lost on the way (a broker that dropped them).
    let w = write(&mut store, "d", 1, &[10, 11, 12]).await;
    assert_eq!(w, ranges(1, &[(0, 4), (10, 12)]));
    assert_eq!(w[0].watermark(), Some(4), "the watermark stops at the gap");
    // The device resends them, out of order: the gap closes.
    let w = write(&mut store, "d", 1, &[7, 5, 9, 6, 8]).await;
    assert_eq!(w, ranges(1, &[(0, 12)]));
    // A redelivery adds nothing, but is confirmed again.
    let w = write(&mut store, "d", 1, &[0, 1, 2]).await;
    assert_eq!(w, ranges(1, &[(0, 12)]));
    // A new epoch starts its own ranges and leaves the old one alone.
    let w = write(&mut store, "d", 2, &[0, 1]).await;
    assert_eq!(w, ranges(2, &[(0, 1)]));
    // A reading refused for good (an implausible rate) is settled too: the device
    // must not resend it forever.
    let o = outcome("d", 1, &[(13, 70), (14, 400), (15, 70)]);
    assert_eq!(o.quarantine.len(), 1);
    let w = write_outcome(&mut store, "d", o).await;
    assert_eq!(w, ranges(1, &[(0, 15)]));
    // Readings of a record PostgreSQL refused as poison are settled as well.
    let poison = outcome("d", 2, &[(2, 70), (3, 70)]);
    let (_, stored) = store.write(&[], &[], &poison.rows).await.unwrap();
    assert_eq!(stored, [("d".to_owned(), ranges(2, &[(0, 3)]).remove(0))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_skipping_numbers_keeps_its_lowest_and_newest_ranges_only() {
    let s = Services::from_env();
    let url = fresh_database(&s).await;
    let database = Database::parse(&url, None).unwrap();
    hb_collector::migrate(&database).await.unwrap();
    let mut store = Store::connect(&database).await.unwrap();
    let every_other: Vec<u32> = (0..200).map(|i| i * 2).collect();
    let w = write(&mut store, "e", 1, &every_other[..100]).await;
    assert_eq!(w[0].ranges.len(), hb_shared::MAX_STORED_RANGES);
    let w = write(&mut store, "e", 1, &every_other[100..]).await;
    let r = &w[0].ranges;
    assert_eq!(r.len(), hb_shared::MAX_STORED_RANGES);
    assert_eq!(r[0], (0, 0), "the lowest range stays");
    assert_eq!(r[1], (274, 274));
    assert_eq!(*r.last().unwrap(), (398, 398), "the newest stay");
}
