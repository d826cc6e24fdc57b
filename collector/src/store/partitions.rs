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

/// One timestamp of each day the readings fall on, in the order the days first
/// appear: what `hb_ensure_reading_partitions` needs to create their partitions.
pub fn one_stamp_per_day(readings: &[ReadingRow]) -> Vec<SystemTime> {
    let mut stamps: Vec<SystemTime> = Vec::new();
    for r in readings {
        let d = day(&r.ts);
        if !stamps.iter().any(|s| day(s) == d) {
            stamps.push(r.ts);
        }
    }
    stamps
}

impl Store {
    /// Creates the daily partitions the rows will go to, if missing. Outside the
    /// batch's transaction (creating a partition locks the parent table); known
    /// days are remembered.
    pub async fn ensure_partitions(
        &mut self,
        readings: &[ReadingRow],
    ) -> Result<(), tokio_postgres::Error> {
        let missing: Vec<SystemTime> = one_stamp_per_day(readings)
            .into_iter()
            .filter(|t| !self.partition_days.contains(&day(t)))
            .collect();
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_day_gets_one_stamp_in_the_order_it_first_appears() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let rows: Vec<ReadingRow> = [86_400 * 3 + 5, 86_400 * 2, 86_400 * 3 + 9, 86_400 * 2 + 1]
            .into_iter()
            .map(|s| ReadingRow {
                ts: at(s),
                ..crate::records::sample_row("d", 1, 0)
            })
            .collect();
        assert_eq!(
            one_stamp_per_day(&rows),
            [at(86_400 * 3 + 5), at(86_400 * 2)]
        );
        assert!(one_stamp_per_day(&[]).is_empty());
    }
}
