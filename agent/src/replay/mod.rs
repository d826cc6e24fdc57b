//! `--source replay:FILE`: a recorded heart-rate session read back row by row, so
//! the whole pipeline can be exercised with real physiology instead of the
//! simulator, and a session reproduced exactly.
//!
//! The file is untrusted input. A malformed row never panics and never stops the
//! replay: it is skipped, counted ([`Replay::skipped`]) and kept among the last few
//! errors with its line number ([`Replay::recent_errors`]). Memory is bounded: the
//! file is read line by line and a line longer than [`MAX_LINE_BYTES`] is skipped
//! without being buffered. Blank lines are ignored; line numbers count every line
//! of the file, from 1.
//!
//! # Formats
//! The format follows the file extension ([`ReplayFormat::from_path`]).
//!
//! **CSV** (`.csv`): a header row naming the columns, in any order, then one
//! measurement per row:
//! - `timestamp` (required): Unix milliseconds (`1764000000000`) or RFC 3339
//!   (`2026-01-02T03:04:05.123Z`, `…+01:00`; fractions beyond milliseconds are
//!   truncated, a leap second `:60` counts as the next minute's `:00`).
//! - `bpm` (required): an integer `0..=65535`.
//! - `rr` or `rr_ms` (optional): RR intervals in milliseconds, separated by spaces or
//!   `;`, at most [`MAX_RR_INTERVALS`](hb_shared::MAX_RR_INTERVALS). Decimal milliseconds
//!   (`812.5`) are accepted.
//! - `contact` (optional): `detected`/`not_detected`/`not_supported`, or `1`/`0`;
//!   empty or absent means `not_supported`.
//!
//! Other columns are ignored. Header names are case-insensitive; a field may be
//! wrapped in double quotes (commas allowed inside), but a quoted field cannot span
//! lines and any other quote is an error (no field of this format needs one). Every
//! row has as many fields as the header. A file whose header lacks `timestamp` or
//! `bpm` replays nothing.
//!
//! **JSON lines** (`.jsonl`, `.ndjson`, `.json`): one object per line, e.g.
//! `{"timestamp": 1764000000000, "bpm": 72, "rr_ms": [812, 830], "contact": "detected"}`.
//! `timestamp` is an integer of Unix milliseconds or an RFC 3339 string; `rr_ms`
//! (alias `rr`) and `contact` (a name as above, `1`/`0` or a boolean) are optional;
//! other keys are ignored. A `.json` file is read as JSON lines too, not as an array.
//!
//! In both formats RR intervals are converted to the 1/1024 s units of
//! [`HeartRateMeasurement::rr_1024`] (rounded), timestamps must not decrease (a row
//! going back in time is skipped), and energy expended is not replayed.
//!
//! # Pacing
//! [`Replay`] is a plain blocking iterator with no notion of time, so it can be
//! tested and reused synchronously. [`PacedReplay`] puts the recorded gaps back
//! with `tokio::time`, scaled by a speed factor.
//!
//! # Layout
//! - this file: [`Replay`], the row-by-row iterator, and its row errors;
//! - `line_reader`: reading a line with a bound on its length;
//! - `csv_rows`: the CSV header and rows (with the `csv` crate);
//! - `json_rows`: JSON lines (with `serde_json`);
//! - `fields`: timestamps (RFC 3339 with the `time` crate), RR intervals, contact;
//! - `pacing`: [`PacedReplay`].

mod csv_rows;
mod fields;
mod json_rows;
mod line_reader;
mod pacing;

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::iter::FusedIterator;
use std::path::Path;

use hb_shared::HeartRateMeasurement;

use crate::{Error, Result};
use csv_rows::CsvHeader;
use json_rows::parse_json_row;
use line_reader::{read_bounded_line, LineRead};
pub use pacing::PacedReplay;

/// Longest line accepted, in bytes without its `\n`. A real row is well
/// under 200 bytes; the cap keeps a corrupt or hostile file from exhausting memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// How many recent row errors a [`Replay`] keeps for its log line.
pub const RECENT_ERRORS: usize = 8;

/// The recording formats a replay understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

