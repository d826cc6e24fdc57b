//! Turning Kafka records into rows: decode the envelope, check it, classify each
//! reading. A record that cannot be accepted becomes a quarantine row instead; it
//! never stops the batch.

use std::sync::Arc;
use std::time::SystemTime;

use hb_runtime::clock::{from_unix_ms, unix_ms};

use hb_shared::{codec, ContentType, Envelope, Reading, Thresholds};

/// Earliest device timestamp accepted at all: 2000-01-01T00:00:00Z.
const TS_MIN_MS: i64 = 946_684_800_000;
/// Latest device timestamp accepted at all: 2100-01-01T00:00:00Z.
const TS_MAX_MS: i64 = 4_102_444_800_000;

/// What makes a reading acceptable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Classification thresholds.
    pub thresholds: Thresholds,
    /// Lowest plausible heart rate (0 is always accepted: "no value").
    pub bpm_min: u16,
    /// Highest plausible heart rate.
    pub bpm_max: u16,
    /// How far a synced device clock may run ahead of the receive time.
    pub max_future_ms: i64,
    /// How old a (synced) reading may be when it arrives.
    pub max_age_ms: i64,
    /// A reading arriving later than this after it was measured is stored as
    /// backfill, even if it was sent live (it waited in a broker queue).
    pub late_after_ms: i64,
    /// Relative difference between the BPM and the rate implied by the RR
    /// intervals above which the reading is marked inconsistent.
    pub rr_tolerance: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            thresholds: Thresholds::default(),
            bpm_min: 20,
            bpm_max: 300,
            max_future_ms: 5 * 60 * 1000,
            max_age_ms: 30 * 24 * 3600 * 1000,
            late_after_ms: 10_000,
            rr_tolerance: 0.25,
        }
    }
}

/// Where a record came from in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// One reading, ready for `COPY`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingRow {
    /// Device id.
    pub device_id: String,
    /// Boot counter.
    pub epoch: i64,
    /// Sequence within the epoch.
    pub seq: i64,
    /// Device timestamp, as sent (part of the key).
    pub ts: SystemTime,
    /// `ts`, or for an unsynced device clock an estimate from the receive time.
    pub ts_corrected: SystemTime,
    /// Monotonic milliseconds within the epoch.
    pub mono_ms: i64,
    /// Device clock synchronised.
    pub clock_synced: bool,
    /// When the collector received the record.
    pub received_at: SystemTime,
    /// Beats per minute.
    pub bpm: i32,
    /// Contact state name.
    pub contact: &'static str,
    /// RR intervals in 1/1024 s.
    pub rr_1024: Vec<i32>,
    /// RR intervals agree with the BPM.
    pub rr_consistent: bool,
    /// Energy expended, kJ.
    pub energy_kj: Option<i32>,
    /// The collector's classification.
    pub status: &'static str,
    /// The agent's classification.
    pub local_flag: Option<&'static str>,
    /// Sent from a backlog.
    pub backfill: bool,
    /// Kafka partition.
    pub kafka_partition: i32,
    /// Kafka offset.
    pub kafka_offset: i64,
    /// Receive time minus (corrected) measurement time, in milliseconds.
    pub arrival_delay_ms: i64,
}

impl ReadingRow {
    /// Receive time minus device time, for synced clocks.
    pub fn clock_skew_ms(&self) -> Option<i64> {
        if !self.clock_synced {
            return None;
        }
        Some(unix_ms(self.received_at) - unix_ms(self.ts))
    }
}

/// A record, or one reading of it, that the collector refuses, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRow {
    /// Where it came from.
    pub source: Source,
    /// Stable reason code.
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
    /// The raw record payload, shared by the entries of one record (and stored
    /// once for them, in `quarantine_payloads`).
    pub payload: Arc<[u8]>,
    /// When the collector received it.
    pub received_at: SystemTime,
    /// The reading concerned, when only one reading of the record is refused.
    pub reading: Option<(String, i64, i64)>,
}

