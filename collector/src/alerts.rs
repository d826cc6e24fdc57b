//! Alert evaluation inside a batch's transaction. The readings the batch stored
//! (never the ones it found stored already) run through each device's state
//! machine ([`hb_shared::DeviceAlerts`]), resumed from the device's row; the new
//! state, the alerts, their transitions and an outbox entry per transition are
//! written before the COMMIT. So a reading changes alerts exactly once, and a
//! restart or a partition moving to another collector goes on from PostgreSQL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hb_runtime::clock::{from_unix_ms, unix_ms};
use hb_runtime::retry::sleep_unless_cancelled;
use hb_shared::{
    AlertKind, AlertRules, Contact, DeviceAlerts, Observation, Status, Thresholds, Transition,
    TransitionKind,
};
use tokio::sync::Notify;
use tokio_postgres::{GenericClient, Row};
use tokio_util::sync::CancellationToken;

use crate::consumer::KafkaConsumer;
use crate::metrics::CollectorMetrics;
use crate::records::ReadingRow;
use crate::store::Store;

/// Columns of `devices` a batch reads to evaluate alerts, in [`DeviceAlertRow::from_row`]
/// order.
pub const DEVICE_ALERT_COLUMNS: &str = "device_id, alert_state::text, bradycardia_below_bpm, \
     tachycardia_above_bpm, alert_onset_delay_s, alert_clear_delay_s";

/// A device's stored alert state and its overrides of the default rules.
#[derive(Debug, Clone, Default)]
pub struct DeviceAlertRow {
    /// Device id.
    pub device_id: String,
    /// The state machine's JSON; `None` before the device's first evaluated reading.
    pub state: Option<String>,
    bradycardia_below_bpm: Option<i32>,
    tachycardia_above_bpm: Option<i32>,
    onset_delay_s: Option<i32>,
    clear_delay_s: Option<i32>,
}

impl DeviceAlertRow {
    /// From a row selected as [`DEVICE_ALERT_COLUMNS`].
    pub fn from_row(row: &Row) -> Self {
        Self {
            device_id: row.get(0),
            state: row.get(1),
            bradycardia_below_bpm: row.get(2),
            tachycardia_above_bpm: row.get(3),
            onset_delay_s: row.get(4),
            clear_delay_s: row.get(5),
        }
    }

    /// The default rules with this device's overrides.
    pub fn rules(&self, defaults: &AlertRules) -> AlertRules {
        let bpm = |v: Option<i32>, d: u16| v.and_then(|v| u16::try_from(v).ok()).unwrap_or(d);
        let ms = |v: Option<i32>, d: u32| {
            v.and_then(|v| u32::try_from(v).ok())
                .map_or(d, |s| s.saturating_mul(1000))
        };
        let t = defaults.thresholds;
        AlertRules {
            thresholds: Thresholds {
                bradycardia_below_bpm: bpm(self.bradycardia_below_bpm, t.bradycardia_below_bpm),
                tachycardia_above_bpm: bpm(self.tachycardia_above_bpm, t.tachycardia_above_bpm),
            },
            onset_delay_ms: ms(self.onset_delay_s, defaults.onset_delay_ms),
            clear_delay_ms: ms(self.clear_delay_s, defaults.clear_delay_ms),
            ..*defaults
        }
    }

    /// The stored state machine; a state this build cannot read starts afresh
    /// (logged), rather than blocking the device's readings.
    fn machine(&self) -> DeviceAlerts {
        match self.state.as_deref().map(serde_json::from_str) {
            None => DeviceAlerts::default(),
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!(device = %self.device_id, error = %e, "Unreadable alert state; starting afresh.");
                DeviceAlerts::default()
            }
        }
    }
}

/// What evaluating a batch produced: each device's new state, and transitions.
#[derive(Debug, Default)]
pub struct Evaluated {
    /// `(device, state JSON)` for every device evaluated.
    pub states: Vec<(String, String)>,
    /// `(device, transition)`, in the order they happened.
    pub transitions: Vec<(String, Transition)>,
}

/// The state machine's view of a stored reading, under the device's thresholds.
pub fn observation(r: &ReadingRow, thresholds: &Thresholds) -> Observation {
    let bpm = u16::try_from(r.bpm).unwrap_or(0);
    let status = if r.status == Status::NoSignal.as_str() {
        Status::NoSignal
    } else {
        thresholds.classify(bpm, Contact::Detected, &[])
    };
    Observation {
        epoch: u32::try_from(r.epoch).unwrap_or(u32::MAX),
        seq: u32::try_from(r.seq).unwrap_or(u32::MAX),
        ts_ms: unix_ms(r.ts_corrected),
        received_ms: unix_ms(r.received_at),
        bpm,
        status,
        backfill: r.backfill,
    }
}

