//! One injected condition in simulated time: an anomaly that pulls the heart
//! rate to a level and lets it go again, or a contact-loss dropout.

use super::episodes::EpisodeKind;

/// An injected condition, in simulated time.
pub(super) enum Injection {
    /// The rate ramps to `level_bpm`, holds, and ramps back.
    Anomaly {
        kind: EpisodeKind,
        level_bpm: f64,
        start_ms: f64,
        ramp_in_ms: f64,
        hold_ms: f64,
        ramp_out_ms: f64,
    },
    /// No contact from `start_ms` (inclusive) to `end_ms` (exclusive).
    Dropout {
        start_ms: f64,
        end_ms: f64,
        hold_last_bpm: bool,
    },
}

impl Injection {
    pub(super) fn kind(&self) -> EpisodeKind {
        match self {
            Injection::Anomaly { kind, .. } => *kind,
            Injection::Dropout { .. } => EpisodeKind::ContactLoss,
        }
    }

    /// When the injection is over, simulated ms.
    pub(super) fn end_ms(&self) -> f64 {
        match self {
            Injection::Anomaly {
                start_ms,
                ramp_in_ms,
                hold_ms,
                ramp_out_ms,
                ..
            } => start_ms + ramp_in_ms + hold_ms + ramp_out_ms,
            Injection::Dropout { end_ms, .. } => *end_ms,
        }
    }

    /// The heart rate at `t` of a heart that would beat at `normal_bpm`: pulled
    /// towards the anomaly's level, or left alone by a dropout.
    pub(super) fn heart_rate_at(&self, normal_bpm: f64, t: f64) -> f64 {
        match self {
            Injection::Anomaly { level_bpm, .. } => {
                normal_bpm + self.weight_at(t) * (level_bpm - normal_bpm)
            }
            Injection::Dropout { .. } => normal_bpm,
        }
    }

    /// `Some(hold_last_bpm)` when this is a dropout covering `t`.
    pub(super) fn drops_contact_at(&self, t: f64) -> Option<bool> {
        match self {
            Injection::Dropout {
                start_ms,
                end_ms,
                hold_last_bpm,
            } if (*start_ms..*end_ms).contains(&t) => Some(*hold_last_bpm),
            _ => None,
        }
    }

    /// How far the rate has been pulled to the anomaly's level at `t`, 0 to 1.
    fn weight_at(&self, t: f64) -> f64 {
        let Injection::Anomaly {
            start_ms,
            ramp_in_ms,
            hold_ms,
            ramp_out_ms,
            ..
        } = self
        else {
            return 0.0;
        };
        let x = t - start_ms;
        if x <= 0.0 {
            0.0
        } else if x < *ramp_in_ms {
            smoothstep(x / ramp_in_ms)
        } else if x < ramp_in_ms + hold_ms {
            1.0
        } else {
            smoothstep(1.0 - (x - ramp_in_ms - hold_ms) / ramp_out_ms)
        }
    }
}

fn smoothstep(x: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}
