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

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use hb_shared::{
    codec, DeviceId, DeviceStatus, Envelope, Presence, Reading, Readings, StoredConfirmation,
    MAX_READINGS_PER_ENVELOPE,
};
use rumqttc::{AsyncClient, QoS, Request};

use crate::confirm::Resender;
use crate::spool::Spool;

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

/// End-to-end confirmation of one device: its `stored` topic and what to resend.
pub struct Confirmation {
    topic: String,
    resender: Resender,
    connected: bool,
    subscribed: bool,
    refused_warned: bool,
}

impl Confirmation {
    /// Confirmations arrive on `topic`; unconfirmed readings are resent after
    /// `timeout`.
    pub fn new(topic: String, timeout: Duration) -> Self {
        Self {
            topic,
            resender: Resender::new(timeout, Instant::now()),
            connected: false,
            subscribed: false,
            refused_warned: false,
        }
    }
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

    /// Queues a priority message (an event or a status), sent before any reading.
    pub fn push_priority(&mut self, topic: String, payload: Vec<u8>, retain: bool) {
        if self.priority.len() >= MAX_PRIORITY {
            self.priority.pop_front();
            self.stats.priority_dropped += 1;
        }
        self.priority.push_back(Message {
            topic,
            retain,
            epoch: 0,
            first_seq: 0,
            readings: 0,
            payload: payload.into(),
        });
    }

    /// The retained status document for `state`, with the spool's figures.
    pub fn status(&self, state: Presence) -> DeviceStatus {
        let spool = self.spool.stats();
        let lag = self
            .confirmation
            .as_ref()
            .map_or(Duration::ZERO, |c| c.resender.lag(Instant::now()));
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

    /// Readings sent but not yet confirmed stored (`--confirm stored`).
    pub fn unconfirmed(&self) -> u64 {
        match self.confirmation {
            Some(_) => self.spool.unacked().saturating_sub(self.spool.unsent()),
            None => 0,
        }
    }

    /// The broker accepted the connection: subscribes to the device's `stored`
    /// topic (a clean session forgets subscriptions; the retained confirmation
    /// tells where the device stands), and resends what is overdue soon rather
    /// than after a backoff grown while nothing could be sent.
    pub fn on_connected(&mut self) {
        if let Some(c) = &mut self.confirmation {
            c.connected = true;
            c.subscribed = false;
            c.resender.on_reconnected(Instant::now());
        }
        self.subscribe();
    }

    fn subscribe(&mut self) {
        if let Some(c) = &mut self.confirmation {
            if c.connected && !c.subscribed {
                // QoS 0: the session is clean, so a confirmation lost with the
                // connection is gone at either QoS, and the retained one comes
                // with the next subscription. It spares every device a PUBACK per
                // confirmation.
                c.subscribed = self
                    .client
                    .try_subscribe(c.topic.clone(), QoS::AtMostOnce)
                    .is_ok();
            }
        }
    }

    /// The broker refused the `stored` subscription (its ACL): no reading can be
    /// confirmed, so every one stays in the spool and is resent. Said once per
    /// device.
    pub fn on_subscription_refused(&mut self) {
        if let Some(c) = &mut self.confirmation {
            if !std::mem::replace(&mut c.refused_warned, true) {
                tracing::warn!(device = %self.device, topic = %c.topic, "The broker refused the storage-confirmation subscription; readings stay buffered (check the ACL, or run with --confirm puback).");
            }
        }
    }

    /// Whether `topic` is this device's `stored` topic.
    pub fn is_confirmation_topic(&self, topic: &str) -> bool {
        self.confirmation.as_ref().is_some_and(|c| c.topic == topic)
    }

    /// A storage confirmation arrived: releases the readings it names. Returns how
    /// many this spool held.
    pub fn on_stored(&mut self, payload: &[u8]) -> u64 {
        let Some(c) = &mut self.confirmation else {
            return 0;
        };
        let confirmation = match StoredConfirmation::from_json(payload) {
            Ok(s) if s.device_id == self.device => s,
            Ok(s) => {
                self.stats.confirmations_refused += 1;
                tracing::warn!(device = %self.device, other = %s.device_id, "Ignoring a storage confirmation for another device.");
                return 0;
            }
            Err(e) => {
                self.stats.confirmations_refused += 1;
                tracing::warn!(device = %self.device, error = %e, "Ignoring a malformed storage confirmation.");
                return 0;
            }
        };
        // Of the current epoch only what this run has sent can be stored: an
        // epoch reused after a lost state directory must not release readings
        // that never left the device.
        let (sent_epoch, sent_seq) = self.spool.handed_out_bound();
        let mut released = 0;
        for e in &confirmation.epochs {
            let limit = match e.epoch.cmp(&self.epoch) {
                std::cmp::Ordering::Less => Some(u32::MAX),
                _ if sent_epoch == e.epoch => sent_seq.checked_sub(1),
                _ if sent_epoch > e.epoch => Some(u32::MAX),
                _ => None,
            };
            let Some(limit) = limit else { continue };
            for &(first, last) in &e.ranges {
                if first <= limit {
                    released += self.spool.confirm(e.epoch, first, last.min(limit));
                }
            }
        }
        if released > 0 {
            self.stats.confirmed += released;
            let waiting = self.spool.unacked() > self.spool.unsent();
            c.resender.on_confirmed(Instant::now(), waiting);
            tracing::trace!(device = %self.device, released, "Storage confirmed.");
        }
        released
    }

    /// Queues the retained status (after every connect, and periodically).
    pub fn queue_status(&mut self, state: Presence) {
        let payload = self.status(state).to_json();
        // An older status waiting in the lane is superseded.
        let topic = self.status_topic.clone();
        self.priority.retain(|m| m.topic != topic);
        self.push_priority(topic, payload, true);
    }

    /// Hands messages to the client while fewer than [`MAX_OUTSTANDING`] are
    /// unacknowledged: first those to resend, then priority messages, then a live
    /// reading ahead of any backlog, then the backlog in envelopes of up to 256.
    pub fn pump(&mut self) {
        self.subscribe();
        if let Some(c) = &mut self.confirmation {
            c.resender
                .tick(Instant::now(), self.spool.handed_out_bound());
        }
        while self.outstanding() < MAX_OUTSTANDING {
            let next = match self
                .resend
                .pop_front()
                .or_else(|| self.priority.pop_front())
            {
                Some(m) => Some(m),
                None => match self.next_message() {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!(device = %self.device, error = %e, "Cannot read the spool; readings stay stored.");
                        None
                    }
                },
            };
            let Some(message) = next else { return };
            match self.client.try_publish(
                message.topic.clone(),
                QoS::AtLeastOnce,
                message.retain,
                message.payload.clone(),
            ) {
                Ok(()) => self.requested.push_back(message),
                Err(e) => {
                    tracing::debug!(device = %self.device, error = %e, "MQTT request channel full.");
                    self.resend.push_front(message);
                    return;
                }
            }
        }
    }

