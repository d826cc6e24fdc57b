//! The daily partitions of `readings`: created ahead of a batch (outside its
//! transaction), remembered, and dropped by retention no sooner than the floor
//! the schema owner set.

use std::time::{SystemTime, UNIX_EPOCH};

use super::Store;
use crate::records::ReadingRow;

/// The day (since 1970) of a timestamp; 0 before 1970.
fn day(t: &SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

impl Store {
    /// Creates the daily partitions the rows will go to, if missing. Outside the
    /// batch's transaction (creating a partition locks the parent table); known
    /// days are remembered.
    pub async fn ensure_partitions(
        &mut self,
        readings: &[ReadingRow],
    ) -> Result<(), tokio_postgres::Error> {
        let mut missing: Vec<SystemTime> = Vec::new();
        for r in readings {
            let d = day(&r.ts);
            if !self.partition_days.contains(&d) && !missing.iter().any(|m| day(m) == d) {
                missing.push(r.ts);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        self.client
            .execute("SELECT hb_ensure_reading_partitions($1)", &[&missing])
            .await?;
        self.partition_days.extend(missing.iter().map(day));
        Ok(())
    }

    /// Forgets which daily partitions exist, so that the next write creates them
    /// again if needed.
    pub fn forget_partitions(&mut self) {
        self.partition_days.clear();
    }

    /// The shortest retention the schema owner allows, in days
    /// (`reading_retention_floor`).
    pub async fn retention_floor_days(&mut self) -> Result<i32, tokio_postgres::Error> {
        let row = self
            .client
            .query_one("SELECT days FROM reading_retention_floor", &[])
            .await?;
        Ok(row.get(0))
    }

    /// Drops daily partitions older than `days` (at least the floor the schema
    /// owner set, [`Store::retention_floor_days`]); returns how many.
    pub async fn drop_partitions_older_than(
        &mut self,
        days: u32,
    ) -> Result<i32, tokio_postgres::Error> {
        let row = self
            .client
            .query_one(
                "SELECT hb_drop_reading_partitions_older_than($1::int)",
                &[&(days as i32)],
            )
            .await?;
        self.partition_days.clear();
        Ok(row.get(0))
    }
}
