//! Support for Heartbeat's integration tests. `scripts/test.sh` starts private
//! PostgreSQL, Mosquitto and tansu instances and exports their addresses; this
//! crate reads them, makes per-test names and databases, and runs the project's
//! binaries as child processes that are killed when dropped.
//!
//! # Layout
//! - [`Services`]: the addresses from the environment.
//! - [`unique`]: random names so tests never share topics, groups or tables.
//! - [`fresh_database`]: a new, empty database per test.
//! - [`Process`]: a child process with its output captured to a log file.
//! - [`exposition`]: a `/metrics` body read back (what [`Process::metric`] uses).
//! - [`mqtt`]: private Mosquitto instances and a recording subscriber.
//! - [`kafka`]: creating topics, producing, reading back; private tansu brokers.
//! - [`postgres`]: private PostgreSQL servers that tests crash and restart.
//! - [`proc_stat`]: a process's parent and CPU time, for benchmarks.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use hb_runtime::clock::now_ms;
use rand::Rng;

pub mod exposition;
pub mod kafka;
pub mod mqtt;
pub mod postgres;
mod proc_stat;

pub use proc_stat::{proc_stat, ProcStat};

/// Addresses of the private services of this test run.
#[derive(Debug, Clone)]
pub struct Services {
    /// PostgreSQL URL of a superuser, e.g. `postgres://postgres@127.0.0.1:5433/postgres`.
    pub postgres_url: String,
    /// `mqtt://127.0.0.1:PORT`.
    pub mqtt_url: String,
    /// Kafka bootstrap servers of the shared tansu.
    pub kafka_brokers: String,
    /// Directory for test artefacts (logs, state).
    pub work_dir: PathBuf,
    /// Password of the MQTT user `hb-bridge`.
    pub mqtt_bridge_password: String,
    /// Password of the MQTT user `hb-sim` (the fleet simulator).
    pub mqtt_sim_password: String,
    /// Password of the device users `hb-test-device-1` and `hb-test-device-2`.
    pub mqtt_device_password: String,
}

impl Services {
    /// Reads the addresses `scripts/test.sh` exported. Panics with instructions when
    /// they are missing: these tests need real services and never pretend to pass.
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!("{k} is not set: run the integration tests through scripts/test.sh, which starts the services")
            })
        };
        Self {
            postgres_url: var("HB_TEST_POSTGRES_URL"),
            mqtt_url: var("HB_TEST_MQTT_URL"),
            kafka_brokers: var("HB_TEST_KAFKA_BROKERS"),
            work_dir: PathBuf::from(var("HB_TEST_WORK_DIR")),
            mqtt_bridge_password: var("HB_TEST_MQTT_BRIDGE_PASSWORD"),
            mqtt_sim_password: var("HB_TEST_MQTT_SIM_PASSWORD"),
            mqtt_device_password: var("HB_TEST_MQTT_DEVICE_PASSWORD"),
        }
    }
}

/// A random lowercase name with `prefix`, e.g. `t-k3j9x2q1`.
pub fn unique(prefix: &str) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..10)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database(services: &Services) -> String {
    let name = unique("hb_test_");
    let (client, conn) = tokio_postgres::connect(&services.postgres_url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    let base = services
        .postgres_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .expect("postgres url has a database part");
    format!("{base}/{name}")
}

/// Connects to `url`.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to test database");
    tokio::spawn(conn);
    client
}

/// A "server" on a loopback port that takes connections and never says a word:
/// a broker or database that hangs.
pub struct SilentServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SilentServer {
    /// Starts listening (on a thread of its own, holding every connection).
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local address").to_string();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&accepted);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        Self { addr, accepted }
    }

    /// Connections taken so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// Path of a binary of this workspace, built by `cargo build` into the same target
/// directory as the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/test-hash → target/debug/name
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A running child process whose stdout and stderr go to a log file. Killed
/// (SIGKILL) when dropped.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args` and extra environment.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        work_dir: &Path,
    ) -> Self {
        Self::start_in(name, program, args, env, work_dir, Path::new("."))
    }

    /// Like [`Process::start`], running in the directory `cwd`.
    pub fn start_in(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        work_dir: &Path,
        cwd: &Path,
    ) -> Self {
        std::fs::create_dir_all(work_dir).expect("work dir");
        let log = work_dir.join(format!("{}.log", unique(&format!("{name}-"))));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .env("HB_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes (`VmRSS`), or 0 once the process is gone.
    pub fn rss_bytes(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// Everything the process wrote so far.
    pub fn output(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the output contains `needle`; panics with the output on timeout
    /// or if the process exits first.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before printing {needle:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not print {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET `path` from the HTTP server the process logged that it serves on
    /// ("Serving HTTP on ADDR."); returns the status code and body.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        self.http("GET", path, &[], "")
    }

    /// The address the process logged that it serves HTTP on.
    pub fn http_addr(&self) -> String {
        let out = self.output();
        out.lines()
            .find_map(|l| l.split("Serving HTTP on ").nth(1))
            .map(|rest| rest.trim().trim_end_matches('.').to_owned())
            .unwrap_or_else(|| panic!("{} did not log its HTTP address:\n{out}", self.name))
    }

    /// An HTTP/1.1 request with extra `headers` and `body`; returns the status
    /// code and body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        use std::io::Write;
        let addr = self.http_addr();
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect to the HTTP server");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// Waits until `/healthz` answers 200 (every component the process reports on
    /// is up); panics with the output on timeout or if the process exits first.
    pub fn wait_until_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.output());
            }
            let served = self.output().contains("Serving HTTP on ");
            if served && self.http_get("/healthz").0 == 200 {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} was not healthy within {timeout:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of a plain (unlabelled) metric on the process's `/metrics`
    /// (`None` also when the body is not the exposition format).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics");
        exposition::Exposition::parse(&body).ok()?.value(name)
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends a signal (`"TERM"`, `"KILL"`, `"STOP"`, `"CONT"`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the process to exit; panics with its output on timeout.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {timeout:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for a clean exit (status 0), panicking otherwise.
    pub fn stop(&mut self, timeout: Duration) {
        self.signal("TERM");
        let status = self.wait(timeout);
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM:\n{}",
            self.name,
            self.output()
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // A failed test shows what its processes said: in CI the work
            // directory is gone by the time anyone looks.
            let out = self.output();
            let start = out.len().saturating_sub(8000);
            let start = (start..out.len())
                .find(|&i| out.is_char_boundary(i))
                .unwrap_or(out.len());
            eprintln!(
                "----- last {} bytes of {} ({}) -----\n{}\n----- end of {} -----",
                out.len() - start,
                self.name,
                self.log.display(),
                &out[start..],
                self.name
            );
        }
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or panics with `what` after
/// `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