    fn next_message(&mut self) -> crate::Result<Option<Message>> {
        let now = hb_runtime::clock::now_ms();
        let backlog_full = self.backlog_outstanding() >= MAX_BACKLOG_OUTSTANDING;
        let batch = match self.spool.take_live(now, LIVE_WINDOW_MS) {
            Some(live) => vec![live],
            None if backlog_full && self.spool.unsent() > 1 => return Ok(None),
            None => match self.next_unconfirmed(backlog_full)? {
                Some(run) => {
                    self.stats.resent_unconfirmed += run.len() as u64;
                    return Ok(Some(self.envelope(run, |_| true)));
                }
                None => self.spool.next_batch(MAX_READINGS_PER_ENVELOPE)?,
            },
        };
        if batch.is_empty() {
            return Ok(None);
        }
        // From the backlog: older than the live window, or left by an earlier run.
        let epoch = self.epoch;
        Ok(Some(self.envelope(batch, |r| {
            r.epoch != epoch || now - r.ts_ms > LIVE_WINDOW_MS
        })))
    }

    /// The next run of readings whose storage confirmation is overdue, if a
    /// resend pass is on and the backlog lane has room.
    fn next_unconfirmed(&mut self, backlog_full: bool) -> crate::Result<Option<Vec<Reading>>> {
        let Some(c) = &mut self.confirmation else {
            return Ok(None);
        };
        let Some(pass) = c.resender.pass() else {
            return Ok(None);
        };
        if backlog_full || !c.connected {
            return Ok(None);
        }
        let run = match self
            .spool
            .unconfirmed_run(pass.from, pass.upto, MAX_READINGS_PER_ENVELOPE)
        {
            Ok(run) => run,
            Err(e) => {
                // Never let a resend block the backlog: end this pass.
                tracing::warn!(device = %self.device, error = %e, "Cannot read unconfirmed readings back; resending them later.");
                c.resender.finish_pass();
                return Ok(None);
            }
        };
        match run {
            Some(run) => {
                let last = run.last().map_or(pass.from, |r| (r.epoch, r.seq));
                c.resender.resent_through(last);
                tracing::debug!(device = %self.device, epoch = last.0, first_seq = run[0].seq,
                    readings = run.len(), "Resending readings whose storage was not confirmed.");
                Ok(Some(run))
            }
            None => {
                c.resender.finish_pass();
                Ok(None)
            }
        }
    }

