//! Rate limits for log lines that a remote party can trigger (a misbehaving device
//! sending bad messages, a strap flooding notifications): each kind of line is
//! logged at most a few times per period, and the first line logged after a quiet
//! spell says how many similar ones were left out. The events themselves are
//! still counted in full by the metrics.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Per-key limits: at most `burst` lines per `period` for each key.
#[derive(Debug)]
pub struct LogLimit {
    burst: u32,
    period: Duration,
    windows: Mutex<HashMap<&'static str, Window>>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    /// At most `burst` lines per key per `period`.
    pub fn new(burst: u32, period: Duration) -> Self {
        Self {
            burst,
            period,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// The default for per-message warnings: 10 lines per key per minute.
    pub fn per_minute() -> Self {
        Self::new(10, Duration::from_secs(60))
    }

    /// Whether to log an event of kind `key` now. `Some(n)`: log it, and say that
    /// `n` similar lines were suppressed before it; `None`: leave it out. Keys are
    /// static (reason codes), so the map stays as small as their set.
    pub fn check(&self, key: &'static str) -> Option<u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &'static str, now: Instant) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = windows.entry(key).or_insert(Window {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        if now.duration_since(w.started) >= self.period {
            w.started = now;
            w.logged = 0;
        }
        if w.logged < self.burst {
            w.logged += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_a_burst_per_period_and_the_rest_counted() {
        let limit = LogLimit::new(10, Duration::from_secs(60));
        let start = Instant::now();
        let logged = (0..100_000)
            .filter(|_| limit.check_at("undecodable", start).is_some())
            .count();
        assert_eq!(logged, 10);
        // Another key has a budget of its own.
        assert_eq!(limit.check_at("too_large", start), Some(0));
        // The next period's first line reports what was left out.
        let later = start + Duration::from_secs(60);
        assert_eq!(limit.check_at("undecodable", later), Some(99_990));
        assert_eq!(limit.check_at("undecodable", later), Some(0));
    }
}
