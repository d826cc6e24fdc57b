//! The Prometheus text exposition format (and OpenMetrics text), read back:
//! `name{label="value",…} value [timestamp]` lines. Lines starting with `#`
//! (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) and blank lines are skipped; anything
//! after a sample's value (a timestamp, an exemplar) is ignored.

use std::fmt;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name, with its suffix (`_total`, `_bucket`, `_count`, …).
    pub name: String,
    /// Label names and values, in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// A line that is neither a comment nor a sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metrics line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

/// Every sample of one scrape, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    samples: Vec<Sample>,
}

impl Exposition {
    /// Parses a whole `/metrics` body.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut samples = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sample = parse_sample(line).map_err(|reason| ParseError {
                line: i + 1,
                reason,
            })?;
            samples.push(sample);
        }
        Ok(Self { samples })
    }

    /// The value of the sample called `name` that has no labels.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels.is_empty())
            .map(|s| s.value)
    }

    /// A histogram's cumulative buckets, `(upper bound, observations at or
    /// below it)`, by upper bound (the last one `+Inf`). `histogram` is the
    /// name without `_bucket`.
    pub fn buckets(&self, histogram: &str) -> Vec<(f64, f64)> {
        let name = format!("{histogram}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| {
                let (_, le) = s.labels.iter().find(|(k, _)| k == "le")?;
                Some((le.parse().ok()?, s.value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

/// One sample line (trimmed, not a comment).
fn parse_sample(line: &str) -> Result<Sample, &'static str> {
    let name_len = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    if name_len == 0 {
        return Err("no metric name");
    }
    let (name, mut rest) = line.split_at(name_len);
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = value.parse().map_err(|_| "the value is not a number")?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The labels after `{`, up to and including `}`, into `labels`; returns what
/// follows the `}`.
fn parse_labels<'a>(
    mut rest: &'a str,
    labels: &mut Vec<(String, String)>,
) -> Result<&'a str, &'static str> {
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let (key, after_key) = rest.split_once('=').ok_or("a label without '='")?;
        let quoted = after_key
            .trim_start()
            .strip_prefix('"')
            .ok_or("a label value without quotes")?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("an unterminated label value"),
                },
                Some((_, c)) => value.push(c),
                None => return Err("an unterminated label value"),
            }
        };
        labels.push((key.trim().to_owned(), value));
        rest = &quoted[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `hb_runtime::metrics` renders it (Prometheus text 0.0.4).
    const PROMETHEUS_TEXT: &str = "\
# HELP hb_collector_inserted_total New rows in readings.
# TYPE hb_collector_inserted_total counter
hb_collector_inserted_total 1500
# HELP hb_collector_quarantined_total Quarantine entries written, by reason.
# TYPE hb_collector_quarantined_total counter
hb_collector_quarantined_total{reason=\"bad \\\"json\\\"\"} 2
# TYPE hb_collector_batch_readings histogram
hb_collector_batch_readings_bucket{le=\"1\"} 0
hb_collector_batch_readings_bucket{le=\"1000\"} 2
hb_collector_batch_readings_bucket{le=\"10000\"} 3
hb_collector_batch_readings_bucket{le=\"+Inf\"} 3
hb_collector_batch_readings_sum 1500
hb_collector_batch_readings_count 3
";

    /// As the prometheus-client crate renders it (OpenMetrics text).
    const OPENMETRICS_TEXT: &str = "\
# HELP hb_collector_inserted New rows in readings.
# TYPE hb_collector_inserted counter
hb_collector_inserted_total 1500
# TYPE hb_collector_batch_readings histogram
hb_collector_batch_readings_sum 1500.0
hb_collector_batch_readings_count 3
hb_collector_batch_readings_bucket{le=\"1.0\"} 0
hb_collector_batch_readings_bucket{le=\"+Inf\"} 3 # {trace_id=\"x\"} 700.0 1.5
hb_collector_batch_readings_bucket{le=\"1000.0\"} 2
hb_collector_consumer_lag 0 1700000000
# EOF
";

    #[test]
    fn unlabelled_samples_are_read_by_name_and_comments_are_skipped() {
        let e = Exposition::parse(PROMETHEUS_TEXT).unwrap();
        assert_eq!(e.value("hb_collector_inserted_total"), Some(1500.0));
        assert_eq!(e.value("hb_collector_batch_readings_count"), Some(3.0));
        assert_eq!(e.value("hb_collector_missing_total"), None);
        // Labelled samples are not unlabelled ones.
        assert_eq!(e.value("hb_collector_quarantined_total"), None);
    }

    #[test]
    fn label_values_are_unescaped() {
        let e = Exposition::parse(PROMETHEUS_TEXT).unwrap();
        let q = e
            .samples
            .iter()
            .find(|s| s.name == "hb_collector_quarantined_total")
            .unwrap();
        assert_eq!(q.labels, [("reason".to_owned(), "bad \"json\"".to_owned())]);
        assert_eq!(q.value, 2.0);
    }

    #[test]
    fn histogram_buckets_come_sorted_by_bound_with_inf_last() {
        let e = Exposition::parse(PROMETHEUS_TEXT).unwrap();
        assert_eq!(
            e.buckets("hb_collector_batch_readings"),
            [
                (1.0, 0.0),
                (1000.0, 2.0),
                (10000.0, 3.0),
                (f64::INFINITY, 3.0)
            ]
        );
    }

    #[test]
    fn openmetrics_text_with_float_bounds_exemplars_timestamps_and_eof_reads_the_same() {
        let e = Exposition::parse(OPENMETRICS_TEXT).unwrap();
        assert_eq!(e.value("hb_collector_inserted_total"), Some(1500.0));
        assert_eq!(e.value("hb_collector_batch_readings_sum"), Some(1500.0));
        assert_eq!(e.value("hb_collector_consumer_lag"), Some(0.0));
        assert_eq!(
            e.buckets("hb_collector_batch_readings"),
            [(1.0, 0.0), (1000.0, 2.0), (f64::INFINITY, 3.0)]
        );
    }

    #[test]
    fn a_line_that_is_not_a_sample_is_refused_with_its_number() {
        let err = Exposition::parse("# HELP x y\nx 1\n{le=\"1\"} 2\n").unwrap_err();
        assert_eq!(
            err,
            ParseError {
                line: 3,
                reason: "no metric name"
            }
        );
        for bad in ["x", "x{le=\"1} 2", "x{le=1} 2", "x{le} 2", "x one"] {
            assert!(Exposition::parse(bad).is_err(), "{bad}");
        }
    }
}
