//! One device: number its readings, pre-flag them, spool them, and keep each until
//! the broker acknowledged it. The transitions of its alert episodes go out on the
//! events topic ahead of any backlog; a retained status tells who is online.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hb_runtime::retry::sleep_unless_cancelled;
use hb_shared::{
    AlertRules, DeviceAlerts, DeviceEvent, DeviceId, DeviceTopicKind, HeartRateMeasurement,
    Observation, Presence, Reading, POSTCARD_MAX_SIZE,
};
use rand::Rng;
use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::confirm::ConfirmMode;
use crate::outbox::{Confirmation, Outbox, OutboxStats, CLIENT_INFLIGHT, REQUEST_CHANNEL};
use crate::simulator::EpisodeLog;
use crate::source::Source;
use crate::spool::{Spool, SpoolStats};
use crate::{connection, device_lock, epoch, Config, Error, Result};

/// What one device did, for the agent's summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeviceReport {
    /// Readings taken in this run.
    pub taken: u64,
    /// Delivery counters.
    pub outbox: OutboxStats,
    /// Spool counters (recovered, corrupt tails, dropped).
    pub spool: SpoolStats,
}

/// The spool directory of `device`.
pub fn spool_dir(config: &Config, device: &DeviceId) -> PathBuf {
    config
        .state_dir
        .join("devices")
        .join(device.as_str())
        .join("spool")
}

