//! Real heart-rate straps over Bluetooth LE (feature `ble`): scan for peripherals
//! advertising the Heart Rate Service (0x180D), connect, subscribe to Heart Rate
//! Measurement (0x2A37) notifications and hand every parsed measurement to the
//! agent on a per-strap channel.
//!
//! Each strap is one device, named after its address (`ble-AABBCCDDEEFF`). When a
//! strap drops, its task reconnects with exponential backoff and full jitter and
//! keeps the same device id and the same channel, so the agent's `(device, epoch,
//! seq)` numbering simply continues. A malformed frame is logged and counted, never
//! fatal.
//!
//! On Linux btleplug talks to BlueZ over D-Bus: building needs `libdbus-1-dev` and
//! `pkg-config`, running needs `bluetoothd` and permission to use it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use backon::BackoffBuilder;
use btleplug::api::bleuuid::uuid_from_u16;
use btleplug::api::{BDAddr, Central, CentralEvent, Manager as _, Peripheral as _, ScanFilter};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures::StreamExt;
use hb_runtime::log_limit::LogLimit;
use hb_shared::ble::{HEART_RATE_MEASUREMENT, HEART_RATE_SERVICE};
use hb_shared::{parse_heart_rate_measurement, DeviceId, HeartRateMeasurement};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Error, Result};

/// Capacity of each strap's measurement channel: about a minute of 1 Hz
/// notifications, so a briefly busy consumer loses nothing.
pub const MEASUREMENT_CHANNEL: usize = 64;

/// Prefix of every BLE device id, so that real straps never collide with the
/// simulator's or configured device names.
pub const DEVICE_ID_PREFIX: &str = "ble-";

const HEART_RATE_SERVICE_UUID: Uuid = uuid_from_u16(HEART_RATE_SERVICE);
const HEART_RATE_MEASUREMENT_UUID: Uuid = uuid_from_u16(HEART_RATE_MEASUREMENT);

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

/// Where and what to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BleConfig {
    /// Which Bluetooth adapter (0: the first BlueZ reports, usually `hci0`).
    pub adapter_index: usize,
    /// Addresses of the straps to use (`AA:BB:CC:DD:EE:FF`, any case, with or
    /// without separators); empty accepts every heart-rate strap in range, which is
    /// rarely what a ward wants.
    pub allow: Vec<String>,
    /// How often the adapter's device list is swept and the scan re-armed, catching
    /// straps whose advertisement events were missed. Must be positive.
    pub scan_interval: Duration,
}

impl Default for BleConfig {
    fn default() -> Self {
        Self {
            adapter_index: 0,
            allow: Vec::new(),
            scan_interval: Duration::from_secs(10),
        }
    }
}

/// A strap found for the first time: its device id and the channel its
/// measurements arrive on.
#[derive(Debug)]
pub struct Strap {
    /// The strap's device id, derived from its address; stable across reconnects.
    pub device: DeviceId,
    /// Every parsed measurement, in arrival order, across reconnects. Dropping it
    /// releases the strap (its task disconnects and ends).
    pub measurements: mpsc::Receiver<HeartRateMeasurement>,
}

