//! The Bluetooth Heart Rate Measurement characteristic (0x2A37 of the Heart Rate
//! Service 0x180D): parsing the notification frames a strap sends. Pure bytes in,
//! a measurement or an error out; malformed frames never panic.
//!
//! Frame layout (all little-endian):
//! - byte 0, flags: bit 0 heart-rate format (0: uint8, 1: uint16); bits 1–2 sensor
//!   contact (bit 2 "supported", bit 1 "detected"); bit 3 energy expended present;
//!   bit 4 RR intervals present; bits 5–7 reserved.
//! - the heart rate (1 or 2 bytes), then energy expended (uint16, kJ) if flagged,
//!   then any number of RR intervals (uint16 each, 1/1024 s) filling the rest.

use crate::{Contact, Error, Result, RrIntervals, MAX_RR_INTERVALS};

/// Heart Rate Service UUID (16-bit).
pub const HEART_RATE_SERVICE: u16 = 0x180D;
/// Heart Rate Measurement characteristic UUID (16-bit).
pub const HEART_RATE_MEASUREMENT: u16 = 0x2A37;

const FLAG_HR_U16: u8 = 0x01;
const FLAG_CONTACT_DETECTED: u8 = 0x02;
const FLAG_CONTACT_SUPPORTED: u8 = 0x04;
const FLAG_ENERGY: u8 = 0x08;
const FLAG_RR: u8 = 0x10;

/// One decoded Heart Rate Measurement: what a strap (real or simulated) reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeartRateMeasurement {
    /// Beats per minute.
    pub bpm: u16,
    /// Sensor contact.
    pub contact: Contact,
    /// Cumulative energy expended, kJ, if reported.
    pub energy_kj: Option<u16>,
    /// RR intervals in 1/1024 s.
    pub rr_1024: RrIntervals,
}

/// Parses one 0x2A37 notification.
pub fn parse_heart_rate_measurement(frame: &[u8]) -> Result<HeartRateMeasurement> {
    let err = |what: &'static str| Error::BleFrame(what);
    let (&flags, mut rest) = frame.split_first().ok_or(err("empty frame"))?;
    let bpm = if flags & FLAG_HR_U16 != 0 {
        let (v, r) = take_u16(rest).ok_or(err("frame too short for a uint16 heart rate"))?;
        rest = r;
        v
    } else {
        let (&v, r) = rest
            .split_first()
            .ok_or(err("frame too short for a uint8 heart rate"))?;
        rest = r;
        u16::from(v)
    };
    let contact = match (
        flags & FLAG_CONTACT_SUPPORTED != 0,
        flags & FLAG_CONTACT_DETECTED != 0,
    ) {
        (false, _) => Contact::NotSupported,
        (true, false) => Contact::NotDetected,
        (true, true) => Contact::Detected,
    };
    let energy_kj = if flags & FLAG_ENERGY != 0 {
        let (v, r) = take_u16(rest).ok_or(err("frame too short for energy expended"))?;
        rest = r;
        Some(v)
    } else {
        None
    };
    let mut rr_1024 = RrIntervals::new();
    if flags & FLAG_RR != 0 {
        if rest.len() % 2 != 0 {
            return Err(err("odd number of RR interval bytes"));
        }
        if rest.len() / 2 > MAX_RR_INTERVALS {
            return Err(err("more RR intervals than a reading holds"));
        }
        for pair in rest.chunks_exact(2) {
            let _ = rr_1024.push(u16::from_le_bytes([pair[0], pair[1]]));
        }
    } else if !rest.is_empty() {
        return Err(err("trailing bytes after the measurement"));
    }
    Ok(HeartRateMeasurement {
        bpm,
        contact,
        energy_kj,
        rr_1024,
    })
}

/// Encodes a measurement as a strap would (uint8 heart rate when it fits), for
/// simulators and tests.
pub fn encode_heart_rate_measurement(m: &HeartRateMeasurement) -> Vec<u8> {
    let mut flags = match m.contact {
        Contact::NotSupported => 0,
        Contact::NotDetected => FLAG_CONTACT_SUPPORTED,
        Contact::Detected => FLAG_CONTACT_SUPPORTED | FLAG_CONTACT_DETECTED,
    };
    let mut out = vec![0];
    if let Ok(b) = u8::try_from(m.bpm) {
        out.push(b);
    } else {
        flags |= FLAG_HR_U16;
        out.extend_from_slice(&m.bpm.to_le_bytes());
    }
    if let Some(e) = m.energy_kj {
        flags |= FLAG_ENERGY;
        out.extend_from_slice(&e.to_le_bytes());
    }
    if !m.rr_1024.is_empty() {
        flags |= FLAG_RR;
        for rr in &m.rr_1024 {
            out.extend_from_slice(&rr.to_le_bytes());
        }
    }
    out[0] = flags;
    out
}

