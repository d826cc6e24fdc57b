//! Reading a recording line by line with a bound on the line length, so that a
//! corrupt or hostile file cannot make the agent buffer it whole.

use std::io::{BufRead, ErrorKind};

use super::MAX_LINE_BYTES;

/// What [`read_bounded_line`] found.
pub(super) enum LineRead {
    /// A line (possibly the last, unterminated one) is in the buffer, without `\n`.
    Line,
    /// A line of this many bytes was consumed but not kept.
    TooLong(usize),
    /// The end of the input.
    Eof,
}

/// Reads up to the next `\n` into `line`, keeping at most [`MAX_LINE_BYTES`]: a
/// longer line is consumed through its end without being stored, so the next call
/// starts at the next line. A `\r` before the `\n` is dropped.
pub(super) fn read_bounded_line(
    reader: &mut dyn BufRead,
    line: &mut Vec<u8>,
) -> std::io::Result<LineRead> {
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

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Cursor, Read};

    use crate::replay::test_support::replay;
    use crate::replay::{Replay, ReplayFormat};

    use super::*;

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
}
