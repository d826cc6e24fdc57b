//! The per-device store-and-forward spool: every reading is appended here as it
//! is offered to MQTT, and stays until it is acknowledged (by the broker, or as
//! stored by the collector), across
//! broker outages, network cuts, agent restarts and power loss.
//!
//! # On disk
//! `{state_dir}/devices/{device}/spool/{epoch:010}-{first_seq:010}.seg`: segment
//! files of up to `segment_readings` readings of one epoch, each record
//! `[len: u32 LE][crc32: u32 LE][postcard Reading]`. A segment is deleted once every
//! reading in it was acknowledged; nothing else is ever rewritten, so a crash can
//! only leave a torn record at the end of a segment. Recovery reads every segment
//! in order and stops at the first record whose length or checksum is wrong: that
//! tail is skipped and counted, never fatal. Recovered readings were not known to
//! be acknowledged, so they are sent again (the `(device, epoch, seq)` key absorbs
//! the ones that had arrived).
//!
//! Appends are queued to the agent's spool writer thread (`spool_io`), which
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

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hb_shared::Reading;

use crate::open_files::OpenFileBudget;
use crate::spool_io::{SegmentFile, SpoolWriter};
use crate::{Error, Result};

/// Newest unsent readings kept in memory; older ones are read back from disk.
const HOT: usize = 64;
/// Largest record accepted when reading back (a reading encodes to ~20–120 bytes).
const MAX_RECORD: u32 = 4096;
const HEADER: u64 = 8;

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

struct Segment {
    path: PathBuf,
    /// What the writer has written of it.
    file: Arc<SegmentFile>,
    epoch: u32,
    first_seq: u32,
    records: u32,
    bytes: u64,
    acked: Vec<u64>,
    acked_count: u32,
}

