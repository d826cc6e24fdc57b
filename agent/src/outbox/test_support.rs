//! Helpers for the outbox's tests: an outbox over a temporary spool and a client
//! whose event loop never runs.

use std::time::Duration;

use hb_shared::{Contact, DeviceId, Reading};
use rumqttc::{AsyncClient, EventLoop, MqttOptions};

use super::{Confirmation, Outbox, REQUEST_CHANNEL};
use crate::spool::{FullPolicy, Spool, SpoolConfig};

/// An outbox and what must live as long as it.
pub(super) struct Fixture {
    pub(super) outbox: Outbox,
    _eventloop: EventLoop,
    _dir: tempfile::TempDir,
}

/// An outbox releasing readings on PUBACK, its spool holding `capacity`.
pub(super) fn outbox(capacity: usize) -> Fixture {
    fixture(capacity, None)
}

/// An outbox releasing readings on storage confirmations, resending after
/// `timeout`.
pub(super) fn confirming(timeout: Duration) -> Fixture {
    let confirmation = Confirmation::new("hb/v1/devices/dev/stored".into(), timeout);
    let mut f = fixture(100, Some(confirmation));
    f.outbox.on_connected();
    f
}

fn fixture(capacity: usize, confirmation: Option<Confirmation>) -> Fixture {
    let (client, eventloop) =
        AsyncClient::new(MqttOptions::new("t", "localhost", 1883), REQUEST_CHANNEL);
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        dir.path(),
        SpoolConfig {
            capacity,
            segment_readings: 256,
            sync_interval: Duration::from_secs(1),
            full_policy: FullPolicy::DropOldest,
            open_files: Default::default(),
            writer: crate::spool::SpoolWriter::inline(),
        },
    )
    .unwrap();
    let device = DeviceId::new("dev").unwrap();
    Fixture {
        outbox: Outbox::new(
            device,
            1,
            "hb/v1/devices/dev/readings".into(),
            "hb/v1/devices/dev/status".into(),
            client,
            spool,
            confirmation,
        ),
        _eventloop: eventloop,
        _dir: dir,
    }
}

/// Reading `seq` of epoch 1, taken `age_ms` ago.
pub(super) fn reading(seq: u32, age_ms: i64) -> Reading {
    Reading::new(
        1,
        seq,
        hb_runtime::clock::now_ms() - age_ms,
        70,
        Contact::Detected,
    )
}

impl Outbox {
    /// Appends `r` to the spool.
    pub(super) fn push(&mut self, r: Reading) {
        self.spool.append(&r).unwrap();
    }
}
