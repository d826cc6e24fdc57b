//! TLS for MQTT (`mqtts://`): rustls with the ring provider, trusting either a CA
//! file (a private PKI, the usual case for a device fleet) or the system's roots,
//! and optionally presenting a client certificate (mutual TLS), one per device
//! when the file names contain `{device}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::TlsConfiguration;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// What `--mqtt-cert-file` and `--mqtt-key-file` may contain to name one file
/// per device.
pub const DEVICE_PLACEHOLDER: &str = "{device}";

/// The rumqttc TLS configuration that trusts `ca_file` (PEM, one or more
/// certificates) or, without one, the system's root certificates, and presents no
/// client certificate. Use it as `Transport::Tls(config)`.
pub fn configuration(ca_file: Option<&Path>) -> Result<TlsConfiguration, String> {
    ClientTls::new(ca_file, None)?.for_device("")
}

/// The TLS settings of a client's connections: the broker's CA, read once, and
/// the client certificate, if any. A certificate whose file names hold
/// `{device}` is read for each device; otherwise one configuration is built once
/// and shared by every connection.
#[derive(Debug, Clone)]
pub struct ClientTls {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    /// `(certificate file, key file)`, possibly with `{device}`.
    identity: Option<(PathBuf, PathBuf)>,
    /// The configuration of every connection, when it does not depend on the
    /// device.
    shared: Option<TlsConfiguration>,
}

impl ClientTls {
    /// Reads the CA (`ca_file`, or the system's roots) and, unless its file names
    /// hold `{device}`, the client certificate and key of `identity`.
    pub fn new(
        ca_file: Option<&Path>,
        identity: Option<(PathBuf, PathBuf)>,
    ) -> Result<Self, String> {
        let mut tls = Self {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            roots: Arc::new(roots(ca_file)?),
            identity,
            shared: None,
        };
        if !tls.per_device() {
            let identity = tls
                .identity
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path()));
            tls.shared = Some(tls.build(identity, Resumption::default())?);
        }
        Ok(tls)
    }

    /// Whether each device presents a certificate of its own (`{device}` in the
    /// certificate or key file name).
    pub fn per_device(&self) -> bool {
        self.identity.as_ref().is_some_and(|(cert, key)| {
            [cert, key]
                .iter()
                .any(|p| p.to_string_lossy().contains(DEVICE_PLACEHOLDER))
        })
    }

    /// The configuration for `device`'s connection: the shared one, or one with
    /// `device`'s certificate, read now (a clear error names a missing or
    /// unusable file).
    pub fn for_device(&self, device: &str) -> Result<TlsConfiguration, String> {
        if let Some(shared) = &self.shared {
            return Ok(shared.clone());
        }
        let expand =
            |p: &Path| PathBuf::from(p.to_string_lossy().replace(DEVICE_PLACEHOLDER, device));
        let (cert, key) = self
            .identity
            .as_ref()
            .map(|(c, k)| (expand(c), expand(k)))
            .ok_or("no TLS configuration")?;
        // A session cache per device: a session resumed by another device would
        // carry that device's identity. One broker, one entry (not rustls's 32).
        self.build(Some((&cert, &key)), Resumption::in_memory_sessions(1))
    }

    fn build(
        &self,
        identity: Option<(&Path, &Path)>,
        resumption: Resumption,
    ) -> Result<TlsConfiguration, String> {
        let builder = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .with_root_certificates(Arc::clone(&self.roots));
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certificates(cert)?;
                let private = read_private_key(key)?;
                // rustls's errors here name no key material.
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| match e {
                        rustls::Error::InconsistentKeys(_) => format!(
                            "--mqtt-key-file {} is not the key of --mqtt-cert-file {}",
                            key.display(),
                            cert.display()
                        ),
                        e => format!("--mqtt-key-file {} cannot be used: {e}", key.display()),
                    })?
            }
        };
        config.resumption = resumption;
        Ok(TlsConfiguration::Rustls(Arc::new(config)))
    }
}

/// The CA certificates of `ca_file`, or the system's roots.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
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
    Ok(roots)
}