impl Segment {
    fn is_acked(&self, seq: u32) -> bool {
        let i = (seq - self.first_seq) as usize;
        self.acked
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    fn ack(&mut self, seq: u32) {
        let i = (seq - self.first_seq) as usize;
        if self.acked.len() <= i / 64 {
            self.acked.resize(i / 64 + 1, 0);
        }
        let bit = 1u64 << (i % 64);
        if self.acked[i / 64] & bit == 0 {
            self.acked[i / 64] |= bit;
            self.acked_count += 1;
        }
    }
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
    /// Opens (creating) the spool in `dir` and recovers what a previous run left.
    pub fn open(dir: &Path, config: SpoolConfig) -> Result<Self> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut names: Vec<(u32, u32, PathBuf)> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let path = e.path();
                let (epoch, seq) = parse_name(path.file_name()?.to_str()?)?;
                Some((epoch, seq, path))
            })
            .collect();
        names.sort();
        let mut spool = Self {
            dir: dir.to_owned(),
            config,
            segments: VecDeque::new(),
            active: None,
            cursor: None,
            unsent: 0,
            hot: VecDeque::new(),
            stats: SpoolStats::default(),
        };
        for (epoch, first_seq, path) in names {
            for seg in recover(&path, epoch, first_seq, &mut spool.stats)? {
                spool.stats.recovered += u64::from(seg.records);
                spool.unsent += u64::from(seg.records);
                spool.cursor.get_or_insert(Cursor::start_of(&seg));
                spool.segments.push_back(seg);
            }
        }
        Ok(spool)
    }

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
                FullPolicy::DropOldest => self.drop_oldest()?,
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
            self.rotate(reading.epoch, reading.seq)?;
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

    /// After writes failed (the writer marks a segment's file failed, the active
    /// one or one rotated away from with writes still queued): each such segment
    /// ends with what reached its file, the readings past that are dropped
    /// (counted unless already acknowledged; one handed out but not yet
    /// acknowledged counts too, though MQTT may still deliver it), and the next
    /// append starts a new segment. Called before every append and read-back.
    fn settle_failed_writes(&mut self) {
        let mut i = 0;
        while i < self.segments.len() {
            let s = &self.segments[i];
            if !s.file.failed() || s.file.written_records() >= s.records {
                i += 1;
                continue;
            }
            if self
                .active
                .as_ref()
                .is_some_and(|a| Arc::ptr_eq(a, &s.file))
            {
                self.active = None;
            }
            if self.settle_failed_segment(i) {
                i += 1;
            }
        }
        if self.active.as_ref().is_some_and(|a| a.failed()) {
            self.active = None;
        }
    }

    /// Trims segment `i` to what its file holds; false when that was nothing and
    /// the segment is gone.
    fn settle_failed_segment(&mut self, i: usize) -> bool {
        let seg = &mut self.segments[i];
        let (good, good_bytes) = (seg.file.written_records(), seg.file.written_bytes());
        let (lost_from, lost_to) = (seg.first_seq + good, seg.first_seq + seg.records);
        let lost = (lost_from..lost_to).filter(|&q| !seg.is_acked(q)).count() as u64;
        let key = (seg.epoch, seg.first_seq);
        let unsent_lost = match self.cursor {
            Some(c) if (c.epoch, c.first_seq) == key => {
                lost_to.saturating_sub(c.seq.max(lost_from))
            }
            Some(c) if (c.epoch, c.first_seq) < key && self.unsent > 0 => lost_to - lost_from,
            _ => 0,
        };
        seg.records = good;
        seg.bytes = good_bytes;
        let words = good.div_ceil(64) as usize;
        seg.acked.truncate(words);
        if good % 64 != 0 && seg.acked.len() == words {
            if let Some(last) = seg.acked.last_mut() {
                *last &= (1u64 << (good % 64)) - 1;
            }
        }
        seg.acked_count = seg.acked.iter().map(|w| w.count_ones()).sum();
        self.unsent = self.unsent.saturating_sub(u64::from(unsent_lost));
        self.hot
            .retain(|h| (h.end.epoch, h.end.first_seq) != key || h.reading.seq < lost_from);
        self.stats.dropped += lost;
        if let Some(c) = self.cursor.as_mut() {
            if (c.epoch, c.first_seq) == key && c.offset > good_bytes {
                *c = Cursor {
                    offset: good_bytes,
                    seq: lost_from,
                    ..*c
                };
            }
        }
        if good > 0 {
            return true;
        }
        let s = self.segments.remove(i).expect("index in range");
        if self
            .cursor
            .is_some_and(|c| (c.epoch, c.first_seq) == (s.epoch, s.first_seq))
        {
            // What is left to send starts with the segment after it.
            self.cursor = self
                .segments
                .get(i)
                .map(Cursor::start_of)
                .filter(|_| self.unsent > 0);
        }
        self.config.writer.remove(s.path);
        false
    }

    /// Starts a new segment file. No fsync of the old segment or of the directory:
    /// the periodic `syncfs` (see [`sync_periodically`]) makes both durable within
    /// the sync interval, the bound on what a power cut may lose, and a crash of
    /// the process alone loses nothing written. Two device flushes per rotation on
    /// the send path cost a fleet on an SD card more than the whole sync.
    fn rotate(&mut self, epoch: u32, first_seq: u32) -> Result<()> {
        let path = self.dir.join(format!("{epoch:010}-{first_seq:010}.seg"));
        // The old segment's file (and its open-file slot) goes first.
        if let Some(old) = self.active.take() {
            self.config.writer.release(&old);
        }
        let file = SegmentFile::new(path.clone(), self.config.open_files.clone());
        self.config.writer.create(&file);
        self.active = Some(Arc::clone(&file));
        self.segments.push_back(Segment {
            path,
            file,
            epoch,
            first_seq,
            records: 0,
            bytes: 0,
            acked: Vec::new(),
            acked_count: 0,
        });
        Ok(())
    }

    fn drop_oldest(&mut self) -> Result<()> {
        if self.segments.len() < 2 {
            // The active segment alone is over capacity only if capacity is smaller
            // than a segment: start a fresh one.
            if let Some(s) = self.segments.pop_front() {
                self.forget(s)?;
                self.active = None;
            }
            return Ok(());
        }
        let s = self.segments.pop_front().expect("two segments");
        self.forget(s)
    }

    fn forget(&mut self, s: Segment) -> Result<()> {
        let lost = u64::from(s.records - s.acked_count);
        self.stats.dropped += lost;
        tracing::warn!(
            epoch = s.epoch,
            first_seq = s.first_seq,
            lost,
            dropped = self.stats.dropped,
            "Spool full; dropped the oldest readings."
        );
        if let Some(c) = self.cursor {
            if c.epoch == s.epoch && c.first_seq == s.first_seq {
                // Readings of `s` not yet handed out leave the unsent count. A
                // segment holds consecutive numbers, so the cursor's says how many
                // were handed out.
                let handed = c.seq.wrapping_sub(s.first_seq).min(s.records);
                self.unsent = self
                    .unsent
                    .saturating_sub(u64::from(s.records.saturating_sub(handed)));
                self.hot
                    .retain(|h| !(h.end.epoch == s.epoch && h.end.first_seq == s.first_seq));
                self.cursor = self.segments.front().map(Cursor::start_of);
            }
        }
        self.config.writer.remove(s.path);
        Ok(())
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

    /// The newest reading, if it is unsent, was taken within `live_window` of
    /// `now_ms`, and there is a backlog before it: handed out ahead of the backlog
    /// so that draining never delays live data. It is skipped when the backlog
    /// reaches it.
    pub fn take_live(&mut self, now_ms: i64, live_window_ms: i64) -> Option<Reading> {
        if self.unsent < 2 {
            return None;
        }
        let last = self.hot.back_mut()?;
        if last.sent_early || now_ms - last.reading.ts_ms > live_window_ms {
            return None;
        }
        last.sent_early = true;
        Some(last.reading.clone())
    }

    /// Hands out up to `max` unsent readings in order, one epoch and consecutive
    /// sequence numbers (so that a message's readings are one range).
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<Reading>> {
        self.settle_failed_writes();
        let mut out: Vec<Reading> = Vec::new();
        // One open file per segment read, read sequentially through a buffer:
        // a record at a time, reopened, cost five syscalls a reading.
        let mut reader = None;
        while out.len() < max && self.unsent > 0 {
            let Some(cursor) = self.cursor.map(|c| self.advance(c)) else {
                break;
            };
            if self.skip_confirmed_segment(cursor) {
                continue;
            }
            // `hot` holds the newest unsent readings; once every unsent reading is
            // in it, its front is the cursor's record.
            let from_hot = self.unsent <= self.hot.len() as u64;
            let (reading, end, early) = if from_hot {
                let h = self.hot.front().expect("hot holds the unsent tail");
                (h.reading.clone(), h.end, h.sent_early)
            } else if !self.is_written(cursor) {
                // Still queued for the writer (a slow disk): later.
                break;
            } else {
                match self.read_at(&mut reader, cursor) {
                    Ok((reading, end)) => (reading, end, false),
                    // Keep what was handed out already; the error comes back next time.
                    Err(e) if !out.is_empty() => {
                        tracing::warn!(error = %e, "Spool read failed mid-batch.");
                        break;
                    }
                    Err(e) => return Err(e),
                }
            };
            if let Some(prev) = out.last() {
                if reading.epoch != prev.epoch || reading.seq != prev.seq.wrapping_add(1) {
                    break;
                }
            }
            if from_hot {
                self.hot.pop_front();
            }
            self.unsent -= 1;
            self.cursor = Some(end);
            // Confirmed stored before it was (re)sent: after a restart, the
            // retained confirmation releases what an earlier run had delivered.
            let confirmed = self
                .segments
                .iter()
                .find(|s| s.epoch == end.epoch && s.first_seq == end.first_seq)
                .is_some_and(|s| s.is_acked(reading.seq));
            if !early && !confirmed {
                out.push(reading);
            }
        }
        self.release_acknowledged();
        Ok(out)
    }

    /// When every reading from `cursor` to the end of its segment is confirmed (a
    /// restarted agent's backlog that was stored before it could be resent),
    /// moves past them without reading them back. Returns whether it did.
    fn skip_confirmed_segment(&mut self, cursor: Cursor) -> bool {
        let Some(s) = self
            .segments
            .iter()
            .find(|s| s.epoch == cursor.epoch && s.first_seq == cursor.first_seq)
        else {
            return false;
        };
        let end = s.first_seq + s.records;
        if cursor.offset >= s.bytes || !(cursor.seq..end).all(|q| s.is_acked(q)) {
            return false;
        }
        let (key, remaining) = ((s.epoch, s.first_seq), end - cursor.seq);
        self.unsent = self.unsent.saturating_sub(u64::from(remaining));
        self.hot.retain(|h| (h.end.epoch, h.end.first_seq) != key);
        self.cursor = Some(Cursor {
            offset: s.bytes,
            seq: end,
            ..cursor
        });
        self.release_acknowledged();
        true
    }

    /// The highest epoch found in the spool (0 when empty): the next epoch must be
    /// above it even if the epoch file was lost.
    pub fn max_epoch(&self) -> u32 {
        self.segments.iter().map(|s| s.epoch).max().unwrap_or(0)
    }

    /// Moves past the end of a segment onto the next one.
    fn advance(&self, end: Cursor) -> Cursor {
        let seg = self
            .segments
            .iter()
            .position(|s| s.epoch == end.epoch && s.first_seq == end.first_seq);
        match seg {
            Some(i) if end.offset >= self.segments[i].bytes => self
                .segments
                .iter()
                .skip(i + 1)
                .find(|n| n.records > 0)
                .map_or(end, Cursor::start_of),
            _ => end,
        }
    }

    /// Whether the record at `cursor` is on file.
    fn is_written(&self, cursor: Cursor) -> bool {
        self.segments
            .iter()
            .find(|s| s.epoch == cursor.epoch && s.first_seq == cursor.first_seq)
            .is_some_and(|s| cursor.offset < s.file.written_bytes())
    }

    /// Reads the record at `cursor`, through `reader` when it is already open on
    /// that segment at that offset (a batch reads on from where it stopped).
    fn read_at(
        &self,
        reader: &mut Option<SegmentReader>,
        cursor: Cursor,
    ) -> Result<(Reading, Cursor)> {
        let seg = self
            .segments
            .iter()
            .find(|s| s.epoch == cursor.epoch && s.first_seq == cursor.first_seq)
            .ok_or_else(|| Error::Spool {
                path: self.dir.clone(),
                detail: "cursor points at a missing segment".into(),
            })?;
        let key = (cursor.epoch, cursor.first_seq);
        let r = match reader {
            Some(r) if r.key == key && r.offset == cursor.offset => r,
            _ => {
                let mut f = File::open(&seg.path).map_err(io_err(&seg.path))?;
                f.seek(SeekFrom::Start(cursor.offset))
                    .map_err(io_err(&seg.path))?;
                reader.insert(SegmentReader {
                    key,
                    offset: cursor.offset,
                    file: BufReader::new(f),
                })
            }
        };
        match read_record(&mut r.file) {
            Ok(Some((reading, len))) if cursor.offset + len <= seg.file.written_bytes() => {
                r.offset += len;
                let end = Cursor {
                    offset: cursor.offset + len,
                    seq: reading.seq.wrapping_add(1),
                    ..cursor
                };
                Ok((reading, end))
            }
            _ => Err(Error::Spool {
                path: seg.path.clone(),
                detail: format!("unreadable record at offset {}", cursor.offset),
            }),
        }
    }

    /// `count` readings from `(epoch, first_seq)` on are in safe hands (the
    /// broker's PUBACK, or a storage confirmation). Segments whose readings are all
    /// acknowledged are deleted.
    pub fn ack(&mut self, epoch: u32, first_seq: u32, count: u32) -> Result<()> {
        if count > 0 {
            self.confirm(epoch, first_seq, first_seq.saturating_add(count - 1));
        }
        Ok(())
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

    /// Every reading before this `(epoch, seq)` has been handed out at least once;
    /// none from it on (a live reading sent ahead of the backlog aside).
    pub fn handed_out_bound(&self) -> (u32, u32) {
        let end = self
            .segments
            .back()
            .map_or((0, 0), |l| (l.epoch, l.first_seq + l.records));
        match self.cursor {
            Some(c) if self.unsent > 0 => (c.epoch, c.seq).min(end),
            _ => end,
        }
    }

    /// The first run of handed-out, unacknowledged readings at or after `from`
    /// and before `upto` (in `(epoch, seq)` order): consecutive sequence numbers of
    /// one segment, at most `max`, read back from disk. For resending readings
    /// whose storage was not confirmed in time.
    pub fn unconfirmed_run(
        &mut self,
        from: (u32, u32),
        upto: (u32, u32),
        max: usize,
    ) -> Result<Option<Vec<Reading>>> {
        self.settle_failed_writes();
        let limit = upto.min(self.handed_out_bound());
        let below = |k: (u32, u32)| k < limit;
        let mut wanted: Option<(usize, u32, u32)> = None; // segment, first seq, count
        for (i, s) in self.segments.iter().enumerate() {
            // Only what is on file: the rest is still queued for the writer.
            for k in 0..s.records.min(s.file.written_records()) {
                let seq = s.first_seq + k;
                let key = (s.epoch, seq);
                if key < from || s.is_acked(seq) {
                    if wanted.is_some() {
                        break;
                    }
                    continue;
                }
                if !below(key) {
                    break;
                }
                match &mut wanted {
                    None => wanted = Some((i, seq, 1)),
                    Some((_, _, n)) if (*n as usize) < max => *n += 1,
                    Some(_) => break,
                }
            }
            if wanted.is_some() {
                break;
            }
        }
        let Some((i, first, count)) = wanted else {
            return Ok(None);
        };
        let path = self.segments[i].path.clone();
        let mut r = BufReader::new(File::open(&path).map_err(io_err(&path))?);
        let mut out = Vec::with_capacity(count as usize);
        while out.len() < count as usize {
            match read_record(&mut r) {
                Ok(Some((reading, _))) => {
                    if reading.seq >= first {
                        out.push(reading);
                    }
                }
                _ => {
                    return Err(Error::Spool {
                        path,
                        detail: format!("segment ends before seq {}", first + count - 1),
                    })
                }
            }
        }
        Ok(Some(out))
    }

    /// Deletes closed segments whose readings are all acknowledged and which the
    /// cursor has passed (a reading sent ahead of the backlog can be acknowledged
    /// before the cursor reaches it).
    fn release_acknowledged(&mut self) {
        let mut i = 0;
        while i < self.segments.len() {
            let s = &self.segments[i];
            let is_active = i + 1 == self.segments.len() && self.active.is_some();
            let done = s.acked_count == s.records && s.records > 0;
            let closed = !is_active || s.records >= self.config.segment_readings;
            // Only what the cursor has passed: a segment confirmed before it was
            // handed out (after a restart) still counts in `unsent` and `hot`.
            let passed = self.cursor.is_none_or(|c| {
                let (at, key) = ((c.epoch, c.first_seq), (s.epoch, s.first_seq));
                key < at || (key == at && c.offset >= s.bytes)
            });
            if !(done && closed && passed) {
                i += 1;
                continue;
            }
            let s = self.segments.remove(i).expect("index in range");
            if is_active {
                self.active = None;
            }
            if self
                .cursor
                .is_some_and(|c| c.epoch == s.epoch && c.first_seq == s.first_seq)
            {
                // Everything in it was handed out: go on with the segment after it.
                self.cursor = self.segments.get(i).map(Cursor::start_of);
            }
            self.config.writer.remove(s.path);
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> SpoolStats {
        self.stats
    }
}

/// A segment open for reading, positioned at `offset`.
struct SegmentReader {
    key: (u32, u32),
    offset: u64,
    file: BufReader<File>,
}

/// Makes every spool under `state_dir` durable every `interval` while anything was
/// appended, until `shutdown`. On Linux one `syncfs(2)` covers the filesystem
/// holding the state directory, whatever the number of devices; elsewhere `sync(2)`.
pub async fn sync_periodically(
    state_dir: PathBuf,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut synced = crate::spool_io::writes();
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            // One last sync for what was appended since the previous one.
            _ = shutdown.cancelled() => true,
        };
        let now = crate::spool_io::writes();
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
    use std::os::fd::AsRawFd;
    let d = File::open(dir)?;
    // SAFETY: syncfs only reads the descriptor we own for the duration of the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_filesystem(_dir: &Path) -> std::io::Result<()> {
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    Ok(())
}

fn parse_name(name: &str) -> Option<(u32, u32)> {
    let stem = name.strip_suffix(".seg")?;
    let (e, s) = stem.split_once('-')?;
    Some((e.parse().ok()?, s.parse().ok()?))
}

/// Reads one record: `Ok(None)` at a clean end, `Err(())` for a torn or corrupt one.
fn read_record(r: &mut impl Read) -> std::result::Result<Option<(Reading, u64)>, ()> {
    let mut header = [0u8; HEADER as usize];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(()),
            Ok(n) => got += n,
            Err(_) => return Err(()),
        }
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_RECORD {
        return Err(());
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).map_err(|_| ())?;
    if crc32fast::hash(&payload) != crc {
        return Err(());
    }
    let reading: Reading = postcard::from_bytes(&payload).map_err(|_| ())?;
    Ok(Some((reading, HEADER + u64::from(len))))
}

/// Reads a segment left by an earlier run. An intact segment is used as it is. A
/// damaged one (torn tail, flipped bits) is repaired: every record with a valid
/// length and checksum is kept, found again past any damage, and rewritten into
/// segments of consecutive readings; the damage is counted, never fatal.
fn recover(
    path: &Path,
    epoch: u32,
    first_seq: u32,
    stats: &mut SpoolStats,
) -> Result<Vec<Segment>> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let mut good: Vec<Reading> = Vec::new();
    let mut pos = 0usize;
    let mut damaged = 0u64;
    while pos < bytes.len() {
        match read_record(&mut &bytes[pos..]) {
            Ok(Some((reading, len))) if reading.epoch == epoch => {
                good.push(reading);
                pos += len as usize;
            }
            _ => {
                damaged += 1;
                pos += 1;
            }
        }
    }
    if damaged == 0 {
        let records = good.len() as u32;
        if records > 0
            && good
                .iter()
                .enumerate()
                .all(|(i, r)| r.seq == first_seq + i as u32)
        {
            return Ok(vec![segment(
                path.to_owned(),
                epoch,
                first_seq,
                records,
                bytes.len() as u64,
            )]);
        }
    }
    tracing::warn!(path = %path.display(), kept = good.len(), damaged_bytes = damaged, "Skipped a torn or corrupt spool tail.");
    stats.corrupt_tails += 1;
    stats.corrupt_bytes += damaged;
    // Rewrite the good records as runs of consecutive sequence numbers.
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    let mut run: Vec<Reading> = Vec::new();
    let flush = |run: &mut Vec<Reading>, out: &mut Vec<Segment>| -> Result<()> {
        let Some(first) = run.first() else {
            return Ok(());
        };
        let name = dir.join(format!("{:010}-{:010}.seg", first.epoch, first.seq));
        let tmp = name.with_extension("repair");
        let mut data = Vec::new();
        for r in run.iter() {
            data.extend_from_slice(&encode_record(r).map_err(|detail| Error::Spool {
                path: name.clone(),
                detail,
            })?);
        }
        fs::write(&tmp, &data).map_err(io_err(&tmp))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, &name).map_err(io_err(&name))?;
        out.push(segment(
            name,
            first.epoch,
            first.seq,
            run.len() as u32,
            data.len() as u64,
        ));
        run.clear();
        Ok(())
    };
    for r in good {
        if run.last().is_some_and(|l| r.seq != l.seq.wrapping_add(1)) {
            flush(&mut run, &mut out)?;
        }
        run.push(r);
    }
    flush(&mut run, &mut out)?;
    if !out.iter().any(|s| s.path == path) {
        fs::remove_file(path).map_err(io_err(path))?;
    }
    sync_dir(dir)?;
    Ok(out)
}

