//! Retry policy for reaching services. Uses `backon` (maintained) rather than the
//! unmaintained `backoff` crate (RUSTSEC-2025-0012).

use std::time::Duration;

use backon::ExponentialBuilder;

/// Exponential backoff from `min` to `max` per attempt, with full jitter so that a
/// fleet reconnecting after an outage spreads out, giving up after `attempts`
/// retries (`None`: never give up).
pub fn backoff(min: Duration, max: Duration, attempts: Option<usize>) -> ExponentialBuilder {
    let b = ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter();
    match attempts {
        Some(n) => b.with_max_times(n),
        None => b.without_max_times(),
    }
}

/// The policy for first connections at start-up: about a minute of tries, then a
/// one-line error and a non-zero exit.
pub fn startup() -> ExponentialBuilder {
    backoff(Duration::from_millis(200), Duration::from_secs(5), Some(15))
}
