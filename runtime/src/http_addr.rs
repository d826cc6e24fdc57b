//! The value of `--http-addr` (bridge, collector): the address the metrics,
//! health and dashboard server listens on, or `none` for no server.

use std::net::SocketAddr;
use std::str::FromStr;

/// `host:port` to listen on, or `none`. Parsed by clap through [`FromStr`], so a
/// bad value is refused with the flag's name before anything starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpAddr(pub Option<SocketAddr>);

impl FromStr for HttpAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(Self(None));
        }
        s.parse()
            .map(|a| Self(Some(a)))
            .map_err(|e| format!("{e} (expected IP:port, or none)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_turns_the_server_off_and_an_address_is_parsed() {
        assert_eq!("none".parse::<HttpAddr>().unwrap(), HttpAddr(None));
        assert_eq!(
            "127.0.0.1:0".parse::<HttpAddr>().unwrap(),
            HttpAddr(Some("127.0.0.1:0".parse().unwrap()))
        );
    }

    #[test]
    fn a_host_name_or_a_missing_port_is_refused() {
        assert!("localhost:9102".parse::<HttpAddr>().is_err());
        assert!("127.0.0.1".parse::<HttpAddr>().is_err());
        assert!("".parse::<HttpAddr>().is_err());
    }
}
