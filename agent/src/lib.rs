//! `hb-agent`: the edge agent next to the patient. It reads heart-rate straps (or
//! simulates or replays them), numbers every reading `(device, epoch, seq)`,
//! pre-flags anomalies with the shared rule, and publishes over MQTT with QoS 1.
//! Every reading is spooled to disk as it is sent and kept until the collector confirmed
//! that PostgreSQL holds it, through broker outages and restarts, network cuts,
//! agent restarts and power loss.
//!
//! # Layout
//! - `config`: flags and environment → [`Config`].
//! - `epoch`: the persisted per-device boot counter.
//! - `device_lock`: one agent process per device state.
//! - `source`: where a device's measurements come from.
//! - [`simulator`]: simulated straps and their ground-truth episode log.
//! - `replay`: recorded sessions (CSV or JSON lines) played back, `--source replay:FILE`.
//! - `spool`: the durable per-device spool, its segment files and the thread
//!   that writes every spool, off the runtime thread.
//! - `outbox`: unsent and unacknowledged readings, PUBACK bookkeeping.
//! - `confirm`: end-to-end storage confirmation and resending what it misses.
//! - `connection`: the MQTT event loop of one device.
//! - `device`: one device from reading to acknowledgement.
//! - `clock`: clock synchronisation state.
//! - `open_files`: the process's open-file budget.
//! - `ble`: real straps over Bluetooth LE, discovered by their Heart Rate Service
//!   and reconnected when they drop (feature `ble`, off by default; strap addresses
//!   and the allow-list are handled in every build).

mod ble;
mod clock;
mod config;
mod confirm;
mod connection;
mod device;
mod device_lock;
mod epoch;
mod error;
mod open_files;
mod outbox;
mod replay;
pub mod simulator;
mod source;
mod spool;
mod sys;

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{renamed_env, Cli, Config, SourceKind};
pub use device::DeviceReport;
pub use error::{Error, Result};
pub use outbox::OutboxStats;
use simulator::EpisodeLog;
use source::Source;

/// The fleet's summed counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct FleetReport {
    /// Devices that ran.
    pub devices: u64,
    /// Readings taken.
    pub taken: u64,
    /// Readings acknowledged by the broker.
    pub acked: u64,
    /// Messages sent again after connection losses.
    pub resent: u64,
    /// Readings recovered from the spool at start.
    pub recovered: u64,
    /// Corrupt spool tails skipped at start.
    pub corrupt_tails: u64,
    /// Readings dropped because a spool was full.
    pub dropped: u64,
}

impl FleetReport {
    fn add(&mut self, r: &DeviceReport) {
        self.devices += 1;
        self.taken += r.taken;
        self.acked += r.outbox.acked;
        self.resent += r.outbox.resent;
        self.recovered += r.spool.recovered;
        self.corrupt_tails += r.spool.corrupt_tails;
        self.dropped += r.spool.dropped;
    }
}

/// Runs every device until each is done (`--count`, or its recording ended) or
/// `shutdown`. Returns the fleet's summed counters.
pub async fn run(mut config: Config, shutdown: CancellationToken) -> Result<FleetReport> {
    config.spool.open_files = plan_open_files(&config)?;
    let config = Arc::new(config);
    let episodes = match &config.episodes_out {
        Some(path) => Some(EpisodeLog::create(path)?),
        None => None,
    };
    std::fs::create_dir_all(&config.state_dir).map_err(|source| Error::State {
        path: config.state_dir.clone(),
        source,
    })?;
    let sync_stop = CancellationToken::new();
    let sync = tokio::spawn(spool::sync_periodically(
        config.state_dir.clone(),
        config.spool.sync_interval,
        sync_stop.clone(),
    ));
    let result = run_devices(Arc::clone(&config), shutdown, episodes).await;
    // Every queued spool write, then one last sync.
    config.spool.writer.close().await;
    sync_stop.cancel();
    let _ = sync.await;
    result
}

/// Straps planned for when discovering over Bluetooth, where the fleet's size is
/// not known at start.
const BLE_DEVICES_PLANNED: u64 = 32;

