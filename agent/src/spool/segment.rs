//! Segment files: their names, the acknowledged bitmap of each, starting a new one,
//! dropping the oldest when the spool is full, deleting those whose readings are
//! all acknowledged, and settling the ones whose writes failed.

use std::path::PathBuf;
use std::sync::Arc;

use super::writer::SegmentFile;
use super::{Cursor, Spool};

/// The file name of the segment whose first reading is `(epoch, first_seq)`.
pub(super) fn file_name(epoch: u32, first_seq: u32) -> String {
    format!("{epoch:010}-{first_seq:010}.seg")
}

/// `(epoch, first_seq)` of a segment's file name; `None` for any other file.
pub(super) fn parse_name(name: &str) -> Option<(u32, u32)> {
    let stem = name.strip_suffix(".seg")?;
    let (e, s) = stem.split_once('-')?;
    Some((e.parse().ok()?, s.parse().ok()?))
}

/// One segment file of the spool and the bookkeeping of its readings.
pub(super) struct Segment {
    pub(super) path: PathBuf,
    /// What the writer has written of it.
    pub(super) file: Arc<SegmentFile>,
    pub(super) epoch: u32,
    pub(super) first_seq: u32,
    pub(super) records: u32,
    pub(super) bytes: u64,
    /// One bit per reading, set when it is acknowledged.
    pub(super) acked: Vec<u64>,
    pub(super) acked_count: u32,
}

impl Segment {
    /// An empty segment at `path`, written through `file`, its first reading
    /// `first_seq` of `epoch`.
    pub(super) fn new(path: PathBuf, file: Arc<SegmentFile>, epoch: u32, first_seq: u32) -> Self {
        Segment {
            path,
            file,
            epoch,
            first_seq,
            records: 0,
            bytes: 0,
            acked: Vec::new(),
            acked_count: 0,
        }
    }

    /// A segment found on disk at start, `records` readings in `bytes`.
    pub(super) fn on_disk(
        path: PathBuf,
        epoch: u32,
        first_seq: u32,
        records: u32,
        bytes: u64,
    ) -> Self {
        let file = SegmentFile::on_disk(path.clone(), records, bytes);
        Segment {
            records,
            bytes,
            ..Self::new(path, file, epoch, first_seq)
        }
    }

    pub(super) fn is_acked(&self, seq: u32) -> bool {
        let i = (seq - self.first_seq) as usize;
        self.acked
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    pub(super) fn ack(&mut self, seq: u32) {
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

impl Spool {
    /// After writes failed (the writer marks a segment's file failed, the active
    /// one or one rotated away from with writes still queued): each such segment
    /// ends with what reached its file, the readings past that are dropped
    /// (counted unless already acknowledged; one handed out but not yet
    /// acknowledged counts too, though MQTT may still deliver it), and the next
    /// append starts a new segment. Called before every append and read-back.
    pub(super) fn settle_failed_writes(&mut self) {
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
    /// the periodic `syncfs` (see [`super::sync_periodically`]) makes both durable within
    /// the sync interval, the bound on what a power cut may lose, and a crash of
    /// the process alone loses nothing written. Two device flushes per rotation on
    /// the send path cost a fleet on an SD card more than the whole sync.
    pub(super) fn rotate(&mut self, epoch: u32, first_seq: u32) {
        let path = self.dir.join(file_name(epoch, first_seq));
        // The old segment's file (and its open-file slot) goes first.
        if let Some(old) = self.active.take() {
            self.config.writer.release(&old);
        }
        let file = SegmentFile::new(path.clone(), self.config.open_files.clone());
        self.config.writer.create(&file);
        self.active = Some(Arc::clone(&file));
        self.segments
            .push_back(Segment::new(path, file, epoch, first_seq));
    }

    pub(super) fn drop_oldest(&mut self) {
        if self.segments.len() < 2 {
            // The active segment alone is over capacity only if capacity is smaller
            // than a segment: start a fresh one.
            if let Some(s) = self.segments.pop_front() {
                self.forget(s);
                self.active = None;
            }
            return;
        }
        let s = self.segments.pop_front().expect("two segments");
        self.forget(s);
    }

    fn forget(&mut self, s: Segment) {
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
    }

    /// Deletes closed segments whose readings are all acknowledged and which the
    /// cursor has passed (a reading sent ahead of the backlog can be acknowledged
    /// before the cursor reaches it).
    pub(super) fn release_acknowledged(&mut self) {
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
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::tests::{config, reading, segment_files, seqs, threaded};
    use super::*;
    use crate::open_files::OpenFileBudget;
    use crate::spool::{FullPolicy, SpoolConfig};

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
        s.ack(1, 0, 15);
        assert_eq!(
            segment_files(dir.path()),
            ["0000000001-0000000010.seg", "0000000001-0000000020.seg"]
        );
        s.ack(1, 15, 10);
        // The active segment is not full yet, so it stays for the next appends.
        assert_eq!(segment_files(dir.path()), ["0000000001-0000000020.seg"]);
        assert_eq!(s.unacked(), 0);
        s.append(&reading(1, 25)).unwrap();
        assert_eq!(seqs(&s.next_batch(10).unwrap()), [25]);
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
}