/// Runs `readings` (stored by this batch, in batch order) through their devices'
/// state machines, resumed from `devices`.
pub fn evaluate(
    defaults: &AlertRules,
    devices: Vec<DeviceAlertRow>,
    readings: &[ReadingRow],
) -> Evaluated {
    let mut by_device: HashMap<&str, (AlertRules, DeviceAlerts)> = HashMap::new();
    let mut rows: HashMap<String, DeviceAlertRow> = devices
        .into_iter()
        .map(|d| (d.device_id.clone(), d))
        .collect();
    let mut out = Evaluated::default();
    for r in readings {
        let (rules, machine) = by_device.entry(r.device_id.as_str()).or_insert_with(|| {
            let row = rows.remove(&r.device_id).unwrap_or_default();
            (row.rules(defaults), row.machine())
        });
        let o = observation(r, &rules.thresholds);
        for t in machine.observe(rules, &o) {
            out.transitions.push((r.device_id.clone(), t));
        }
    }
    let mut states: Vec<(String, String)> = by_device
        .into_iter()
        .map(|(d, (_, m))| {
            let json = serde_json::to_string(&m).expect("the alert state serialises");
            (d.to_owned(), json)
        })
        .collect();
    states.sort_unstable();
    out.states = states;
    out
}

/// The alert's identity: `{device}/{kind}/{epoch}/{seq}`, `/r` when retrospective.
pub fn alert_key(device: &str, t: &Transition) -> String {
    let lane = if t.retrospective { "/r" } else { "" };
    format!(
        "{device}/{}/{}/{}{lane}",
        t.kind.as_str(),
        t.origin.epoch,
        t.origin.seq
    )
}

/// The Kafka `hb.alerts.v1` document of a transition.
pub fn payload(device: &str, t: &Transition) -> serde_json::Value {
    let key = alert_key(device, t);
    serde_json::json!({
        "version": 1,
        "transition_id": format!("{key}#{}", t.ordinal),
        "alert_id": key,
        "device_id": device,
        "kind": t.kind.as_str(),
        "transition": t.transition.as_str(),
        "ordinal": t.ordinal,
        "severity": t.severity.as_str(),
        "retrospective": t.retrospective,
        "onset_ms": t.origin.ts_ms,
        "at_ms": t.at_ms,
        "value_bpm": t.value_bpm,
        "peak_bpm": t.peak_bpm,
        "readings": t.readings,
        "signal_lost": t.signal_lost,
    })
}

/// Writes one transition: the alert (opened, or updated), the transition and its
/// outbox entry. A transition already written (same key) writes nothing.
pub async fn write_transition(
    db: &impl GenericClient,
    device: &str,
    t: &Transition,
) -> Result<u64, tokio_postgres::Error> {
    let key = alert_key(device, t);
    let closed = (t.transition == TransitionKind::Close).then(|| from_unix_ms(t.at_ms));
    let (peak, value) = (t.peak_bpm.map(i32::from), t.value_bpm.map(i32::from));
    let readings = i32::try_from(t.readings).unwrap_or(i32::MAX);
    let payload = payload(device, t).to_string();
    if t.kind == AlertKind::SignalLoss
        && matches!(t.transition, TransitionKind::Open | TransitionKind::Close)
    {
        // The device's open physiological alerts are marked while the signal is
        // lost (the state machine keeps them open and their clear run waiting).
        db.execute(
            "UPDATE alerts SET signal_lost = $3, updated_at = now() \
             WHERE device_id = $1 AND retrospective = $2 AND closed_at IS NULL \
               AND kind IN ('bradycardia', 'tachycardia')",
            &[
                &device,
                &t.retrospective,
                &(t.transition == TransitionKind::Open),
            ],
        )
        .await?;
    }
    db.execute(
        "WITH a AS ( \
             INSERT INTO alerts AS x (alert_key, device_id, kind, severity, retrospective, origin_epoch, \
                 origin_seq, onset_at, opened_at, closed_at, peak_bpm, last_bpm, readings, signal_lost) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (alert_key) DO UPDATE SET severity = excluded.severity, \
                 closed_at = coalesce(excluded.closed_at, x.closed_at), peak_bpm = excluded.peak_bpm, \
                 last_bpm = coalesce(excluded.last_bpm, x.last_bpm), readings = excluded.readings, \
                 signal_lost = excluded.signal_lost, updated_at = now() \
             RETURNING id), \
         t AS ( \
             INSERT INTO alert_transitions (transition_key, alert_id, transition, ordinal, severity, at, \
                 value_bpm, peak_bpm, readings, signal_lost) \
             SELECT $15, a.id, $16, $17, $4, $9, $12, $11, $13, $14 FROM a \
             ON CONFLICT (transition_key) DO NOTHING RETURNING id), \
         o AS (INSERT INTO alert_outbox (device_id, payload) SELECT $2, $18::text::jsonb FROM t RETURNING id) \
         SELECT pg_notify($19, json_build_object('transition', $18::text::json)::text) FROM o",
        &[
            &key,
            &device,
            &t.kind.as_str(),
            &t.severity.as_str(),
            &t.retrospective,
            &i64::from(t.origin.epoch),
            &i64::from(t.origin.seq),
            &from_unix_ms(t.origin.ts_ms),
            &from_unix_ms(t.at_ms),
            &closed,
            &peak,
            &value,
            &readings,
            &t.signal_lost,
            &format!("{key}#{}", t.ordinal),
            &t.transition.as_str(),
            &(t.ordinal as i32),
            &payload,
            &crate::live::CHANNEL,
        ],
    )
    .await
}

