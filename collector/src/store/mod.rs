//! PostgreSQL writer. One batch is one transaction: the stored ranges (which also
//! tell which of the batch's readings are stored already: a redelivery), binary
//! `COPY` of the other readings straight into `readings`, the device registry,
//! quarantine rows, then `COMMIT`. The unique key makes a replayed batch (after a
//! crash or a COMMIT whose reply was lost) a no-op; a stored reading the ranges
//! no longer show (they keep at most 64 per device and epoch) makes the COPY fail,
//! and the batch goes again through a session-local staging table and `INSERT …
//! SELECT … ON CONFLICT DO NOTHING`.
//!
//! # Layout
//! - `connection`: connecting, reconnecting, which errors a retry can cure.
//! - `write`: one batch, one transaction ([`Store::write`]).
//! - `readings`: the `readings` columns, binary `COPY` and its staging fallback.
//! - `stored_ranges`: the stored sequence numbers per device and epoch, and the
//!   redeliveries they reveal.
//! - `devices`: the device registry upsert.
//! - `quarantine`: quarantine rows and their payloads.
//! - `partitions`: daily partitions of `readings`: created ahead, dropped by retention.

mod connection;
mod devices;
mod partitions;
mod quarantine;
mod readings;
mod stored_ranges;
mod write;

use std::collections::HashSet;
use std::time::Instant;

use hb_shared::AlertRules;
use tokio_postgres::Client;

use crate::database::Database;

pub use connection::is_transient;
pub use partitions::one_stamp_per_day;
pub use readings::{row_params, COLUMNS, COLUMN_TYPES};
pub use stored_ranges::DeviceRanges;
pub use write::Written;

/// A connection to PostgreSQL prepared for batch writes.
pub struct Store {
    client: Client,
    database: Database,
    /// Days (since 1970) whose readings partition is known to exist.
    partition_days: HashSet<u64>,
    /// Whether this session's `readings_staging` table exists.
    staging_ready: bool,
    /// Default alert rules (a device's row may override them).
    alert_rules: AlertRules,
    /// When a failure of the dashboard notifications was last logged.
    live_warned: Option<Instant>,
}
