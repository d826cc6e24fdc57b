//! HTTPS for the operations server (the collector's dashboard, `/metrics` and
//! `/healthz`): rustls with the ring provider, the certificate chain and key
//! from PEM files.
//!
//! TLS handshakes run off the accept loop, each in a task of its own with a
//! deadline, at most [`MAX_HANDSHAKES`] at a time and [`MAX_HANDSHAKES_PER_IP`]
//! from one address, so that a client that opens connections and says nothing
//! holds up nobody else. (Idle connections after the handshake are not limited:
//! axum's server has no header timeout.)

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// TLS handshakes in progress at once; further connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 256;

/// TLS handshakes in progress at once from one IP address; a further connection
/// from it is closed at once, so that one host cannot take all the slots.
pub const MAX_HANDSHAKES_PER_IP: usize = 8;

/// The longest a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Server TLS settings from a certificate chain (PEM, the server's certificate
/// first) and its private key (PEM). Errors name the file, never its contents.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("cannot read {}: {e}", cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("{} is not valid PEM", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(e) => format!("cannot read {}: {e}", key_file.display()),
        _ => format!("{} holds no valid PEM private key", key_file.display()),
    })?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                format!(
                    "{} is not the key of {}: {e}",
                    key_file.display(),
                    cert_file.display()
                )
            })?;
    let mut config = config;
    // The server speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connections that completed their TLS handshake, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` until `shutdown`, handshaking with `config`.
    pub fn new(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        shutdown: CancellationToken,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(config),
            tx,
            shutdown,
        ));
        Ok(Self { ready, local })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    shutdown: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let per_ip: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> =
        Arc::default();
    let failures = crate::log_limit::LogLimit::per_minute();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&handshakes).acquire_owned() => p.ok(),
            () = shutdown.cancelled() => None,
        };
        let Some(permit) = permit else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    if let Some(suppressed) = failures.check("accept") {
                        tracing::warn!(error = %e, suppressed, "HTTPS accept failed.");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        {
            let mut counts = per_ip
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = counts.entry(peer.ip()).or_default();
            if *n >= MAX_HANDSHAKES_PER_IP {
                continue; // `tcp` is dropped: the connection closes.
            }
            *n += 1;
        }
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        let per_ip = Arc::clone(&per_ip);
        tokio::spawn(async move {
            let _permit = permit;
            // The slot of this IP is given back however the handshake ends.
            let _slot = IpSlot(per_ip, peer.ip());
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                // A client that does not trust us, speaks plain HTTP or stalls:
                // its connection is closed; nothing to log for each one.
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed."),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out."),
            }
        });
    }
}

/// One handshake in progress from an IP address, counted until dropped.
struct IpSlot(
    Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    std::net::IpAddr,
);

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.1);
            }
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop ended (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_mismatched_files_are_named_in_one_line() {
        let err = server_config(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .unwrap_err();
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("hb-https-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = server_config(&empty, &empty).unwrap_err();
        assert!(
            err.contains("no certificate") && !err.contains('\n'),
            "{err}"
        );
    }
}