/// Stores the devices' new states.
pub async fn write_states(
    db: &impl GenericClient,
    states: &[(String, String)],
) -> Result<(), tokio_postgres::Error> {
    if states.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = states.iter().map(|(d, _)| d.as_str()).collect();
    let json: Vec<&str> = states.iter().map(|(_, s)| s.as_str()).collect();
    db.execute(
        "UPDATE devices AS d SET alert_state = u.s::jsonb \
         FROM unnest($1::text[], $2::text[]) AS u(id, s) WHERE d.device_id = u.id",
        &[&ids, &json],
    )
    .await?;
    Ok(())
}

/// Opens `device_offline` for devices of Kafka `partitions` silent for the
/// offline delay at `now_ms` (receive time), at most `limit` per call, skipping
/// devices another transaction holds (a batch storing their readings). Returns
/// the transitions.
pub async fn sweep_offline(
    client: &mut tokio_postgres::Client,
    defaults: &AlertRules,
    now_ms: i64,
    partitions: &[i32],
    limit: i64,
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let silent_s = f64::from(defaults.offline_after_ms) / 1000.0;
    let rows = tx
        .query(
            &format!(
                "SELECT {DEVICE_ALERT_COLUMNS} FROM devices \
                 WHERE last_seen < now() - make_interval(secs => $1) AND alert_state IS NOT NULL \
                   AND coalesce(alert_state -> 'offline', 'null'::jsonb) = 'null'::jsonb \
                   AND kafka_partition = ANY($3) \
                 ORDER BY device_id LIMIT $2 FOR UPDATE SKIP LOCKED"
            ),
            &[&silent_s, &limit, &partitions],
        )
        .await?;
    let mut states = Vec::new();
    let mut written = 0;
    for row in rows {
        let d = DeviceAlertRow::from_row(&row);
        let mut machine = d.machine();
        if let Some(t) = machine.silence(&d.rules(defaults), now_ms) {
            written += write_transition(&tx, &d.device_id, &t).await?;
            states.push((
                d.device_id.clone(),
                serde_json::to_string(&machine).expect("the alert state serialises"),
            ));
        }
    }
    write_states(&tx, &states).await?;
    tx.commit().await?;
    Ok(written)
}

/// A device's Last Will (of the agent's `epoch`) said it went offline at receive
/// time `at_ms`: opens `device_offline` now (unless a newer reading or a newer
/// epoch came, or it is open already).
/// Returns the transitions written (0 or 1).
pub async fn apply_last_will(
    client: &mut tokio_postgres::Client,
    device: &str,
    epoch: u32,
    at_ms: i64,
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            &format!("SELECT {DEVICE_ALERT_COLUMNS} FROM devices WHERE device_id = $1 FOR UPDATE"),
            &[&device],
        )
        .await?;
    let mut written = 0;
    if let Some(row) = row {
        let d = DeviceAlertRow::from_row(&row);
        let mut machine = d.machine();
        if let Some(t) = machine.went_offline(epoch, at_ms) {
            written = write_transition(&tx, device, &t).await?;
            let state = serde_json::to_string(&machine).expect("the alert state serialises");
            write_states(&tx, &[(device.to_owned(), state)]).await?;
        }
    }
    tx.commit().await?;
    Ok(written)
}