/// The client certificate chain of `path`: the device's certificate first.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error("--mqtt-cert-file", path, e))?;
    if chain.is_empty() {
        return Err(format!(
            "--mqtt-cert-file {} holds no certificate",
            path.display()
        ));
    }
    Ok(chain)
}

/// The private key of `path`. Errors never quote the file.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            format!("--mqtt-key-file {} holds no private key", path.display())
        }
        e => pem_error("--mqtt-key-file", path, e),
    })
}

/// A one-line error for a PEM file that cannot be used. Parse errors are not
/// repeated: they may quote the file, and a key file is secret.
fn pem_error(flag: &str, path: &Path, e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read {flag} {}: {e}", path.display()),
        _ => format!("{flag} {} is not valid PEM", path.display()),
    }
}

impl crate::mqtt_auth::MqttAuthArgs {
    /// The TLS settings for `address`: `None` for `mqtt://`; for `mqtts://` the CA
    /// from `--mqtt-ca-file` (or the system's roots) and the client certificate of
    /// `--mqtt-cert-file` and `--mqtt-key-file`, if given, which may hold
    /// `{device}` (see [`ClientTls::for_device`]).
    pub fn client_tls(
        &self,
        address: &crate::mqtt_address::MqttAddress,
    ) -> Result<Option<ClientTls>, String> {
        let identity = self.client_cert_files(address.tls)?;
        if address.tls {
            ClientTls::new(self.mqtt_ca_file.as_deref(), identity).map(Some)
        } else {
            Ok(None)
        }
    }

