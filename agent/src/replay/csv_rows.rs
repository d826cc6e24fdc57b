//! CSV recordings: a header row naming the columns, then one measurement per row.
//!
//! The replay reads the file with its bounded line reader and hands each line to
//! the `csv` crate on its own, so the line bound holds before `csv` sees a byte, a
//! line number is a line of the file, and a quote left open cannot swallow the rows
//! after it (a quoted field cannot span lines). Fields are trimmed; a field may be
//! wrapped in double quotes, with commas inside; any other quote (text after the
//! closing one, a quote inside an unquoted field, a doubled `""`) is an error: no
//! field of this format needs one, and a half-read value must not pass as another
//! (`"6"2` is not 62). Only `\n` ends a row (a `\r` before it is dropped by the line
//! reader); a lone `\r` is part of a field.

use csv::{ReaderBuilder, StringRecord, Terminator, Trim};
use hb_shared::{HeartRateMeasurement, RrIntervals};
use serde::Deserialize;

use super::fields::{excerpt, parse_contact, parse_decimal_ms, parse_timestamp, push_rr};

/// The columns a row is read from, under the names the header may give them
/// (case-insensitive): `rr_ms` is `rr`.
const COLUMNS: [(&str, &str); 5] = [
    ("timestamp", "timestamp"),
    ("bpm", "bpm"),
    ("rr", "rr"),
    ("rr_ms", "rr"),
    ("contact", "contact"),
];

/// A CSV file's header row: each column's canonical name (see [`COLUMNS`]), or an
/// empty name for a column that is not read, so that rows deserialise by name
/// whatever the header's spelling and order.
pub(super) struct CsvHeader {
    names: StringRecord,
}

/// One row's fields, by column name; an absent column reads as an empty field.
#[derive(Deserialize)]
struct CsvRow<'a> {
    timestamp: &'a str,
    bpm: &'a str,
    #[serde(default)]
    rr: &'a str,
    #[serde(default)]
    contact: &'a str,
}

impl CsvHeader {
    /// Reads the header row; it must name a `timestamp` and a `bpm` column, and no
    /// column twice.
    pub(super) fn parse(line: &str) -> Result<Self, String> {
        let mut names = StringRecord::new();
        for name in split(line)?.iter() {
            let canonical = COLUMNS
                .iter()
                .find(|(spelling, _)| name.eq_ignore_ascii_case(spelling))
                .map_or("", |&(_, canonical)| canonical);
            if !canonical.is_empty() && names.iter().any(|n| n == canonical) {
                return Err(format!("column `{}` appears twice", excerpt(name)));
            }
            names.push_field(canonical);
        }
        let has = |column: &str| names.iter().any(|n| n == column);
        if !(has("timestamp") && has("bpm")) {
            return Err(format!(
                "the header must name a `timestamp` and a `bpm` column, found `{}`",
                excerpt(line)
            ));
        }
        Ok(Self { names })
    }

