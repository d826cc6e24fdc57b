//! MQTT credentials. The password comes from the environment or a file, never
//! from a flag value that `ps` would show.

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

    /// `(username, password)` when a user name is set.
    pub fn credentials(&self) -> Result<Option<(String, String)>, String> {
        match &self.mqtt_username {
            None => Ok(None),
            Some(user) => Ok(Some((user.clone(), self.password()?.unwrap_or_default()))),
        }
    }
}

/// The broker's refusal of our credentials, if that is what `e` is: retrying
/// cannot fix it, so a client stops with a one-line error instead.
#[cfg(feature = "mqtt")]
pub fn refused_credentials(e: &rumqttc::ConnectionError) -> Option<rumqttc::ConnectReturnCode> {
    use rumqttc::{ConnectReturnCode, ConnectionError};
    match e {
        ConnectionError::ConnectionRefused(
            code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
        ) => Some(*code),
        _ => None,
    }
}
