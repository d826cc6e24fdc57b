//! Device identity: the `[A-Za-z0-9_-]{1,64}` name that appears in MQTT topics,
//! payloads, Kafka keys and database rows.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Longest device id accepted anywhere in the system.
pub const DEVICE_ID_MAX_LEN: usize = 64;

/// A validated device id.
///
/// Validation happens on construction and on deserialisation, so a value of this
/// type is always safe to splice into an MQTT topic or a log line: it cannot contain
/// `/`, `+`, `#`, whitespace or control characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(
    try_from = "heapless::String<DEVICE_ID_MAX_LEN>",
    into = "heapless::String<DEVICE_ID_MAX_LEN>"
)]
pub struct DeviceId(heapless::String<DEVICE_ID_MAX_LEN>);

impl DeviceId {
    /// Validates `s` and wraps it.
    pub fn new(s: &str) -> Result<Self> {
        validate(s)?;
        let mut inner = heapless::String::new();
        inner
            .push_str(s)
            .map_err(|_| Error::InvalidDeviceId("longer than 64 characters"))?;
        Ok(Self(inner))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

fn validate(s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::InvalidDeviceId("empty"));
    }
    if s.len() > DEVICE_ID_MAX_LEN {
        return Err(Error::InvalidDeviceId("longer than 64 characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Error::InvalidDeviceId(
            "only A-Z, a-z, 0-9, '_' and '-' are allowed",
        ));
    }
    Ok(())
}

impl TryFrom<heapless::String<DEVICE_ID_MAX_LEN>> for DeviceId {
    type Error = Error;

    fn try_from(s: heapless::String<DEVICE_ID_MAX_LEN>) -> Result<Self> {
        validate(&s)?;
        Ok(Self(s))
    }
}

impl From<DeviceId> for heapless::String<DEVICE_ID_MAX_LEN> {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

impl FromStr for DeviceId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_letters_digits_dash_and_underscore() {
        for ok in ["a", "strap-01", "Z_9", &"x".repeat(64)] {
            assert!(DeviceId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_empty_long_and_topic_characters() {
        for bad in ["", &"x".repeat(65), "a/b", "a+b", "a#", "a b", "é", "a\0"] {
            assert!(DeviceId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deserialisation_validates() {
        assert!(serde_json::from_str::<DeviceId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<DeviceId>("\"no/slash\"").is_err());
        assert!(serde_json::from_str::<DeviceId>(&format!("\"{}\"", "y".repeat(65))).is_err());
    }
}