fn take_u16(b: &[u8]) -> Option<(u16, &[u8])> {
    match b {
        [lo, hi, rest @ ..] => Some((u16::from_le_bytes([*lo, *hi]), rest)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_flag_combination_parses_its_hand_built_frame() {
        for flags in 0u8..32 {
            let mut frame = vec![flags];
            let bpm: u16 = if flags & FLAG_HR_U16 != 0 { 300 } else { 72 };
            if flags & FLAG_HR_U16 != 0 {
                frame.extend_from_slice(&bpm.to_le_bytes());
            } else {
                frame.push(bpm as u8);
            }
            if flags & FLAG_ENERGY != 0 {
                frame.extend_from_slice(&[0x34, 0x12]);
            }
            if flags & FLAG_RR != 0 {
                frame.extend_from_slice(&[0x00, 0x04, 0x52, 0x03]); // 1024, 850
            }
            let m = parse_heart_rate_measurement(&frame)
                .unwrap_or_else(|e| panic!("flags {flags:#07b}: {e}"));
            assert_eq!(m.bpm, bpm, "flags {flags:#07b}");
            let contact = match (
                flags & FLAG_CONTACT_SUPPORTED != 0,
                flags & FLAG_CONTACT_DETECTED != 0,
            ) {
                (false, _) => Contact::NotSupported,
                (true, false) => Contact::NotDetected,
                (true, true) => Contact::Detected,
            };
            assert_eq!(m.contact, contact, "flags {flags:#07b}");
            assert_eq!(m.energy_kj, (flags & FLAG_ENERGY != 0).then_some(0x1234));
            let rr: &[u16] = if flags & FLAG_RR != 0 {
                &[1024, 850]
            } else {
                &[]
            };
            assert_eq!(&m.rr_1024[..], rr);
        }
    }

    #[test]
    fn reserved_bits_are_ignored() {
        let m = parse_heart_rate_measurement(&[0xE0, 60]).unwrap();
        assert_eq!(m.bpm, 60);
    }

    #[test]
    fn a_real_polar_h10_frame_parses() {
        // flags 0x16: uint8 HR, contact supported+detected, RR present.
        let m = parse_heart_rate_measurement(&[0x16, 0x3F, 0x3A, 0x04]).unwrap();
        assert_eq!(
            (m.bpm, m.contact, &m.rr_1024[..]),
            (63, Contact::Detected, &[1082u16][..])
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        for frame in [
            &[][..],
            &[0x00],             // no heart rate
            &[0x01, 0x50],       // uint16 heart rate cut short
            &[0x08, 0x50, 0x01], // energy cut short
            &[0x10, 0x50, 0x01], // odd RR bytes
            &[0x00, 0x50, 0x01], // bytes after a frame without RR
        ] {
            assert!(parse_heart_rate_measurement(frame).is_err(), "{frame:?}");
        }
        let mut many = vec![0x10, 60];
        many.extend(std::iter::repeat_n([0x00, 0x04], MAX_RR_INTERVALS + 1).flatten());
        assert!(parse_heart_rate_measurement(&many).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_heart_rate_measurement(&frame);
        }

        #[test]
        fn encoding_then_parsing_is_the_identity(
            bpm in any::<u16>(),
            contact in 0u8..3,
            energy in proptest::option::of(any::<u16>()),
            rr in proptest::collection::vec(any::<u16>(), 0..MAX_RR_INTERVALS),
        ) {
            let m = HeartRateMeasurement {
                bpm,
                contact: [Contact::NotSupported, Contact::NotDetected, Contact::Detected][contact as usize],
                energy_kj: energy,
                rr_1024: RrIntervals::from_slice(&rr).unwrap(),
            };
            prop_assert_eq!(parse_heart_rate_measurement(&encode_heart_rate_measurement(&m)).unwrap(), m);
        }
    }
}
