//! Putting a recording's gaps back: [`PacedReplay`] hands out a [`Replay`]'s rows
//! when they are due, with `tokio::time`, scaled by a speed factor.

use std::time::Duration;

use hb_shared::HeartRateMeasurement;
use tokio::time::Instant;

use super::{Replay, ReplayRow};

/// A [`Replay`] at recorded speed times a factor, so a session can be replayed
/// live, or faster for soak tests.
pub struct PacedReplay {
    replay: Replay,
    speed: f64,
    start: Option<Instant>,
    /// The row read but not yet due: keeps [`PacedReplay::next`] cancel-safe.
    pending: Option<ReplayRow>,
}

impl PacedReplay {
    /// Paces `replay` at `speed` times the recorded speed (2.0 = twice as fast;
    /// infinity = as fast as the consumer reads). A speed that is not positive
    /// (zero, negative, NaN) is a configuration mistake: it is logged and 1.0 used,
    /// rather than stalling forever.
    pub fn new(replay: Replay, speed: f64) -> Self {
        let speed = if speed > 0.0 {
            speed
        } else {
            tracing::warn!(speed, "Replay speed must be positive; replaying at 1.0.");
            1.0
        };
        Self {
            replay,
            speed,
            start: None,
            pending: None,
        }
    }

    /// The next measurement once it is due: `offset / speed` after the first call.
    /// A consumer that falls behind gets the overdue rows at once (no drift: each
    /// deadline is computed from the start). Cancel-safe: dropping the future
    /// mid-wait keeps the row for the next call. `None` at the end of the recording.
    ///
    /// Reading the row is a blocking read of the underlying `BufRead`; for a local
    /// file behind a buffer that is a rare, short read, acceptable on the runtime.
    pub async fn next(&mut self) -> Option<HeartRateMeasurement> {
        let start = *self.start.get_or_insert_with(Instant::now);
        if self.pending.is_none() {
            self.pending = self.replay.next();
        }
        let offset_ms = self.pending.as_ref()?.offset_ms;
        tokio::time::sleep_until(due(start, offset_ms, self.speed)).await;
        self.pending.take().map(|row| row.measurement)
    }

    /// The underlying replay, for its [`Replay::skipped`] count and errors.
    pub fn replay(&self) -> &Replay {
        &self.replay
    }
}

/// When a row `offset_ms` into the recording is due at `speed`. Saturates instead
/// of overflowing for absurd gaps or speeds.
fn due(start: Instant, offset_ms: u64, speed: f64) -> Instant {
    // f64 → u64 `as` saturates (and maps NaN to 0): no panic whatever the inputs.
    let nanos = (offset_ms as f64 * 1e6 / speed).round() as u64;
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    start
        .checked_add(Duration::from_nanos(nanos))
        .or_else(|| start.checked_add(far))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use crate::replay::test_support::replay;
    use crate::replay::ReplayFormat;

    use super::*;

    const PACED: &str = "timestamp,bpm\n1764000000000,60\n1764000001000,61\n1764000002500,62\n";

    async fn paced_times(speed: f64) -> Vec<(u128, u16)> {
        let mut paced = PacedReplay::new(replay(PACED, ReplayFormat::Csv), speed);
        // Start late: the schedule counts from the first call, not from `new`.
        tokio::time::sleep(Duration::from_secs(7)).await;
        let start = Instant::now();
        let mut out = Vec::new();
        while let Some(m) = paced.next().await {
            out.push((start.elapsed().as_millis(), m.bpm));
        }
        assert_eq!(paced.replay().skipped(), 0);
        out
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_at_speed_1_follows_the_recording() {
        assert_eq!(paced_times(1.0).await, [(0, 60), (1000, 61), (2500, 62)]);
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_at_speed_10_is_ten_times_faster() {
        assert_eq!(paced_times(10.0).await, [(0, 60), (100, 61), (250, 62)]);
    }

    #[tokio::test(start_paused = true)]
    async fn infinite_speed_does_not_wait_and_a_bad_speed_means_1() {
        assert_eq!(
            paced_times(f64::INFINITY).await,
            [(0, 60), (0, 61), (0, 62)]
        );
        for bad in [0.0, -2.0, f64::NAN] {
            assert_eq!(paced_times(bad).await, [(0, 60), (1000, 61), (2500, 62)]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_consumer_catches_up_without_drift() {
        let mut paced = PacedReplay::new(replay(PACED, ReplayFormat::Csv), 1.0);
        let start = Instant::now();
        assert_eq!(paced.next().await.map(|m| m.bpm), Some(60));
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert_eq!(paced.next().await.map(|m| m.bpm), Some(61));
        assert_eq!(start.elapsed().as_millis(), 2000);
        assert_eq!(paced.next().await.map(|m| m.bpm), Some(62));
        assert_eq!(start.elapsed().as_millis(), 2500);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_next_keeps_its_row() {
        let mut paced = PacedReplay::new(replay(PACED, ReplayFormat::Csv), 1.0);
        let start = Instant::now();
        assert_eq!(paced.next().await.map(|m| m.bpm), Some(60));
        let early = tokio::time::timeout(Duration::from_millis(400), paced.next()).await;
        assert!(early.is_err());
        assert_eq!(paced.next().await.map(|m| m.bpm), Some(61));
        assert_eq!(start.elapsed().as_millis(), 1000);
    }

    #[test]
    fn due_saturates_instead_of_overflowing() {
        let start = Instant::now();
        assert!(due(start, u64::MAX, 1e-300) > start);
        assert_eq!(due(start, 1234, f64::INFINITY), start);
    }
}