/// What one Kafka record turned into: rows to insert and quarantine entries
/// (a whole undecodable record, or single implausible readings of a good one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Rows for `readings`.
    pub rows: Vec<ReadingRow>,
    /// Rows for `quarantine`.
    pub quarantine: Vec<QuarantineRow>,
}

/// Decodes and checks one record's payload.
pub fn accept(
    source: &Source,
    content_type: Option<&[u8]>,
    key: Option<&[u8]>,
    payload: &[u8],
    rules: &Rules,
    received_at: SystemTime,
) -> Outcome {
    let quarantine = |reason: &'static str, detail: String| Outcome {
        rows: Vec::new(),
        quarantine: vec![QuarantineRow {
            source: source.clone(),
            reason,
            detail,
            payload: Arc::from(payload),
            received_at,
            reading: None,
        }],
    };
    let content_type = match content_type {
        None => ContentType::Postcard,
        Some(v) => match ContentType::from_header(v) {
            Some(ct) => ct,
            None => {
                return quarantine(
                    "unknown_content_type",
                    format!("content-type {:?}", String::from_utf8_lossy(v)),
                )
            }
        },
    };
    let envelope = match codec::decode(content_type, payload) {
        Ok(e) => e,
        Err(e) => return quarantine(e.reason(), e.to_string()),
    };
    if let Some(key) = key {
        if key != envelope.device_id.as_str().as_bytes() {
            return quarantine(
                "key_mismatch",
                format!(
                    "record key {:?} differs from device id {}",
                    String::from_utf8_lossy(key),
                    envelope.device_id
                ),
            );
        }
    }
    rows(&envelope, source, payload, rules, received_at)
}

fn rows(
    envelope: &Envelope,
    source: &Source,
    payload: &[u8],
    rules: &Rules,
    received_at: SystemTime,
) -> Outcome {
    let received_ms = unix_ms(received_at);
    // Readings of an unsynced clock are placed relative to the newest one, taken
    // to be about the receive time.
    let newest_mono = envelope
        .readings
        .iter()
        .map(|r| r.mono_ms)
        .max()
        .unwrap_or(0);
    let mut out = Outcome::default();
    let mut shared: Option<Arc<[u8]>> = None;
    for r in &envelope.readings {
        match check(r, rules, received_ms) {
            Ok(()) => {
                let corrected_ms = if r.clock_synced {
                    r.ts_ms
                } else {
                    received_ms - newest_mono.saturating_sub(r.mono_ms).min(i64::MAX as u64) as i64
                };
                out.rows.push(ReadingRow {
                    device_id: envelope.device_id.as_str().to_owned(),
                    epoch: i64::from(r.epoch),
                    seq: i64::from(r.seq),
                    ts: from_unix_ms(r.ts_ms),
                    ts_corrected: from_unix_ms(corrected_ms.clamp(TS_MIN_MS, TS_MAX_MS)),
                    mono_ms: r.mono_ms.min(i64::MAX as u64) as i64,
                    clock_synced: r.clock_synced,
                    received_at,
                    bpm: i32::from(r.bpm),
                    contact: r.contact.as_str(),
                    rr_1024: r.rr_1024.iter().map(|&v| i32::from(v)).collect(),
                    rr_consistent: rr_consistent(r, rules.rr_tolerance),
                    energy_kj: r.energy_kj.map(i32::from),
                    status: rules
                        .thresholds
                        .classify(r.bpm, r.contact, &r.rr_1024)
                        .as_str(),
                    local_flag: r.local_flag.map(|s| s.as_str()),
                    backfill: r.backfill || received_ms - corrected_ms > rules.late_after_ms,
                    kafka_partition: source.partition,
                    kafka_offset: source.offset,
                    arrival_delay_ms: received_ms - corrected_ms,
                });
            }
            Err((reason, detail)) => out.quarantine.push(QuarantineRow {
                source: source.clone(),
                reason,
                detail,
                payload: Arc::clone(shared.get_or_insert_with(|| Arc::from(payload))),
                received_at,
                reading: Some((
                    envelope.device_id.to_string(),
                    i64::from(r.epoch),
                    i64::from(r.seq),
                )),
            }),
        }
    }
    out
}