impl ReplayFormat {
    /// The format a file's extension announces (case-insensitive), or `None` when
    /// the extension is not one of ours: lets configuration reject a bad
    /// `--source` before anything is opened.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?;
        if ext.eq_ignore_ascii_case("csv") {
            Some(Self::Csv)
        } else if ["jsonl", "ndjson", "json"]
            .iter()
            .any(|e| ext.eq_ignore_ascii_case(e))
        {
            Some(Self::JsonLines)
        } else {
            None
        }
    }
}

/// One replayed measurement and when it happened, relative to the first row, so a
/// consumer can pace it without caring about the recording's wall clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRow {
    /// Milliseconds since the first replayed row.
    pub offset_ms: u64,
    /// The measurement as a strap would have reported it.
    pub measurement: HeartRateMeasurement,
}

/// A skipped row: which line and why, for the operator's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// Line number in the file, from 1.
    pub line: u64,
    /// What is wrong with it.
    pub detail: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.detail)
    }
}

/// Reads a recording row by row. A pure, blocking iterator over a [`BufRead`]:
/// no tokio, no clock, so it is trivially testable; see [`PacedReplay`] for timing.
pub struct Replay {
    reader: Box<dyn BufRead + Send>,
    format: ReplayFormat,
    /// CSV only: the header, once read.
    header: Option<CsvHeader>,
    /// Reused line buffer, never longer than [`MAX_LINE_BYTES`].
    line: Vec<u8>,
    line_no: u64,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
    skipped: u64,
    errors: VecDeque<RowError>,
    done: bool,
}

impl Replay {
    /// Opens a recording, its format chosen by extension. Fails only when nothing
    /// at all can be replayed: unknown extension, unreadable file, or a CSV header
    /// without `timestamp` and `bpm`. An empty file is fine and replays nothing.
    pub fn open(path: &Path) -> Result<Self> {
        let fail = |detail: String| Error::Replay {
            path: path.to_path_buf(),
            detail,
        };
        let format = ReplayFormat::from_path(path).ok_or_else(|| {
            fail("unknown extension: expected .csv, .jsonl, .ndjson or .json".to_owned())
        })?;
        let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        let mut replay = Self::from_reader(BufReader::new(file), format);
        if format == ReplayFormat::Csv {
            // Read the header now, so a file that can never replay is a start-up
            // error rather than a silent no-op.
            loop {
                match replay.step() {
                    Step::Header | Step::End => break,
                    Step::Blank => {}
                    Step::Skipped | Step::Row(_) => {
                        let detail = replay
                            .errors
                            .back()
                            .map_or_else(|| "unreadable header".to_owned(), ToString::to_string);
                        return Err(fail(detail));
                    }
                }
            }
        }
        Ok(replay)
    }

    /// A replay of `reader` in `format`. Infallible: problems, including a bad CSV
    /// header, show up as skipped rows.
    pub fn from_reader(reader: impl BufRead + Send + 'static, format: ReplayFormat) -> Self {
        Self {
            reader: Box::new(reader),
            format,
            header: None,
            line: Vec::new(),
            line_no: 0,
            first_ts: None,
            last_ts: None,
            skipped: 0,
            errors: VecDeque::with_capacity(RECENT_ERRORS),
            done: false,
        }
    }

