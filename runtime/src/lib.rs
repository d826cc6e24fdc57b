//! Process plumbing that every Heartbeat binary needs in exactly the same way, so
//! that the agent, bridge and collector log, stop and retry alike.
//!
//! # Layout
//! - [`program`]: the start-up and the one-line error exit of each binary's `main`.
//! - [`clock`]: the wall clock in Unix milliseconds.
//! - [`alert_args`]: the classification thresholds and alert-rule flags of the
//!   agent and the collector.
//! - [`http_addr`]: the `--http-addr` value (an address, or `none`).
//! - [`kafka_args`]: the raw librdkafka options (`-X`) of the bridge and the
//!   collector.
//! - [`logging`]: tracing to stderr (text or JSON) plus optional daily-rotated files.
//! - [`log_limit`]: at most a few lines per minute for each kind of warning that a
//!   remote party can trigger.
//! - [`shutdown`]: one [`CancellationToken`](tokio_util::sync::CancellationToken)
//!   cancelled by SIGINT or SIGTERM; a second signal exits at once.
//! - [`mqtt_address`]: `mqtt://host:port` broker addresses.
//! - [`mqtt_auth`]: MQTT user name and password (from a file or the environment),
//!   or client certificate and key files.
//! - `mqtt_tls` (feature `mqtt`): TLS for `mqtts://` brokers, with client
//!   certificates (one per device with `{device}`).
//! - [`retry`]: the exponential-backoff-with-jitter policy used for connecting to
//!   services.
//! - `metrics` (feature `metrics`): counters, gauges and histograms
//!   (prometheus-client), rendered in the Prometheus text format.
//! - `http` (feature `http`): `/metrics` and `/healthz` routes and a server with
//!   graceful shutdown, for the bridge and the collector.
//! - `https` (feature `https`): the same server over TLS, for the collector.

pub mod alert_args;
pub mod clock;
#[cfg(feature = "http")]
pub mod http;
pub mod http_addr;
#[cfg(feature = "https")]
pub mod https;
pub mod kafka_args;
pub mod log_limit;
pub mod logging;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod mqtt_address;
pub mod mqtt_auth;
#[cfg(feature = "mqtt")]
pub mod mqtt_tls;
pub mod program;
pub mod retry;
pub mod shutdown;