/// Runs discovery until `shutdown`; each newly seen strap is sent on `found` once
/// (reconnects reuse its channel). Measurement channels are bounded
/// ([`MEASUREMENT_CHANNEL`]); when one is full the newest measurement is dropped,
/// counted and warned about, so a stalled consumer never stalls the Bluetooth side.
///
/// If `found` is dropped, discovery stops and the straps already handed out run on
/// until `shutdown` or until their receivers are dropped.
///
/// Fails when the configuration is invalid, when no Bluetooth adapter with
/// `adapter_index` exists or BlueZ cannot be reached, or when the adapter's event
/// stream ends; straps that misbehave are retried, never fatal.
pub async fn discover(
    config: BleConfig,
    found: mpsc::Sender<Strap>,
    shutdown: CancellationToken,
) -> Result<()> {
    let allow = parse_allow_list(&config.allow)?;
    if config.scan_interval.is_zero() {
        return Err(Error::Config(
            "the BLE scan interval must be positive".into(),
        ));
    }
    let manager = Manager::new()
        .await
        .map_err(ble("cannot reach the Bluetooth stack"))?;
    let adapters = manager
        .adapters()
        .await
        .map_err(ble("cannot list Bluetooth adapters"))?;
    let adapter_count = adapters.len();
    let adapter = adapters
        .into_iter()
        .nth(config.adapter_index)
        .ok_or_else(|| {
            Error::Ble(format!(
                "no Bluetooth adapter #{} ({adapter_count} found)",
                config.adapter_index
            ))
        })?;
    let adapter_info = adapter
        .adapter_info()
        .await
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let mut events = adapter
        .events()
        .await
        .map_err(ble("cannot watch the Bluetooth adapter"))?;
    let filter = ScanFilter {
        services: vec![HEART_RATE_SERVICE_UUID],
    };
    adapter
        .start_scan(filter.clone())
        .await
        .map_err(ble("cannot start scanning"))?;
    tracing::info!(
        adapter = %adapter_info,
        allow = allow.len(),
        "Scanning for heart-rate straps."
    );

    // Strap tasks stop on `shutdown`, or on this child token when discovery fails.
    let straps_stop = shutdown.child_token();
    let mut discovery = Discovery {
        adapter: adapter.clone(),
        allow,
        known: HashMap::new(),
        ignored: HashSet::new(),
        tasks: JoinSet::new(),
        stop: straps_stop.clone(),
    };
    let mut sweep = tokio::time::interval(config.scan_interval);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    sweep.tick().await;

    let outcome = loop {
        let candidate = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            event = events.next() => match event {
                None => break Err(Error::Ble("the Bluetooth adapter's event stream ended".into())),
                Some(CentralEvent::DeviceDiscovered(id)) => discovery.candidate(&id).await,
                Some(CentralEvent::ServicesAdvertisement { id, services })
                    if services.contains(&HEART_RATE_SERVICE_UUID) =>
                {
                    discovery.candidate(&id).await
                }
                Some(CentralEvent::DeviceDisconnected(id)) => {
                    discovery.disconnected(&id);
                    None
                }
                Some(CentralEvent::StateUpdate(state)) => {
                    tracing::info!(?state, "Bluetooth adapter state changed.");
                    None
                }
                Some(_) => None,
            },
            _ = sweep.tick() => {
                if let Err(e) = adapter.start_scan(filter.clone()).await {
                    // BlueZ refuses a scan that is already running; that is fine.
                    tracing::debug!(error = %e, "Scan not re-armed.");
                }
                discovery.sweep().await
            }
            Some(joined) = discovery.tasks.join_next() => {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "Strap task failed.");
                }
                None
            }
        };
        let Some(candidate) = candidate else { continue };
        let device = candidate.device.clone();
        let measurements = discovery.start(candidate);
        let strap = Strap {
            device: device.clone(),
            measurements,
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            sent = found.send(strap) => {
                if sent.is_err() {
                    tracing::info!("Strap receiver dropped; discovery stops, known straps run on.");
                    break Ok(());
                }
                tracing::info!(%device, "Strap found.");
            }
        }
    };

    if let Err(e) = adapter.stop_scan().await {
        tracing::debug!(error = %e, "Scan not stopped.");
    }
    if outcome.is_err() {
        straps_stop.cancel();
    }
    while let Some(joined) = discovery.tasks.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "Strap task failed.");
        }
    }
    outcome
}

/// Discovery's bookkeeping: which peripherals are straps, which are not wanted.
struct Discovery {
    adapter: Adapter,
    /// Normalised allowed addresses; empty: any.
    allow: Vec<String>,
    /// Straps with a running task, and how to tell that task the strap dropped.
    known: HashMap<PeripheralId, Known>,
    /// Heart-rate peripherals outside the allow-list (an address never changes, so
    /// they are not looked at again).
    ignored: HashSet<PeripheralId>,
    tasks: JoinSet<()>,
    stop: CancellationToken,
}

struct Known {
    device: DeviceId,
    disconnected: Arc<Notify>,
}

