//! What the bridge checks before a payload may enter `hb.readings.v1`: that it came
//! from a device topic, decodes as the topic's content type, has a supported
//! version and bounded sizes, and names the same device as the topic. Anything else
//! is routed to quarantine with a stable reason.

use hb_shared::{codec, ContentType, DeviceId, DeviceTopicKind, MqttTopics};

/// Where an accepted payload goes and how it is labelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The device, used as the Kafka key.
    pub device: DeviceId,
    /// The payload's encoding.
    pub content_type: ContentType,
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Stable reason code (the `reason` header).
    pub reason: &'static str,
    /// Human-readable detail for logs.
    pub detail: String,
}

/// Checks one readings message.
pub fn inspect(topics: &MqttTopics, topic: &str, payload: &[u8]) -> Result<Accepted, Rejected> {
    let (device, kind) = topics.parse(topic).ok_or_else(|| Rejected {
        reason: "unknown_topic",
        detail: format!("topic {topic:?} is not a device readings topic"),
    })?;
    let content_type = match kind {
        DeviceTopicKind::Readings => ContentType::Postcard,
        DeviceTopicKind::ReadingsJson => ContentType::Json,
        other => {
            return Err(Rejected {
                reason: "unknown_topic",
                detail: format!("topic kind {other:?} does not carry readings"),
            })
        }
    };
    let envelope = codec::decode(content_type, payload).map_err(|e| Rejected {
        reason: e.reason(),
        detail: e.to_string(),
    })?;
    if envelope.device_id != device {
        return Err(Rejected {
            reason: "device_mismatch",
            detail: format!(
                "payload device {} differs from topic device {device}",
                envelope.device_id
            ),
        });
    }
    Ok(Accepted {
        device,
        content_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hb_shared::{Contact, Envelope, Reading};

    fn payload(device: &str) -> Vec<u8> {
        let r = Reading {
            epoch: 0,
            seq: 0,
            ts_ms: 1_764_000_000_000,
            mono_ms: 0,
            clock_synced: true,
            bpm: 60,
            contact: Contact::Detected,
            rr_1024: Default::default(),
            energy_kj: None,
            local_flag: None,
            backfill: false,
        };
        codec::encode_postcard(&Envelope::single(DeviceId::new(device).unwrap(), r)).unwrap()
    }

    #[test]
    fn a_matching_payload_is_accepted_with_its_device_as_key() {
        let t = MqttTopics::default();
        let a = inspect(&t, "hb/v1/devices/d1/readings", &payload("d1")).unwrap();
        assert_eq!(a.device.as_str(), "d1");
        assert_eq!(a.content_type, ContentType::Postcard);
    }

    #[test]
    fn spoofed_devices_garbage_and_foreign_topics_are_rejected_with_reasons() {
        let t = MqttTopics::default();
        let reason = |topic: &str, p: &[u8]| inspect(&t, topic, p).unwrap_err().reason;
        assert_eq!(
            reason("hb/v1/devices/d1/readings", &payload("d2")),
            "device_mismatch"
        );
        assert_eq!(
            reason("hb/v1/devices/d1/readings", b"\x01garbage"),
            "undecodable"
        );
        assert_eq!(
            reason("hb/v1/devices/d1/readings", b"\x07"),
            "unsupported_version"
        );
        assert_eq!(
            reason("hb/v1/devices/d1/readings/json", b"{not json"),
            "undecodable"
        );
        assert_eq!(
            reason("hb/v1/devices/d1/status", b"online"),
            "unknown_topic"
        );
        assert_eq!(reason("elsewhere", b""), "unknown_topic");
    }
}
