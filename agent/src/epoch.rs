//! The per-device boot counter. Each start of the agent takes the next epoch and
//! persists it before any reading of that epoch exists (temp file, fsync, rename,
//! fsync of the directory), so `(device, epoch, seq)` is never reused, even after
//! a power cut at any instant.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use hb_shared::DeviceId;

use crate::{Error, Result};

/// Reads the device's last epoch (none yet: 0), stores and returns the next one,
/// which is also above `floor` (the highest epoch still in the spool, in case the
/// epoch file was lost).
pub fn next_epoch(state_dir: &Path, device: &DeviceId, floor: u32) -> Result<u32> {
    let dir = state_dir.join("devices").join(device.as_str());
    fs::create_dir_all(&dir).map_err(|source| Error::State {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join("epoch");
    let last = match fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u32>()
            .map_err(|e| Error::CorruptState {
                path: path.clone(),
                detail: e.to_string(),
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(source) => return Err(Error::State { path, source }),
    };
    let next = last
        .max(floor)
        .checked_add(1)
        .ok_or_else(|| Error::EpochExhausted(device.to_string()))?;
    write_durably(&path, format!("{next}\n").as_bytes())?;
    Ok(next)
}

/// Replaces `path` atomically and durably.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |p: &Path| {
        let p: PathBuf = p.to_owned();
        move |source| Error::State { path: p, source }
    };
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_count_up_per_device_and_survive_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceId::new("a").unwrap();
        let b = DeviceId::new("b").unwrap();
        assert_eq!(next_epoch(dir.path(), &a, 0).unwrap(), 1);
        assert_eq!(next_epoch(dir.path(), &a, 0).unwrap(), 2);
        assert_eq!(next_epoch(dir.path(), &b, 0).unwrap(), 1);
        assert_eq!(next_epoch(dir.path(), &a, 0).unwrap(), 3);
    }

    #[test]
    fn a_lost_epoch_file_never_goes_below_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceId::new("a").unwrap();
        assert_eq!(next_epoch(dir.path(), &a, 7).unwrap(), 8);
    }

    #[test]
    fn a_corrupt_epoch_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceId::new("a").unwrap();
        next_epoch(dir.path(), &a, 0).unwrap();
        fs::write(dir.path().join("devices/a/epoch"), "garbage").unwrap();
        assert!(matches!(
            next_epoch(dir.path(), &a, 0),
            Err(Error::CorruptState { .. })
        ));
    }
}
