//! Alert events from the agent: the onset, escalation, de-escalation and clear of
//! the agent's own alert episodes (the [`crate::alert`] state machine, the same
//! rules as the collector's), on the device's `events` topic, ahead of any
//! backlog, so that a change is seen within seconds even while hours of readings
//! are still draining. The collector's alerts, evaluated on stored readings, are
//! authoritative; these are the early warning.

use serde::{Deserialize, Serialize};

use crate::{AlertKind, DeviceId, Error, Result, Severity, Transition, TransitionKind};

/// Wire version of [`DeviceEvent`] (1 was a per-reading classification change).
pub const EVENT_VERSION: u8 = 2;

/// One transition of one of the agent's alert episodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEvent {
    /// Wire format version ([`EVENT_VERSION`]).
    pub version: u8,
    /// The device.
    pub device_id: DeviceId,
    /// Epoch of the reading that caused the transition.
    pub epoch: u32,
    /// Sequence number of that reading.
    pub seq: u32,
    /// Its timestamp, Unix ms.
    pub ts_ms: i64,
    /// Its heart rate (0 without a signal).
    pub bpm: u16,
    /// What the alert is about.
    pub kind: AlertKind,
    /// What happened to it.
    pub transition: TransitionKind,
    /// Its severity now.
    pub severity: Severity,
    /// Epoch of the reading the episode began with (its identity, with `kind`).
    pub origin_epoch: u32,
    /// Seq of the reading the episode began with.
    pub origin_seq: u32,
    /// 0 for the onset, then one more per transition of the same episode.
    pub ordinal: u32,
}

impl DeviceEvent {
    /// The event of transition `t`, caused by reading `(epoch, seq)`.
    pub fn of(device: &DeviceId, epoch: u32, seq: u32, t: &Transition) -> Self {
        Self {
            version: EVENT_VERSION,
            device_id: device.clone(),
            epoch,
            seq,
            ts_ms: t.at_ms,
            bpm: t.value_bpm.unwrap_or(0),
            kind: t.kind,
            transition: t.transition,
            severity: t.severity,
            origin_epoch: t.origin.epoch,
            origin_seq: t.origin.seq,
            ordinal: t.ordinal,
        }
    }

    /// True when an episode begins.
    pub fn is_onset(&self) -> bool {
        self.transition == TransitionKind::Open
    }

    /// Encodes as postcard.
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_allocvec(self).map_err(|e| Error::Encode(e.to_string()))
    }

    /// Decodes and checks the version. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        match bytes.first() {
            None => return Err(Error::EmptyPayload),
            Some(&v) if v != EVENT_VERSION => return Err(Error::UnsupportedVersion(v)),
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
            version: EVENT_VERSION,
            device_id: DeviceId::new("d").unwrap(),
            epoch: 2,
            seq: 10,
            ts_ms: 1_764_000_000_000,
            bpm: 44,
            kind: AlertKind::Bradycardia,
            transition: TransitionKind::Open,
            severity: Severity::Medium,
            origin_epoch: 2,
            origin_seq: 0,
            ordinal: 0,
        };
        assert!(e.is_onset());
        assert_eq!(DeviceEvent::decode(&e.encode().unwrap()).unwrap(), e);
        assert!(DeviceEvent::decode(&[2, 0xff, 0xff]).is_err());
        assert_eq!(DeviceEvent::decode(&[1]), Err(Error::UnsupportedVersion(1)));
    }
}
