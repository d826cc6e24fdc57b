//! One strap's connection: connect, subscribe to Heart Rate Measurement
//! notifications, forward every parsed measurement on the strap's channel, and
//! reconnect with exponential backoff and full jitter when the strap drops.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use backon::BackoffBuilder;
use btleplug::api::{Central, Peripheral as _};
use btleplug::platform::{Adapter, Peripheral, PeripheralId};
use futures::StreamExt;
use hb_runtime::log_limit::LogLimit;
use hb_runtime::retry::sleep_unless_cancelled;
use hb_shared::{parse_heart_rate_measurement, DeviceId, HeartRateMeasurement};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::gatt::{ble, HEART_RATE_MEASUREMENT_UUID, HEART_RATE_SERVICE_UUID};
use crate::{Error, Result};

/// How long one connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long GATT service discovery may take.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a connected strap is asked whether it is still connected, in case a
/// disconnect event was missed (BlueZ's notification stream does not end on a drop).
const LIVENESS_CHECK: Duration = Duration::from_secs(5);
/// How long a shutdown waits for a strap's disconnect.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Warnings a strap can flood us with (malformed frames, drops), per kind.
static LOG_LIMIT: LazyLock<LogLimit> = LazyLock::new(LogLimit::per_minute);

/// What a strap's task knows about its strap.
pub(super) struct StrapLink {
    pub(super) adapter: Adapter,
    pub(super) id: PeripheralId,
    pub(super) device: DeviceId,
    pub(super) address: String,
    /// Signalled on the adapter's disconnect events for this strap.
    pub(super) disconnected: Arc<Notify>,
}

/// Per-strap counters, logged as they change and when the strap is released.
#[derive(Debug, Default)]
struct Counters {
    received: u64,
    malformed: u64,
    dropped: u64,
}

/// How one connection of a strap ended.
enum Ended {
    /// The strap dropped (disconnect event or failed liveness check).
    Dropped {
        /// Measurements received during this connection.
        received: u64,
    },
    /// The agent dropped the measurement channel.
    ReceiverGone,
}

/// Keeps one strap connected until `stop` or until its receiver is dropped,
/// reconnecting with exponential backoff and full jitter.
pub(super) async fn run_strap(
    link: StrapLink,
    tx: mpsc::Sender<HeartRateMeasurement>,
    stop: CancellationToken,
) {
    let new_backoff = || hb_runtime::retry::backoff(RECONNECT_MIN, RECONNECT_MAX, None).build();
    let mut backoff = new_backoff();
    let mut counters = Counters::default();
    let device = &link.device;
    loop {
        let outcome = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            outcome = session(&link, &tx, &mut counters) => outcome,
        };
        match outcome {
            Ok(Ended::ReceiverGone) => {
                tracing::info!(%device, "Measurement receiver dropped; strap released.");
                break;
            }
            Ok(Ended::Dropped { received }) => {
                if received > 0 {
                    backoff = new_backoff();
                }
                tracing::info!(%device, received, "Strap disconnected; reconnecting.");
            }
            Err(e) => tracing::warn!(%device, error = %e, "Strap connection failed; retrying."),
        }
        if tx.is_closed() {
            tracing::info!(%device, "Measurement receiver dropped; strap released.");
            break;
        }
        let delay = backoff.next().unwrap_or(RECONNECT_MAX);
        tracing::debug!(%device, ?delay, "Reconnect scheduled.");
        if sleep_unless_cancelled(delay, &stop).await {
            break;
        }
    }
    if let Ok(peripheral) = link.adapter.peripheral(&link.id).await {
        match tokio::time::timeout(DISCONNECT_TIMEOUT, peripheral.disconnect()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(%device, error = %e, "Strap not disconnected."),
            Err(_) => tracing::debug!(%device, "Strap disconnect timed out."),
        }
    }
    tracing::info!(
        %device,
        received = counters.received,
        malformed = counters.malformed,
        dropped = counters.dropped,
        "Strap stopped."
    );
}