/// Whether a reading may be stored.
fn check(r: &Reading, rules: &Rules, received_ms: i64) -> Result<(), (&'static str, String)> {
    if r.bpm != 0 && !(rules.bpm_min..=rules.bpm_max).contains(&r.bpm) {
        return Err((
            "bpm_out_of_range",
            format!(
                "seq {}: {} BPM is outside {}–{}",
                r.seq, r.bpm, rules.bpm_min, rules.bpm_max
            ),
        ));
    }
    if !(TS_MIN_MS..TS_MAX_MS).contains(&r.ts_ms) {
        return Err((
            "timestamp_out_of_range",
            format!("seq {}: ts_ms {} is outside 2000–2100", r.seq, r.ts_ms),
        ));
    }
    if r.clock_synced {
        let ahead = r.ts_ms - received_ms;
        if ahead > rules.max_future_ms {
            return Err((
                "clock_skew",
                format!("seq {}: {ahead} ms in the future", r.seq),
            ));
        }
        if -ahead > rules.max_age_ms {
            return Err(("too_old", format!("seq {}: {} ms old", r.seq, -ahead)));
        }
    }
    Ok(())
}

/// Whether the RR intervals imply (about) the reported heart rate.
fn rr_consistent(r: &Reading, tolerance: f64) -> bool {
    if r.rr_1024.is_empty() || r.bpm == 0 {
        return true;
    }
    let mean = r.rr_1024.iter().map(|&v| f64::from(v)).sum::<f64>() / r.rr_1024.len() as f64;
    if mean <= 0.0 {
        return false;
    }
    let implied = 60.0 * 1024.0 / mean;
    (implied - f64::from(r.bpm)).abs() / f64::from(r.bpm) <= tolerance
}

