//! CPU seconds, from `/proc`: this process (the collector or a loop, with
//! librdkafka), the PostgreSQL server (the postmaster and its children; needs a
//! local server) and, when its PID is given, the Kafka broker.

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
    let (ppid, _) = proc_stat(backend as u32)?;
    Some(ppid)
}

/// Parent PID and CPU seconds (utime + stime) of a process, from `/proc`.
fn proc_stat(pid: u32) -> Option<(u32, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // /proc counts in USER_HZ: 100 per second on Linux, whatever the kernel's tick.
    const USER_HZ: f64 = 100.0;
    Some((ppid, ticks as f64 / USER_HZ))
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
