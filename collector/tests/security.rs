//! Least privilege and encryption between the collector and PostgreSQL: the
//! collector's role may not change the schema, the dashboard's may only read its
//! views, and a TLS connection checks the server it reaches.

use std::path::Path;
use std::time::Duration;

use hb_collector::database::Database;
use hb_collector::Error;
use hb_testkit::postgres::Postgres;
use hb_testkit::{connect, fresh_database, unique, Process, Services};
use tokio_postgres::error::SqlState;

/// `url` with its user name replaced by `user` (the test servers trust
/// loopback logins, so no password is needed).
fn as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (_, host) = rest.split_once('@').expect("a user in the URL");
    format!("{scheme}://{user}@{host}")
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
        "SELECT hb_drop_reading_partitions_before('2000-01-01')",
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
    let ssl: bool = db
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the connection is not encrypted");
    // The default (prefer) encrypts when the server offers it.
    let db = open(url("127.0.0.1", ""))
        .await
        .expect("a default connection");
    let ssl: bool = db
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "prefer did not encrypt");

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
    assert_eq!(
        versions as usize,
        hb_collector::migrations::MIGRATIONS.len()
    );
}
