//! The metrics of one process, kept by the Prometheus project's Rust client
//! (`prometheus-client`) and rendered in the Prometheus text format, version 0.0.4.
//!
//! [`Counter`] and [`Gauge`] are prometheus-client's: an update is one relaxed atomic
//! operation, and clones share one value, so a task keeps its own clone. A
//! [`Histogram`] takes a short lock per observation. [`LabeledCounter::with`] takes
//! a lock (a read lock when the label value has been seen before); callers on a hot
//! path keep the returned [`Counter`] for their fixed label values.
//!
//! [`Registry`] checks names when a metric is registered; a bad or duplicate name is
//! a programming error and panics with the offending name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::family::Family;

/// A monotonically increasing count; clones share the count.
pub type Counter = prometheus_client::metrics::counter::Counter;

/// A value that goes up and down, such as a queue depth; clones share the value.
pub type Gauge = prometheus_client::metrics::gauge::Gauge;

/// The content type of what [`Registry::render`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Histogram bounds for latencies in seconds, from 1 ms to 10 s.
pub const LATENCY_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The label value that a [`LabeledCounter`] counts under once it has seen its
/// maximum number of distinct values.
pub const OTHER: &str = "other";

/// Counts observations into fixed buckets, plus their sum and count; clones share
/// them.
#[derive(Debug, Clone)]
pub struct Histogram(prometheus_client::metrics::histogram::Histogram);

impl Histogram {
    /// A histogram with the given upper bucket bounds (inclusive, as Prometheus'
    /// `le`), not registered anywhere; `+Inf` is implied.
    ///
    /// # Panics
    /// If the bounds are not finite and strictly increasing.
    pub fn new(bounds: &[f64]) -> Self {
        assert!(
            bounds.iter().all(|b| b.is_finite()) && bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must be finite and strictly increasing, got {bounds:?}"
        );
        Self(prometheus_client::metrics::histogram::Histogram::new(
            bounds.iter().copied(),
        ))
    }

    /// Records `v`. NaN is ignored: it would make the sum NaN for good.
    pub fn observe(&self, v: f64) {
        if !v.is_nan() {
            self.0.observe(v);
        }
    }

    /// Records a duration in seconds (pair with [`LATENCY_SECONDS`]).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }
}

/// Counters told apart by the value of one label, such as a rejection reason.
///
/// The number of distinct label values is capped so that a label fed from input
/// cannot grow the exposition without bound: beyond `max_values` distinct values,
/// counts go to the value [`OTHER`].
#[derive(Debug)]
pub struct LabeledCounter {
    label: &'static str,
    max_values: usize,
    /// What is rendered.
    family: Family<[(&'static str, String); 1], Counter>,
    /// The same counters by label value, for [`LabeledCounter::with`]'s bound and
    /// for [`LabeledCounter::snapshot`].
    values: RwLock<BTreeMap<String, Counter>>,
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
            max_values,
            family: Family::default(),
            values: RwLock::new(BTreeMap::new()),
        }
    }

