//! Encoding and decoding of [`Envelope`]s: postcard (the devices' format) and JSON
//! (so that any MQTT client can feed the system). Both decoders are bounded: the
//! input size is capped before parsing, every collection has a fixed capacity, and
//! malformed input is an [`Error`], never a panic.

use serde::Deserialize;

use crate::{Envelope, Error, Result, ENVELOPE_VERSION};

/// Largest postcard payload accepted. A full envelope of
/// [`crate::MAX_READINGS_PER_ENVELOPE`] readings with a few RR intervals each stays
/// well below this.
pub const POSTCARD_MAX_SIZE: usize = 64 * 1024;

/// Largest JSON payload accepted (JSON is several times larger than postcard).
pub const JSON_MAX_SIZE: usize = 256 * 1024;

/// How a payload is encoded. Travels as the Kafka `content-type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentType {
    /// postcard, the compact binary format devices send.
    Postcard,
    /// JSON of the same envelope.
    Json,
}

impl ContentType {
    /// The MIME-style name used in headers.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Postcard => "application/x-postcard",
            ContentType::Json => "application/json",
        }
    }

    /// Parses a header value written by [`ContentType::as_str`].
    pub fn from_header(value: &[u8]) -> Option<Self> {
        match value {
            b"application/x-postcard" => Some(ContentType::Postcard),
            b"application/json" => Some(ContentType::Json),
            _ => None,
        }
    }
}

/// Encodes an envelope as postcard.
pub fn encode_postcard(envelope: &Envelope) -> Result<Vec<u8>> {
    let bytes = postcard::to_allocvec(envelope).map_err(|e| Error::Encode(e.to_string()))?;
    if bytes.len() > POSTCARD_MAX_SIZE {
        return Err(Error::PayloadTooLarge {
            size: bytes.len(),
            max: POSTCARD_MAX_SIZE,
        });
    }
    Ok(bytes)
}

/// Encodes an envelope as JSON.
pub fn encode_json(envelope: &Envelope) -> Result<Vec<u8>> {
    serde_json::to_vec(envelope).map_err(|e| Error::Encode(e.to_string()))
}

/// Decodes a payload of the given content type.
pub fn decode(content_type: ContentType, bytes: &[u8]) -> Result<Envelope> {
    match content_type {
        ContentType::Postcard => decode_postcard(bytes),
        ContentType::Json => decode_json(bytes),
    }
}

/// Decodes and checks a postcard envelope: size, version, no trailing bytes, at
/// least one reading.
pub fn decode_postcard(bytes: &[u8]) -> Result<Envelope> {
    if bytes.len() > POSTCARD_MAX_SIZE {
        return Err(Error::PayloadTooLarge {
            size: bytes.len(),
            max: POSTCARD_MAX_SIZE,
        });
    }
    // postcard writes a u8 as one raw byte, so the version is the first byte.
    match bytes.first() {
        None => return Err(Error::EmptyPayload),
        Some(&v) if v != ENVELOPE_VERSION => return Err(Error::UnsupportedVersion(v)),
        Some(_) => {}
    }
    let (envelope, rest): (Envelope, _) =
        postcard::take_from_bytes(bytes).map_err(|e| Error::DecodePostcard(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Error::TrailingBytes(rest.len()));
    }
    check(envelope)
}

