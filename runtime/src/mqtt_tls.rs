//! TLS for MQTT (`mqtts://`): rustls with the ring provider, trusting either a CA
//! file (a private PKI, the usual case for a device fleet) or the system's roots.

use std::path::Path;
use std::sync::Arc;

use rumqttc::TlsConfiguration;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The rumqttc TLS configuration that trusts `ca_file` (PEM, one or more
/// certificates) or, without one, the system's root certificates. Use it as
/// `Transport::Tls(config)`.
pub fn configuration(ca_file: Option<&Path>) -> Result<TlsConfiguration, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("CA file {} is not valid PEM: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("CA file {} holds no certificate", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("CA file {}: {e}", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs();
            if native.is_empty() {
                return Err("no CA file given and no system root certificates found".into());
            }
            for cert in native {
                let _ = roots.add(cert);
            }
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

impl crate::mqtt_auth::MqttAuthArgs {
    /// The TLS settings for `address`: `None` for `mqtt://`, the CA from
    /// `--mqtt-ca-file` (or the system's roots) for `mqtts://`.
    pub fn tls_for(
        &self,
        address: &crate::mqtt_address::MqttAddress,
    ) -> Result<Option<TlsConfiguration>, String> {
        if address.tls {
            configuration(self.mqtt_ca_file.as_deref()).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// The system's trusted roots, as Debian ships them.
fn rustls_native_certs() -> Vec<CertificateDer<'static>> {
    const BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
    CertificateDer::pem_file_iter(BUNDLE)
        .map(|it| it.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_error() {
        let err = configuration(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("hb-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(configuration(Some(&empty))
            .unwrap_err()
            .contains("no certificate"));
    }
}