    /// Malformed rows skipped so far, for the summary at the end of a replay.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The last [`RECENT_ERRORS`] skipped rows, oldest first, for a log line that
    /// points the operator at the broken lines without flooding the log.
    pub fn recent_errors(&self) -> impl Iterator<Item = &RowError> + '_ {
        self.errors.iter()
    }

    /// Processes one line of input.
    fn step(&mut self) -> Step {
        if self.done {
            return Step::End;
        }
        let read = match read_bounded_line(&mut self.reader, &mut self.line) {
            Ok(r) => r,
            Err(e) => {
                // An I/O error is not a bad row: the rest of the file is out of
                // reach, so the replay ends here.
                self.line_no += 1;
                self.reject(format!("read failed, replay stops: {e}"));
                self.done = true;
                return Step::Skipped;
            }
        };
        self.line_no += 1;
        let outcome = match read {
            LineRead::Eof => {
                self.done = true;
                return Step::End;
            }
            LineRead::TooLong(len) => Outcome::Error(format!(
                "line of {len} bytes exceeds the limit of {MAX_LINE_BYTES} bytes"
            )),
            LineRead::Line => match std::str::from_utf8(&self.line) {
                Err(e) => Outcome::Error(format!("not valid UTF-8: {e}")),
                Ok(text) => {
                    let text = if self.line_no == 1 {
                        text.strip_prefix('\u{feff}').unwrap_or(text)
                    } else {
                        text
                    };
                    let text = text.trim();
                    if text.is_empty() {
                        Outcome::Blank
                    } else {
                        match (self.format, &self.header) {
                            (ReplayFormat::Csv, None) => match CsvHeader::parse(text) {
                                Ok(h) => Outcome::Header(h),
                                Err(e) => Outcome::Error(e),
                            },
                            (ReplayFormat::Csv, Some(h)) => h.parse_row(text).into(),
                            (ReplayFormat::JsonLines, _) => parse_json_row(text).into(),
                        }
                    }
                }
            },
        };
        match outcome {
            Outcome::Blank => Step::Blank,
            Outcome::Header(h) => {
                self.header = Some(h);
                Step::Header
            }
            Outcome::Row(ts, measurement) => match self.last_ts {
                Some(last) if ts < last => {
                    self.reject(format!(
                        "timestamp {ts} ms goes back {} ms before the previous row",
                        last.abs_diff(ts)
                    ));
                    Step::Skipped
                }
                _ => {
                    let first = *self.first_ts.get_or_insert(ts);
                    self.last_ts = Some(ts);
                    Step::Row(ReplayRow {
                        offset_ms: ts.abs_diff(first),
                        measurement,
                    })
                }
            },
            Outcome::Error(detail) => {
                if self.format == ReplayFormat::Csv && self.header.is_none() {
                    // Without a header no row can be interpreted.
                    self.reject(format!("invalid CSV header, nothing replayed: {detail}"));
                    self.done = true;
                } else {
                    self.reject(detail);
                }
                Step::Skipped
            }
        }
    }

    fn reject(&mut self, detail: String) {
        self.skipped += 1;
        tracing::debug!(line = self.line_no, %detail, "Replay row skipped.");
        if self.errors.len() == RECENT_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back(RowError {
            line: self.line_no,
            detail,
        });
    }
}

impl Iterator for Replay {
    type Item = ReplayRow;

    fn next(&mut self) -> Option<ReplayRow> {
        loop {
            match self.step() {
                Step::Row(row) => return Some(row),
                Step::End => return None,
                Step::Header | Step::Blank | Step::Skipped => {}
            }
        }
    }
}

impl FusedIterator for Replay {}

/// What one line of input was.
enum Step {
    Row(ReplayRow),
    Header,
    Blank,
    Skipped,
    End,
}

/// What one line of input says, before the replay's own checks.
enum Outcome {
    Row(i64, HeartRateMeasurement),
    Header(CsvHeader),
    Blank,
    Error(String),
}

impl From<Result<(i64, HeartRateMeasurement), String>> for Outcome {
    fn from(r: Result<(i64, HeartRateMeasurement), String>) -> Self {
        match r {
            Ok((ts, m)) => Outcome::Row(ts, m),
            Err(e) => Outcome::Error(e),
        }
    }
}

#[cfg(test)]
mod test_support {
    use std::io::Cursor;

    use hb_shared::RrIntervals;

    use hb_shared::Contact;

    use super::{Replay, ReplayFormat, ReplayRow};

    /// A replay of `text`.
    pub(super) fn replay(text: &str, format: ReplayFormat) -> Replay {
        Replay::from_reader(Cursor::new(text.as_bytes().to_vec()), format)
    }

    /// Every row of `text`, none of them skipped.
    pub(super) fn all_rows(text: &str, format: ReplayFormat) -> Vec<ReplayRow> {
        let mut r = replay(text, format);
        let rows: Vec<_> = r.by_ref().collect();
        assert_eq!(
            r.skipped(),
            0,
            "{:?}",
            r.recent_errors().collect::<Vec<_>>()
        );
        rows
    }

    /// `(offset, bpm, contact)` of each row, what the format tests compare.
    pub(super) fn offset_bpm_contact(rows: &[ReplayRow]) -> Vec<(u64, u16, Contact)> {
        rows.iter()
            .map(|row| (row.offset_ms, row.measurement.bpm, row.measurement.contact))
            .collect()
    }

