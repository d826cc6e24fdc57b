//! The agent's error type.

use std::path::PathBuf;

/// Everything the agent can fail at, named by the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Another process holds the device's state (its lock).
    #[error("another hb-agent is using the state of device {device} in {}", state_dir.display())]
    DeviceTaken {
        /// The device.
        device: String,
        /// The state directory.
        state_dir: PathBuf,
    },
    /// The fleet needs more open files than the process may have.
    #[error(
        "{devices} devices need at least {needed} open files and the limit is {limit}: \
         raise it (ulimit -n, LimitNOFILE=) or split the fleet across agents"
    )]
    OpenFileLimit {
        /// Devices asked for.
        devices: u64,
        /// Open files they need.
        needed: u64,
        /// The soft limit in force.
        limit: u64,
    },
    /// A task of ours panicked or was cancelled.
    #[error("the {task} failed: {source}")]
    TaskFailed {
        /// Which task.
        task: &'static str,
        /// How it ended.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The state directory could not be used.
    #[error("cannot use state file {path}: {source}")]
    State {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A state file holds something that is not an epoch.
    #[error("state file {path} is corrupt: {detail}")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The spool is unusable.
    #[error("spool {path}: {detail}")]
    Spool {
        /// The spool directory or segment.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The epoch counter would overflow.
    #[error("epoch counter of {0} is exhausted")]
    EpochExhausted(String),
    /// The MQTT broker was never reachable at start-up.
    #[error("cannot connect to the MQTT broker at {address}: {reason}")]
    ConnectMqtt {
        /// Broker address.
        address: String,
        /// Last error.
        reason: String,
    },
    /// A replay recording cannot be replayed at all (a malformed row is only
    /// skipped, never this error).
    #[error("cannot replay {path}: {detail}")]
    Replay {
        /// The recording.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Bluetooth LE failed: no adapter, BlueZ/D-Bus unreachable, a strap that cannot
    /// be connected. Only produced with the `ble` feature; present in every build so
    /// that matches on [`Error`] do not depend on features.
    #[error("Bluetooth LE: {0}")]
    Ble(String),
}

/// Result with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