/// Runs one device until its source ends or `--count` readings were taken and all
/// are acknowledged, or until `shutdown` (then waits up to the shutdown deadline;
/// whatever is still unacknowledged stays in the spool for the next start).
pub async fn run(
    device: DeviceId,
    mut source: Source,
    config: Arc<Config>,
    shutdown: CancellationToken,
    episodes: Option<EpisodeLog>,
) -> Result<DeviceReport> {
    let (_lock, epoch, spool, tls) = {
        let state_dir = config.state_dir.clone();
        let dir = spool_dir(&config, &device);
        let spool_config = config.spool.clone();
        let tls = config.mqtt_tls.clone();
        let d = device.clone();
        tokio::task::spawn_blocking(move || {
            // The device's client certificate first (read from disk when each
            // device has its own): a device without one touches no state.
            let tls = tls
                .map(|t| t.for_device(d.as_str()))
                .transpose()
                .map_err(Error::Config)?;
            let lock = device_lock::lock(&state_dir, &d)?;
            let spool = Spool::open(&dir, spool_config)?;
            let epoch = epoch::next_epoch(&state_dir, &d, spool.max_epoch())?;
            Ok::<_, Error>((lock, epoch, spool, tls))
        })
        .await
        .map_err(|source| Error::TaskFailed {
            task: "device start-up task",
            source,
        })??
    };
    let recovered = spool.stats();
    if recovered.recovered > 0 || recovered.corrupt_tails > 0 {
        tracing::info!(%device, recovered = recovered.recovered, corrupt_tails = recovered.corrupt_tails,
            corrupt_bytes = recovered.corrupt_bytes, "Recovered spooled readings.");
    }
    let stagger = config.connect_stagger.as_millis() as u64;
    if stagger > 0 {
        let jitter = rand::rng().random_range(0..stagger);
        if sleep_unless_cancelled(Duration::from_millis(jitter), &shutdown).await {
            return Ok(DeviceReport {
                spool: recovered,
                ..Default::default()
            });
        }
    }

    let topics = &config.topics;
    let status_topic = topics.device(&device, DeviceTopicKind::Status);
    let events_topic = topics.device(&device, DeviceTopicKind::Events);
    let (client, mut eventloop) = AsyncClient::new(
        options(&config, &device, epoch, &status_topic, tls),
        REQUEST_CHANNEL,
    );
    // rumqttc reserves room for 100 events per connection; a device needs a few.
    eventloop.state.events = std::collections::VecDeque::new();
    // And 8 KiB read plus 8 KiB write buffer; a device's packets are ~100 bytes
    // (the buffers grow for backlog envelopes). Patched option: vendor/README.md.
    let mut network = eventloop.network_options();
    network.set_initial_buffer_size(256);
    eventloop.set_network_options(network);
    let confirmation = (config.confirm == ConfirmMode::Stored).then(|| {
        Confirmation::new(
            topics.device(&device, DeviceTopicKind::Stored),
            config.confirm_timeout,
        )
    });
    let outbox = Arc::new(Mutex::new(Outbox::new(
        device.clone(),
        epoch,
        topics.device(&device, DeviceTopicKind::Readings),
        status_topic,
        client.clone(),
        spool,
        confirmation,
    )));
    let progress = Arc::new(Notify::new());
    let mut conn = tokio::spawn(connection::drive(
        eventloop,
        Arc::clone(&outbox),
        Arc::clone(&progress),
        config.mqtt.to_string(),
    ));
    {
        // Recovered readings may be waiting: offer them as soon as we connect.
        outbox.lock().expect("outbox lock").pump();
    }
    tracing::info!(%device, epoch, "Device started.");

    let started = Instant::now();
    let mut seq: u32 = 0;
    let mut alerts = DeviceAlerts::default();
    let mut status_timer = tokio::time::interval(config.status_interval);
    status_timer.tick().await;
    loop {
        if config.count.is_some_and(|k| seq >= k) {
            break;
        }
        // A disk that cannot keep up slows the source, not memory.
        tokio::select! {
            _ = config.spool.writer.room() => {}
            _ = shutdown.cancelled() => break,
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = &mut conn => return connection_ended(r),
            _ = status_timer.tick() => {
                let mut o = outbox.lock().expect("outbox lock");
                o.queue_status(Presence::Online);
                o.pump();
            }
            m = source.next() => {
                let Some(m) = m else {
                    source.log_end(&device);
                    break;
                };
                if let Some(log) = &episodes {
                    let finished = source.take_finished_episodes();
                    if !finished.is_empty() {
                        log.write(&device, &finished);
                    }
                }
                let reading = take_reading(&config, epoch, seq, started, m);
                let mut o = outbox.lock().expect("outbox lock");
                for event in alert_events(&device, &reading, &config.alert_rules, &mut alerts) {
                    tracing::info!(%device, seq, kind = event.kind.as_str(), transition = event.transition.as_str(),
                        severity = event.severity.as_str(), "Local alert changed.");
                    match event.encode() {
                        Ok(payload) => o.push_priority(events_topic.clone(), payload, false),
                        Err(e) => tracing::warn!(%device, error = %e, "Cannot encode event."),
                    }
                }
                match o.spool().append(&reading) {
                    Ok(true) => {}
                    Ok(false) => {
                        let dropped = o.spool().stats().dropped;
                        if dropped.is_power_of_two() {
                            tracing::warn!(%device, dropped, "Spool full; dropping new readings.");
                        }
                    }
                    Err(e) => tracing::error!(%device, seq, error = %e, "Cannot store a reading; it is lost."),
                }
                o.pump();
                drop(o);
                seq = seq.checked_add(1).ok_or_else(|| Error::EpochExhausted(device.to_string()))?;
            }
        }
    }

    // Wait for every reading to be acknowledged (and, end to end, confirmed stored):
    // indefinitely in --count mode, up to the shutdown deadline once shutdown was
    // requested. The periodic pump lets overdue readings be resent meanwhile.
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(config.shutdown_timeout).await;
    };
    tokio::pin!(deadline);
    loop {
        if outbox.lock().expect("outbox lock").is_empty() {
            break;
        }
        tokio::select! {
            _ = progress.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                outbox.lock().expect("outbox lock").pump();
            }
            _ = &mut deadline => {
                tracing::warn!(%device, "Shutdown deadline passed; unacknowledged readings stay in the spool.");
                break;
            }
            r = &mut conn => return connection_ended(r),
        }
    }
    let (outbox_stats, spool_stats) = {
        let mut o = outbox.lock().expect("outbox lock");
        // A clean disconnect suppresses the Last Will: say goodbye ourselves.
        let status = o.status(Presence::Offline).to_json();
        let topic = config.topics.device(&device, DeviceTopicKind::Status);
        let _ = client.try_publish(topic, QoS::AtMostOnce, true, status);
        (o.stats(), o.spool().stats())
    };
    let _ = client.try_disconnect();
    if tokio::time::timeout(Duration::from_secs(5), &mut conn)
        .await
        .is_err()
    {
        conn.abort();
    }
    tracing::info!(%device, epoch, readings = seq, acked = outbox_stats.acked, dropped = spool_stats.dropped, "Device stopped.");
    Ok(DeviceReport {
        taken: u64::from(seq),
        outbox: outbox_stats,
        spool: spool_stats,
    })
}

