//! The dashboard's flags → a validated [`DashboardConfig`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Args};

use crate::database::Database;
use crate::{Error, Result};

/// The dashboard's flags.
#[derive(Debug, Clone, Args)]
pub struct DashboardArgs {
    /// Serve the dashboard and its JSON API on the HTTP server (`--http-addr`).
    #[arg(long, env = "HB_DASHBOARD", default_value_t = true, action = ArgAction::Set)]
    pub dashboard: bool,
    /// A person or system that may use the dashboard, `NAME=TOKEN` (repeatable;
    /// from the environment: `;`-separated). With tokens set every page and API
    /// call needs one and acknowledgements record NAME; with none the dashboard
    /// is read-only and must listen on a loopback address.
    // Parsed in `into_config`, not by clap, whose errors repeat the value.
    #[arg(
        long = "dashboard-token",
        env = "HB_DASHBOARD_TOKENS",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub dashboard_tokens: Vec<String>,
    /// A file of `NAME=TOKEN` lines (`#` starts a comment), added to
    /// `--dashboard-token`.
    #[arg(long, env = "HB_DASHBOARD_TOKEN_FILE")]
    pub dashboard_token_file: Option<PathBuf>,
    /// PostgreSQL connection string for the dashboard's reads (default: the
    /// `--database-url`). Its connections switch to the role `hb_reader`, which
    /// may only read the dashboard's views.
    #[arg(long, env = "HB_DASHBOARD_DATABASE_URL", hide_env_values = true)]
    pub dashboard_database_url: Option<String>,
    /// File holding the password (first line) of `--dashboard-database-url`'s
    /// login.
    #[arg(long, env = "HB_DASHBOARD_DATABASE_PASSWORD_FILE")]
    pub dashboard_database_password_file: Option<PathBuf>,
}

/// `NAME=TOKEN`. Unlike other `key=value` flags, an error never repeats the
/// value: it may be a token.
pub fn parse_token(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, token)) if !name.trim().is_empty() && !token.is_empty() => {
            Ok((name.trim().to_owned(), token.to_owned()))
        }
        _ => Err("expected NAME=TOKEN (the value is not repeated here)".into()),
    }
}

/// Validated dashboard configuration.
#[derive(Clone)]
pub struct DashboardConfig {
    /// Token → name. Empty: read-only, loopback only.
    pub tokens: BTreeMap<String, String>,
    /// Where the dashboard reads from.
    pub database: Database,
    /// Served over HTTPS: the login cookie is marked `Secure`.
    pub https: bool,
}

impl std::fmt::Debug for DashboardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens and the URL's password stay out of debug output.
        f.debug_struct("DashboardConfig")
            .field("names", &self.tokens.values().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl DashboardArgs {
    /// `None` when the dashboard is off. Refuses a dashboard open to the network
    /// without tokens.
    pub fn into_config(
        self,
        database: &Database,
        http_addr: Option<SocketAddr>,
        https: bool,
    ) -> Result<Option<DashboardConfig>> {
        if !self.dashboard {
            return Ok(None);
        }
        let mut pairs = Vec::new();
        for entry in &self.dashboard_tokens {
            pairs.push(
                parse_token(entry).map_err(|e| Error::Config(format!("--dashboard-token: {e}")))?,
            );
        }
        if let Some(path) = &self.dashboard_token_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::Config(format!("--dashboard-token-file {}: {e}", path.display()))
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let pair = parse_token(line).map_err(|e| {
                    Error::Config(format!(
                        "--dashboard-token-file {} line {}: {e}",
                        path.display(),
                        n + 1
                    ))
                })?;
                pairs.push(pair);
            }
        }
        let mut tokens = BTreeMap::new();
        for (name, token) in pairs {
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                return Err(Error::Config(format!(
                    "dashboard token name {name:?} must be 1-64 printable characters"
                )));
            }
            if token.len() < 16 {
                return Err(Error::Config(format!(
                    "the dashboard token of {name:?} is shorter than 16 characters"
                )));
            }
            if !token
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b";,\"\\".contains(&b))
            {
                return Err(Error::Config(format!(
                    "the dashboard token of {name:?} may hold only printable ASCII without ; , \" \\"
                )));
            }
            if tokens.insert(token, name.clone()).is_some() {
                return Err(Error::Config(format!(
                    "the dashboard token of {name:?} is also another name's"
                )));
            }
        }
        if let Some(addr) = http_addr {
            if tokens.is_empty() && !addr.ip().is_loopback() {
                return Err(Error::Config(format!(
                    "the dashboard on {addr} would be open to the network without a token: \
                     set --dashboard-token NAME=TOKEN, listen on a loopback address, or --dashboard false"
                )));
            }
        }
        if let Some(addr) = http_addr {
            if !tokens.is_empty() && !addr.ip().is_loopback() && !https {
                tracing::warn!(%addr, "The dashboard's tokens cross the network unencrypted: serve HTTPS (--http-tls-cert-file) or put it behind a TLS proxy.");
            }
        }
        Ok(Some(DashboardConfig {
            https,
            tokens,
            database: match (
                &self.dashboard_database_url,
                &self.dashboard_database_password_file,
            ) {
                (Some(url), file) => Database::parse(url, file.as_deref())?,
                (None, None) => database.clone(),
                (None, Some(_)) => {
                    return Err(Error::Config(
                        "--dashboard-database-password-file needs --dashboard-database-url".into(),
                    ))
                }
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Cli;
    use clap::Parser;

    fn parse(args: &[&str]) -> crate::Result<Option<super::DashboardConfig>> {
        let mut argv = vec!["hb-collector", "--database-url", "postgres://x"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .unwrap()
            .collector
            .into_config()
            .map(|c| c.dashboard)
    }

    #[test]
    fn without_tokens_the_dashboard_serves_loopback_only() {
        assert!(parse(&[]).unwrap().unwrap().tokens.is_empty());
        let err = parse(&["--http-addr", "0.0.0.0:9102"]).unwrap_err();
        assert!(err.to_string().contains("without a token"), "{err}");
        assert!(
            parse(&["--http-addr", "0.0.0.0:9102", "--dashboard", "false"])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn tokens_come_from_flags_and_a_file() {
        let dir = tempfile_dir();
        let file = dir.join("tokens");
        std::fs::write(&file, "# operators\nbob=bbbbbbbbbbbbbbbbbbbb\n\n").unwrap();
        let c = parse(&[
            "--http-addr",
            "0.0.0.0:9102",
            "--dashboard-token",
            "alice=aaaaaaaaaaaaaaaaaaaa",
            "--dashboard-token-file",
            file.to_str().unwrap(),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.tokens["aaaaaaaaaaaaaaaaaaaa"], "alice");
        assert_eq!(c.tokens["bbbbbbbbbbbbbbbbbbbb"], "bob");
        assert!(!format!("{c:?}").contains("aaaa"), "{c:?}");
    }

    #[test]
    fn a_malformed_token_is_refused_without_repeating_it() {
        let err = parse(&["--dashboard-token", "sekret-sekret-sekret"])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sekret"), "{err}");
        assert!(err.contains("NAME=TOKEN"), "{err}");
    }

    #[test]
    fn short_or_shared_tokens_are_refused() {
        let err = parse(&["--dashboard-token", "a=short"]).unwrap_err();
        assert!(err.to_string().contains("shorter than 16"), "{err}");
        let err = parse(&[
            "--dashboard-token",
            "a=aaaaaaaaaaaaaaaaaaaa",
            "--dashboard-token",
            "b=aaaaaaaaaaaaaaaaaaaa",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("also another"), "{err}");
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hb-dashboard-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
