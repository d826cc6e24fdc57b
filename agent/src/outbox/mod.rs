//! The per-device outbox: what is to be sent (the priority lane of events and
//! status, then readings from the [`Spool`]) and the messages handed to the MQTT
//! client but not yet acknowledged by the broker (PUBACK). A reading leaves the
//! agent's custody when the collector confirms it is stored (`--confirm stored`,
//! see [`crate::confirm`]; readings whose confirmation does not come are sent
//! again), or with the PUBACK (`--confirm puback`): then its spool entry is
//! released.
//!
//! rumqttc 0.25 does not tell which PUBACK answers which publish, and drops its own
//! unacknowledged publishes when the broker starts a new session. So the outbox
//! follows the client's packet ids itself: requests go into rumqttc's channel in
//! the order of `requested`, each `Outgoing::Publish(pkid)` event moves the oldest
//! request to `in_flight`, and a `PubAck(pkid)` retires it. When the connection
//! drops, the event loop hands over everything rumqttc had not had acknowledged
//! ([`Outbox::on_connection_lost`]) and the outbox sends it again on the next
//! connection: a broker that did receive it yields a duplicate, which the
//! `(device, epoch, seq)` key absorbs downstream; nothing is lost.
//!
//! # Layout
//! - `publish`: what goes to the client next (resends, the priority lane, the
//!   live reading, the backlog) and the envelopes readings travel in.
//! - `window`: the messages handed to the client, followed by packet id until
//!   their PUBACK, and what a lost connection hands back.
//! - `confirmation`: the end-to-end storage confirmations (`--confirm stored`)
//!   that release readings from the spool.

mod confirmation;
mod publish;
#[cfg(test)]
mod test_support;
mod window;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use hb_shared::{DeviceId, DeviceStatus, Presence};
use rumqttc::AsyncClient;

use crate::spool::Spool;

pub use confirmation::Confirmation;

/// Most priority messages (events, status) waiting; beyond it the oldest is
/// dropped (a newer status or event supersedes it).
pub const MAX_PRIORITY: usize = 16;

/// Most messages handed to the client and not yet acknowledged. Kept well below
/// [`CLIENT_INFLIGHT`] so that rumqttc never has to park a publish on a packet-id
/// collision (which it cannot recover after a lost session).
pub const MAX_OUTSTANDING: usize = 8;

/// Most backlog envelopes (of up to 256 readings) outstanding per device: enough to
/// keep a link busy, and it bounds the memory of a whole fleet draining at once.
pub const MAX_BACKLOG_OUTSTANDING: usize = 2;

/// rumqttc's packet-id window (`MqttOptions::set_inflight`): twice
/// [`MAX_OUTSTANDING`]. rumqttc keeps a slot per id for every connection, so a
/// wider window costs a fleet memory for nothing.
pub const CLIENT_INFLIGHT: u16 = 16;

/// Capacity of rumqttc's request channel; above what the outbox ever queues.
pub const REQUEST_CHANNEL: usize = 2 * MAX_OUTSTANDING + 4;

/// A reading older than this when sent is flagged as backfill.
pub const LIVE_WINDOW_MS: i64 = 5_000;

/// One MQTT message: readings (an encoded envelope and the range it carries) or a
/// priority message (event, status) on its own topic.
#[derive(Debug, Clone)]
struct Message {
    topic: String,
    retain: bool,
    epoch: u32,
    first_seq: u32,
    readings: u32,
    payload: bytes::Bytes,
}

/// Counters for logs, status and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Readings acknowledged by the broker.
    pub acked: u64,
    /// Priority messages dropped because newer ones superseded them.
    pub priority_dropped: u64,
    /// Messages sent again after a connection loss.
    pub resent: u64,
    /// Readings confirmed stored by the collector (`--confirm stored`).
    pub confirmed: u64,
    /// Readings sent again because their storage was not confirmed in time.
    pub resent_unconfirmed: u64,
    /// Storage confirmations that could not be used (malformed, another device).
    pub confirmations_refused: u64,
}

/// See the module documentation.
pub struct Outbox {
    device: DeviceId,
    epoch: u32,
    topic: String,
    status_topic: String,
    client: AsyncClient,
    spool: Spool,
    priority: VecDeque<Message>,
    resend: VecDeque<Message>,
    requested: VecDeque<Message>,
    in_flight: HashMap<u16, Message>,
    parked: Option<(u16, Message)>,
    confirmation: Option<Confirmation>,
    stats: OutboxStats,
}

impl Outbox {
    /// An outbox publishing readings from `spool` to `topic`, and the device's
    /// status to `status_topic`, through `client`; readings are released by
    /// storage confirmations when `confirmation` is set, else by PUBACK.
    pub fn new(
        device: DeviceId,
        epoch: u32,
        topic: String,
        status_topic: String,
        client: AsyncClient,
        spool: Spool,
        confirmation: Option<Confirmation>,
    ) -> Self {
        Self {
            device,
            epoch,
            topic,
            status_topic,
            client,
            spool,
            priority: VecDeque::new(),
            resend: VecDeque::new(),
            requested: VecDeque::new(),
            in_flight: HashMap::new(),
            parked: None,
            confirmation,
            stats: OutboxStats::default(),
        }
    }

    /// The spool, for appends and figures.
    pub fn spool(&mut self) -> &mut Spool {
        &mut self.spool
    }

    /// The retained status document for `state`, with the spool's figures.
    pub fn status(&self, state: Presence) -> DeviceStatus {
        let spool = self.spool.stats();
        let lag = self
            .confirmation
            .as_ref()
            .map_or(Duration::ZERO, Confirmation::lag);
        DeviceStatus {
            state,
            epoch: self.epoch,
            ts_ms: hb_runtime::clock::now_ms(),
            buffered: self.spool.unacked(),
            dropped: spool.dropped,
            corrupt_tails: spool.corrupt_tails,
            unconfirmed: self.unconfirmed(),
            confirm_lag_ms: lag.as_millis() as u64,
        }
    }

    /// Nothing waiting, nothing unacknowledged and, with end-to-end
    /// confirmation, nothing unconfirmed.
    pub fn is_empty(&self) -> bool {
        self.spool.unsent() == 0
            && self.priority.is_empty()
            && self.resend.is_empty()
            && self.outstanding() == 0
            && (self.confirmation.is_none() || self.spool.unacked() == 0)
    }

    /// Counters so far.
    pub fn stats(&self) -> OutboxStats {
        self.stats
    }
}
