//! What the bridge checks before a payload may enter Kafka: that it came from a
//! device topic, decodes as that topic's format, has a supported version and
//! bounded sizes, and names the same device as the topic. Readings go to
//! `hb.readings.v1`, status documents to `hb.device-status.v1`, local events to
//! `hb.events.v1`; anything else to quarantine with a stable reason.

use hb_shared::{
    codec, ContentType, DeviceEvent, DeviceId, DeviceStatus, DeviceTopicKind, MqttTopics,
};

/// Largest status document accepted (JSON of a handful of numbers).
pub const STATUS_MAX_SIZE: usize = 4096;

/// Which Kafka topic an accepted message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `hb.readings.v1`.
    Readings,
    /// `hb.device-status.v1`.
    Status,
    /// `hb.events.v1`.
    Events,
}

/// Where an accepted payload goes and how it is labelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The device, used as the Kafka key.
    pub device: DeviceId,
    /// The payload's encoding.
    pub content_type: ContentType,
    /// The destination.
    pub route: Route,
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Stable reason code (the `reason` header).
    pub reason: &'static str,
    /// Human-readable detail for logs.
    pub detail: String,
}

impl From<hb_shared::Error> for Rejected {
    fn from(e: hb_shared::Error) -> Self {
        Rejected {
            reason: e.reason(),
            detail: e.to_string(),
        }
    }
}

/// Checks one message from a device topic.
pub fn inspect(topics: &MqttTopics, topic: &str, payload: &[u8]) -> Result<Accepted, Rejected> {
    let (device, kind) = topics.parse(topic).ok_or_else(|| Rejected {
        reason: "unknown_topic",
        detail: format!("topic {topic:?} is not a device topic"),
    })?;
    let mismatch = |named: &DeviceId| Rejected {
        reason: "device_mismatch",
        detail: format!("payload device {named} differs from topic device {device}"),
    };
    let (content_type, route) = match kind {
        DeviceTopicKind::Readings | DeviceTopicKind::ReadingsJson => {
            let ct = if kind == DeviceTopicKind::Readings {
                ContentType::Postcard
            } else {
                ContentType::Json
            };
            let envelope = codec::decode(ct, payload)?;
            if envelope.device_id != device {
                return Err(mismatch(&envelope.device_id));
            }
            (ct, Route::Readings)
        }
        DeviceTopicKind::Events => {
            let event = DeviceEvent::decode(payload)?;
            if event.device_id != device {
                return Err(mismatch(&event.device_id));
            }
            (ContentType::Postcard, Route::Events)
        }
        DeviceTopicKind::Status => {
            if payload.len() > STATUS_MAX_SIZE {
                return Err(hb_shared::Error::PayloadTooLarge {
                    size: payload.len(),
                    max: STATUS_MAX_SIZE,
                }
                .into());
            }
            serde_json::from_slice::<DeviceStatus>(payload)
                .map_err(|e| hb_shared::Error::DecodeJson(e.to_string()))?;
            (ContentType::Json, Route::Status)
        }
        DeviceTopicKind::Stored => {
            return Err(Rejected {
                reason: "unknown_topic",
                detail: "devices do not publish storage confirmations".into(),
            })
        }
    };
    Ok(Accepted {
        device,
        content_type,
        route,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hb_shared::{Contact, Envelope, Reading};

    fn payload(device: &str) -> Vec<u8> {
        let r = Reading::new(0, 0, 1_764_000_000_000, 60, Contact::Detected);
        codec::encode_postcard(&Envelope::single(DeviceId::new(device).unwrap(), r)).unwrap()
    }

    #[test]
    fn a_matching_payload_is_accepted_with_its_device_as_key() {
        let t = MqttTopics::default();
        let a = inspect(&t, "hb/v1/devices/d1/readings", &payload("d1")).unwrap();
        assert_eq!(a.device.as_str(), "d1");
        assert_eq!(
            (a.content_type, a.route),
            (ContentType::Postcard, Route::Readings)
        );
    }

    #[test]
    fn status_documents_and_events_are_routed_to_their_topics() {
        let t = MqttTopics::default();
        let status = br#"{"state":"online","epoch":3,"buffered":0,"dropped":0,"corrupt_tails":0}"#;
        assert_eq!(
            inspect(&t, "hb/v1/devices/d1/status", status)
                .unwrap()
                .route,
            Route::Status
        );
        let event = DeviceEvent {
            version: hb_shared::EVENT_VERSION,
            device_id: DeviceId::new("d1").unwrap(),
            epoch: 1,
            seq: 4,
            ts_ms: 0,
            bpm: 120,
            kind: hb_shared::AlertKind::Tachycardia,
            transition: hb_shared::TransitionKind::Open,
            severity: hb_shared::Severity::Medium,
            origin_epoch: 1,
            origin_seq: 0,
            ordinal: 0,
        };
        let bytes = event.encode().unwrap();
        assert_eq!(
            inspect(&t, "hb/v1/devices/d1/events", &bytes)
                .unwrap()
                .route,
            Route::Events
        );
        assert_eq!(
            inspect(&t, "hb/v1/devices/d2/events", &bytes)
                .unwrap_err()
                .reason,
            "device_mismatch"
        );
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
        assert_eq!(reason("hb/v1/devices/d1/status", b"online"), "undecodable");
        assert_eq!(
            reason("hb/v1/devices/d1/events", b"\x02\x01"),
            "undecodable"
        );
        // Version 1 events were per-reading classification changes.
        assert_eq!(
            reason("hb/v1/devices/d1/events", b"\x01\x01"),
            "unsupported_version"
        );
        assert_eq!(reason("hb/v1/devices/d1/stored", b""), "unknown_topic");
        assert_eq!(reason("elsewhere", b""), "unknown_topic");
    }
}
