//! Handing readings out: the newest live reading ahead of the backlog, the backlog
//! in order (read back from disk a buffer at a time, and only what the writer has
//! written), and runs whose storage was not confirmed in time.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};

use hb_shared::Reading;

use super::record::read_record;
use super::{io_err, Cursor, Spool};
use crate::{Error, Result};

impl Spool {
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
}

/// A segment open for reading, positioned at `offset`.
struct SegmentReader {
    key: (u32, u32),
    offset: u64,
    file: BufReader<File>,
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::tests::{config, reading, seqs, threaded};
    use super::*;
    use crate::spool::FullPolicy;

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
}
