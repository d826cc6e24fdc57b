//! Private Mosquitto instances (for tests that stop and restart the broker) and a
//! subscriber that records every reading it receives.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hb_shared::{codec, DeviceStatus};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::{free_port, unique, Process, Services};

/// A Mosquitto of one test, with the project's test configuration (authentication,
/// ACL, persistence) on its own port and directory.
pub struct Mosquitto {
    /// `mqtt://127.0.0.1:PORT`.
    pub url: String,
    /// `mqtts://127.0.0.1:PORT` when started [`Mosquitto::with_tls`].
    pub tls_url: Option<String>,
    /// The CA that signed the TLS listener's certificate.
    pub ca_file: Option<PathBuf>,
    /// With a TLS listener: the folder
    /// `scripts/make-dev-certs.sh` wrote (`ca.pem`, `ID.pem`, `ID.key`).
    pub cert_dir: Option<PathBuf>,
    port: u16,
    dir: PathBuf,
    process: Option<Process>,
}

impl Mosquitto {
    /// Prepares the directory and port without starting the broker (to test an
    /// agent that starts while the broker is down).
    pub fn prepare(s: &Services) -> Self {
        let var = |k: &str| {
            std::env::var(k)
                .unwrap_or_else(|_| panic!("{k} is not set: run through scripts/test.sh"))
        };
        let port = free_port();
        let dir = s.work_dir.join(unique("mosquitto-"));
        std::fs::create_dir_all(&dir).expect("mosquitto dir");
        let auth = PathBuf::from(var("HB_TEST_MOSQUITTO_AUTH_DIR"));
        for f in ["passwd", "acl"] {
            std::fs::copy(auth.join(f), dir.join(f)).expect("copy mosquitto auth file");
        }
        let conf = std::fs::read_to_string(var("HB_TEST_MOSQUITTO_CONF")).expect("test conf");
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!("listener {port} 127.0.0.1\n{conf}"),
        )
        .expect("write conf");
        chown_to_mosquitto(&dir);
        Self {
            url: format!("mqtt://127.0.0.1:{port}"),
            tls_url: None,
            ca_file: None,
            cert_dir: None,
            port,
            dir,
            process: None,
        }
    }

    /// Prepares and starts a broker with a second, TLS listener whose certificate
    /// (for IP 127.0.0.1) is signed by a fresh test CA.
    pub fn with_tls(s: &Services) -> Self {
        let m = Self::prepare(s);
        let certs = make_dev_certs(&m.dir.join("certs"), &[]);
        m.start_with_tls_listener(certs, "")
    }

    /// Prepares and starts a broker with a second, TLS listener that requires a
    /// client certificate and takes its CN as the user name
    /// (`use_identity_as_username`), so that the project's ACL applies to it as to
    /// a password login. The certificates (a CA, the broker's for 127.0.0.1, one
    /// per device of `devices`) come from `scripts/make-dev-certs.sh`, in
    /// [`Mosquitto::cert_dir`]. The password listener stays as it is.
    pub fn with_client_certificates(s: &Services, devices: &[&str]) -> Self {
        let m = Self::prepare(s);
        let certs = make_dev_certs(&m.dir.join("certs"), devices);
        m.start_with_tls_listener(
            certs,
            "require_certificate true\nuse_identity_as_username true\n",
        )
    }

    /// Adds a TLS listener on a free port, with the CA and broker certificate in
    /// `certs` and `extra` settings, and starts the broker.
    fn start_with_tls_listener(mut self, certs: PathBuf, extra: &str) -> Self {
        let tls_port = free_port();
        let listener = format!(
            "\nlistener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n{extra}",
            d = certs.display()
        );
        let conf = self.dir.join("mosquitto.conf");
        let mut text = std::fs::read_to_string(&conf).expect("conf");
        text.push_str(&listener);
        std::fs::write(&conf, text).expect("conf");
        chown_to_mosquitto(&self.dir);
        self.tls_url = Some(format!("mqtts://127.0.0.1:{tls_port}"));
        self.ca_file = Some(certs.join("ca.pem"));
        self.cert_dir = Some(certs);
        self.resume();
        self
    }

    /// Prepares and starts a broker as permissive as some deployments are: no
    /// packet size limit, and `hb-sim` may publish on any topic under `{root}/v1/`.
    pub fn without_limits(s: &Services) -> Self {
        let mut m = Self::prepare(s);
        let conf = m.dir.join("mosquitto.conf");
        let text: String = std::fs::read_to_string(&conf)
            .expect("conf")
            .lines()
            .filter(|l| !l.starts_with("max_packet_size"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&conf, text).expect("conf");
        let acl = m.dir.join("acl");
        let text = std::fs::read_to_string(&acl)
            .expect("acl")
            .replace("user hb-sim\n", "user hb-sim\ntopic write +/v1/#\n");
        std::fs::write(&acl, text).expect("acl");
        chown_to_mosquitto(&m.dir);
        m.resume();
        m
    }

    /// Prepares and starts a broker.
    pub fn start(s: &Services) -> Self {
        let mut m = Self::prepare(s);
        m.resume();
        m
    }

    /// Starts (again) on the same port and directory, with its persisted state.
    pub fn resume(&mut self) {
        let bin = std::env::var("HB_TEST_MOSQUITTO").unwrap_or_else(|_| "mosquitto".into());
        let conf = self.dir.join("mosquitto.conf");
        let mut p = Process::start_in(
            "mosquitto",
            Path::new(&bin),
            &["-c".into(), conf.to_string_lossy().into_owned()],
            &[],
            &self.dir,
            &self.dir,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start:\n{}",
                p.output()
            );
            std::thread::sleep(Duration::from_millis(50));
            if let Some(status) = p.try_wait() {
                panic!("mosquitto exited ({status}):\n{}", p.output());
            }
        }
        self.process = Some(p);
    }

    /// Stops the broker cleanly (it saves its persistence file).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Kills the broker (SIGKILL): it forgets what it acknowledged since its last
    /// persistence snapshot.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.signal("KILL");
            let _ = p.wait(Duration::from_secs(10));
        }
    }
}

