//! Arrivals of a Poisson process (activity bursts, episodes, dropouts), counted
//! until the simulator has room to start what arrived.

use super::noise::Noise;

/// Milliseconds in an hour: the rates are configured per hour.
pub(super) const MS_PER_HOUR: f64 = 3_600_000.0;

/// Arrivals that may wait while another episode runs; more are dropped.
const MAX_PENDING: u32 = 2;

/// Arrivals of a Poisson process, counted until something takes them.
pub(super) struct Arrivals {
    /// The process's own random stream; what arrives draws its shape from it too.
    pub(super) noise: Noise,
    rate_per_ms: f64,
    next_ms: f64,
    pending: u32,
}

impl Arrivals {
    /// `per_hour` arrivals an hour on average; zero, negative or non-finite means
    /// none.
    pub(super) fn new(mut noise: Noise, per_hour: f64) -> Self {
        let rate_per_ms = if per_hour.is_finite() && per_hour > 0.0 {
            per_hour / MS_PER_HOUR
        } else {
            0.0
        };
        let next_ms = noise.exponential(rate_per_ms);
        Self {
            noise,
            rate_per_ms,
            next_ms,
            pending: 0,
        }
    }

    /// Counts the arrivals up to simulated time `now`.
    pub(super) fn poll(&mut self, now: f64) {
        while self.next_ms <= now {
            if self.pending < MAX_PENDING {
                self.pending += 1;
                self.next_ms += self.noise.exponential(self.rate_per_ms);
            } else {
                // Further arrivals would be dropped; memorylessness lets us skip them.
                self.next_ms = now + self.noise.exponential(self.rate_per_ms);
            }
        }
    }

    /// Takes one pending arrival, if any.
    pub(super) fn take(&mut self) -> bool {
        let due = self.pending > 0;
        self.pending = self.pending.saturating_sub(1);
        due
    }
}
