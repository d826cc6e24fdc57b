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
    // SAFETY: adjtimex with modes = 0 only reads the kernel's clock state into the
    // zero-initialised struct we own.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut t) };
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
    #[test]
    fn the_sync_state_can_be_read() {
        // Either answer is valid on a test machine; the call must not fail or panic.
        let _ = super::is_synchronized();
    }
}
