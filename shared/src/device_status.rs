//! The retained status a device keeps on its `status` topic: `online` with its
//! buffer figures while connected, `offline` (the MQTT Last Will) when the
//! connection dies without a goodbye. JSON, so operators can read it with any
//! MQTT client.

use serde::{Deserialize, Serialize};

/// Connected or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Connected and sending.
    Online,
    /// Gone (Last Will, or a clean shutdown).
    Offline,
}

/// The status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Online or offline.
    pub state: Presence,
    /// The agent's current epoch for this device.
    pub epoch: u32,
    /// When this status was written, Unix ms (0 in a Last Will, which is composed
    /// at connect time).
    #[serde(default)]
    pub ts_ms: i64,
    /// Readings stored but not yet acknowledged by the broker.
    #[serde(default)]
    pub buffered: u64,
    /// Readings dropped because the buffer was full, since the agent started.
    #[serde(default)]
    pub dropped: u64,
    /// Torn or corrupt spool tails skipped at start.
    #[serde(default)]
    pub corrupt_tails: u64,
    /// Readings sent but not yet confirmed stored by the collector.
    #[serde(default)]
    pub unconfirmed: u64,
    /// How long the device has waited for storage confirmations without any
    /// arriving, in milliseconds (0: nothing waits).
    #[serde(default)]
    pub confirm_lag_ms: u64,
}

impl DeviceStatus {
    /// `offline` with nothing else to say: the Last Will an agent registers at
    /// connect time for its device's `epoch`.
    pub fn offline(epoch: u32) -> Self {
        Self {
            state: Presence::Offline,
            epoch,
            ts_ms: 0,
            buffered: 0,
            dropped: 0,
            corrupt_tails: 0,
            unconfirmed: 0,
            confirm_lag_ms: 0,
        }
    }

    /// JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of plain fields always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_readable_json() {
        let s = DeviceStatus {
            state: Presence::Offline,
            epoch: 4,
            ts_ms: 0,
            buffered: 0,
            dropped: 3,
            corrupt_tails: 0,
            unconfirmed: 0,
            confirm_lag_ms: 0,
        };
        let text = String::from_utf8(s.to_json()).unwrap();
        assert!(text.contains(r#""state":"offline""#), "{text}");
        assert_eq!(serde_json::from_str::<DeviceStatus>(&text).unwrap(), s);
    }
}
