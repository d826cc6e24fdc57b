//! Command line and environment → a validated [`Config`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use hb_runtime::logging::LogArgs;
use hb_runtime::mqtt_address::MqttAddress;
use hb_runtime::mqtt_auth::MqttAuthArgs;
use hb_runtime::mqtt_tls::ClientTls;
use hb_shared::{DeviceId, MqttTopics, Thresholds};

use crate::confirm::ConfirmMode;
use crate::simulator::SimConfig;
use crate::spool::{FullPolicy, SpoolConfig};
use crate::{Error, Result};

/// Readings per spool segment file.
const SEGMENT_READINGS: u32 = 256;

/// Where measurements come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// Simulated straps (`--devices N`).
    Sim,
    /// A recording, CSV or JSON lines, replayed by every device.
    Replay(PathBuf),
    /// Bluetooth heart-rate straps (feature `ble`), one device per strap.
    Ble,
}

impl std::str::FromStr for SourceKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sim" => Ok(SourceKind::Sim),
            "ble" => Ok(SourceKind::Ble),
            _ => match s.strip_prefix("replay:") {
                Some(path) if !path.is_empty() => Ok(SourceKind::Replay(PathBuf::from(path))),
                _ => Err(format!("unknown source {s:?}: use sim, replay:FILE or ble")),
            },
        }
    }
}