    /// One envelope of consecutive readings (non-empty), each flagged backfill
    /// where `late` says so.
    fn envelope(&self, batch: Vec<Reading>, late: impl Fn(&Reading) -> bool) -> Message {
        let (epoch, first_seq, count) = (batch[0].epoch, batch[0].seq, batch.len() as u32);
        let mut readings = Readings::new();
        for mut r in batch {
            r.backfill = late(&r);
            let _ = readings.push(r);
        }
        let envelope = Envelope::new(self.device.clone(), readings);
        // A full envelope is far below the size limit, so encoding cannot fail.
        let payload = codec::encode_postcard(&envelope).expect("envelope within limits");
        Message {
            topic: self.topic.clone(),
            retain: false,
            epoch,
            first_seq,
            readings: count,
            payload: payload.into(),
        }
    }

    fn backlog_outstanding(&self) -> usize {
        let is_batch = |m: &Message| m.readings > 1;
        self.requested.iter().filter(|m| is_batch(m)).count()
            + self.in_flight.values().filter(|m| is_batch(m)).count()
            + usize::from(self.parked.as_ref().is_some_and(|(_, m)| is_batch(m)))
    }

    fn outstanding(&self) -> usize {
        self.requested.len() + self.in_flight.len() + usize::from(self.parked.is_some())
    }

    /// rumqttc wrote a publish with this packet id.
    pub fn on_outgoing_publish(&mut self, pkid: u16) {
        if pkid == 0 {
            return; // QoS 0 (the goodbye status): nothing to track
        }
        if self.in_flight.contains_key(&pkid) {
            return; // a retransmission
        }
        if self.parked.as_ref().is_some_and(|(p, _)| *p == pkid) {
            let (p, m) = self.parked.take().expect("checked");
            self.in_flight.insert(p, m);
            return;
        }
        match self.requested.pop_front() {
            Some(m) => {
                self.in_flight.insert(pkid, m);
            }
            None => tracing::warn!(device = %self.device, pkid, "Publish event without a request."),
        }
    }

    /// rumqttc parked the next publish because `pkid` is still unacknowledged.
    pub fn on_await_ack(&mut self, pkid: u16) {
        tracing::warn!(device = %self.device, pkid, "Packet id collision; publish parked.");
        if let Some(m) = self.requested.pop_front() {
            self.parked = Some((pkid, m));
        }
    }

    /// The broker acknowledged `pkid`. Returns how many readings it carried.
    /// Without end-to-end confirmation they are released now; with it they wait
    /// for their storage confirmation.
    pub fn on_puback(&mut self, pkid: u16) -> u32 {
        match self.in_flight.remove(&pkid) {
            Some(m) => {
                if m.readings > 0 {
                    self.stats.acked += u64::from(m.readings);
                    tracing::trace!(device = %self.device, first_seq = m.first_seq, readings = m.readings, "Acknowledged.");
                    match &mut self.confirmation {
                        Some(c) => c.resender.on_delivered(Instant::now()),
                        None => {
                            if let Err(e) = self.spool.ack(m.epoch, m.first_seq, m.readings) {
                                tracing::warn!(device = %self.device, error = %e, "Could not release acknowledged readings from the spool.");
                            }
                        }
                    }
                }
                m.readings
            }
            None => 0,
        }
    }

