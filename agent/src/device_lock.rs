//! One agent process per device state: a second agent on the same state directory
//! would reuse `(epoch, seq)` numbers and corrupt the spool, so it is refused.
//!
//! On Linux all devices share one lock file, `{state_dir}/devices.lock`, with an
//! open-file-description lock (`F_OFD_SETLK`) on one byte per device: the byte at
//! the device directory's inode number, unique on its filesystem. A fleet of 10 000
//! devices then holds one descriptor for its locks instead of 10 000. Elsewhere
//! each device locks a file of its own (`flock`).

use std::fs;
use std::path::Path;

use hb_shared::DeviceId;

use crate::{Error, Result};

/// Descriptors a device's lock keeps open (see the module's documentation).
#[cfg(target_os = "linux")]
pub const LOCK_FILES_PER_DEVICE: u64 = 0;
/// Descriptors a device's lock keeps open (see the module's documentation).
#[cfg(not(target_os = "linux"))]
pub const LOCK_FILES_PER_DEVICE: u64 = 1;

/// The device's state belongs to this process while this is alive.
#[derive(Debug)]
pub struct DeviceLock {
    #[cfg(target_os = "linux")]
    shared: std::sync::Arc<ofd::LockFile>,
    #[cfg(target_os = "linux")]
    byte: i64,
    #[cfg(not(target_os = "linux"))]
    _file: fs::File,
}

fn taken(device: &DeviceId, state_dir: &Path) -> Error {
    Error::DeviceTaken {
        device: device.to_string(),
        state_dir: state_dir.to_owned(),
    }
}

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::State { path, source }
}

/// Takes the state of `device` under `state_dir` for this process, or refuses
/// when another process (or another task of this one) holds it.
pub fn lock(state_dir: &Path, device: &DeviceId) -> Result<DeviceLock> {
    let dir = state_dir.join("devices").join(device.as_str());
    fs::create_dir_all(&dir).map_err(state_err(&dir))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let byte = (fs::metadata(&dir).map_err(state_err(&dir))?.ino() & i64::MAX as u64) as i64;
        let path = state_dir.join("devices.lock");
        let shared = ofd::LockFile::for_path(&path).map_err(state_err(&path))?;
        if !shared.try_lock(byte).map_err(state_err(&path))? {
            return Err(taken(device, state_dir));
        }
        Ok(DeviceLock { shared, byte })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let path = dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(state_err(&path))?;
        #[cfg(unix)]
        {
            if !crate::sys::try_lock_exclusive(&file) {
                return Err(taken(device, state_dir));
            }
        }
        Ok(DeviceLock { _file: file })
    }
}

#[cfg(target_os = "linux")]
impl Drop for DeviceLock {
    fn drop(&mut self) {
        self.shared.unlock(self.byte);
    }
}

#[cfg(target_os = "linux")]
mod ofd {
    use std::collections::HashSet;
    use std::fs::File;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex, Weak};

    /// One open description of a lock file, shared by the devices of this process.
    /// OFD locks of one description never conflict with each other, so the bytes
    /// this process holds are also kept in `held`.
    #[derive(Debug)]
    pub struct LockFile {
        file: File,
        held: Mutex<HashSet<i64>>,
    }

    /// The lock files this process has open, by path.
    static OPEN: Mutex<Vec<(PathBuf, Weak<LockFile>)>> = Mutex::new(Vec::new());

    impl LockFile {
        pub fn for_path(path: &Path) -> std::io::Result<Arc<Self>> {
            let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
            open.retain(|(_, w)| w.strong_count() > 0);
            if let Some(f) = open
                .iter()
                .find(|(p, _)| p == path)
                .and_then(|(_, w)| w.upgrade())
            {
                return Ok(f);
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(path)?;
            let shared = Arc::new(Self {
                file,
                held: Mutex::new(HashSet::new()),
            });
            open.push((path.to_owned(), Arc::downgrade(&shared)));
            Ok(shared)
        }

        /// Takes `byte`; false when this or another process holds it.
        pub fn try_lock(&self, byte: i64) -> std::io::Result<bool> {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            if held.contains(&byte) {
                return Ok(false);
            }
            match self.fcntl(libc::F_WRLCK, byte) {
                Ok(()) => {
                    held.insert(byte);
                    Ok(true)
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        }

        pub fn unlock(&self, byte: i64) {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            if held.remove(&byte) {
                // Closing the description would release it too; an unlock that fails
                // leaves the device locked until this process ends, never unlocked early.
                let _ = self.fcntl(libc::F_UNLCK, byte);
            }
        }

        fn fcntl(&self, kind: libc::c_int, byte: i64) -> std::io::Result<()> {
            crate::sys::set_ofd_lock(&self.file, kind, byte)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_taken_once_and_free_again_when_its_lock_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceId::new("a").unwrap();
        let b = DeviceId::new("b").unwrap();
        let held = lock(dir.path(), &a).unwrap();
        let _other = lock(dir.path(), &b).unwrap();
        assert!(matches!(
            lock(dir.path(), &a),
            Err(Error::DeviceTaken { .. })
        ));
        drop(held);
        assert!(lock(dir.path(), &a).is_ok());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn another_process_holding_the_devices_byte_is_refused() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceId::new("a").unwrap();
        let b = DeviceId::new("b").unwrap();
        drop(lock(dir.path(), &a).unwrap()); // creates the directory and the lock file
                                             // A second open file description stands for another process: OFD locks of
                                             // different descriptions conflict even within one process.
        let foreign = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join("devices.lock"))
            .unwrap();
        let ino = (std::fs::metadata(dir.path().join("devices/a"))
            .unwrap()
            .ino()
            & i64::MAX as u64) as i64;
        crate::sys::set_ofd_lock(&foreign, libc::F_WRLCK, ino).unwrap();
        assert!(matches!(
            lock(dir.path(), &a),
            Err(Error::DeviceTaken { .. })
        ));
        assert!(
            lock(dir.path(), &b).is_ok(),
            "other devices are not affected"
        );
        drop(foreign);
        assert!(lock(dir.path(), &a).is_ok());
    }
}
