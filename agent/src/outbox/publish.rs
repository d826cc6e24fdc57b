//! What the outbox hands to the client next: messages to resend, then the
//! priority lane (events, status), then a live reading ahead of any backlog, then
//! the backlog in envelopes of up to 256 readings.

use hb_shared::{codec, Envelope, Presence, Reading, Readings, MAX_READINGS_PER_ENVELOPE};
use rumqttc::QoS;

use super::{
    Message, Outbox, LIVE_WINDOW_MS, MAX_BACKLOG_OUTSTANDING, MAX_OUTSTANDING, MAX_PRIORITY,
};

impl Outbox {
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
        self.tend_confirmation();
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
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{outbox, reading};
    use super::*;

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
}