/// A heart-rate strap seen for the first time.
struct Candidate {
    id: PeripheralId,
    device: DeviceId,
    address: String,
}

impl Discovery {
    /// Whether peripheral `id` is a new, wanted heart-rate strap.
    async fn candidate(&mut self, id: &PeripheralId) -> Option<Candidate> {
        if self.known.contains_key(id) || self.ignored.contains(id) {
            return None;
        }
        let peripheral = self.adapter.peripheral(id).await.ok()?;
        let properties = peripheral.properties().await.ok().flatten()?;
        if !properties.services.contains(&HEART_RATE_SERVICE_UUID) {
            // Not (yet) known to be a heart-rate strap; a later advertisement or
            // sweep may tell.
            return None;
        }
        let address = strap_address(&peripheral);
        if !is_allowed(&self.allow, &address) {
            tracing::debug!(%address, "Heart-rate strap not in the allow-list; ignored.");
            self.ignored.insert(id.clone());
            return None;
        }
        let device = match device_id_for_address(&address) {
            Ok(device) => device,
            Err(e) => {
                tracing::warn!(%address, error = %e, "Heart-rate strap ignored.");
                self.ignored.insert(id.clone());
                return None;
            }
        };
        if self.known.values().any(|k| k.device == device) {
            tracing::warn!(%device, %address, "A second peripheral with a known strap's address; ignored.");
            self.ignored.insert(id.clone());
            return None;
        }
        Some(Candidate {
            id: id.clone(),
            device,
            address,
        })
    }

    /// The first new strap among the adapter's current peripherals, for straps
    /// whose advertisement events were missed (one per sweep keeps the loop
    /// responsive; the next sweep finds the next).
    async fn sweep(&mut self) -> Option<Candidate> {
        let peripherals = match self.adapter.peripherals().await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "Peripherals not listed.");
                return None;
            }
        };
        for peripheral in peripherals {
            if let Some(candidate) = self.candidate(&peripheral.id()).await {
                return Some(candidate);
            }
        }
        None
    }

    /// Starts the task of a new strap; returns its measurement channel.
    fn start(&mut self, candidate: Candidate) -> mpsc::Receiver<HeartRateMeasurement> {
        let (tx, rx) = mpsc::channel(MEASUREMENT_CHANNEL);
        let disconnected = Arc::new(Notify::new());
        self.known.insert(
            candidate.id.clone(),
            Known {
                device: candidate.device.clone(),
                disconnected: Arc::clone(&disconnected),
            },
        );
        self.tasks.spawn(run_strap(
            StrapLink {
                adapter: self.adapter.clone(),
                id: candidate.id,
                device: candidate.device,
                address: candidate.address,
                disconnected,
            },
            tx,
            self.stop.clone(),
        ));
        rx
    }

    /// Tells the strap's task that the adapter saw it disconnect.
    fn disconnected(&self, id: &PeripheralId) {
        if let Some(known) = self.known.get(id) {
            tracing::debug!(device = %known.device, "Disconnect event.");
            known.disconnected.notify_one();
        }
    }
}

/// What a strap's task knows about its strap.
struct StrapLink {
    adapter: Adapter,
    id: PeripheralId,
    device: DeviceId,
    address: String,
    /// Signalled on the adapter's disconnect events for this strap.
    disconnected: Arc<Notify>,
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
async fn run_strap(
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
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
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

/// The strap's address as text. CoreBluetooth hides addresses (all zero), so there
/// the platform's stable peripheral id stands in.
fn strap_address(peripheral: &Peripheral) -> String {
    let address = peripheral.address();
    if address == BDAddr::default() {
        peripheral.id().to_string()
    } else {
        address.to_string()
    }
}

/// Maps a btleplug error to [`Error::Ble`] with what was being done.
fn ble(what: &'static str) -> impl FnOnce(btleplug::Error) -> Error {
    move |e| Error::Ble(format!("{what}: {e}"))
}

/// An address without separators, upper-case: `aa:bb:cc:dd:ee:ff`, `AA-BB-…` and
/// `AABBCCDDEEFF` all name the same strap. Only `:`, `-` and `_` are separators;
/// anything else is kept (and then rejected by the callers that validate).
pub fn normalise_address(address: &str) -> String {
    address
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '_'))
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The device id of the strap at `address`: `ble-` and its hex digits, e.g.
/// `AA:BB:CC:DD:EE:FF` → `ble-AABBCCDDEEFF`. Derived from the address so that a
/// strap keeps its id (and its epoch file, and its numbering) across reconnects and
/// agent restarts.
pub fn device_id_for_address(address: &str) -> Result<DeviceId> {
    let hex = normalise_address(address);
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::Ble(format!(
            "{address:?} is not a Bluetooth address"
        )));
    }
    DeviceId::new(&format!("{DEVICE_ID_PREFIX}{hex}"))
        .map_err(|e| Error::Ble(format!("no device id for address {address:?}: {e}")))
}

