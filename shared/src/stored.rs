//! Storage confirmations: which of a device's readings PostgreSQL holds, sent back
//! from the collector (Kafka `hb.stored.v1`) through the bridge (MQTT
//! `{root}/v1/devices/{id}/stored`, retained) to the agent, which releases its
//! spool only for readings named here. A broker's PUBACK is not durability; this
//! is.
//!
//! A confirmation lists, per epoch, ranges of sequence numbers that are stored
//! (or were refused for good and sit in quarantine: the agent must not keep
//! resending those either). The first range usually starts at 0: its end is the
//! contiguous stored watermark. Further ranges exist where readings arrived out
//! of order (a backlog drained behind live readings) or where a gap will never
//! fill because the agent dropped readings from a full buffer: a single watermark
//! would stop at such a gap forever, and every later reading of the epoch would
//! stay unconfirmed. Only what is listed is released, so a range left out (the
//! list is capped) costs a resend, never a reading.
//!
//! JSON, so an operator can read it with any MQTT client, and bounded when
//! decoding.

use serde::{Deserialize, Serialize};

use crate::{DeviceId, Error, Result};

/// Version of the confirmation document.
pub const STORED_VERSION: u8 = 1;
/// Most epochs one confirmation names.
pub const MAX_STORED_EPOCHS: usize = 8;
/// Most ranges per epoch: the lowest (the watermark) and the highest others.
/// The collector keeps no more than these per `(device, epoch)` either, so a
/// confirmation names everything it knows of an epoch.
pub const MAX_STORED_RANGES: usize = 64;
/// Largest confirmation accepted when decoding (64 ranges of two 10-digit
/// numbers in each of 8 epochs).
pub const STORED_MAX_SIZE: usize = 16 * 1024;

/// Stored sequence numbers of one epoch, as inclusive `[first, last]` ranges in
/// ascending order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRanges {
    /// The epoch.
    pub epoch: u32,
    /// Inclusive ranges `[first, last]`, ascending and disjoint.
    pub ranges: Vec<(u32, u32)>,
}

impl EpochRanges {
    /// Keeps at most [`MAX_STORED_RANGES`] of `ranges` (ascending, disjoint): the
    /// lowest, which carries the watermark, and the highest others, which cover
    /// what a device most likely still holds.
    pub fn capped(epoch: u32, mut ranges: Vec<(u32, u32)>) -> Self {
        if ranges.len() > MAX_STORED_RANGES {
            let tail = ranges.split_off(ranges.len() - (MAX_STORED_RANGES - 1));
            ranges.truncate(1);
            ranges.extend(tail);
        }
        Self { epoch, ranges }
    }

    /// The contiguous stored watermark: the highest `seq` with every reading of
    /// the epoch from 0 to it stored.
    pub fn watermark(&self) -> Option<u32> {
        match self.ranges.first() {
            Some(&(0, last)) => Some(last),
            _ => None,
        }
    }

    /// Whether `seq` is confirmed.
    pub fn contains(&self, seq: u32) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= seq && seq <= b)
    }
}

/// The confirmation document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConfirmation {
    /// Document version, [`STORED_VERSION`].
    pub version: u8,
    /// The device.
    pub device_id: DeviceId,
    /// Epochs whose stored readings changed, newest information per epoch.
    pub epochs: Vec<EpochRanges>,
}

impl StoredConfirmation {
    /// A confirmation for `device` (epochs beyond [`MAX_STORED_EPOCHS`] are left
    /// out, the lowest first: the device is furthest along in its newest).
    pub fn new(device_id: DeviceId, mut epochs: Vec<EpochRanges>) -> Self {
        epochs.sort_by_key(|e| e.epoch);
        if epochs.len() > MAX_STORED_EPOCHS {
            epochs.drain(..epochs.len() - MAX_STORED_EPOCHS);
        }
        Self {
            version: STORED_VERSION,
            device_id,
            epochs,
        }
    }

    /// Folds a newer confirmation of the same device into this one: per epoch the
    /// newer ranges win (stored sets only grow), epochs only in the older one stay.
    pub fn merge(&mut self, newer: StoredConfirmation) {
        for e in newer.epochs {
            match self.epochs.iter_mut().find(|o| o.epoch == e.epoch) {
                Some(o) => *o = e,
                None => self.epochs.push(e),
            }
        }
        let epochs = std::mem::take(&mut self.epochs);
        *self = Self::new(self.device_id.clone(), epochs);
    }

