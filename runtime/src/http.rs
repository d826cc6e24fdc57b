//! HTTP for operations: `/metrics` and `/healthz`, and the server that the bridge
//! and collector run them on (the collector adds its dashboard and JSON API to the
//! same [`Router`]).

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::{header::CONTENT_TYPE, StatusCode};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Registry};

pub use axum::Router;

/// How long [`serve`] waits for in-flight requests after shutdown before it
/// returns anyway, so that a stalled client cannot hold up the process's exit.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Health as reported by `/healthz`: 200 `ok` when every check passes, 503 with
/// the failing checks' names and reasons otherwise (text/plain, one line per
/// failing check).
///
/// Clones share the checks, so a task can keep a clone and report on its own
/// dependency (`health.set("kafka", Err(..))`). A check that has never been set
/// does not exist; set it to `Err("not connected yet")` at start-up if readiness
/// should wait for it.
#[derive(Debug, Clone, Default)]
pub struct Health {
    checks: Arc<Mutex<BTreeMap<&'static str, Result<(), String>>>>,
}

impl Health {
    /// No checks: healthy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the outcome of check `name`, replacing its previous outcome.
    pub fn set(&self, name: &'static str, result: Result<(), String>) {
        self.lock().insert(name, result);
    }

    /// Whether every check passes.
    pub fn is_healthy(&self) -> bool {
        self.lock().values().all(Result::is_ok)
    }

    /// `(healthy, body)`: `ok` when healthy, else one `name: reason` line per
    /// failing check, in name order.
    pub fn report(&self) -> (bool, String) {
        let checks = self.lock();
        let mut body = String::new();
        for (name, result) in checks.iter() {
            if let Err(reason) = result {
                // One line per check, whatever the reason says.
                let reason = reason.replace(['\r', '\n'], " ");
                body.push_str(&format!("{name}: {reason}\n"));
            }
        }
        if body.is_empty() {
            (true, "ok\n".to_owned())
        } else {
            (false, body)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Result<(), String>>> {
        // The map is consistent after any panic: each update is one insert.
        self.checks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The standard routes: `GET /metrics` (the registry in the Prometheus text
/// format) and `GET /healthz` (see [`Health`]). Merge further routes into it.
pub fn ops_router(registry: Arc<Registry>, health: Health) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], registry.render()) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let (healthy, body) = health.report();
                let status = if healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                async move { (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], body) }
            }),
        )
}

/// Binds `addr` (failing with an error that names it if it cannot), serves
/// `router` until `shutdown` is cancelled, then stops accepting and lets in-flight
/// requests finish, for at most [`DRAIN_TIMEOUT`]. Returns the bound address (so
/// that tests can bind port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> io::Result<(SocketAddr, JoinHandle<io::Result<()>>)> {
    serve_with_drain(addr, router, shutdown, DRAIN_TIMEOUT).await
}

