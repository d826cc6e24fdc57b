//! Durability: one `syncfs` for the whole fleet's spools at most every sync
//! interval, rather than an fsync per device and interval.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::writer;

/// Makes every spool under `state_dir` durable every `interval` while anything was
/// appended, until `shutdown`. On Linux one `syncfs(2)` covers the filesystem
/// holding the state directory, whatever the number of devices; elsewhere `sync(2)`.
pub async fn sync_periodically(
    state_dir: PathBuf,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut synced = writer::writes();
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            // One last sync for what was appended since the previous one.
            _ = shutdown.cancelled() => true,
        };
        let now = writer::writes();
        if now == synced {
            if last {
                return;
            }
            continue;
        }
        let dir = state_dir.clone();
        match tokio::task::spawn_blocking(move || sync_filesystem(&dir)).await {
            Ok(Ok(())) => synced = now,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Spool sync failed; readings may not survive a power cut.")
            }
            Err(e) => tracing::error!(error = %e, "Spool sync task failed."),
        }
        if last {
            return;
        }
    }
}

#[cfg(target_os = "linux")]
fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    crate::sys::syncfs(&File::open(dir)?)
}

#[cfg(not(target_os = "linux"))]
fn sync_filesystem(_dir: &Path) -> std::io::Result<()> {
    crate::sys::sync();
    Ok(())
}
