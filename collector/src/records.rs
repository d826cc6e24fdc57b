//! Turning Kafka records into rows: decode the envelope, check it, classify each
//! reading. A record that cannot be accepted becomes a quarantine row instead; it
//! never stops the batch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hb_shared::{codec, ContentType, Envelope, Thresholds};

/// Earliest device timestamp accepted: 2000-01-01T00:00:00Z.
const TS_MIN_MS: i64 = 946_684_800_000;
/// Latest device timestamp accepted: 2100-01-01T00:00:00Z.
const TS_MAX_MS: i64 = 4_102_444_800_000;

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
    /// Device timestamp.
    pub ts: SystemTime,
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
}

/// A record the collector refuses, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRow {
    /// Where it came from.
    pub source: Source,
    /// Stable reason code.
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
    /// The raw payload.
    pub payload: Vec<u8>,
    /// When the collector received it.
    pub received_at: SystemTime,
}

/// What one Kafka record turned into.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// Rows to insert.
    Readings(Vec<ReadingRow>),
    /// A quarantine entry.
    Quarantined(QuarantineRow),
}

/// Decodes and checks one record's payload.
pub fn accept(
    source: &Source,
    content_type: Option<&[u8]>,
    key: Option<&[u8]>,
    payload: &[u8],
    thresholds: &Thresholds,
    received_at: SystemTime,
) -> Accepted {
    let quarantine = |reason: &'static str, detail: String| {
        Accepted::Quarantined(QuarantineRow {
            source: source.clone(),
            reason,
            detail,
            payload: payload.to_vec(),
            received_at,
        })
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
    match rows(&envelope, source, thresholds, received_at) {
        Ok(rows) => Accepted::Readings(rows),
        Err((reason, detail)) => quarantine(reason, detail),
    }
}

fn rows(
    envelope: &Envelope,
    source: &Source,
    thresholds: &Thresholds,
    received_at: SystemTime,
) -> Result<Vec<ReadingRow>, (&'static str, String)> {
    envelope
        .readings
        .iter()
        .map(|r| {
            if !(TS_MIN_MS..TS_MAX_MS).contains(&r.ts_ms) {
                return Err((
                    "timestamp_out_of_range",
                    format!("seq {} has ts_ms {} outside 2000–2100", r.seq, r.ts_ms),
                ));
            }
            let mono_ms = i64::try_from(r.mono_ms).map_err(|_| {
                (
                    "mono_out_of_range",
                    format!("seq {} mono_ms {}", r.seq, r.mono_ms),
                )
            })?;
            Ok(ReadingRow {
                device_id: envelope.device_id.as_str().to_owned(),
                epoch: i64::from(r.epoch),
                seq: i64::from(r.seq),
                // In range by the check above, so positive and small.
                ts: UNIX_EPOCH + Duration::from_millis(r.ts_ms as u64),
                mono_ms,
                clock_synced: r.clock_synced,
                received_at,
                bpm: i32::from(r.bpm),
                contact: r.contact.as_str(),
                rr_1024: r.rr_1024.iter().map(|&v| i32::from(v)).collect(),
                energy_kj: r.energy_kj.map(i32::from),
                status: thresholds.classify(r.bpm, r.contact, &r.rr_1024).as_str(),
                local_flag: r.local_flag.map(|s| s.as_str()),
                backfill: r.backfill,
                kafka_partition: source.partition,
                kafka_offset: source.offset,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hb_shared::{Contact, DeviceId, Reading};

    fn source() -> Source {
        Source {
            topic: "t".into(),
            partition: 2,
            offset: 40,
        }
    }

    fn reading(bpm: u16, ts_ms: i64) -> Reading {
        Reading {
            epoch: 1,
            seq: 7,
            ts_ms,
            mono_ms: 5,
            clock_synced: true,
            bpm,
            contact: Contact::Detected,
            rr_1024: Default::default(),
            energy_kj: None,
            local_flag: None,
            backfill: false,
        }
    }

    fn accept_postcard(key: &[u8], r: Reading) -> Accepted {
        let e = Envelope::single(DeviceId::new("dev").unwrap(), r);
        let bytes = codec::encode_postcard(&e).unwrap();
        accept(
            &source(),
            None,
            Some(key),
            &bytes,
            &Thresholds::default(),
            SystemTime::now(),
        )
    }

    #[test]
    fn a_good_record_becomes_classified_rows() {
        match accept_postcard(b"dev", reading(45, 1_764_000_000_000)) {
            Accepted::Readings(rows) => {
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].status, "bradycardia");
                assert_eq!((rows[0].epoch, rows[0].seq), (1, 7));
                assert_eq!((rows[0].kafka_partition, rows[0].kafka_offset), (2, 40));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_a_foreign_key_and_absurd_timestamps_are_quarantined() {
        let reason = |a: Accepted| match a {
            Accepted::Quarantined(q) => q.reason,
            Accepted::Readings(_) => "accepted",
        };
        let t = Thresholds::default();
        let now = SystemTime::now();
        assert_eq!(
            reason(accept(&source(), None, None, b"\x01\xff", &t, now)),
            "undecodable"
        );
        assert_eq!(
            reason(accept(&source(), Some(b"text/xml"), None, b"<a/>", &t, now)),
            "unknown_content_type"
        );
        assert_eq!(
            reason(accept_postcard(b"other", reading(60, 1_764_000_000_000))),
            "key_mismatch"
        );
        assert_eq!(
            reason(accept_postcard(b"dev", reading(60, i64::MAX))),
            "timestamp_out_of_range"
        );
        assert_eq!(
            reason(accept_postcard(b"dev", reading(60, -5))),
            "timestamp_out_of_range"
        );
    }
}
