//! The simulation's ground truth written out (`--episodes-out`): one JSON line per
//! finished episode, from every simulated device of the agent.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use hb_shared::DeviceId;

use super::Episode;
use crate::{Error, Result};

/// The simulation's ground truth, one JSON line per finished episode:
/// `{"device":"sim-3","kind":"bradycardia","start_ms":…,"end_ms":…}`.
#[derive(Clone)]
pub struct EpisodeLog {
    file: Arc<Mutex<BufWriter<File>>>,
}

impl EpisodeLog {
    /// Creates (truncates) the file.
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|source| Error::State {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            file: Arc::new(Mutex::new(BufWriter::new(file))),
        })
    }

    /// Appends the episodes of `device` and flushes.
    pub fn write(&self, device: &DeviceId, episodes: &[Episode]) {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            device: &'a str,
            #[serde(flatten)]
            episode: &'a Episode,
        }
        let mut f = self.file.lock().expect("episode log lock");
        for episode in episodes {
            let line = Line {
                device: device.as_str(),
                episode,
            };
            let written = serde_json::to_writer(&mut *f, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| f.write_all(b"\n"));
            if let Err(e) = written {
                tracing::warn!(%device, error = %e, "Cannot write the episode log.");
            }
        }
        let _ = f.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::super::EpisodeKind;
    use super::*;

    #[test]
    fn each_episode_is_one_json_line_naming_its_device() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("episodes.jsonl");
        let log = EpisodeLog::create(&path).unwrap();
        let episode = |kind, start_ms| Episode {
            kind,
            start_ms,
            end_ms: start_ms + 1000,
        };
        let device = DeviceId::new("sim-3").unwrap();
        log.write(&device, &[episode(EpisodeKind::Bradycardia, 1)]);
        log.clone()
            .write(&device, &[episode(EpisodeKind::ContactLoss, 5000)]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"device\":\"sim-3\",\"kind\":\"bradycardia\",\"start_ms\":1,\"end_ms\":1001}\n\
             {\"device\":\"sim-3\",\"kind\":\"contact_loss\",\"start_ms\":5000,\"end_ms\":6000}\n"
        );
    }
}