/// `hb-agent`: reads or simulates heart-rate straps and publishes their readings.
#[derive(Debug, Parser)]
#[command(name = "hb-agent", version, about, long_about = None)]
pub struct Cli {
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
    /// The agent.
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// The agent's own flags.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Where measurements come from: `sim` (simulated straps), `replay:FILE` (a CSV
    /// or JSON-lines recording, see the README) or `ble` (Bluetooth straps; needs a
    /// build with the `ble` feature).
    #[arg(long, env = "HB_SOURCE", default_value = "sim")]
    pub source: SourceKind,
    /// Replay speed factor for `replay:` sources (2 = twice as fast).
    #[arg(long, env = "HB_SPEED", default_value_t = 1.0)]
    pub speed: f64,
    /// Number of simulated (or replaying) devices, each with its own MQTT connection.
    #[arg(long, env = "HB_DEVICES", default_value_t = 1)]
    pub devices: u32,
    /// Readings per second per device.
    #[arg(long, env = "HB_RATE_HZ", default_value_t = 1.0)]
    pub rate_hz: f64,
    /// Send this many readings per device, wait until all of them are confirmed
    /// (stored, or acknowledged by the broker with `--confirm puback`), and exit
    /// (default: run until stopped).
    #[arg(long, env = "HB_COUNT")]
    pub count: Option<u32>,
    /// MQTT broker, `mqtt://host:port`.
    #[arg(long, env = "HB_MQTT_URL", default_value = "mqtt://localhost:1883")]
    pub mqtt_url: String,
    /// How devices log in to the broker.
    #[command(flatten)]
    pub mqtt_auth: MqttAuthArgs,
    /// Directory for persistent state (per-device epoch counters).
    #[arg(long, env = "HB_STATE_DIR", default_value = "state")]
    pub state_dir: PathBuf,
    /// Device ids; `{index}` is replaced by the device number (0-based).
    #[arg(long, env = "HB_DEVICE_ID_TEMPLATE", default_value = "sim-{index}")]
    pub device_id_template: String,
    /// MQTT client ids; `{device}` is replaced by the device id.
    #[arg(long, env = "HB_CLIENT_ID_TEMPLATE", default_value = "hb-{device}")]
    pub client_id_template: String,
    /// Root of the MQTT topic tree (`{root}/v1/devices/…`).
    #[arg(long, env = "HB_MQTT_TOPIC_ROOT", default_value = "hb")]
    pub mqtt_topic_root: String,
    /// MQTT keep-alive, in seconds.
    #[arg(long, env = "HB_MQTT_KEEP_ALIVE_S", default_value_t = 30)]
    pub mqtt_keep_alive_s: u64,
    /// Seed of the simulation (same seed, same readings).
    #[arg(long, env = "HB_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Readings each device keeps until they are confirmed (see `--confirm`), in its
    /// spool under the state directory. Default: one hour at 1 Hz.
    /// (`--buffer-capacity` and `HB_BUFFER_CAPACITY` are older names.)
    #[arg(
        long,
        alias = "buffer-capacity",
        env = "HB_SPOOL_CAPACITY",
        default_value_t = 3600
    )]
    pub spool_capacity: usize,
    /// When a reading may leave the spool: `stored` when the collector confirmed
    /// that PostgreSQL holds it (end to end; needs collectors and bridges of this
    /// version), `puback` when the MQTT broker acknowledged it.
    #[arg(long, env = "HB_CONFIRM", value_enum, default_value_t = ConfirmMode::Stored)]
    pub confirm: ConfirmMode,
    /// Readings whose storage is not confirmed this long after they were sent are
    /// sent again (flagged backfill), in seconds. Repeated resends without any
    /// confirmation back off up to 16 times this.
    #[arg(long, env = "HB_CONFIRM_TIMEOUT_S", default_value_t = 60)]
    pub confirm_timeout_s: u64,
    /// What to do when the spool is full: drop the oldest readings (in blocks of
    /// 256) or the newest. Drops are counted, logged and reported in the status.
    /// (`--buffer-full-policy` and `HB_BUFFER_FULL_POLICY` are older names.)
    #[arg(
        long,
        alias = "buffer-full-policy",
        env = "HB_SPOOL_FULL_POLICY",
        value_enum,
        default_value_t = FullPolicy::DropOldest
    )]
    pub spool_full_policy: FullPolicy,
    /// Longest time a stored reading waits for fsync, in milliseconds: what a power
    /// cut can lose. A crash of the agent alone loses only readings neither written
    /// nor acknowledged by the broker (milliseconds' worth unless the disk stalls).
    #[arg(long, env = "HB_SPOOL_SYNC_INTERVAL_MS", default_value_t = 1000)]
    pub spool_sync_interval_ms: u64,
    /// How often each device refreshes its retained status, in seconds.
    #[arg(long, env = "HB_STATUS_INTERVAL_S", default_value_t = 60)]
    pub status_interval_s: u64,
    /// Simulated anomaly episodes (bradycardia or tachycardia) per device and hour.
    #[arg(long, env = "HB_EPISODES_PER_HOUR", default_value_t = 1.0)]
    pub episodes_per_hour: f64,
    /// Length of a simulated anomaly episode, in seconds.
    #[arg(long, env = "HB_EPISODE_DURATION_S", default_value_t = 120)]
    pub episode_duration_s: u64,
    /// Simulated contact-loss dropouts per device and hour.
    #[arg(long, env = "HB_DROPOUTS_PER_HOUR", default_value_t = 0.5)]
    pub dropouts_per_hour: f64,
    /// Length of a simulated dropout, in seconds.
    #[arg(long, env = "HB_DROPOUT_DURATION_S", default_value_t = 10)]
    pub dropout_duration_s: u64,
    /// Write the simulation's ground truth (device, kind, start, end of every
    /// episode) to this file as JSON lines.
    #[arg(long, env = "HB_EPISODES_OUT")]
    pub episodes_out: Option<PathBuf>,
    /// Bluetooth adapter number (`ble` source).
    #[arg(long, env = "HB_BLE_ADAPTER", default_value_t = 0)]
    pub ble_adapter: usize,
    /// Only use these strap addresses (`ble` source; comma-separated, default any).
    #[arg(long, env = "HB_BLE_ALLOW", value_delimiter = ',')]
    pub ble_allow: Vec<String>,
    /// Devices connect at random moments within this window, so that a fleet does
    /// not hit the broker all at once, in milliseconds.
    #[arg(long, env = "HB_CONNECT_STAGGER_MS", default_value_t = 2000)]
    pub connect_stagger_ms: u64,
    /// How long a graceful shutdown waits for unacknowledged readings, in
    /// milliseconds.
    #[arg(long, env = "HB_SHUTDOWN_TIMEOUT_MS", default_value_t = 5000)]
    pub shutdown_timeout_ms: u64,
    /// Where the agent flags bradycardia and tachycardia.
    #[command(flatten)]
    pub thresholds: hb_runtime::alert_args::ThresholdArgs,
    /// The rules of the alert episodes the agent reports on its events topic.
    #[command(flatten)]
    pub alerts: hb_runtime::alert_args::AlertArgs,
}