/// Opens `device_offline` for silent devices every quarter of the offline delay
/// (1–15 s), until `shutdown`; wakes the outbox when it wrote transitions.
/// Only the devices of partitions this collector owns, and only once it has been
/// caught up with a partition (at most `max_lag` records behind) for the whole
/// offline delay: a collector that is behind has not seen the devices' latest
/// readings yet, and would page a whole fleet as offline after a restart or a
/// slow rebalance.
pub async fn sweep_offline_devices(
    database: crate::database::Database,
    rules: AlertRules,
    consumer: Arc<KafkaConsumer>,
    max_lag: i64,
    wake: Arc<Notify>,
    metrics: Arc<CollectorMetrics>,
    shutdown: CancellationToken,
) {
    let period = Duration::from_millis(u64::from((rules.offline_after_ms / 4).clamp(1000, 15_000)));
    let offline_after = Duration::from_millis(u64::from(rules.offline_after_ms));
    let mut store: Option<Store> = None;
    // Since when each owned partition has been caught up.
    let mut caught_up: HashMap<i32, tokio::time::Instant> = HashMap::new();
    loop {
        if sleep_unless_cancelled(period, &shutdown).await {
            return;
        }
        if store.is_none() {
            match Store::connect(&database).await {
                Ok(s) => store = Some(s),
                Err(e) => {
                    tracing::debug!(error = %e, "Offline sweep cannot connect; retrying.");
                    continue;
                }
            }
        }
        let Some(lags) = crate::consumer::partition_lags(&consumer).await else {
            caught_up.clear();
            continue;
        };
        let now = tokio::time::Instant::now();
        caught_up.retain(|p, _| lags.iter().any(|(q, lag)| q == p && *lag <= max_lag));
        for (p, lag) in &lags {
            if *lag <= max_lag {
                caught_up.entry(*p).or_insert(now);
            }
        }
        let partitions: Vec<i32> = caught_up
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= offline_after)
            .map(|(p, _)| *p)
            .collect();
        if partitions.is_empty() {
            continue;
        }
        let now_ms = hb_runtime::clock::now_ms();
        let client = store.as_mut().expect("connected").client_mut();
        match sweep_offline(client, &rules, now_ms, &partitions, 1000).await {
            Ok(0) => {}
            Ok(n) => {
                metrics.alert_transitions.inc_by(n);
                wake.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %e, "Offline sweep failed; retrying.");
                if store.as_ref().is_some_and(Store::is_closed) {
                    store = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hb_shared::{AlertKind, Severity};

    fn row(device: &str, seq: i64, bpm: i32, status: &'static str) -> ReadingRow {
        ReadingRow {
            bpm,
            status,
            ..crate::records::sample_row(device, 1, seq)
        }
    }

    #[test]
    fn a_batch_resumes_each_device_from_its_stored_state() {
        let rules = AlertRules::default();
        let first: Vec<_> = (0..5).map(|s| row("a", s, 45, "bradycardia")).collect();
        let e1 = evaluate(&rules, vec![], &first);
        assert!(e1.transitions.is_empty());
        let stored = DeviceAlertRow {
            device_id: "a".into(),
            state: Some(e1.states[0].1.clone()),
            ..Default::default()
        };
        let second: Vec<_> = (5..11).map(|s| row("a", s, 45, "bradycardia")).collect();
        let e2 = evaluate(&rules, vec![stored], &second);
        assert_eq!(e2.transitions.len(), 1);
        let (device, t) = &e2.transitions[0];
        assert_eq!(
            (device.as_str(), t.kind, t.origin.seq),
            ("a", AlertKind::Bradycardia, 0)
        );
        assert_eq!(alert_key("a", t), "a/bradycardia/1/0");
        assert_eq!(payload("a", t)["transition_id"], "a/bradycardia/1/0#0");
    }

    #[test]
    fn a_devices_own_thresholds_and_delays_apply() {
        let device = DeviceAlertRow {
            device_id: "a".into(),
            bradycardia_below_bpm: Some(60),
            onset_delay_s: Some(2),
            ..Default::default()
        };
        // 55 BPM is normal for the fleet, bradycardia for this device.
        let batch: Vec<_> = (0..3).map(|s| row("a", s, 55, "normal")).collect();
        let e = evaluate(&AlertRules::default(), vec![device], &batch);
        assert_eq!(e.transitions.len(), 1);
        assert_eq!(e.transitions[0].1.severity, Severity::Medium);
        assert_eq!(e.transitions[0].1.at_ms, 1_764_000_002_000);
    }

    #[test]
    fn no_signal_stays_no_signal_whatever_the_thresholds() {
        let t = Thresholds {
            bradycardia_below_bpm: 60,
            tachycardia_above_bpm: 100,
        };
        assert_eq!(
            observation(&row("a", 0, 0, "no_signal"), &t).status,
            Status::NoSignal
        );
        assert_eq!(
            observation(&row("a", 0, 55, "normal"), &t).status,
            Status::Bradycardia
        );
    }

    #[test]
    fn an_unreadable_state_starts_afresh() {
        let device = DeviceAlertRow {
            device_id: "a".into(),
            state: Some("{not json".into()),
            ..Default::default()
        };
        let e = evaluate(
            &AlertRules::default(),
            vec![device],
            &[row("a", 0, 70, "normal")],
        );
        assert_eq!(e.states.len(), 1);
    }
}