/// Started as root, mosquitto drops to its own user, which must own its files.
fn chown_to_mosquitto(dir: &Path) {
    if Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
    {
        let _ = Command::new("chown")
            .args(["-R", "mosquitto"])
            .arg(dir)
            .status();
    }
}

/// A test CA and a server certificate for 127.0.0.1 (and no other name) signed
/// by it, made by `scripts/make-dev-certs.sh`. Returns the CA certificate's path;
/// `server.pem` and `server.key` are next to it.
pub fn make_certificates(dir: &Path) -> PathBuf {
    make_dev_certs(dir, &[]).join("ca.pem")
}

/// Runs `scripts/make-dev-certs.sh OUT --broker-host 127.0.0.1 DEVICES…`: a
/// development CA, a broker certificate for 127.0.0.1 and a client certificate
/// per device. Returns `out`.
pub fn make_dev_certs(out: &Path, devices: &[&str]) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-dev-certs.sh");
    let output = Command::new(&script)
        .arg(out)
        .args(["--broker-host", "127.0.0.1"])
        .args(devices)
        .output()
        .expect("run scripts/make-dev-certs.sh");
    assert!(
        output.status.success(),
        "make-dev-certs.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    out.to_path_buf()
}

/// What a [`ReadingSubscriber`] saw of one `(device, epoch, seq)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// Times received (QoS 1 may deliver more than once).
    pub times: u32,
    /// Whether any copy was flagged backfill.
    pub backfill: bool,
    /// Receive time of the first copy minus the reading's timestamp, in
    /// milliseconds (the agent and the test share a clock).
    pub latency_ms: i64,
}

/// Readings seen, by `(device, epoch, seq)`.
pub type SeenReadings = HashMap<(String, u32, u32), Seen>;

/// Subscribes (as `hb-bridge`, persistent session) to every device's readings
/// under a topic root and records each reading, reconnecting as needed.
pub struct ReadingSubscriber {
    seen: Arc<Mutex<SeenReadings>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadingSubscriber {
    /// Connects and waits until the subscription is in place.
    pub async fn start(s: &Services, url: &str, root: &str) -> Self {
        let addr = url.trim_start_matches("mqtt://");
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let mut o = MqttOptions::new(unique("sub-"), host, port.parse().expect("port"));
        o.set_clean_session(false)
            .set_credentials("hb-bridge", s.mqtt_bridge_password.clone())
            .set_max_packet_size(1 << 20, 1 << 16)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(o, 100);
        let filter = format!("{root}/v1/devices/+/readings");
        let seen: Arc<Mutex<SeenReadings>> = Arc::default();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let c = client.clone();
                        let f = filter.clone();
                        tokio::spawn(async move {
                            let _ = c.subscribe(f, QoS::AtLeastOnce).await;
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(e) = codec::decode_postcard(&p.payload) {
                            let now_ms = crate::now_ms();
                            let mut m = record.lock().expect("seen lock");
                            for r in &e.readings {
                                let s = m
                                    .entry((e.device_id.to_string(), r.epoch, r.seq))
                                    .or_default();
                                if s.times == 0 {
                                    s.latency_ms = now_ms - r.ts_ms;
                                }
                                s.times += 1;
                                s.backfill |= r.backfill;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(20), ready_rx)
            .await
            .expect("subscriber ready in time")
            .expect("subscriber task alive");
        Self { seen, task }
    }

    /// A snapshot of everything seen so far.
    pub fn seen(&self) -> SeenReadings {
        self.seen.lock().expect("seen lock").clone()
    }
}

impl Drop for ReadingSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes (as `hb-bridge`, clean session, reconnecting as needed) to every
/// device's retained status under a topic root and keeps the newest per device.
pub struct StatusWatcher {
    latest: Arc<Mutex<HashMap<String, DeviceStatus>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusWatcher {
    /// Starts watching; statuses arrive as devices publish them (and the retained
    /// ones at once).
    pub fn start(s: &Services, url: &str, root: &str) -> Self {
        let addr = url.trim_start_matches("mqtt://");
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let mut o = MqttOptions::new(unique("status-"), host, port.parse().expect("port"));
        o.set_clean_session(true)
            .set_credentials("hb-bridge", s.mqtt_bridge_password.clone())
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(o, 10);
        let filter = format!("{root}/v1/devices/+/status");
        let latest: Arc<Mutex<HashMap<String, DeviceStatus>>> = Arc::default();
        let record = Arc::clone(&latest);
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let device = p.topic.rsplit('/').nth(1).unwrap_or_default().to_owned();
                        if let Ok(st) = serde_json::from_slice::<DeviceStatus>(&p.payload) {
                            let mut m = record.lock().expect("status lock");
                            let newer = m.get(&device).is_none_or(|old| st.ts_ms >= old.ts_ms);
                            if newer {
                                m.insert(device, st);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Self { latest, task }
    }

    /// The newest status of every device seen.
    pub fn latest(&self) -> HashMap<String, DeviceStatus> {
        self.latest.lock().expect("status lock").clone()
    }

    /// How many devices have published a status (online, or their goodbye) at
    /// or after `since_ms` (Unix ms): connected since then.
    pub fn heard_since(&self, since_ms: i64) -> usize {
        self.latest()
            .values()
            .filter(|st| st.ts_ms >= since_ms)
            .count()
    }
}

impl Drop for StatusWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
