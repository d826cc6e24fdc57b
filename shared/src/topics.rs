//! MQTT and Kafka topic names. Every component derives names from here so that a
//! rename happens in one place. Both namespaces can be prefixed, which lets several
//! deployments (or test runs) share one broker without seeing each other's data.

use crate::DeviceId;

/// What an MQTT device topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceTopicKind {
    /// Readings, postcard-encoded.
    Readings,
    /// Readings, JSON-encoded.
    ReadingsJson,
    /// Retained `online`/`offline` status.
    Status,
    /// Local anomaly onset/clear events (priority lane).
    Events,
    /// Storage confirmations sent back to the device.
    Stored,
}

impl DeviceTopicKind {
    const ALL: [DeviceTopicKind; 5] = [
        DeviceTopicKind::Readings,
        DeviceTopicKind::ReadingsJson,
        DeviceTopicKind::Status,
        DeviceTopicKind::Events,
        DeviceTopicKind::Stored,
    ];

    fn suffix(self) -> &'static str {
        match self {
            DeviceTopicKind::Readings => "readings",
            DeviceTopicKind::ReadingsJson => "readings/json",
            DeviceTopicKind::Status => "status",
            DeviceTopicKind::Events => "events",
            DeviceTopicKind::Stored => "stored",
        }
    }
}

/// MQTT topic names under a root (default `hb`): `{root}/v1/devices/{id}/{kind}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTopics {
    root: String,
}

impl Default for MqttTopics {
    fn default() -> Self {
        Self::new("hb")
    }
}

impl MqttTopics {
    /// Topics under `root` (no leading or trailing slash).
    pub fn new(root: &str) -> Self {
        Self {
            root: root.trim_matches('/').to_owned(),
        }
    }

    /// The topic a device publishes `kind` to.
    pub fn device(&self, device: &DeviceId, kind: DeviceTopicKind) -> String {
        format!("{}/v1/devices/{}/{}", self.root, device, kind.suffix())
    }

    /// The wildcard filter matching `kind` for every device.
    pub fn all_devices(&self, kind: DeviceTopicKind) -> String {
        format!("{}/v1/devices/+/{}", self.root, kind.suffix())
    }

    /// The shared-subscription filter through which a group of consumers splits
    /// `kind` for every device.
    pub fn shared(&self, group: &str, kind: DeviceTopicKind) -> String {
        format!("$share/{group}/{}", self.all_devices(kind))
    }

    /// Splits a device topic into its device id and kind. `None` when the topic is
    /// not one of ours or the device id is invalid.
    pub fn parse(&self, topic: &str) -> Option<(DeviceId, DeviceTopicKind)> {
        let rest = topic.strip_prefix(self.root.as_str())?;
        let rest = rest.strip_prefix("/v1/devices/")?;
        let (device, suffix) = rest.split_once('/')?;
        let kind = DeviceTopicKind::ALL
            .into_iter()
            .find(|k| k.suffix() == suffix)?;
        Some((DeviceId::new(device).ok()?, kind))
    }
}

/// Kafka topic names, optionally prefixed (`{prefix}hb.readings.v1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaTopics {
    prefix: String,
}

impl KafkaTopics {
    /// Topics whose names start with `prefix` (may be empty).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Readings, keyed by device id.
    pub fn readings(&self) -> String {
        format!("{}hb.readings.v1", self.prefix)
    }

    /// Device status changes (online/offline).
    pub fn device_status(&self) -> String {
        format!("{}hb.device-status.v1", self.prefix)
    }

    /// Local anomaly events from the agents.
    pub fn events(&self) -> String {
        format!("{}hb.events.v1", self.prefix)
    }

    /// Raw payloads the bridge could not accept, with a `reason` header.
    pub fn quarantine(&self) -> String {
        format!("{}hb.quarantine.v1", self.prefix)
    }

    /// Storage confirmations from the collectors, keyed by device id
    /// ([`crate::StoredConfirmation`]); compacted, the newest per device counts.
    pub fn stored(&self) -> String {
        format!("{}hb.stored.v1", self.prefix)
    }

    /// Alert transitions from the collectors, keyed by device id, for paging and
    /// other consumers; at least once, each with a `transition_id` to drop repeats.
    pub fn alerts(&self) -> String {
        format!("{}hb.alerts.v1", self.prefix)
    }

    /// Every topic the system uses, for explicit creation.
    pub fn all(&self) -> [String; 6] {
        [
            self.readings(),
            self.device_status(),
            self.events(),
            self.quarantine(),
            self.stored(),
            self.alerts(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_topics_round_trip_through_parse() {
        let t = MqttTopics::new("hb");
        let d = DeviceId::new("strap-1").unwrap();
        for kind in DeviceTopicKind::ALL {
            let topic = t.device(&d, kind);
            assert_eq!(t.parse(&topic), Some((d.clone(), kind)), "{topic}");
        }
        assert_eq!(
            t.device(&d, DeviceTopicKind::Readings),
            "hb/v1/devices/strap-1/readings"
        );
    }

    #[test]
    fn foreign_and_malformed_topics_do_not_parse() {
        let t = MqttTopics::new("hb");
        for topic in [
            "other/v1/devices/a/readings",
            "hb/v2/devices/a/readings",
            "hb/v1/devices/a/unknown",
            "hb/v1/devices//readings",
            "hb/v1/devices/a b/readings",
            "hb/v1/devices/a/readings/extra",
        ] {
            assert_eq!(t.parse(topic), None, "{topic}");
        }
    }

    #[test]
    fn shared_filters_name_the_group() {
        let t = MqttTopics::new("/test-1/");
        assert_eq!(
            t.shared("hb-bridge", DeviceTopicKind::Readings),
            "$share/hb-bridge/test-1/v1/devices/+/readings"
        );
    }

    #[test]
    fn kafka_names_take_the_prefix() {
        assert_eq!(KafkaTopics::default().readings(), "hb.readings.v1");
        assert_eq!(KafkaTopics::new("t1.").quarantine(), "t1.hb.quarantine.v1");
    }
}