/// Environment variables renamed when the agent's buffer became its spool:
/// `(older name, name)`.
const RENAMED_ENV: [(&str, &str); 2] = [
    ("HB_BUFFER_CAPACITY", "HB_SPOOL_CAPACITY"),
    ("HB_BUFFER_FULL_POLICY", "HB_SPOOL_FULL_POLICY"),
];

/// The variables to set so that the older names in `env` keep working: each
/// renamed variable set under its older name only. Applied by `main` before the
/// flags are parsed (clap reads one name per flag).
pub fn renamed_env(
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Vec<(&'static str, std::ffi::OsString)> {
    RENAMED_ENV
        .iter()
        .filter(|(_, name)| env(name).is_none())
        .filter_map(|&(older, name)| env(older).map(|v| (name, v)))
        .collect()
}

/// Validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where measurements come from.
    pub source: SourceKind,
    /// Replay speed.
    pub speed: f64,
    /// Simulation settings.
    pub sim: SimConfig,
    /// Ground-truth output of the simulation.
    pub episodes_out: Option<PathBuf>,
    /// Spool settings.
    pub spool: SpoolConfig,
    /// Status refresh interval.
    pub status_interval: Duration,
    /// Bluetooth adapter number.
    pub ble_adapter: usize,
    /// Allowed strap addresses (empty: any).
    pub ble_allow: Vec<String>,
    /// Device ids, one per simulated strap.
    pub devices: Vec<DeviceId>,
    /// Time between readings.
    pub period: Duration,
    /// Readings per device before exiting, if set.
    pub count: Option<u32>,
    /// Broker address.
    pub mqtt: MqttAddress,
    /// TLS settings for an `mqtts://` broker (per device with `{device}` in the
    /// client certificate's file names).
    pub mqtt_tls: Option<ClientTls>,
    /// `(username template, password)`.
    pub mqtt_credentials: Option<(String, String)>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Client id template.
    pub client_id_template: String,
    /// Topic names.
    pub topics: MqttTopics,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Connect stagger window.
    pub connect_stagger: Duration,
    /// Graceful-shutdown deadline.
    pub shutdown_timeout: Duration,
    /// Local pre-flag thresholds.
    pub thresholds: Thresholds,
    /// The rules of the agent's alert episodes (its events lane).
    pub alert_rules: hb_shared::AlertRules,
    /// When readings leave the spool.
    pub confirm: ConfirmMode,
    /// Resend readings unconfirmed after this long.
    pub confirm_timeout: Duration,
}

impl Config {
    /// The MQTT client id of `device`.
    pub fn client_id(&self, device: &DeviceId) -> String {
        self.client_id_template.replace("{device}", device.as_str())
    }
}

