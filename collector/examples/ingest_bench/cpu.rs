//! CPU seconds, from `/proc`: this process (the collector or a loop, with
//! librdkafka), the PostgreSQL server (the postmaster and its children; needs a
//! local server) and, when its PID is given, the Kafka broker.

use hb_testkit::proc_stat;
use tokio_postgres::Client;

/// CPU seconds used so far by this process, the PostgreSQL server and the broker.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    client: f64,
    server: Option<f64>,
    broker: Option<f64>,
}

impl Cpu {
    /// What was used from `before` to `self`: this process, PostgreSQL, the
    /// broker (`None` where unknown).
    pub fn since(self, before: Cpu) -> [Option<f64>; 3] {
        let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        [
            Some(self.client - before.client),
            diff(before.server, self.server),
            diff(before.broker, self.broker),
        ]
    }
}

/// Where the CPU seconds are read.
pub struct CpuMeter {
    postmaster: Option<u32>,
    broker: Option<u32>,
}

impl CpuMeter {
    /// Finds the postmaster of `db`'s backend (if the server is local).
    pub async fn new(db: &Client, broker: Option<u32>) -> Self {
        Self {
            postmaster: postmaster_pid(db).await,
            broker,
        }
    }

    /// The CPU seconds used so far.
    pub fn now(&self) -> Cpu {
        Cpu {
            client: process_cpu_seconds(std::process::id()).unwrap_or(0.0),
            server: self.postmaster.and_then(children_cpu_seconds),
            broker: self.broker.and_then(process_cpu_seconds),
        }
    }
}

/// The postmaster of our backend: its parent process, if the server is local.
async fn postmaster_pid(db: &Client) -> Option<u32> {
    let backend: i32 = db
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .ok()?
        .get(0);
    Some(proc_stat(backend as u32)?.ppid)
}

fn process_cpu_seconds(pid: u32) -> Option<f64> {
    Some(proc_stat(pid)?.cpu_seconds)
}

/// CPU seconds of the postmaster and its live children (backends and background
/// processes).
fn children_cpu_seconds(postmaster: u32) -> Option<f64> {
    let mut total = process_cpu_seconds(postmaster)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(s) = proc_stat(pid) {
            if s.ppid == postmaster {
                total += s.cpu_seconds;
            }
        }
    }
    Some(total)
}