/// Whether the strap at `address` may be used: the allow-list (normalised, see
/// [`normalise_address`]) is empty or names it.
pub fn is_allowed(allow: &[String], address: &str) -> bool {
    if allow.is_empty() {
        return true;
    }
    let address = normalise_address(address);
    allow.iter().any(|a| normalise_address(a) == address)
}

/// Validates and normalises the allow-list, so that a typo fails at start-up
/// instead of silently never matching.
fn parse_allow_list(allow: &[String]) -> Result<Vec<String>> {
    allow
        .iter()
        .map(|a| {
            device_id_for_address(a)
                .map(|_| normalise_address(a))
                .map_err(|_| {
                    Error::Config(format!(
                        "{a:?} in the BLE allow-list is not a Bluetooth address"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_come_from_the_address() {
        let id = device_id_for_address("aa:bb:cc:dd:ee:0f").unwrap();
        assert_eq!(id.as_str(), "ble-AABBCCDDEE0F");
        assert_eq!(device_id_for_address("AABBCCDDEE0F").unwrap(), id);
        assert_eq!(device_id_for_address("AA-BB-CC-DD-EE-0F").unwrap(), id);
    }

    #[test]
    fn platform_ids_without_an_address_still_give_valid_device_ids() {
        // CoreBluetooth's peripheral ids are UUIDs.
        let id = device_id_for_address("3f2504e0-4f89-11d3-9a0c-0305e82c3301").unwrap();
        assert_eq!(id.as_str(), "ble-3F2504E04F8911D39A0C0305E82C3301");
    }

    #[test]
    fn non_addresses_are_rejected() {
        for bad in [
            "",
            ":::",
            "AA:BB:CC:DD:EE:ZZ",
            "AA BB",
            "AA/BB",
            &"A".repeat(61),
        ] {
            assert!(device_id_for_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_allow_list_accepts_every_strap() {
        assert!(is_allowed(&[], "AA:BB:CC:DD:EE:FF"));
    }

    #[test]
    fn the_allow_list_matches_whatever_the_spelling() {
        let allow = vec!["aa:bb:cc:dd:ee:ff".to_string(), "112233445566".to_string()];
        assert!(is_allowed(&allow, "AA:BB:CC:DD:EE:FF"));
        assert!(is_allowed(&allow, "11:22:33:44:55:66"));
        assert!(!is_allowed(&allow, "AA:BB:CC:DD:EE:FE"));
    }

    #[test]
    fn invalid_allow_list_entries_fail_at_start_up() {
        let allow = vec!["AA:BB:CC:DD:EE:FF".to_string(), "kitchen strap".to_string()];
        assert!(matches!(parse_allow_list(&allow), Err(Error::Config(_))));
        let ok = parse_allow_list(&["aa-bb-cc-dd-ee-ff".to_string()]).unwrap();
        assert_eq!(ok, ["AABBCCDDEEFF"]);
    }

    #[test]
    fn the_uuids_are_the_heart_rate_profile() {
        assert_eq!(
            HEART_RATE_SERVICE_UUID.to_string(),
            "0000180d-0000-1000-8000-00805f9b34fb"
        );
        assert_eq!(
            HEART_RATE_MEASUREMENT_UUID.to_string(),
            "00002a37-0000-1000-8000-00805f9b34fb"
        );
    }
}