/// Decodes and checks a JSON envelope.
pub fn decode_json(bytes: &[u8]) -> Result<Envelope> {
    if bytes.len() > JSON_MAX_SIZE {
        return Err(Error::PayloadTooLarge {
            size: bytes.len(),
            max: JSON_MAX_SIZE,
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::EmptyPayload);
    }
    // Read the version first so that a future version's different shape is reported
    // as what it is, not as a confusing field error.
    #[derive(Deserialize)]
    struct Version {
        version: u8,
    }
    let Version { version } =
        serde_json::from_slice(bytes).map_err(|e| Error::DecodeJson(e.to_string()))?;
    if version != ENVELOPE_VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let envelope: Envelope =
        serde_json::from_slice(bytes).map_err(|e| Error::DecodeJson(e.to_string()))?;
    check(envelope)
}

fn check(envelope: Envelope) -> Result<Envelope> {
    if envelope.readings.is_empty() {
        return Err(Error::EmptyEnvelope);
    }
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Contact, DeviceId, Reading, Readings, Status, MAX_READINGS_PER_ENVELOPE};
    use proptest::prelude::*;

    fn reading(seq: u32) -> Reading {
        Reading {
            mono_ms: u64::from(seq) * 1000,
            rr_1024: heapless::Vec::from_slice(&[850, 860]).unwrap(),
            energy_kj: Some(12),
            local_flag: Some(Status::Normal),
            ..Reading::new(
                3,
                seq,
                1_764_000_000_000 + i64::from(seq) * 1000,
                72,
                Contact::Detected,
            )
        }
    }

    fn envelope(n: u32) -> Envelope {
        let mut readings = Readings::new();
        for seq in 0..n {
            readings.push(reading(seq)).unwrap();
        }
        Envelope::new(DeviceId::new("dev-1").unwrap(), readings)
    }

    #[test]
    fn postcard_round_trips_and_is_small() {
        let e = envelope(1);
        let bytes = encode_postcard(&e).unwrap();
        assert!(bytes.len() <= 32, "one reading took {} bytes", bytes.len());
        assert_eq!(decode_postcard(&bytes).unwrap(), e);
    }

    #[test]
    fn a_full_envelope_fits_the_postcard_limit() {
        let bytes = encode_postcard(&envelope(MAX_READINGS_PER_ENVELOPE as u32)).unwrap();
        assert!(bytes.len() < POSTCARD_MAX_SIZE);
    }

    #[test]
    fn json_round_trips() {
        let e = envelope(2);
        assert_eq!(decode_json(&encode_json(&e).unwrap()).unwrap(), e);
    }

    #[test]
    fn json_accepts_the_minimal_documented_form() {
        let json = br#"{"version":1,"device_id":"strap-7","readings":[
            {"epoch":1,"seq":0,"ts_ms":1764000000000,"bpm":64,"contact":"detected"}]}"#;
        let e = decode_json(json).unwrap();
        assert_eq!(e.readings[0].bpm, 64);
        assert!(e.readings[0].clock_synced);
        assert_eq!(e.readings[0].local_flag, None);
    }

    #[test]
    fn unknown_versions_are_reported_as_such() {
        let mut bytes = encode_postcard(&envelope(1)).unwrap();
        bytes[0] = 2;
        assert_eq!(decode_postcard(&bytes), Err(Error::UnsupportedVersion(2)));
        assert_eq!(
            decode_json(br#"{"version":9,"whatever":true}"#),
            Err(Error::UnsupportedVersion(9))
        );
    }

    #[test]
    fn truncated_trailing_and_empty_payloads_are_errors() {
        let bytes = encode_postcard(&envelope(3)).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode_postcard(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_postcard(&longer), Err(Error::TrailingBytes(1)));
        assert_eq!(decode_postcard(&[]), Err(Error::EmptyPayload));
        assert_eq!(decode_json(b"  "), Err(Error::EmptyPayload));
    }

    #[test]
    fn envelopes_without_readings_are_rejected() {
        let e = Envelope::new(DeviceId::new("d").unwrap(), Readings::new());
        let bytes = encode_postcard(&e).unwrap();
        assert_eq!(decode_postcard(&bytes), Err(Error::EmptyEnvelope));
    }

    #[test]
    fn oversized_arrays_are_rejected_without_allocating() {
        // A postcard sequence length of u32::MAX readings.
        let mut bytes = vec![1u8, 1, b'd'];
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            decode_postcard(&bytes),
            Err(Error::DecodePostcard(_))
        ));
        let many = format!(
            r#"{{"version":1,"device_id":"d","readings":[{}]}}"#,
            vec![r#"{"epoch":1,"seq":0,"ts_ms":0,"bpm":60,"contact":"detected"}"#; 257].join(",")
        );
        assert!(matches!(
            decode_json(many.as_bytes()),
            Err(Error::DecodeJson(_))
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_postcard(&bytes);
            let _ = decode_json(&bytes);
        }

        #[test]
        fn random_bytes_after_a_valid_version_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut b = vec![ENVELOPE_VERSION];
            b.extend_from_slice(&bytes);
            let _ = decode_postcard(&b);
        }

        #[test]
        fn mutated_valid_envelopes_never_panic(pos in 0usize..200, val in any::<u8>()) {
            let mut bytes = encode_postcard(&envelope(5)).unwrap();
            let i = pos % bytes.len();
            bytes[i] = val;
            let _ = decode_postcard(&bytes);
        }
    }
}
