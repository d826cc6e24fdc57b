//! The simulator's randomness: seeded streams, one per concern of each device,
//! with the few distributions the model needs.

use std::f64::consts::TAU;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// The stream of the heart's own variability: baseline, drift, breathing, beats.
pub(super) const PHYSIO_STREAM: u64 = 0;
/// The stream of activity bursts.
pub(super) const ACTIVITY_STREAM: u64 = 1;
/// The stream of anomaly episodes.
pub(super) const EPISODE_STREAM: u64 = 2;
/// The stream of contact-loss dropouts.
pub(super) const DROPOUT_STREAM: u64 = 3;

/// A seeded random stream with the few distributions the model needs.
pub(super) struct Noise {
    rng: StdRng,
    spare_normal: Option<f64>,
}

impl Noise {
    /// Stream number `stream` of device `index` under `seed`.
    pub(super) fn new(seed: u64, index: u64, stream: u64) -> Self {
        let mixed = splitmix64(splitmix64(seed) ^ splitmix64(index.wrapping_add(0x5EED)) ^ stream);
        Self {
            rng: StdRng::seed_from_u64(mixed),
            spare_normal: None,
        }
    }

    pub(super) fn uniform(&mut self, (lo, hi): (f64, f64)) -> f64 {
        lo + (hi - lo) * self.rng.random::<f64>()
    }

    /// True with chance `p`.
    pub(super) fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// A standard normal deviate (Box–Muller on the two halves of one draw, both
    /// outputs used: the generator dominates the cost of a simulated hour).
    pub(super) fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        let bits = self.rng.next_u64();
        let unit = |x: u64| (x & 0xFFFF_FFFF) as f64 / 4_294_967_296.0; // [0, 1)
        let u = 1.0 - unit(bits); // (0, 1]
        let v = unit(bits >> 32);
        let r = (-2.0 * u.ln()).sqrt();
        self.spare_normal = Some(r * (TAU * v).sin());
        r * (TAU * v).cos()
    }

    /// Failures before the first success of trials with chance `p` each.
    pub(super) fn geometric(&mut self, p: f64) -> u64 {
        let u = 1.0 - self.rng.random::<f64>(); // (0, 1]
        (u.ln() / (1.0 - p).ln()).floor() as u64
    }

    /// Waiting time of a Poisson process of `rate_per_ms`; infinite at rate 0.
    pub(super) fn exponential(&mut self, rate_per_ms: f64) -> f64 {
        if rate_per_ms > 0.0 {
            -(1.0 - self.rng.random::<f64>()).ln() / rate_per_ms
        } else {
            f64::INFINITY
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
