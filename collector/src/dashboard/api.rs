//! The JSON API. Bad parameters get a 400 and unknown devices or alerts a 404,
//! each with `{"error": "one-line reason"}`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use hb_shared::DeviceId;
use serde_json::{json, Value};

use super::auth::Operator;
use super::queries::{self, alert_columns, alert_json, ms};
use super::State as Shared;

/// Most points a trend may ask for.
pub const MAX_POINTS: u32 = 5000;
/// Points a trend gets when it does not say.
pub const DEFAULT_POINTS: u32 = 600;
/// Longest trend window: 31 days.
pub const MAX_RANGE_MS: i64 = 31 * 86_400_000;

/// An API error: its status and a one-line reason.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(reason: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, reason.into())
    }
    fn not_found(reason: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, reason.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        tracing::warn!(error = %e, "A dashboard query failed.");
        Self(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database did not answer the query".into(),
        )
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        tracing::warn!(error = %e, "No dashboard database connection.");
        Self(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is not reachable".into(),
        )
    }
}

type ApiResult = Result<Json<Value>, ApiError>;
type Params = Query<HashMap<String, String>>;

fn device_param(id: &str) -> Result<String, ApiError> {
    DeviceId::new(id)
        .map(|d| d.as_str().to_owned())
        .map_err(|e| ApiError::bad(format!("device {id:?}: {e}")))
}

fn int_param<T: std::str::FromStr>(
    params: &HashMap<String, String>,
    name: &str,
    default: T,
    valid: impl Fn(&T) -> bool,
    expected: &str,
) -> Result<T, ApiError> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<T>()
            .ok()
            .filter(|n| valid(n))
            .ok_or_else(|| ApiError::bad(format!("{name}={v:?}: expected {expected}"))),
    }
}

/// The optional `device` and `limit` (1-1000, default 200) of a list.
fn device_and_limit(params: &HashMap<String, String>) -> Result<(Option<String>, i64), ApiError> {
    let device = match params.get("device").map(String::as_str) {
        None | Some("") => None,
        Some(d) => Some(device_param(d)?),
    };
    let limit = int_param(
        params,
        "limit",
        200i64,
        |n| (1..=1000).contains(n),
        "1 to 1000",
    )?;
    Ok((device, limit))
}

fn one_of<'a>(
    params: &'a HashMap<String, String>,
    name: &str,
    allowed: &[&str],
) -> Result<Option<&'a str>, ApiError> {
    match params.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(v) if allowed.contains(&v) => Ok(Some(v)),
        Some(v) => Err(ApiError::bad(format!(
            "{name}={v:?}: expected one of {}",
            allowed.join(", ")
        ))),
    }
}

/// `GET /api/devices`: every device, the ones with open alerts first (the most
/// severe first), then by id.
pub async fn devices(State(state): State<Shared>) -> ApiResult {
    let db = state.reads.get().await?;
    let rows = db.query(&queries::fleet_sql(), &[]).await?;
    let now = hb_runtime::clock::now_ms();
    let offline_after = i64::from(state.rules.offline_after_ms);
    let mut devices: Vec<(u8, String, Value)> = rows
        .iter()
        .map(|r| {
            let id: String = r.get(0);
            let seen: i64 = r.get(4);
            let severity: Option<String> = r.get(7);
            let rank = match severity.as_deref() {
                Some("high") => 0,
                Some("medium") => 1,
                Some(_) => 2,
                None => 3,
            };
            let alert = r.get::<_, Option<i64>>(5).map(|id| {
                json!({"id": id, "kind": r.get::<_, String>(6), "severity": severity,
                       "acknowledged": r.get::<_, bool>(8)})
            });
            let value = json!({
                "id": id,
                "bpm": r.get::<_, i32>(1),
                "status": r.get::<_, String>(2),
                "ts_ms": r.get::<_, i64>(3),
                "seen_ms": seen,
                "online": now - seen <= offline_after,
                "alert": alert,
                "open_alerts": r.get::<_, i64>(9),
            });
            (rank, id, value)
        })
        .collect();
    devices.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok(Json(json!({
        "now_ms": now,
        "offline_after_ms": offline_after,
        "devices": devices.into_iter().map(|d| d.2).collect::<Vec<_>>(),
    })))
}

