//! End-to-end confirmation on the device side. With `--confirm stored` (the
//! default) a reading leaves the spool only when the collector confirmed that
//! PostgreSQL holds it (MQTT `{root}/v1/devices/{id}/stored`, see
//! [`hb_shared::StoredConfirmation`]); the broker's PUBACK only paces the
//! in-flight window. A broker that acknowledged a reading and then lost it
//! (killed between snapshots, or restarted without the bridge's shared
//! subscription) costs a resend, not the reading.
//!
//! [`Resender`] decides what to send again: every `--confirm-timeout-s` it notes
//! how far the spool had handed readings out; at the next such moment every
//! reading handed out before the previous one and still unconfirmed has waited at
//! least the timeout, and one pass resends them (one envelope at a time, behind
//! live data). A pass that resent something without any confirmation arriving
//! meanwhile doubles the interval (up to 16×), so a long collector outage does not
//! become a resend storm.

use std::time::{Duration, Instant};

/// When a reading may leave the agent's spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ConfirmMode {
    /// When the collector confirmed that PostgreSQL holds it (end to end).
    #[default]
    Stored,
    /// When the MQTT broker acknowledged it (PUBACK); for deployments without the
    /// back channel. A broker that loses acknowledged messages loses readings.
    Puback,
}

/// Longest resend interval, as a multiple of the confirmation timeout.
const MAX_BACKOFF: u32 = 16;

/// A resend pass: unconfirmed readings at or after `from` and before `upto`, in
/// `(epoch, seq)` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Next `(epoch, seq)` to look at.
    pub from: (u32, u32),
    /// Readings from here on have not waited long enough.
    pub upto: (u32, u32),
}

/// See the module documentation.
#[derive(Debug)]
pub struct Resender {
    timeout: Duration,
    next_sweep: Instant,
    previous_bound: Option<(u32, u32)>,
    pass: Option<Pass>,
    backoff: u32,
    resent_since_sweep: bool,
    confirmed_since_sweep: bool,
    waiting_since: Option<Instant>,
}

impl Resender {
    /// Sweeps every `timeout`, starting one `timeout` after `now`.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Self {
            timeout,
            next_sweep: now + timeout,
            previous_bound: None,
            pass: None,
            backoff: 1,
            resent_since_sweep: false,
            confirmed_since_sweep: false,
            waiting_since: None,
        }
    }

    /// At a sweep moment, starts a pass over what was handed out before the
    /// previous sweep. `handed_out` is the spool's bound now.
    pub fn tick(&mut self, now: Instant, handed_out: (u32, u32)) {
        if now < self.next_sweep {
            return;
        }
        if self.resent_since_sweep && !self.confirmed_since_sweep {
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        } else if self.confirmed_since_sweep || !self.resent_since_sweep {
            self.backoff = 1;
        }
        self.resent_since_sweep = false;
        self.confirmed_since_sweep = false;
        if let Some(upto) = self.previous_bound {
            self.pass = Some(Pass { from: (0, 0), upto });
        }
        self.previous_bound = Some(handed_out);
        self.next_sweep = now + self.timeout * self.backoff;
    }

    /// The pass in progress.
    pub fn pass(&self) -> Option<Pass> {
        self.pass
    }

    /// Readings up to `last` were resent.
    pub fn resent_through(&mut self, last: (u32, u32)) {
        self.resent_since_sweep = true;
        if let Some(p) = &mut self.pass {
            p.from = (last.0, last.1.saturating_add(1));
            if last.1 == u32::MAX {
                p.from = (last.0.saturating_add(1), 0);
            }
        }
    }

    /// The connection is back: whatever backoff grew while nothing could be
    /// delivered, the next sweep comes within one timeout.
    pub fn on_reconnected(&mut self, now: Instant) {
        self.backoff = 1;
        self.next_sweep = self.next_sweep.min(now + self.timeout);
    }

    /// Nothing more to resend in this pass.
    pub fn finish_pass(&mut self) {
        self.pass = None;
    }

    /// The broker acknowledged readings that now wait for their confirmation.
    pub fn on_delivered(&mut self, now: Instant) {
        self.waiting_since.get_or_insert(now);
    }

    /// A confirmation released readings; `still_waiting` sent ones remain.
    pub fn on_confirmed(&mut self, now: Instant, still_waiting: bool) {
        self.confirmed_since_sweep = true;
        self.waiting_since = still_waiting.then_some(now);
    }

    /// How long the device has waited for confirmations without any arriving
    /// (zero when nothing sent is unconfirmed).
    pub fn lag(&self, now: Instant) -> Duration {
        self.waiting_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// The current resend interval as a multiple of the timeout.
    #[cfg(test)]
    pub fn backoff(&self) -> u32 {
        self.backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(60);

    #[test]
    fn readings_handed_out_before_the_previous_sweep_are_resent_at_the_next() {
        let t0 = Instant::now();
        let mut r = Resender::new(T, t0);
        r.tick(t0 + T / 2, (1, 5));
        assert_eq!(r.pass(), None, "not yet a sweep");
        r.tick(t0 + T, (1, 10));
        assert_eq!(r.pass(), None, "the first sweep only notes the bound");
        r.tick(t0 + 2 * T, (1, 70));
        assert_eq!(
            r.pass(),
            Some(Pass {
                from: (0, 0),
                upto: (1, 10)
            })
        );
        r.resent_through((1, 3));
        assert_eq!(r.pass().unwrap().from, (1, 4));
        r.finish_pass();
        assert_eq!(r.pass(), None);
    }

    #[test]
    fn resending_without_confirmations_backs_off_and_a_confirmation_resets_it() {
        let t0 = Instant::now();
        let mut r = Resender::new(T, t0);
        let mut now = t0 + T;
        r.tick(now, (1, 10));
        for expected in [1, 2, 4, 8, 16, 16] {
            now += T * r.backoff();
            r.tick(now, (1, 10));
            assert_eq!(r.backoff(), expected);
            r.resent_through((1, 9));
        }
        r.on_confirmed(now, false);
        now += T * r.backoff();
        r.tick(now, (1, 10));
        assert_eq!(r.backoff(), 1);
    }

    #[test]
    fn the_lag_counts_from_the_first_unconfirmed_delivery_or_the_last_progress() {
        let t0 = Instant::now();
        let mut r = Resender::new(T, t0);
        assert_eq!(r.lag(t0), Duration::ZERO);
        r.on_delivered(t0);
        r.on_delivered(t0 + Duration::from_secs(1));
        assert_eq!(r.lag(t0 + Duration::from_secs(5)), Duration::from_secs(5));
        r.on_confirmed(t0 + Duration::from_secs(6), true);
        assert_eq!(r.lag(t0 + Duration::from_secs(7)), Duration::from_secs(1));
        r.on_confirmed(t0 + Duration::from_secs(8), false);
        assert_eq!(r.lag(t0 + Duration::from_secs(9)), Duration::ZERO);
    }
}