    /// RR intervals in 1/1024 s.
    pub(super) fn rr(values: &[u16]) -> RrIntervals {
        RrIntervals::from_slice(values).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use hb_shared::Contact;
    use proptest::prelude::*;

    use super::test_support::replay;
    use super::*;

    #[test]
    fn invalid_utf8_is_a_row_error_between_good_rows() {
        let mut bytes = b"timestamp,bpm\n0,60\n1000,6".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(b"\n2000,62\n");
        let mut r = Replay::from_reader(Cursor::new(bytes), ReplayFormat::Csv);
        let bpm: Vec<_> = r.by_ref().map(|row| row.measurement.bpm).collect();
        assert_eq!(bpm, [60, 62]);
        assert_eq!(r.skipped(), 1);
        let e = r.recent_errors().next().unwrap();
        assert_eq!(e.line, 3);
        assert!(e.detail.contains("UTF-8"), "{e}");
    }

    #[test]
    fn an_empty_file_yields_nothing() {
        for format in [ReplayFormat::Csv, ReplayFormat::JsonLines] {
            for text in ["", "\n\n", "\u{feff}"] {
                let mut r = replay(text, format);
                assert_eq!(r.next(), None);
                assert_eq!(r.next(), None);
                assert_eq!(r.skipped(), 0);
            }
        }
        let r = replay("timestamp,bpm\n", ReplayFormat::Csv);
        assert_eq!(r.count(), 0);
        let dir = tempfile::tempdir().unwrap();
        for name in ["empty.csv", "empty.jsonl"] {
            let path = dir.path().join(name);
            std::fs::write(&path, "").unwrap();
            let mut r = Replay::open(&path).unwrap();
            assert_eq!((r.next(), r.skipped()), (None, 0));
        }
    }

    #[test]
    fn open_picks_the_format_from_the_extension() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("s.csv");
        std::fs::write(&csv, "timestamp,bpm\n5,60\n").unwrap();
        let json = dir.path().join("s.NDJSON");
        std::fs::write(&json, "{\"timestamp\": 5, \"bpm\": 61}\n").unwrap();
        assert_eq!(
            Replay::open(&csv).unwrap().next().unwrap().measurement.bpm,
            60
        );
        assert_eq!(
            Replay::open(&json).unwrap().next().unwrap().measurement.bpm,
            61
        );

        for name in ["s.txt", "noext", "s.csv.gz"] {
            let path = dir.path().join(name);
            std::fs::write(&path, "").unwrap();
            let err = Replay::open(&path).err().unwrap();
            assert!(err.to_string().contains("unknown extension"), "{err}");
        }
        let err = Replay::open(&dir.path().join("missing.jsonl"))
            .err()
            .unwrap();
        assert!(matches!(err, Error::Replay { .. }), "{err}");
        assert_eq!(
            ReplayFormat::from_path(Path::new("a.json")),
            Some(ReplayFormat::JsonLines)
        );
    }

    #[test]
    fn the_example_recording_parses_without_skipped_rows() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/recording.csv");
        let mut r = Replay::open(&path).unwrap();
        let rows: Vec<_> = r.by_ref().collect();
        assert_eq!(
            r.skipped(),
            0,
            "{:?}",
            r.recent_errors().collect::<Vec<_>>()
        );
        assert_eq!(rows.len(), 30);
        assert_eq!(rows[0].offset_ms, 0);
        assert!(rows.windows(2).all(|w| w[0].offset_ms < w[1].offset_ms));
        assert!(rows
            .iter()
            .any(|row| row.measurement.contact == Contact::NotDetected));
        for row in rows.iter().filter(|row| row.measurement.bpm > 0) {
            assert!((40..=200).contains(&row.measurement.bpm));
            assert!(!row.measurement.rr_1024.is_empty());
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            for format in [ReplayFormat::Csv, ReplayFormat::JsonLines] {
                let mut input = b"rr,contact,timestamp,bpm\n".to_vec();
                input.extend_from_slice(&bytes);
                let mut r = Replay::from_reader(Cursor::new(input), format);
                let mut last = 0;
                for row in r.by_ref() {
                    prop_assert!(row.offset_ms >= last);
                    last = row.offset_ms;
                }
                prop_assert!(r.recent_errors().count() <= RECENT_ERRORS);
            }
        }
    }
}
