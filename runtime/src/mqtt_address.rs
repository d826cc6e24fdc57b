//! `mqtt://host:port` / `mqtts://host:port` broker addresses.

use std::fmt;
use std::str::FromStr;

/// A broker address from a URL-like string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttAddress {
    /// Host name or IP address.
    pub host: String,
    /// TCP port (default 1883, or 8883 for `mqtts`).
    pub port: u16,
    /// Whether to use TLS (`mqtts://`).
    pub tls: bool,
}

impl FromStr for MqttAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // Errors show the URL without any `user:password@` (credentials go in
        // their own flags, but a URL may carry them anyway).
        let shown = match s.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://…@{host}"),
                None => s.to_owned(),
            },
            None => s.split('@').next_back().unwrap_or_default().to_owned(),
        };
        let s_shown = &shown;
        let (tls, rest) = if let Some(r) = s
            .strip_prefix("mqtts://")
            .or_else(|| s.strip_prefix("ssl://"))
        {
            (true, r)
        } else if let Some(r) = s
            .strip_prefix("mqtt://")
            .or_else(|| s.strip_prefix("tcp://"))
        {
            (false, r)
        } else {
            return Err(format!("{s_shown:?} is not an mqtt:// or mqtts:// URL"));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('@') {
            return Err(format!(
                "{s_shown:?} has no valid host (credentials go in --mqtt-username and the password file)"
            ));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse()
                    .map_err(|_| format!("{s_shown:?} has an invalid port {p:?}"))?,
            ),
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') || host.contains('@') {
            return Err(format!("{s_shown:?} has no valid host (credentials go in --mqtt-username and the password file)"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

impl fmt::Display for MqttAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schemes_hosts_and_ports() {
        let a: MqttAddress = "mqtt://127.0.0.1:18830".parse().unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.tls),
            ("127.0.0.1", 18830, false)
        );
        let b: MqttAddress = "mqtts://broker.example".parse().unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.tls),
            ("broker.example", 8883, true)
        );
        let c: MqttAddress = "mqtt://[::1]:1884".parse().unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 1884));
    }

    #[test]
    fn an_error_never_shows_a_password_in_the_url() {
        for bad in [
            "mqtt://user:Sup3rS3cret@host",
            "http://user:Sup3rS3cret@host",
        ] {
            let e = bad.parse::<MqttAddress>().unwrap_err();
            assert!(!e.contains("Sup3rS3cret") && e.contains("host"), "{e}");
        }
    }

    #[test]
    fn rejects_other_schemes_and_bad_ports() {
        for bad in [
            "http://x",
            "localhost:1883",
            "mqtt://",
            "mqtt://h:port",
            "mqtt://u@h",
        ] {
            assert!(bad.parse::<MqttAddress>().is_err(), "{bad}");
        }
    }
}