    /// JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain fields always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks a confirmation: size, version, counts and ordering.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > STORED_MAX_SIZE {
            return Err(Error::PayloadTooLarge {
                size: bytes.len(),
                max: STORED_MAX_SIZE,
            });
        }
        let c: StoredConfirmation =
            serde_json::from_slice(bytes).map_err(|e| Error::DecodeJson(e.to_string()))?;
        if c.version != STORED_VERSION {
            return Err(Error::UnsupportedVersion(c.version));
        }
        let ordered = |r: &[(u32, u32)]| {
            r.iter().all(|&(a, b)| a <= b) && r.windows(2).all(|w| w[0].1 < w[1].0)
        };
        if c.epochs.len() > MAX_STORED_EPOCHS
            || c.epochs
                .iter()
                .any(|e| e.ranges.len() > MAX_STORED_RANGES || !ordered(&e.ranges))
        {
            return Err(Error::DecodeJson(
                "confirmation ranges out of order or over the limits".into(),
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceId {
        DeviceId::new("strap-1").unwrap()
    }

    #[test]
    fn a_confirmation_round_trips_through_json() {
        let c = StoredConfirmation::new(
            device(),
            vec![EpochRanges {
                epoch: 3,
                ranges: vec![(0, 57), (152, 500)],
            }],
        );
        let json = c.to_json();
        assert!(String::from_utf8_lossy(&json).contains(r#""ranges":[[0,57],[152,500]]"#));
        assert_eq!(StoredConfirmation::from_json(&json).unwrap(), c);
        assert_eq!(c.epochs[0].watermark(), Some(57));
        assert!(c.epochs[0].contains(152) && !c.epochs[0].contains(58));
    }

    #[test]
    fn no_watermark_until_the_first_reading_of_the_epoch_is_stored() {
        let e = EpochRanges {
            epoch: 1,
            ranges: vec![(5, 9)],
        };
        assert_eq!(e.watermark(), None);
    }

    #[test]
    fn too_many_ranges_keep_the_watermark_and_the_newest() {
        let ranges: Vec<(u32, u32)> = (0..100).map(|i| (i * 10, i * 10 + 5)).collect();
        let e = EpochRanges::capped(1, ranges);
        assert_eq!(e.ranges.len(), MAX_STORED_RANGES);
        assert_eq!(e.ranges[0], (0, 5));
        assert_eq!(e.ranges[1], (370, 375));
        assert_eq!(*e.ranges.last().unwrap(), (990, 995));
    }

    #[test]
    fn merging_keeps_the_newer_ranges_per_epoch_and_older_epochs() {
        let mut a = StoredConfirmation::new(
            device(),
            vec![
                EpochRanges {
                    epoch: 1,
                    ranges: vec![(0, 10)],
                },
                EpochRanges {
                    epoch: 2,
                    ranges: vec![(0, 3)],
                },
            ],
        );
        a.merge(StoredConfirmation::new(
            device(),
            vec![EpochRanges {
                epoch: 2,
                ranges: vec![(0, 9)],
            }],
        ));
        assert_eq!(a.epochs.len(), 2);
        assert_eq!(a.epochs[1].ranges, vec![(0, 9)]);
        assert_eq!(a.epochs[0].ranges, vec![(0, 10)]);
    }

    #[test]
    fn malformed_confirmations_are_refused() {
        for bad in [
            r#"{"version":2,"device_id":"a","epochs":[]}"#,
            r#"{"version":1,"device_id":"a b","epochs":[]}"#,
            r#"{"version":1,"device_id":"a","epochs":[{"epoch":1,"ranges":[[5,3]]}]}"#,
            r#"{"version":1,"device_id":"a","epochs":[{"epoch":1,"ranges":[[0,5],[5,9]]}]}"#,
            r#"{"version":1,"device_id":"a"}"#,
            "not json",
        ] {
            assert!(
                StoredConfirmation::from_json(bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
        let huge = vec![b' '; STORED_MAX_SIZE + 1];
        assert!(matches!(
            StoredConfirmation::from_json(&huge),
            Err(Error::PayloadTooLarge { .. })
        ));
    }
}