/// As [`serve`], over TLS with `tls` (see [`crate::https`]).
#[cfg(feature = "https")]
pub async fn serve_https(
    addr: SocketAddr,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> io::Result<(SocketAddr, JoinHandle<io::Result<()>>)> {
    let listener = bind(addr, "HTTPS").await?;
    let local = listener.local_addr()?;
    tracing::info!("Serving HTTPS on {local}.");
    let listener = crate::https::TlsListener::new(listener, tls, shutdown.clone())?;
    Ok((
        local,
        spawn_server(listener, router, shutdown, DRAIN_TIMEOUT),
    ))
}

async fn bind(addr: SocketAddr, what: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen for {what} on {addr}: {e}")))
}

async fn serve_with_drain(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
    drain: Duration,
) -> io::Result<(SocketAddr, JoinHandle<io::Result<()>>)> {
    let listener = bind(addr, "HTTP").await?;
    let local = listener.local_addr()?;
    tracing::info!("Serving HTTP on {local}.");
    Ok((local, spawn_server(listener, router, shutdown, drain)))
}

fn spawn_server<L>(
    listener: L,
    router: Router,
    shutdown: CancellationToken,
    drain: Duration,
) -> JoinHandle<io::Result<()>>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        let server = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future();
        tokio::select! {
            result = server => result,
            () = async { shutdown.cancelled().await; tokio::time::sleep(drain).await } => {
                // Connections still open are left to end with the process.
                tracing::warn!(?drain, "HTTP requests still open after shutdown; not waiting for them.");
                Ok(())
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::Notify;

    const PATIENCE: Duration = Duration::from_secs(10);

    struct Response {
        status: u16,
        head: String,
        body: String,
    }

    /// A raw HTTP/1.1 GET, so that the tests need no HTTP client.
    async fn http_get(addr: SocketAddr, path: &str) -> Response {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        send_get(&mut stream, path).await;
        read_response(stream).await
    }

    async fn send_get(stream: &mut TcpStream, path: &str) {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
    }

    async fn read_response(mut stream: TcpStream) -> Response {
        let mut raw = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
            .await
            .expect("response within the timeout")
            .unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        Response {
            status,
            head: head.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }

    async fn start(router: Router) -> (SocketAddr, JoinHandle<io::Result<()>>, CancellationToken) {
        let shutdown = CancellationToken::new();
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), router, shutdown.clone())
            .await
            .unwrap();
        (addr, task, shutdown)
    }

    async fn stop(task: JoinHandle<io::Result<()>>, shutdown: CancellationToken) {
        shutdown.cancel();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn metrics_are_served_in_the_prometheus_text_format() {
        let mut registry = Registry::new();
        registry.register_counter("hb_test", "Test.").inc_by(7);
        let (addr, task, shutdown) = start(ops_router(Arc::new(registry), Health::new())).await;
        let r = http_get(addr, "/metrics").await;
        assert_eq!(r.status, 200);
        assert!(
            r.head.contains("content-type: text/plain; version=0.0.4"),
            "{}",
            r.head
        );
        assert_eq!(
            r.body,
            "# HELP hb_test_total Test.\n# TYPE hb_test_total counter\nhb_test_total 7\n"
        );
        stop(task, shutdown).await;
    }

    #[tokio::test]
    async fn healthz_is_200_ok_when_every_check_passes() {
        let health = Health::new();
        health.set("kafka", Ok(()));
        let (addr, task, shutdown) = start(ops_router(Arc::default(), health)).await;
        let r = http_get(addr, "/healthz").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
        assert!(r.head.contains("content-type: text/plain"), "{}", r.head);
        stop(task, shutdown).await;
    }

    #[tokio::test]
    async fn healthz_is_503_naming_the_failing_checks() {
        let health = Health::new();
        let (addr, task, shutdown) = start(ops_router(Arc::default(), health.clone())).await;
        health.set("mqtt", Ok(()));
        health.set("postgres", Err("connection refused\nretrying".into()));
        health.set("kafka", Err("broker down".into()));
        let r = http_get(addr, "/healthz").await;
        assert_eq!(r.status, 503);
        assert_eq!(
            r.body,
            "kafka: broker down\npostgres: connection refused retrying\n"
        );
        assert!(!health.is_healthy());
        health.set("kafka", Ok(()));
        health.set("postgres", Ok(()));
        assert!(health.is_healthy());
        assert_eq!(http_get(addr, "/healthz").await.status, 200);
        stop(task, shutdown).await;
    }

    #[tokio::test]
    async fn unknown_paths_are_404() {
        let (addr, task, shutdown) = start(ops_router(Arc::default(), Health::new())).await;
        assert_eq!(http_get(addr, "/nope").await.status, 404);
        stop(task, shutdown).await;
    }

    #[tokio::test]
    async fn cancelling_the_token_stops_the_server() {
        let (addr, task, shutdown) = start(ops_router(Arc::default(), Health::new())).await;
        assert_eq!(http_get(addr, "/healthz").await.status, 200);
        stop(task, shutdown).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the port no longer accepts connections"
        );
    }

    #[tokio::test]
    async fn a_request_in_flight_at_shutdown_completes() {
        let release = Arc::new(Notify::new());
        let entered = Arc::new(Notify::new());
        let router = Router::new().route(
            "/slow",
            get({
                let (release, entered) = (release.clone(), entered.clone());
                move || {
                    let (release, entered) = (release.clone(), entered.clone());
                    async move {
                        entered.notify_one();
                        release.notified().await;
                        "done"
                    }
                }
            }),
        );
        let (addr, task, shutdown) = start(router).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        send_get(&mut stream, "/slow").await;
        entered.notified().await;
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!task.is_finished(), "the server waits for the request");
        release.notify_one();
        let r = read_response(stream).await;
        assert_eq!((r.status, r.body.as_str()), (200, "done"));
        stop(task, shutdown).await;
    }

    #[tokio::test]
    async fn a_stalled_client_delays_shutdown_by_at_most_the_drain_timeout() {
        let shutdown = CancellationToken::new();
        let (addr, task) = serve_with_drain(
            "127.0.0.1:0".parse().unwrap(),
            ops_router(Arc::default(), Health::new()),
            shutdown.clone(),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // Half a request, never finished.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Despite the stalled client.
        stop(task, shutdown).await;
    }

    #[tokio::test]
    async fn binding_an_address_in_use_fails_naming_it() {
        let (addr, task, shutdown) = start(ops_router(Arc::default(), Health::new())).await;
        let err = serve(addr, Router::new(), CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        stop(task, shutdown).await;
    }
}