fn take_reading(
    config: &Config,
    epoch: u32,
    seq: u32,
    started: Instant,
    m: HeartRateMeasurement,
) -> Reading {
    Reading {
        epoch,
        seq,
        ts_ms: hb_runtime::clock::now_ms(),
        mono_ms: started.elapsed().as_millis() as u64,
        clock_synced: crate::clock::is_synchronized(),
        local_flag: Some(config.thresholds.classify(m.bpm, m.contact, &m.rr_1024)),
        bpm: m.bpm,
        contact: m.contact,
        rr_1024: m.rr_1024,
        energy_kj: m.energy_kj,
        backfill: false,
    }
}

/// The events of the transitions `reading` causes in the device's alert episodes
/// (the same state machine and rules as the collector's).
fn alert_events(
    device: &DeviceId,
    reading: &Reading,
    rules: &AlertRules,
    alerts: &mut DeviceAlerts,
) -> Vec<DeviceEvent> {
    let Some(status) = reading.local_flag else {
        return Vec::new();
    };
    let o = Observation {
        epoch: reading.epoch,
        seq: reading.seq,
        ts_ms: reading.ts_ms,
        received_ms: reading.ts_ms,
        bpm: reading.bpm,
        status,
        backfill: false,
    };
    alerts
        .observe(rules, &o)
        .iter()
        .map(|t| DeviceEvent::of(device, reading.epoch, reading.seq, t))
        .collect()
}

fn connection_ended(r: Result<Result<()>, tokio::task::JoinError>) -> Result<DeviceReport> {
    match r {
        Ok(Ok(())) => Ok(DeviceReport::default()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(Error::ConnectMqtt {
            address: String::new(),
            reason: format!("connection task failed: {e}"),
        }),
    }
}

fn options(
    config: &Config,
    device: &DeviceId,
    epoch: u32,
    status_topic: &str,
    tls: Option<rumqttc::TlsConfiguration>,
) -> MqttOptions {
    let mut o = MqttOptions::new(
        config.client_id(device),
        config.mqtt.host.clone(),
        config.mqtt.port,
    );
    let will = hb_shared::DeviceStatus::offline(epoch);
    o.set_keep_alive(config.keep_alive)
        .set_clean_session(true)
        .set_inflight(CLIENT_INFLIGHT)
        .set_max_packet_size(64 * 1024, POSTCARD_MAX_SIZE + 1024)
        .set_last_will(LastWill::new(
            status_topic,
            will.to_json(),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some((user, password)) = &config.mqtt_credentials {
        o.set_credentials(user.replace("{device}", device.as_str()), password.clone());
    }
    if let Some(tls) = tls {
        o.set_transport(rumqttc::Transport::Tls(tls));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use hb_shared::Contact;

    fn reading(seq: u32, bpm: u16) -> Reading {
        let ts_ms = 1_764_000_000_000 + i64::from(seq) * 1000;
        let mut r = Reading::new(1, seq, ts_ms, bpm, Contact::Detected);
        r.local_flag = Some(hb_shared::Thresholds::default().classify(bpm, Contact::Detected, &[]));
        r
    }

    #[test]
    fn episodes_not_single_readings_become_events() {
        let d = DeviceId::new("d").unwrap();
        let rules = AlertRules::default();
        let mut alerts = DeviceAlerts::default();
        let mut events = Vec::new();
        // A one-second spike is no event; 10 s of tachycardia is an onset.
        let spike = [(0, 70), (1, 130), (2, 70)].into_iter();
        for (seq, bpm) in spike.chain((3..14).map(|s| (s, 125))) {
            events.extend(alert_events(&d, &reading(seq, bpm), &rules, &mut alerts));
        }
        assert_eq!(events.len(), 1);
        let onset = &events[0];
        assert!(onset.is_onset());
        assert_eq!(
            (onset.kind, onset.origin_seq, onset.seq, onset.bpm),
            (hb_shared::AlertKind::Tachycardia, 3, 13, 125)
        );
        // Clears after 30 s back in the clear band.
        for seq in 14..45 {
            events.extend(alert_events(&d, &reading(seq, 80), &rules, &mut alerts));
        }
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].transition, hb_shared::TransitionKind::Close);
        assert_eq!((events[1].origin_seq, events[1].ordinal), (3, 1));
    }
}
