//! Heartbeat's shared vocabulary: the wire types every component speaks, their
//! bounded encodings, topic names and the anomaly rule. No I/O happens here, so the
//! agent, bridge and collector can all depend on it and tests need no services.
//!
//! # Layout
//! - [`alert`]: alert episodes, the state machine shared by collector and agent.
//! - [`ble`]: the Bluetooth Heart Rate Measurement (0x2A37) frame parser.
//! - [`device_id`]: the validated device id.
//! - [`device_event`]: the agent's alert transitions (the priority lane).
//! - [`device_status`]: the retained online/offline status document.
//! - [`reading`]: the v1 [`Envelope`] and [`Reading`] types.
//! - [`codec`]: postcard and JSON encoding with size and length bounds.
//! - [`classify`]: bradycardia/tachycardia/no-signal rule and NEWS2 severity.
//! - [`stored`]: storage confirmations sent back to the devices.
//! - [`topics`]: MQTT and Kafka topic names.

pub mod alert;
pub mod ble;
pub mod classify;
pub mod codec;
pub mod device_event;
pub mod device_id;
pub mod device_status;
pub mod reading;
pub mod stored;
pub mod topics;

pub use alert::{
    AlertKind, AlertRules, DeviceAlerts, Observation, Origin, Transition, TransitionKind,
};
pub use ble::{parse_heart_rate_measurement, HeartRateMeasurement};
pub use classify::{Severity, Thresholds};
pub use codec::{ContentType, JSON_MAX_SIZE, POSTCARD_MAX_SIZE};
pub use device_event::{DeviceEvent, EVENT_VERSION};
pub use device_id::{DeviceId, DEVICE_ID_MAX_LEN};
pub use device_status::{DeviceStatus, Presence};
pub use reading::{
    Contact, Envelope, Reading, Readings, RrIntervals, Status, ENVELOPE_VERSION,
    MAX_READINGS_PER_ENVELOPE, MAX_RR_INTERVALS,
};
pub use stored::{
    EpochRanges, StoredConfirmation, MAX_STORED_EPOCHS, MAX_STORED_RANGES, STORED_MAX_SIZE,
    STORED_VERSION,
};
pub use topics::{DeviceTopicKind, KafkaTopics, MqttTopics};

/// Everything that can go wrong in this crate. Each variant has a stable
/// [`Error::reason`] code, used as the quarantine reason downstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A device id failed validation.
    #[error("invalid device id: {0}")]
    InvalidDeviceId(&'static str),
    /// The payload was empty.
    #[error("empty payload")]
    EmptyPayload,
    /// The payload is larger than the decoder accepts.
    #[error("payload of {size} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Bytes received.
        size: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// The envelope's version is not one this build understands.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// postcard could not decode the payload.
    #[error("postcard decoding failed: {0}")]
    DecodePostcard(String),
    /// JSON could not be decoded into an envelope.
    #[error("JSON decoding failed: {0}")]
    DecodeJson(String),
    /// Bytes were left over after a complete envelope.
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
    /// The envelope held no readings.
    #[error("envelope has no readings")]
    EmptyEnvelope,
    /// Encoding failed (a value out of the format's range).
    #[error("encoding failed: {0}")]
    Encode(String),
    /// A Bluetooth Heart Rate Measurement frame was malformed.
    #[error("malformed heart rate frame: {0}")]
    BleFrame(&'static str),
}

impl Error {
    /// A short, stable, machine-readable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidDeviceId(_) => "invalid_device_id",
            Error::EmptyPayload => "empty_payload",
            Error::PayloadTooLarge { .. } => "too_large",
            Error::UnsupportedVersion(_) => "unsupported_version",
            Error::DecodePostcard(_) | Error::DecodeJson(_) => "undecodable",
            Error::TrailingBytes(_) => "trailing_bytes",
            Error::EmptyEnvelope => "empty_envelope",
            Error::Encode(_) => "encode_failed",
            Error::BleFrame(_) => "ble_frame",
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
