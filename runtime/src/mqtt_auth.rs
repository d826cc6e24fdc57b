//! MQTT credentials: a user name and password (the password from the environment
//! or a file, never from a flag value that `ps` would show), or a client
//! certificate for mutual TLS.

use std::path::PathBuf;

/// Credential flags, flattened into the agent's and bridge's command lines.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MqttAuthArgs {
    /// MQTT user name (agents: may contain `{device}`).
    #[arg(long, env = "HB_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    /// File holding the MQTT password (first line). Alternatively set
    /// `HB_MQTT_PASSWORD` in the environment.
    #[arg(long, env = "HB_MQTT_PASSWORD_FILE")]
    pub mqtt_password_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) to verify an `mqtts://` broker with; default: the
    /// system's root certificates.
    #[arg(long, env = "HB_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,
    /// Client certificate (PEM, optionally followed by its intermediate CAs) to
    /// present to an `mqtts://` broker, instead of or besides a password; needs
    /// `--mqtt-key-file`. Agents: may contain `{device}` for one certificate per
    /// device.
    #[arg(long, env = "HB_MQTT_CERT_FILE")]
    pub mqtt_cert_file: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, SEC1 or PKCS#1) of `--mqtt-cert-file`. Agents: may
    /// contain `{device}`.
    #[arg(long, env = "HB_MQTT_KEY_FILE")]
    pub mqtt_key_file: Option<PathBuf>,
}

impl MqttAuthArgs {
    /// The password from `--mqtt-password-file` or `HB_MQTT_PASSWORD`.
    pub fn password(&self) -> Result<Option<String>, String> {
        if let Some(path) = &self.mqtt_password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --mqtt-password-file {}: {e}", path.display()))?;
            return Ok(Some(text.lines().next().unwrap_or_default().to_owned()));
        }
        Ok(std::env::var("HB_MQTT_PASSWORD").ok())
    }

    /// `(username, password)` when a user name is set. Without one (and with a
    /// client certificate) the client connects without user name and password: a
    /// Mosquitto listener with `use_identity_as_username` takes the certificate's
    /// CN as the user name.
    pub fn credentials(&self) -> Result<Option<(String, String)>, String> {
        match &self.mqtt_username {
            None => Ok(None),
            Some(user) => Ok(Some((user.clone(), self.password()?.unwrap_or_default()))),
        }
    }

    /// The client certificate and key files, checked to come together and only
    /// with an `mqtts://` broker (`tls`).
    pub fn client_cert_files(&self, tls: bool) -> Result<Option<(PathBuf, PathBuf)>, String> {
        let files = match (&self.mqtt_cert_file, &self.mqtt_key_file) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            (Some(_), None) => return Err("--mqtt-cert-file needs --mqtt-key-file".into()),
            (None, Some(_)) => return Err("--mqtt-key-file needs --mqtt-cert-file".into()),
        };
        if !tls {
            return Err("--mqtt-cert-file and --mqtt-key-file need an mqtts:// broker URL".into());
        }
        Ok(Some(files))
    }
}

/// The broker's refusal of our credentials, if that is what `e` is: a CONNACK
/// refusing the user name or password, or a TLS alert refusing our client
/// certificate (unknown CA, expired, revoked, missing). Retrying cannot fix it, so
/// a client stops with a one-line error instead. The text names what was refused.
#[cfg(feature = "mqtt")]
pub fn refused_credentials(e: &rumqttc::ConnectionError) -> Option<String> {
    use rumqttc::{ConnectReturnCode, ConnectionError};
    match e {
        ConnectionError::ConnectionRefused(
            code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
        ) => Some(format!("{code:?}")),
        _ => refused_certificate(e).map(|alert| format!("client certificate: TLS alert {alert:?}")),
    }
}

/// The TLS alert with which the broker refused our client certificate, if `e`
/// (anywhere in its chain, I/O errors included) is one.
#[cfg(feature = "mqtt")]
fn refused_certificate(e: &rumqttc::ConnectionError) -> Option<rustls::AlertDescription> {
    use rustls::AlertDescription as A;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        // io::Error::source() skips the error it wraps: look inside it first.
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if let Some(rustls::Error::AlertReceived(alert)) = candidate.downcast_ref() {
                return matches!(
                    alert,
                    A::BadCertificate
                        | A::UnsupportedCertificate
                        | A::CertificateRevoked
                        | A::CertificateExpired
                        | A::CertificateUnknown
                        | A::UnknownCA
                        | A::AccessDenied
                        | A::CertificateRequired
                )
                .then_some(*alert);
            }
        }
        next = inner.or_else(|| err.source());
    }
    None
}