    /// [`Self::client_tls`] for a client with one identity (the bridge):
    /// `{device}` in a file name is refused.
    pub fn tls_for(
        &self,
        address: &crate::mqtt_address::MqttAddress,
    ) -> Result<Option<TlsConfiguration>, String> {
        match self.client_tls(address)? {
            None => Ok(None),
            Some(tls) if tls.per_device() => Err(format!(
                "{DEVICE_PLACEHOLDER} in --mqtt-cert-file or --mqtt-key-file is only for hb-agent's devices"
            )),
            Some(tls) => tls.for_device("").map(Some),
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
    use crate::mqtt_auth::MqttAuthArgs;

    /// A fresh folder for one test.
    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hb-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A development CA and certificates for `devices`, made by the project's
    /// script (needs the `openssl` command).
    fn dev_certs(name: &str, devices: &[&str]) -> PathBuf {
        let out = dir(name).join("certs");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-dev-certs.sh");
        let status = std::process::Command::new(script)
            .arg(&out)
            .args(devices)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run scripts/make-dev-certs.sh");
        assert!(status.success());
        out
    }

    fn pair(dir: &Path, cert: &str, key: &str) -> Option<(PathBuf, PathBuf)> {
        Some((dir.join(cert), dir.join(key)))
    }

    fn args(cert: Option<&str>, key: Option<&str>) -> MqttAuthArgs {
        MqttAuthArgs {
            mqtt_cert_file: cert.map(PathBuf::from),
            mqtt_key_file: key.map(PathBuf::from),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_error() {
        let err = configuration(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let dir = dir("empty-ca");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(configuration(Some(&empty))
            .unwrap_err()
            .contains("no certificate"));
    }

    #[test]
    fn a_cert_without_key_or_without_mqtts_is_refused() {
        let tls: crate::mqtt_address::MqttAddress = "mqtts://localhost".parse().unwrap();
        let plain: crate::mqtt_address::MqttAddress = "mqtt://localhost".parse().unwrap();
        let err = args(Some("c.pem"), None).client_tls(&tls).unwrap_err();
        assert_eq!(err, "--mqtt-cert-file needs --mqtt-key-file");
        let err = args(None, Some("k.pem")).client_tls(&tls).unwrap_err();
        assert_eq!(err, "--mqtt-key-file needs --mqtt-cert-file");
        let err = args(Some("c.pem"), Some("k.pem"))
            .client_tls(&plain)
            .unwrap_err();
        assert!(err.contains("mqtts://"), "{err}");
        assert!(args(None, None).client_tls(&plain).unwrap().is_none());
    }

    #[test]
    fn a_missing_key_file_is_a_clear_error() {
        let certs = dev_certs("missing-key", &["strap-1"]);
        let ca = certs.join("ca.pem");
        let err = ClientTls::new(Some(&ca), pair(&certs, "strap-1.pem", "nope.key")).unwrap_err();
        let expected = format!(
            "cannot read --mqtt-key-file {}",
            certs.join("nope.key").display()
        );
        assert!(err.starts_with(&expected), "{err}");
        let err = ClientTls::new(Some(&ca), pair(&certs, "nope.pem", "strap-1.key")).unwrap_err();
        assert!(
            err.contains("--mqtt-cert-file") && err.contains("nope.pem"),
            "{err}"
        );
        // The files swapped: a certificate is no key, a key no certificate.
        let err =
            ClientTls::new(Some(&ca), pair(&certs, "strap-1.key", "strap-1.key")).unwrap_err();
        assert!(err.contains("holds no certificate"), "{err}");
        let err =
            ClientTls::new(Some(&ca), pair(&certs, "strap-1.pem", "strap-1.pem")).unwrap_err();
        assert!(err.contains("holds no private key"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn a_key_that_does_not_fit_or_does_not_parse_is_refused_without_quoting_it() {
        let certs = dev_certs("bad-key", &["strap-1", "strap-2"]);
        let ca = certs.join("ca.pem");
        let key = std::fs::read_to_string(certs.join("strap-2.key")).unwrap();
        let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        let err =
            ClientTls::new(Some(&ca), pair(&certs, "strap-1.pem", "strap-2.key")).unwrap_err();
        assert!(err.contains("is not the key of"), "{err}");
        assert!(!err.contains(&body[..16]), "the key leaked: {err}");
        let broken = certs.join("broken.key");
        let secret = "c2VjcmV0LWtleS1tYXRlcmlhbA==!!not-base64!!";
        std::fs::write(
            &broken,
            format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
        )
        .unwrap();
        let err = ClientTls::new(Some(&ca), pair(&certs, "strap-1.pem", "broken.key")).unwrap_err();
        assert!(
            err.contains("broken.key") && !err.contains("c2VjcmV0"),
            "{err}"
        );
        let garbled = certs.join("garbled.key");
        std::fs::write(
            &garbled,
            format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                &body[..40]
            ),
        )
        .unwrap();
        let err =
            ClientTls::new(Some(&ca), pair(&certs, "strap-1.pem", "garbled.key")).unwrap_err();
        assert!(!err.contains(&body[..16]), "the key leaked: {err}");
    }

    #[test]
    fn a_device_placeholder_gives_each_device_its_own_certificate() {
        let certs = dev_certs("per-device", &["strap-1", "strap-2"]);
        let ca = certs.join("ca.pem");
        let tls = ClientTls::new(Some(&ca), pair(&certs, "{device}.pem", "{device}.key")).unwrap();
        assert!(tls.per_device());
        let config = |t: &ClientTls, d: &str| match t.for_device(d).unwrap() {
            TlsConfiguration::Rustls(c) => c,
            _ => unreachable!(),
        };
        let (one, two) = (config(&tls, "strap-1"), config(&tls, "strap-2"));
        assert!(
            one.client_auth_cert_resolver.has_certs() && two.client_auth_cert_resolver.has_certs()
        );
        let err = tls.for_device("strap-3").unwrap_err();
        assert!(
            err.contains(&certs.join("strap-3.pem").display().to_string()),
            "{err}"
        );
        // Without the placeholder every connection shares one configuration.
        let shared = ClientTls::new(Some(&ca), pair(&certs, "strap-1.pem", "strap-1.key")).unwrap();
        assert!(!shared.per_device());
        assert!(Arc::ptr_eq(&config(&shared, "a"), &config(&shared, "b")));
        // The bridge has no devices: the placeholder is refused there.
        let bridge = MqttAuthArgs {
            mqtt_ca_file: Some(ca),
            ..args(Some("{device}.pem"), Some("{device}.key"))
        };
        let err = bridge
            .tls_for(&"mqtts://localhost".parse().unwrap())
            .unwrap_err();
        assert!(err.contains("only for hb-agent"), "{err}");
    }
}
