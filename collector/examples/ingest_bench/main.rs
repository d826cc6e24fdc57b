//! Ingest benchmark for `scripts/bench-collector.py`: the collector's rate next to
//! a raw `COPY` loop and a row-by-row `INSERT` loop, in one run, on the same
//! `readings` table (daily partitions, primary key and `readings_device_ts`).
//!
//! 1. Applies the migrations to `--database-url`, which must be a fresh database.
//! 2. Pre-fills a topic of its own (`--partitions`) with `--readings` readings of
//!    `--devices` devices in postcard envelopes of `--per-envelope` (key = device
//!    id, header `content-type`), as the bridge writes them (lz4, `acks=all`), and
//!    waits for every delivery.
//! 3. Runs the real collector in-process (`hb_collector::run`, default batch
//!    settings, `--http-addr none`) and times it from start to the COMMIT of the
//!    batch that completes the readings (seen through the collector's own "Batch
//!    committed." debug events, which also give batch counts and sizes).
//! 4. Diagnostics that split the collector's time: the same records consumed with
//!    the collector's consumer settings and nothing else, and the same rows written
//!    through the collector's `Store::write` (staging `COPY`, `INSERT … ON
//!    CONFLICT`, device upsert, `COMMIT`) without Kafka.
//! 5. After `TRUNCATE`: the same rows `COPY`ed straight into `readings` with
//!    `BinaryCopyInWriter`, `--copy-batch` rows per transaction.
//! 6. After `TRUNCATE`: one prepared `INSERT` per row, `--insert-batch` rows per
//!    transaction, for `--insert-rows` rows (default a tenth; rates are per row).
//!
//! Every timed phase starts after a `CHECKPOINT`. Rows for phases 4–6 are decoded
//! up front with the collector's own `records::accept`, outside any timing. CPU
//! times: this process (collector or loop plus librdkafka), the PostgreSQL server
//! (all children of the postmaster; needs a local server and `/proc`) and, with
//! `--broker-pid`, the Kafka broker. Prints figures only: no pass or fail.
//!
//! ```sh
//! cargo run --release -p hb-collector --example ingest_bench -- \
//!     --database-url postgres://postgres@127.0.0.1:5432/bench \
//!     --kafka-brokers 127.0.0.1:9092 --readings 200000 --devices 1000
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _};
use clap::Parser;
use hb_collector::records::{self, ReadingRow, Rules, Source};
use hb_shared::{
    codec, Contact, ContentType, DeviceId, Envelope, KafkaTopics, Reading, Readings, RrIntervals,
    Status, MAX_READINGS_PER_ENVELOPE,
};
use rdkafka::consumer::Consumer;
use rdkafka::ClientConfig;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// Benchmarks hb-collector against raw COPY and INSERT loops.
#[derive(Debug, Parser)]
struct Args {
    /// PostgreSQL URL of a fresh, empty database (the migrations are applied to it).
    #[arg(long)]
    database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "localhost:9092")]
    kafka_brokers: String,
    /// Readings in total.
    #[arg(long, default_value_t = 200_000)]
    readings: usize,
    /// Devices (record keys) the readings are spread over, round-robin.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Readings per envelope (Kafka record): 1 as devices send live, more when an
    /// agent drains a backlog (at most 256).
    #[arg(long, default_value_t = 1)]
    per_envelope: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Rows per transaction of the raw COPY loop.
    #[arg(long, default_value_t = 10_000)]
    copy_batch: usize,
    /// Rows of the row-by-row INSERT loop (default: a tenth of --readings).
    #[arg(long)]
    insert_rows: Option<usize>,
    /// Rows per transaction of the row-by-row INSERT loop.
    #[arg(long, default_value_t = 1000)]
    insert_batch: usize,
    /// Extra hb-collector flag (repeatable), e.g.
    /// `--collector-arg=--batch-max-readings=10000`.
    #[arg(long = "collector-arg", allow_hyphen_values = true)]
    collector_args: Vec<String>,
    /// PID of the Kafka broker, to report its CPU time in the collector run.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Give up on the collector after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Also print PostgreSQL's time per statement of the collector run (needs
    /// `shared_preload_libraries=pg_stat_statements`).
    #[arg(long)]
    statements: bool,
}

use hb_collector::store::{row_params, COLUMNS, COLUMN_TYPES};

