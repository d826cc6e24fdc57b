//! The pages, scripts, styles and the vendored chart library (uPlot, MIT), all
//! embedded in the binary: the dashboard works offline and needs no Node.js.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

macro_rules! asset {
    ($path:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard/", $path))
    };
}

/// The login form; `{{message}}` is replaced by an error, if any.
pub const LOGIN_HTML: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard/login.html"));

/// `(path under /assets/, content type, bytes)`.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.css", "text/css; charset=utf-8", asset!("app.css")),
    ("favicon.svg", "image/svg+xml", asset!("favicon.svg")),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        asset!("common.js"),
    ),
    (
        "fleet.js",
        "text/javascript; charset=utf-8",
        asset!("fleet.js"),
    ),
    ("log.js", "text/javascript; charset=utf-8", asset!("log.js")),
    (
        "device.js",
        "text/javascript; charset=utf-8",
        asset!("device.js"),
    ),
    (
        "alerts.js",
        "text/javascript; charset=utf-8",
        asset!("alerts.js"),
    ),
    (
        "vendor/uplot/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        asset!("vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "vendor/uplot/uPlot.min.css",
        "text/css; charset=utf-8",
        asset!("vendor/uplot/uPlot.min.css"),
    ),
    (
        "vendor/uplot/LICENSE",
        "text/plain; charset=utf-8",
        asset!("vendor/uplot/LICENSE"),
    ),
];

/// `GET /assets/{path}`: public (the login form uses the styles), no secrets.
pub async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, content_type, bytes)) => (
            [(CONTENT_TYPE, *content_type), (CACHE_CONTROL, "no-cache")],
            *bytes,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn html(page: &'static [u8]) -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        page,
    )
        .into_response()
}

/// `GET /`: the fleet.
pub async fn fleet_page() -> Response {
    html(asset!("fleet.html"))
}

/// `GET /log`: the live log.
pub async fn log_page() -> Response {
    html(asset!("log.html"))
}

/// `GET /alerts`.
pub async fn alerts_page() -> Response {
    html(asset!("alerts.html"))
}

/// `GET /devices/{id}` (the script reads the id from the path).
pub async fn device_page() -> Response {
    html(asset!("device.html"))
}
