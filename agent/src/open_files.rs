//! The process's open-file budget. Every device of a fleet holds its MQTT socket
//! for as long as it runs (and its recording, when replaying). A spool keeps the
//! segment it appends to open only while descriptors remain for it, and otherwise
//! opens it for each append. A fleet whose sockets the limit cannot hold is refused
//! at start: running out of descriptors later would lose readings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{Error, Result};

/// Descriptors kept free for what is not per device: the runtime, the spools'
/// reads of their backlog, state files, the episode log, stdio.
pub const RESERVE: u64 = 64;

/// How many spool segments may stay open between appends; clones share one count.
/// The default is unlimited.
#[derive(Debug, Clone)]
pub struct OpenFileBudget {
    free: Arc<AtomicU64>,
}

impl Default for OpenFileBudget {
    fn default() -> Self {
        Self::new(u64::MAX)
    }
}

impl OpenFileBudget {
    /// A budget of `segments` open segment files.
    pub fn new(segments: u64) -> Self {
        Self {
            free: Arc::new(AtomicU64::new(segments)),
        }
    }

    /// A slot for one open segment file, if one is free; given back on drop.
    pub fn take(&self) -> Option<OpenFileSlot> {
        self.free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| f.checked_sub(1))
            .ok()
            .map(|_| OpenFileSlot {
                free: Arc::clone(&self.free),
            })
    }

    /// Slots free now.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Acquire)
    }
}

/// One open segment file's share of the budget.
#[derive(Debug)]
pub struct OpenFileSlot {
    free: Arc<AtomicU64>,
}

impl Drop for OpenFileSlot {
    fn drop(&mut self) {
        self.free.fetch_add(1, Ordering::AcqRel);
    }
}

/// Plans a fleet's descriptors under `limit` (`None`: no limit): refuses a fleet of
/// `devices` holding `per_device` descriptors each that does not fit, and gives
/// the spools' open segments what is left.
pub fn plan(limit: Option<u64>, devices: u64, per_device: u64) -> Result<OpenFileBudget> {
    let Some(limit) = limit else {
        return Ok(OpenFileBudget::default());
    };
    let needed = devices.saturating_mul(per_device).saturating_add(RESERVE);
    if needed > limit {
        return Err(Error::OpenFileLimit {
            devices,
            needed,
            limit,
        });
    }
    Ok(OpenFileBudget::new(limit - needed))
}

/// Raises the soft open-file limit to the hard limit and returns the soft limit
/// now in force (`None`: unlimited or unknown).
#[cfg(unix)]
pub fn raise_limit() -> Option<u64> {
    crate::sys::raise_open_file_limit()
}

/// No limits where there are no rlimits.
#[cfg(not(unix))]
pub fn raise_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_that_fits_leaves_the_rest_to_the_spools() {
        let budget = plan(Some(20_000), 9_000, 2).unwrap();
        assert_eq!(budget.free(), 20_000 - 18_000 - RESERVE);
    }

    #[test]
    fn a_fleet_whose_sockets_do_not_fit_is_refused_with_the_numbers() {
        let e = plan(Some(20_000), 10_000, 2).unwrap_err().to_string();
        assert!(
            e.contains("10000 devices need at least 20064 open files"),
            "{e}"
        );
        assert!(e.contains("the limit is 20000"), "{e}");
    }

    #[test]
    fn no_limit_means_an_unlimited_budget() {
        assert_eq!(plan(None, 1_000_000, 3).unwrap().free(), u64::MAX);
    }

    #[test]
    fn slots_are_shared_by_clones_and_given_back_on_drop() {
        let budget = OpenFileBudget::new(2);
        let other = budget.clone();
        let a = budget.take().unwrap();
        let _b = other.take().unwrap();
        assert!(budget.take().is_none());
        drop(a);
        assert_eq!(other.free(), 1);
        assert!(other.take().is_some());
    }

    #[test]
    fn the_limit_can_be_raised_and_read() {
        // Any answer is valid on a test machine; the call must not fail or panic.
        let _ = raise_limit();
    }
}
