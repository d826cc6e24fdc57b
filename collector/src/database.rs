//! Connecting to PostgreSQL: the connection string with libpq's TLS settings
//! (`sslmode`, `sslrootcert`), the password from a file, rustls, and the roles
//! the connections act as.
//!
//! `sslmode` means what it means to libpq:
//! - `disable`: plaintext only;
//! - `prefer` (the default): TLS when the server offers it, the certificate not
//!   checked; plaintext otherwise;
//! - `require`: TLS or nothing, the certificate not checked (checked against
//!   `sslrootcert` when one is given, as libpq does);
//! - `verify-ca`: TLS, the certificate signed by a trusted CA;
//! - `verify-full`: as `verify-ca`, and issued for the host connected to. Use
//!   this one outside a private network.
//!
//! `sslrootcert` names a PEM file of trusted CAs; without it the system's roots
//! are trusted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::Severity;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{Error, Result};

/// The role the collector's own connections act as: it may read and write the
/// tables it ingests into, and nothing else (no DDL; partitions are created
/// through a function owned by the schema's owner).
pub const WRITER_ROLE: &str = "hb_writer";

/// A connection's driver, to be spawned (or polled by hand for notices).
pub type Connection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// Where and how to connect: a validated connection string.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// The `sslmode` asked for (kept for messages).
    mode: TlsMode,
}

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `disable`.
    Disable,
    /// `prefer`.
    Prefer,
    /// `require`.
    Require,
    /// `verify-ca`.
    VerifyCa,
    /// `verify-full`.
    VerifyFull,
}

impl std::fmt::Debug for Database {
    /// Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("hosts", &self.config.get_hosts())
            .field("user", &self.config.get_user())
            .field("dbname", &self.config.get_dbname())
            .field("sslmode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Parses a connection string (URL or `key=value` form); `password_file`,
    /// when given, holds the password (its first line), which replaces any in
    /// the string. Errors never repeat the string: it may hold a password.
    pub fn parse(url: &str, password_file: Option<&Path>) -> Result<Self> {
        let (rest, tls) = take_tls_settings(url)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            Error::Config(format!(
                "the database connection string does not parse: {e}"
            ))
        })?;
        if let Some(path) = password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::Config(format!(
                    "cannot read the database password file {}: {e}",
                    path.display()
                ))
            })?;
            config.password(text.lines().next().unwrap_or_default());
        }
        // An `sslmode` this parser did not take out (`sslmode = require`, spaces
        // around `=`) must not be overridden by the default.
        if tls.mode.is_none() && config.get_ssl_mode() != SslMode::Prefer {
            return Err(Error::Config(
                "write sslmode=… in the database connection string without spaces around '='"
                    .into(),
            ));
        }
        let mode = tls.mode.unwrap_or(TlsMode::Prefer);
        if mode == TlsMode::VerifyCa && tls.root_cert.is_none() {
            // Any certificate a public CA issued, for any name, would pass.
            return Err(Error::Config(
                "sslmode=verify-ca needs sslrootcert (the CA of the server's certificate); \
                 with the system's CAs use verify-full"
                    .into(),
            ));
        }
        let remote = config.get_hosts().iter().any(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => !is_loopback(name),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => false,
        });
        if remote && mode != TlsMode::VerifyFull {
            tracing::warn!(
                sslmode = ?mode,
                "The database is reached over the network without sslmode=verify-full: \
                 its server is not authenticated."
            );
        }
        config.ssl_mode(match mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        let tls = MakeRustlsConnect::new(client_config(mode, tls.root_cert.as_deref())?);
        Ok(Self { config, tls, mode })
    }

    /// Connects once, as the connection string's user.
    pub async fn connect(&self) -> Result<(Client, Connection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }

    /// Connects once, as the connection string's user, with the connection
    /// driven in the background.
    pub async fn open(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.connect().await?;
        spawn(connection);
        Ok(client)
    }

    /// Connects once and switches to `role` (the login must be a member of it).
    pub async fn open_as(&self, role: &str) -> Result<Client, tokio_postgres::Error> {
        let client = self.open().await?;
        client.batch_execute(&format!("SET ROLE {role}")).await?;
        Ok(client)
    }

    /// The parsed settings (for a connection pool).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS connector (for a connection pool).
    pub fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    /// The `sslmode` in effect.
    pub fn tls_mode(&self) -> TlsMode {
        self.mode
    }
}

/// `sslmode` and `sslrootcert`, which tokio-postgres does not know (or knows
/// only in part), taken out of the connection string.
#[derive(Debug, Default, PartialEq)]
struct TlsSettings {
    mode: Option<TlsMode>,
    root_cert: Option<PathBuf>,
}

