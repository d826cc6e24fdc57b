//! The dashboard and its JSON API against a real collector, tansu and
//! PostgreSQL: every endpoint (with bad parameters), tokens, acknowledgements,
//! the live stream, the read-only role, the query plans, and the pages in
//! headless Chromium.

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use crate::common::{produce_all, reading, record, Setup};
use hb_shared::{Contact, Reading, Readings};
use hb_testkit::now_ms;
use hb_testkit::{connect, eventually, fresh_database, Process, Services};
use serde_json::Value;

const TOKEN: &str = "alice-token-0123456789";

/// Readings of `device` at 1 Hz ending now, one per BPM, in envelopes of 10.
fn series(device: &str, first_seq: u32, bpms: &[u16]) -> Vec<(String, Vec<u8>, &'static str)> {
    let base = now_ms() - bpms.len() as i64 * 1000;
    bpms.chunks(10)
        .enumerate()
        .map(|(c, chunk)| {
            let mut r = Readings::new();
            for (i, &bpm) in chunk.iter().enumerate() {
                let n = (c * 10 + i) as u32;
                let mut one = if bpm == 0 {
                    Reading::new(
                        1,
                        first_seq + n,
                        base + i64::from(n) * 1000,
                        0,
                        Contact::NotDetected,
                    )
                } else {
                    reading(first_seq + n, bpm, base + i64::from(n) * 1000)
                };
                one.local_flag = None;
                if bpm > 0 {
                    one.rr_1024 =
                        heapless::Vec::from_slice(&[(61_440 / u32::from(bpm)) as u16]).unwrap();
                }
                r.push(one).unwrap();
            }
            record(device, r)
        })
        .collect()
}

fn json(status_body: (u16, String)) -> (u16, Value) {
    let (status, body) = status_body;
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (status, value)
}

fn bearer() -> [(&'static str, &'static str); 1] {
    [("Authorization", "Bearer alice-token-0123456789")]
}

fn get(c: &Process, path: &str) -> (u16, Value) {
    json(c.http("GET", path, &bearer(), ""))
}

/// A collector whose readings of the last day count as live, nobody going
/// offline during a test, with alice's token.
fn collector_with_token(s: &Services, setup: &Setup, db_url: &str) -> Process {
    let token = format!("alice={TOKEN}");
    let flags = [
        "--late-after-s",
        "86400",
        "--offline-after-s",
        "3600",
        "--dashboard-token",
        &token,
    ];
    setup.collector(&s.kafka_brokers, db_url, &[], &flags)
}

/// A fleet of three: `normal` (70 BPM), `brady` (an open bradycardia episode)
/// and `nosignal` (strap off); a collector with a token.
struct Fleet {
    setup: Setup,
    db_url: String,
    collector: Process,
    normal: String,
    brady: String,
    nosignal: String,
}

