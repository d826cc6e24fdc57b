//! Helpers for the simulator's tests: running a strap for simulated hours.

use hb_shared::HeartRateMeasurement;

use super::arrivals::MS_PER_HOUR;
use super::{Episode, SimConfig, SimulatedStrap};

/// Unix ms of the first sample in the tests.
pub(super) const T0: i64 = 1_700_000_000_000;

/// What a strap produced.
pub(super) struct Run {
    pub(super) samples: Vec<(i64, HeartRateMeasurement)>,
    pub(super) episodes: Vec<Episode>,
}

/// Runs device `index` under `config` for `hours` of simulated time.
pub(super) fn run(config: &SimConfig, index: u64, hours: f64) -> Run {
    let mut strap = SimulatedStrap::new(config, index);
    let n = (hours * MS_PER_HOUR / config.period_ms as f64) as i64;
    let mut samples = Vec::with_capacity(n as usize);
    let mut episodes = Vec::new();
    for i in 0..n {
        let ts = T0 + i * config.period_ms as i64;
        samples.push((ts, strap.next_sample(ts)));
        episodes.extend(strap.take_finished_episodes());
    }
    Run { samples, episodes }
}

/// The default simulation without episodes or dropouts.
pub(super) fn quiet() -> SimConfig {
    SimConfig {
        episodes_per_hour: 0.0,
        dropouts_per_hour: 0.0,
        ..SimConfig::default()
    }
}

/// The episode covering `ts`, if any.
pub(super) fn in_episode(episodes: &[Episode], ts: i64) -> Option<&Episode> {
    episodes
        .iter()
        .find(|e| (e.start_ms..=e.end_ms).contains(&ts))
}
