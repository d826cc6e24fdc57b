//! The agent's system calls that the standard library has no safe API for: the
//! kernel's clock state, syncing a filesystem, advisory file locks and the
//! open-file limit. This is the one module of the workspace that may use `unsafe`
//! (the workspace lints deny it elsewhere): each call is a thin wrapper that owns
//! every buffer it hands to the kernel, so callers stay safe.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `adjtimex(2)` with no changes: the kernel's clock state (`TIME_OK`,
/// `TIME_ERROR`, a leap second state) or -1 on error.
#[cfg(target_os = "linux")]
pub(crate) fn clock_state() -> libc::c_int {
    // SAFETY: an all-zero timex is valid; with modes = 0 adjtimex only reads the
    // kernel's clock state into the struct we own.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid, exclusively borrowed timex for the whole call.
    unsafe { libc::adjtimex(&mut t) }
}

/// `syncfs(2)`: makes everything written to the filesystem holding `file` durable.
#[cfg(target_os = "linux")]
pub(crate) fn syncfs(file: &File) -> io::Result<()> {
    // SAFETY: syncfs only reads the descriptor, which `file` keeps open.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `sync(2)`: makes everything written to every filesystem durable.
#[cfg(all(unix, not(target_os = "linux")))]
pub(crate) fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// `flock(2)` exclusive and non-blocking: true when `file` is now locked by us.
#[cfg(all(unix, not(target_os = "linux")))]
pub(crate) fn try_lock_exclusive(file: &File) -> bool {
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// `fcntl(F_OFD_SETLK)` on the one byte at `byte` of `file`: `kind` is
/// `F_WRLCK` to lock it (fails with `EAGAIN`/`EACCES` when another open file
/// description holds it) or `F_UNLCK` to release it.
#[cfg(target_os = "linux")]
pub(crate) fn set_ofd_lock(file: &File, kind: libc::c_int, byte: i64) -> io::Result<()> {
    // SAFETY: an all-zero flock is valid; l_pid must be 0 for OFD locks.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = kind as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l.l_start = byte as libc::off_t;
    l.l_len = 1;
    // SAFETY: F_OFD_SETLK only reads the struct we own, on a descriptor `file`
    // keeps open.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &l) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises the soft open-file limit to the hard limit and returns the soft limit
/// now in force (`None`: unlimited or unknown).
#[cfg(unix)]
pub(crate) fn raise_open_file_limit() -> Option<u64> {
    // SAFETY: an all-zero rlimit is valid.
    let mut l: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return None;
    }
    if l.rlim_cur < l.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: l.rlim_max,
            ..l
        };
        // SAFETY: setrlimit only reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            l = raised;
        }
    }
    (l.rlim_cur != libc::RLIM_INFINITY).then_some(l.rlim_cur as u64)
}