/// `GET /api/sparklines`: each device's last five minutes in 10-second averages.
pub async fn sparklines(State(state): State<Shared>) -> ApiResult {
    let db = state.reads.get().await?;
    let mut devices: serde_json::Map<String, Value> = serde_json::Map::new();
    for r in db.query(queries::SPARKLINES_SQL, &[]).await? {
        let id: String = r.get(0);
        let point = json!([r.get::<_, i64>(1), r.get::<_, f64>(2)]);
        match devices.get_mut(&id) {
            Some(Value::Array(points)) => points.push(point),
            _ => {
                devices.insert(id, json!([point]));
            }
        }
    }
    Ok(Json(
        json!({ "bucket_ms": 10_000, "window_ms": 300_000, "devices": devices }),
    ))
}

/// `GET /api/devices/{id}`: the device, its thresholds, what its agent reports,
/// its alert history and its recent RR intervals.
pub async fn device(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let id = device_param(&id)?;
    let db = state.reads.get().await?;
    let row = db
        .query_opt(
            &format!(
                "SELECT {}, {}, {}, last_epoch, last_seq, last_bpm, last_status, clock_skew_ms, \
                        bradycardia_below_bpm, tachycardia_above_bpm, agent_status::text, {} \
                 FROM dashboard_devices WHERE device_id = $1",
                ms("first_seen"),
                ms("last_seen"),
                ms("last_ts"),
                ms("agent_status_at")
            ),
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no device {id:?}")))?;
    let rules = &state.rules;
    let brady = row
        .get::<_, Option<i32>>(8)
        .unwrap_or(i32::from(rules.thresholds.bradycardia_below_bpm));
    let tachy = row
        .get::<_, Option<i32>>(9)
        .unwrap_or(i32::from(rules.thresholds.tachycardia_above_bpm));
    let agent: Option<Value> = row
        .get::<_, Option<String>>(10)
        .and_then(|s| serde_json::from_str(&s).ok());
    let alerts = queries::alerts(&**db, "all", None, None, Some(&id), 50).await?;
    let rr: Vec<Value> = db
        .query(
            &format!(
                "SELECT {}, rr_1024 FROM dashboard_readings \
                 WHERE device_id = $1 AND ts > now() - interval '10 minutes' AND cardinality(rr_1024) > 0 \
                 ORDER BY ts DESC LIMIT 120",
                ms("ts")
            ),
            &[&id],
        )
        .await?
        .iter()
        .rev()
        .map(|r| json!([r.get::<_, i64>(0), r.get::<_, Vec<i32>>(1)]))
        .collect();
    let seen: i64 = row.get(1);
    Ok(Json(json!({
        "id": id,
        "first_seen_ms": row.get::<_, i64>(0),
        "seen_ms": seen,
        "ts_ms": row.get::<_, i64>(2),
        "epoch": row.get::<_, i64>(3),
        "seq": row.get::<_, i64>(4),
        "bpm": row.get::<_, i32>(5),
        "status": row.get::<_, String>(6),
        "online": hb_runtime::clock::now_ms() - seen <= i64::from(rules.offline_after_ms),
        "clock_skew_ms": row.get::<_, Option<i64>>(7),
        "thresholds": {
            "bradycardia_below_bpm": brady,
            "tachycardia_above_bpm": tachy,
            "bradycardia_clear_bpm": brady + i32::from(rules.bradycardia_clear_margin_bpm),
            "tachycardia_clear_bpm": tachy - i32::from(rules.tachycardia_clear_margin_bpm),
        },
        "agent": agent,
        "agent_ms": row.get::<_, Option<i64>>(11),
        "alerts": alerts,
        "rr": rr,
    })))
}

/// `GET /api/devices/{id}/readings?from=&to=&max_points=`: the trend between
/// `from` and `to` (Unix ms; default the last hour), in at most `max_points`
/// buckets of min/avg/max BPM, with the alert episodes it overlaps.
pub async fn readings(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult {
    let id = device_param(&id)?;
    let now = hb_runtime::clock::now_ms();
    let to = int_param(&params, "to", now, |t| *t > 0, "Unix milliseconds")?;
    let from = int_param(
        &params,
        "from",
        to - 3_600_000,
        |t| *t >= 0,
        "Unix milliseconds",
    )?;
    if from >= to {
        return Err(ApiError::bad(format!("from={from} must be before to={to}")));
    }
    if to - from > MAX_RANGE_MS {
        return Err(ApiError::bad("from..to may span at most 31 days"));
    }
    let max_points = int_param(
        &params,
        "max_points",
        DEFAULT_POINTS,
        |n| (1..=MAX_POINTS).contains(n),
        "1 to 5000",
    )?;
    let bucket_ms = ((to - from) + i64::from(max_points) - 1) / i64::from(max_points);
    let bucket_ms = bucket_ms.max(1000);
    let db = state.reads.get().await?;
    if db
        .query_opt(
            "SELECT 1 FROM dashboard_devices WHERE device_id = $1",
            &[&id],
        )
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!("no device {id:?}")));
    }
    let points: Vec<Value> = db
        .query(queries::TREND_SQL, &[&id, &from, &to, &bucket_ms])
        .await?
        .iter()
        .map(|r| {
            json!([
                r.get::<_, i64>(0),
                r.get::<_, i32>(1),
                (r.get::<_, f64>(2) * 10.0).round() / 10.0,
                r.get::<_, i32>(3),
                r.get::<_, i64>(4),
            ])
        })
        .collect();
    let sql = format!(
        "SELECT {} FROM dashboard_alerts WHERE device_id = $1 \
         AND onset_at < to_timestamp($3::int8 / 1000.0) \
         AND (closed_at IS NULL OR closed_at >= to_timestamp($2::int8 / 1000.0)) \
         ORDER BY onset_at LIMIT 500",
        alert_columns()
    );
    let episodes: Vec<Value> = db
        .query(&sql, &[&id, &from, &to])
        .await?
        .iter()
        .map(alert_json)
        .collect();
    Ok(Json(json!({
        "from_ms": from,
        "to_ms": to,
        "bucket_ms": bucket_ms,
        "points": points,
        "alerts": episodes,
    })))
}

