//! The simulated strap of one device: each sample advances the rhythm, the
//! injections and the beats by one period and reads the measurement off them.

use hb_shared::{Contact, HeartRateMeasurement, RrIntervals};

use super::beats::Beats;
use super::episodes::{Episode, Injections};
use super::noise::{Noise, ACTIVITY_STREAM, DROPOUT_STREAM, EPISODE_STREAM, PHYSIO_STREAM};
use super::rhythm::Rhythm;
use super::SimConfig;

/// The simulated strap of one device.
pub struct SimulatedStrap {
    timing: Timing,
    /// The heart's own variability: baseline, drift, breathing, beats.
    physio: Noise,
    /// The rate before injections.
    pub(super) rhythm: Rhythm,
    /// Anomaly episodes, dropouts and their ground truth.
    injections: Injections,
    /// The beats and the strap's estimate.
    beats: Beats,
}

/// Simulated time.
struct Timing {
    /// How far the model advances per sample, ms.
    period_ms: f64,
    /// Simulated time of the latest sample, ms since the strap started.
    now_ms: f64,
}

impl SimulatedStrap {
    /// The strap of device number `index` under `config`.
    pub fn new(config: &SimConfig, index: u64) -> Self {
        let period_ms = config.period_ms.max(1) as f64;
        let stream = |n| Noise::new(config.seed, index, n);
        let mut physio = stream(PHYSIO_STREAM);
        let rhythm = Rhythm::new(&mut physio, stream(ACTIVITY_STREAM), period_ms);
        let beats = Beats::new(&mut physio, rhythm.baseline_bpm(), period_ms);
        Self {
            timing: Timing {
                period_ms,
                now_ms: 0.0,
            },
            physio,
            rhythm,
            injections: Injections::new(config, stream(EPISODE_STREAM), stream(DROPOUT_STREAM)),
            beats,
        }
    }

    /// The measurement taken at `ts_ms` (Unix ms); called once per period with
    /// increasing `ts_ms`. The model advances one period per call; `ts_ms` only
    /// timestamps the episodes.
    pub fn next_sample(&mut self, ts_ms: i64) -> HeartRateMeasurement {
        let now = self.timing.now_ms + self.timing.period_ms;
        self.timing.now_ms = now;
        self.injections.schedule(now);
        self.rhythm.schedule(now, self.injections.anomaly_running());
        self.rhythm.advance(&mut self.physio, now);
        self.beats.wander(&mut self.physio);
        let (rhythm, injections) = (&self.rhythm, &self.injections);
        let rr_1024 = self.beats.until(now, &mut self.physio, |t| {
            injections.heart_rate_at(rhythm.heart_rate_bpm(), t)
        });
        let m = match self.injections.drops_contact_at(now) {
            Some(hold) => HeartRateMeasurement {
                bpm: if hold { self.beats.last_bpm() } else { 0 },
                contact: Contact::NotDetected,
                energy_kj: None,
                rr_1024: RrIntervals::new(),
            },
            None => HeartRateMeasurement {
                bpm: self.beats.report_bpm(),
                contact: Contact::Detected,
                energy_kj: None,
                rr_1024,
            },
        };
        self.injections
            .record(ts_ms, &m, now, self.timing.period_ms);
        m
    }

    /// Episodes that ended since the last call (ground truth for `--episodes-out`),
    /// in order.
    pub fn take_finished_episodes(&mut self) -> Vec<Episode> {
        self.injections.take_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::run;
    use super::*;

    #[test]
    fn the_same_seed_and_index_give_the_same_series_and_episodes() {
        let c = SimConfig {
            seed: 7,
            episodes_per_hour: 6.0,
            dropouts_per_hour: 6.0,
            ..SimConfig::default()
        };
        let (a, b) = (run(&c, 3, 2.0), run(&c, 3, 2.0));
        assert_eq!(a.samples, b.samples);
        assert_eq!(a.episodes, b.episodes);
        assert!(!a.episodes.is_empty());
        let other = run(&c, 4, 2.0);
        assert_ne!(a.samples, other.samples);
        let reseeded = run(&SimConfig { seed: 8, ..c }, 3, 2.0);
        assert_ne!(a.samples, reseeded.samples);
    }
}
