//! The whole pipeline with real processes and services: simulated agents →
//! Mosquitto → hb-bridge → Kafka (tansu) → hb-collector → PostgreSQL, and the
//! storage confirmations back (collector → Kafka → bridge → MQTT → agent). The
//! assertion is exact: every generated `(device_id, epoch, seq)` is stored exactly
//! once — through a broker restart, broker kills and a collector outage.

use std::time::{Duration, Instant};

use crate::common::Setup;
use hb_testkit::mqtt::{Mosquitto, StatusWatcher};
use hb_testkit::now_ms;
use hb_testkit::{bin, connect, eventually, fresh_database, unique, Process, Services};

/// One pipeline of a test: its own topic root, Kafka prefix, group and database.
#[derive(Clone)]
struct Pipeline {
    services: Services,
    mqtt_url: String,
    db: String,
    root: String,
    /// Kafka prefix, consumer group and work directory, as the collector's other
    /// tests have them.
    setup: Setup,
    /// The bridge's instance id: a restarted bridge resumes its MQTT session.
    bridge_id: String,
}

/// A simulated fleet and how its devices are named.
struct Fleet {
    process: Process,
    prefix: String,
    devices: i64,
    count: i64,
}

impl Pipeline {
    async fn new(s: &Services, mqtt_url: &str) -> Self {
        Self {
            services: s.clone(),
            mqtt_url: mqtt_url.to_owned(),
            db: fresh_database(s).await,
            root: unique("t"),
            setup: Setup::names(s),
            bridge_id: unique("b"),
        }
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| a.to_string()).collect()
    }

    fn bridge(&self) -> Process {
        let s = &self.services;
        let mut bridge = Process::start(
            "bridge",
            &bin("hb-bridge"),
            &Self::args(&[
                "--mqtt-url",
                &self.mqtt_url,
                "--kafka-brokers",
                &s.kafka_brokers,
                "--kafka-topic-prefix",
                &self.setup.prefix,
                "--kafka-partitions",
                "3",
                "--mqtt-topic-root",
                &self.root,
                "--instance-id",
                &self.bridge_id,
                "--mqtt-username",
                "hb-bridge",
                "--http-addr",
                "127.0.0.1:0",
            ]),
            &[("HB_MQTT_PASSWORD", &s.mqtt_bridge_password)],
            &self.setup.work,
        );
        // Messages published before the bridge's (first) subscription exists would
        // have no subscriber to be queued for.
        bridge.wait_until_healthy(Duration::from_secs(60));
        bridge
    }

    fn collector(&self) -> Process {
        self.collector_with(&[])
    }

    fn collector_with(&self, more: &[&str]) -> Process {
        let mut extra = vec!["--confirm-interval-ms", "500"];
        extra.extend_from_slice(more);
        self.setup
            .collector(&self.services.kafka_brokers, &self.db, &[], &extra)
    }

    /// `devices` simulated devices taking `count` readings at `rate_hz`, released
    /// from their spools by `confirm` (`stored` or `puback`).
    fn fleet(
        &self,
        devices: i64,
        rate_hz: u32,
        count: i64,
        confirm: &str,
        extra: &[&str],
    ) -> Fleet {
        let prefix = unique("d");
        let state = self.setup.work.join(unique("agent-state-"));
        self.fleet_at(&prefix, &state, devices, rate_hz, count, confirm, extra)
    }

    /// [`Pipeline::fleet`] with given device names and state directory (a
    /// restarted agent).
    #[allow(clippy::too_many_arguments)]
    fn fleet_at(
        &self,
        prefix: &str,
        state: &std::path::Path,
        devices: i64,
        rate_hz: u32,
        count: i64,
        confirm: &str,
        extra: &[&str],
    ) -> Fleet {
        let prefix = prefix.to_owned();
        let mut args = Self::args(&[
            "--devices",
            &devices.to_string(),
            "--rate-hz",
            &rate_hz.to_string(),
            "--count",
            &count.to_string(),
            "--mqtt-url",
            &self.mqtt_url,
            "--mqtt-topic-root",
            &self.root,
            "--device-id-template",
            &format!("{prefix}-{{index}}"),
            "--state-dir",
            state.to_str().unwrap(),
            "--connect-stagger-ms",
            "1000",
            "--confirm",
            confirm,
            "--confirm-timeout-s",
            "5",
            "--mqtt-username",
            "hb-sim",
        ]);
        args.extend(Self::args(extra));
        let process = Process::start(
            "agent",
            &bin("hb-agent"),
            &args,
            &[("HB_MQTT_PASSWORD", &self.services.mqtt_sim_password)],
            &self.setup.work,
        );
        Fleet {
            process,
            prefix,
            devices,
            count,
        }
    }
}

