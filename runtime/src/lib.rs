//! Process plumbing that every Heartbeat binary needs in exactly the same way, so
//! that the agent, bridge and collector log, stop and retry alike.
//!
//! # Layout
//! - [`alert_args`]: the alert-rule flags of the agent and the collector.
//! - [`logging`]: tracing to stderr (text or JSON) plus optional daily-rotated files.
//! - [`log_limit`]: at most a few lines per minute for each kind of warning that a
//!   remote party can trigger.
//! - [`shutdown`]: one [`CancellationToken`](tokio_util::sync::CancellationToken)
//!   cancelled by SIGINT or SIGTERM.
//! - [`mqtt_address`]: `mqtt://host:port` broker addresses.
//! - [`mqtt_auth`]: MQTT user name and password (from a file or the environment).
//! - `mqtt_tls` (feature `mqtt`): TLS for `mqtts://` brokers.
//! - [`retry`]: the exponential-backoff-with-jitter policy used for connecting to
//!   services.
//! - [`metrics`]: lock-free counters, gauges and histograms, rendered in the
//!   Prometheus text format.
//! - `http` (feature `http`): `/metrics` and `/healthz` routes and a server with
//!   graceful shutdown, for the bridge and the collector.
#![warn(missing_docs)]

pub mod alert_args;
#[cfg(feature = "http")]
pub mod http;
pub mod log_limit;
pub mod logging;
pub mod metrics;
pub mod mqtt_address;
pub mod mqtt_auth;
#[cfg(feature = "mqtt")]
pub mod mqtt_tls;
pub mod retry;
pub mod shutdown;

/// Parses `key=value` pairs, as given to `-X` (raw librdkafka options, which may
/// hold passwords). An error names the key at most, never a value: the flags are
/// taken as plain strings and parsed here, because clap repeats a value its parser
/// refuses.
pub fn parse_key_values(raw: &[String]) -> Result<Vec<(String, String)>, String> {
    raw.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            Some(_) => Err("-X key=value: a key is empty".to_owned()),
            None => Err(
                "-X takes key=value: an argument has no '=' (not shown: it may be a secret)"
                    .to_owned(),
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_pairs_split_at_the_first_equals_sign() {
        let one = |s: &str| parse_key_values(&[s.to_owned()]);
        assert_eq!(
            one("sasl.password=a=b").unwrap(),
            [("sasl.password".into(), "a=b".into())]
        );
        assert!(one("=x").is_err());
    }

    #[test]
    fn a_malformed_pair_is_refused_without_repeating_it() {
        let e = parse_key_values(&["ok=1".into(), "Sup3rS3cret".into()]).unwrap_err();
        assert!(!e.contains("Sup3rS3cret"), "{e}");
        let e = parse_key_values(&["=Sup3rS3cret".into()]).unwrap_err();
        assert!(!e.contains("Sup3rS3cret"), "{e}");
    }
}