/// One Kafka record of the benchmark.
struct Message {
    key: String,
    payload: Vec<u8>,
}

/// A batch the collector committed, as its debug event reported it.
#[derive(Debug, Clone, Copy)]
struct Committed {
    at: Instant,
    records: u64,
    inserted: u64,
}

/// CPU seconds used so far by this process, the PostgreSQL server and the broker.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    client: f64,
    server: Option<f64>,
    broker: Option<f64>,
}

/// One line of the result table.
struct Line {
    label: String,
    rows: usize,
    elapsed: Duration,
    cpu: [Option<f64>; 3],
}

impl Line {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.readings >= 1, "--readings must be at least 1");
    ensure!(args.devices >= 1, "--devices must be at least 1");
    ensure!(
        (1..=MAX_READINGS_PER_ENVELOPE).contains(&args.per_envelope),
        "--per-envelope must be 1–{MAX_READINGS_PER_ENVELOPE}"
    );
    ensure!(
        args.copy_batch >= 1 && args.insert_batch >= 1,
        "batch sizes must be at least 1"
    );
    let n = args.readings;
    let insert_rows = args.insert_rows.unwrap_or(n / 10).clamp(1, n);

    let committed: Arc<Mutex<Vec<Committed>>> = Arc::default();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::EnvFilter::new(
                    std::env::var("HB_LOG").unwrap_or_else(|_| "warn".into()),
                )),
        )
        .with(
            BatchLog(Arc::clone(&committed)).with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("hb_collector::ingest", tracing::Level::DEBUG),
            ),
        )
        .init();

    let mut db = connect(&args.database_url).await?;
    hb_collector::migrations::migrate(&mut db).await?;
    let existing: i64 = db
        .query_one("SELECT count(*) FROM readings", &[])
        .await?
        .get(0);
    ensure!(
        existing == 0,
        "readings already holds {existing} rows: use a fresh database"
    );
    let settings = db
        .query_one(
            "SELECT current_setting('server_version'), current_setting('fsync'), \
                    current_setting('synchronous_commit'), current_setting('full_page_writes'), \
                    current_setting('shared_buffers'), current_setting('max_wal_size')",
            &[],
        )
        .await?;
    let postmaster = postmaster_pid(&db).await;
    let cpu_now = || Cpu {
        client: process_cpu_seconds(std::process::id()).unwrap_or(0.0),
        server: postmaster.and_then(children_cpu_seconds),
        broker: args.broker_pid.and_then(process_cpu_seconds),
    };

    // 1. The topic, pre-filled.
    let run_id = format!(
        "bench-{}-{}",
        std::process::id(),
        hb_runtime::clock::now_ms()
    );
    let prefix = format!("{run_id}.");
    let topic = KafkaTopics::new(&prefix).readings();
    create_topic(&args.kafka_brokers, &topic, args.partitions).await?;
    // Storage confirmations go out as in production (their cost is the collector's).
    let stored = KafkaTopics::new(&prefix).stored();
    create_topic(&args.kafka_brokers, &stored, args.partitions).await?;
    let messages = messages(n, args.devices, args.per_envelope);
    let payload_bytes: usize = messages.iter().map(|m| m.payload.len()).sum();
    let started = Instant::now();
    let delivered = prefill(&args.kafka_brokers, &topic, &messages).await;
    let prefill_time = started.elapsed();

    // The same rows as the collector makes, for the loops (not timed).
    let started = Instant::now();
    let rows = decode(&topic, &messages, &delivered)?;
    let decode_time = started.elapsed();
    ensure!(rows.len() == n, "decoded {} rows, expected {n}", rows.len());

    // 2. The collector.
    let mut argv: Vec<String> = [
        "hb-collector",
        "--database-url",
        &args.database_url,
        "--kafka-brokers",
        &args.kafka_brokers,
        "--kafka-topic-prefix",
        &prefix,
        "--kafka-group",
        &run_id,
        "--http-addr",
        "none",
    ]
    .map(String::from)
    .to_vec();
    argv.extend(args.collector_args.iter().cloned());
    let config = hb_collector::Cli::try_parse_from(argv)?
        .collector
        .into_config()?;
    checkpoint(&db).await?;
    if args.statements {
        db.batch_execute(
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()",
        )
        .await
        .context("pg_stat_statements (is it in shared_preload_libraries?)")?;
    }
    let cpu_before = cpu_now();
    let shutdown = CancellationToken::new();
    let collector_started = Instant::now();
    let mut collector = tokio::spawn(hb_collector::run(config.clone(), shutdown.clone()));
    let deadline = collector_started + Duration::from_secs(args.timeout_s);
    let done_at = loop {
        tokio::select! {
            r = &mut collector => bail!("the collector stopped early: {:?}", r?),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let batches = committed.lock().expect("batch log lock").clone();
        let inserted: u64 = batches.iter().map(|b| b.inserted).sum();
        if inserted >= n as u64 {
            break batches.last().expect("at least one batch").at;
        }
        if Instant::now() >= deadline {
            shutdown.cancel();
            let stored: i64 = db
                .query_one("SELECT count(*) FROM readings", &[])
                .await?
                .get(0);
            bail!(
                "within {} s the collector reported {inserted} of {n} readings committed \
                 ({} batch events; readings holds {stored} rows)",
                args.timeout_s,
                batches.len()
            );
        }
    };
    let cpu_after = cpu_now();
    shutdown.cancel();
    let totals = collector.await??;
    let statements = if args.statements {
        statement_times(&db).await?
    } else {
        Vec::new()
    };
    expect_rows(&db, n).await?;
    let batches = committed.lock().expect("batch log lock").clone();
    let collector_line = Line {
        label: format!(
            "hb-collector (Kafka -> PostgreSQL), {}/txn max",
            config.batch_max_readings
        ),
        rows: n,
        elapsed: done_at - collector_started,
        cpu: cpu_used(cpu_before, cpu_after),
    };

    // 3. Diagnostics: the collector's Kafka side alone, and its database side alone.
    let records_count = messages.len();
    let consume = consume_only(&config, &run_id, records_count, &cpu_now).await?;
    let consume_line = Line {
        label: "  diag: Kafka consume only (same consumer)".into(),
        rows: n,
        elapsed: consume.0,
        cpu: cpu_used(consume.1, consume.2),
    };
    truncate(&db).await?;
    let mut store = hb_collector::Store::connect(&hb_collector::database::Database::parse(
        &args.database_url,
        None,
    )?)
    .await?;
    checkpoint(&db).await?;
    let before = cpu_now();
    let started = Instant::now();
    store.ensure_partitions(&rows).await?;
    for chunk in rows.chunks(config.batch_max_readings) {
        store.write(chunk, &[], &[]).await?;
    }
    let store_line = Line {
        label: format!(
            "  diag: Store::write only, {}/txn",
            config.batch_max_readings
        ),
        rows: n,
        elapsed: started.elapsed(),
        cpu: cpu_used(before, cpu_now()),
    };
    drop(store);
    expect_rows(&db, n).await?;

    // 4. Raw COPY loop.
    truncate(&db).await?;
    checkpoint(&db).await?;
    let before = cpu_now();
    let elapsed = raw_copy(&mut db, &rows, args.copy_batch).await?;
    let copy_line = Line {
        label: format!("raw COPY (BinaryCopyInWriter), {}/txn", args.copy_batch),
        rows: n,
        elapsed,
        cpu: cpu_used(before, cpu_now()),
    };
    expect_rows(&db, n).await?;

    // 5. Row-by-row INSERT loop.
    truncate(&db).await?;
    checkpoint(&db).await?;
    let before = cpu_now();
    let elapsed = insert_loop(&mut db, &rows[..insert_rows], args.insert_batch).await?;
    let insert_line = Line {
        label: format!("row-by-row INSERT (prepared), {}/txn", args.insert_batch),
        rows: insert_rows,
        elapsed,
        cpu: cpu_used(before, cpu_now()),
    };
    expect_rows(&db, insert_rows).await?;

    // The report.
    println!(
        "N = {n} readings of {} devices in {} Kafka records of {} reading(s) (postcard, {:.1} bytes \
         on average), topic {topic} of {} partitions",
        args.devices,
        records_count,
        args.per_envelope,
        payload_bytes as f64 / records_count as f64,
        args.partitions
    );
    println!(
        "PostgreSQL {}: fsync={}, synchronous_commit={}, full_page_writes={}, shared_buffers={}, \
         max_wal_size={}; CHECKPOINT before each phase; one readings table (daily partitions, \
         PK + readings_device_ts), TRUNCATEd between phases",
        settings.get::<_, String>(0),
        settings.get::<_, String>(1),
        settings.get::<_, String>(2),
        settings.get::<_, String>(3),
        settings.get::<_, String>(4),
        settings.get::<_, String>(5),
    );
    println!(
        "prefill {:.1} s; rows for the loops decoded with records::accept in {:.2} s ({:.2} µs \
         per record), outside the timings",
        prefill_time.as_secs_f64(),
        decode_time.as_secs_f64(),
        decode_time.as_secs_f64() * 1e6 / records_count as f64
    );
    println!();
    println!(
        "{:<50} {:>11} {:>8} {:>8} {:>11} {:>11} {:>11}",
        "", "readings/s", "rows", "seconds", "this CPU s", "PG CPU s", "Kafka CPU s"
    );
    for line in [
        &collector_line,
        &consume_line,
        &store_line,
        &copy_line,
        &insert_line,
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
    println!(
        "ratio collector / raw COPY: {:.2} (target >= 0.7); row-by-row INSERT / raw COPY: {:.2}",
        collector_line.rate() / copy_line.rate(),
        insert_line.rate() / copy_line.rate()
    );
    print_batches(&batches, collector_started, n, copy_line.rate());
    println!(
        "collector totals: records={} inserted={} duplicates={} quarantined={}",
        totals.records,
        totals.written.inserted,
        totals.written.duplicates,
        totals.written.quarantined
    );
    if !statements.is_empty() {
        println!("PostgreSQL time per statement in the collector run (pg_stat_statements):");
        println!("{:>8} {:>10} {:>9}  statement", "calls", "total ms", "rows");
        for s in statements {
            println!("{s}");
        }
    }
    Ok(())
}

/// The statements of this database by total execution time, formatted.
async fn statement_times(db: &Client) -> anyhow::Result<Vec<String>> {
    let rows = db
        .query(
            "SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) \
             FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND query NOT LIKE '%pg_stat_statements%' \
             ORDER BY total_exec_time DESC LIMIT 10",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            format!(
                "{:>8} {:>10.0} {:>9}  {}",
                r.get::<_, i64>(0),
                r.get::<_, f64>(1),
                r.get::<_, i64>(2),
                r.get::<_, String>(3)
            )
        })
        .collect())
}