impl Fleet {
    fn like(&self) -> String {
        format!("{}-%", self.prefix)
    }

    fn expected(&self) -> i64 {
        self.devices * self.count
    }

    /// Waits (without blocking the runtime) for the fleet to finish: every
    /// reading confirmed (or, with `--confirm puback`, acknowledged).
    async fn finish(self, timeout: Duration) -> Self {
        tokio::task::spawn_blocking(move || {
            let mut f = self;
            let status = f.process.wait(timeout);
            assert!(status.success(), "agent failed:\n{}", f.process.output());
            f
        })
        .await
        .expect("wait for the agent")
    }
}

/// `(rows, distinct readings)` of one fleet (`(0, 0)` until the collector has
/// created the tables).
async fn stored(db: &tokio_postgres::Client, fleet: &Fleet) -> (i64, i64) {
    db.query_one(
        "SELECT count(*), count(DISTINCT (device_id, epoch, seq)) FROM readings WHERE device_id LIKE $1",
        &[&fleet.like()],
    )
    .await
    .map_or((0, 0), |row| (row.get(0), row.get(1)))
}

/// Waits until the fleet has at least `n` readings stored.
async fn until_stored(db: &tokio_postgres::Client, fleet: &Fleet, n: i64, timeout: Duration) {
    eventually(&format!("{n} readings stored"), timeout, || async {
        (stored(db, fleet).await.0 >= n).then_some(())
    })
    .await;
}

