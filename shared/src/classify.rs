//! The per-reading anomaly rule, shared by the agent (local pre-flag) and the
//! collector (authoritative classification), so that both always agree on what
//! "bradycardia" means for the same thresholds.

use serde::{Deserialize, Serialize};

use crate::{Contact, Status};

/// Shortest plausible RR interval: 200 ms (300 BPM), in 1/1024 s.
pub const RR_MIN_1024: u16 = 205;
/// Longest plausible RR interval: 3 s (20 BPM), in 1/1024 s.
pub const RR_MAX_1024: u16 = 3072;

/// Heart-rate thresholds for classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    /// A heart rate strictly below this is bradycardia.
    pub bradycardia_below_bpm: u16,
    /// A heart rate strictly above this is tachycardia.
    pub tachycardia_above_bpm: u16,
}

impl Default for Thresholds {
    /// Bradycardia below 50 BPM, tachycardia above 110 BPM.
    fn default() -> Self {
        Self {
            bradycardia_below_bpm: 50,
            tachycardia_above_bpm: 110,
        }
    }
}

impl Thresholds {
    /// Classifies one reading. No contact, a zero BPM or an RR interval outside
    /// 200 ms–3 s means there is no usable signal, whatever the BPM says.
    pub fn classify(&self, bpm: u16, contact: Contact, rr_1024: &[u16]) -> Status {
        let rr_implausible = rr_1024
            .iter()
            .any(|&rr| !(RR_MIN_1024..=RR_MAX_1024).contains(&rr));
        if contact == Contact::NotDetected || bpm == 0 || rr_implausible {
            Status::NoSignal
        } else if bpm < self.bradycardia_below_bpm {
            Status::Bradycardia
        } else if bpm > self.tachycardia_above_bpm {
            Status::Tachycardia
        } else {
            Status::Normal
        }
    }
}

/// Clinical severity of a pulse rate, after the NEWS2 pulse bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// 51–110 BPM.
    None,
    /// 41–50 or 111–130 BPM.
    Medium,
    /// ≤ 40 or ≥ 131 BPM.
    High,
}

impl Severity {
    /// NEWS2 pulse band of `bpm`.
    pub fn of_pulse(bpm: u16) -> Self {
        match bpm {
            0..=40 | 131.. => Severity::High,
            41..=50 | 111..=130 => Severity::Medium,
            _ => Severity::None,
        }
    }

    /// Stable lowercase name, as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::None => "none",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        bradycardia_below_bpm: 50,
        tachycardia_above_bpm: 110,
    };

    #[test]
    fn boundaries_follow_the_strict_inequalities() {
        assert_eq!(T.classify(49, Contact::Detected, &[]), Status::Bradycardia);
        assert_eq!(T.classify(50, Contact::Detected, &[]), Status::Normal);
        assert_eq!(T.classify(110, Contact::Detected, &[]), Status::Normal);
        assert_eq!(T.classify(111, Contact::Detected, &[]), Status::Tachycardia);
    }

    #[test]
    fn no_contact_zero_bpm_and_implausible_rr_mean_no_signal() {
        assert_eq!(T.classify(70, Contact::NotDetected, &[]), Status::NoSignal);
        assert_eq!(T.classify(0, Contact::Detected, &[]), Status::NoSignal);
        assert_eq!(T.classify(70, Contact::Detected, &[100]), Status::NoSignal);
        assert_eq!(T.classify(70, Contact::Detected, &[4000]), Status::NoSignal);
        assert_eq!(
            T.classify(70, Contact::NotSupported, &[877]),
            Status::Normal
        );
    }

    #[test]
    fn thresholds_are_parameters() {
        let t = Thresholds {
            bradycardia_below_bpm: 40,
            tachycardia_above_bpm: 150,
        };
        assert_eq!(t.classify(45, Contact::Detected, &[]), Status::Normal);
        assert_eq!(t.classify(140, Contact::Detected, &[]), Status::Normal);
    }

    #[test]
    fn severity_follows_news2_pulse_bands() {
        assert_eq!(Severity::of_pulse(40), Severity::High);
        assert_eq!(Severity::of_pulse(41), Severity::Medium);
        assert_eq!(Severity::of_pulse(50), Severity::Medium);
        assert_eq!(Severity::of_pulse(51), Severity::None);
        assert_eq!(Severity::of_pulse(110), Severity::None);
        assert_eq!(Severity::of_pulse(111), Severity::Medium);
        assert_eq!(Severity::of_pulse(130), Severity::Medium);
        assert_eq!(Severity::of_pulse(131), Severity::High);
    }
}
