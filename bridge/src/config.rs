//! Command line and environment → a validated [`Config`].

use std::time::Duration;

use clap::{Args, Parser};
use hb_runtime::logging::LogArgs;
use hb_runtime::mqtt_address::MqttAddress;
use hb_runtime::mqtt_auth::MqttAuthArgs;
use hb_shared::{KafkaTopics, MqttTopics, JSON_MAX_SIZE};

use crate::{Error, Result};

/// librdkafka options the bridge sets itself: overriding them would break the
/// no-loss guarantee.
const MANAGED_KAFKA_OPTIONS: [&str; 4] = [
    "enable.idempotence",
    "acks",
    "bootstrap.servers",
    "max.in.flight.requests.per.connection",
];

/// `hb-bridge`: MQTT → Kafka.
#[derive(Debug, Parser)]
#[command(name = "hb-bridge", version, about, long_about = None)]
pub struct Cli {
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
    /// The bridge.
    #[command(flatten)]
    pub bridge: BridgeArgs,
}

/// The bridge's own flags.
#[derive(Debug, Clone, Args)]
pub struct BridgeArgs {
    /// MQTT broker, `mqtt://host:port` or `mqtts://host:port`.
    #[arg(long, env = "HB_MQTT_URL", default_value = "mqtt://localhost:1883")]
    pub mqtt_url: String,
    /// How the bridge logs in to the broker.
    #[command(flatten)]
    pub mqtt_auth: MqttAuthArgs,
    /// Stable id of this bridge instance: its MQTT client id is `hb-bridge-{id}`, and
    /// its persistent session (with any unacknowledged messages) belongs to it.
    #[arg(long, env = "HB_INSTANCE_ID", default_value = "0")]
    pub instance_id: String,
    /// Root of the MQTT topic tree (`{root}/v1/devices/…`).
    #[arg(long, env = "HB_MQTT_TOPIC_ROOT", default_value = "hb")]
    pub mqtt_topic_root: String,
    /// Shared-subscription group through which bridges split the load.
    #[arg(long, env = "HB_MQTT_SHARE_GROUP", default_value = "hb-bridge")]
    pub mqtt_share_group: String,
    /// MQTT keep-alive, in seconds.
    #[arg(long, env = "HB_MQTT_KEEP_ALIVE_S", default_value_t = 30)]
    pub mqtt_keep_alive_s: u64,
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "HB_KAFKA_BROKERS", default_value = "localhost:9092")]
    pub kafka_brokers: String,
    /// Prefix of every Kafka topic name.
    #[arg(long, env = "HB_KAFKA_TOPIC_PREFIX", default_value = "")]
    pub kafka_topic_prefix: String,
    /// Kafka consumer group through which bridges share the relay of storage
    /// confirmations to the devices (default: `{--kafka-topic-prefix}hb-bridge`).
    #[arg(long, env = "HB_RELAY_KAFKA_GROUP")]
    pub relay_kafka_group: Option<String>,
    /// Partitions of topics the bridge creates (the number of collectors that can
    /// share the work).
    #[arg(long, env = "HB_KAFKA_PARTITIONS", default_value_t = 6)]
    pub kafka_partitions: i32,
    /// Replication factor of topics the bridge creates.
    #[arg(long, env = "HB_KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    pub kafka_replication_factor: i32,
    /// Raw librdkafka options.
    #[command(flatten)]
    pub kafka: hb_runtime::kafka_args::KafkaOptionArgs,
    /// Most MQTT messages taken and not yet acknowledged (that is, not yet confirmed
    /// by Kafka). When reached, the bridge stops reading from MQTT and the broker
    /// queues the rest.
    #[arg(long, env = "HB_MAX_INFLIGHT", default_value_t = 1000)]
    pub max_inflight: usize,
    /// Most payload bytes taken and not yet acknowledged; like --max-inflight, for
    /// large messages. What the bridge holds stays within these two limits, or
    /// three times them when the MQTT connection drops twice during one Kafka
    /// outage.
    #[arg(long, env = "HB_MAX_INFLIGHT_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_inflight_bytes: usize,
    /// Address of the HTTP server for `/metrics` and `/healthz` (`none` to turn it
    /// off; port 0 picks a free port).
    #[arg(long, env = "HB_HTTP_ADDR", default_value = "127.0.0.1:9101")]
    pub http_addr: hb_runtime::http_addr::HttpAddr,
    /// How long a graceful shutdown may take before unconfirmed messages are left
    /// for redelivery, in milliseconds.
    #[arg(long, env = "HB_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,
}

