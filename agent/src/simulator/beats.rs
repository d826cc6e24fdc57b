//! The beats generated from the heart's rate: each RR interval is 60/HR with
//! respiratory sinus arrhythmia, a Mayer wave, Gaussian beat and timing noise and,
//! rarely, an artifact (an ectopic beat and its compensatory pause, or a missed
//! beat). The strap's reported BPM is its own estimate over recent clean beats.

use std::f64::consts::TAU;

use hb_shared::classify::{RR_MAX_1024, RR_MIN_1024};
use hb_shared::RrIntervals;

use super::noise::Noise;

const BREATH_PERIOD_S: (f64, f64) = (3.5, 5.5);
const RSA_AT_60_BPM: f64 = 0.03;
const RSA_MAX: f64 = 0.05;
const MAYER_PERIOD_MS: f64 = 10_000.0;
const MAYER_AMPLITUDE: f64 = 0.015;
const BEAT_NOISE: f64 = 0.01;
const TIMING_JITTER_MS: f64 = 3.0;
/// Chance that a beat is an artifact: half ectopic, half missed.
const ARTIFACT_PER_BEAT: f64 = 0.003;
/// Random walk of the breathing phase, radians per √s.
const BREATH_WANDER: f64 = 0.05;
const RR_MIN_MS: f64 = RR_MIN_1024 as f64 / 1.024;
const RR_MAX_MS: f64 = RR_MAX_1024 as f64 / 1.024;
/// Longest merged interval a missed beat may produce, ms.
const MISSED_MAX_MS: f64 = 2_800.0;
/// Weight of a new clean beat in the strap's BPM estimate.
const STRAP_SMOOTHING: f64 = 0.25;

/// The beats of one heart and the strap's estimate of its rate.
pub(super) struct Beats {
    breathing: Breathing,
    /// Phase of the 0.1 Hz Mayer wave.
    mayer_phase: f64,
    /// Simulated time of the latest beat, ms.
    last_beat_ms: f64,
    /// The beat drawn but not yet due.
    next_beat: Option<Beat>,
    artifacts: Artifacts,
    estimate: Estimate,
}

/// Breathing, which modulates the beat intervals.
struct Breathing {
    period_ms: f64,
    phase: f64,
    /// Standard deviation of the phase's random walk per period.
    wander: f64,
}

/// When the next artifact comes, and what an artifact still owes.
struct Artifacts {
    /// Clean beats before the next artifact.
    beats_to_next: u64,
    /// Compensatory pause owed after an ectopic beat.
    owed_beat: Option<Beat>,
}

/// The strap's own BPM estimate.
struct Estimate {
    /// Exponential average of recent clean intervals, ms.
    smoothed_rr_ms: f64,
    /// The BPM reported last.
    last_bpm: u16,
}

/// One generated beat: the interval since the previous one.
#[derive(Debug, Clone, Copy)]
struct Beat {
    rr_ms: f64,
    /// An ectopic or missed beat, which the strap's estimate ignores.
    artifact: bool,
}

impl Beats {
    /// A heart beating at about `baseline_bpm`, drawing its breathing, Mayer
    /// phase, first beat and first artifact from `physio`; the breathing wanders
    /// once per `period_ms`.
    pub(super) fn new(physio: &mut Noise, baseline_bpm: f64, period_ms: f64) -> Self {
        let breath_ms = physio.uniform(BREATH_PERIOD_S) * 1000.0;
        let breath_phase = physio.uniform((0.0, TAU));
        let mayer_phase = physio.uniform((0.0, TAU));
        let first_rr_ms = 60_000.0 / baseline_bpm;
        let last_beat_ms = -physio.uniform((0.0, first_rr_ms));
        let beats_to_next = physio.geometric(ARTIFACT_PER_BEAT);
        Self {
            breathing: Breathing {
                period_ms: breath_ms,
                phase: breath_phase,
                wander: BREATH_WANDER * (period_ms / 1000.0).sqrt(),
            },
            mayer_phase,
            last_beat_ms,
            next_beat: None,
            artifacts: Artifacts {
                beats_to_next,
                owed_beat: None,
            },
            estimate: Estimate {
                smoothed_rr_ms: first_rr_ms,
                last_bpm: bpm_of(first_rr_ms),
            },
        }
    }

    /// Lets the breathing phase wander by one period (breathing is not a
    /// metronome); one draw from `physio`.
    pub(super) fn wander(&mut self, physio: &mut Noise) {
        self.breathing.phase += self.breathing.wander * physio.normal();
    }

    /// The RR intervals of the beats up to `now` since the previous sample (the
    /// latest ones if more than a reading holds), updating the strap's estimate.
    /// `heart_rate_at` gives the underlying rate at a simulated time.
    pub(super) fn until(
        &mut self,
        now: f64,
        physio: &mut Noise,
        heart_rate_at: impl Fn(f64) -> f64,
    ) -> RrIntervals {
        let mut out = RrIntervals::new();
        loop {
            let beat = match self.next_beat {
                Some(b) => b,
                None => {
                    let b = self.draw(physio, &heart_rate_at);
                    self.next_beat = Some(b);
                    b
                }
            };
            if self.last_beat_ms + beat.rr_ms > now {
                return out;
            }
            self.next_beat = None;
            self.last_beat_ms += beat.rr_ms;
            if !beat.artifact {
                let e = &mut self.estimate;
                e.smoothed_rr_ms += (beat.rr_ms - e.smoothed_rr_ms) * STRAP_SMOOTHING;
            }
            if out.is_full() {
                out.remove(0);
            }
            // Cannot fail: a slot was freed above if needed.
            let _ = out.push((beat.rr_ms * 1.024).round() as u16);
        }
    }

