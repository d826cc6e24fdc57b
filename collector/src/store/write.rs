//! One batch, one transaction: the stored ranges (which reveal redeliveries), the
//! new readings, the device registry and alert states, the dashboards'
//! notifications, quarantine rows, then `COMMIT`.

use std::time::{Duration, Instant};

use super::stored_ranges::{self, DeviceRanges};
use super::{devices, quarantine, readings, Store};
use crate::alerts;
use crate::live;
use crate::records::{QuarantineRow, ReadingRow};

/// What a committed batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// New rows in `readings`.
    pub inserted: u64,
    /// Readings that were already stored (redeliveries), absorbed by the key.
    pub duplicates: u64,
    /// Rows added to `quarantine`.
    pub quarantined: u64,
    /// Alert transitions written (each with its outbox entry).
    pub alert_transitions: u64,
    /// Batches whose dashboard notifications and counts failed (committed
    /// without them).
    pub live_failed: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, w: Written) {
        self.inserted += w.inserted;
        self.duplicates += w.duplicates;
        self.quarantined += w.quarantined;
        self.alert_transitions += w.alert_transitions;
        self.live_failed += w.live_failed;
    }
}

/// How often, at most, a failure of the dashboard notifications is logged.
const LIVE_WARNING_INTERVAL: Duration = Duration::from_secs(60);

impl Store {
    /// Writes one batch in one transaction. On error nothing is committed. Returns
    /// what it wrote and, per `(device, epoch)` it touched, the stored ranges as
    /// they are after the commit. `refused` are readings PostgreSQL refused for
    /// good (their record is in `quarantine`): not stored, but settled, so that
    /// their device stops resending them.
    pub async fn write(
        &mut self,
        readings: &[ReadingRow],
        quarantine: &[QuarantineRow],
        refused: &[ReadingRow],
    ) -> Result<(Written, Vec<DeviceRanges>), tokio_postgres::Error> {
        let mut tx = self.client.transaction().await?;
        let mut created_staging = false;
        let mut written = Written::default();
        // The ranges first: as they were before this batch, they tell which of its
        // readings are stored already, so that a redelivery costs no failed COPY.
        let (stored, before) = stored_ranges::update(&tx, readings, quarantine, refused).await?;
        let fresh = stored_ranges::new_readings(readings, &before);
        let fresh = fresh.as_deref().unwrap_or(readings);
        // What this transaction inserted: `fresh`, unless the fallback found some of
        // it stored already.
        let mut fallback_inserted: Option<Vec<ReadingRow>> = None;
        if !fresh.is_empty() {
            let inserted = readings::insert(&tx, fresh, self.staging_ready).await?;
            written.inserted = inserted.count;
            fallback_inserted = inserted.subset;
            created_staging = inserted.created_staging;
        }
        let inserted = fallback_inserted.as_deref().unwrap_or(fresh);
        if !inserted.is_empty() {
            // The registry first: it locks each device's row, which holds its alert
            // state, so that two collectors briefly owning a device take turns.
            let devices = devices::upsert(&tx, inserted).await?;
            let evaluated = alerts::evaluate(&self.alert_rules, devices, inserted);
            alerts::write_states(&tx, &evaluated.states).await?;
            for (device, t) in &evaluated.transitions {
                written.alert_transitions += alerts::write_transition(&tx, device, t).await?;
            }
            if let Err(e) = live::publish(&mut tx, inserted).await? {
                // The readings matter, the dashboards' copy of them does not.
                written.live_failed += 1;
                let now = Instant::now();
                if self
                    .live_warned
                    .is_none_or(|at| now - at >= LIVE_WARNING_INTERVAL)
                {
                    self.live_warned = Some(now);
                    tracing::warn!(error = %e, "Dashboard notifications failed; the batch is stored without them.");
                }
            }
        }
        written.duplicates = readings.len() as u64 - written.inserted;
        if !quarantine.is_empty() {
            written.quarantined += quarantine::write(&tx, quarantine).await?;
        }
        tx.commit().await?;
        self.staging_ready |= created_staging;
        Ok((written, stored))
    }
}