    /// A data row → its timestamp (Unix milliseconds) and measurement. The row must
    /// have as many fields as the header.
    pub(super) fn parse_row(&self, line: &str) -> Result<(i64, HeartRateMeasurement), String> {
        let record = split(line)?;
        if record.len() != self.names.len() {
            return Err(format!(
                "{} fields where the header has {}",
                record.len(),
                self.names.len()
            ));
        }
        let row: CsvRow<'_> = record
            .deserialize(Some(&self.names))
            .map_err(|e| format!("unreadable row: {e}"))?;
        let ts = parse_timestamp(row.timestamp)?;
        let bpm = match row.bpm {
            "" => return Err("missing bpm".to_owned()),
            b => b
                .parse::<u16>()
                .map_err(|_| format!("bpm `{}` is not an integer 0..=65535", excerpt(b)))?,
        };
        let mut rr_1024 = RrIntervals::new();
        for token in row
            .rr
            .split(|c: char| c == ';' || c.is_whitespace())
            .filter(|t| !t.is_empty())
        {
            push_rr(&mut rr_1024, parse_decimal_ms(token)?)?;
        }
        // An absent column reads as an empty field: no RR, contact not supported.
        let contact = parse_contact(row.contact)?;
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

/// Splits one line into trimmed fields. `csv` is lenient about misplaced quotes
/// (it keeps them as text, joins `"6"2` into `62`, or runs an unclosed one to the
/// end of the line); this format refuses them, before `csv` reads the line.
fn split(line: &str) -> Result<StringRecord, String> {
    if line.bytes().filter(|&b| b == b'"').count() % 2 == 1 {
        return Err(format!("unclosed quote in `{}`", excerpt(line)));
    }
    check_quotes(line)?;
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(Trim::All)
        .terminator(Terminator::Any(b'\n'))
        .from_reader(line.as_bytes());
    let mut parsed = StringRecord::new();
    reader
        .read_record(&mut parsed)
        .map_err(|e| format!("unreadable CSV: {e}"))?;
    let mut fields = StringRecord::with_capacity(line.len(), parsed.len());
    for field in &parsed {
        // `csv` opens a quote only at the very start of a field: the quotes of
        // `a, "b"` are text to it, and come off here.
        let field = field
            .strip_prefix('"')
            .and_then(|f| f.strip_suffix('"'))
            .map_or(field, str::trim);
        if field.contains('"') {
            return Err(format!("stray quote in field `{}`", excerpt(field)));
        }
        fields.push_field(field);
    }
    Ok(fields)
}

/// Refuses a quote anywhere but around a whole field (spaces aside): inside an
/// unquoted field, after a closing quote, or doubled inside a quoted one.
fn check_quotes(line: &str) -> Result<(), String> {
    enum At {
        FieldStart,
        Unquoted,
        Quoted,
        AfterQuote,
    }
    let mut at = At::FieldStart;
    for (i, c) in line.char_indices() {
        at = match (at, c) {
            (At::Quoted, '"') => At::AfterQuote,
            (At::Quoted, _) => At::Quoted,
            (At::FieldStart | At::AfterQuote, ',') | (At::Unquoted, ',') => At::FieldStart,
            (At::FieldStart, '"') => At::Quoted,
            (At::FieldStart, c) if c.is_whitespace() => At::FieldStart,
            (At::AfterQuote, c) if c.is_whitespace() => At::AfterQuote,
            (At::FieldStart | At::Unquoted, c) if c != '"' => At::Unquoted,
            _ => {
                let field = line[..i].rsplit(',').next().unwrap_or_default();
                return Err(format!(
                    "stray quote in field `{}`",
                    excerpt(&format!("{field}{}", &line[i..]))
                ));
            }
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use hb_shared::{Contact, MAX_RR_INTERVALS};

    use crate::replay::test_support::{replay, rr};
    use crate::replay::{Replay, ReplayFormat, RECENT_ERRORS};
    use crate::Error;

    use super::*;

    #[test]
    fn csv_columns_may_come_in_any_order_with_rr_and_contact() {
        let text = "\u{feff}Contact, RR ,bpm,note,timestamp\r\n\
                    detected,812 830,72,hello,1764000000000\r\n\
                    \r\n\
                    not_detected,,0,,1764000001000\r\n\
                    1,\"800;790\",74,x,1764000002500\n\
                    0,,75,,1764000002500\n\
                    ,1000,76,,1764000003000";
        let rows = crate::replay::test_support::all_rows(text, ReplayFormat::Csv);
        assert_eq!(
            crate::replay::test_support::offset_bpm_contact(&rows),
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
    fn quoted_fields_may_hold_commas_and_other_quotes_are_refused() {
        let header = CsvHeader::parse("timestamp,bpm,note").unwrap();
        let bpm = |row: &str| header.parse_row(row).map(|(_, m)| m.bpm);
        assert_eq!(bpm("1000,\"60\",\"a, b\""), Ok(60));
        assert_eq!(bpm("1000, \" 61 \" ,x"), Ok(61));
        assert_eq!(bpm("\"1000\",62,\"\""), Ok(62));
        for (row, error) in [
            ("1000,63,\"x", "unclosed quote"),
            ("1000,64,x\"", "unclosed quote"),
            ("1000,65,a\"b\"", "stray quote"),
            ("1000,66,\"a\"\"b\"", "stray quote"),
            ("1000,\"6\"7,x", "stray quote"),
            ("1000,\"\"68,x", "stray quote"),
            ("1000,6\"9\",x", "stray quote"),
        ] {
            let e = bpm(row).unwrap_err();
            assert!(e.contains(error), "{row}: {e}");
        }
    }

    #[test]
    fn a_lone_carriage_return_does_not_end_a_row() {
        let header = CsvHeader::parse("timestamp,bpm").unwrap();
        let bpm = |row: &str| header.parse_row(row).map(|(_, m)| m.bpm);
        // One row of three fields where the header has two, not the row `1000,60`
        // with the rest cut off at the `\r`.
        assert!(bpm("1000,60\r,x").is_err());
        assert!(bpm("1000,60\r0").is_err());
        let e = bpm("1000,\"60\"\rx").unwrap_err();
        assert!(e.contains("stray quote"), "{e}");
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
}
