//! Local anomaly events: when the agent's own classification of a device changes
//! (onset or clear of bradycardia, tachycardia, no signal), it says so on the
//! device's `events` topic, ahead of any backlog, so that a change is seen within
//! seconds even while hours of readings are still draining.

use serde::{Deserialize, Serialize};

use crate::{DeviceId, Error, Result, Status, ENVELOPE_VERSION};

/// One change of the local classification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEvent {
    /// Wire format version ([`ENVELOPE_VERSION`]).
    pub version: u8,
    /// The device.
    pub device_id: DeviceId,
    /// Epoch of the reading that caused the change.
    pub epoch: u32,
    /// Sequence number of that reading.
    pub seq: u32,
    /// Its timestamp, Unix ms.
    pub ts_ms: i64,
    /// Its heart rate.
    pub bpm: u16,
    /// Classification before.
    pub previous: Status,
    /// Classification now.
    pub current: Status,
}

impl DeviceEvent {
    /// True when an abnormal state begins (`current` is not normal).
    pub fn is_onset(&self) -> bool {
        self.current != Status::Normal
    }

    /// Encodes as postcard.
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_allocvec(self).map_err(|e| Error::Encode(e.to_string()))
    }

    /// Decodes and checks the version. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        match bytes.first() {
            None => return Err(Error::EmptyPayload),
            Some(&v) if v != ENVELOPE_VERSION => return Err(Error::UnsupportedVersion(v)),
            Some(_) => {}
        }
        if bytes.len() > 1024 {
            return Err(Error::PayloadTooLarge {
                size: bytes.len(),
                max: 1024,
            });
        }
        let (event, rest) =
            postcard::take_from_bytes(bytes).map_err(|e| Error::DecodePostcard(e.to_string()))?;
        if !rest.is_empty() {
            return Err(Error::TrailingBytes(rest.len()));
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_garbage_is_an_error() {
        let e = DeviceEvent {
            version: ENVELOPE_VERSION,
            device_id: DeviceId::new("d").unwrap(),
            epoch: 2,
            seq: 10,
            ts_ms: 1_764_000_000_000,
            bpm: 44,
            previous: Status::Normal,
            current: Status::Bradycardia,
        };
        assert!(e.is_onset());
        assert_eq!(DeviceEvent::decode(&e.encode().unwrap()).unwrap(), e);
        assert!(DeviceEvent::decode(&[1, 0xff, 0xff]).is_err());
        assert_eq!(DeviceEvent::decode(&[3]), Err(Error::UnsupportedVersion(3)));
    }
}