/// A plausible stored reading (70 BPM, normal, live, one second apart by
/// `seq`), for the unit tests of the modules that write rows.
#[cfg(test)]
pub(crate) fn sample_row(device: &str, epoch: i64, seq: i64) -> ReadingRow {
    let ts = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_764_000_000 + seq as u64);
    ReadingRow {
        device_id: device.into(),
        epoch,
        seq,
        ts,
        ts_corrected: ts,
        mono_ms: 0,
        clock_synced: true,
        received_at: ts,
        bpm: 70,
        contact: "detected",
        rr_1024: vec![],
        rr_consistent: true,
        energy_kj: None,
        status: "normal",
        local_flag: None,
        backfill: false,
        kafka_partition: 0,
        kafka_offset: seq,
        arrival_delay_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hb_shared::{Contact, DeviceId};

    fn source() -> Source {
        Source {
            topic: "t".into(),
            partition: 2,
            offset: 40,
        }
    }

    const NOW: i64 = 1_764_000_000_000;

    fn reading(seq: u32, bpm: u16, ts_ms: i64) -> Reading {
        Reading {
            mono_ms: u64::from(seq) * 1000,
            ..Reading::new(1, seq, ts_ms, bpm, Contact::Detected)
        }
    }

    fn accept_postcard(key: &[u8], readings: Vec<Reading>) -> Outcome {
        let mut r = hb_shared::Readings::new();
        for x in readings {
            r.push(x).unwrap();
        }
        let e = Envelope::new(DeviceId::new("dev").unwrap(), r);
        let bytes = codec::encode_postcard(&e).unwrap();
        accept(
            &source(),
            None,
            Some(key),
            &bytes,
            &Rules::default(),
            from_unix_ms(NOW),
        )
    }

    fn reasons(o: &Outcome) -> Vec<&'static str> {
        o.quarantine.iter().map(|q| q.reason).collect()
    }

    #[test]
    fn a_good_record_becomes_classified_rows() {
        let o = accept_postcard(b"dev", vec![reading(7, 45, NOW - 1000)]);
        assert_eq!(o.rows.len(), 1);
        assert!(o.quarantine.is_empty());
        assert_eq!(o.rows[0].status, "bradycardia");
        assert_eq!((o.rows[0].epoch, o.rows[0].seq), (1, 7));
        assert_eq!((o.rows[0].kafka_partition, o.rows[0].kafka_offset), (2, 40));
        assert_eq!(o.rows[0].clock_skew_ms(), Some(1000));
    }

    #[test]
    fn a_reading_sent_live_but_arriving_late_is_stored_as_backfill() {
        let o = accept_postcard(
            b"dev",
            vec![
                reading(0, 60, NOW - 60_000),
                reading(1, 60, NOW - 9_000),
                Reading {
                    backfill: true,
                    ..reading(2, 60, NOW - 1_000)
                },
            ],
        );
        let flags: Vec<bool> = o.rows.iter().map(|r| r.backfill).collect();
        assert_eq!(flags, [true, false, true]);
    }

    #[test]
    fn garbage_a_foreign_key_and_unknown_content_types_quarantine_the_record() {
        let now = from_unix_ms(NOW);
        let rules = Rules::default();
        let r = |o: Outcome| reasons(&o);
        assert_eq!(
            r(accept(&source(), None, None, b"\x01\xff", &rules, now)),
            ["undecodable"]
        );
        assert_eq!(
            r(accept(
                &source(),
                Some(b"text/xml"),
                None,
                b"<a/>",
                &rules,
                now
            )),
            ["unknown_content_type"]
        );
        assert_eq!(
            r(accept_postcard(b"other", vec![reading(0, 60, NOW)])),
            ["key_mismatch"]
        );
    }

    #[test]
    fn implausible_readings_are_quarantined_one_by_one_and_the_rest_stored() {
        let o = accept_postcard(
            b"dev",
            vec![
                reading(0, 60, NOW),
                reading(1, 400, NOW),                  // implausible rate
                reading(2, 0, NOW),                    // "no value" is fine
                reading(3, 60, NOW + 3_600_000),       // an hour in the future
                reading(4, 60, NOW - 40 * 86_400_000), // older than 30 days
                reading(5, 60, i64::MAX),
                reading(6, 10, NOW),
            ],
        );
        assert_eq!(o.rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(o.rows[1].status, "no_signal");
        assert_eq!(
            reasons(&o),
            [
                "bpm_out_of_range",
                "clock_skew",
                "too_old",
                "timestamp_out_of_range",
                "bpm_out_of_range"
            ]
        );
        assert_eq!(o.quarantine[0].reading, Some(("dev".into(), 1, 1)));
    }

    #[test]
    fn an_unsynced_clock_is_corrected_not_rejected() {
        let mut a = reading(0, 60, NOW - 5 * 86_400_000 - 10_000);
        let mut b = reading(1, 60, NOW - 5 * 86_400_000);
        a.clock_synced = false;
        b.clock_synced = false;
        a.mono_ms = 20_000;
        b.mono_ms = 30_000;
        let o = accept_postcard(b"dev", vec![a, b]);
        assert!(o.quarantine.is_empty());
        assert_eq!(unix_ms(o.rows[1].ts_corrected), NOW);
        assert_eq!(unix_ms(o.rows[0].ts_corrected), NOW - 10_000);
        assert_eq!(
            unix_ms(o.rows[0].ts),
            NOW - 5 * 86_400_000 - 10_000,
            "the key keeps the device's ts"
        );
        assert_eq!(o.rows[0].clock_skew_ms(), None);
    }

    #[test]
    fn rr_intervals_that_contradict_the_bpm_are_marked_not_rejected() {
        let mut good = reading(0, 60, NOW);
        good.rr_1024 = heapless::Vec::from_slice(&[1024, 1000]).unwrap();
        let mut bad = reading(1, 120, NOW);
        bad.rr_1024 = heapless::Vec::from_slice(&[1024]).unwrap();
        let o = accept_postcard(b"dev", vec![good, bad]);
        assert_eq!(
            o.rows.iter().map(|r| r.rr_consistent).collect::<Vec<_>>(),
            [true, false]
        );
    }
}