/// Checks that the fleet's sockets fit the open-file limit (raised to its maximum)
/// and returns what is left for the spools' open segments.
fn plan_open_files(config: &Config) -> Result<open_files::OpenFileBudget> {
    // A socket per device, a recording per replaying device, and a lock file per
    // device where locks need their own descriptor (see `device_lock`).
    let (devices, recording) = match &config.source {
        SourceKind::Sim => (config.devices.len() as u64, 0),
        SourceKind::Replay(_) => (config.devices.len() as u64, 1),
        SourceKind::Ble => (BLE_DEVICES_PLANNED, 0),
    };
    let per_device = 1 + recording + device_lock::LOCK_FILES_PER_DEVICE;
    open_files::plan(open_files::raise_limit(), devices, per_device)
}

async fn run_devices(
    config: Arc<Config>,
    shutdown: CancellationToken,
    episodes: Option<EpisodeLog>,
) -> Result<FleetReport> {
    let mut devices = JoinSet::new();
    let fleet_start = tokio::time::Instant::now();
    match &config.source {
        SourceKind::Sim | SourceKind::Replay(_) => {
            for (index, device) in config.devices.iter().enumerate() {
                let source = match &config.source {
                    SourceKind::Replay(path) => Source::replay(path, config.speed)?,
                    _ => Source::sim(&config.sim, index as u64, fleet_start),
                };
                devices.spawn(device::run(
                    device.clone(),
                    source,
                    Arc::clone(&config),
                    shutdown.clone(),
                    episodes.clone(),
                ));
            }
            tracing::info!(devices = config.devices.len(), mqtt = %config.mqtt, "Agent running.");
        }
        SourceKind::Ble => {
            #[cfg(feature = "ble")]
            return run_ble(config, shutdown, devices).await;
        }
    }
    collect(&mut devices, &shutdown).await
}

async fn collect(
    devices: &mut JoinSet<Result<DeviceReport>>,
    shutdown: &CancellationToken,
) -> Result<FleetReport> {
    let mut total = FleetReport::default();
    let mut first_error = None;
    while let Some(joined) = devices.join_next().await {
        if let Some(e) = settle(joined, &mut total) {
            if first_error.is_none() {
                shutdown.cancel();
                first_error = Some(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

fn settle(
    joined: std::result::Result<Result<DeviceReport>, tokio::task::JoinError>,
    total: &mut FleetReport,
) -> Option<Error> {
    match joined {
        Ok(Ok(r)) => {
            total.add(&r);
            None
        }
        Ok(Err(e)) => Some(e),
        Err(source) => Some(Error::TaskFailed {
            task: "device task",
            source,
        }),
    }
}

/// Bluetooth: devices appear as straps are discovered, each with its own spool,
/// epoch and connection.
#[cfg(feature = "ble")]
async fn run_ble(
    config: Arc<Config>,
    shutdown: CancellationToken,
    mut devices: JoinSet<Result<DeviceReport>>,
) -> Result<FleetReport> {
    let (found_tx, mut found_rx) = tokio::sync::mpsc::channel(16);
    let ble_config = ble::BleConfig {
        adapter_index: config.ble_adapter,
        allow: config.ble_allow.clone(),
        ..Default::default()
    };
    let mut discovery = tokio::spawn(ble::discover(ble_config, found_tx, shutdown.clone()));
    tracing::info!(mqtt = %config.mqtt, "Agent running; looking for heart-rate straps.");
    let mut total = FleetReport::default();
    loop {
        tokio::select! {
            strap = found_rx.recv() => match strap {
                Some(strap) => {
                    tracing::info!(device = %strap.device, "Strap found.");
                    devices.spawn(device::run(
                        strap.device,
                        Source::Channel(strap.measurements),
                        Arc::clone(&config),
                        shutdown.clone(),
                        None,
                    ));
                }
                None => break,
            },
            Some(joined) = devices.join_next() => {
                if let Some(e) = settle(joined, &mut total) {
                    tracing::error!(error = %e, "A device stopped.");
                }
            }
            r = &mut discovery => {
                shutdown.cancel();
                match r {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => return Err(e),
                    Err(source) => {
                        return Err(Error::TaskFailed {
                            task: "Bluetooth discovery task",
                            source,
                        })
                    }
                }
            }
        }
    }
    let rest = collect(&mut devices, &shutdown).await?;
    total.devices += rest.devices;
    total.taken += rest.taken;
    total.acked += rest.acked;
    total.resent += rest.resent;
    total.recovered += rest.recovered;
    total.corrupt_tails += rest.corrupt_tails;
    total.dropped += rest.dropped;
    Ok(total)
}
