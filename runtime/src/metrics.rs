//! A tiny metrics registry with Prometheus text exposition (format 0.0.4).
//!
//! Updating a metric is one relaxed atomic operation (a compare-and-swap loop for a
//! histogram's sum): no locks and no allocation, so the bridge and collector can
//! count every message. Only [`LabeledCounter::with`] takes a lock (a read lock
//! when the label value has been seen before); callers on a hot path keep the
//! returned [`Counter`] for their fixed label values.
//!
//! Names are checked when a metric is registered; a bad or duplicate name is a
//! programming error and panics with the offending name.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

/// Histogram bounds for latencies in seconds, from 1 ms to 10 s.
pub const LATENCY_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The label value that a [`LabeledCounter`] counts under once it has seen its
/// maximum number of distinct values.
pub const OTHER: &str = "other";

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero, not registered anywhere.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down, such as a queue depth or a connection state.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// A gauge at zero, not registered anywhere.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }

    /// Adds `d` (negative to subtract).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Counts observations into fixed buckets, plus their sum and count.
///
/// Buckets are stored per bucket (not cumulative) so that an observation touches
/// one bucket; [`Registry::render`] accumulates them. The count is the sum of the
/// buckets, so the `+Inf` bucket and `_count` always agree in the exposition.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then one for `+Inf`.
    buckets: Box<[AtomicU64]>,
    /// The sum as `f64` bits, so that it is exact for any unit, not just seconds.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with the given upper bucket bounds (inclusive, as Prometheus'
    /// `le`), not registered anywhere; `+Inf` is implied.
    ///
    /// # Panics
    /// If the bounds are not finite and strictly increasing.
    pub fn new(bounds: &'static [f64]) -> Self {
        assert!(
            bounds.iter().all(|b| b.is_finite()) && bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must be finite and strictly increasing, got {bounds:?}"
        );
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records `v`. NaN is ignored: it would make the sum NaN for good.
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        // First bucket whose bound is >= v; the +Inf bucket if none.
        let i = self.bounds.partition_point(|b| *b < v);
        self.buckets[i].fetch_add(1, Relaxed);
        // fetch_update only fails if the closure returns None; it never does.
        let _ = self.sum.fetch_update(Relaxed, Relaxed, |s| {
            Some((f64::from_bits(s) + v).to_bits())
        });
    }

    /// Records a duration in seconds (pair with [`LATENCY_SECONDS`]).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The sum of the observations.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Relaxed))
    }
}

/// Counters told apart by the value of one label, such as a rejection reason.
///
/// The number of distinct label values is capped so that a label fed from input
/// (a device id, an error message) cannot grow the exposition without bound:
/// beyond `max_values` distinct values, counts go to the value [`OTHER`].
#[derive(Debug)]
pub struct LabeledCounter {
    label: &'static str,
    values: RwLock<BTreeMap<String, Arc<Counter>>>,
    max_values: usize,
}

impl LabeledCounter {
    /// A labeled counter with no values yet, not registered anywhere.
    ///
    /// # Panics
    /// If `label` is not a valid Prometheus label name.
    pub fn new(label: &'static str, max_values: usize) -> Self {
        assert!(
            valid_label_name(label),
            "invalid label name {label:?}: must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __"
        );
        Self {
            label,
            values: RwLock::new(BTreeMap::new()),
            max_values,
        }
    }

    /// The counter for `value`, or for [`OTHER`] if `max_values` other values have
    /// been seen already. Keep the result when the value is fixed: this takes a lock.
    pub fn with(&self, value: &str) -> Arc<Counter> {
        // A panic while holding the lock cannot leave the map inconsistent.
        if let Some(c) = self
            .values
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(value)
        {
            return c.clone();
        }
        let mut values = self.values.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = values.get(value) {
            return c.clone();
        }
        // OTHER does not take one of the max_values places.
        let distinct = values.len() - usize::from(values.contains_key(OTHER));
        let key = if value == OTHER || distinct < self.max_values {
            value
        } else {
            OTHER
        };
        values.entry(key.to_owned()).or_default().clone()
    }

