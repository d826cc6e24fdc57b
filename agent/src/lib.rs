//! `hb-agent`: the edge agent next to the patient. It reads (here: simulates)
//! heart-rate straps, numbers every reading `(device, epoch, seq)`, pre-flags
//! anomalies with the shared rule, and publishes over MQTT with QoS 1, keeping each
//! reading until the broker acknowledged it.
//!
//! # Layout
//! - [`config`]: flags and environment → [`Config`].
//! - [`epoch`]: the persisted per-device boot counter.
//! - [`simulator`]: simulated straps.
//! - [`replay`]: recorded sessions (CSV or JSON lines) played back, `--source replay:FILE`.
//! - [`outbox`]: unsent and unacknowledged readings, PUBACK bookkeeping.
//! - [`connection`]: the MQTT event loop of one device.
//! - [`device`]: one device from reading to acknowledgement.
//! - `ble_source` (feature `ble`, off by default): real straps over Bluetooth LE,
//!   discovered by their Heart Rate Service and reconnected when they drop.

#[cfg(feature = "ble")]
pub mod ble_source;
pub mod config;
pub mod connection;
pub mod device;
pub mod epoch;
pub mod error;
pub mod outbox;
pub mod replay;
pub mod simulator;

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Config};
pub use error::{Error, Result};
pub use outbox::OutboxStats;

/// Runs every configured device until each is done (`--count`) or `shutdown`.
/// Returns the fleet's summed counters.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<OutboxStats> {
    let config = Arc::new(config);
    let mut devices = JoinSet::new();
    for (index, device) in config.devices.iter().enumerate() {
        devices.spawn(device::run(
            index as u32,
            device.clone(),
            Arc::clone(&config),
            shutdown.clone(),
        ));
    }
    tracing::info!(devices = config.devices.len(), mqtt = %config.mqtt, "Agent running.");
    let mut total = OutboxStats::default();
    let mut first_error = None;
    while let Some(joined) = devices.join_next().await {
        match joined {
            Ok(Ok(s)) => {
                total.acked += s.acked;
                total.dropped += s.dropped;
                total.resent += s.resent;
            }
            Ok(Err(e)) => {
                if first_error.is_none() {
                    shutdown.cancel();
                    first_error = Some(e);
                }
            }
            Err(e) => {
                if first_error.is_none() {
                    shutdown.cancel();
                    first_error = Some(Error::Config(format!("device task failed: {e}")));
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}
