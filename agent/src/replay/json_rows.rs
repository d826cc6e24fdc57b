//! JSON-lines recordings: one object per line, read with `serde_json`.

use hb_shared::{Contact, HeartRateMeasurement, RrIntervals};
use serde::Deserialize;

use super::fields::{parse_contact, parse_timestamp, push_rr};

/// One line as written; `timestamp` and `contact` take more than one JSON type.
#[derive(Deserialize)]
struct JsonRow {
    timestamp: serde_json::Value,
    bpm: u16,
    #[serde(default, alias = "rr")]
    rr_ms: Option<Vec<f64>>,
    #[serde(default)]
    contact: Option<serde_json::Value>,
}

/// A JSON line → its timestamp (Unix milliseconds) and measurement.
pub(super) fn parse_json_row(line: &str) -> Result<(i64, HeartRateMeasurement), String> {
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

#[cfg(test)]
mod tests {
    use hb_shared::MAX_RR_INTERVALS;

    use crate::replay::test_support::{replay, rr};
    use crate::replay::ReplayFormat;

    use super::*;

    #[test]
    fn json_lines_are_read_with_optional_rr_and_contact() {
        let text = r#"{"timestamp": 1764000000000, "bpm": 72, "rr_ms": [812, 830], "contact": "detected"}
{"timestamp": 1764000001000, "bpm": 73}

{"bpm": 74, "timestamp": "2025-11-24T16:00:02.000Z", "rr": [812.5], "contact": 0, "extra": {"a": [1]}}
{"timestamp": 1764000003000, "bpm": 75, "rr_ms": null, "contact": true}"#;
        let rows = crate::replay::test_support::all_rows(text, ReplayFormat::JsonLines);
        assert_eq!(
            crate::replay::test_support::offset_bpm_contact(&rows),
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
}
