//! One device: number its readings, pre-flag them, and keep them in its outbox
//! until the broker acknowledged them.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hb_shared::{DeviceId, DeviceTopicKind, Reading, POSTCARD_MAX_SIZE};
use rand::Rng;
use rumqttc::{AsyncClient, MqttOptions};
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outbox, OutboxStats, CLIENT_INFLIGHT, REQUEST_CHANNEL};
use crate::simulator::{SimConfig, SimulatedStrap};
use crate::{connection, epoch, Config, Error, Result};

/// Runs device number `index` until it has sent its `--count` readings and all are
/// acknowledged, or until `shutdown` (then waits up to the shutdown deadline).
pub async fn run(
    index: u32,
    device: DeviceId,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> Result<OutboxStats> {
    let epoch = {
        let dir = config.state_dir.clone();
        let d = device.clone();
        tokio::task::spawn_blocking(move || epoch::next_epoch(&dir, &d))
            .await
            .map_err(|e| Error::Config(format!("epoch task failed: {e}")))??
    };
    let stagger = config.connect_stagger.as_millis() as u64;
    if stagger > 0 {
        let jitter = rand::rng().random_range(0..stagger);
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(jitter)) => {}
            _ = shutdown.cancelled() => return Ok(OutboxStats::default()),
        }
    }

    let (client, eventloop) = AsyncClient::new(options(&config, &device), REQUEST_CHANNEL);
    let topic = config.topics.device(&device, DeviceTopicKind::Readings);
    let outbox = Arc::new(Mutex::new(Outbox::new(
        device.clone(),
        topic,
        client.clone(),
        config.buffer_capacity,
    )));
    let progress = Arc::new(Notify::new());
    let mut conn = tokio::spawn(connection::drive(
        eventloop,
        Arc::clone(&outbox),
        Arc::clone(&progress),
        config.mqtt.to_string(),
    ));
    tracing::info!(%device, epoch, "Device started.");

    let sim = SimConfig {
        seed: config.seed,
        period_ms: u64::try_from(config.period.as_millis()).unwrap_or(u64::MAX),
        ..SimConfig::default()
    };
    let mut strap = SimulatedStrap::new(&sim, u64::from(index));
    let mut ticker = tokio::time::interval(config.period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut seq: u32 = 0;
    loop {
        if config.count.is_some_and(|k| seq >= k) {
            break;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = &mut conn => return connection_ended(r),
            _ = ticker.tick() => {
                let ts_ms = now_ms();
                let s = strap.next_sample(ts_ms);
                let reading = Reading {
                    epoch,
                    seq,
                    ts_ms,
                    mono_ms: started.elapsed().as_millis() as u64,
                    clock_synced: true,
                    bpm: s.bpm,
                    contact: s.contact,
                    local_flag: Some(config.thresholds.classify(s.bpm, s.contact, &s.rr_1024)),
                    rr_1024: s.rr_1024,
                    energy_kj: s.energy_kj,
                    backfill: false,
                };
                let mut o = outbox.lock().expect("outbox lock");
                o.push(reading);
                o.pump();
                drop(o);
                seq = seq.checked_add(1).ok_or_else(|| Error::EpochExhausted(device.to_string()))?;
            }
        }
    }

    // Wait for every reading to be acknowledged: indefinitely in --count mode,
    // up to the shutdown deadline once shutdown was requested.
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
            _ = &mut deadline => {
                tracing::warn!(%device, "Shutdown deadline passed with unacknowledged readings.");
                break;
            }
            r = &mut conn => return connection_ended(r),
        }
    }
    let stats = outbox.lock().expect("outbox lock").stats();
    let _ = client.try_disconnect();
    if tokio::time::timeout(std::time::Duration::from_secs(5), &mut conn)
        .await
        .is_err()
    {
        conn.abort();
    }
    tracing::info!(%device, epoch, readings = seq, acked = stats.acked, dropped = stats.dropped, "Device stopped.");
    Ok(stats)
}

fn connection_ended(r: Result<Result<()>, tokio::task::JoinError>) -> Result<OutboxStats> {
    match r {
        Ok(Ok(())) => Ok(OutboxStats::default()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(Error::ConnectMqtt {
            address: String::new(),
            reason: format!("connection task failed: {e}"),
        }),
    }
}

fn options(config: &Config, device: &DeviceId) -> MqttOptions {
    let mut o = MqttOptions::new(
        config.client_id(device),
        config.mqtt.host.clone(),
        config.mqtt.port,
    );
    o.set_keep_alive(config.keep_alive)
        .set_clean_session(true)
        .set_inflight(CLIENT_INFLIGHT)
        .set_max_packet_size(64 * 1024, POSTCARD_MAX_SIZE + 1024);
    if let Some((user, password)) = &config.mqtt_credentials {
        o.set_credentials(user.replace("{device}", device.as_str()), password.clone());
    }
    o
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
