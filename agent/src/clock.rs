//! Whether the system clock is synchronised (NTP), so that each reading can say if
//! its timestamp is trustworthy. A Raspberry Pi has no real-time clock: after a
//! power cut it runs on a wrong clock until NTP syncs, and the collector then
//! corrects those timestamps instead of rejecting them.

/// True when the kernel reports the clock as synchronised (`adjtimex` is not in
/// `TIME_ERROR`). On systems without `adjtimex`, assumed true.
///
/// Asked once per reading by every device of a fleet, so the answer is cached
/// for a second: the kernel state changes on NTP's time scale, not per reading.
#[cfg(target_os = "linux")]
pub fn is_synchronized() -> bool {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // Milliseconds since BASE of the last check, plus one (0 = never checked).
    static CHECKED_AT: AtomicU64 = AtomicU64::new(0);
    static SYNCED: AtomicBool = AtomicBool::new(true);
    let now = BASE.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
    let last = CHECKED_AT.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) < Duration::from_secs(1).as_millis() as u64 {
        return SYNCED.load(Ordering::Relaxed);
    }
    let synced = query_synchronized();
    SYNCED.store(synced, Ordering::Relaxed);
    CHECKED_AT.store(now, Ordering::Relaxed);
    synced
}

#[cfg(target_os = "linux")]
fn query_synchronized() -> bool {
    synchronized_from(crate::sys::clock_state())
}

/// What `adjtimex`'s return value says: an error (-1) or `TIME_ERROR` (the
/// kernel's "clock not synchronised") is unsynchronised; `TIME_OK` and the leap
/// second states are synchronised.
#[cfg(target_os = "linux")]
fn synchronized_from(state: libc::c_int) -> bool {
    state >= 0 && state != libc::TIME_ERROR
}

/// True when the kernel reports the clock as synchronised. On systems without
/// `adjtimex`, assumed true.
#[cfg(not(target_os = "linux"))]
pub fn is_synchronized() -> bool {
    true
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn adjtimex_states_map_to_synchronised_or_not() {
        use super::synchronized_from;
        assert!(synchronized_from(libc::TIME_OK));
        assert!(synchronized_from(libc::TIME_INS));
        assert!(synchronized_from(libc::TIME_WAIT));
        assert!(!synchronized_from(libc::TIME_ERROR));
        assert!(!synchronized_from(-1));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_cached_answer_is_the_kernels() {
        // The kernel's state does not change within this test on any sane machine.
        let kernel = super::query_synchronized();
        assert_eq!(super::is_synchronized(), kernel);
        assert_eq!(super::is_synchronized(), kernel, "from the cache");
    }
}
