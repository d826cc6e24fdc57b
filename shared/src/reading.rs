//! The v1 wire types: an [`Envelope`] of one or more [`Reading`]s from one device.

use serde::{Deserialize, Serialize};

use crate::DeviceId;

/// Envelope version this crate writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

/// Most readings in one envelope (a backlog drains in envelopes of up to this many).
pub const MAX_READINGS_PER_ENVELOPE: usize = 256;

/// Most RR intervals carried by one reading. A strap reports a few per second; a
/// 0x2A37 frame at the default BLE MTU holds at most nine.
pub const MAX_RR_INTERVALS: usize = 32;

/// Sensor contact as reported by the strap (0x2A37 flags bits 1–2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contact {
    /// The strap does not report contact.
    #[default]
    NotSupported,
    /// The strap reports no skin contact: the BPM is not trustworthy.
    NotDetected,
    /// The strap reports good skin contact.
    Detected,
}

impl Contact {
    /// Stable lowercase name, as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Contact::NotSupported => "not_supported",
            Contact::NotDetected => "not_detected",
            Contact::Detected => "detected",
        }
    }
}

/// Per-reading classification (see [`crate::Thresholds::classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Heart rate inside the configured band.
    Normal,
    /// Heart rate below the bradycardia threshold.
    Bradycardia,
    /// Heart rate above the tachycardia threshold.
    Tachycardia,
    /// No usable signal: no contact, a zero BPM, or implausible RR intervals.
    NoSignal,
}

impl Status {
    /// Stable lowercase name, as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Normal => "normal",
            Status::Bradycardia => "bradycardia",
            Status::Tachycardia => "tachycardia",
            Status::NoSignal => "no_signal",
        }
    }
}

/// RR intervals of one reading, in units of 1/1024 s.
pub type RrIntervals = heapless::Vec<u16, MAX_RR_INTERVALS>;

/// One heart-rate measurement. `(device_id, epoch, seq)` is its identity end to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    /// Boot counter of the agent, persisted and incremented at every start.
    pub epoch: u32,
    /// Position within the epoch, from 0, never reused.
    pub seq: u32,
    /// Measurement time on the device's clock, Unix milliseconds.
    pub ts_ms: i64,
    /// Milliseconds since the epoch started, from a monotonic clock: lets the
    /// collector correct `ts_ms` of readings taken before the clock was synced.
    #[serde(default)]
    pub mono_ms: u64,
    /// Whether the device clock was NTP-synchronised when the reading was taken.
    #[serde(default = "default_true")]
    pub clock_synced: bool,
    /// Heart rate in beats per minute (0 = no value).
    pub bpm: u16,
    /// Sensor contact state.
    pub contact: Contact,
    /// RR intervals, 1/1024 s each.
    #[serde(default)]
    pub rr_1024: RrIntervals,
    /// Cumulative energy expended in kJ, when the strap reports it.
    #[serde(default)]
    pub energy_kj: Option<u16>,
    /// The agent's own classification, when it made one.
    #[serde(default)]
    pub local_flag: Option<Status>,
    /// True when the reading is sent from the agent's spool backlog.
    #[serde(default)]
    pub backfill: bool,
}

fn default_true() -> bool {
    true
}

impl Reading {
    /// A reading with only the required fields set; the others take the values a
    /// JSON sender gets by leaving them out: no monotonic time, clock synced, no
    /// RR intervals or energy, no local flag, live (not backfill).
    pub fn new(epoch: u32, seq: u32, ts_ms: i64, bpm: u16, contact: Contact) -> Self {
        Self {
            epoch,
            seq,
            ts_ms,
            mono_ms: 0,
            clock_synced: true,
            bpm,
            contact,
            rr_1024: RrIntervals::new(),
            energy_kj: None,
            local_flag: None,
            backfill: false,
        }
    }
}

/// The readings of one envelope: at most [`MAX_READINGS_PER_ENVELOPE`], enforced
/// while decoding (a longer sequence is an error before anything beyond the limit
/// is allocated). Heap-allocated to its actual length, so that an envelope of one
/// reading is small to move around.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Readings(Vec<Reading>);

impl Readings {
    /// No readings.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends a reading; gives it back when the envelope is full.
    pub fn push(&mut self, reading: Reading) -> Result<(), Reading> {
        if self.0.len() >= MAX_READINGS_PER_ENVELOPE {
            return Err(reading);
        }
        self.0.push(reading);
        Ok(())
    }
}

impl core::ops::Deref for Readings {
    type Target = [Reading];

    fn deref(&self) -> &[Reading] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Readings {
    type Item = &'a Reading;
    type IntoIter = core::slice::Iter<'a, Reading>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Readings {
    type Item = Reading;
    type IntoIter = std::vec::IntoIter<Reading>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'de> Deserialize<'de> for Readings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bounded;
        impl<'de> serde::de::Visitor<'de> for Bounded {
            type Value = Readings;

            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "at most {MAX_READINGS_PER_ENVELOPE} readings")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Readings, A::Error> {
                let mut out =
                    Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_READINGS_PER_ENVELOPE));
                while let Some(r) = seq.next_element()? {
                    if out.len() == MAX_READINGS_PER_ENVELOPE {
                        return Err(serde::de::Error::invalid_length(out.len() + 1, &self));
                    }
                    out.push(r);
                }
                Ok(Readings(out))
            }
        }
        deserializer.deserialize_seq(Bounded)
    }
}

/// What a device publishes: one reading live, or a batch while draining a backlog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Wire format version, [`ENVELOPE_VERSION`] for this crate.
    pub version: u8,
    /// The sending device; must match the device in the MQTT topic.
    pub device_id: DeviceId,
    /// One or more readings, in sequence order.
    pub readings: Readings,
}

impl Envelope {
    /// An envelope of the current version holding `readings`.
    pub fn new(device_id: DeviceId, readings: Readings) -> Self {
        Self {
            version: ENVELOPE_VERSION,
            device_id,
            readings,
        }
    }

    /// An envelope holding exactly one reading.
    pub fn single(device_id: DeviceId, reading: Reading) -> Self {
        let mut readings = Readings::new();
        // Capacity is at least one: this cannot fail.
        let _ = readings.push(reading);
        Self::new(device_id, readings)
    }
}
