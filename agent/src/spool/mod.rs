//! The per-device spool: every reading is appended here as it is offered to
//! MQTT, and stays until it is acknowledged (by the broker, or as stored by the
//! collector), across broker outages, network cuts, agent restarts and power loss.
//!
//! # On disk
//! `{state_dir}/devices/{device}/spool/{epoch:010}-{first_seq:010}.seg`: segment
//! files of up to `segment_readings` readings of one epoch, each record
//! `[len: u32 LE][crc32: u32 LE][postcard Reading]`. A segment is deleted once every
//! reading in it was acknowledged; nothing else is ever rewritten, so a crash can
//! only leave a torn record at the end of a segment. Recovery reads every segment
//! in order; a damaged stretch (a record whose length or checksum is wrong) is
//! skipped byte by byte until valid records resume, counted, and never fatal, and
//! the segment is rewritten as runs of the readings kept. Recovered readings were not known to
//! be acknowledged, so they are sent again (the `(device, epoch, seq)` key absorbs
//! the ones that had arrived).
//!
//! Appends are queued to the agent's spool writer thread ([`SpoolWriter`]), which
//! writes them within milliseconds while the disk keeps up, and never on the
//! runtime thread; [`sync_periodically`] makes them durable at most every
//! `sync_interval` (a power cut loses at most that window): one `syncfs` for the
//! whole fleet's spools rather than an fsync per device and interval. Reading back
//! stops at what the writer has written.
//!
//! # In memory
//! Only bookkeeping per segment and the newest unsent readings (`HOT`); a backlog
//! is read back from disk in order, so an hour-long outage of a 1000-device fleet
//! costs disk, not RAM.
//!
//! # When full
//! `capacity` bounds the readings not yet acknowledged. [`FullPolicy::DropOldest`]
//! (default) deletes the oldest segment; [`FullPolicy::DropNewest`] refuses new
//! readings. Either way the dropped readings are counted and reported.
//!
//! # Layout
//! - this file: the [`Spool`] type, its settings and counters, appending, and
//!   marking what was acknowledged or confirmed;
//! - `segment`: segment files (naming, the acknowledged bitmap, starting a new one,
//!   dropping and deleting them once all their readings are released, settling
//!   failed writes);
//! - `record`: the record format and its checksum;
//! - `backlog`: handing out unsent readings and reading them back from disk;
//! - `recovery`: [`Spool::open`], which takes over a spool left by an earlier run
//!   and repairs damaged segments;
//! - `sync`: the periodic `syncfs` that makes the fleet's spools durable;
//! - `writer`: the thread that writes every spool, off the runtime thread.

mod backlog;
mod record;
mod recovery;
mod segment;
mod sync;
mod writer;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hb_shared::Reading;

use crate::open_files::OpenFileBudget;
use crate::{Error, Result};
use record::encode_record;
use segment::Segment;
use writer::SegmentFile;

pub use sync::sync_periodically;
pub use writer::SpoolWriter;

/// Newest unsent readings kept in memory; older ones are read back from disk.
const HOT: usize = 64;

/// What happens when the spool holds `capacity` unacknowledged readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FullPolicy {
    /// Delete the oldest segment (its unacknowledged readings are counted as dropped).
    #[default]
    DropOldest,
    /// Keep what is stored and drop new readings (counted).
    DropNewest,
}

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Most unacknowledged readings kept.
    pub capacity: usize,
    /// Readings per segment file.
    pub segment_readings: u32,
    /// Longest time an appended reading may wait for fsync.
    pub sync_interval: Duration,
    /// What to do when full.
    pub full_policy: FullPolicy,
    /// Segments that may stay open between appends, shared by the fleet's spools.
    pub open_files: OpenFileBudget,
    /// The thread that writes the fleet's spools.
    pub writer: SpoolWriter,
}

/// Counters reported in the device's status and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStats {
    /// Readings recovered from disk at start.
    pub recovered: u64,
    /// Torn or corrupt segment tails skipped at start.
    pub corrupt_tails: u64,
    /// Bytes in those tails.
    pub corrupt_bytes: u64,
    /// Readings dropped because the spool was full.
    pub dropped: u64,
}

/// Where the next unsent reading starts: a segment (by its first `(epoch, seq)`),
/// a byte offset in it, and the sequence number of the record there (one past the
/// segment's last at its end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    epoch: u32,
    first_seq: u32,
    offset: u64,
    seq: u32,
}

impl Cursor {
    /// The start of segment `s`.
    fn start_of(s: &Segment) -> Self {
        Cursor {
            epoch: s.epoch,
            first_seq: s.first_seq,
            offset: 0,
            seq: s.first_seq,
        }
    }
}

struct Hot {
    reading: Reading,
    /// Position just after this record.
    end: Cursor,
    sent_early: bool,
}

/// See the module documentation.
pub struct Spool {
    dir: PathBuf,
    config: SpoolConfig,
    segments: VecDeque<Segment>,
    /// The segment appended to, when there is one.
    active: Option<Arc<SegmentFile>>,
    cursor: Option<Cursor>,
    unsent: u64,
    hot: VecDeque<Hot>,
    stats: SpoolStats,
}

