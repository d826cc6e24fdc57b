//! Opening a spool left by an earlier run: its segments are found by name and read
//! in order; a damaged one (torn tail, flipped bits) is repaired and the damage
//! counted, never fatal.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use hb_shared::Reading;

use super::record::{encode_record, read_record};
use super::segment::{file_name, parse_name, Segment};
use super::{io_err, Cursor, Spool, SpoolConfig, SpoolStats};
use crate::{Error, Result};

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
            return Ok(vec![Segment::on_disk(
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
        let name = dir.join(file_name(first.epoch, first.seq));
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
        out.push(Segment::on_disk(
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

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{config, reading, segment_files, seqs};
    use super::*;
    use crate::spool::FullPolicy;

    #[test]
    fn a_restart_recovers_every_unacknowledged_reading() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), config(1000, 10, FullPolicy::DropOldest)).unwrap();
            for seq in 0..25 {
                s.append(&reading(1, seq)).unwrap();
            }
            let _ = s.next_batch(100).unwrap();
            s.ack(1, 0, 12); // first segment gone, second half acked
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
