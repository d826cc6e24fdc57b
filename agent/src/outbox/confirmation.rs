//! End-to-end confirmation in the outbox (`--confirm stored`): the device's
//! `stored` subscription, the storage confirmations that release readings from
//! the spool, and the readings to send again when their confirmation is overdue.

use std::time::{Duration, Instant};

use hb_shared::{Reading, StoredConfirmation, MAX_READINGS_PER_ENVELOPE};
use rumqttc::QoS;

use super::Outbox;
use crate::confirm::Resender;

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

    /// How long the device has waited for confirmations without any arriving
    /// (zero when nothing sent is unconfirmed).
    pub(super) fn lag(&self) -> Duration {
        self.resender.lag(Instant::now())
    }

    /// The broker acknowledged readings: they now wait for their confirmation.
    pub(super) fn on_delivered(&mut self) {
        self.resender.on_delivered(Instant::now());
    }

    /// The connection dropped: nothing can be subscribed until the next one.
    pub(super) fn on_disconnected(&mut self) {
        self.connected = false;
    }
}

impl Outbox {
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

    /// Subscribes to the `stored` topic if that is still to do, and lets the
    /// resender note how far readings were handed out.
    pub(super) fn tend_confirmation(&mut self) {
        self.subscribe();
        if let Some(c) = &mut self.confirmation {
            c.resender
                .tick(Instant::now(), self.spool.handed_out_bound());
        }
    }

    /// The broker refused the `stored` subscription (its ACL): no reading can be
    /// confirmed, so every one stays in the spool and is resent. Said once per
    /// device.
    pub fn on_subscription_refused(&mut self) {
        if let Some(c) = &mut self.confirmation {
            if !std::mem::replace(&mut c.refused_warned, true) {
                tracing::warn!(device = %self.device, topic = %c.topic, "The broker refused the storage-confirmation subscription; readings stay in the spool (check the ACL, or run with --confirm puback).");
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

    /// The next run of readings whose storage confirmation is overdue, if a
    /// resend pass is on and the backlog lane has room.
    pub(super) fn next_unconfirmed(
        &mut self,
        backlog_full: bool,
    ) -> crate::Result<Option<Vec<Reading>>> {
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
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{confirming, reading};
    use super::*;
    use hb_shared::{codec, DeviceId};

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