impl Spool {
    /// Appends a reading: queued to the writer at once, fsynced within the sync
    /// interval. Returns false when the reading was refused by
    /// [`FullPolicy::DropNewest`].
    pub fn append(&mut self, reading: &Reading) -> Result<bool> {
        self.settle_failed_writes();
        if self.unacked() >= self.config.capacity as u64 {
            match self.config.full_policy {
                FullPolicy::DropNewest => {
                    self.stats.dropped += 1;
                    return Ok(false);
                }
                FullPolicy::DropOldest => self.drop_oldest(),
            }
        }
        let needs_new = match self.segments.back() {
            None => true,
            Some(s) => {
                self.active.is_none()
                    || s.epoch != reading.epoch
                    || s.records >= self.config.segment_readings
                    || reading.seq != s.first_seq + s.records
            }
        };
        if needs_new {
            self.rotate(reading.epoch, reading.seq);
        }
        let record = encode_record(reading).map_err(|detail| Error::Spool {
            path: self.dir.clone(),
            detail,
        })?;
        let seg = self.segments.back_mut().expect("rotate made a segment");
        let active = self.active.as_ref().expect("rotate made the file");
        let record_len = record.len() as u64;
        self.config.writer.append(active, record);
        seg.records += 1;
        seg.bytes += record_len;
        let end = Cursor {
            epoch: seg.epoch,
            first_seq: seg.first_seq,
            offset: seg.bytes,
            seq: reading.seq.wrapping_add(1),
        };
        if self.cursor.is_none() {
            self.cursor = Some(Cursor {
                offset: end.offset - record_len,
                seq: reading.seq,
                ..end
            });
        }
        self.unsent += 1;
        self.hot.push_back(Hot {
            reading: reading.clone(),
            end,
            sent_early: false,
        });
        if self.hot.len() > HOT {
            self.hot.pop_front();
        }
        Ok(true)
    }

    /// Readings appended but not yet handed out.
    pub fn unsent(&self) -> u64 {
        self.unsent
    }

    /// Readings not yet acknowledged (handed out or not).
    pub fn unacked(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| u64::from(s.records - s.acked_count))
            .sum()
    }

    /// The highest epoch found in the spool (0 when empty): the next epoch must be
    /// above it even if the epoch file was lost.
    pub fn max_epoch(&self) -> u32 {
        self.segments.iter().map(|s| s.epoch).max().unwrap_or(0)
    }

    /// `count` readings from `(epoch, first_seq)` on are in safe hands (the
    /// broker's PUBACK, or a storage confirmation). Segments whose readings are all
    /// acknowledged are deleted.
    pub fn ack(&mut self, epoch: u32, first_seq: u32, count: u32) {
        if count > 0 {
            self.confirm(epoch, first_seq, first_seq.saturating_add(count - 1));
        }
    }

    /// Readings `first..=last` of `epoch` are stored downstream: they are released.
    /// Returns how many of them this spool held unacknowledged.
    pub fn confirm(&mut self, epoch: u32, first: u32, last: u32) -> u64 {
        let mut released = 0;
        for s in self.segments.iter_mut().filter(|s| s.epoch == epoch) {
            if s.records == 0 {
                continue;
            }
            let seg_last = s.first_seq + (s.records - 1);
            let (from, to) = (first.max(s.first_seq), last.min(seg_last));
            if from > to {
                continue;
            }
            let before = s.acked_count;
            for seq in from..=to {
                s.ack(seq);
            }
            released += u64::from(s.acked_count - before);
        }
        if released > 0 {
            self.release_acknowledged();
        }
        released
    }

    /// Counters so far.
    pub fn stats(&self) -> SpoolStats {
        self.stats
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::State { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hb_shared::Contact;
    use std::fs;

    pub(super) fn config(
        capacity: usize,
        segment_readings: u32,
        full_policy: FullPolicy,
    ) -> SpoolConfig {
        SpoolConfig {
            capacity,
            segment_readings,
            sync_interval: Duration::from_millis(0),
            full_policy,
            open_files: OpenFileBudget::default(),
            writer: SpoolWriter::inline(),
        }
    }

    pub(super) fn reading(epoch: u32, seq: u32) -> Reading {
        let (ts_ms, bpm) = (1_764_000_000_000 + i64::from(seq), 60 + (seq % 50) as u16);
        Reading {
            mono_ms: u64::from(seq),
            ..Reading::new(epoch, seq, ts_ms, bpm, Contact::Detected)
        }
    }

    pub(super) fn seqs(batch: &[Reading]) -> Vec<u32> {
        batch.iter().map(|r| r.seq).collect()
    }

    pub(super) fn segment_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
    pub(super) fn threaded(capacity: usize, segment_readings: u32) -> SpoolConfig {
        SpoolConfig {
            writer: SpoolWriter::default(),
            ..config(capacity, segment_readings, FullPolicy::DropOldest)
        }
    }

    #[test]
    fn drop_newest_refuses_new_readings_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), config(10, 100, FullPolicy::DropNewest)).unwrap();
        for seq in 0..12 {
            s.append(&reading(1, seq)).unwrap();
        }
        assert_eq!(s.stats().dropped, 2);
        assert_eq!(
            seqs(&s.next_batch(100).unwrap()),
            (0..10).collect::<Vec<_>>()
        );
    }
    #[test]
    fn a_confirmed_range_releases_only_its_own_epoch_and_readings() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), config(1000, 10, FullPolicy::DropOldest)).unwrap();
        for seq in 0..25 {
            s.append(&reading(1, seq)).unwrap();
        }
        let _ = s.next_batch(100).unwrap();
        assert_eq!(s.confirm(2, 0, 100), 0, "another epoch");
        assert_eq!(s.confirm(1, 5, 14), 10);
        assert_eq!(s.confirm(1, 5, 14), 0, "a repeat releases nothing");
        assert_eq!(s.unacked(), 15);
        assert_eq!(s.confirm(1, 0, 4), 5);
        assert_eq!(
            segment_files(dir.path()),
            ["0000000001-0000000010.seg", "0000000001-0000000020.seg"],
            "a fully confirmed closed segment is deleted"
        );
        assert_eq!(s.confirm(1, 15, u32::MAX), 10);
        assert_eq!(s.unacked(), 0);
    }
}
