//! The wall clock, for timestamps that leave the process, and the conversions
//! between `SystemTime` and Unix milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a clock set before 1970).
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// Milliseconds since the Unix epoch of `t`: 0 before 1970, `i64::MAX` for a time
/// beyond it (some 292 million years on).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The time `ms` milliseconds after the Unix epoch; the epoch itself for a
/// negative `ms`.
pub fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }

    #[test]
    fn milliseconds_convert_both_ways_unchanged() {
        for ms in [0, 1, 1_764_000_000_123, i64::MAX] {
            assert_eq!(unix_ms(from_unix_ms(ms)), ms);
        }
        let t = UNIX_EPOCH + Duration::from_millis(1_764_000_000_123);
        assert_eq!(from_unix_ms(unix_ms(t)), t);
    }

    #[test]
    fn sub_millisecond_parts_are_dropped() {
        let t = UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_999);
        assert_eq!(unix_ms(t), 1_764_000_000_123);
    }

    #[test]
    fn a_time_before_1970_is_0_and_a_negative_count_is_the_epoch() {
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(from_unix_ms(-1), UNIX_EPOCH);
        assert_eq!(from_unix_ms(i64::MIN), UNIX_EPOCH);
    }

    #[test]
    fn a_time_beyond_i64_milliseconds_saturates() {
        // Representable where SystemTime holds 64-bit seconds (Linux).
        if let Some(t) = UNIX_EPOCH.checked_add(Duration::from_secs(1 << 60)) {
            assert_eq!(unix_ms(t), i64::MAX);
        }
    }
}