    /// The label's name.
    pub fn label(&self) -> &'static str {
        self.label
    }

    /// The current counts by label value, in label value order.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        self.values
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(v, c)| (v.clone(), c.get()))
            .collect()
    }
}

#[derive(Debug)]
enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
    Labeled(Arc<LabeledCounter>),
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    metric: Metric,
}

/// The metrics of one process, rendered in registration order for `/metrics`.
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<Vec<Family>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a counter. Its name must end in `_total`, so that the name in the
    /// code is the name on the dashboard.
    ///
    /// # Panics
    /// If the name is invalid, lacks `_total`, or is already registered.
    pub fn register_counter(&self, name: &str, help: &str) -> Arc<Counter> {
        check_counter_name(name);
        let c = Arc::new(Counter::new());
        self.register(name, help, Metric::Counter(c.clone()));
        c
    }

    /// Registers a gauge.
    ///
    /// # Panics
    /// If the name is invalid or already registered.
    pub fn register_gauge(&self, name: &str, help: &str) -> Arc<Gauge> {
        let g = Arc::new(Gauge::new());
        self.register(name, help, Metric::Gauge(g.clone()));
        g
    }

    /// Registers a histogram with the given bucket bounds (see [`Histogram::new`]).
    ///
    /// # Panics
    /// If the name is invalid or already registered, or the bounds are unordered.
    pub fn register_histogram(
        &self,
        name: &str,
        help: &str,
        bounds: &'static [f64],
    ) -> Arc<Histogram> {
        let h = Arc::new(Histogram::new(bounds));
        self.register(name, help, Metric::Histogram(h.clone()));
        h
    }

    /// Registers a counter with one label of at most `max_values` distinct values
    /// (see [`LabeledCounter`]). Its name must end in `_total`.
    ///
    /// # Panics
    /// If the name or label is invalid, the name lacks `_total`, or it is already
    /// registered.
    pub fn register_labeled_counter(
        &self,
        name: &str,
        help: &str,
        label: &'static str,
        max_values: usize,
    ) -> Arc<LabeledCounter> {
        check_counter_name(name);
        let c = Arc::new(LabeledCounter::new(label, max_values));
        self.register(name, help, Metric::Labeled(c.clone()));
        c
    }

    fn register(&self, name: &str, help: &str, metric: Metric) {
        assert!(
            valid_metric_name(name),
            "invalid metric name {name:?}: must match [a-zA-Z_:][a-zA-Z0-9_:]*"
        );
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(
            families.iter().all(|f| f.name != name),
            "metric {name:?} registered twice"
        );
        families.push(Family {
            name: name.to_owned(),
            help: help.to_owned(),
            metric,
        });
    }

    /// Every metric in the Prometheus text format, version 0.0.4.
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        for Family { name, help, metric } in families.iter() {
            let kind = match metric {
                Metric::Counter(_) | Metric::Labeled(_) => "counter",
                Metric::Gauge(_) => "gauge",
                Metric::Histogram(_) => "histogram",
            };
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            match metric {
                Metric::Counter(c) => {
                    let _ = writeln!(out, "{name} {}", c.get());
                }
                Metric::Gauge(g) => {
                    let _ = writeln!(out, "{name} {}", g.get());
                }
                Metric::Histogram(h) => {
                    let mut cumulative = 0;
                    for (i, bucket) in h.buckets.iter().enumerate() {
                        cumulative += bucket.load(Relaxed);
                        let le = h.bounds.get(i).map_or("+Inf".to_owned(), |b| fmt_f64(*b));
                        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                    }
                    let _ = writeln!(out, "{name}_sum {}", fmt_f64(h.sum()));
                    let _ = writeln!(out, "{name}_count {cumulative}");
                }
                Metric::Labeled(l) => {
                    for (value, count) in l.snapshot() {
                        let _ = writeln!(
                            out,
                            "{name}{{{}=\"{}\"}} {count}",
                            l.label,
                            escape_label_value(&value)
                        );
                    }
                }
            }
        }
        out
    }
}

