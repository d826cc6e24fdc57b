//! Retry policy for reaching services, and the pause between tries that a stop
//! cuts short. Uses `backon` (maintained) rather than the unmaintained `backoff`
//! crate (RUSTSEC-2025-0012).

use std::time::Duration;

use backon::ExponentialBuilder;
use tokio_util::sync::CancellationToken;

/// Exponential backoff from `min` to `max` per attempt, with full jitter so that a
/// fleet reconnecting after an outage spreads out, giving up after `attempts`
/// retries (`None`: never give up).
pub fn backoff(min: Duration, max: Duration, attempts: Option<usize>) -> ExponentialBuilder {
    let b = doubling(min, max).with_jitter();
    match attempts {
        Some(n) => b.with_max_times(n),
        None => b,
    }
}

/// `min`, twice that, and so on up to `max`, then `max` for ever: no jitter and no
/// limit, for retries inside a running service (one process's own retries need
/// no spreading out; the caller decides when to give up).
pub fn doubling(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
}

/// The policy for first connections at start-up: about a minute of tries, then a
/// one-line error and a non-zero exit.
pub fn startup() -> ExponentialBuilder {
    backoff(Duration::from_millis(200), Duration::from_secs(5), Some(15))
}

/// Sleeps for `delay` unless `token` is (or gets) cancelled first. Returns true
/// when the token cut it short, false after the whole delay.
pub async fn sleep_unless_cancelled(delay: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = token.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    #[test]
    fn doubling_doubles_up_to_the_cap_and_never_gives_up() {
        let delays = doubling(Duration::from_millis(100), Duration::from_secs(5)).build();
        // backon multiplies in f32: 200.000003 ms for 200 ms.
        let ms: Vec<_> = delays.take(9).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[tokio::test]
    async fn a_sleep_runs_its_whole_delay_unless_cancelled() {
        let token = CancellationToken::new();
        let started = std::time::Instant::now();
        assert!(!sleep_unless_cancelled(Duration::from_millis(20), &token).await);
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn a_cancellation_cuts_a_sleep_short() {
        let token = CancellationToken::new();
        let canceller = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            canceller.cancel();
        });
        let hour = Duration::from_secs(3600);
        let stopped = tokio::time::timeout(
            Duration::from_secs(10),
            sleep_unless_cancelled(hour, &token),
        );
        assert_eq!(stopped.await, Ok(true));
        // Already cancelled: no sleep at all.
        assert!(sleep_unless_cancelled(hour, &token).await);
    }
}
