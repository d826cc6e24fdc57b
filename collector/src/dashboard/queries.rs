//! The dashboard's SQL, against the `dashboard_*` views (schema
//! `0005_dashboard.sql`). Times go to the browser as Unix milliseconds.

use serde_json::{json, Value};
use tokio_postgres::{GenericClient, Row};

/// Severity order for sorting: high first.
pub const SEVERITY_RANK: &str = "CASE severity WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END";

/// `column` (a timestamptz) as Unix milliseconds.
pub fn ms(column: &str) -> String {
    format!("(extract(epoch FROM {column}) * 1000)::int8")
}

/// Every device with its newest reading and its most severe open live alert:
/// one row per device from the registry, one index probe each into the open
/// alerts.
pub fn fleet_sql() -> String {
    format!(
        "SELECT d.device_id, d.last_bpm, d.last_status, {}, {}, a.id, a.kind, a.severity, \
                a.acknowledged, coalesce(a.open, 0)::int8 \
         FROM dashboard_devices d \
         LEFT JOIN LATERAL ( \
             SELECT id, kind, severity, acknowledged_at IS NOT NULL AS acknowledged, count(*) OVER () AS open \
             FROM dashboard_alerts x \
             WHERE x.device_id = d.device_id AND x.closed_at IS NULL AND NOT x.retrospective \
             ORDER BY {SEVERITY_RANK}, opened_at LIMIT 1) a ON true",
        ms("d.last_ts"),
        ms("d.last_seen"),
    )
}

/// Each device's last five minutes in 10-second averages: one index range scan
/// per device.
pub const SPARKLINES_SQL: &str = "SELECT d.device_id, s.b, s.bpm \
     FROM dashboard_devices d, LATERAL ( \
         SELECT (floor(extract(epoch FROM r.ts) / 10) * 10000)::int8 AS b, avg(r.bpm)::float8 AS bpm \
         FROM dashboard_readings r \
         WHERE r.device_id = d.device_id AND r.ts > now() - interval '5 minutes' AND r.bpm > 0 \
         GROUP BY 1) s \
     ORDER BY 1, 2";

/// A device's readings between two times, bucketed: min, average and max BPM
/// per bucket (readings without a heart rate left out) and how many readings.
pub const TREND_SQL: &str = "SELECT (floor(extract(epoch FROM ts) * 1000 / $4::int8) * $4::int8)::int8 AS t, \
            min(bpm), avg(bpm)::float8, max(bpm), count(*) \
     FROM dashboard_readings \
     WHERE device_id = $1 AND ts >= to_timestamp($2::int8 / 1000.0) AND ts < to_timestamp($3::int8 / 1000.0) \
       AND bpm > 0 \
     GROUP BY 1 ORDER BY 1";

/// The alert columns every alert list returns.
pub fn alert_columns() -> String {
    format!(
        "id, device_id, kind, severity, retrospective, {}, {}, {}, peak_bpm, last_bpm, readings, \
         signal_lost, acknowledged_by, {}",
        ms("onset_at"),
        ms("opened_at"),
        ms("closed_at"),
        ms("acknowledged_at"),
    )
}

/// One row of [`alert_columns`] as JSON.
pub fn alert_json(r: &Row) -> Value {
    json!({
        "id": r.get::<_, i64>(0),
        "device_id": r.get::<_, String>(1),
        "kind": r.get::<_, String>(2),
        "severity": r.get::<_, String>(3),
        "retrospective": r.get::<_, bool>(4),
        "onset_ms": r.get::<_, i64>(5),
        "opened_ms": r.get::<_, i64>(6),
        "closed_ms": r.get::<_, Option<i64>>(7),
        "peak_bpm": r.get::<_, Option<i32>>(8),
        "last_bpm": r.get::<_, Option<i32>>(9),
        "readings": r.get::<_, i32>(10),
        "signal_lost": r.get::<_, bool>(11),
        "acknowledged_by": r.get::<_, Option<String>>(12),
        "acknowledged_ms": r.get::<_, Option<i64>>(13),
    })
}

/// Alerts by state (`open`, `closed`, `all`) and optional kind, severity and
/// device: open ones first, the most severe first, then the newest.
pub async fn alerts(
    db: &impl GenericClient,
    state: &str,
    kind: Option<&str>,
    severity: Option<&str>,
    device: Option<&str>,
    limit: i64,
) -> Result<Vec<Value>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {} FROM dashboard_alerts \
         WHERE ($1 = 'all' OR ($1 = 'open') = (closed_at IS NULL)) \
           AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR severity = $3) \
           AND ($4::text IS NULL OR device_id = $4) \
         ORDER BY closed_at IS NULL DESC, {SEVERITY_RANK}, opened_at DESC, id DESC LIMIT $5",
        alert_columns()
    );
    Ok(db
        .query(&sql, &[&state, &kind, &severity, &device, &limit])
        .await?
        .iter()
        .map(alert_json)
        .collect())
}

/// The newest alert transitions (optionally of one device), newest first.
pub async fn transitions(
    db: &impl GenericClient,
    device: Option<&str>,
    limit: i64,
) -> Result<Vec<Value>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT alert_id, device_id, kind, retrospective, transition, ordinal, severity, {}, value_bpm, {} \
         FROM dashboard_alert_transitions WHERE ($1::text IS NULL OR device_id = $1) \
         ORDER BY recorded_at DESC LIMIT $2",
        ms("at"),
        ms("recorded_at")
    );
    Ok(db
        .query(&sql, &[&device, &limit])
        .await?
        .iter()
        .map(|r| {
            json!({
                "alert_id": r.get::<_, i64>(0),
                "device_id": r.get::<_, String>(1),
                "kind": r.get::<_, String>(2),
                "retrospective": r.get::<_, bool>(3),
                "transition": r.get::<_, String>(4),
                "ordinal": r.get::<_, i32>(5),
                "severity": r.get::<_, String>(6),
                "at_ms": r.get::<_, i64>(7),
                "value_bpm": r.get::<_, Option<i32>>(8),
                "recorded_ms": r.get::<_, i64>(9),
            })
        })
        .collect())
}

/// A device's newest readings, newest first, as the live log shows them.
pub async fn newest_readings(
    db: &impl GenericClient,
    device: &str,
    limit: i64,
) -> Result<Vec<Value>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT device_id, {}, bpm, status, backfill, epoch, seq, {} FROM dashboard_readings \
         WHERE device_id = $1 ORDER BY ts DESC LIMIT $2",
        ms("ts"),
        ms("received_at")
    );
    Ok(db
        .query(&sql, &[&device, &limit])
        .await?
        .iter()
        .map(|r| {
            json!([
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, i32>(2),
                r.get::<_, String>(3),
                r.get::<_, bool>(4),
                r.get::<_, i64>(5),
                r.get::<_, i64>(6),
            ])
        })
        .collect())
}