    /// The strap's current estimate, which it reports (and holds through a
    /// dropout that keeps the last value).
    pub(super) fn report_bpm(&mut self) -> u16 {
        self.estimate.last_bpm = bpm_of(self.estimate.smoothed_rr_ms);
        self.estimate.last_bpm
    }

    /// The BPM reported last.
    pub(super) fn last_bpm(&self) -> u16 {
        self.estimate.last_bpm
    }

    /// The interval to the next beat after the last one.
    fn draw(&mut self, physio: &mut Noise, heart_rate_at: impl Fn(f64) -> f64) -> Beat {
        if let Some(b) = self.artifacts.owed_beat.take() {
            return b;
        }
        let t = self.last_beat_ms;
        let hr = heart_rate_at(t);
        let mean_ms = 60_000.0 / hr;
        let b = &self.breathing;
        let rsa = (RSA_AT_60_BPM * (60.0 / hr).powf(1.5)).min(RSA_MAX)
            * (TAU * t / b.period_ms + b.phase).sin();
        let mayer = MAYER_AMPLITUDE * (TAU * t / MAYER_PERIOD_MS + self.mayer_phase).sin();
        let sd = (mean_ms * BEAT_NOISE).hypot(TIMING_JITTER_MS);
        let rr_ms =
            (mean_ms * (1.0 + rsa + mayer) + sd * physio.normal()).clamp(RR_MIN_MS, RR_MAX_MS);
        let a = &mut self.artifacts;
        if a.beats_to_next > 0 {
            a.beats_to_next -= 1;
            return Beat {
                rr_ms,
                artifact: false,
            };
        }
        a.beats_to_next = physio.geometric(ARTIFACT_PER_BEAT);
        if physio.chance(0.5) {
            let early = physio.uniform((0.6, 0.75));
            let (short, pause) = (rr_ms * early, rr_ms * (2.0 - early));
            if short >= RR_MIN_MS && pause <= RR_MAX_MS {
                a.owed_beat = Some(Beat {
                    rr_ms: pause,
                    artifact: true,
                });
                return Beat {
                    rr_ms: short,
                    artifact: true,
                };
            }
        } else if 2.0 * rr_ms <= MISSED_MAX_MS {
            return Beat {
                rr_ms: 2.0 * rr_ms,
                artifact: true,
            };
        }
        Beat {
            rr_ms,
            artifact: false,
        }
    }
}

fn bpm_of(rr_ms: f64) -> u16 {
    (60_000.0 / rr_ms).round().clamp(1.0, 300.0) as u16
}

#[cfg(test)]
mod tests {
    use super::super::testing::{quiet, run};
    use super::super::SimConfig;
    use super::*;

    #[test]
    fn the_mean_heart_rate_implied_by_the_rr_intervals_matches_the_reported_bpm() {
        let c = SimConfig {
            period_ms: 5000,
            episodes_per_hour: 4.0,
            ..quiet()
        };
        let r = run(&c, 11, 6.0);
        let errors: Vec<f64> = r
            .samples
            .iter()
            .filter(|(_, m)| !m.rr_1024.is_empty())
            .map(|(_, m)| {
                let mean_rr =
                    m.rr_1024.iter().map(|&rr| f64::from(rr)).sum::<f64>() / m.rr_1024.len() as f64;
                let implied = 60.0 * 1024.0 / mean_rr;
                (implied - f64::from(m.bpm)).abs() / f64::from(m.bpm)
            })
            .collect();
        let mean_error = errors.iter().sum::<f64>() / errors.len() as f64;
        let within_10 = errors.iter().filter(|&&e| e < 0.10).count() as f64 / errors.len() as f64;
        assert!(mean_error < 0.03, "mean relative error {mean_error}");
        assert!(within_10 > 0.97, "{within_10} within 10 %");
    }

    #[test]
    fn beats_vary_like_a_resting_heart_with_occasional_artifacts() {
        let r = run(&quiet(), 5, 2.0);
        let rr: Vec<f64> = r
            .samples
            .iter()
            .flat_map(|(_, m)| m.rr_1024.iter().map(|&x| f64::from(x) / 1.024))
            .collect();
        let diffs: Vec<f64> = rr.windows(2).map(|w| w[1] - w[0]).collect();
        let rmssd = (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt();
        assert!((15.0..120.0).contains(&rmssd), "RMSSD {rmssd} ms");
        let outliers = rr
            .windows(3)
            .filter(|w| (w[1] - (w[0] + w[2]) / 2.0).abs() > 0.25 * w[1])
            .count();
        assert!((3..200).contains(&outliers), "{outliers} outliers");
    }

    #[test]
    fn samples_hold_at_most_the_reading_capacity_of_plausible_rr_intervals() {
        let c = SimConfig {
            period_ms: 30_000,
            episodes_per_hour: 20.0,
            episode_duration_s: 600,
            ..quiet()
        };
        let r = run(&c, 2, 3.0);
        assert!(r.samples.iter().any(|(_, m)| m.rr_1024.is_full()));
        for (_, m) in &r.samples {
            assert!(m
                .rr_1024
                .iter()
                .all(|rr| (RR_MIN_1024..=RR_MAX_1024).contains(rr)));
        }
        // A fast sampler sees no beat in some periods but always a heart rate.
        let fast = run(
            &SimConfig {
                period_ms: 250,
                ..quiet()
            },
            2,
            0.05,
        );
        assert!(fast.samples.iter().any(|(_, m)| m.rr_1024.is_empty()));
        assert!(fast.samples.iter().all(|(_, m)| m.bpm > 0));
    }
}
