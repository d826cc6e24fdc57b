//! Where a device's measurements come from: the simulator (paced by a timer), a
//! replayed recording (paced by its timestamps), or a channel fed by a BLE strap.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hb_shared::{DeviceId, HeartRateMeasurement};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::replay::{PacedReplay, Replay};
use crate::simulator::{Episode, SimConfig, SimulatedStrap};
use crate::{Error, Result};

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
        /// The sampling clock.
        ticker: Interval,
    },
    /// A recording replayed at its own pace.
    Replay(Box<PacedReplay>),
    /// Measurements pushed by a hardware strap.
    Channel(mpsc::Receiver<HeartRateMeasurement>),
}

impl Source {
    /// The simulated strap of device number `index`, sampling in phase slot
    /// `index % SIM_PHASES` of a fleet-wide clock that started at `fleet_start`.
    pub fn sim(config: &SimConfig, index: u64, fleet_start: Instant) -> Self {
        let period = Duration::from_millis(config.period_ms.max(1));
        let slot = (index % u64::from(SIM_PHASES)) as u32;
        let mut ticker = tokio::time::interval_at(fleet_start + period * slot / SIM_PHASES, period);
        // Skip keeps the phase through a stall (or the connection stagger);
        // Delay would shift it to wherever the device happened to resume.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Source::Sim {
            strap: Box::new(SimulatedStrap::new(config, index)),
            ticker,
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
            Source::Sim { strap, ticker } => {
                ticker.tick().await;
                Some(strap.next_sample(now_ms()))
            }
            Source::Replay(r) => r.next().await,
            Source::Channel(rx) => rx.recv().await,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The simulation's ground truth, one JSON line per finished episode:
/// `{"device":"sim-3","kind":"bradycardia","start_ms":…,"end_ms":…}`.
#[derive(Clone)]
pub struct EpisodeLog {
    file: Arc<Mutex<BufWriter<File>>>,
}

impl EpisodeLog {
    /// Creates (truncates) the file.
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|source| Error::State {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            file: Arc::new(Mutex::new(BufWriter::new(file))),
        })
    }

    /// Appends the episodes of `device` and flushes.
    pub fn write(&self, device: &DeviceId, episodes: &[Episode]) {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            device: &'a str,
            #[serde(flatten)]
            episode: &'a Episode,
        }
        let mut f = self.file.lock().expect("episode log lock");
        for episode in episodes {
            let line = Line {
                device: device.as_str(),
                episode,
            };
            let written = serde_json::to_writer(&mut *f, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| f.write_all(b"\n"));
            if let Err(e) = written {
                tracing::warn!(%device, error = %e, "Cannot write the episode log.");
            }
        }
        let _ = f.flush();
    }
}