async fn fleet(s: &Services) -> Fleet {
    let setup = Setup::new(s, &s.kafka_brokers, 2).await;
    let db_url = fresh_database(s).await;
    let (normal, brady, nosignal) = (setup.device(0), setup.device(1), setup.device(2));
    let mut recs = series(&normal, 0, &[70; 60]);
    recs.extend(series(&brady, 0, &[vec![70; 20], vec![44; 40]].concat()));
    recs.extend(series(&nosignal, 0, &[0; 20]));
    produce_all(&s.kafka_brokers, &setup, &recs).await;
    let collector = collector_with_token(s, &setup, &db_url);
    let db = connect(&db_url).await;
    eventually(
        "the readings and the alert stored",
        Duration::from_secs(60),
        || async {
            // Before the collector's migrations the tables do not exist.
            let row = db
                .query_one(
                    "SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM alerts)",
                    &[],
                )
                .await
                .ok()?;
            (row.get::<_, i64>(0) == 140 && row.get::<_, i64>(1) >= 1).then_some(())
        },
    )
    .await;
    Fleet {
        setup,
        db_url,
        collector,
        normal,
        brady,
        nosignal,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_every_endpoint_and_refuses_bad_parameters() {
    let s = Services::from_env();
    let mut f = fleet(&s).await;
    let c = &f.collector;

    // Tokens: none → 401 on the API, a redirect to the login form on pages.
    assert_eq!(c.http_get("/api/devices").0, 401);
    assert_eq!(
        c.http(
            "GET",
            "/api/devices",
            &[("Authorization", "Bearer wrong-token-000000")],
            ""
        )
        .0,
        401
    );
    assert_eq!(c.http_get("/").0, 303);
    assert_eq!(c.http_get("/login").0, 200);
    assert_eq!(c.http_get("/healthz").0, 200, "operations stay open");
    let (status, _) = c.http(
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("token={TOKEN}"),
    );
    assert_eq!(status, 303, "a valid token signs in");
    assert_eq!(
        c.http("GET", "/", &[("Cookie", &format!("hb_token={TOKEN}"))], "")
            .0,
        200
    );

    // The fleet: the device with an open alert first, then by id.
    let (status, body) = get(c, "/api/devices");
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    // Signal loss is an open (technical, severity none) alert too.
    assert_eq!(
        ids,
        [f.brady.as_str(), f.nosignal.as_str(), f.normal.as_str()]
    );
    let top = &body["devices"][0];
    assert_eq!(
        (top["bpm"].as_i64(), top["status"].as_str()),
        (Some(44), Some("bradycardia"))
    );
    assert_eq!(top["alert"]["kind"], "bradycardia");
    assert_eq!(top["online"], true);
    assert_eq!(body["devices"][1]["status"], "no_signal");
    assert_eq!(body["devices"][1]["alert"]["kind"], "signal_loss");

    let (status, sparks) = get(c, "/api/sparklines");
    assert_eq!(status, 200);
    assert!(
        !sparks["devices"][f.normal.as_str()]
            .as_array()
            .unwrap()
            .is_empty(),
        "{sparks}"
    );

    // One device.
    let (status, d) = get(c, &format!("/api/devices/{}", f.brady));
    assert_eq!(status, 200);
    assert_eq!(d["thresholds"]["bradycardia_below_bpm"], 50);
    assert_eq!(d["thresholds"]["bradycardia_clear_bpm"], 55);
    assert_eq!(d["alerts"].as_array().unwrap().len(), 1);
    assert!(!d["rr"].as_array().unwrap().is_empty(), "RR intervals: {d}");
    assert_eq!(get(c, "/api/devices/nobody-here").0, 404);
    assert_eq!(get(c, "/api/devices/not%20an%20id").0, 400);

    // The trend: bucketed, bounded, consistent.
    let to = now_ms() + 1000;
    let from = to - 3_600_000;
    let (status, t) = get(
        c,
        &format!(
            "/api/devices/{}/readings?from={from}&to={to}&max_points=12",
            f.brady
        ),
    );
    assert_eq!(status, 200, "{t}");
    let points = t["points"].as_array().unwrap();
    assert!(!points.is_empty() && points.len() <= 12, "{t}");
    let total: i64 = points.iter().map(|p| p[4].as_i64().unwrap()).sum();
    assert_eq!(total, 60, "every reading in a bucket once");
    for p in points {
        let (lo, avg, hi) = (
            p[1].as_f64().unwrap(),
            p[2].as_f64().unwrap(),
            p[3].as_f64().unwrap(),
        );
        assert!(lo <= avg && avg <= hi, "{p}");
    }
    assert_eq!(
        t["alerts"].as_array().unwrap().len(),
        1,
        "the episode overlaps the window"
    );
    let (_, none) = get(c, &format!("/api/devices/{}/readings", f.nosignal));
    assert!(
        none["points"].as_array().unwrap().is_empty(),
        "no heart rate, no points: {none}"
    );
    for bad in [
        format!("from={to}&to={from}"),
        "max_points=0".to_owned(),
        "max_points=5001".to_owned(),
        "max_points=lots".to_owned(),
        "from=yesterday".to_owned(),
        format!("from=0&to={to}"),
    ] {
        let (status, body) = get(c, &format!("/api/devices/{}/readings?{bad}", f.brady));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            !body["error"].as_str().unwrap().contains('\n'),
            "one line: {body}"
        );
    }
    assert_eq!(get(c, "/api/devices/nobody-here/readings").0, 404);

    // Alerts, filtered.
    let (status, open) = get(c, "/api/alerts?state=open");
    assert_eq!(
        open["alerts"].as_array().unwrap().len(),
        2,
        "bradycardia, then signal loss"
    );
    assert_eq!(status, 200);
    let alert = open["alerts"][0].clone();
    assert_eq!(
        (alert["device_id"].as_str(), alert["kind"].as_str()),
        (Some(f.brady.as_str()), Some("bradycardia"))
    );
    assert_eq!(
        get(c, "/api/alerts?state=closed").1["alerts"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        get(c, "/api/alerts?kind=tachycardia").1["alerts"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        get(c, &format!("/api/alerts?state=all&device={}", f.brady)).1["alerts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(get(c, "/api/alerts?state=maybe").0, 400);
    assert_eq!(get(c, "/api/alerts?severity=extreme").0, 400);
    assert_eq!(get(c, "/api/alerts?limit=0").0, 400);

    // Acknowledging records who and when, once.
    let id = alert["id"].as_i64().unwrap();
    assert_eq!(
        c.http("POST", &format!("/api/alerts/{id}/ack"), &[], "").0,
        401
    );
    // By cookie, a change needs the header a form on another page cannot send.
    let cookie = format!("hb_token={TOKEN}");
    assert_eq!(
        c.http(
            "POST",
            &format!("/api/alerts/{id}/ack"),
            &[("Cookie", &cookie)],
            ""
        )
        .0,
        403
    );
    let (status, acked) = json(c.http("POST", &format!("/api/alerts/{id}/ack"), &bearer(), ""));
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["acknowledged_by"], "alice");
    let db = connect(&f.db_url).await;
    let row = db
        .query_one(
            "SELECT acknowledged_by, acknowledged_at IS NOT NULL FROM alerts WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        ("alice".to_owned(), true)
    );
    assert_eq!(
        json(c.http("POST", "/api/alerts/99999999/ack", &bearer(), "")).0,
        404
    );
    assert_eq!(
        json(c.http("POST", "/api/alerts/first/ack", &bearer(), "")).0,
        400
    );

    // Stats: three devices online, the 15-minute distribution of what is stored.
    let (status, stats) = get(c, "/api/stats");
    assert_eq!(status, 200);
    assert_eq!(
        (stats["devices"].as_i64(), stats["online"].as_i64()),
        (Some(3), Some(3))
    );
    assert_eq!(stats["open_alerts"], 2);
    let statuses = &stats["statuses_15m"];
    assert_eq!(
        (
            statuses["normal"].as_i64(),
            statuses["bradycardia"].as_i64(),
            statuses["no_signal"].as_i64()
        ),
        (Some(80), Some(40), Some(20)),
        "{stats}"
    );

    // The live log starts from the newest transitions (and a device's readings).
    let (status, log) = get(c, &format!("/api/log?device={}", f.brady));
    assert_eq!(status, 200);
    assert_eq!(log["transitions"][0]["transition"], "open");
    assert_eq!(log["readings"].as_array().unwrap().len(), 60);
    assert_eq!(get(c, "/api/log?limit=100000").0, 400);
    f.collector.stop(Duration::from_secs(20));
}

/// Reads Server-Sent Events from `/api/stream` until one's data contains
/// `needle`; returns how long after `since` it came.
fn wait_for_event(
    addr: &str,
    needle: &str,
    since: &dyn Fn() -> Instant,
    timeout: Duration,
) -> Duration {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /api/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut lines = BufReader::new(stream).lines();
    let started = since();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let line = lines
            .next()
            .expect("the stream stays open")
            .expect("an event in time");
        if line.starts_with("data:") && line.contains(needle) {
            return started.elapsed();
        }
    }
    panic!("no event with {needle:?} within {timeout:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_reading_reaches_the_live_stream_and_the_reader_role_cannot_write() {
    let s = Services::from_env();
    let mut f = fleet(&s).await;
    let addr = f.collector.http_addr();

    // A reading produced now reaches an open stream once committed.
    let produced = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let (brokers, setup, normal) = (s.kafka_brokers.clone(), f.setup.clone(), f.normal.clone());
    let stamp = std::sync::Arc::clone(&produced);
    let producer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        *stamp.lock().unwrap() = Some(Instant::now());
        produce_all(&brokers, &setup, &series(&normal, 1000, &[123])).await;
    });
    let needle = format!("[\"{}\",", f.normal);
    let waited = tokio::task::spawn_blocking(move || {
        wait_for_event(&addr, &needle, &|| Instant::now(), Duration::from_secs(30))
    })
    .await
    .unwrap();
    producer.await.unwrap();
    assert!(produced.lock().unwrap().is_some());
    assert!(waited < Duration::from_secs(30));

    // The dashboard's role reads the views and nothing else.
    let db = connect(&f.db_url).await;
    db.batch_execute("SET ROLE hb_reader").await.unwrap();
    let n: i64 = db
        .query_one("SELECT count(*) FROM dashboard_devices", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    for denied in [
        "SELECT count(*) FROM readings",
        "SELECT count(*) FROM quarantine",
        "UPDATE alerts SET acknowledged_by = 'mallory'",
        "DELETE FROM devices",
        "INSERT INTO reading_counts VALUES (now(), 0, 'normal', 1)",
    ] {
        let e = db.batch_execute(denied).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{denied}: {e}"
        );
    }
    db.batch_execute("RESET ROLE").await.unwrap();

    // The two heaviest queries have indexes to use: a device's trend (its
    // readings by time) and the fleet (every device, one probe each into the
    // open alerts).
    db.batch_execute("SET enable_seqscan = off").await.unwrap();
    for (what, sql, index) in [
        (
            "trend",
            format!(
                "EXPLAIN SELECT count(*) FROM dashboard_readings WHERE device_id = '{}' \
                 AND ts >= now() - interval '1 day' AND ts < now()",
                f.brady
            ),
            "device_id_ts_idx",
        ),
        (
            "fleet",
            "EXPLAIN SELECT * FROM dashboard_devices d LEFT JOIN LATERAL (SELECT id FROM dashboard_alerts x \
             WHERE x.device_id = d.device_id AND x.closed_at IS NULL LIMIT 1) a ON true"
                .to_owned(),
            "Index Scan using alerts_open",
        ),
    ] {
        let plan: Vec<String> = db.query(&sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        let plan = plan.join("\n");
        assert!(
            !plan.contains("Seq Scan on readings") && !plan.contains("Seq Scan on alerts"),
            "{what}:\n{plan}"
        );
        assert!(plan.contains(index), "{what}:\n{plan}");
    }
    f.collector.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_the_dashboard_is_read_only_and_refuses_the_network() {
    let s = Services::from_env();
    let setup = Setup::names(&s);
    let db_url = fresh_database(&s).await;
    let mut open = Process::start(
        "collector-open",
        std::path::Path::new(env!("CARGO_BIN_EXE_hb-collector")),
        &["--database-url", &db_url, "--http-addr", "0.0.0.0:0"].map(String::from),
        &[],
        &setup.work,
    );
    let status = open.wait(Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        open.output()
            .contains("open to the network without a token"),
        "{}",
        open.output()
    );

    // Its topic never exists: the collector waits, its dashboard serves.
    let mut c = setup.collector(&s.kafka_brokers, &db_url, &[], &[]);
    c.wait_for_output("Serving HTTP on", Duration::from_secs(20));
    eventually("the dashboard serves", Duration::from_secs(30), || async {
        (c.http_get("/api/stats").0 == 200).then_some(())
    })
    .await;
    let (_, who) = json(c.http_get("/api/whoami"));
    assert_eq!(who["can_acknowledge"], false);
    assert_eq!(json(c.http("POST", "/api/alerts/1/ack", &[], "")).0, 403);
    assert_eq!(c.http_get("/").0, 200, "no login without tokens");
    c.stop(Duration::from_secs(20));
}

/// The browser tests' fleet: 40 devices over the last three minutes, most of
/// them normal, some in bradycardia or tachycardia, some with the strap off.
fn browser_fleet(setup: &Setup) -> Vec<(String, Vec<u8>, &'static str)> {
    let mut recs = Vec::new();
    for d in 0..40u32 {
        let bpms: Vec<u16> = (0..180u32)
            .map(|s| {
                let wave = ((f64::from(s) / 9.0 + f64::from(d)).sin() * 8.0) as i32;
                let base = 62 + (d * 7 % 30) as i32 + wave;
                match d {
                    0..=3 if s >= 60 => 42 + (s % 5) as u16,
                    4..=6 if s >= 40 => (118 + d * 5 + s % 7) as u16,
                    7..=9 if s >= 150 => 0,
                    _ => base as u16,
                }
            })
            .collect();
        recs.extend(series(&setup.device(d), 0, &bpms));
    }
    recs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_work_in_headless_chromium() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser/dashboard.mjs");
    let chromium = std::env::var("HB_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists()
        || !root
            .join("tests/browser/node_modules/playwright-core")
            .exists()
    {
        eprintln!(
            "\n\n*** SKIPPED the browser tests: no Chromium at {chromium} or no playwright-core in \
             collector/tests/browser/node_modules (scripts/test.sh installs both) ***\n"
        );
        return;
    }
    let s = Services::from_env();
    let setup = Setup::new(&s, &s.kafka_brokers, 2).await;
    let db_url = fresh_database(&s).await;
    let recs = browser_fleet(&setup);
    let total = 40 * 180;
    produce_all(&s.kafka_brokers, &setup, &recs).await;
    let mut collector = collector_with_token(&s, &setup, &db_url);
    let db = connect(&db_url).await;
    eventually("the fleet stored", Duration::from_secs(60), || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM readings", &[])
            .await
            .ok()?
            .get(0);
        (n == total).then_some(())
    })
    .await;
    let shots = root.join("../target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let live = setup.device(12);
    let mut node = std::process::Command::new("node")
        .arg(&script)
        .env("HB_URL", format!("http://{}", collector.http_addr()))
        .env("HB_TOKEN", TOKEN)
        .env("HB_SCREENSHOTS", &shots)
        .env("HB_DEVICES", "40")
        .env("HB_STATUSES", "bradycardia,no_signal,normal,tachycardia")
        .env("HB_TREND_DEVICE", setup.device(0))
        .env("HB_LIVE_DEVICE", &live)
        .env("HB_LIVE_BPM", "123")
        .env("HB_CHROMIUM", &chromium)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut output = Vec::new();
    let mut sent: Option<Instant> = None;
    let mut seen_after = None;
    let mut acked = None;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .expect("the browser script goes on")
    {
        if line == "SEND" {
            produce_all(&s.kafka_brokers, &setup, &series(&live, 5000, &[123])).await;
            sent = Some(Instant::now());
        } else if line == "SEEN" {
            seen_after = sent.map(|t| t.elapsed());
        } else if let Some(id) = line.strip_prefix("ACKED ") {
            acked = id.parse::<i64>().ok();
        }
        output.push(line);
    }
    let status = node.wait().unwrap();
    let output = output.join("\n");
    assert!(status.success(), "the browser checks failed:\n{output}");
    assert!(output.ends_with("DONE"), "{output}");
    // The browser's acknowledgement is in the database, under the token's name.
    let by: Option<String> = db
        .query_one(
            "SELECT acknowledged_by FROM alerts WHERE id = $1",
            &[&acked.expect("an alert acknowledged")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(by.as_deref(), Some("alice"));
    let seen_after = seen_after.expect("the live reading seen");
    eprintln!("live log: the reading appeared {seen_after:?} after Kafka took it");
    assert!(seen_after <= Duration::from_secs(2), "{seen_after:?}");
    collector.stop(Duration::from_secs(20));
}

/// The dashboards' copy of a batch (notifications, per-minute counts) can fail
/// without the batch: with `reading_counts` gone, readings are still stored,
/// exactly once, and the failure is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_are_stored_when_the_dashboard_notifications_fail() {
    let s = Services::from_env();
    let setup = Setup::new(&s, &s.kafka_brokers, 1).await;
    let db_url = fresh_database(&s).await;
    let mut collector = collector_with_token(&s, &setup, &db_url);
    let db = connect(&db_url).await;
    eventually(
        "the collector's migrations",
        Duration::from_secs(60),
        || async {
            db.batch_execute("ALTER TABLE reading_counts RENAME TO reading_counts_away")
                .await
                .ok()
        },
    )
    .await;
    produce_all(
        &s.kafka_brokers,
        &setup,
        &series(&setup.device(0), 0, &[70; 30]),
    )
    .await;
    eventually("every reading stored", Duration::from_secs(60), || async {
        let n: i64 = db
            .query_one("SELECT count(DISTINCT seq) FROM readings", &[])
            .await
            .ok()?
            .get(0);
        (n == 30).then_some(())
    })
    .await;
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT (device_id, epoch, seq)) FROM readings",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (30, 30));
    assert!(
        collector
            .metric("hb_collector_live_failed_total")
            .unwrap_or(0.0)
            >= 1.0
    );
    collector.stop(Duration::from_secs(20));
}
