//! Live updates: one PostgreSQL connection per collector LISTENs on
//! [`crate::live::CHANNEL`] and relays each notification to every browser on
//! `/api/stream` (Server-Sent Events). Every event's data is one JSON object
//! with one key: `readings`, `transition`, `ack`, or `resync` (the browser may
//! have missed updates: it loads its page's data again). Every stream starts
//! with `resync` (what was stored before it opened, or while the browser
//! reconnected), and gets one after a reconnect of the listener or when it read
//! too slowly.
//!
//! Bounded: the relay is a broadcast channel of [`BUFFERED_NOTIFICATIONS`]; a
//! browser that falls further behind skips ahead and gets `resync`, and never
//! slows the listener or other browsers. At most `max_streams` browsers at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use backon::{BackoffBuilder, ExponentialBackoff};
use futures::StreamExt;
use hb_runtime::retry;
use tokio::sync::{broadcast, Semaphore};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::State as Shared;

/// Notifications held for browsers that read slowly.
pub const BUFFERED_NOTIFICATIONS: usize = 4096;

const RESYNC: &str = r#"{"resync":true}"#;

/// The relay.
pub struct Live {
    tx: broadcast::Sender<Arc<str>>,
    streams: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Live {
    /// Starts listening (and reconnecting, until `shutdown`).
    pub fn start(
        pg: tokio_postgres::Config,
        tls: tokio_postgres_rustls::MakeRustlsConnect,
        max_streams: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, _) = broadcast::channel(BUFFERED_NOTIFICATIONS);
        tokio::spawn(listen(pg, tls, tx.clone(), shutdown.clone()));
        Self {
            tx,
            streams: Arc::new(Semaphore::new(max_streams)),
            shutdown,
        }
    }
}

async fn listen(
    pg: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    tx: broadcast::Sender<Arc<str>>,
    shutdown: CancellationToken,
) {
    let mut delays = reconnect_delays();
    let mut warned = false;
    // A half-open connection would leave every dashboard silently stale.
    let mut pg = pg;
    pg.keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    while !shutdown.is_cancelled() {
        match pg.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let relay = tx.clone();
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let driver = tokio::spawn(async move {
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                // No receivers is not an error: nobody is watching.
                                let _ = relay.send(Arc::from(n.payload()));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "The dashboard's notification connection ended.");
                                break;
                            }
                        }
                    }
                });
                match client
                    .batch_execute(&format!("LISTEN {}", crate::live::CHANNEL))
                    .await
                {
                    Ok(()) => {
                        if warned {
                            tracing::info!("The dashboard receives live updates again.");
                        }
                        (delays, warned) = (reconnect_delays(), false);
                        // Whatever was committed while nobody listened.
                        let _ = tx.send(Arc::from(RESYNC));
                        tokio::select! {
                            _ = driver => {}
                            () = shutdown.cancelled() => return,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "The dashboard cannot LISTEN for live updates.");
                        driver.abort();
                    }
                }
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "The dashboard cannot connect for live updates; retrying.");
                    warned = true;
                }
            }
        }
        let delay = delays.next().unwrap_or(RECONNECT_MAX);
        if retry::sleep_unless_cancelled(delay, &shutdown).await {
            return;
        }
    }
}

/// The longest pause between tries to connect and LISTEN.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Pauses between tries to connect and LISTEN: 200 ms doubling up to 5 s,
/// from the start again once listening.
fn reconnect_delays() -> ExponentialBackoff {
    retry::doubling(Duration::from_millis(200), RECONNECT_MAX).build()
}

/// `GET /api/stream`.
pub async fn sse(State(state): State<Shared>) -> Response {
    let Ok(permit) = Arc::clone(&state.live.streams).try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"error": "too many live streams open"})),
        )
            .into_response();
    };
    let rx = state.live.tx.subscribe();
    let shutdown = state.live.shutdown.clone();
    let events = futures::stream::unfold(
        (rx, permit, shutdown, true),
        |(mut rx, permit, shutdown, first)| async move {
            let data: Arc<str> = if first {
                Arc::from(RESYNC)
            } else {
                tokio::select! {
                r = rx.recv() => match r {
                    Ok(payload) => payload,
                    Err(broadcast::error::RecvError::Lagged(_)) => Arc::from(RESYNC),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                    () = shutdown.cancelled() => return None,
                }
            };
            Some((
                Ok::<_, Infallible>(Event::default().data(&*data)),
                (rx, permit, shutdown, false),
            ))
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