fn segment(path: PathBuf, epoch: u32, first_seq: u32, records: u32, bytes: u64) -> Segment {
    Segment {
        file: SegmentFile::on_disk(path.clone(), records, bytes),
        path,
        epoch,
        first_seq,
        records,
        bytes,
        acked: Vec::new(),
        acked_count: 0,
    }
}

/// `[len][crc32][postcard]` of one reading.
fn encode_record(reading: &Reading) -> std::result::Result<Vec<u8>, String> {
    let payload =
        postcard::to_allocvec(reading).map_err(|e| format!("cannot encode reading: {e}"))?;
    let mut record = Vec::with_capacity(payload.len() + HEADER as usize);
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    Ok(record)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::State { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hb_shared::Contact;

    fn config(capacity: usize, segment_readings: u32, full_policy: FullPolicy) -> SpoolConfig {
        SpoolConfig {
            capacity,
            segment_readings,
            sync_interval: Duration::from_millis(0),
            full_policy,
            open_files: OpenFileBudget::default(),
            writer: SpoolWriter::inline(),
        }
    }

    fn reading(epoch: u32, seq: u32) -> Reading {
        let (ts_ms, bpm) = (1_764_000_000_000 + i64::from(seq), 60 + (seq % 50) as u16);
        Reading {
            mono_ms: u64::from(seq),
            ..Reading::new(epoch, seq, ts_ms, bpm, Contact::Detected)
        }
    }

    fn seqs(batch: &[Reading]) -> Vec<u32> {
        batch.iter().map(|r| r.seq).collect()
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn readings_come_back_in_order_and_acknowledged_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), config(1000, 10, FullPolicy::DropOldest)).unwrap();
        for seq in 0..25 {
            assert!(s.append(&reading(1, seq)).unwrap());
        }
        assert_eq!(segment_files(dir.path()).len(), 3);
        let b = s.next_batch(100).unwrap();
        assert_eq!(seqs(&b), (0..25).collect::<Vec<_>>());
        assert_eq!(s.unsent(), 0);
        s.ack(1, 0, 15).unwrap();
        assert_eq!(
            segment_files(dir.path()),
            ["0000000001-0000000010.seg", "0000000001-0000000020.seg"]
        );
        s.ack(1, 15, 10).unwrap();
        // The active segment is not full yet, so it stays for the next appends.
        assert_eq!(segment_files(dir.path()), ["0000000001-0000000020.seg"]);
        assert_eq!(s.unacked(), 0);
        s.append(&reading(1, 25)).unwrap();
        assert_eq!(seqs(&s.next_batch(10).unwrap()), [25]);
    }

    /// This thread's read syscalls so far (Linux per-thread I/O accounting).
    #[cfg(target_os = "linux")]
    fn read_syscalls() -> u64 {
        fs::read_to_string("/proc/thread-self/io")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("syscr: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_backlog_is_read_back_a_buffer_at_a_time_not_a_record_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), config(10_000, 256, FullPolicy::DropOldest)).unwrap();
        for seq in 0..2560 {
            s.append(&reading(1, seq)).unwrap();
        }
        let before = read_syscalls();
        let mut drained = Vec::new();
        while s.unsent() > 0 {
            drained.extend(seqs(&s.next_batch(256).unwrap()));
        }
        let reads = read_syscalls() - before;
        assert_eq!(drained, (0..2560).collect::<Vec<_>>());
        // Before: a header and a payload read per record, 5120 for this backlog.
        println!("{reads} read syscalls for 2560 readings");
        assert!(reads <= 100, "{reads} read syscalls for 2560 readings");
    }

    fn threaded(capacity: usize, segment_readings: u32) -> SpoolConfig {
        SpoolConfig {
            writer: SpoolWriter::default(),
            ..config(capacity, segment_readings, FullPolicy::DropOldest)
        }
    }

    #[test]
    fn while_the_writer_stalls_readings_go_out_from_memory_and_the_backlog_waits_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = threaded(1000, 256);
        let writer = cfg.writer.clone();
        let mut s = Spool::open(dir.path(), cfg).unwrap();
        let resume = writer.stall();
        for seq in 0..100 {
            s.append(&reading(1, seq)).unwrap();
        }
        // Nothing is on disk yet: the 36 oldest are not in memory either.
        assert_eq!(s.next_batch(256).unwrap(), []);
        assert_eq!(
            s.take_live(1_764_000_000_099, 1000).map(|r| r.seq),
            Some(99)
        );
        resume.send(()).unwrap();
        writer.wait_idle();
        let batch = s.next_batch(256).unwrap();
        assert_eq!(
            seqs(&batch),
            (0..99).collect::<Vec<_>>(),
            "all but the live one"
        );
        assert_eq!(
            fs::metadata(&s.segments[0].path).unwrap().len(),
            s.segments[0].bytes
        );
    }

    #[tokio::test]
    async fn closing_the_writer_writes_everything_still_queued() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = threaded(1000, 256);
        let writer = cfg.writer.clone();
        let mut s = Spool::open(dir.path(), cfg).unwrap();
        let resume = writer.stall();
        for seq in 0..50 {
            s.append(&reading(1, seq)).unwrap();
        }
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let _ = resume.send(());
        });
        writer.close().await;
        let bytes = s.segments[0].bytes;
        drop(s);
        assert_eq!(
            fs::metadata(dir.path().join("0000000001-0000000000.seg"))
                .unwrap()
                .len(),
            bytes
        );
        let again = Spool::open(dir.path(), config(1000, 256, FullPolicy::DropOldest)).unwrap();
        assert_eq!(again.stats().recovered, 50);
    }

    #[test]
    fn a_failed_write_drops_the_readings_not_on_file_and_the_next_append_starts_afresh() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("spool");
        // No open-file slot: the writer opens the segment for each append.
        let cfg = SpoolConfig {
            open_files: OpenFileBudget::new(0),
            ..threaded(1000, 256)
        };
        let writer = cfg.writer.clone();
        let mut s = Spool::open(&dir, cfg).unwrap();
        s.append(&reading(1, 0)).unwrap();
        writer.wait_idle();
        let resume = writer.stall();
        for seq in 1..4 {
            s.append(&reading(1, seq)).unwrap();
        }
        // The segment file goes away under the writer: its appends fail.
        let seg = s.segments[0].path.clone();
        fs::remove_file(&seg).unwrap();
        fs::create_dir(&seg).unwrap();
        resume.send(()).unwrap();
        writer.wait_idle();
        fs::remove_dir(&seg).unwrap();
        s.append(&reading(1, 4)).unwrap();
        writer.wait_idle();
        assert_eq!(s.stats().dropped, 3, "readings 1-3 never reached the file");
        // One range per batch: 0, then 4 from the new segment.
        assert_eq!(seqs(&s.next_batch(256).unwrap()), [0]);
        assert_eq!(seqs(&s.next_batch(256).unwrap()), [4]);
        assert_eq!(s.unsent(), 0);
    }

    #[test]
    fn a_segment_whose_queued_writes_fail_after_it_rotated_is_settled_and_does_not_block_the_backlog(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            open_files: OpenFileBudget::new(0),
            ..threaded(1000, 4)
        };
        let writer = cfg.writer.clone();
        let mut s = Spool::open(dir.path(), cfg).unwrap();
        let resume = writer.stall();
        for seq in 0..6 {
            s.append(&reading(1, seq)).unwrap();
        }
        // The first segment's file cannot be created; the second can.
        fs::create_dir(dir.path().join("0000000001-0000000000.seg")).unwrap();
        resume.send(()).unwrap();
        writer.wait_idle();
        assert_eq!(seqs(&s.next_batch(256).unwrap()), [4, 5]);
        assert_eq!(s.stats().dropped, 4);
        assert_eq!((s.unsent(), s.unacked()), (0, 2));
    }

    #[test]
    fn a_spool_without_an_open_file_slot_opens_its_segment_per_append_and_loses_nothing() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let budget = OpenFileBudget::new(1);
        let cfg = SpoolConfig {
            open_files: budget.clone(),
            ..config(1000, 10, FullPolicy::DropOldest)
        };
        let mut holds = Spool::open(a.path(), cfg.clone()).unwrap();
        let mut reopens = Spool::open(b.path(), cfg.clone()).unwrap();
        for seq in 0..25 {
            assert!(holds.append(&reading(1, seq)).unwrap());
            assert!(reopens.append(&reading(1, seq)).unwrap());
            assert_eq!(budget.free(), 0, "one segment held at a time");
        }
        let b1 = reopens.next_batch(100).unwrap();
        assert_eq!(seqs(&b1), (0..25).collect::<Vec<_>>());
        drop(holds);
        assert_eq!(budget.free(), 1, "the slot is given back with its spool");
        drop(reopens);
        let again = Spool::open(b.path(), cfg).unwrap();
        assert_eq!(again.stats().recovered, 25);
        assert_eq!(again.stats().corrupt_tails, 0);
    }

    #[test]
    fn a_restart_recovers_every_unacknowledged_reading() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), config(1000, 10, FullPolicy::DropOldest)).unwrap();
            for seq in 0..25 {
                s.append(&reading(1, seq)).unwrap();
            }
            let _ = s.next_batch(100).unwrap();
            s.ack(1, 0, 12).unwrap(); // first segment gone, second half acked
        }
        let mut s = Spool::open(dir.path(), config(1000, 10, FullPolicy::DropOldest)).unwrap();
        assert_eq!(s.stats().recovered, 15);
        assert_eq!(s.stats().corrupt_tails, 0);
        // New epoch after the restart: batches never mix epochs.
        s.append(&reading(2, 0)).unwrap();
        assert_eq!(
            seqs(&s.next_batch(100).unwrap()),
            (10..25).collect::<Vec<_>>()
        );
        let b = s.next_batch(100).unwrap();
        assert_eq!((b[0].epoch, b[0].seq, b.len()), (2, 0, 1));
    }

    #[test]
    fn a_torn_tail_is_skipped_counted_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), config(1000, 100, FullPolicy::DropOldest)).unwrap();
            for seq in 0..5 {
                s.append(&reading(1, seq)).unwrap();
            }
        }
        let file = dir.path().join("0000000001-0000000000.seg");
        let good_len = fs::metadata(&file).unwrap().len();
        let mut f = fs::OpenOptions::new().append(true).open(&file).unwrap();
        use std::io::Write;
        f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 5, 6]).unwrap(); // a record cut short
        drop(f);
        let mut s = Spool::open(dir.path(), config(1000, 100, FullPolicy::DropOldest)).unwrap();
        assert_eq!(
            (
                s.stats().recovered,
                s.stats().corrupt_tails,
                s.stats().corrupt_bytes
            ),
            (5, 1, 10)
        );
        assert_eq!(fs::metadata(&file).unwrap().len(), good_len);
        assert_eq!(seqs(&s.next_batch(100).unwrap()), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_corrupt_record_in_the_middle_loses_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), config(1000, 100, FullPolicy::DropOldest)).unwrap();
            for seq in 0..5 {
                s.append(&reading(1, seq)).unwrap();
            }
        }
        let file = dir.path().join("0000000001-0000000000.seg");
        let mut bytes = fs::read(&file).unwrap();
        let third = bytes.len() / 5 * 2 + 9; // inside the third record's payload
        bytes[third] ^= 0xff;
        fs::write(&file, &bytes).unwrap();
        let mut s = Spool::open(dir.path(), config(1000, 100, FullPolicy::DropOldest)).unwrap();
        // Records 0, 1, 3 and 4 survive; the damaged third is skipped and counted.
        assert_eq!((s.stats().recovered, s.stats().corrupt_tails), (4, 1));
        assert_eq!(seqs(&s.next_batch(100).unwrap()), [0, 1]);
        assert_eq!(seqs(&s.next_batch(100).unwrap()), [3, 4]);
        drop(s);
        // The repair is durable: a second start finds clean segments.
        let s = Spool::open(dir.path(), config(1000, 100, FullPolicy::DropOldest)).unwrap();
        assert_eq!((s.stats().recovered, s.stats().corrupt_tails), (4, 0));
    }

    #[test]
    fn a_full_spool_drops_the_oldest_segment_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), config(300, 100, FullPolicy::DropOldest)).unwrap();
        for seq in 0..350 {
            assert!(s.append(&reading(1, seq)).unwrap());
        }
        assert_eq!(s.stats().dropped, 100);
        assert_eq!(s.unacked(), 250);
        let b = s.next_batch(1000).unwrap();
        assert_eq!((b[0].seq, b.len()), (100, 250));
    }

    #[test]
    fn dropping_the_oldest_while_draining_keeps_the_cursor_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), config(200, 100, FullPolicy::DropOldest)).unwrap();
        for seq in 0..150 {
            s.append(&reading(1, seq)).unwrap();
        }
        assert_eq!(
            seqs(&s.next_batch(30).unwrap()),
            (0..30).collect::<Vec<_>>()
        );
        for seq in 150..260 {
            s.append(&reading(1, seq)).unwrap();
        }
        assert_eq!(s.stats().dropped, 100);
        let rest = s.next_batch(1000).unwrap();
        assert_eq!(seqs(&rest), (100..260).collect::<Vec<_>>());
        assert_eq!(s.unsent(), 0);
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
    fn a_live_reading_jumps_the_backlog_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), config(1000, 100, FullPolicy::DropOldest)).unwrap();
        for seq in 0..5 {
            s.append(&reading(1, seq)).unwrap();
        }
        let now = reading(1, 4).ts_ms;
        assert_eq!(s.take_live(now, 1000).unwrap().seq, 4);
        assert!(s.take_live(now, 1000).is_none());
        assert_eq!(seqs(&s.next_batch(100).unwrap()), [0, 1, 2, 3]);
        assert_eq!(s.unsent(), 0);
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

    #[test]
    fn the_handed_out_bound_follows_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), config(1000, 10, FullPolicy::DropOldest)).unwrap();
        assert_eq!(s.handed_out_bound(), (0, 0));
        for seq in 0..25 {
            s.append(&reading(3, seq)).unwrap();
        }
        assert_eq!(s.handed_out_bound(), (3, 0));
        let _ = s.next_batch(12).unwrap();
        assert_eq!(s.handed_out_bound(), (3, 12));
        let _ = s.next_batch(100).unwrap();
        assert_eq!(s.handed_out_bound(), (3, 25));
    }

    #[test]
    fn unconfirmed_runs_come_back_from_disk_in_order_around_confirmed_readings() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), config(1000, 10, FullPolicy::DropOldest)).unwrap();
        for seq in 0..25 {
            s.append(&reading(1, seq)).unwrap();
        }
        let _ = s.next_batch(20).unwrap(); // 0..19 handed out, 20..24 not
        s.confirm(1, 3, 5);
        let run = s.unconfirmed_run((0, 0), (9, 0), 100).unwrap().unwrap();
        assert_eq!(seqs(&run), [0, 1, 2]);
        assert_eq!(run[2], reading(1, 2), "read back unchanged");
        let run = s.unconfirmed_run((1, 3), (9, 0), 2).unwrap().unwrap();
        assert_eq!(seqs(&run), [6, 7], "at most max");
        let run = s.unconfirmed_run((1, 8), (9, 0), 100).unwrap().unwrap();
        assert_eq!(seqs(&run), [8, 9], "one segment at a time");
        let run = s.unconfirmed_run((1, 10), (1, 15), 100).unwrap().unwrap();
        assert_eq!(seqs(&run), [10, 11, 12, 13, 14], "not beyond upto");
        let run = s.unconfirmed_run((1, 15), (9, 0), 100).unwrap().unwrap();
        assert_eq!(
            seqs(&run),
            [15, 16, 17, 18, 19],
            "never what was not sent yet"
        );
        assert!(s.unconfirmed_run((1, 20), (9, 0), 100).unwrap().is_none());
    }

    #[test]
    fn readings_confirmed_before_they_were_sent_are_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), config(1000, 10, FullPolicy::DropOldest)).unwrap();
            for seq in 0..15 {
                s.append(&reading(1, seq)).unwrap();
            }
        }
        // A restart recovers all 15; the retained confirmation names 0..=11.
        let mut s = Spool::open(dir.path(), config(1000, 10, FullPolicy::DropOldest)).unwrap();
        s.confirm(1, 0, 11);
        assert_eq!(seqs(&s.next_batch(100).unwrap()), [12, 13, 14]);
        assert_eq!(s.unacked(), 3);
    }

    #[test]
    fn a_confirmed_backlog_ahead_of_the_cursor_is_skipped_and_counted_out() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), config(1000, 10, FullPolicy::DropOldest)).unwrap();
            for seq in 0..35 {
                s.append(&reading(1, seq)).unwrap();
            }
        }
        let mut s = Spool::open(dir.path(), config(1000, 10, FullPolicy::DropOldest)).unwrap();
        assert_eq!(seqs(&s.next_batch(12).unwrap()).len(), 12);
        // Everything was stored by the earlier run; the confirmation arrives now.
        assert_eq!(s.confirm(1, 0, 34), 35);
        assert_eq!(s.unsent(), 23, "not yet passed by the cursor");
        assert!(s.next_batch(100).unwrap().is_empty());
        assert_eq!((s.unsent(), s.unacked()), (0, 0));
        assert!(segment_files(dir.path()).is_empty());
        s.append(&reading(2, 0)).unwrap();
        assert_eq!(seqs(&s.next_batch(100).unwrap()), [0]);
    }
}
