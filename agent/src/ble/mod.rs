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
//!
//! # Layout
//! - `address`: address normalisation, device ids, the allow-list; in every build,
//!   not only with the `ble` feature;
//! - `discovery`: scanning, and starting a task per strap;
//! - `strap`: one strap's connection, notifications and reconnects;
//! - `gatt`: the Heart Rate profile's UUIDs and btleplug's errors, for both.

mod address;
#[cfg(feature = "ble")]
mod discovery;
#[cfg(feature = "ble")]
mod gatt;
#[cfg(feature = "ble")]
mod strap;

pub(crate) use address::parse_allow_list;
#[cfg(feature = "ble")]
pub(crate) use discovery::{discover, BleConfig};