fn print_batches(batches: &[Committed], started: Instant, n: usize, copy_rate: f64) {
    let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
        return;
    };
    let sizes: Vec<u64> = batches.iter().map(|b| b.inserted).collect();
    let records: u64 = batches.iter().map(|b| b.records).sum();
    let min = sizes.iter().min().copied().unwrap_or(0);
    let max = sizes.iter().max().copied().unwrap_or(0);
    println!(
        "collector batches: {} committed, {:.0} readings ({:.0} records) per batch on average, \
         min {min}, max {max}",
        batches.len(),
        n as f64 / batches.len() as f64,
        records as f64 / batches.len() as f64,
    );
    if batches.len() > 1 {
        let span = (last.at - first.at).as_secs_f64();
        let steady = (n as u64 - first.inserted) as f64 / span;
        println!(
            "collector timing: first COMMIT {:.2} s after start (connect, group join, first batch); \
             after it, {steady:.0} readings/s over {} batches ({:.0} ms from COMMIT to COMMIT; \
             {:.2} x raw COPY)",
            (first.at - started).as_secs_f64(),
            batches.len() - 1,
            span * 1000.0 / (batches.len() - 1) as f64,
            steady / copy_rate
        );
    }
}

/// Records the collector's "Batch committed." debug events.
struct BatchLog(Arc<Mutex<Vec<Committed>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for BatchLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        #[derive(Default)]
        struct Fields {
            message: String,
            records: u64,
            inserted: u64,
        }
        impl tracing::field::Visit for Fields {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                match field.name() {
                    "records" => self.records = value,
                    "inserted" => self.inserted = value,
                    _ => {}
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.message = format!("{value:?}");
                }
            }
        }
        let at = Instant::now();
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.message == "Batch committed." {
            self.0.lock().expect("batch log lock").push(Committed {
                at,
                records: fields.records,
                inserted: fields.inserted,
            });
        }
    }
}