/// One connection: connect, discover, subscribe, forward notifications until the
/// strap drops or the receiver is gone.
async fn session(
    link: &StrapLink,
    tx: &mpsc::Sender<HeartRateMeasurement>,
    counters: &mut Counters,
) -> Result<Ended> {
    let device = &link.device;
    let peripheral = link
        .adapter
        .peripheral(&link.id)
        .await
        .map_err(ble("strap not known to the adapter"))?;
    if !peripheral
        .is_connected()
        .await
        .map_err(ble("connection state unknown"))?
    {
        peripheral
            .connect_with_timeout(CONNECT_TIMEOUT)
            .await
            .map_err(ble("cannot connect"))?;
    }
    peripheral
        .discover_services_with_timeout(DISCOVER_TIMEOUT)
        .await
        .map_err(ble("cannot discover services"))?;
    let characteristic = peripheral
        .characteristics()
        .into_iter()
        .find(|c| {
            c.uuid == HEART_RATE_MEASUREMENT_UUID && c.service_uuid == HEART_RATE_SERVICE_UUID
        })
        .ok_or_else(|| {
            Error::Ble("the strap has no Heart Rate Measurement characteristic".into())
        })?;
    // The stream first, so that no notification after subscribing is missed.
    let mut notifications = peripheral
        .notifications()
        .await
        .map_err(ble("cannot receive notifications"))?;
    peripheral
        .subscribe(&characteristic)
        .await
        .map_err(ble("cannot subscribe to Heart Rate Measurement"))?;
    tracing::info!(%device, address = %link.address, "Strap connected; receiving measurements.");

    let mut liveness = tokio::time::interval(LIVENESS_CHECK);
    liveness.set_missed_tick_behavior(MissedTickBehavior::Delay);
    liveness.tick().await;
    let mut received = 0u64;
    loop {
        tokio::select! {
            notification = notifications.next() => {
                let Some(notification) = notification else {
                    return Ok(Ended::Dropped { received });
                };
                if notification.uuid != HEART_RATE_MEASUREMENT_UUID {
                    continue;
                }
                match parse_heart_rate_measurement(&notification.value) {
                    Ok(measurement) => {
                        received += 1;
                        counters.received += 1;
                        match tx.try_send(measurement) {
                            Ok(()) => {}
                            Err(TrySendError::Full(_)) => {
                                counters.dropped += 1;
                                if let Some(suppressed) = LOG_LIMIT.check("dropped") {
                                    tracing::warn!(
                                        %device,
                                        dropped = counters.dropped,
                                        suppressed,
                                        "Measurement channel full; measurement dropped."
                                    );
                                }
                            }
                            Err(TrySendError::Closed(_)) => return Ok(Ended::ReceiverGone),
                        }
                    }
                    Err(e) => {
                        counters.malformed += 1;
                        if let Some(suppressed) = LOG_LIMIT.check("malformed") {
                            tracing::warn!(
                                %device,
                                error = %e,
                                frame = ?notification.value,
                                malformed = counters.malformed,
                                suppressed,
                                "Malformed Heart Rate Measurement frame."
                            );
                        }
                    }
                }
            }
            _ = link.disconnected.notified() => {
                // A stale signal from before this connection is harmless: ask.
                if !still_connected(&peripheral).await {
                    return Ok(Ended::Dropped { received });
                }
            }
            _ = liveness.tick() => {
                if tx.is_closed() {
                    return Ok(Ended::ReceiverGone);
                }
                if !still_connected(&peripheral).await {
                    return Ok(Ended::Dropped { received });
                }
            }
        }
    }
}

/// Whether the strap is connected; a strap the stack cannot answer for is not.
async fn still_connected(peripheral: &Peripheral) -> bool {
    peripheral.is_connected().await.unwrap_or(false)
}
