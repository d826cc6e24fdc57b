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
//!   `;`, at most [`MAX_RR_INTERVALS`]. Decimal milliseconds (`812.5`) are accepted.
//! - `contact` (optional): `detected`/`not_detected`/`not_supported`, or `1`/`0`;
//!   empty or absent means `not_supported`.
//!
//! Other columns are ignored. Header names are case-insensitive; a field may be
//! wrapped in double quotes, but quoted fields cannot span lines or contain commas
//! (no field of this format needs either). Every row has as many fields as the
//! header. A file whose header lacks `timestamp` or `bpm` replays nothing.
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

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, ErrorKind};
use std::iter::FusedIterator;
use std::path::Path;
use std::time::Duration;

use hb_shared::{Contact, HeartRateMeasurement, RrIntervals, MAX_RR_INTERVALS};
use serde::Deserialize;
use tokio::time::Instant;

use crate::{Error, Result};

/// Longest line accepted, in bytes without its `\n`. A real row is well
/// under 200 bytes; the cap keeps a corrupt or hostile file from exhausting memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// How many recent row errors a [`Replay`] keeps for its log line.
pub const RECENT_ERRORS: usize = 8;

/// Longest excerpt of file content quoted in an error, in characters.
const EXCERPT_CHARS: usize = 40;

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
    /// CSV only: the column positions, once the header was read.
    columns: Option<CsvColumns>,
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
            columns: None,
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
                        match (self.format, &self.columns) {
                            (ReplayFormat::Csv, None) => match CsvColumns::parse(text) {
                                Ok(c) => Outcome::Header(c),
                                Err(e) => Outcome::Error(e),
                            },
                            (ReplayFormat::Csv, Some(c)) => c.parse_row(text).into(),
                            (ReplayFormat::JsonLines, _) => parse_json_row(text).into(),
                        }
                    }
                }
            },
        };
        match outcome {
            Outcome::Blank => Step::Blank,
            Outcome::Header(c) => {
                self.columns = Some(c);
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
                if self.format == ReplayFormat::Csv && self.columns.is_none() {
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

/// A [`Replay`] at recorded speed times a factor, so a session can be replayed
/// live, or faster for soak tests.
pub struct PacedReplay {
    replay: Replay,
    speed: f64,
    start: Option<Instant>,
    /// The row read but not yet due: keeps [`PacedReplay::next`] cancel-safe.
    pending: Option<ReplayRow>,
}

impl PacedReplay {
    /// Paces `replay` at `speed` times the recorded speed (2.0 = twice as fast;
    /// infinity = as fast as the consumer reads). A speed that is not positive
    /// (zero, negative, NaN) is a configuration mistake: it is logged and 1.0 used,
    /// rather than stalling forever.
    pub fn new(replay: Replay, speed: f64) -> Self {
        let speed = if speed > 0.0 {
            speed
        } else {
            tracing::warn!(speed, "Replay speed must be positive; replaying at 1.0.");
            1.0
        };
        Self {
            replay,
            speed,
            start: None,
            pending: None,
        }
    }

    /// The next measurement once it is due: `offset / speed` after the first call.
    /// A consumer that falls behind gets the overdue rows at once (no drift: each
    /// deadline is computed from the start). Cancel-safe: dropping the future
    /// mid-wait keeps the row for the next call. `None` at the end of the recording.
    ///
    /// Reading the row is a blocking read of the underlying [`BufRead`]; for a local
    /// file behind a buffer that is a rare, short read, acceptable on the runtime.
    pub async fn next(&mut self) -> Option<HeartRateMeasurement> {
        let start = *self.start.get_or_insert_with(Instant::now);
        if self.pending.is_none() {
            self.pending = self.replay.next();
        }
        let offset_ms = self.pending.as_ref()?.offset_ms;
        tokio::time::sleep_until(due(start, offset_ms, self.speed)).await;
        self.pending.take().map(|row| row.measurement)
    }

    /// The underlying replay, for its [`Replay::skipped`] count and errors.
    pub fn replay(&self) -> &Replay {
        &self.replay
    }
}

/// When a row `offset_ms` into the recording is due at `speed`. Saturates instead
/// of overflowing for absurd gaps or speeds.
fn due(start: Instant, offset_ms: u64, speed: f64) -> Instant {
    // f64 → u64 `as` saturates (and maps NaN to 0): no panic whatever the inputs.
    let nanos = (offset_ms as f64 * 1e6 / speed).round() as u64;
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    start
        .checked_add(Duration::from_nanos(nanos))
        .or_else(|| start.checked_add(far))
        .unwrap_or(start)
}

enum Step {
    Row(ReplayRow),
    Header,
    Blank,
    Skipped,
    End,
}

enum Outcome {
    Row(i64, HeartRateMeasurement),
    Header(CsvColumns),
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

enum LineRead {
    /// A line (possibly the last, unterminated one) is in the buffer, without `\n`.
    Line,
    /// A line of this many bytes was consumed but not kept.
    TooLong(usize),
    Eof,
}

/// Reads up to the next `\n` into `line`, keeping at most [`MAX_LINE_BYTES`]: a
/// longer line is consumed through its end without being stored, so the next call
/// starts at the next line.
fn read_bounded_line(reader: &mut dyn BufRead, line: &mut Vec<u8>) -> std::io::Result<LineRead> {
    line.clear();
    let mut len = 0usize;
    let mut too_long = false;
    let mut any = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(match (any, too_long) {
                (false, _) => LineRead::Eof,
                (true, true) => LineRead::TooLong(len),
                (true, false) => LineRead::Line,
            });
        }
        any = true;
        let newline = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..newline.unwrap_or(buf.len())];
        len = len.saturating_add(chunk.len());
        if !too_long {
            if len > MAX_LINE_BYTES {
                too_long = true;
                *line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = chunk.len() + usize::from(newline.is_some());
        reader.consume(used);
        if newline.is_some() {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(if too_long {
                LineRead::TooLong(len)
            } else {
                LineRead::Line
            });
        }
    }
}

/// Positions of the known CSV columns.
struct CsvColumns {
    count: usize,
    timestamp: usize,
    bpm: usize,
    rr: Option<usize>,
    contact: Option<usize>,
}

impl CsvColumns {
    fn parse(header: &str) -> Result<Self, String> {
        let (mut timestamp, mut bpm, mut rr, mut contact) = (None, None, None, None);
        let mut count = 0;
        for (i, name) in csv_fields(header).enumerate() {
            count += 1;
            let name = name?;
            let slot = if name.eq_ignore_ascii_case("timestamp") {
                &mut timestamp
            } else if name.eq_ignore_ascii_case("bpm") {
                &mut bpm
            } else if name.eq_ignore_ascii_case("rr") || name.eq_ignore_ascii_case("rr_ms") {
                &mut rr
            } else if name.eq_ignore_ascii_case("contact") {
                &mut contact
            } else {
                continue;
            };
            if slot.replace(i).is_some() {
                return Err(format!("column `{}` appears twice", excerpt(name)));
            }
        }
        match (timestamp, bpm) {
            (Some(timestamp), Some(bpm)) => Ok(Self {
                count,
                timestamp,
                bpm,
                rr,
                contact,
            }),
            _ => Err(format!(
                "the header must name a `timestamp` and a `bpm` column, found `{}`",
                excerpt(header)
            )),
        }
    }

    fn parse_row(&self, row: &str) -> Result<(i64, HeartRateMeasurement), String> {
        let (mut ts, mut bpm, mut rr, mut contact) = ("", "", "", "");
        let mut found = 0;
        for (i, f) in csv_fields(row).enumerate() {
            let f = f?;
            found += 1;
            if i == self.timestamp {
                ts = f;
            } else if i == self.bpm {
                bpm = f;
            } else if Some(i) == self.rr {
                rr = f;
            } else if Some(i) == self.contact {
                contact = f;
            }
        }
        if found != self.count {
            return Err(format!(
                "{found} fields where the header has {}",
                self.count
            ));
        }
        let ts = parse_timestamp(ts)?;
        let bpm = match bpm {
            "" => return Err("missing bpm".to_owned()),
            b => b
                .parse::<u16>()
                .map_err(|_| format!("bpm `{}` is not an integer 0..=65535", excerpt(b)))?,
        };
        let mut rr_1024 = RrIntervals::new();
        for token in rr
            .split(|c: char| c == ';' || c.is_whitespace())
            .filter(|t| !t.is_empty())
        {
            push_rr(&mut rr_1024, parse_decimal_ms(token)?)?;
        }
        // An absent column reads as an empty field: no RR, contact not supported.
        let contact = parse_contact(contact)?;
        Ok((
            ts,
            HeartRateMeasurement {
                bpm,
                contact,
                energy_kj: None,
                rr_1024,
            },
        ))
    }
}

/// Splits a CSV line on commas, trimming each field and removing one pair of
/// surrounding double quotes. Any other quote is an error (see the module doc).
fn csv_fields(line: &str) -> impl Iterator<Item = Result<&str, String>> {
    line.split(',').map(|f| {
        let f = f.trim();
        let f = f
            .strip_prefix('"')
            .and_then(|g| g.strip_suffix('"'))
            .unwrap_or(f);
        if f.contains('"') {
            Err(format!("stray quote in field `{}`", excerpt(f)))
        } else {
            Ok(f.trim())
        }
    })
}

#[derive(Deserialize)]
struct JsonRow {
    timestamp: serde_json::Value,
    bpm: u16,
    #[serde(default, alias = "rr")]
    rr_ms: Option<Vec<f64>>,
    #[serde(default)]
    contact: Option<serde_json::Value>,
}

fn parse_json_row(line: &str) -> Result<(i64, HeartRateMeasurement), String> {
    let row: JsonRow = serde_json::from_str(line).map_err(|e| format!("invalid JSON row: {e}"))?;
    let ts = match &row.timestamp {
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("timestamp {n} is not an integer of Unix milliseconds"))?,
        serde_json::Value::String(s) => parse_timestamp(s)?,
        _ => return Err("timestamp is neither a number nor a string".to_owned()),
    };
    let mut rr_1024 = RrIntervals::new();
    for ms in row.rr_ms.unwrap_or_default() {
        push_rr(&mut rr_1024, ms)?;
    }
    let contact = match &row.contact {
        None => Contact::NotSupported,
        Some(serde_json::Value::String(s)) => parse_contact(s)?,
        Some(serde_json::Value::Bool(b)) => {
            if *b {
                Contact::Detected
            } else {
                Contact::NotDetected
            }
        }
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(1) => Contact::Detected,
            Some(0) => Contact::NotDetected,
            _ => return Err(format!("contact {n} is not 1 or 0")),
        },
        Some(_) => return Err("contact is not a string, number or boolean".to_owned()),
    };
    Ok((
        ts,
        HeartRateMeasurement {
            bpm: row.bpm,
            contact,
            energy_kj: None,
            rr_1024,
        },
    ))
}

fn parse_contact(s: &str) -> Result<Contact, String> {
    let is = |name: &str| s.eq_ignore_ascii_case(name);
    if is("detected") || s == "1" {
        Ok(Contact::Detected)
    } else if is("not_detected") || s == "0" {
        Ok(Contact::NotDetected)
    } else if is("not_supported") || s.is_empty() {
        Ok(Contact::NotSupported)
    } else {
        Err(format!("unknown contact `{}`", excerpt(s)))
    }
}

/// Milliseconds written as plain decimal digits with an optional fraction; no
/// sign, exponent, `inf` or `NaN`, which `f64::from_str` would accept.
fn parse_decimal_ms(token: &str) -> Result<f64, String> {
    let bad = || {
        format!(
            "RR interval `{}` is not a number of milliseconds",
            excerpt(token)
        )
    };
    let (int, frac) = token.split_once('.').unwrap_or((token, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || token.ends_with('.') {
        return Err(bad());
    }
    token.parse::<f64>().map_err(|_| bad())
}

/// Converts RR milliseconds to 1/1024 s (rounded) and appends them.
fn push_rr(rr_1024: &mut RrIntervals, ms: f64) -> Result<(), String> {
    if !ms.is_finite() || ms < 0.0 {
        return Err(format!("RR interval {ms} ms is not a duration"));
    }
    let units = (ms * 1024.0 / 1000.0).round();
    if units > f64::from(u16::MAX) {
        return Err(format!("RR interval {ms} ms is longer than 64 s"));
    }
    rr_1024
        .push(units as u16)
        .map_err(|_| format!("more than {MAX_RR_INTERVALS} RR intervals"))
}

/// Unix milliseconds (an optionally signed integer) or an RFC 3339 date-time.
fn parse_timestamp(s: &str) -> Result<i64, String> {
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .map_err(|_| format!("timestamp `{}` is out of range", excerpt(s)));
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!(
            "timestamp `{}` is neither Unix milliseconds nor RFC 3339",
            excerpt(s)
        )
    })
}

/// RFC 3339 `date-time` → Unix milliseconds: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`,
/// `T` also as `t` or a space, `Z` also as `z`. Hand-written (thirty lines) rather
/// than pulling a date crate into the agent for one format.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let at = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if at(i, b".") {
        i += 1;
        let rest = b.get(i..).unwrap_or_default();
        let digits = rest.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds are the first three digits; further ones are truncated.
        for k in 0..3 {
            let d = rest.get(k).filter(|_| k < digits).map_or(0, |d| d - b'0');
            millis = millis * 10 + i64::from(d);
        }
        i += digits;
    }
    let offset_min = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let m = i64::from(oh * 60 + om);
            if *sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_min * 60;
    Some(seconds * 1000 + millis)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// At most [`EXCERPT_CHARS`] of untrusted text, so errors stay small.
fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::{Cursor, Read};

    fn replay(text: &str, format: ReplayFormat) -> Replay {
        Replay::from_reader(Cursor::new(text.as_bytes().to_vec()), format)
    }

    fn rr(values: &[u16]) -> RrIntervals {
        RrIntervals::from_slice(values).unwrap()
    }

    #[test]
    fn csv_columns_may_come_in_any_order_with_rr_and_contact() {
        let text = "\u{feff}Contact, RR ,bpm,note,timestamp\r\n\
                    detected,812 830,72,hello,1764000000000\r\n\
                    \r\n\
                    not_detected,,0,,1764000001000\r\n\
                    1,\"800;790\",74,x,1764000002500\n\
                    0,,75,,1764000002500\n\
                    ,1000,76,,1764000003000";
        let mut r = replay(text, ReplayFormat::Csv);
        let rows: Vec<_> = r.by_ref().collect();
        assert_eq!(
            r.skipped(),
            0,
            "{:?}",
            r.recent_errors().collect::<Vec<_>>()
        );
        let got: Vec<_> = rows
            .iter()
            .map(|row| (row.offset_ms, row.measurement.bpm, row.measurement.contact))
            .collect();
        assert_eq!(
            got,
            [
                (0, 72, Contact::Detected),
                (1000, 0, Contact::NotDetected),
                (2500, 74, Contact::Detected),
                (2500, 75, Contact::NotDetected),
                (3000, 76, Contact::NotSupported),
            ]
        );
        assert_eq!(rows[0].measurement.rr_1024, rr(&[831, 850]));
        assert_eq!(rows[2].measurement.rr_1024, rr(&[819, 809]));
        assert!(rows[1].measurement.rr_1024.is_empty());
        assert!(rows.iter().all(|row| row.measurement.energy_kj.is_none()));
    }

    #[test]
    fn csv_without_optional_columns_has_no_rr_and_unsupported_contact() {
        let rows: Vec<_> = replay(
            "bpm,timestamp\n60,2026-01-02T03:04:05Z\n",
            ReplayFormat::Csv,
        )
        .collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].measurement,
            HeartRateMeasurement {
                bpm: 60,
                ..Default::default()
            }
        );
    }

    #[test]
    fn json_lines_are_read_with_optional_rr_and_contact() {
        let text = r#"{"timestamp": 1764000000000, "bpm": 72, "rr_ms": [812, 830], "contact": "detected"}
{"timestamp": 1764000001000, "bpm": 73}

{"bpm": 74, "timestamp": "2025-11-24T16:00:02.000Z", "rr": [812.5], "contact": 0, "extra": {"a": [1]}}
{"timestamp": 1764000003000, "bpm": 75, "rr_ms": null, "contact": true}"#;
        let mut r = replay(text, ReplayFormat::JsonLines);
        let rows: Vec<_> = r.by_ref().collect();
        assert_eq!(
            r.skipped(),
            0,
            "{:?}",
            r.recent_errors().collect::<Vec<_>>()
        );
        let got: Vec<_> = rows
            .iter()
            .map(|row| (row.offset_ms, row.measurement.bpm, row.measurement.contact))
            .collect();
        assert_eq!(
            got,
            [
                (0, 72, Contact::Detected),
                (1000, 73, Contact::NotSupported),
                (2000, 74, Contact::NotDetected),
                (3000, 75, Contact::Detected),
            ]
        );
        assert_eq!(rows[0].measurement.rr_1024, rr(&[831, 850]));
        assert_eq!(rows[2].measurement.rr_1024, rr(&[832]));
    }

    #[test]
    fn rr_milliseconds_become_rounded_1024ths_of_a_second() {
        let mut v = RrIntervals::new();
        for ms in [1000.0, 500.0, 812.0, 830.0, 0.0, 63_999.0] {
            push_rr(&mut v, ms).unwrap();
        }
        // 812 ms × 1.024 = 831.488 → 831; 830 × 1.024 = 849.92 → 850.
        assert_eq!(v, rr(&[1024, 512, 831, 850, 0, 65_535]));
        assert!(push_rr(&mut v, 64_000.0).is_err());
        assert!(push_rr(&mut v, -1.0).is_err());
        assert!(push_rr(&mut v, f64::NAN).is_err());
        for bad in [
            "", ".5", "5.", "1e3", "-5", "+5", "inf", "NaN", "1.2.3", "٣",
        ] {
            assert!(parse_decimal_ms(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_decimal_ms("812.25"), Ok(812.25));
    }

    #[test]
    fn rfc3339_timestamps_agree_with_unix_milliseconds() {
        for (text, ms) in [
            ("2026-01-02T03:04:05.123Z", 1_767_323_045_123),
            ("2026-01-02t03:04:05.123456789z", 1_767_323_045_123),
            ("2026-01-02 04:04:05.1+01:00", 1_767_323_045_100),
            ("2026-01-01T22:34:05-04:30", 1_767_323_045_000),
            ("1970-01-01T00:00:00Z", 0),
            ("1969-12-31T23:59:59.999Z", -1),
            ("2024-02-29T00:00:00Z", 1_709_164_800_000),
            ("2016-12-31T23:59:60Z", 1_483_228_800_000),
            ("1767323045123", 1_767_323_045_123),
            ("-1", -1),
        ] {
            assert_eq!(parse_timestamp(text), Ok(ms), "{text}");
        }
    }

    #[test]
    fn invalid_timestamps_are_rejected() {
        for text in [
            "",
            "-",
            "2025-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "2026-01-01T00:00:61Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00+1:00",
            "2026-01-01T00:00:00+24:00",
            "2026-01-01T00:00:00Zjunk",
            "2026-1-01T00:00:00Z",
            "1764000000000.5",
            "99999999999999999999",
            "yesterday",
        ] {
            assert!(parse_timestamp(text).is_err(), "{text}");
        }
    }

    #[test]
    fn malformed_csv_rows_are_skipped_counted_and_reported_by_line() {
        let many_rr = vec!["800"; MAX_RR_INTERVALS + 1].join(" ");
        let text = format!(
            "timestamp,bpm,rr,contact\n\
             1000,60,,detected\n\
             1x00,61,,detected\n\
             2000,,,detected\n\
             2000,70000,,detected\n\
             2000,-1,,detected\n\
             2000,62,abc,detected\n\
             2000,63,,maybe\n\
             2000,64,{many_rr},detected\n\
             2000,65,\n\
             2000,66,,detected,extra\n\
             2000,\"6\"7\",,detected\n\
             3000,68,,detected\n\
             2999,69,,detected\n\
             3000,70,,detected\n"
        );
        let mut r = replay(&text, ReplayFormat::Csv);
        let rows: Vec<_> = r
            .by_ref()
            .map(|row| (row.offset_ms, row.measurement.bpm))
            .collect();
        assert_eq!(rows, [(0, 60), (2000, 68), (2000, 70)]);
        assert_eq!(r.skipped(), 11);
        let lines: Vec<_> = r.recent_errors().map(|e| e.line).collect();
        assert_eq!(
            lines,
            [6, 7, 8, 9, 10, 11, 12, 14],
            "only the last {RECENT_ERRORS} are kept"
        );
        let last = r.recent_errors().last().unwrap().to_string();
        assert!(
            last.starts_with("line 14: timestamp 2999 ms goes back 1 ms"),
            "{last}"
        );
    }

    #[test]
    fn malformed_json_rows_are_skipped_counted_and_reported_by_line() {
        let many_rr = vec!["800"; MAX_RR_INTERVALS + 1].join(",");
        let text = format!(
            "{{\"timestamp\": 1000, \"bpm\": 60}}\n\
             {{\"timestamp\": 2000}}\n\
             {{\"timestamp\": 2000, \"bpm\": 70000}}\n\
             {{\"timestamp\": 2000, \"bpm\": 72.5}}\n\
             {{\"timestamp\": 2000.5, \"bpm\": 72}}\n\
             {{\"timestamp\": \"soon\", \"bpm\": 72}}\n\
             {{\"timestamp\": 2000, \"bpm\": 72, \"rr_ms\": [{many_rr}]}}\n\
             {{\"timestamp\": 2000, \"bpm\": 72, \"rr_ms\": [-5]}}\n\
             {{\"timestamp\": 2000, \"bpm\": 72, \"contact\": \"maybe\"}}\n\
             {{\"timestamp\": 2000, \"bpm\": 72, \"contact\": 2}}\n\
             [1, 2]\n\
             {{\"timestamp\": 2000, \"bpm\"\n\
             {{\"timestamp\": 500, \"bpm\": 80}}\n\
             {{\"timestamp\": 3000, \"bpm\": 81}}\n"
        );
        let mut r = replay(&text, ReplayFormat::JsonLines);
        let rows: Vec<_> = r
            .by_ref()
            .map(|row| (row.offset_ms, row.measurement.bpm))
            .collect();
        assert_eq!(rows, [(0, 60), (2000, 81)]);
        assert_eq!(r.skipped(), 12);
        let errors: Vec<_> = r.recent_errors().map(ToString::to_string).collect();
        assert!(errors[0].starts_with("line 6: "), "{errors:?}");
        assert!(
            errors[1].contains(&format!("more than {MAX_RR_INTERVALS} RR")),
            "{errors:?}"
        );
        assert!(
            errors[7].starts_with("line 13: timestamp 500 ms goes back"),
            "{errors:?}"
        );
    }

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
    fn a_huge_line_is_skipped_without_being_buffered() {
        let huge = std::io::repeat(b'7').take(10 * 1024 * 1024);
        let reader = Cursor::new(b"timestamp,bpm\n0,60\n".to_vec())
            .chain(huge)
            .chain(Cursor::new(b"\n1000,61\n".to_vec()))
            .chain(Cursor::new(vec![b'8'; MAX_LINE_BYTES + 1]));
        let mut r = Replay::from_reader(BufReader::new(reader), ReplayFormat::Csv);
        let rows: Vec<_> = r
            .by_ref()
            .map(|row| (row.offset_ms, row.measurement.bpm))
            .collect();
        assert_eq!(rows, [(0, 60), (1000, 61)]);
        assert_eq!(r.skipped(), 2, "the long unterminated last line too");
        let lines: Vec<_> = r.recent_errors().map(|e| e.line).collect();
        assert_eq!(lines, [3, 5]);
        assert!(
            r.line.capacity() <= 2 * MAX_LINE_BYTES,
            "{}",
            r.line.capacity()
        );
        // A line of exactly the limit is still a line (here: a bad row, not too long).
        let mut r = replay(
            &format!("timestamp,bpm\n{}\n", "9".repeat(MAX_LINE_BYTES)),
            ReplayFormat::Csv,
        );
        assert_eq!(r.next(), None);
        assert!(r.recent_errors().next().unwrap().detail.contains("fields"));
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
    fn a_csv_without_a_usable_header_replays_nothing() {
        for header in [
            "1764000000000,72",
            "timestamp,rr",
            "timestamp,bpm,BPM",
            "\"x",
        ] {
            let text = format!("{header}\n1764000000000,72\n1764000001000,73\n");
            let mut r = replay(&text, ReplayFormat::Csv);
            assert_eq!(r.next(), None, "{header}");
            assert_eq!(r.skipped(), 1, "{header}");
            let e = r.recent_errors().next().unwrap();
            assert!(e.detail.contains("header"), "{e}");

            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("bad.CSV");
            std::fs::write(&path, &text).unwrap();
            let err = Replay::open(&path).err().unwrap();
            assert!(matches!(err, Error::Replay { .. }), "{err}");
            assert!(
                err.to_string().contains("line 1: invalid CSV header"),
                "{err}"
            );
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

    const PACED: &str = "timestamp,bpm\n1764000000000,60\n1764000001000,61\n1764000002500,62\n";

    async fn paced_times(speed: f64) -> Vec<(u128, u16)> {
        let mut paced = PacedReplay::new(replay(PACED, ReplayFormat::Csv), speed);
        // Start late: the schedule counts from the first call, not from `new`.
        tokio::time::sleep(Duration::from_secs(7)).await;
        let start = Instant::now();
        let mut out = Vec::new();
        while let Some(m) = paced.next().await {
            out.push((start.elapsed().as_millis(), m.bpm));
        }
        assert_eq!(paced.replay().skipped(), 0);
        out
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_at_speed_1_follows_the_recording() {
        assert_eq!(paced_times(1.0).await, [(0, 60), (1000, 61), (2500, 62)]);
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_at_speed_10_is_ten_times_faster() {
        assert_eq!(paced_times(10.0).await, [(0, 60), (100, 61), (250, 62)]);
    }

    #[tokio::test(start_paused = true)]
    async fn infinite_speed_does_not_wait_and_a_bad_speed_means_1() {
        assert_eq!(
            paced_times(f64::INFINITY).await,
            [(0, 60), (0, 61), (0, 62)]
        );
        for bad in [0.0, -2.0, f64::NAN] {
            assert_eq!(paced_times(bad).await, [(0, 60), (1000, 61), (2500, 62)]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_consumer_catches_up_without_drift() {
        let mut paced = PacedReplay::new(replay(PACED, ReplayFormat::Csv), 1.0);
        let start = Instant::now();
        assert_eq!(paced.next().await.map(|m| m.bpm), Some(60));
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert_eq!(paced.next().await.map(|m| m.bpm), Some(61));
        assert_eq!(start.elapsed().as_millis(), 2000);
        assert_eq!(paced.next().await.map(|m| m.bpm), Some(62));
        assert_eq!(start.elapsed().as_millis(), 2500);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_next_keeps_its_row() {
        let mut paced = PacedReplay::new(replay(PACED, ReplayFormat::Csv), 1.0);
        let start = Instant::now();
        assert_eq!(paced.next().await.map(|m| m.bpm), Some(60));
        let early = tokio::time::timeout(Duration::from_millis(400), paced.next()).await;
        assert!(early.is_err());
        assert_eq!(paced.next().await.map(|m| m.bpm), Some(61));
        assert_eq!(start.elapsed().as_millis(), 1000);
    }

    #[test]
    fn due_saturates_instead_of_overflowing() {
        let start = Instant::now();
        assert!(due(start, u64::MAX, 1e-300) > start);
        assert_eq!(due(start, 1234, f64::INFINITY), start);
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

        #[test]
        fn arbitrary_text_timestamps_never_panic(s in "\\PC{0,40}") {
            let _ = parse_timestamp(&s);
        }

        #[test]
        fn rfc3339_rows_of_well_formed_dates_parse(
            y in 0u32..10_000, mo in 1u32..=12, d in 1u32..=28, h in 0u32..24, mi in 0u32..60,
            s in 0u32..60, ms in 0u32..1000,
        ) {
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z");
            let parsed = parse_timestamp(&text).unwrap();
            let day_ms = i64::from(((h * 60 + mi) * 60 + s) * 1000 + ms);
            prop_assert_eq!(parsed - day_ms, days_from_civil(i64::from(y), mo, d) * 86_400_000);
        }
    }
}
