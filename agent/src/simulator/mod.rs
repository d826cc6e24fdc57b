//! A simulated heart-rate strap that behaves like a person wearing one, with the
//! anomalies the pipeline must detect injected at known times.
//!
//! # Model
//! The heart rate is composed of layers, each a pure function of simulated time and
//! a seeded random stream:
//! - **Resting baseline**, drawn per device in 55–85 BPM, plus a slow
//!   Ornstein–Uhlenbeck **drift** (σ 3 BPM, time constant 30 min, kept within
//!   ±8 BPM and never below 53 BPM).
//! - **Activity bursts** (about one an hour, 3–15 min): the rate climbs by 10–35 BPM
//!   with a 45 s time constant and recovers with a 2 min one. Activity never takes
//!   the underlying rate above 100 BPM, so it never looks like tachycardia.
//! - **Anomaly episodes** (`episodes_per_hour`, half bradycardia, half
//!   tachycardia): the rate ramps (20–60 s) to a level of 38–46 BPM or 115–160 BPM,
//!   holds it for `episode_duration_s`, and ramps back.
//! - **Contact-loss dropouts** (`dropouts_per_hour`, `dropout_duration_s`): the
//!   strap reports no contact, no RR intervals, and a BPM of 0 or the last value.
//!
//! From that rate, actual **beats** are generated: each RR interval is 60/HR with
//! respiratory sinus arrhythmia (3.5–5.5 s breaths, about ±3 % at 60 BPM, less when
//! the heart is fast), a 0.1 Hz Mayer wave, and Gaussian beat and timing noise.
//! Rarely a beat is an artifact: an ectopic beat (a short interval and its
//! compensatory pause) or a missed beat (two intervals merged). Every interval
//! stays within the plausible 200 ms–3 s the classifier accepts. The reported BPM
//! is the strap's own estimate: an exponential average over recent clean beats, so
//! it matches the RR intervals it ships with.
//!
//! # Time and determinism
//! The model advances exactly `period_ms` per [`SimulatedStrap::next_sample`]; the
//! `ts_ms` passed in only timestamps the ground-truth [`Episode`]s. The series thus
//! depends on `(config, device index)` alone, not on tick jitter. Episodes,
//! dropouts and activity draw from random streams of their own, apart from the
//! beats, so the schedule does not depend on how many beats were drawn.
//!
//! # Ground truth
//! Episodes never overlap (one waits for the previous one plus a minute), and an
//! episode's interval is read off the samples it produced: from the first to the
//! last sample (inclusive) that the configured thresholds classify as the injected
//! condition, or that report no contact for a dropout. An episode whose samples
//! never showed the condition is not reported.
//!
//! # Layout
//! - [`SimulatedStrap`] (`strap`): one device's strap, sample by sample.
//! - `rhythm`: the heart's rate before injections (baseline, drift, activity).
//! - `episodes` and `injection`: the injected anomalies and dropouts, and the
//!   ground truth read off the samples.
//! - `beats`: the beats generated from the rate, and the strap's BPM estimate.
//! - `noise` and `arrivals`: the seeded random streams and the Poisson arrivals
//!   drawn from them.
//! - [`EpisodeLog`] (`episode_log`): the ground truth written out as JSON lines.

mod arrivals;
mod beats;
mod episode_log;
mod episodes;
mod injection;
mod noise;
mod rhythm;
mod strap;
#[cfg(test)]
mod testing;

use hb_shared::Thresholds;

pub use episode_log::EpisodeLog;
pub use episodes::{Episode, EpisodeKind};
pub use strap::SimulatedStrap;

/// Parameters of the simulation, shared by all devices of one agent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// Seed: the same seed and device index give the same series.
    pub seed: u64,
    /// Simulated time between two samples, ms; the model advances this much per
    /// sample (0 is treated as 1).
    pub period_ms: u64,
    /// Mean rate of bradycardia and tachycardia episodes (half each), per hour.
    /// Zero, negative or non-finite disables them.
    pub episodes_per_hour: f64,
    /// How long an episode holds its heart rate, s; the ramps in and out come on top.
    pub episode_duration_s: u64,
    /// Mean rate of contact-loss dropouts, per hour. Zero, negative or non-finite
    /// disables them.
    pub dropouts_per_hour: f64,
    /// How long a dropout lasts, s.
    pub dropout_duration_s: u64,
    /// The classification thresholds the ground truth is read with: an episode
    /// lasts from the first to the last sample they classify as its condition. The
    /// agent passes its configured ones, so that the ground truth agrees with what
    /// it flags.
    pub thresholds: Thresholds,
}

impl Default for SimConfig {
    /// Seed 1, one sample a second, one 120 s episode an hour, a 10 s dropout every
    /// two hours, the default thresholds.
    fn default() -> Self {
        Self {
            seed: 1,
            period_ms: 1000,
            episodes_per_hour: 1.0,
            episode_duration_s: 120,
            dropouts_per_hour: 0.5,
            dropout_duration_s: 10,
            thresholds: Thresholds::default(),
        }
    }
}
