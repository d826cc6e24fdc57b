//! What both benchmark examples send: the same one-reading postcard envelopes, so
//! that the bridge and the raw producer move payloads of the same size.

use hb_shared::{codec, Contact, DeviceId, Envelope, Reading, Status};

/// Device `i` of the benchmark fleet: `bench-{i}`.
pub fn device(i: usize) -> DeviceId {
    DeviceId::new(&format!("bench-{i}")).expect("bench-N is a valid device id")
}

/// The `n`-th message of a run over `devices` devices: its device (round-robin) and
/// a valid postcard envelope of one reading (epoch 1, `seq` counting per device).
pub fn message(n: usize, devices: usize) -> (DeviceId, Vec<u8>) {
    let id = device(n % devices);
    let seq = (n / devices) as u32;
    let ts_ms = 1_764_000_000_000 + i64::from(seq) * 1000;
    let reading = Reading {
        mono_ms: u64::from(seq) * 1000,
        rr_1024: rr_intervals(),
        local_flag: Some(Status::Normal),
        ..Reading::new(1, seq, ts_ms, 72, Contact::Detected)
    };
    let payload = codec::encode_postcard(&Envelope::single(id.clone(), reading))
        .expect("a one-reading envelope encodes");
    (id, payload)
}

fn rr_intervals() -> hb_shared::RrIntervals {
    let mut rr = hb_shared::RrIntervals::new();
    let _ = rr.push(850);
    let _ = rr.push(860);
    rr
}
