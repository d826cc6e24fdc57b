//! Finding straps: scanning for peripherals that advertise the Heart Rate Service,
//! filtering them through the allow-list, and starting one task per new strap.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use btleplug::api::{BDAddr, Central, CentralEvent, Manager as _, Peripheral as _, ScanFilter};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures::StreamExt;
use hb_shared::{DeviceId, HeartRateMeasurement};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::address::{device_id_for_address, is_allowed, parse_allow_list};
use super::gatt::{ble, HEART_RATE_SERVICE_UUID};
use super::strap::{run_strap, StrapLink};
use crate::{Error, Result};

/// Capacity of each strap's measurement channel: about a minute of 1 Hz
/// notifications, so a briefly busy consumer loses nothing.
pub const MEASUREMENT_CHANNEL: usize = 64;

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