const KINDS: [&str; 4] = [
    "bradycardia",
    "tachycardia",
    "signal_loss",
    "device_offline",
];
const SEVERITIES: [&str; 3] = ["none", "medium", "high"];

/// `GET /api/alerts?state=open|closed|all&kind=&severity=&device=&limit=`.
pub async fn alerts(State(state): State<Shared>, Query(params): Params) -> ApiResult {
    let which = one_of(&params, "state", &["open", "closed", "all"])?.unwrap_or("open");
    let kind = one_of(&params, "kind", &KINDS)?;
    let severity = one_of(&params, "severity", &SEVERITIES)?;
    let (device, limit) = device_and_limit(&params)?;
    let db = state.reads.get().await?;
    let alerts = queries::alerts(&**db, which, kind, severity, device.as_deref(), limit).await?;
    Ok(Json(json!({ "alerts": alerts })))
}

/// `POST /api/alerts/{id}/ack`: records who acknowledged the alert, and when
/// (the first acknowledgement stands). Needs a named token.
pub async fn acknowledge(
    State(state): State<Shared>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Some(name) = op.0 else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "the dashboard is read-only: start hb-collector with --dashboard-token NAME=TOKEN to acknowledge".into(),
        ));
    };
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad(format!("alert id {id:?} is not a number")))?;
    let mut writer = state.writer_client.lock().await;
    if writer.as_ref().is_none_or(|c| c.is_closed()) {
        let client = state
            .writer
            .open_as(crate::database::WRITER_ROLE)
            .await
            .map_err(ApiError::from)?;
        *writer = Some(client);
    }
    let db = writer.as_ref().expect("connected above");
    db.execute(
        "WITH u AS ( \
             UPDATE alerts SET acknowledged_by = $2, acknowledged_at = now(), updated_at = now() \
             WHERE id = $1 AND acknowledged_at IS NULL \
             RETURNING id, device_id, acknowledged_by, acknowledged_at) \
         SELECT pg_notify($3, json_build_object('ack', json_build_object('id', id, 'device_id', device_id, \
             'acknowledged_by', acknowledged_by, \
             'acknowledged_ms', (extract(epoch FROM acknowledged_at) * 1000)::int8))::text) FROM u",
        &[&id, &name, &crate::live::CHANNEL],
    )
    .await?;
    let row = db
        .query_opt(
            &format!("SELECT {} FROM alerts WHERE id = $1", alert_columns()),
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no alert {id}")))?;
    Ok(Json(alert_json(&row)))
}