impl AgentArgs {
    /// Checks the flags and builds a [`Config`].
    pub fn into_config(self) -> Result<Config> {
        if self.devices == 0 || self.devices > 100_000 {
            return Err(Error::Config(
                "--devices must be between 1 and 100000".into(),
            ));
        }
        if !(self.rate_hz.is_finite() && self.rate_hz > 0.0 && self.rate_hz <= 1000.0) {
            return Err(Error::Config(
                "--rate-hz must be above 0 and at most 1000".into(),
            ));
        }
        let mqtt: MqttAddress = self.mqtt_url.parse().map_err(Error::Config)?;
        let mqtt_tls = self.mqtt_auth.client_tls(&mqtt).map_err(Error::Config)?;
        if !self.device_id_template.contains("{index}") && self.devices > 1 {
            return Err(Error::Config(
                "--device-id-template needs {index} when --devices > 1".into(),
            ));
        }
        let devices = (0..self.devices)
            .map(|n| {
                let id = self.device_id_template.replace("{index}", &n.to_string());
                DeviceId::new(&id).map_err(|e| Error::Config(format!("device id {id:?}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(tls) = mqtt_tls.as_ref().filter(|t| t.per_device()) {
            // Every device's certificate now rather than at its first connection
            // (straps found over Bluetooth are only known then).
            let known = if self.source == SourceKind::Ble {
                &[][..]
            } else {
                &devices[..]
            };
            for device in known {
                tls.for_device(device.as_str()).map_err(Error::Config)?;
            }
        }
        let thresholds = self.thresholds.thresholds().map_err(Error::Config)?;
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return Err(Error::Config("--speed must be above 0".into()));
        }
        if self.spool_capacity < SEGMENT_READINGS as usize {
            return Err(Error::Config(format!(
                "--spool-capacity must be at least {SEGMENT_READINGS}"
            )));
        }
        if !(self.episodes_per_hour >= 0.0 && self.dropouts_per_hour >= 0.0) {
            return Err(Error::Config(
                "--episodes-per-hour and --dropouts-per-hour must not be negative".into(),
            ));
        }
        if self.status_interval_s == 0 {
            return Err(Error::Config(
                "--status-interval-s must be at least 1".into(),
            ));
        }
        if self.source == SourceKind::Ble && !cfg!(feature = "ble") {
            return Err(Error::Config(
                "--source ble needs a build with the `ble` feature".into(),
            ));
        }
        if self.mqtt_keep_alive_s < 5 {
            return Err(Error::Config(
                "--mqtt-keep-alive-s must be at least 5".into(),
            ));
        }
        if self.confirm_timeout_s == 0 {
            return Err(Error::Config(
                "--confirm-timeout-s must be at least 1".into(),
            ));
        }
        let period = Duration::from_secs_f64(1.0 / self.rate_hz);
        // The agent cannot tell that its own device is offline: no offline alerts.
        let alert_rules = self
            .alerts
            .rules(thresholds, u32::MAX)
            .map_err(Error::Config)?;
        Ok(Config {
            sim: SimConfig {
                seed: self.seed,
                period_ms: period.as_millis().max(1) as u64,
                episodes_per_hour: self.episodes_per_hour,
                episode_duration_s: self.episode_duration_s,
                dropouts_per_hour: self.dropouts_per_hour,
                dropout_duration_s: self.dropout_duration_s,
                thresholds,
            },
            source: self.source,
            speed: self.speed,
            episodes_out: self.episodes_out,
            spool: SpoolConfig {
                capacity: self.spool_capacity,
                segment_readings: SEGMENT_READINGS,
                sync_interval: Duration::from_millis(self.spool_sync_interval_ms),
                full_policy: self.spool_full_policy,
                open_files: Default::default(),
                writer: Default::default(),
            },
            status_interval: Duration::from_secs(self.status_interval_s),
            ble_adapter: self.ble_adapter,
            ble_allow: crate::ble::parse_allow_list(&self.ble_allow)?,
            devices,
            period,
            count: self.count,
            mqtt,
            mqtt_tls,
            mqtt_credentials: self.mqtt_auth.credentials().map_err(Error::Config)?,
            state_dir: self.state_dir,
            client_id_template: self.client_id_template,
            topics: MqttTopics::new(&self.mqtt_topic_root),
            keep_alive: Duration::from_secs(self.mqtt_keep_alive_s),
            connect_stagger: Duration::from_millis(self.connect_stagger_ms),
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
            thresholds,
            alert_rules,
            confirm: self.confirm,
            confirm_timeout: Duration::from_secs(self.confirm_timeout_s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config> {
        let mut argv = vec!["hb-agent"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().agent.into_config()
    }

    #[test]
    fn a_fleet_gets_numbered_device_ids_and_client_ids() {
        let c = parse(&["--devices", "3", "--device-id-template", "t1-{index}"]).unwrap();
        let ids: Vec<_> = c.devices.iter().map(|d| d.to_string()).collect();
        assert_eq!(ids, ["t1-0", "t1-1", "t1-2"]);
        assert_eq!(c.client_id(&c.devices[2]), "hb-t1-2");
        assert_eq!(c.period, Duration::from_secs(1));
    }

    #[test]
    fn a_mistyped_ble_allow_entry_is_refused_at_start_in_every_build() {
        let c = parse(&["--ble-allow", "aa:bb:cc:dd:ee:ff"]).unwrap();
        assert_eq!(c.ble_allow, ["AABBCCDDEEFF"]);
        let err = parse(&["--ble-allow", "aa:bb:cc:dd:ee:fg"]).unwrap_err();
        assert!(err.to_string().contains("not a Bluetooth address"), "{err}");
    }

    #[test]
    fn sources_parse() {
        assert_eq!("sim".parse::<SourceKind>(), Ok(SourceKind::Sim));
        assert_eq!(
            "replay:/tmp/x.csv".parse::<SourceKind>(),
            Ok(SourceKind::Replay("/tmp/x.csv".into()))
        );
        assert!("replay:".parse::<SourceKind>().is_err());
        assert!("usb".parse::<SourceKind>().is_err());
    }

    #[test]
    fn client_certificates_come_with_their_key_over_mqtts() {
        let err = parse(&[
            "--mqtt-url",
            "mqtts://localhost",
            "--mqtt-cert-file",
            "c.pem",
        ])
        .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("--mqtt-cert-file needs --mqtt-key-file"),
            "{err}"
        );
        let err = parse(&["--mqtt-cert-file", "c.pem", "--mqtt-key-file", "k.pem"]).unwrap_err();
        assert!(err.to_string().contains("mqtts://"), "{err}");
        // Each device's files are read at start: the first one missing is named.
        let err = parse(&[
            "--mqtt-url",
            "mqtts://localhost",
            "--mqtt-ca-file",
            "/etc/ssl/certs/ca-certificates.crt",
            "--devices",
            "2",
            "--device-id-template",
            "t2-{index}",
            "--mqtt-cert-file",
            "/nonexistent/{device}.pem",
            "--mqtt-key-file",
            "/nonexistent/{device}.key",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/t2-0.pem"), "{err}");
    }

    #[test]
    fn invalid_settings_are_refused() {
        assert!(parse(&["--devices", "0"]).is_err());
        assert!(parse(&["--rate-hz", "0"]).is_err());
        assert!(parse(&["--devices", "2", "--device-id-template", "fixed"]).is_err());
        assert!(parse(&["--device-id-template", "bad/{index}"]).is_err());
        assert!(parse(&["--mqtt-url", "localhost"]).is_err());
        assert!(parse(&["--spool-capacity", "10"]).is_err());
        assert!(parse(&["--speed", "0"]).is_err());
    }

    #[test]
    fn the_older_environment_names_are_used_only_when_the_new_ones_are_unset() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert_eq!(
            renamed_env(env(&[("HB_BUFFER_CAPACITY", "100")])),
            [("HB_SPOOL_CAPACITY", "100".into())]
        );
        assert!(renamed_env(env(&[
            ("HB_BUFFER_CAPACITY", "100"),
            ("HB_SPOOL_CAPACITY", "200")
        ]))
        .is_empty());
        assert_eq!(
            renamed_env(env(&[("HB_BUFFER_FULL_POLICY", "drop-newest")])),
            [("HB_SPOOL_FULL_POLICY", "drop-newest".into())]
        );
        assert!(renamed_env(env(&[])).is_empty());
    }

    #[test]
    fn the_old_buffer_flags_still_set_the_spool() {
        for (capacity, policy) in [
            ("--spool-capacity", "--spool-full-policy"),
            ("--buffer-capacity", "--buffer-full-policy"),
        ] {
            let c = parse(&[capacity, "1000", policy, "drop-newest"]).unwrap();
            assert_eq!(
                (c.spool.capacity, c.spool.full_policy),
                (1000, FullPolicy::DropNewest),
                "{capacity} {policy}"
            );
        }
    }
}
