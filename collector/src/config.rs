//! Command line and environment → a validated [`Config`].

use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use hb_runtime::alert_args::AlertArgs;
use hb_runtime::logging::LogArgs;
use hb_shared::{AlertRules, KafkaTopics};

use crate::dashboard::{DashboardArgs, DashboardConfig};
use crate::database::Database;
use crate::records::Rules;

use crate::{Error, Result};

/// librdkafka options the collector sets itself: overriding them would break the
/// "offsets only after COMMIT" guarantee.
const MANAGED_KAFKA_OPTIONS: [&str; 5] = [
    "enable.auto.offset.store",
    "enable.auto.commit",
    "auto.offset.reset",
    "group.id",
    "bootstrap.servers",
];

/// `hb-collector`: Kafka → validation → PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "hb-collector", version, about, long_about = None)]
pub struct Cli {
    /// What to do; the flags may come before or after it.
    // A positional value rather than a sub-command, so that
    // `hb-collector migrate --database-url …` and
    // `hb-collector --database-url … migrate` are the same.
    #[arg(value_enum, default_value_t = Command::Run)]
    pub command: Command,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
    /// The collector.
    #[command(flatten)]
    pub collector: CollectorArgs,
}

/// What `hb-collector` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Command {
    /// Consume readings and store them (applies migrations first).
    Run,
    /// Apply the database migrations in `schema/` and exit.
    Migrate,
}

/// The collector's own flags.
#[derive(Debug, Clone, Args)]
pub struct CollectorArgs {
    /// PostgreSQL connection string, e.g.
    /// `postgres://hb_collector@db/heartbeat?sslmode=verify-full&sslrootcert=ca.pem`.
    /// `sslmode` as in libpq (default `prefer`); `sslrootcert`: trusted CAs
    /// (default: the system's). Connections act as the role `hb_writer`.
    #[arg(long, env = "HB_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// File holding the database password (first line); replaces any password
    /// in `--database-url` (and in the dashboard's, when that is not given).
    #[arg(long, env = "HB_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<std::path::PathBuf>,
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "HB_KAFKA_BROKERS", default_value = "localhost:9092")]
    pub kafka_brokers: String,
    /// Kafka consumer group; collectors in one group split the partitions.
    #[arg(long, env = "HB_KAFKA_GROUP", default_value = "hb-collector")]
    pub kafka_group: String,
    /// Prefix of every Kafka topic name (to run several deployments on one cluster).
    #[arg(long, env = "HB_KAFKA_TOPIC_PREFIX", default_value = "")]
    pub kafka_topic_prefix: String,
    /// Raw librdkafka options.
    #[command(flatten)]
    pub kafka: hb_runtime::kafka_args::KafkaOptionArgs,
    /// Most readings in one database transaction.
    #[arg(long, env = "HB_BATCH_MAX_READINGS", default_value_t = 5000)]
    pub batch_max_readings: usize,
    /// Longest a batch waits to fill before it is written, in milliseconds: the
    /// most a live reading is held back to batch it.
    #[arg(long, env = "HB_BATCH_MAX_WAIT_MS", default_value_t = 50)]
    pub batch_max_wait_ms: u64,
    /// Where bradycardia and tachycardia begin.
    #[command(flatten)]
    pub thresholds: hb_runtime::alert_args::ThresholdArgs,
    /// Lowest plausible heart rate; readings below it (except 0, "no value") are
    /// quarantined.
    #[arg(long, env = "HB_BPM_MIN", default_value_t = 20)]
    pub bpm_min: u16,
    /// Highest plausible heart rate; readings above it are quarantined.
    #[arg(long, env = "HB_BPM_MAX", default_value_t = 300)]
    pub bpm_max: u16,
    /// How far a synchronised device clock may be ahead of the receive time, in
    /// seconds, before its readings are quarantined (`clock_skew`).
    #[arg(long, env = "HB_MAX_FUTURE_SKEW_S", default_value_t = 300)]
    pub max_future_skew_s: u64,
    /// How old a reading may be when it arrives, in days, before it is quarantined
    /// (`too_old`). Should exceed the agents' buffering.
    #[arg(long, env = "HB_MAX_AGE_DAYS", default_value_t = 30)]
    pub max_age_days: u64,
    /// A reading that reaches the collector more than this many seconds after it
    /// was measured is stored as backfill (not live), even if the device sent it
    /// live: it waited in a queue on the way.
    #[arg(long, env = "HB_LATE_AFTER_S", default_value_t = 10)]
    pub late_after_s: u64,
    /// Relative difference between the BPM and the rate implied by the RR
    /// intervals above which a reading is marked `rr_consistent = false`.
    #[arg(long, env = "HB_RR_TOLERANCE", default_value_t = 0.25)]
    pub rr_tolerance: f64,
    /// Drop daily reading partitions older than this many days (hourly check;
    /// default: keep everything). At least the database's floor (30 days unless
    /// the schema owner changed `reading_retention_floor`).
    #[arg(long, env = "HB_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
    /// Address of the HTTP server for `/metrics` and `/healthz` (`none` to turn it
    /// off; port 0 picks a free port).
    #[arg(long, env = "HB_HTTP_ADDR", default_value = "127.0.0.1:9102")]
    pub http_addr: hb_runtime::http_addr::HttpAddr,
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate
    /// first) instead of HTTP: the dashboard, `/metrics` and `/healthz`. Needs
    /// `--http-tls-key-file`.
    #[arg(long, env = "HB_HTTP_TLS_CERT_FILE")]
    pub http_tls_cert_file: Option<std::path::PathBuf>,
    /// Private key (PEM) of `--http-tls-cert-file`.
    #[arg(long, env = "HB_HTTP_TLS_KEY_FILE")]
    pub http_tls_key_file: Option<std::path::PathBuf>,
    /// How long to wait for the readings topic to exist at start-up, in seconds.
    #[arg(long, env = "HB_TOPIC_WAIT_S", default_value_t = 60)]
    pub topic_wait_s: u64,
    /// Storage confirmations to the devices (Kafka `hb.stored.v1`, relayed by the
    /// bridges) go out at most once per device per this interval, in milliseconds
    /// (0: never; agents then need `--confirm puback`).
    #[arg(long, env = "HB_CONFIRM_INTERVAL_MS", default_value_t = 2000)]
    pub confirm_interval_ms: u64,
    /// Alert episodes (defaults; a device's row in `devices` may override the
    /// thresholds and delays).
    #[command(flatten)]
    pub alerts: AlertArgs,
    /// A device from which nothing was received for this long gets a
    /// `device_offline` alert, in seconds.
    #[arg(long, env = "HB_OFFLINE_AFTER_S", default_value_t = 30)]
    pub offline_after_s: u32,
    /// The dashboard and its JSON API.
    #[command(flatten)]
    pub dashboard: DashboardArgs,
}

