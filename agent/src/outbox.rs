//! The per-device outbox: readings waiting to be sent, and messages handed to the
//! MQTT client but not yet acknowledged by the broker (PUBACK). A reading leaves
//! the agent's custody only with that PUBACK.
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
use std::time::{SystemTime, UNIX_EPOCH};

use hb_shared::{codec, DeviceId, Envelope, Reading, Readings, MAX_READINGS_PER_ENVELOPE};
use rumqttc::{AsyncClient, QoS, Request};

/// Most messages handed to the client and not yet acknowledged. Kept well below
/// [`CLIENT_INFLIGHT`] so that rumqttc never has to park a publish on a packet-id
/// collision (which it cannot recover after a lost session).
pub const MAX_OUTSTANDING: usize = 8;

/// rumqttc's packet-id window (`MqttOptions::set_inflight`).
pub const CLIENT_INFLIGHT: u16 = 32;

/// Capacity of rumqttc's request channel; above what the outbox ever queues.
pub const REQUEST_CHANNEL: usize = 2 * MAX_OUTSTANDING + 4;

/// A reading older than this when sent is flagged as backfill.
pub const LIVE_WINDOW_MS: i64 = 5_000;

/// One MQTT message: an encoded envelope and the sequence numbers it carries.
#[derive(Debug, Clone)]
struct Message {
    first_seq: u32,
    readings: u32,
    payload: bytes::Bytes,
}

/// Counters for logs, status and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Readings acknowledged by the broker.
    pub acked: u64,
    /// Readings dropped because the buffer was full (oldest first).
    pub dropped: u64,
    /// Messages sent again after a connection loss.
    pub resent: u64,
}

/// See the module documentation.
pub struct Outbox {
    device: DeviceId,
    topic: String,
    client: AsyncClient,
    capacity: usize,
    waiting: VecDeque<Reading>,
    resend: VecDeque<Message>,
    requested: VecDeque<Message>,
    in_flight: HashMap<u16, Message>,
    parked: Option<(u16, Message)>,
    stats: OutboxStats,
}

impl Outbox {
    /// An empty outbox publishing to `topic` through `client`, holding at most
    /// `capacity` unsent readings.
    pub fn new(device: DeviceId, topic: String, client: AsyncClient, capacity: usize) -> Self {
        Self {
            device,
            topic,
            client,
            capacity: capacity.max(1),
            waiting: VecDeque::new(),
            resend: VecDeque::new(),
            requested: VecDeque::new(),
            in_flight: HashMap::new(),
            parked: None,
            stats: OutboxStats::default(),
        }
    }

    /// Queues a new reading; when the buffer is full the oldest waiting reading is
    /// dropped and counted.
    pub fn push(&mut self, reading: Reading) {
        if self.waiting.len() >= self.capacity {
            self.waiting.pop_front();
            self.stats.dropped += 1;
            if self.stats.dropped.is_power_of_two() {
                tracing::warn!(device = %self.device, dropped = self.stats.dropped, "Buffer full; dropped the oldest readings.");
            }
        }
        self.waiting.push_back(reading);
    }