fn check_counter_name(name: &str) {
    assert!(
        name.ends_with("_total"),
        "counter name {name:?} must end in _total"
    );
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Floats as Prometheus writes them: `+Inf`, `-Inf`, `NaN`, else the shortest
/// decimal that reads back the same (`1`, `0.0025`).
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        v.to_string()
    }
}

/// `# HELP` text: backslash and newline escaped.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values: backslash, double quote and newline escaped.
fn escape_label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_renders_with_help_type_and_value() {
        let r = Registry::new();
        let c = r.register_counter("hb_messages_total", "Messages received.");
        c.inc();
        c.add(41);
        assert_eq!(c.get(), 42);
        assert_eq!(
            r.render(),
            "# HELP hb_messages_total Messages received.\n\
             # TYPE hb_messages_total counter\n\
             hb_messages_total 42\n"
        );
    }

    #[test]
    fn a_gauge_renders_negative_values() {
        let r = Registry::new();
        let g = r.register_gauge("hb_queue_depth", "Messages waiting.");
        g.set(3);
        g.add(-5);
        assert_eq!(g.get(), -2);
        assert_eq!(
            r.render(),
            "# HELP hb_queue_depth Messages waiting.\n\
             # TYPE hb_queue_depth gauge\n\
             hb_queue_depth -2\n"
        );
    }

    #[test]
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        let r = Registry::new();
        let h = r.register_histogram("hb_latency_seconds", "Latency.", &[0.5, 1.0, 2.5]);
        h.observe(0.25);
        h.observe(0.5); // on the bound: counts as le="0.5"
        h.observe_duration(Duration::from_millis(750));
        h.observe(100.0);
        h.observe(f64::NAN); // ignored
        assert_eq!(h.count(), 4);
        assert_eq!(
            r.render(),
            "# HELP hb_latency_seconds Latency.\n\
             # TYPE hb_latency_seconds histogram\n\
             hb_latency_seconds_bucket{le=\"0.5\"} 2\n\
             hb_latency_seconds_bucket{le=\"1\"} 3\n\
             hb_latency_seconds_bucket{le=\"2.5\"} 3\n\
             hb_latency_seconds_bucket{le=\"+Inf\"} 4\n\
             hb_latency_seconds_sum 101.5\n\
             hb_latency_seconds_count 4\n"
        );
    }

    #[test]
    fn an_empty_histogram_renders_every_bucket_at_zero() {
        let r = Registry::new();
        r.register_histogram("h", "H.", LATENCY_SECONDS);
        let text = r.render();
        assert_eq!(text.matches("_bucket{").count(), LATENCY_SECONDS.len() + 1);
        assert!(text.contains("h_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("h_bucket{le=\"10\"} 0\n"));
        assert!(text.ends_with("h_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n"));
    }

    #[test]
    fn a_labeled_counter_renders_values_sorted_and_escaped() {
        let r = Registry::new();
        let c = r.register_labeled_counter("hb_rejected_total", "Rejected.", "reason", 10);
        c.with("too_fast").add(2);
        c.with("back\\slash \"quoted\"\nnext").inc();
        c.with("bad_json").inc();
        c.with("too_fast").inc();
        assert_eq!(
            r.render(),
            "# HELP hb_rejected_total Rejected.\n\
             # TYPE hb_rejected_total counter\n\
             hb_rejected_total{reason=\"back\\\\slash \\\"quoted\\\"\\nnext\"} 1\n\
             hb_rejected_total{reason=\"bad_json\"} 1\n\
             hb_rejected_total{reason=\"too_fast\"} 3\n"
        );
    }

    #[test]
    fn help_text_escapes_backslash_and_newline() {
        let r = Registry::new();
        r.register_gauge("g", "a\\b\nc \"d\"");
        assert_eq!(
            r.render(),
            "# HELP g a\\\\b\\nc \"d\"\n# TYPE g gauge\ng 0\n"
        );
    }

    #[test]
    fn metrics_render_in_registration_order() {
        let r = Registry::new();
        r.register_gauge("b", "B.");
        r.register_counter("a_total", "A.");
        assert_eq!(
            r.render(),
            "# HELP b B.\n# TYPE b gauge\nb 0\n\
             # HELP a_total A.\n# TYPE a_total counter\na_total 0\n"
        );
    }

    #[test]
    fn label_values_beyond_the_cap_are_counted_as_other() {
        let c = LabeledCounter::new("device", 2);
        c.with("a").inc();
        c.with("b").inc();
        c.with("c").inc();
        c.with("d").add(2);
        c.with("a").inc(); // seen before the cap: keeps its own count
        c.with(OTHER).inc(); // a real "other" shares the overflow and takes no place
        assert_eq!(
            c.snapshot(),
            vec![("a".into(), 2), ("b".into(), 1), (OTHER.into(), 4)]
        );
    }

    #[test]
    fn a_labeled_counter_with_no_places_counts_everything_as_other() {
        let c = LabeledCounter::new("device", 0);
        c.with("a").inc();
        c.with("b").inc();
        assert_eq!(c.snapshot(), vec![(OTHER.into(), 2)]);
    }

    #[test]
    fn concurrent_updates_from_threads_sum_correctly() {
        let r = Registry::new();
        let counter = r.register_counter("c_total", "C.");
        let gauge = r.register_gauge("g", "G.");
        let hist = r.register_histogram("h", "H.", &[1.0]);
        let labeled = r.register_labeled_counter("l_total", "L.", "k", 3);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (counter, gauge, hist, labeled) = (&counter, &gauge, &hist, &labeled);
                s.spawn(move || {
                    for i in 0..10_000 {
                        counter.inc();
                        gauge.add(if i % 2 == 0 { 3 } else { -1 });
                        hist.observe(if i % 2 == 0 { 0.5 } else { 2.0 });
                        labeled.with(&format!("v{}", (t + i) % 5)).inc();
                    }
                });
            }
        });
        assert_eq!(counter.get(), 80_000);
        assert_eq!(gauge.get(), 80_000);
        assert_eq!(hist.count(), 80_000);
        assert_eq!(hist.sum(), 40_000.0 * 0.5 + 40_000.0 * 2.0);
        let snapshot = labeled.snapshot();
        assert_eq!(snapshot.len(), 4, "three values plus other: {snapshot:?}");
        assert_eq!(snapshot.iter().map(|(_, n)| n).sum::<u64>(), 80_000);
        assert!(r.render().contains("h_bucket{le=\"1\"} 40000\n"));
    }

    #[test]
    #[should_panic(expected = "invalid metric name \"9lives\"")]
    fn a_metric_name_starting_with_a_digit_is_rejected() {
        Registry::new().register_gauge("9lives", "");
    }

    #[test]
    #[should_panic(expected = "invalid metric name \"hb-bad\"")]
    fn a_metric_name_with_a_dash_is_rejected() {
        Registry::new().register_gauge("hb-bad", "");
    }

    #[test]
    #[should_panic(expected = "must end in _total")]
    fn a_counter_name_without_total_is_rejected() {
        Registry::new().register_counter("hb_messages", "");
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_name_registered_twice_is_rejected() {
        let r = Registry::new();
        r.register_gauge("hb:up", "");
        r.register_gauge("hb:up", "");
    }

    #[test]
    #[should_panic(expected = "invalid label name")]
    fn a_reserved_label_name_is_rejected() {
        Registry::new().register_labeled_counter("x_total", "", "__name", 1);
    }

    #[test]
    #[should_panic(expected = "strictly increasing")]
    fn unordered_histogram_bounds_are_rejected() {
        Histogram::new(&[1.0, 0.5]);
    }
}