fn take_tls_settings(url: &str) -> Result<(String, TlsSettings)> {
    let mut settings = TlsSettings::default();
    let mut take = |key: &str, value: &str| -> Result<bool> {
        match key {
            "sslmode" => {
                settings.mode = Some(match value {
                    "disable" => TlsMode::Disable,
                    "prefer" => TlsMode::Prefer,
                    "require" => TlsMode::Require,
                    "verify-ca" => TlsMode::VerifyCa,
                    "verify-full" => TlsMode::VerifyFull,
                    // The value is not repeated: in the key=value form a quoted
                    // password could run into it.
                    _ => return Err(Error::Config(
                        "sslmode is not one of disable, prefer, require, verify-ca, verify-full"
                            .into(),
                    )),
                });
                Ok(true)
            }
            "sslrootcert" => {
                settings.root_cert = Some(PathBuf::from(value));
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(k, &percent_decode(v))? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        // key=value form; these two keys take unquoted values. Only their own
        // words are cut out: the rest (quoted values included) stays as written.
        let mut rest = url.to_owned();
        for word in url.split_whitespace() {
            if let Some((k, v)) = word.split_once('=') {
                if take(k, v)? {
                    rest = rest.replacen(word, "", 1);
                }
            }
        }
        rest
    };
    Ok((rest, settings))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn client_config(mode: TlsMode, root_cert: Option<&Path>) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS set-up failed: {e}")))?;
    let verify = match mode {
        TlsMode::VerifyCa | TlsMode::VerifyFull => true,
        TlsMode::Require => root_cert.is_some(),
        TlsMode::Disable | TlsMode::Prefer => false,
    };
    let verifier: Arc<dyn ServerCertVerifier> = if verify {
        let roots = Arc::new(roots(root_cert)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .build()
            .map_err(|e| Error::Config(format!("TLS set-up failed: {e}")))?;
        if mode == TlsMode::VerifyFull {
            webpki
        } else {
            Arc::new(AnyName(webpki))
        }
    } else {
        Arc::new(Unverified(provider))
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The CAs of `sslrootcert`, or the system's.
fn roots(root_cert: Option<&Path>) -> Result<RootCertStore> {
    let path = root_cert.unwrap_or(Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::Config(format!("cannot read sslrootcert {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("sslrootcert {} is not PEM: {e}", path.display())))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::Config(format!(
            "sslrootcert {} holds no usable certificate",
            path.display()
        )));
    }
    Ok(roots)
}

/// `verify-ca` (and `require` with a root certificate): the chain is checked,
/// the name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first, the name last: a name error means the
        // chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require`: encrypted, the server not authenticated (libpq's
/// meaning of these modes). The handshake's signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Drives `connection` in the background. Read by hand rather than awaited, so
/// that NOTICEs ("partition already exists, skipping") are debug output, not
/// INFO noise; WARNINGs stay visible.
pub fn spawn(mut connection: Connection) {
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notice(n))) => {
                    let (code, message) = (n.code().code(), n.message());
                    if n.parsed_severity() == Some(Severity::Warning) {
                        tracing::warn!(code, message, "PostgreSQL warning.");
                    } else {
                        tracing::debug!(code, message, "PostgreSQL notice.");
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "PostgreSQL connection ended.");
                    break;
                }
                None => break,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_a_url_and_the_rest_kept() {
        let (rest, tls) = take_tls_settings(
            "postgres://u:p@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(tls.mode, Some(TlsMode::VerifyFull));
        assert_eq!(tls.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let (rest, tls) = take_tls_settings("postgres://h/db?sslmode=disable").unwrap();
        assert_eq!(rest, "postgres://h/db");
        assert_eq!(tls.mode, Some(TlsMode::Disable));
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_key_value_form() {
        let (rest, tls) =
            take_tls_settings("host=db user=hb sslmode=verify-ca sslrootcert=/ca.pem dbname=x")
                .unwrap();
        assert_eq!(
            rest.split_whitespace().collect::<Vec<_>>(),
            ["host=db", "user=hb", "dbname=x"]
        );
        assert_eq!(tls.mode, Some(TlsMode::VerifyCa));
        assert_eq!(tls.root_cert, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn an_unknown_sslmode_is_refused_and_the_default_is_prefer() {
        let err = Database::parse("postgres://h/db?sslmode=verify", None).unwrap_err();
        assert!(err.to_string().contains("verify-full"), "{err}");
        let db = Database::parse("postgres://h/db", None).unwrap();
        assert_eq!(db.tls_mode(), TlsMode::Prefer);
        assert_eq!(db.config().get_ssl_mode(), SslMode::Prefer);
        let db = Database::parse("postgres://h/db?sslmode=verify-full", None).unwrap();
        assert_eq!(db.config().get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn a_parse_error_and_the_debug_form_never_show_the_password() {
        let secret = "s3cr3t-pa55word";
        let err = Database::parse(&format!("postgres://u:{secret}@h:notaport/db"), None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains(secret), "{err}");
        let db = Database::parse(&format!("postgres://u:{secret}@h/db"), None).unwrap();
        assert!(!format!("{db:?}").contains(secret));
    }

    #[test]
    fn the_password_file_replaces_the_password_in_the_url() {
        let dir = std::env::temp_dir().join(format!("hb-db-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "from-the-file\nignored\n").unwrap();
        let db = Database::parse("postgres://u:in-url@h/db", Some(&file)).unwrap();
        assert_eq!(db.config().get_password(), Some(&b"from-the-file"[..]));
        let err = Database::parse("postgres://u@h/db", Some(&dir.join("missing")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("password file") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn an_sslmode_written_with_spaces_or_verify_ca_without_a_root_is_refused() {
        let err = Database::parse("host=db sslmode = require", None).unwrap_err();
        assert!(err.to_string().contains("without spaces"), "{err}");
        let err = Database::parse("postgres://h/db?sslmode=verify-ca", None).unwrap_err();
        assert!(err.to_string().contains("sslrootcert"), "{err}");
        let db = Database::parse("host=db password='a b' sslmode=disable", None).unwrap();
        assert_eq!(db.config().get_password(), Some(&b"a b"[..]));
        assert_eq!(db.tls_mode(), TlsMode::Disable);
    }

    #[test]
    fn a_missing_root_certificate_is_a_clear_error() {
        let err = Database::parse(
            "postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