/// Validated bridge configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Broker address.
    pub mqtt: MqttAddress,
    /// TLS settings for an `mqtts://` broker.
    pub mqtt_tls: Option<rumqttc::TlsConfiguration>,
    /// `(username, password)`, if any.
    pub mqtt_credentials: Option<(String, String)>,
    /// This instance's id.
    pub instance_id: String,
    /// MQTT topic names.
    pub mqtt_topics: MqttTopics,
    /// Shared-subscription group.
    pub share_group: String,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Kafka bootstrap servers.
    pub kafka_brokers: String,
    /// Kafka topic names.
    pub kafka_topics: KafkaTopics,
    /// Consumer group of the stored-topic relay.
    pub relay_kafka_group: String,
    /// Partitions of created topics.
    pub kafka_partitions: i32,
    /// Replication of created topics.
    pub kafka_replication_factor: i32,
    /// Extra librdkafka options.
    pub kafka_options: Vec<(String, String)>,
    /// In-flight cap, in messages.
    pub max_inflight: usize,
    /// In-flight cap, in payload bytes.
    pub max_inflight_bytes: usize,
    /// Graceful-shutdown deadline.
    pub shutdown_timeout: Duration,
    /// Metrics and health endpoint, if any.
    pub http_addr: Option<std::net::SocketAddr>,
}

impl Config {
    /// The MQTT client id of this instance.
    pub fn client_id(&self) -> String {
        format!("hb-bridge-{}", self.instance_id)
    }
}

impl BridgeArgs {
    /// Checks the flags and builds a [`Config`].
    pub fn into_config(self) -> Result<Config> {
        let mqtt: MqttAddress = self.mqtt_url.parse().map_err(Error::Config)?;
        let mqtt_tls = self.mqtt_auth.tls_for(&mqtt).map_err(Error::Config)?;
        let valid_id = |s: &str| {
            !s.is_empty()
                && s.len() <= 32
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !valid_id(&self.instance_id) {
            return Err(Error::Config(
                "--instance-id must be 1–32 of [A-Za-z0-9_-]".into(),
            ));
        }
        if !valid_id(&self.mqtt_share_group) {
            return Err(Error::Config(
                "--mqtt-share-group must be 1–32 of [A-Za-z0-9_-]".into(),
            ));
        }
        if self.max_inflight == 0 || self.max_inflight > 65_535 {
            return Err(Error::Config(
                "--max-inflight must be between 1 and 65535".into(),
            ));
        }
        if self.max_inflight_bytes < 4 * JSON_MAX_SIZE {
            return Err(Error::Config(format!(
                "--max-inflight-bytes must be at least {} (the largest message)",
                4 * JSON_MAX_SIZE
            )));
        }
        if self.kafka_partitions < 1 || self.kafka_replication_factor < 1 {
            return Err(Error::Config(
                "--kafka-partitions and --kafka-replication-factor must be at least 1".into(),
            ));
        }
        if self.mqtt_keep_alive_s < 5 {
            return Err(Error::Config(
                "--mqtt-keep-alive-s must be at least 5".into(),
            ));
        }
        let kafka_options = self
            .kafka
            .options(&MANAGED_KAFKA_OPTIONS, "hb-bridge")
            .map_err(Error::Config)?;
        Ok(Config {
            mqtt,
            mqtt_tls,
            mqtt_credentials: self.mqtt_auth.credentials().map_err(Error::Config)?,
            instance_id: self.instance_id,
            mqtt_topics: MqttTopics::new(&self.mqtt_topic_root),
            share_group: self.mqtt_share_group,
            keep_alive: Duration::from_secs(self.mqtt_keep_alive_s),
            kafka_brokers: self.kafka_brokers,
            relay_kafka_group: self
                .relay_kafka_group
                .unwrap_or_else(|| format!("{}hb-bridge", self.kafka_topic_prefix)),
            kafka_topics: KafkaTopics::new(&self.kafka_topic_prefix),
            kafka_partitions: self.kafka_partitions,
            kafka_replication_factor: self.kafka_replication_factor,
            kafka_options,
            max_inflight: self.max_inflight,
            max_inflight_bytes: self.max_inflight_bytes,
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
            http_addr: self.http_addr.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config> {
        let mut argv = vec!["hb-bridge"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().bridge.into_config()
    }

    #[test]
    fn a_malformed_kafka_option_is_refused_without_repeating_it() {
        let e = parse(&["-X", "Sup3rS3cret"]).unwrap_err().to_string();
        assert!(!e.contains("Sup3rS3cret"), "{e}");
        use clap::CommandFactory;
        let cmd = Cli::command();
        let arg = cmd.get_arguments().find(|a| a.get_id() == "kafka_options");
        assert!(
            arg.unwrap().is_hide_env_values_set(),
            "--help shows HB_KAFKA_OPTIONS"
        );
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.client_id(), "hb-bridge-0");
        assert_eq!(c.mqtt.port, 1883);
    }

    #[test]
    fn unsafe_or_malformed_settings_are_refused() {
        assert!(parse(&["-X", "acks=1"]).is_err());
        assert!(parse(&["--instance-id", "a/b"]).is_err());
        assert!(parse(&["--max-inflight", "0"]).is_err());
        assert!(parse(&["--mqtt-url", "http://x"]).is_err());
    }
}