/// `n` readings of `devices` devices (round-robin, one reading per device and
/// second, ending a minute ago) in envelopes of `per_envelope`, in the order the
/// devices would send them.
fn messages(n: usize, devices: usize, per_envelope: usize) -> Vec<Message> {
    let per_device = |d: usize| n / devices + usize::from(d < n % devices);
    let most = per_device(0);
    let base_ms = hb_runtime::clock::now_ms() - 60_000 - most as i64 * 1000;
    let ids: Vec<DeviceId> = (0..devices)
        .map(|d| DeviceId::new(&format!("bench-{d:05}")).expect("a valid device id"))
        .collect();
    let mut out = Vec::with_capacity(n.div_ceil(per_envelope));
    for round in 0..most.div_ceil(per_envelope) {
        for (d, id) in ids.iter().enumerate() {
            let first = round * per_envelope;
            let end = (first + per_envelope).min(per_device(d));
            if first >= end {
                continue;
            }
            let mut readings = Readings::new();
            for seq in first..end {
                readings
                    .push(reading(seq as u32, base_ms))
                    .expect("at most MAX_READINGS_PER_ENVELOPE");
            }
            let payload = codec::encode_postcard(&Envelope::new(id.clone(), readings))
                .expect("a valid envelope encodes");
            out.push(Message {
                key: id.as_str().to_owned(),
                payload,
            });
        }
    }
    out
}

