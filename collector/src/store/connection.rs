//! Connecting the [`Store`], reconnecting it after a lost connection, and which
//! errors a retry of the same statement can cure.

use std::collections::HashSet;
use std::time::Duration;

use backon::Retryable;
use hb_shared::AlertRules;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::Store;
use crate::database::{Database, WRITER_ROLE};
use crate::{Error, Result};

impl Store {
    /// Connects once, acting as the role `hb_writer`.
    pub async fn connect(database: &Database) -> Result<Self, tokio_postgres::Error> {
        let client = database.open_as(WRITER_ROLE).await?;
        Ok(Self {
            client,
            database: database.clone(),
            partition_days: HashSet::new(),
            staging_ready: false,
            alert_rules: AlertRules::default(),
            live_warned: None,
        })
    }

    /// Connects with the start-up retry policy; fails with a one-line error after it.
    pub async fn connect_with_retry(database: &Database) -> Result<Self> {
        (|| Self::connect(database))
            .retry(hb_runtime::retry::startup())
            .notify(|e, after| tracing::warn!(error = %e, ?after, "PostgreSQL not reachable, retrying."))
            .await
            .map_err(Error::ConnectDatabase)
    }

    /// Evaluates alerts under `rules` (the defaults) from now on.
    pub fn set_alert_rules(&mut self, rules: AlertRules) {
        self.alert_rules = rules;
    }

    /// The underlying client, e.g. for migrations.
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Reconnects after a lost connection, with up to three retries (backoff from
    /// 200 ms to 5 s); keeps the alert rules, forgets what the old session knew
    /// (partitions, staging table).
    pub async fn reconnect(&mut self) -> Result<(), tokio_postgres::Error> {
        let fresh = (|| Self::connect(&self.database))
            .retry(hb_runtime::retry::backoff(
                Duration::from_millis(200),
                Duration::from_secs(5),
                Some(3),
            ))
            .await?;
        *self = Self {
            alert_rules: self.alert_rules,
            ..fresh
        };
        Ok(())
    }

    /// Whether the connection is gone (and needs [`Store::reconnect`]).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// Whether retrying the same statement later can succeed: connection trouble,
/// server shutdown, serialisation failures, resource exhaustion. Anything else is a
/// property of the data and must not be retried forever.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true, // I/O error or closed connection
        // "no partition of relation found for row": the day's partition was dropped
        // (by another process's retention) after we last created it. The writer
        // forgets its partition cache on this error and creates it again. It
        // shares its SQLSTATE with the tables' CHECK constraints, but names no
        // constraint: a row that violates a named CHECK is a property of the
        // data, and its record goes to quarantine instead of being retried
        // forever.
        Some(code) if *code == SqlState::CHECK_VIOLATION => {
            e.as_db_error().and_then(|d| d.constraint()).is_none()
        }
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("40") // transaction rollback (serialisation, deadlock)
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57") // operator intervention (shutdown)
                || c.starts_with("58") // system error
                || *code == SqlState::LOCK_NOT_AVAILABLE
        }
    }
}
