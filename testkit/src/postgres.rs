//! A private PostgreSQL of one test, for tests that crash and restart the
//! database. Run as the `postgres` user when the tests run as root (PostgreSQL
//! refuses root), like `scripts/test.sh` does.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{free_port, unique, Process, Services};

/// A PostgreSQL server with its own data directory and port.
pub struct Postgres {
    /// Superuser URL of its `postgres` database.
    pub url: String,
    /// The CA that signed the server's certificate, when started
    /// [`Postgres::with_tls`].
    pub ca_file: Option<PathBuf>,
    port: u16,
    dir: PathBuf,
    work: PathBuf,
    process: Option<Process>,
}

fn as_postgres(program: &Path) -> (PathBuf, Vec<String>) {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if root {
        (
            PathBuf::from("runuser"),
            vec![
                "-u".into(),
                "postgres".into(),
                "--".into(),
                program.to_string_lossy().into_owned(),
            ],
        )
    } else {
        (program.to_owned(), Vec::new())
    }
}

impl Postgres {
    /// initdb and start.
    pub fn start(s: &Services) -> Self {
        let mut pg = Self::prepare(s);
        pg.resume();
        pg
    }

    /// initdb and start a server that takes TLS connections only: its
    /// certificate (for IP 127.0.0.1, not for `localhost`) is signed by a fresh
    /// test CA, [`Postgres::ca_file`]; plaintext logins over TCP are rejected.
    pub fn with_tls(s: &Services) -> Self {
        let mut pg = Self::prepare(s);
        let ca = crate::mqtt::make_certificates(&pg.dir);
        let data = pg.dir.join("data");
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        use std::io::Write;
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = '{d}/server.pem'\nssl_key_file = '{d}/server.key'",
            d = pg.dir.display()
        )
        .expect("write postgresql.conf");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .expect("write pg_hba.conf");
        // PostgreSQL refuses a key file others may read, or one it does not own.
        let key = pg.dir.join("server.key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod server.key");
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&pg.dir)
            .status();
        pg.ca_file = Some(ca);
        pg.resume();
        pg
    }

    fn prepare(s: &Services) -> Self {
        let bin = PathBuf::from(
            std::env::var("HB_TEST_PG_BIN").expect("HB_TEST_PG_BIN: run through scripts/test.sh"),
        );
        let dir = s.work_dir.join(unique("pg-"));
        std::fs::create_dir_all(&dir).expect("pg dir");
        let _ = Command::new("chown").args(["postgres"]).arg(&dir).status();
        let (prog, mut args) = as_postgres(&bin.join("initdb"));
        args.extend(["-D", "data", "-U", "postgres", "-A", "trust", "--no-sync"].map(String::from));
        let out = Command::new(prog)
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            ca_file: None,
            port,
            dir,
            work: s.work_dir.clone(),
            process: None,
        }
    }

    /// Starts (again) on the same data directory and port.
    pub fn resume(&mut self) {
        let bin = PathBuf::from(std::env::var("HB_TEST_PG_BIN").expect("HB_TEST_PG_BIN"));
        let (prog, mut args) = as_postgres(&bin.join("postgres"));
        args.extend(
            [
                "-D",
                "data",
                "-p",
                &self.port.to_string(),
                "-h",
                "127.0.0.1",
                "-k",
                ".",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=50",
            ]
            .map(String::from),
        );
        let mut p = Process::start_in("postgres", &prog, &args, &[], &self.work, &self.dir);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = p.try_wait() {
                panic!("postgres exited ({status}):\n{}", p.output());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start:\n{}",
                p.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.process = Some(p);
    }

    /// Kills the postmaster with SIGKILL (a crash: the next start recovers from
    /// the WAL) and waits until the port is closed.
    pub fn crash(&mut self) {
        let pid = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
            .expect("postmaster.pid");
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Backends notice their postmaster is gone and exit; give them a moment.
        std::thread::sleep(Duration::from_millis(500));
        self.process = None;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(t) = std::fs::read_to_string(self.dir.join("data/postmaster.pid")) {
            if let Some(pid) = t.lines().next() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
}