/// A plausible reading: 60–100 BPM with two matching RR intervals.
fn reading(seq: u32, base_ms: i64) -> Reading {
    let bpm = 60 + (seq * 7 % 41) as u16;
    let rr = (60 * 1024 / u32::from(bpm)) as u16;
    let mut rr_1024 = RrIntervals::new();
    let _ = rr_1024.push(rr);
    let _ = rr_1024.push(rr + 8);
    Reading {
        mono_ms: u64::from(seq) * 1000,
        rr_1024,
        local_flag: Some(Status::Normal),
        ..Reading::new(
            1,
            seq,
            base_ms + i64::from(seq) * 1000,
            bpm,
            Contact::Detected,
        )
    }
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// Produces every message (enqueued at once, deliveries awaited afterwards) and
/// returns where each landed.
async fn prefill(brokers: &str, topic: &str, messages: &[Message]) -> Vec<(i32, i64)> {
    let records: Vec<_> = messages
        .iter()
        .map(|m| {
            (
                m.key.clone(),
                m.payload.clone(),
                ContentType::Postcard.as_str(),
            )
        })
        .collect();
    hb_testkit::kafka::produce(brokers, topic, &records).await
}

/// The rows the collector makes of these records (its own decoder and rules).
fn decode(
    topic: &str,
    messages: &[Message],
    delivered: &[(i32, i64)],
) -> anyhow::Result<Vec<ReadingRow>> {
    let rules = Rules::default();
    let received_at = SystemTime::now();
    let mut rows = Vec::new();
    for (m, &(partition, offset)) in messages.iter().zip(delivered) {
        let source = Source {
            topic: topic.to_owned(),
            partition,
            offset,
        };
        let outcome = records::accept(
            &source,
            Some(ContentType::Postcard.as_str().as_bytes()),
            Some(m.key.as_bytes()),
            &m.payload,
            &rules,
            received_at,
        );
        if let Some(q) = outcome.quarantine.first() {
            bail!(
                "a benchmark reading was refused: {} ({})",
                q.reason,
                q.detail
            );
        }
        rows.extend(outcome.rows);
    }
    Ok(rows)
}

/// Reads `count` records with the collector's consumer settings in a group of its
/// own; returns the time from the first record to the last, and CPU before/after.
async fn consume_only(
    config: &hb_collector::Config,
    run_id: &str,
    count: usize,
    cpu_now: &impl Fn() -> Cpu,
) -> anyhow::Result<(Duration, Cpu, Cpu)> {
    let mut config = config.clone();
    config.kafka_group = format!("{run_id}-consume-only");
    let metrics = hb_collector::CollectorMetrics::new();
    let consumer = hb_collector::consumer::create_consumer(&config, &metrics)?;
    consumer.subscribe(&[&config.topics.readings()])?;
    let first = consumer.recv().await?;
    let before = cpu_now();
    let started = Instant::now();
    drop(first);
    let mut bytes = 0usize;
    for _ in 1..count {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("consume-only: no record for 30 s")??;
        bytes += m.payload_len();
    }
    std::hint::black_box(bytes);
    // Scaled to all records: the first one started the clock.
    let elapsed = started
        .elapsed()
        .mul_f64(count as f64 / (count - 1).max(1) as f64);
    Ok((elapsed, before, cpu_now()))
}

async fn raw_copy(db: &mut Client, rows: &[ReadingRow], batch: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    ensure_partitions(db, rows).await?;
    for chunk in rows.chunks(batch) {
        let tx = db.transaction().await?;
        let sink = tx
            .copy_in(&format!("COPY readings ({COLUMNS}) FROM STDIN BINARY"))
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &COLUMN_TYPES);
        let mut writer = std::pin::pin!(writer);
        for r in chunk {
            writer.as_mut().write(&row_params(r)).await?;
        }
        writer.finish().await?;
        tx.commit().await?;
    }
    Ok(started.elapsed())
}

