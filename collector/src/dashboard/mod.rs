//! The monitoring station in the browser, served next to `/metrics` and
//! `/healthz`: the fleet, a live log, each device's trend and the alerts, with a
//! JSON API under `/api/`.
//!
//! Any collector shows the whole fleet: pages and API read PostgreSQL (as the
//! role `hb_reader`, which may only read the `dashboard_*` views), and live
//! updates come from PostgreSQL notifications that every batch's transaction
//! sends on commit ([`crate::live`]), relayed to browsers as Server-Sent Events.
//!
//! - [`config`]: flags → [`DashboardConfig`].
//! - `auth`: tokens, the login form and its cookie.
//! - `api`: the JSON endpoints.
//! - `queries`: their SQL, against the views.
//! - `stream`: the notification listener and `/api/stream`.
//! - `assets`: the pages, scripts and the vendored chart library, embedded.

mod api;
mod assets;
mod auth;
pub mod config;
mod queries;
mod stream;

use std::sync::Arc;

use axum::middleware;
use axum::routing::{get, post};
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod};
use hb_runtime::http::Router;
use hb_shared::AlertRules;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub use config::{DashboardArgs, DashboardConfig};

use crate::database::Database;
use crate::{Error, Result};

/// Concurrent reads of the dashboard's database connections.
const READ_CONNECTIONS: usize = 4;

/// The longest a request waits for a read connection, or for one to be made.
const POOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Browsers that may hold `/api/stream` open at once.
const MAX_STREAMS: usize = 64;

/// What the handlers share.
struct Dashboard {
    /// Read-only connections (role `hb_reader`).
    reads: Pool,
    /// Where acknowledgements are written (the collector's own database and
    /// role `hb_writer`), connected when the first one comes.
    writer: Database,
    writer_client: Mutex<Option<tokio_postgres::Client>>,
    tokens: auth::Tokens,
    /// Whether the login cookie is marked `Secure` (served over HTTPS).
    secure_cookie: bool,
    /// Default thresholds and delays (a device's row may override them).
    rules: AlertRules,
    live: stream::Live,
}

type State = Arc<Dashboard>;

/// The dashboard's routes, and its notification listener (which runs until
/// `shutdown`).
pub fn router(
    config: &DashboardConfig,
    writer: &Database,
    rules: AlertRules,
    shutdown: CancellationToken,
) -> Result<Router> {
    let pg = config.database.config().clone();
    let manager = Manager::from_config(
        pg.clone(),
        config.database.tls(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let reads = Pool::builder(manager)
        .max_size(READ_CONNECTIONS)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .post_create(Hook::async_fn(|client, _| {
            Box::pin(async move {
                client
                    .batch_execute(
                        "SET ROLE hb_reader; SET default_transaction_read_only = on; \
                         SET statement_timeout = '10s'",
                    )
                    .await
                    .map_err(HookError::Backend)
            })
        }))
        .build()
        .map_err(Error::DashboardPool)?;
    let live = stream::Live::start(pg, config.database.tls(), MAX_STREAMS, shutdown);
    let state = Arc::new(Dashboard {
        reads,
        writer: writer.clone(),
        writer_client: Mutex::new(None),
        tokens: auth::Tokens::new(config.tokens.clone()),
        secure_cookie: config.https,
        rules,
        live,
    });
    let protected = Router::new()
        .route("/", get(assets::fleet_page))
        .route("/log", get(assets::log_page))
        .route("/alerts", get(assets::alerts_page))
        .route("/devices/{id}", get(assets::device_page))
        .route("/api/devices", get(api::devices))
        .route("/api/sparklines", get(api::sparklines))
        .route("/api/devices/{id}", get(api::device))
        .route("/api/devices/{id}/readings", get(api::readings))
        .route("/api/alerts", get(api::alerts))
        .route("/api/alerts/{id}/ack", post(api::acknowledge))
        .route("/api/log", get(api::log))
        .route("/api/stats", get(api::stats))
        .route("/api/stream", get(stream::sse))
        .route("/api/whoami", get(auth::whoami))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::require,
        ));
    Ok(Router::new()
        .merge(protected)
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/assets/{*path}", get(assets::asset))
        .with_state(state))
}
