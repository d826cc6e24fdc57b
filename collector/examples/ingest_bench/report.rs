//! The printed report: the run's set-up, one line per phase (rate, rows, time,
//! CPU), the ratios, and the collector's batches as its `/metrics` showed them.

use std::time::Duration;

use crate::collector_run::CollectorRun;
use crate::fixtures::Fixture;
use crate::scrape::Snapshot;
use crate::Args;

/// One line of the result table.
pub struct Line {
    /// What was timed.
    pub label: String,
    /// Readings written (or read).
    pub rows: usize,
    /// How long it took.
    pub elapsed: Duration,
    /// CPU seconds: this process, PostgreSQL, Kafka.
    pub cpu: [Option<f64>; 3],
}

impl Line {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }
}

/// Everything the report shows.
pub struct Report<'a> {
    /// The run's flags.
    pub args: &'a Args,
    /// The topic and rows.
    pub fixture: &'a Fixture,
    /// [`crate::database::server_settings`].
    pub server_settings: &'a str,
    /// What the collector phase saw on `/metrics`, and its totals.
    pub collector_run: &'a CollectorRun,
    /// The collector phase.
    pub collector: Line,
    /// The consumer alone.
    pub consume_only: Line,
    /// `Store::write` alone.
    pub store_only: Line,
    /// The raw `COPY` loop.
    pub raw_copy: Line,
    /// The row-by-row `INSERT` loop.
    pub insert_loop: Line,
}

/// Prints `report` on standard output.
pub fn print(report: &Report<'_>) {
    let Report { args, fixture, .. } = report;
    let n = args.readings;
    println!(
        "N = {n} readings of {} devices in {} Kafka records of {} reading(s) (postcard, {:.1} bytes \
         on average), topic {} of {} partitions",
        args.devices,
        fixture.records,
        args.per_envelope,
        fixture.payload_bytes as f64 / fixture.records as f64,
        fixture.topic,
        args.partitions
    );
    println!(
        "{}; CHECKPOINT before each phase; one readings table (daily partitions, \
         PK + readings_device_ts), TRUNCATEd between phases",
        report.server_settings
    );
    println!(
        "prefill {:.1} s; rows for the loops decoded with records::accept in {:.2} s ({:.2} µs \
         per record), outside the timings",
        fixture.prefill_time.as_secs_f64(),
        fixture.decode_time.as_secs_f64(),
        fixture.decode_time.as_secs_f64() * 1e6 / fixture.records as f64
    );
    println!();
    println!(
        "{:<50} {:>11} {:>8} {:>8} {:>11} {:>11} {:>11}",
        "", "readings/s", "rows", "seconds", "this CPU s", "PG CPU s", "Kafka CPU s"
    );
    for line in [
        &report.collector,
        &report.consume_only,
        &report.store_only,
        &report.raw_copy,
        &report.insert_loop,
    ] {
        let cpu = |c: Option<f64>| c.map_or("n/a".to_owned(), |s| format!("{s:.2}"));
        println!(
            "{:<50} {:>11.0} {:>8} {:>8.2} {:>11} {:>11} {:>11}",
            line.label,
            line.rate(),
            line.rows,
            line.elapsed.as_secs_f64(),
            cpu(line.cpu[0]),
            cpu(line.cpu[1]),
            cpu(line.cpu[2]),
        );
    }
    println!();
    let copy_rate = report.raw_copy.rate();
    println!(
        "ratio collector / raw COPY: {:.2} (target >= 0.7); row-by-row INSERT / raw COPY: {:.2}",
        report.collector.rate() / copy_rate,
        report.insert_loop.rate() / copy_rate
    );
    print_batches(report.collector_run, n, copy_rate);
    let totals = &report.collector_run.totals;
    println!(
        "collector totals: records={} inserted={} duplicates={} quarantined={}",
        totals.records,
        totals.written.inserted,
        totals.written.duplicates,
        totals.written.quarantined
    );
    if !report.collector_run.statements.is_empty() {
        println!("PostgreSQL time per statement in the collector run (pg_stat_statements):");
        println!("{:>8} {:>10} {:>9}  statement", "calls", "total ms", "rows");
        for s in &report.collector_run.statements {
            println!("{s}");
        }
    }
}

/// The collector's batches: how many, how large (its `hb_collector_batch_readings`
/// histogram), and its pace after the first COMMIT, as seen by the scrapes (to
/// within one scrape interval).
fn print_batches(run: &CollectorRun, n: usize, copy_rate: f64) {
    let (first, done) = (&run.first_commit, &run.done);
    if done.batches == 0 {
        return;
    }
    println!(
        "collector batches: {} committed, {:.0} readings ({:.0} records) per batch on average; \
         by size in readings: {}",
        done.batches,
        n as f64 / done.batches as f64,
        done.consumed as f64 / done.batches as f64,
        batch_sizes(done),
    );
    let later = done.batches - first.batches;
    if later > 0 {
        let span = (done.at - first.at).as_secs_f64();
        let steady = (n as u64).saturating_sub(first.inserted) as f64 / span;
        println!(
            "collector timing: first COMMIT seen {:.2} s after start (connect, group join, first \
             batch; {} batch(es) by then); after it, {steady:.0} readings/s over {later} batches \
             ({:.0} ms from COMMIT to COMMIT; {:.2} x raw COPY)",
            (first.at - run.started).as_secs_f64(),
            first.batches,
            span * 1000.0 / later as f64,
            steady / copy_rate
        );
    }
}

/// The histogram's non-empty buckets, `<=1000: 3, <=2500: 40, >10000: 1`.
fn batch_sizes(snapshot: &Snapshot) -> String {
    let mut below = 0;
    let mut lower = None;
    let mut parts = Vec::new();
    for &(le, cumulative) in &snapshot.batch_sizes {
        let count = cumulative.saturating_sub(below);
        if count > 0 {
            parts.push(match (le.is_finite(), lower) {
                (true, _) => format!("<={le}: {count}"),
                (false, Some(l)) => format!(">{l}: {count}"),
                (false, None) => format!("any: {count}"),
            });
        }
        below = cumulative;
        lower = Some(le);
    }
    if parts.is_empty() {
        "n/a".to_owned()
    } else {
        parts.join(", ")
    }
}