    /// Hands messages to the client while fewer than [`MAX_OUTSTANDING`] are
    /// unacknowledged: first those to resend, then waiting readings, a live one
    /// alone or a backlog in envelopes of up to 256.
    pub fn pump(&mut self) {
        while self.outstanding() < MAX_OUTSTANDING {
            let message = match self.resend.pop_front() {
                Some(m) => m,
                None => match self.next_message() {
                    Some(m) => m,
                    None => return,
                },
            };
            match self.client.try_publish(
                self.topic.clone(),
                QoS::AtLeastOnce,
                false,
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

    fn next_message(&mut self) -> Option<Message> {
        let first = self.waiting.front()?;
        let (first_seq, epoch) = (first.seq, first.epoch);
        let now = now_ms();
        let mut readings = Readings::new();
        while let Some(r) = self.waiting.front() {
            if readings.len() == MAX_READINGS_PER_ENVELOPE || r.epoch != epoch {
                break;
            }
            let mut r = self.waiting.pop_front().expect("front exists");
            r.backfill = now - r.ts_ms > LIVE_WINDOW_MS;
            let _ = readings.push(r);
        }
        let count = readings.len() as u32;
        let envelope = Envelope::new(self.device.clone(), readings);
        // A full envelope is far below the size limit, so encoding cannot fail.
        let payload = codec::encode_postcard(&envelope).expect("envelope within limits");
        Some(Message {
            first_seq,
            readings: count,
            payload: payload.into(),
        })
    }

    fn outstanding(&self) -> usize {
        self.requested.len() + self.in_flight.len() + usize::from(self.parked.is_some())
    }

    /// rumqttc wrote a publish with this packet id.
    pub fn on_outgoing_publish(&mut self, pkid: u16) {
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

    /// The broker acknowledged `pkid`. Returns how many readings it confirmed.
    pub fn on_puback(&mut self, pkid: u16) -> u32 {
        match self.in_flight.remove(&pkid) {
            Some(m) => {
                self.stats.acked += u64::from(m.readings);
                tracing::trace!(device = %self.device, first_seq = m.first_seq, readings = m.readings, "Acknowledged.");
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
        lost.sort_by_key(|m| m.first_seq);
        self.stats.resent += lost.len() as u64;
        for m in lost.into_iter().rev() {
            self.resend.push_front(m);
        }
    }

    /// Nothing waiting and nothing unacknowledged.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.resend.is_empty() && self.outstanding() == 0
    }

    /// Counters so far.
    pub fn stats(&self) -> OutboxStats {
        self.stats
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hb_shared::Contact;
    use rumqttc::{EventLoop, MqttOptions, Publish};

    fn outbox(capacity: usize) -> (Outbox, EventLoop) {
        let (client, eventloop) =
            AsyncClient::new(MqttOptions::new("t", "localhost", 1883), REQUEST_CHANNEL);
        let device = DeviceId::new("dev").unwrap();
        (
            Outbox::new(
                device,
                "hb/v1/devices/dev/readings".into(),
                client,
                capacity,
            ),
            eventloop,
        )
    }

    fn reading(seq: u32, age_ms: i64) -> Reading {
        Reading {
            epoch: 1,
            seq,
            ts_ms: now_ms() - age_ms,
            mono_ms: 0,
            clock_synced: true,
            bpm: 70,
            contact: Contact::Detected,
            rr_1024: Default::default(),
            energy_kj: None,
            local_flag: None,
            backfill: false,
        }
    }

    fn publish(pkid: u16) -> Request {
        let mut p = Publish::new("x", QoS::AtLeastOnce, vec![1]);
        p.pkid = pkid;
        Request::Publish(p)
    }

    #[test]
    fn a_live_reading_is_sent_alone_and_retired_by_its_puback() {
        let (mut o, _el) = outbox(10);
        o.push(reading(0, 0));
        o.pump();
        assert!(!o.is_empty());
        o.on_outgoing_publish(1);
        assert_eq!(o.on_puback(1), 1);
        assert!(o.is_empty());
        assert_eq!(o.stats().acked, 1);
    }

    #[test]
    fn a_backlog_drains_in_full_envelopes_flagged_backfill() {
        let (mut o, _el) = outbox(1000);
        for seq in 0..600 {
            o.push(reading(seq, 60_000));
        }
        let m = o.next_message().unwrap();
        assert_eq!((m.first_seq, m.readings), (0, 256));
        let e = codec::decode_postcard(&m.payload).unwrap();
        assert!(e.readings.iter().all(|r| r.backfill));
        assert_eq!(e.readings[255].seq, 255);
        o.push(reading(600, 0));
        let _ = o.next_message().unwrap(); // 256..511
        let m = o.next_message().unwrap();
        let e = codec::decode_postcard(&m.payload).unwrap();
        assert_eq!((m.first_seq, m.readings), (512, 89));
        assert!(
            !e.readings.last().unwrap().backfill,
            "the fresh reading is live"
        );
    }

    #[test]
    fn no_more_than_max_outstanding_messages_are_handed_to_the_client() {
        let (mut o, _el) = outbox(100);
        for seq in 0..20 {
            o.push(reading(seq, 0));
            o.pump();
        }
        assert_eq!(o.outstanding(), MAX_OUTSTANDING);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_it() {
        let (mut o, _el) = outbox(3);
        for seq in 0..5 {
            o.push(reading(seq, 0));
        }
        assert_eq!(o.stats().dropped, 2);
        assert_eq!(o.waiting.front().unwrap().seq, 2);
    }

    #[test]
    fn retransmissions_do_not_consume_requests() {
        let (mut o, _el) = outbox(10);
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
        let (mut o, _el) = outbox(10);
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
    }

    #[test]
    fn requests_made_after_the_loss_stay_queued_behind_the_resent_ones() {
        let (mut o, _el) = outbox(10);
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
        let (mut o, _el) = outbox(10);
        o.push(reading(0, 0));
        o.pump();
        assert_eq!(o.on_puback(9), 0);
        assert!(!o.is_empty());
    }
}
