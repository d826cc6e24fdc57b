//! Least privilege and encryption between the collector and PostgreSQL: the
//! collector's role may not change the schema, the dashboard's may only read its
//! views, and a TLS connection checks the server it reaches.

use std::path::Path;
use std::time::Duration;

use hb_collector::Database;
use hb_collector::Error;
use hb_testkit::postgres::Postgres;
use hb_testkit::{connect, eventually, fresh_database, unique, Process, Services};
use tokio_postgres::error::SqlState;

/// `url` with its user name replaced by `user` (the test servers trust
/// loopback logins, so no password is needed).
fn as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (_, host) = rest.split_once('@').expect("a user in the URL");
    format!("{scheme}://{user}@{host}")
}

/// Whether `db`'s connection is encrypted, as the server sees it.
async fn encrypted(db: &tokio_postgres::Client) -> bool {
    db.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// The SQLSTATE of `sql` run on `db`, if it failed.
async fn refusal(db: &tokio_postgres::Client, sql: &str) -> Option<SqlState> {
    db.batch_execute(sql).await.err().map(|e| {
        e.code()
            .cloned()
            .unwrap_or_else(|| panic!("{sql}: not a database error: {e}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collectors_login_may_not_change_the_schema_and_the_dashboards_role_only_reads_views() {
    let s = Services::from_env();
    let url = fresh_database(&s).await;
    let owner = Database::parse(&url, None).unwrap();
    hb_collector::migrate(&owner).await.unwrap();
    // A login of the collector's own: a member of hb_writer, nothing else.
    let login = unique("hb_collector_");
    connect(&url)
        .await
        .batch_execute(&format!("CREATE ROLE {login} LOGIN IN ROLE hb_writer"))
        .await
        .unwrap();
    let writer = Database::parse(&as_user(&url, &login), None).unwrap();

    // Nothing pending: migrating reads and changes nothing, so the collector
    // may start with its own login.
    assert_eq!(hb_collector::migrate(&writer).await.unwrap(), 0);

    let db = writer.open().await.unwrap();
    let denied = Some(SqlState::INSUFFICIENT_PRIVILEGE);
    for sql in [
        "CREATE TABLE intruder (i int)",
        "DROP TABLE readings",
        "ALTER TABLE readings ADD COLUMN note text",
        "ALTER TABLE devices DROP COLUMN last_bpm",
        "TRUNCATE readings",
        "DELETE FROM readings",
        "UPDATE readings SET bpm = 0",
        "DROP VIEW dashboard_devices",
        "CREATE OR REPLACE FUNCTION hb_cap_ranges(m int8multirange, keep integer) \
         RETURNS int8multirange LANGUAGE sql AS 'SELECT m'",
        "DELETE FROM schema_migrations",
        // A function the owner's SECURITY DEFINER functions might call instead
        // of the built-in.
        "CREATE FUNCTION substr(name, integer) RETURNS text LANGUAGE sql AS $$SELECT 'x'$$",
        // Retention below the owner's floor (30 days), or of everything.
        "SELECT hb_drop_reading_partitions_older_than(1)",
        "SELECT hb_drop_reading_partitions_older_than(-100000)",
        "UPDATE reading_retention_floor SET days = 1",
    ] {
        assert_eq!(refusal(&db, sql).await, denied, "the writer ran: {sql}");
    }
    // What it does need works, partitions included (through the owner's function).
    for sql in [
        "SELECT hb_ensure_reading_partitions(ARRAY[now() + interval '3 days'])",
        "INSERT INTO readings (device_id, epoch, seq, ts, ts_corrected, mono_ms, clock_synced, \
             received_at, bpm, contact, rr_1024, rr_consistent, status, backfill, \
             kafka_partition, kafka_offset) \
         VALUES ('d', 1, 0, now() + interval '3 days', now(), 0, true, now(), 60, 'detected', \
             '{}', true, 'normal', false, 0, 0)",
        "SELECT hb_drop_reading_partitions_older_than(30)",
        "SELECT count(*) FROM readings",
    ] {
        assert_eq!(
            refusal(&db, sql).await,
            None,
            "the writer may not run: {sql}"
        );
    }
    let owner_of_partition: String = db
        .query_one(
            "SELECT pg_get_userbyid(relowner) FROM pg_class \
             WHERE relname = 'readings_' || to_char(now() + interval '3 days', 'YYYYMMDD')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(
        owner_of_partition, login,
        "the partition belongs to the schema owner"
    );
    // Every table has a line in the grants: one forgotten would fail only where
    // the collector first touches it.
    let ungranted: Vec<String> = db
        .query(
            "SELECT c.relname::text FROM pg_class c \
             WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') \
               AND NOT c.relispartition AND NOT has_table_privilege('hb_writer', c.oid, 'SELECT')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        ungranted.is_empty(),
        "hb_writer has no grant on {ungranted:?}"
    );

    // The dashboard's role (which the collector's login may act as) only reads
    // the dashboard's views.
    db.batch_execute("SET ROLE hb_reader").await.unwrap();
    assert_eq!(
        refusal(&db, "SELECT count(*) FROM dashboard_devices").await,
        None
    );
    for sql in [
        "SELECT count(*) FROM readings",
        "INSERT INTO devices (device_id) VALUES ('x')",
        "UPDATE alerts SET acknowledged_by = 'x'",
        "DELETE FROM alert_outbox",
        "INSERT INTO quarantine_payloads (source_topic, source_partition, source_offset, payload) \
         VALUES ('t', 0, 0, '')",
        "DELETE FROM dashboard_devices",
        "UPDATE dashboard_alerts SET acknowledged_by = 'x'",
        "CREATE TABLE intruder (i int)",
    ] {
        assert_eq!(refusal(&db, sql).await, denied, "the reader ran: {sql}");
    }

    // A pending migration is the owner's job: the collector's login is told so.
    let empty = fresh_database(&s).await;
    let writer_on_empty = Database::parse(&as_user(&empty, &login), None).unwrap();
    let err = hb_collector::migrate(&writer_on_empty).await.unwrap_err();
    assert!(
        matches!(err, Error::MigrateNotPermitted { .. }),
        "expected a refusal to migrate, got: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgresql_checks_the_server_and_plaintext_is_refused() {
    let s = Services::from_env();
    let pg = Postgres::with_tls(&s);
    let ca = pg.ca_file.clone().unwrap();
    let url = |host: &str, query: &str| pg.url.replace("127.0.0.1", host) + query;
    let open = |u: String| async move { Database::parse(&u, None).unwrap().open().await };

    // verify-full against the right CA and name: encrypted.
    let db = open(url(
        "127.0.0.1",
        &format!("?sslmode=verify-full&sslrootcert={}", ca.display()),
    ))
    .await
    .expect("a verify-full connection");
    assert!(encrypted(&db).await, "the connection is not encrypted");
    // The default (prefer) encrypts when the server offers it.
    let db = open(url("127.0.0.1", ""))
        .await
        .expect("a default connection");
    assert!(encrypted(&db).await, "prefer did not encrypt");

    // Plaintext is refused by the server.
    let err = open(url("127.0.0.1", "?sslmode=disable"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err:?}"
    );

    // Another CA: the server is not trusted.
    let other = s.work_dir.join(unique("other-ca-"));
    std::fs::create_dir_all(&other).unwrap();
    let other_ca = hb_testkit::mqtt::make_certificates(&other);
    let err = open(url(
        "127.0.0.1",
        &format!("?sslmode=verify-full&sslrootcert={}", other_ca.display()),
    ))
    .await
    .unwrap_err();
    // (The other CA has the same name, so rustls finds it and the signature fails.)
    assert!(format!("{err:?}").contains("InvalidCertificate"), "{err:?}");

    // The right CA but another name: verify-full refuses, verify-ca accepts.
    let query = |mode: &str| format!("?sslmode={mode}&sslrootcert={}", ca.display());
    let err = open(url("localhost", &query("verify-full")))
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
    open(url("localhost", &query("verify-ca")))
        .await
        .expect("verify-ca ignores the name");

    // The binary itself: hb-collector migrate over verify-full.
    let mut migrate = Process::start(
        "migrate",
        Path::new(env!("CARGO_BIN_EXE_hb-collector")),
        &[
            "migrate".into(),
            "--database-url".into(),
            url("127.0.0.1", &query("verify-full")),
        ],
        &[],
        &s.work_dir.join(unique("migrate-")),
    );
    let status = migrate.wait(Duration::from_secs(60));
    assert!(
        status.success(),
        "hb-collector migrate: {}",
        migrate.output()
    );
    let versions: i64 = open(url("127.0.0.1", &query("verify-full")))
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions as usize, hb_collector::MIGRATIONS.len());
}

/// One HTTPS request with Python's TLS client (not ours), trusting `ca`:
/// `Ok((status, Set-Cookie))`, or `Err(stderr)` when the connection fails.
fn https(
    ca: &Path,
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    const CLIENT: &str = r#"
import http.client, ssl, sys
ca, addr, method, path, body = sys.argv[1:6]
host, port = addr.rsplit(":", 1)
c = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=ca), timeout=10)
headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
c.request(method, path, body=body or None, headers=headers)
r = c.getresponse()
print(r.status)
print(r.getheader("Set-Cookie") or "")
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", CLIENT])
        .arg(ca)
        .args([addr, method, path, body])
        .output()
        .expect("run python3");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, lines.next().unwrap_or_default().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_over_https_speaks_only_tls_and_marks_its_cookie_secure() {
    let s = Services::from_env();
    let setup = crate::common::Setup::new(&s, &s.kafka_brokers, 1).await;
    let db_url = fresh_database(&s).await;
    let certs = s.work_dir.join(unique("https-"));
    std::fs::create_dir_all(&certs).unwrap();
    let ca = hb_testkit::mqtt::make_certificates(&certs);
    let token = "operator-token-0123456789";
    let collector = setup.collector(
        &s.kafka_brokers,
        &db_url,
        &[],
        &[
            "--http-tls-cert-file",
            certs.join("server.pem").to_str().unwrap(),
            "--http-tls-key-file",
            certs.join("server.key").to_str().unwrap(),
            "--dashboard-token",
            &format!("operator={token}"),
        ],
    );
    let addr = eventually("the HTTPS address", Duration::from_secs(30), || async {
        collector
            .output()
            .lines()
            .find_map(|l| l.split("Serving HTTPS on ").nth(1))
            .map(|rest| rest.trim().trim_end_matches('.').to_owned())
    })
    .await;
    eventually("/healthz over HTTPS", Duration::from_secs(60), || async {
        (https(&ca, &addr, "GET", "/healthz", "").ok()?.0 == 200).then_some(())
    })
    .await;

    // Without a token: refused, over TLS.
    assert_eq!(https(&ca, &addr, "GET", "/api/stats", "").unwrap().0, 401);
    // The login form's cookie is only sent back over HTTPS.
    let (status, cookie) = https(&ca, &addr, "POST", "/login", &format!("token={token}")).unwrap();
    assert_eq!(status, 303);
    assert!(cookie.contains("; Secure"), "{cookie}");

    // Plain HTTP on the same port gets no HTTP answer.
    let plain = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(
        !plain.contains("HTTP/1."),
        "plain HTTP was answered: {plain:?}"
    );
    // A client that trusts another CA refuses the server.
    let other = s.work_dir.join(unique("other-ca-"));
    std::fs::create_dir_all(&other).unwrap();
    let other_ca = hb_testkit::mqtt::make_certificates(&other);
    let err = https(&other_ca, &addr, "GET", "/healthz", "").unwrap_err();
    assert!(err.contains("CERTIFICATE_VERIFY_FAILED"), "{err}");
}