    /// The counter for `value`, or for [`OTHER`] if `max_values` other values have
    /// been seen already. Keep the result when the value is fixed: this takes a lock.
    pub fn with(&self, value: &str) -> Counter {
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
        values
            .entry(key.to_owned())
            .or_insert_with(|| {
                self.family
                    .get_or_create_owned(&[(self.label, key.to_owned())])
            })
            .clone()
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

/// The metrics of one process, rendered in registration order for `/metrics`.
///
/// `help` is one or more sentences, as shown on `/metrics`: prometheus-client
/// ends every help text with a full stop, so a final one in `help` is not doubled.
#[derive(Debug, Default)]
pub struct Registry {
    inner: prometheus_client::registry::Registry,
    /// The names registered so far (a counter's also with `_total`, as exposed),
    /// to refuse a second registration.
    names: BTreeSet<String>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a counter. Give its name without the `_total` that the
    /// exposition adds (`hb_messages` is exposed as `hb_messages_total`).
    ///
    /// # Panics
    /// If the name is invalid, ends in `_total`, or is already registered.
    pub fn register_counter(&mut self, name: &str, help: &str) -> Counter {
        self.claim_counter_total(name);
        let c = Counter::default();
        self.register(name, help, c.clone());
        c
    }

    /// Registers a gauge.
    ///
    /// # Panics
    /// If the name is invalid or already registered.
    pub fn register_gauge(&mut self, name: &str, help: &str) -> Gauge {
        let g = Gauge::default();
        self.register(name, help, g.clone());
        g
    }

    /// Registers a histogram with the given bucket bounds (see [`Histogram::new`]).
    ///
    /// # Panics
    /// If the name is invalid or already registered, or the bounds are unordered.
    pub fn register_histogram(&mut self, name: &str, help: &str, bounds: &[f64]) -> Histogram {
        let h = Histogram::new(bounds);
        self.register(name, help, h.0.clone());
        h
    }

    /// Registers a counter with one label of at most `max_values` distinct values
    /// (see [`LabeledCounter`]). Its name is given without `_total`, as for
    /// [`Registry::register_counter`].
    ///
    /// # Panics
    /// If the name or label is invalid, the name ends in `_total`, or it is
    /// already registered.
    pub fn register_labeled_counter(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        max_values: usize,
    ) -> LabeledCounter {
        self.claim_counter_total(name);
        let c = LabeledCounter::new(label, max_values);
        self.register(name, help, c.family.clone());
        c
    }

    fn register(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        assert!(
            valid_metric_name(name),
            "invalid metric name {name:?}: must match [a-zA-Z_:][a-zA-Z0-9_:]*"
        );
        assert!(
            self.names.insert(name.to_owned()),
            "metric {name:?} registered twice"
        );
        let help = help.strip_suffix('.').unwrap_or(help);
        self.inner.register(name, help, metric);
    }

    /// Refuses a counter name ending in `_total` and claims the name the exposition
    /// gives it, so that no other metric is exposed under it too.
    fn claim_counter_total(&mut self, name: &str) {
        assert!(
            !name.ends_with("_total"),
            "counter name {name:?} must not end in _total: the exposition adds it"
        );
        let exposed = format!("{name}_total");
        assert!(
            !self.names.contains(&exposed),
            "metric {exposed:?} registered twice"
        );
        self.names.insert(exposed);
    }

    /// Every metric in the Prometheus text format, version 0.0.4 ([`CONTENT_TYPE`]).
    /// A labeled counter shows once it has a label value.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail, nor can encoding counters, gauges and
        // histograms with finite bounds.
        prometheus_text::encode(&mut text, &self.inner).expect("the metrics render into a String");
        text
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample lines of `text`, sorted: series within a family have no order.
    fn sorted_lines(text: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        lines
    }

    #[test]
    fn a_counter_renders_with_help_type_and_value() {
        let mut r = Registry::new();
        let c = r.register_counter("hb_messages", "Messages received.");
        c.inc();
        c.inc_by(41);
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
        let mut r = Registry::new();
        let g = r.register_gauge("hb_queue_depth", "Messages waiting.");
        g.set(3);
        g.dec_by(5);
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
        let mut r = Registry::new();
        let h = r.register_histogram("hb_latency_seconds", "Latency.", &[0.5, 1.0, 2.5]);
        h.observe(0.25);
        h.observe(0.5); // on the bound: counts as le="0.5"
        h.observe_duration(Duration::from_millis(750));
        h.observe(100.0);
        h.observe(f64::NAN); // ignored
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
        let mut r = Registry::new();
        r.register_histogram("h", "H.", LATENCY_SECONDS);
        let text = r.render();
        assert_eq!(text.matches("_bucket{").count(), LATENCY_SECONDS.len() + 1);
        assert!(text.contains("h_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("h_bucket{le=\"10\"} 0\n"));
        assert!(text.ends_with("h_bucket{le=\"+Inf\"} 0\nh_sum 0.0\nh_count 0\n"));
    }

    #[test]
    fn a_labeled_counter_renders_each_value_escaped() {
        let mut r = Registry::new();
        let c = r.register_labeled_counter("hb_rejected", "Rejected.", "reason", 10);
        c.with("too_fast").inc_by(2);
        c.with("back\\slash \"quoted\"\nnext").inc();
        c.with("bad_json").inc();
        c.with("too_fast").inc();
        let text = r.render();
        assert!(
            text.starts_with(
                "# HELP hb_rejected_total Rejected.\n\
                 # TYPE hb_rejected_total counter\n"
            ),
            "{text}"
        );
        assert_eq!(
            sorted_lines(&text),
            [
                "# HELP hb_rejected_total Rejected.",
                "# TYPE hb_rejected_total counter",
                "hb_rejected_total{reason=\"back\\\\slash \\\"quoted\\\"\\nnext\"} 1",
                "hb_rejected_total{reason=\"bad_json\"} 1",
                "hb_rejected_total{reason=\"too_fast\"} 3",
            ]
        );
    }

    #[test]
    fn a_labeled_counter_without_values_is_not_rendered() {
        let mut r = Registry::new();
        r.register_labeled_counter("hb_rejected", "Rejected.", "reason", 10);
        assert_eq!(r.render(), "");
    }

    #[test]
    fn help_text_escapes_backslash_and_newline() {
        let mut r = Registry::new();
        r.register_gauge("g", "a\\b\nc \"d\".");
        assert_eq!(
            r.render(),
            "# HELP g a\\\\b\\nc \"d\".\n# TYPE g gauge\ng 0\n"
        );
    }

    #[test]
    fn help_text_ends_with_one_full_stop() {
        let mut r = Registry::new();
        r.register_gauge("a", "With.");
        r.register_gauge("b", "Without");
        assert_eq!(
            r.render(),
            "# HELP a With.\n# TYPE a gauge\na 0\n\
             # HELP b Without.\n# TYPE b gauge\nb 0\n"
        );
    }

    #[test]
    fn metrics_render_in_registration_order() {
        let mut r = Registry::new();
        r.register_gauge("b", "B.");
        r.register_counter("a", "A.");
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
        c.with("d").inc_by(2);
        c.with("a").inc(); // seen before the cap: keeps its own count
        c.with(OTHER).inc(); // a real "other" shares the overflow and takes no place
        assert_eq!(
            c.snapshot(),
            vec![("a".into(), 2), ("b".into(), 1), (OTHER.into(), 4)]
        );
    }

    #[test]
    fn label_values_beyond_the_cap_are_rendered_as_other() {
        let mut r = Registry::new();
        let c = r.register_labeled_counter("l", "L.", "k", 1);
        c.with("a").inc();
        c.with("b").inc();
        c.with("c").inc();
        assert_eq!(
            sorted_lines(&r.render())[2..],
            ["l_total{k=\"a\"} 1", "l_total{k=\"other\"} 2"]
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
        let mut r = Registry::new();
        let counter = r.register_counter("c", "C.");
        let gauge = r.register_gauge("g", "G.");
        let hist = r.register_histogram("h", "H.", &[1.0]);
        let labeled = r.register_labeled_counter("l", "L.", "k", 3);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (counter, gauge, hist, labeled) = (&counter, &gauge, &hist, &labeled);
                s.spawn(move || {
                    for i in 0..10_000 {
                        counter.inc();
                        gauge.inc_by(if i % 2 == 0 { 3 } else { -1 });
                        hist.observe(if i % 2 == 0 { 0.5 } else { 2.0 });
                        labeled.with(&format!("v{}", (t + i) % 5)).inc();
                    }
                });
            }
        });
        assert_eq!(counter.get(), 80_000);
        assert_eq!(gauge.get(), 80_000);
        let snapshot = labeled.snapshot();
        assert_eq!(snapshot.len(), 4, "three values plus other: {snapshot:?}");
        assert_eq!(snapshot.iter().map(|(_, n)| n).sum::<u64>(), 80_000);
        let text = r.render();
        assert!(text.contains("h_bucket{le=\"1\"} 40000\n"), "{text}");
        assert!(text.contains("h_count 80000\n"), "{text}");
        let sum = 40_000.0 * 0.5 + 40_000.0 * 2.0;
        assert!(text.contains(&format!("h_sum {sum:.1}\n")), "{text}");
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
    #[should_panic(expected = "must not end in _total")]
    fn a_counter_name_with_total_is_rejected() {
        Registry::new().register_counter("hb_messages_total", "");
    }

    #[test]
    #[should_panic(expected = "must not end in _total")]
    fn a_labeled_counter_name_with_total_is_rejected() {
        Registry::new().register_labeled_counter("hb_rejected_total", "", "reason", 1);
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_name_registered_twice_is_rejected() {
        let mut r = Registry::new();
        r.register_gauge("hb:up", "");
        r.register_gauge("hb:up", "");
    }

    #[test]
    #[should_panic(expected = "metric \"hb_messages_total\" registered twice")]
    fn a_gauge_named_as_a_counter_is_exposed_is_rejected() {
        let mut r = Registry::new();
        r.register_counter("hb_messages", "");
        r.register_gauge("hb_messages_total", "");
    }

    #[test]
    #[should_panic(expected = "metric \"hb_messages_total\" registered twice")]
    fn a_counter_exposed_as_an_earlier_gauge_is_named_is_rejected() {
        let mut r = Registry::new();
        r.register_gauge("hb_messages_total", "");
        r.register_labeled_counter("hb_messages", "", "reason", 1);
    }

    #[test]
    #[should_panic(expected = "invalid label name")]
    fn a_reserved_label_name_is_rejected() {
        Registry::new().register_labeled_counter("x", "", "__name", 1);
    }

    #[test]
    #[should_panic(expected = "strictly increasing")]
    fn unordered_histogram_bounds_are_rejected() {
        Histogram::new(&[1.0, 0.5]);
    }
}