/// Every generated reading of the fleet stored exactly once, numbered 0..count
/// in one epoch per device, and none that arrived more than 10 s late stored as
/// live.
async fn assert_exactly_once(db: &tokio_postgres::Client, fleet: &Fleet) {
    let expected = fleet.expected();
    let (rows, distinct) = stored(db, fleet).await;
    assert_eq!(
        (rows, distinct),
        (expected, expected),
        "rows, distinct readings"
    );
    let per_device = db
        .query(
            "SELECT device_id, count(*), min(seq), max(seq), min(epoch), max(epoch) FROM readings \
             WHERE device_id LIKE $1 GROUP BY device_id",
            &[&fleet.like()],
        )
        .await
        .unwrap();
    assert_eq!(per_device.len() as i64, fleet.devices);
    for r in per_device {
        let device: String = r.get(0);
        let (n, min_seq, max_seq, min_epoch, max_epoch): (i64, i64, i64, i64, i64) =
            (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        assert_eq!(
            (n, min_seq, max_seq),
            (fleet.count, 0, fleet.count - 1),
            "{device}"
        );
        assert_eq!(min_epoch, max_epoch, "{device}: one epoch");
    }
    let late_live: i64 = db
        .query_one(
            "SELECT count(*) FROM readings WHERE device_id LIKE $1 AND NOT backfill AND arrival_delay_ms > 10000",
            &[&fleet.like()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        late_live, 0,
        "readings that arrived late but are flagged live"
    );
}

/// Readings of a fleet that never reached PostgreSQL, once nothing more arrives.
async fn settled_loss(db: &tokio_postgres::Client, fleet: &Fleet) -> (i64, i64) {
    let mut last = (-1, -1);
    let mut same = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while same < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = stored(db, fleet).await;
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    (fleet.expected() - last.1, last.0 - last.1)
}

/// Waits for both fleets; the confirmed one must have lost nothing, the loss of
/// the one released on PUBACK is printed (a measurement, not a pass condition).
async fn side_by_side(db: &tokio_postgres::Client, confirmed: Fleet, acked: Fleet, fault: &str) {
    let confirmed = confirmed.finish(Duration::from_secs(300)).await;
    let acked = acked.finish(Duration::from_secs(120)).await;
    assert_exactly_once(db, &confirmed).await;
    let (lost, duplicates) = settled_loss(db, &acked).await;
    println!(
        "{fault}: --confirm puback lost {lost} of {} readings ({duplicates} duplicate rows); --confirm stored lost 0",
        acked.expected()
    );
    assert_eq!(duplicates, 0);
}

/// Stops (or kills) the broker for `down_for` and starts it again, with the
/// bridge (stopped with it) started again only once every agent is connected:
/// what agents publish before the bridge has subscribed again is acknowledged by
/// Mosquitto and dropped (it does not restore a persistent session's shared
/// subscriptions). Returns the new bridge, on the old one's MQTT session.
///
/// The bridge is stopped and restarted rather than paused: tansu 0.6 does not
/// re-form a consumer group after a member's session expires, which a long
/// pause of the bridge's stored-topic relay would make it do.
async fn broker_outage(
    p: &Pipeline,
    mosquitto: &mut Mosquitto,
    mut bridge: Process,
    watcher: &StatusWatcher,
    devices: usize,
    kill: bool,
    down_for: Duration,
) -> Process {
    if kill {
        mosquitto.kill();
    } else {
        mosquitto.stop();
    }
    let bridge = tokio::task::spawn_blocking(move || {
        bridge.stop(Duration::from_secs(40));
    });
    tokio::time::sleep(down_for).await;
    bridge.await.expect("stop the bridge");
    let resumed = now_ms();
    mosquitto.resume();
    // Agents back off up to 30 s plus as much jitter after a long outage.
    let deadline = Instant::now() + Duration::from_secs(120);
    while watcher.heard_since(resumed) < devices {
        assert!(
            Instant::now() < deadline,
            "{} of {devices} agents reconnected within 120 s",
            watcher.heard_since(resumed),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let p = p.clone();
    tokio::task::spawn_blocking(move || p.bridge())
        .await
        .expect("start the bridge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_of_a_fleet_is_stored_exactly_once() {
    let s = Services::from_env();
    let p = Pipeline::new(&s, &s.mqtt_url).await;
    let mut bridge = p.bridge();
    let mut collector = p.collector();
    let fleet = p.fleet(50, 10, 20, "stored", &[]);
    let fleet = fleet.finish(Duration::from_secs(120)).await;
    let db = connect(&p.db).await;
    assert_exactly_once(&db, &fleet).await;
    let devices_known: i64 = db
        .query_one(
            "SELECT count(*) FROM devices WHERE last_seq = 19 AND last_epoch = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        devices_known, 50,
        "the device registry knows every device's latest reading"
    );
    let quarantined: i64 = db
        .query_one("SELECT count(*) FROM quarantine", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(quarantined, 0);
    let watermarks: i64 = db
        .query_one(
            "SELECT count(*) FROM stored_ranges WHERE seqs = int8multirange(int8range(0, 19, '[]'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(watermarks, 50, "every device's stored range is 0..=19");
    bridge.stop(Duration::from_secs(20));
    collector.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_for_a_minute_loses_no_reading() {
    let s = Services::from_env();
    let mut mosquitto = Mosquitto::start(&s);
    let p = Pipeline::new(&s, &mosquitto.url).await;
    let watcher = StatusWatcher::start(&s, &mosquitto.url, &p.root);
    let bridge = p.bridge();
    let _collector = p.collector();
    // Side by side on the same broker: end-to-end confirmation, and PUBACK only.
    let confirmed = p.fleet(100, 2, 240, "stored", &[]);
    let acked = p.fleet(100, 2, 240, "puback", &[]);
    let db = connect(&p.db).await;
    until_stored(&db, &confirmed, 100 * 10, Duration::from_secs(60)).await;
    let _bridge = broker_outage(
        &p,
        &mut mosquitto,
        bridge,
        &watcher,
        200,
        false,
        Duration::from_secs(60),
    )
    .await;
    side_by_side(&db, confirmed, acked, "broker stopped for 60 s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_three_times_loses_no_reading() {
    let s = Services::from_env();
    let mut mosquitto = Mosquitto::start(&s);
    let p = Pipeline::new(&s, &mosquitto.url).await;
    let watcher = StatusWatcher::start(&s, &mosquitto.url, &p.root);
    let mut bridge = p.bridge();
    let _collector = p.collector();
    let confirmed = p.fleet(100, 2, 240, "stored", &[]);
    let acked = p.fleet(100, 2, 240, "puback", &[]);
    let db = connect(&p.db).await;
    for kill in 1..=3 {
        // Readings flow (again) before each kill.
        let before = stored(&db, &confirmed).await.0;
        until_stored(&db, &confirmed, before + 100 * 6, Duration::from_secs(120)).await;
        bridge = broker_outage(
            &p,
            &mut mosquitto,
            bridge,
            &watcher,
            200,
            true,
            Duration::ZERO,
        )
        .await;
        println!("broker kill {kill} done");
    }
    side_by_side(&db, confirmed, acked, "broker killed 3 times").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_for_two_minutes_leaves_readings_in_the_spools_until_stored() {
    let s = Services::from_env();
    let p = Pipeline::new(&s, &s.mqtt_url).await;
    let watcher = StatusWatcher::start(&s, &s.mqtt_url, &p.root);
    let _bridge = p.bridge();
    let mut collector = p.collector();
    let fleet = p.fleet(50, 1, 180, "stored", &["--status-interval-s", "2"]);
    let db = connect(&p.db).await;
    until_stored(&db, &fleet, 50 * 10, Duration::from_secs(60)).await;
    collector.stop(Duration::from_secs(20));
    let down = Instant::now();
    // The spools hold what PostgreSQL does not have yet, although the broker
    // acknowledged it.
    eventually(
        "every device holding a minute of unconfirmed readings",
        Duration::from_secs(120),
        || async {
            let grown = watcher
                .latest()
                .values()
                .filter(|st| st.unconfirmed >= 60 && st.confirm_lag_ms >= 30_000)
                .count();
            (grown == 50).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(120).saturating_sub(down.elapsed())).await;
    let _collector = p.collector();
    let fleet = fleet.finish(Duration::from_secs(240)).await;
    assert_exactly_once(&db, &fleet).await;
    // The agent exits only when every reading is confirmed; its goodbye says so.
    eventually(
        "every device offline with nothing unconfirmed",
        Duration::from_secs(30),
        || async {
            let done = watcher
                .latest()
                .values()
                .filter(|st| st.state == hb_shared::Presence::Offline && st.unconfirmed == 0)
                .count();
            (done == 50).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_dies_goes_offline_by_its_last_will_and_its_next_reading_clears_it() {
    let s = Services::from_env();
    let p = Pipeline::new(&s, &s.mqtt_url).await;
    let mut bridge = p.bridge();
    // Silence alone would take an hour: the Last Will must do it.
    let mut collector = p.collector_with(&["--offline-after-s", "3600"]);
    let (prefix, state) = (unique("d"), p.setup.work.join(unique("agent-state-")));
    let mut fleet = p.fleet_at(&prefix, &state, 3, 2, 100_000, "stored", &[]);
    let db = connect(&p.db).await;
    until_stored(&db, &fleet, 30, Duration::from_secs(60)).await;
    let like = fleet.like();
    let count = |sql: &'static str| {
        let (db, like) = (&db, like.clone());
        async move { db.query_one(sql, &[&like]).await.map_or(0i64, |r| r.get(0)) }
    };
    // Killed: no goodbye, so the broker publishes each device's Last Will.
    fleet.process.signal("KILL");
    let _ = fleet.process.wait(Duration::from_secs(10));
    eventually(
        "device_offline opened by the wills",
        Duration::from_secs(60),
        || async {
            let open = count(
                "SELECT count(*) FROM alerts WHERE kind = 'device_offline' AND closed_at IS NULL \
             AND device_id LIKE $1",
            )
            .await;
            (open == 3).then_some(())
        },
    )
    .await;
    // The agent comes back (a new epoch): its first readings close the alerts.
    let mut again = p.fleet_at(&prefix, &state, 3, 2, 100_000, "stored", &[]);
    eventually(
        "device_offline closed by the next readings",
        Duration::from_secs(60),
        || async {
            let closed = count(
            "SELECT count(*) FROM alerts WHERE kind = 'device_offline' AND closed_at IS NOT NULL \
             AND device_id LIKE $1",
        )
        .await;
            (closed == 3).then_some(())
        },
    )
    .await;
    let alerts = count("SELECT count(*) FROM alerts WHERE device_id LIKE $1").await;
    assert_eq!(alerts, 3, "one offline episode per device, nothing else");
    again.process.stop(Duration::from_secs(20));
    bridge.stop(Duration::from_secs(20));
    collector.stop(Duration::from_secs(20));
}
