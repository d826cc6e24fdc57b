//! The outbox's in-flight window: requests in the order they went into
//! rumqttc's channel, the messages it numbered (in flight until their PUBACK),
//! a publish it parked on a packet-id collision, and everything a lost connection
//! hands back to be sent again.

use hb_shared::{codec, Readings};
use rumqttc::{QoS, Request};

use super::{Message, Outbox};

impl Outbox {
    /// Backlog envelopes (more than one reading) handed to the client and not
    /// yet acknowledged.
    pub(super) fn backlog_outstanding(&self) -> usize {
        let is_batch = |m: &Message| m.readings > 1;
        self.requested.iter().filter(|m| is_batch(m)).count()
            + self.in_flight.values().filter(|m| is_batch(m)).count()
            + usize::from(self.parked.as_ref().is_some_and(|(_, m)| is_batch(m)))
    }

    /// Messages handed to the client and not yet acknowledged.
    pub(super) fn outstanding(&self) -> usize {
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
                        Some(c) => c.on_delivered(),
                        None => self.spool.ack(m.epoch, m.first_seq, m.readings),
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
            c.on_disconnected();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{outbox, reading};
    use super::*;
    use rumqttc::Publish;

    fn publish(pkid: u16) -> Request {
        let mut p = Publish::new("x", QoS::AtLeastOnce, vec![1]);
        p.pkid = pkid;
        Request::Publish(p)
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
}
