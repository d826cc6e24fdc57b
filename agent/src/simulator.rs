//! A simulated heart-rate strap: a per-device resting baseline, a slow random walk
//! around it, and RR intervals consistent with the heart rate. Deterministic for a
//! given seed and device index.

use hb_shared::{Contact, HeartRateMeasurement, RrIntervals};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The simulated strap of one device.
pub struct SimulatedStrap {
    rng: StdRng,
    baseline: f64,
    bpm: f64,
    /// Seconds between samples.
    period_s: f64,
}

impl SimulatedStrap {
    /// A strap for device number `index` under `seed`, sampled every `period_s`.
    pub fn new(seed: u64, index: u64, period_s: f64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let baseline = rng.random_range(55.0..85.0);
        Self {
            rng,
            baseline,
            bpm: baseline,
            period_s,
        }
    }

    /// The next sample.
    pub fn next_sample(&mut self) -> HeartRateMeasurement {
        let pull = (self.baseline - self.bpm) * 0.05;
        self.bpm = (self.bpm + pull + self.rng.random_range(-1.5..1.5)).clamp(35.0, 190.0);
        let bpm = self.bpm.round() as u16;
        // Beats that fell into this period, each with a little beat-to-beat variation.
        let beats = ((self.bpm / 60.0) * self.period_s).round().clamp(1.0, 8.0) as usize;
        let mut rr_1024 = RrIntervals::new();
        for _ in 0..beats {
            let rr = 60.0 / self.bpm * 1024.0 * (1.0 + self.rng.random_range(-0.03..0.03));
            let _ = rr_1024.push(rr.round() as u16);
        }
        HeartRateMeasurement {
            bpm,
            contact: Contact::Detected,
            energy_kj: None,
            rr_1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_series() {
        let mut a = SimulatedStrap::new(7, 3, 1.0);
        let mut b = SimulatedStrap::new(7, 3, 1.0);
        for _ in 0..100 {
            assert_eq!(a.next_sample(), b.next_sample());
        }
    }

    #[test]
    fn rr_intervals_match_the_heart_rate() {
        let mut s = SimulatedStrap::new(1, 1, 1.0);
        for _ in 0..500 {
            let x = s.next_sample();
            assert!((35..=190).contains(&x.bpm));
            for rr in &x.rr_1024 {
                let implied = 60.0 * 1024.0 / f64::from(*rr);
                assert!((implied - f64::from(x.bpm)).abs() < f64::from(x.bpm) * 0.05 + 1.0);
            }
        }
    }
}
