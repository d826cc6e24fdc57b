//! The heart's underlying rate before any injection: a resting baseline drawn per
//! device, a slow Ornstein–Uhlenbeck drift around it, and activity bursts that
//! lift it for minutes and then recover.

use super::arrivals::Arrivals;
use super::noise::Noise;

const BASELINE_BPM: (f64, f64) = (55.0, 85.0);
const DRIFT_SD_BPM: f64 = 3.0;
const DRIFT_LIMIT_BPM: f64 = 8.0;
const DRIFT_TAU_MS: f64 = 30.0 * 60_000.0;
const RESTING_MIN_BPM: f64 = 53.0;

const ACTIVITY_PER_HOUR: f64 = 1.0;
const ACTIVITY_DURATION_S: (f64, f64) = (180.0, 900.0);
const ACTIVITY_LIFT_BPM: (f64, f64) = (10.0, 35.0);
const ACTIVITY_MAX_BPM: f64 = 100.0;
const ACTIVITY_RISE_TAU_MS: f64 = 45_000.0;
const ACTIVITY_FALL_TAU_MS: f64 = 120_000.0;

/// The rate a device's heart would have without injections.
pub(super) struct Rhythm {
    /// The device's resting rate, drawn once.
    baseline_bpm: f64,
    drift: Drift,
    activity: Activity,
}

/// The slow wander of the resting rate around its baseline.
struct Drift {
    bpm: f64,
    /// How much of the drift is left after one period.
    decay: f64,
    /// Standard deviation of one period's shock.
    step_sd: f64,
}

/// Activity bursts and the lift they give the rate.
struct Activity {
    arrivals: Arrivals,
    burst: Option<Burst>,
    /// Current lift over the resting rate, following the burst's target.
    lift_bpm: f64,
    /// Share of the way to a higher target covered in one period.
    rise: f64,
    /// Share of the way back down covered in one period.
    fall: f64,
}

/// One burst of activity, in simulated time.
#[derive(Debug, Clone, Copy)]
struct Burst {
    end_ms: f64,
    lift_bpm: f64,
}

impl Rhythm {
    /// Draws the baseline from `physio` (its first draw); bursts arrive on
    /// `activity`, and everything steps by `period_ms`.
    pub(super) fn new(physio: &mut Noise, activity: Noise, period_ms: f64) -> Self {
        let baseline_bpm = physio.uniform(BASELINE_BPM);
        let decay = (-period_ms / DRIFT_TAU_MS).exp();
        Self {
            baseline_bpm,
            drift: Drift {
                bpm: 0.0,
                decay,
                step_sd: DRIFT_SD_BPM * (1.0 - decay * decay).sqrt(),
            },
            activity: Activity {
                arrivals: Arrivals::new(activity, ACTIVITY_PER_HOUR),
                burst: None,
                lift_bpm: 0.0,
                rise: 1.0 - (-period_ms / ACTIVITY_RISE_TAU_MS).exp(),
                fall: 1.0 - (-period_ms / ACTIVITY_FALL_TAU_MS).exp(),
            },
        }
    }

    /// The device's resting rate, drawn once.
    pub(super) fn baseline_bpm(&self) -> f64 {
        self.baseline_bpm
    }

    /// Ends a burst that is over and starts one that arrived, unless an anomaly
    /// episode is running (`anomaly`).
    pub(super) fn schedule(&mut self, now: f64, anomaly: bool) {
        let resting = self.resting_bpm();
        let a = &mut self.activity;
        a.arrivals.poll(now);
        if a.burst.is_some_and(|b| now >= b.end_ms) {
            a.burst = None;
        }
        if a.arrivals.take() && a.burst.is_none() && !anomaly {
            let room = (ACTIVITY_MAX_BPM - resting).max(0.0);
            let n = &mut a.arrivals.noise;
            let end_ms = now + n.uniform(ACTIVITY_DURATION_S) * 1000.0;
            let lift_bpm = n.uniform(ACTIVITY_LIFT_BPM).min(room);
            a.burst = Some(Burst { end_ms, lift_bpm });
        }
    }

    /// Steps the drift (one draw from `physio`) and the activity lift by one
    /// period.
    pub(super) fn advance(&mut self, physio: &mut Noise, now: f64) {
        let d = &mut self.drift;
        d.bpm = (d.bpm * d.decay + d.step_sd * physio.normal())
            .clamp(-DRIFT_LIMIT_BPM, DRIFT_LIMIT_BPM);
        let a = &mut self.activity;
        let target = match a.burst {
            Some(b) if now < b.end_ms => b.lift_bpm,
            _ => 0.0,
        };
        let k = if target > a.lift_bpm { a.rise } else { a.fall };
        a.lift_bpm += (target - a.lift_bpm) * k;
    }

    /// The rate without injections: resting plus activity, within the bounds that
    /// keep it from looking like an anomaly.
    pub(super) fn heart_rate_bpm(&self) -> f64 {
        (self.resting_bpm() + self.activity.lift_bpm).clamp(RESTING_MIN_BPM, ACTIVITY_MAX_BPM)
    }

    fn resting_bpm(&self) -> f64 {
        (self.baseline_bpm + self.drift.bpm).max(RESTING_MIN_BPM)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{quiet, T0};
    use super::super::{SimConfig, SimulatedStrap};

    #[test]
    fn resting_baselines_lie_between_55_and_85_bpm_across_devices() {
        let c = SimConfig::default();
        let baselines: Vec<f64> = (0..500)
            .map(|i| SimulatedStrap::new(&c, i).rhythm.baseline_bpm)
            .collect();
        assert!(baselines.iter().all(|b| (55.0..=85.0).contains(b)));
        let below_60 = baselines.iter().filter(|&&b| b < 60.0).count();
        let above_80 = baselines.iter().filter(|&&b| b > 80.0).count();
        assert!(below_60 > 50 && above_80 > 50, "{below_60} {above_80}");
    }

    #[test]
    fn activity_bursts_raise_the_heart_rate_for_minutes_then_recover() {
        let mut strap = SimulatedStrap::new(&quiet(), 9);
        let (mut active, mut peak_lift) = (0, 0.0_f64);
        for i in 0..(10 * 3600) {
            let m = strap.next_sample(T0 + i * 1000);
            assert!(m.bpm <= 110, "activity looked like tachycardia: {}", m.bpm);
            peak_lift = peak_lift.max(strap.rhythm.activity.lift_bpm);
            if strap.rhythm.activity.lift_bpm > 5.0 {
                active += 1;
            }
        }
        assert!(peak_lift > 10.0, "peak lift {peak_lift}");
        assert!((600..20_000).contains(&active), "{active} s of activity");
    }
}