async fn insert_loop(
    db: &mut Client,
    rows: &[ReadingRow],
    batch: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    ensure_partitions(db, rows).await?;
    let placeholders: Vec<String> = (1..=COLUMN_TYPES.len()).map(|i| format!("${i}")).collect();
    let stmt = db
        .prepare_typed(
            &format!(
                "INSERT INTO readings ({COLUMNS}) VALUES ({})",
                placeholders.join(", ")
            ),
            &COLUMN_TYPES,
        )
        .await?;
    for chunk in rows.chunks(batch) {
        let tx = db.transaction().await?;
        for r in chunk {
            tx.execute(&stmt, &row_params(r)).await?;
        }
        tx.commit().await?;
    }
    Ok(started.elapsed())
}

/// The daily partitions of these rows, as the collector makes them.
async fn ensure_partitions(db: &Client, rows: &[ReadingRow]) -> anyhow::Result<()> {
    let days: BTreeMap<u64, SystemTime> = rows
        .iter()
        .map(|r| {
            let day =
                r.ts.duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() / 86_400);
            (day, r.ts)
        })
        .collect();
    let stamps: Vec<SystemTime> = days.into_values().collect();
    db.execute("SELECT hb_ensure_reading_partitions($1)", &[&stamps])
        .await?;
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connect to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("ingest_bench: PostgreSQL connection: {e}");
        }
    });
    Ok(client)
}

async fn truncate(db: &Client) -> anyhow::Result<()> {
    db.batch_execute("TRUNCATE readings, devices, stored_ranges")
        .await?;
    Ok(())
}

async fn checkpoint(db: &Client) -> anyhow::Result<()> {
    db.batch_execute("CHECKPOINT")
        .await
        .context("CHECKPOINT (needs a superuser or pg_checkpoint)")?;
    Ok(())
}

async fn expect_rows(db: &Client, n: usize) -> anyhow::Result<()> {
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT (device_id, epoch, seq)) FROM readings",
            &[],
        )
        .await?;
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
    ensure!(
        rows == n as i64 && distinct == n as i64,
        "readings holds {rows} rows ({distinct} distinct), expected {n}"
    );
    Ok(())
}

fn cpu_used(before: Cpu, after: Cpu) -> [Option<f64>; 3] {
    let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    [
        Some(after.client - before.client),
        diff(before.server, after.server),
        diff(before.broker, after.broker),
    ]
}

/// The postmaster of our backend: its parent process, if the server is local.
async fn postmaster_pid(db: &Client) -> Option<u32> {
    let backend: i32 = db
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .ok()?
        .get(0);
    let (ppid, _) = proc_stat(backend as u32)?;
    Some(ppid)
}

/// Parent PID and CPU seconds (utime + stime) of a process, from `/proc`.
fn proc_stat(pid: u32) -> Option<(u32, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((ppid, ticks as f64 / hz))
}

fn process_cpu_seconds(pid: u32) -> Option<f64> {
    proc_stat(pid).map(|(_, s)| s)
}

/// CPU seconds of the postmaster and its live children (backends and background
/// processes).
fn children_cpu_seconds(postmaster: u32) -> Option<f64> {
    let mut total = process_cpu_seconds(postmaster)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some((ppid, secs)) = proc_stat(pid) {
            if ppid == postmaster {
                total += secs;
            }
        }
    }
    Some(total)
}