    /// The connection dropped and rumqttc's unacknowledged requests were taken out
    /// of its event loop (`pending`): everything among them is sent again. Requests
    /// rumqttc had already numbered were in flight; the unnumbered ones are the
    /// oldest of `requested` (newer requests are still in its channel and go out on
    /// the next connection by themselves).
    pub fn on_connection_lost(&mut self, taken: impl IntoIterator<Item = Request>) {
        let mut numbered = 0usize;
        let mut unnumbered = 0usize;
        for r in taken {
            if let Request::Publish(p) = r {
                if p.qos == QoS::AtMostOnce {
                    continue; // never tracked
                }
                if p.pkid == 0 {
                    unnumbered += 1;
                } else {
                    numbered += 1;
                }
            }
        }
        if numbered != self.in_flight.len() {
            tracing::warn!(device = %self.device, numbered, in_flight = self.in_flight.len(), "In-flight bookkeeping differs from the client's.");
        }
        let mut lost: Vec<Message> = self.in_flight.drain().map(|(_, m)| m).collect();
        lost.extend(self.parked.take().map(|(_, m)| m));
        lost.extend(self.requested.drain(..unnumbered.min(self.requested.len())));
        lost.sort_by_key(|m| (m.readings == 0, m.epoch, m.first_seq));
        self.stats.resent += lost.len() as u64;
        for mut m in lost.into_iter().rev() {
            // Sent again later than live: say so.
            if m.readings > 0 {
                if let Ok(mut e) = codec::decode_postcard(&m.payload) {
                    let mut flagged = Readings::new();
                    for mut r in std::mem::take(&mut e.readings) {
                        r.backfill = true;
                        let _ = flagged.push(r);
                    }
                    e.readings = flagged;
                    if let Ok(p) = codec::encode_postcard(&e) {
                        m.payload = p.into();
                    }
                }
            }
            self.resend.push_front(m);
        }
        if let Some(c) = &mut self.confirmation {
            c.connected = false;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{FullPolicy, SpoolConfig};
    use hb_shared::{Contact, Reading};
    use rumqttc::{EventLoop, MqttOptions, Publish};
    use std::time::Duration;

    struct Fixture {
        outbox: Outbox,
        _eventloop: EventLoop,
        _dir: tempfile::TempDir,
    }

    fn outbox(capacity: usize) -> Fixture {
        fixture(capacity, None)
    }

    /// An outbox releasing readings on storage confirmations, resending after
    /// `timeout`.
    fn confirming(timeout: Duration) -> Fixture {
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

    fn reading(seq: u32, age_ms: i64) -> Reading {
        Reading::new(
            1,
            seq,
            hb_runtime::clock::now_ms() - age_ms,
            70,
            Contact::Detected,
        )
    }

    fn publish(pkid: u16) -> Request {
        let mut p = Publish::new("x", QoS::AtLeastOnce, vec![1]);
        p.pkid = pkid;
        Request::Publish(p)
    }

    impl Outbox {
        fn push(&mut self, r: Reading) {
            self.spool.append(&r).unwrap();
        }
    }

    #[test]
    fn a_live_reading_is_sent_alone_and_retired_by_its_puback() {
        let mut f = outbox(10);
        let o = &mut f.outbox;
        o.push(reading(0, 0));
        o.pump();
        assert!(!o.is_empty());
        o.on_outgoing_publish(1);
        assert_eq!(o.on_puback(1), 1);
        assert!(o.is_empty());
        assert_eq!(o.stats().acked, 1);
        assert_eq!(o.spool().unacked(), 0);
    }

    #[test]
    fn a_backlog_drains_in_full_envelopes_flagged_backfill_behind_the_live_reading() {
        let mut f = outbox(1000);
        let o = &mut f.outbox;
        for seq in 0..600 {
            o.push(reading(seq, 60_000));
        }
        o.push(reading(600, 0));
        let live = o.next_message().unwrap().unwrap();
        assert_eq!(
            (live.first_seq, live.readings),
            (600, 1),
            "the live reading goes first"
        );
        assert!(!codec::decode_postcard(&live.payload).unwrap().readings[0].backfill);
        let m = o.next_message().unwrap().unwrap();
        assert_eq!((m.first_seq, m.readings), (0, 256));
        let e = codec::decode_postcard(&m.payload).unwrap();
        assert!(e.readings.iter().all(|r| r.backfill));
        assert_eq!(e.readings[255].seq, 255);
        let _ = o.next_message().unwrap().unwrap(); // 256..511
        let m = o.next_message().unwrap().unwrap();
        assert_eq!(
            (m.first_seq, m.readings),
            (512, 88),
            "the live reading is not sent twice"
        );
        assert!(o.next_message().unwrap().is_none());
    }

    #[test]
    fn priority_messages_go_before_readings() {
        let mut f = outbox(10);
        let o = &mut f.outbox;
        o.push(reading(0, 0));
        o.push_priority("hb/v1/devices/dev/events".into(), vec![1, 2], false);
        o.pump();
        assert_eq!(o.requested[0].topic, "hb/v1/devices/dev/events");
        assert_eq!(o.requested[1].readings, 1);
    }

    #[test]
    fn no_more_than_max_outstanding_messages_are_handed_to_the_client() {
        let mut f = outbox(100);
        let o = &mut f.outbox;
        for seq in 0..20 {
            o.push(reading(seq, 0));
            o.pump();
        }
        assert_eq!(o.outstanding(), MAX_OUTSTANDING);
    }

    #[test]
    fn retransmissions_do_not_consume_requests() {
        let mut f = outbox(10);
        let o = &mut f.outbox;
        o.push(reading(0, 0));
        o.pump();
        o.push(reading(1, 0));
        o.pump();
        o.on_outgoing_publish(1);
        o.on_outgoing_publish(1);
        assert_eq!(o.requested.len(), 1);
        o.on_outgoing_publish(2);
        assert_eq!(o.in_flight[&2].first_seq, 1);
    }

    #[test]
    fn everything_unacknowledged_at_a_connection_loss_is_sent_again_in_order() {
        let mut f = outbox(10);
        let o = &mut f.outbox;
        for seq in 0..3 {
            o.push(reading(seq, 0));
            o.pump();
        }
        o.on_outgoing_publish(1);
        o.on_outgoing_publish(2);
        // rumqttc's pending: two numbered (in flight) and one drained from its channel.
        o.on_connection_lost([publish(1), publish(2), publish(0)]);
        assert_eq!(o.stats().resent, 3);
        o.pump();
        for pkid in 3..=5 {
            o.on_outgoing_publish(pkid);
        }
        let firsts: Vec<u32> = (3..=5).map(|p| o.in_flight[&p].first_seq).collect();
        assert_eq!(firsts, [0, 1, 2]);
        for pkid in 3..=5 {
            assert_eq!(o.on_puback(pkid), 1);
        }
        assert!(o.is_empty());
        assert_eq!(o.spool().unacked(), 0);
    }

    #[test]
    fn requests_made_after_the_loss_stay_queued_behind_the_resent_ones() {
        let mut f = outbox(10);
        let o = &mut f.outbox;
        for seq in 0..3 {
            o.push(reading(seq, 0));
            o.pump();
        }
        // Only the first request was drained into rumqttc's pending; the other two
        // are still in its channel and will go out first on the next connection.
        o.on_connection_lost([publish(0)]);
        o.pump();
        for pkid in 1..=3 {
            o.on_outgoing_publish(pkid);
        }
        let firsts: Vec<u32> = (1..=3).map(|p| o.in_flight[&p].first_seq).collect();
        assert_eq!(firsts, [1, 2, 0]);
    }

    #[test]
    fn a_puback_for_an_unknown_packet_id_confirms_nothing() {
        let mut f = outbox(10);
        let o = &mut f.outbox;
        o.push(reading(0, 0));
        o.pump();
        assert_eq!(o.on_puback(9), 0);
        assert!(!o.is_empty());
    }

    fn stored(ranges: &[(u32, u32)]) -> Vec<u8> {
        StoredConfirmation::new(
            DeviceId::new("dev").unwrap(),
            vec![hb_shared::EpochRanges {
                epoch: 1,
                ranges: ranges.to_vec(),
            }],
        )
        .to_json()
    }

    /// Sends every pending message and has the broker acknowledge it; returns the
    /// `(first_seq, readings, all flagged backfill)` of each.
    fn deliver_all(o: &mut Outbox, next_pkid: &mut u16) -> Vec<(u32, u32, bool)> {
        o.pump();
        let mut out = Vec::new();
        while !o.requested.is_empty() {
            *next_pkid += 1;
            let pkid = *next_pkid;
            o.on_outgoing_publish(pkid);
            let m = o.in_flight[&pkid].clone();
            if m.readings > 0 {
                let e = codec::decode_postcard(&m.payload).unwrap();
                out.push((
                    m.first_seq,
                    m.readings,
                    e.readings.iter().all(|r| r.backfill),
                ));
            }
            o.on_puback(pkid);
            o.pump();
        }
        out
    }

    #[test]
    fn with_end_to_end_confirmation_a_puback_releases_nothing_and_a_confirmation_does() {
        let mut f = confirming(Duration::from_secs(60));
        let o = &mut f.outbox;
        for seq in 0..3 {
            o.push(reading(seq, 0));
        }
        let mut pkid = 0;
        deliver_all(o, &mut pkid);
        assert_eq!(o.stats().acked, 3);
        assert_eq!((o.spool().unacked(), o.unconfirmed()), (3, 3));
        assert!(!o.is_empty(), "acknowledged is not stored");
        assert_eq!(o.on_stored(&stored(&[(0, 1)])), 2);
        assert_eq!(o.unconfirmed(), 1);
        assert_eq!(o.on_stored(&stored(&[(0, 2)])), 1);
        assert!(o.is_empty());
        assert_eq!(o.stats().confirmed, 3);
    }

    #[test]
    fn confirmations_for_another_device_or_malformed_ones_release_nothing() {
        let mut f = confirming(Duration::from_secs(60));
        let o = &mut f.outbox;
        o.push(reading(0, 0));
        let mut pkid = 0;
        deliver_all(o, &mut pkid);
        let other = StoredConfirmation::new(
            DeviceId::new("other").unwrap(),
            vec![hb_shared::EpochRanges {
                epoch: 1,
                ranges: vec![(0, 10)],
            }],
        );
        assert_eq!(o.on_stored(&other.to_json()), 0);
        assert_eq!(o.on_stored(b"{not json"), 0);
        assert_eq!(o.stats().confirmations_refused, 2);
        assert_eq!(o.spool().unacked(), 1);
    }

    #[test]
    fn readings_not_confirmed_in_time_are_sent_again_as_backfill_and_only_those() {
        let timeout = Duration::from_millis(20);
        let mut f = confirming(timeout);
        let o = &mut f.outbox;
        let mut pkid = 0;
        for seq in 0..10 {
            o.push(reading(seq, 0));
            deliver_all(o, &mut pkid);
        }
        // The broker acknowledged all ten, but only some reached PostgreSQL.
        o.on_stored(&stored(&[(0, 3), (7, 9)]));
        // Two sweeps: the first notes what was sent, the second resends it.
        std::thread::sleep(timeout * 2);
        assert!(deliver_all(o, &mut pkid).is_empty());
        std::thread::sleep(timeout * 2);
        let resent = deliver_all(o, &mut pkid);
        assert_eq!(resent, [(4, 3, true)]);
        assert_eq!(o.stats().resent_unconfirmed, 3);
        o.on_stored(&stored(&[(0, 9)]));
        assert!(o.is_empty());
    }

    #[test]
    fn readings_resent_after_a_connection_loss_are_flagged_backfill() {
        let mut f = outbox(10);
        let o = &mut f.outbox;
        o.push(reading(0, 0));
        o.pump();
        o.on_outgoing_publish(1);
        o.on_connection_lost([publish(1)]);
        o.pump();
        o.on_outgoing_publish(2);
        let e = codec::decode_postcard(&o.in_flight[&2].payload).unwrap();
        assert!(e.readings[0].backfill, "sent again later than live");
    }

    #[test]
    fn a_confirmation_never_releases_readings_this_run_has_not_sent() {
        let mut f = confirming(Duration::from_secs(60));
        let o = &mut f.outbox;
        for seq in 0..5 {
            o.push(reading(seq, 0));
        }
        // Nothing sent yet, yet epoch 1 is "stored": an epoch reused after the
        // state directory was lost.
        assert_eq!(o.on_stored(&stored(&[(0, 100)])), 0);
        let mut pkid = 0;
        let sent = deliver_all(o, &mut pkid);
        assert_eq!(
            sent.iter().map(|s| s.1).sum::<u32>(),
            5,
            "all five still sent"
        );
        assert_eq!(o.on_stored(&stored(&[(0, 100)])), 5);
    }
}