/// `GET /api/log?device=&limit=`: what the live log starts with: the newest
/// alert transitions, and the device's newest readings when one is asked for.
pub async fn log(State(state): State<Shared>, Query(params): Params) -> ApiResult {
    let (device, limit) = device_and_limit(&params)?;
    let db = state.reads.get().await?;
    let transitions = queries::transitions(&**db, device.as_deref(), limit).await?;
    let readings = match &device {
        Some(d) => queries::newest_readings(&**db, d, limit).await?,
        None => Vec::new(),
    };
    Ok(Json(
        json!({ "transitions": transitions, "readings": readings }),
    ))
}

/// `GET /api/stats`: devices online and offline, open alerts by severity,
/// readings stored in the last full minute, and the status distribution of the
/// readings stored in the last 15 minutes.
pub async fn stats(State(state): State<Shared>) -> ApiResult {
    let db = state.reads.get().await?;
    let offline_after_s = f64::from(state.rules.offline_after_ms) / 1000.0;
    let devices = db
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE last_seen >= now() - make_interval(secs => $1)) \
             FROM dashboard_devices",
            &[&offline_after_s],
        )
        .await?;
    let (total, online): (i64, i64) = (devices.get(0), devices.get(1));
    let mut open = serde_json::Map::new();
    let mut open_total = 0;
    for r in db
        .query(
            "SELECT severity, count(*) FROM dashboard_alerts \
             WHERE closed_at IS NULL AND NOT retrospective GROUP BY severity",
            &[],
        )
        .await?
    {
        let n: i64 = r.get(1);
        open_total += n;
        open.insert(r.get(0), json!(n));
    }
    let mut statuses = serde_json::Map::new();
    let mut last_minute = 0;
    for r in db
        .query(
            "SELECT status, sum(readings)::int8, \
                    sum(readings) FILTER (WHERE minute = date_trunc('minute', now()) - interval '1 minute')::int8 \
             FROM dashboard_reading_counts \
             WHERE minute >= date_trunc('minute', now()) - interval '15 minutes' GROUP BY status",
            &[],
        )
        .await?
    {
        statuses.insert(r.get(0), json!(r.get::<_, i64>(1)));
        last_minute += r.get::<_, Option<i64>>(2).unwrap_or(0);
    }
    Ok(Json(json!({
        "devices": total,
        "online": online,
        "offline": total - online,
        "open_alerts": open_total,
        "open_alerts_by_severity": open,
        "readings_last_minute": last_minute,
        "readings_per_s": last_minute as f64 / 60.0,
        "statuses_15m": statuses,
    })))
}