/// Validated collector configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// PostgreSQL: where, as whom, how encrypted.
    pub database: Database,
    /// Kafka bootstrap servers.
    pub kafka_brokers: String,
    /// Consumer group id.
    pub kafka_group: String,
    /// Topic names.
    pub topics: KafkaTopics,
    /// Extra librdkafka options.
    pub kafka_options: Vec<(String, String)>,
    /// Most readings per transaction.
    pub batch_max_readings: usize,
    /// Longest wait to fill a batch.
    pub batch_max_wait: Duration,
    /// What makes a reading acceptable, and how it is classified.
    pub rules: Rules,
    /// Retention of reading partitions, in days.
    pub retention_days: Option<u32>,
    /// Metrics and health endpoint, if any.
    pub http_addr: Option<std::net::SocketAddr>,
    /// Its TLS settings, when it serves HTTPS.
    pub http_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// How long to wait for the topic at start-up.
    pub topic_wait: Duration,
    /// Storage confirmations per device at most this often; `None`: not sent.
    pub confirm_interval: Option<Duration>,
    /// Default alert rules (thresholds as in `rules`).
    pub alert_rules: AlertRules,
    /// The dashboard, if served.
    pub dashboard: Option<DashboardConfig>,
}

impl CollectorArgs {
    /// Checks the flags and builds a [`Config`].
    pub fn into_config(self) -> Result<Config> {
        if self.batch_max_readings == 0 {
            return Err(Error::Config(
                "--batch-max-readings must be at least 1".into(),
            ));
        }
        let thresholds = self.thresholds.thresholds().map_err(Error::Config)?;
        if self.bpm_min >= self.bpm_max {
            return Err(Error::Config("--bpm-min must be below --bpm-max".into()));
        }
        if !(self.rr_tolerance.is_finite() && self.rr_tolerance > 0.0) {
            return Err(Error::Config("--rr-tolerance must be above 0".into()));
        }
        if self.offline_after_s == 0 || self.offline_after_s > 86_400 {
            return Err(Error::Config(
                "--offline-after-s must be between 1 and 86400".into(),
            ));
        }
        if self.retention_days == Some(0) {
            return Err(Error::Config("--retention-days must be at least 1".into()));
        }
        let kafka_options = self
            .kafka
            .options(&MANAGED_KAFKA_OPTIONS, "hb-collector")
            .map_err(Error::Config)?;
        let alert_rules = self
            .alerts
            .rules(thresholds, self.offline_after_s * 1000)
            .map_err(Error::Config)?;
        let http_addr = self.http_addr.0;
        let database = Database::parse(&self.database_url, self.database_password_file.as_deref())?;
        let http_tls = match (&self.http_tls_cert_file, &self.http_tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(
                hb_runtime::https::server_config(cert, key)
                    .map_err(|e| Error::Config(format!("--http-tls-cert-file: {e}")))?,
            ),
            _ => {
                return Err(Error::Config(
                    "--http-tls-cert-file and --http-tls-key-file go together".into(),
                ))
            }
        };
        let dashboard = self
            .dashboard
            .into_config(&database, http_addr, http_tls.is_some())?;
        Ok(Config {
            dashboard,
            alert_rules,
            database,
            kafka_brokers: self.kafka_brokers,
            kafka_group: self.kafka_group,
            topics: KafkaTopics::new(&self.kafka_topic_prefix),
            kafka_options,
            batch_max_readings: self.batch_max_readings,
            batch_max_wait: Duration::from_millis(self.batch_max_wait_ms),
            rules: Rules {
                thresholds,
                bpm_min: self.bpm_min,
                bpm_max: self.bpm_max,
                max_future_ms: (self.max_future_skew_s as i64).saturating_mul(1000),
                max_age_ms: (self.max_age_days as i64).saturating_mul(86_400_000),
                late_after_ms: (self.late_after_s as i64).saturating_mul(1000),
                rr_tolerance: self.rr_tolerance,
            },
            retention_days: self.retention_days,
            http_addr,
            http_tls,
            topic_wait: Duration::from_secs(self.topic_wait_s),
            confirm_interval: (self.confirm_interval_ms > 0)
                .then(|| Duration::from_millis(self.confirm_interval_ms)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config> {
        let mut argv = vec!["hb-collector", "--database-url", "postgres://x"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().collector.into_config()
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.topics.readings(), "hb.readings.v1");
        assert_eq!(c.rules, Rules::default());
    }

    #[test]
    fn raw_kafka_options_pass_through_but_managed_ones_are_refused() {
        let c = parse(&["-X", "security.protocol=SASL_SSL"]).unwrap();
        assert_eq!(
            c.kafka_options,
            vec![("security.protocol".into(), "SASL_SSL".into())]
        );
        assert!(parse(&["-X", "enable.auto.offset.store=true"]).is_err());
    }

    #[test]
    fn the_command_may_come_before_or_after_the_flags() {
        for argv in [
            &["hb-collector", "migrate", "--database-url", "postgres://x"][..],
            &["hb-collector", "--database-url", "postgres://x", "migrate"],
        ] {
            assert_eq!(Cli::try_parse_from(argv).unwrap().command, Command::Migrate);
        }
        let cli = Cli::try_parse_from(["hb-collector", "--database-url", "postgres://x"]);
        assert_eq!(cli.unwrap().command, Command::Run);
        assert!(Cli::try_parse_from(["hb-collector", "--database-url", "x", "rnu"]).is_err());
    }

    #[test]
    fn help_never_shows_the_values_of_variables_that_may_hold_secrets() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for id in [
            "database_url",
            "kafka_options",
            "dashboard_tokens",
            "dashboard_database_url",
        ] {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id);
            assert!(
                arg.unwrap_or_else(|| panic!("no {id}"))
                    .is_hide_env_values_set(),
                "{id}"
            );
        }
    }

    #[test]
    fn a_malformed_kafka_option_is_refused_without_repeating_it() {
        let e = parse(&["-X", "Sup3rS3cret"]).unwrap_err().to_string();
        assert!(!e.contains("Sup3rS3cret"), "{e}");
    }

    #[test]
    fn contradictory_thresholds_are_refused() {
        assert!(parse(&["--bradycardia-below-bpm", "120"]).is_err());
        assert!(parse(&["--batch-max-readings", "0"]).is_err());
    }
}
