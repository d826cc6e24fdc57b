//! Retention: once an hour, drop the daily `readings` partitions older than
//! `--retention-days`. Whole partitions go at once: no DELETE, no bloat. The
//! stored ranges of device epochs that heard nothing for as long go too.

use std::sync::Arc;
use std::time::Duration;

use hb_runtime::retry::sleep_unless_cancelled;
use tokio_util::sync::CancellationToken;

use crate::metrics::CollectorMetrics;
use crate::Store;

/// Runs until `shutdown`; failures are logged and retried at the next hour.
pub async fn run(
    database: crate::database::Database,
    days: u32,
    metrics: Arc<CollectorMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        match Store::connect(&database).await {
            Ok(mut store) => {
                match store.drop_partitions_older_than(days).await {
                    Ok(0) => {}
                    Ok(n) => {
                        metrics.partitions_dropped.inc_by(n as u64);
                        tracing::info!(dropped = n, days, "Dropped old reading partitions.");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Retention failed; trying again in an hour.")
                    }
                }
                match store.forget_stored_ranges_older_than(days).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        forgotten = n,
                        days,
                        "Forgot the stored ranges of old device epochs."
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "Stored-range retention failed; trying again in an hour.")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Retention cannot reach PostgreSQL; trying again in an hour.")
            }
        }
        if sleep_unless_cancelled(Duration::from_secs(3600), &shutdown).await {
            return;
        }
    }
}
