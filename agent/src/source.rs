//! Where a device's measurements come from: the simulator (paced by a timer), a
//! replayed recording (paced by its timestamps), or a channel fed by a BLE strap.

use std::path::Path;
use std::time::Duration;

use hb_shared::HeartRateMeasurement;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::replay::{PacedReplay, Replay};
use crate::simulator::{Episode, SimConfig, SimulatedStrap};
use crate::Result;

/// Simulated devices sample in this many phases per period. Each phase wakes
/// the agent once for a tenth of the fleet, instead of once per device at a
/// phase of its own: for 1000 devices at 1 Hz that is 10 wake-ups a second, not
/// 1000, while the broker still sees the load spread over the period.
pub const SIM_PHASES: u32 = 10;

/// One device's measurement source.
pub enum Source {
    /// A simulated strap sampled every period.
    Sim {
        /// The strap.
        strap: Box<SimulatedStrap>,
        /// The sampling clock, aligned to `origin`.
        ticker: Interval,
        /// The device's phase instant on the fleet-wide clock.
        origin: Instant,
        /// Whether the first measurement was taken (until then the ticker is
        /// re-aligned to the next phase instant, not fired at once).
        started: bool,
    },
    /// A recording replayed at its own pace.
    Replay(Box<PacedReplay>),
    /// Measurements pushed by a hardware strap.
    #[cfg(feature = "ble")]
    Channel(tokio::sync::mpsc::Receiver<HeartRateMeasurement>),
}

impl Source {
    /// The simulated strap of device number `index`, sampling in phase slot
    /// `index % SIM_PHASES` of a fleet-wide clock that started at `fleet_start`.
    pub fn sim(config: &SimConfig, index: u64, fleet_start: Instant) -> Self {
        let period = Duration::from_millis(config.period_ms.max(1));
        let slot = (index % u64::from(SIM_PHASES)) as u32;
        let origin = fleet_start + period * slot / SIM_PHASES;
        let mut ticker = tokio::time::interval_at(origin, period);
        // Skip keeps the phase through a stall; Delay would shift it to wherever
        // the device happened to resume.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Source::Sim {
            strap: Box::new(SimulatedStrap::new(config, index)),
            ticker,
            origin,
            started: false,
        }
    }

    /// A recording replayed at `speed` times its own pace.
    pub fn replay(path: &Path, speed: f64) -> Result<Self> {
        Ok(Source::Replay(Box::new(PacedReplay::new(
            Replay::open(path)?,
            speed,
        ))))
    }

    /// Ground-truth episodes the simulator finished since the last call.
    pub fn take_finished_episodes(&mut self) -> Vec<Episode> {
        match self {
            Source::Sim { strap, .. } => strap.take_finished_episodes(),
            _ => Vec::new(),
        }
    }

    /// The next measurement; `None` when the source has ended (replay finished,
    /// strap channel closed). Cancel-safe.
    pub async fn next(&mut self) -> Option<HeartRateMeasurement> {
        match self {
            Source::Sim {
                strap,
                ticker,
                origin,
                started,
            } => {
                if !*started {
                    // After the connection stagger the first tick is overdue and
                    // would fire at once, just before the next aligned one.
                    *started = true;
                    ticker.reset_at(next_phase(*origin, ticker.period(), Instant::now()));
                }
                ticker.tick().await;
                Some(strap.next_sample(hb_runtime::clock::now_ms()))
            }
            Source::Replay(r) => r.next().await,
            #[cfg(feature = "ble")]
            Source::Channel(rx) => rx.recv().await,
        }
    }

    /// Logs the end of a replay: how many malformed rows it skipped, and the last
    /// few of them by line, so that the operator can mend the file.
    pub fn log_end(&self, device: &hb_shared::DeviceId) {
        if let Source::Replay(r) = self {
            let replay = r.replay();
            let skipped = replay.skipped();
            if skipped == 0 {
                tracing::info!(%device, "Replay finished.");
            } else {
                let recent: Vec<String> = replay.recent_errors().map(ToString::to_string).collect();
                tracing::warn!(%device, skipped, ?recent, "Replay finished; malformed rows were skipped.");
            }
        }
    }
}

/// The first instant `origin + k × period` (k ≥ 0) at or after `now`.
fn next_phase(origin: Instant, period: Duration, now: Instant) -> Instant {
    let elapsed = now.saturating_duration_since(origin).as_nanos();
    let period_ns = period.as_nanos().max(1);
    let periods = elapsed.div_ceil(period_ns);
    origin + Duration::from_nanos(u64::try_from(periods * period_ns).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_phase_is_the_first_aligned_instant_not_before_now() {
        let origin = Instant::now();
        let period = Duration::from_millis(1000);
        let at = |ms| origin + Duration::from_millis(ms);
        assert_eq!(next_phase(origin, period, origin), origin);
        assert_eq!(
            next_phase(at(500), period, origin),
            at(500),
            "origin still ahead"
        );
        assert_eq!(next_phase(origin, period, at(1)), at(1000));
        assert_eq!(next_phase(origin, period, at(1000)), at(1000));
        assert_eq!(next_phase(origin, period, at(2345)), at(3000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_simulated_device_samples_on_its_phase_of_the_fleet_clock() {
        let config = SimConfig::default();
        let fleet_start = Instant::now();
        // Device 3 of a fleet: phase 3/10 of the 1 s period.
        let mut source = Source::sim(&config, 3, fleet_start);
        // A connection stagger of 2.05 s before the first measurement.
        tokio::time::sleep(Duration::from_millis(2050)).await;
        source.next().await.expect("a measurement");
        assert_eq!(fleet_start.elapsed(), Duration::from_millis(2300));
        source.next().await.expect("a measurement");
        assert_eq!(fleet_start.elapsed(), Duration::from_millis(3300));
    }
}
