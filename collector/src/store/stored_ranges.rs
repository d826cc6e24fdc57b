//! `stored_ranges`: per device and epoch, the sequence numbers stored so far, as
//! ranges. A batch adds its readings to them; as they were before the batch, they
//! tell which of its readings are stored already (a redelivery); as they are
//! after it, they are what the device may release from its buffer.

use std::collections::{HashMap, HashSet};

use hb_shared::EpochRanges;
use tokio_postgres::Transaction;

use super::Store;
use crate::records::{QuarantineRow, ReadingRow};

/// Most ranges kept per `(device, epoch)` in `stored_ranges` (see
/// `hb_cap_ranges` in `schema/`): a device that skips numbers cannot grow the row
/// without bound.
const MAX_KEPT_RANGES: i32 = hb_shared::MAX_STORED_RANGES as i32;

/// A device's stored sequence numbers of one epoch, after a commit: what the
/// device may release from its buffer.
pub type DeviceRanges = (String, EpochRanges);

/// Per device, per epoch: the stored ranges before a batch, inclusive, in order.
pub(super) type RangesBefore = HashMap<String, Vec<(i64, Vec<(u32, u32)>)>>;

impl Store {
    /// Forgets the stored ranges of `(device, epoch)`s that received nothing for
    /// `days` (old epochs of restarted agents); returns how many.
    pub async fn forget_stored_ranges_older_than(
        &mut self,
        days: u32,
    ) -> Result<u64, tokio_postgres::Error> {
        self.client
            .execute(
                "DELETE FROM stored_ranges WHERE updated_at < now() - make_interval(days => $1)",
                &[&(days as i32)],
            )
            .await
    }
}

/// The readings of `readings` to insert: those the ranges did not hold before the
/// batch, each once. `None` when that is all of them (the usual case: no copy).
pub(super) fn new_readings(
    readings: &[ReadingRow],
    before: &RangesBefore,
) -> Option<Vec<ReadingRow>> {
    let stored = |r: &ReadingRow| {
        let Ok(seq) = u32::try_from(r.seq) else {
            return false;
        };
        let Some((_, ranges)) = before
            .get(r.device_id.as_str())
            .and_then(|epochs| epochs.iter().find(|(e, _)| *e == r.epoch))
        else {
            return false;
        };
        // Sorted and disjoint: the last range starting at or before `seq`.
        let i = ranges.partition_point(|&(first, _)| first <= seq);
        i > 0 && seq <= ranges[i - 1].1
    };
    let mut keys: Vec<(&str, i64, i64)> = readings
        .iter()
        .map(|r| (r.device_id.as_str(), r.epoch, r.seq))
        .collect();
    keys.sort_unstable();
    let repeats = keys.windows(2).any(|w| w[0] == w[1]);
    if !repeats && !readings.iter().any(stored) {
        return None;
    }
    let mut seen = HashSet::with_capacity(readings.len());
    Some(
        readings
            .iter()
            .filter(|r| !stored(r) && seen.insert((r.device_id.as_str(), r.epoch, r.seq)))
            .cloned()
            .collect(),
    )
}

/// Adds the batch's readings, and the single readings it quarantined (refused for
/// good: the device must not resend them forever), to `stored_ranges`; returns the
/// ranges of every `(device, epoch)` touched, as stored now, and as they were
/// before. A redelivered batch changes nothing, but still reports the ranges, so
/// that a device resending readings whose confirmation it missed learns that they
/// are stored.
pub(super) async fn update(
    tx: &Transaction<'_>,
    readings: &[ReadingRow],
    quarantine: &[QuarantineRow],
    refused: &[ReadingRow],
) -> Result<(Vec<DeviceRanges>, RangesBefore), tokio_postgres::Error> {
    // Runs of consecutive numbers per (device, epoch), so that PostgreSQL merges a
    // few ranges per device rather than every reading.
    let mut keys: Vec<(&str, i64, i64)> = readings
        .iter()
        .chain(refused)
        .map(|r| (r.device_id.as_str(), r.epoch, r.seq))
        .chain(
            quarantine
                .iter()
                .filter_map(|q| q.reading.as_ref())
                .map(|(d, e, s)| (d.as_str(), *e, *s)),
        )
        .collect();
    if keys.is_empty() {
        return Ok((Vec::new(), HashMap::new()));
    }
    keys.sort_unstable();
    let (mut devices, mut epochs, mut firsts, mut lasts) = (vec![], vec![], vec![], vec![]);
    for (d, e, q) in keys {
        let extends = devices.last() == Some(&d)
            && epochs.last() == Some(&e)
            && lasts.last().is_some_and(|&l: &i64| q <= l + 1);
        if extends {
            *lasts.last_mut().expect("a run") = q;
        } else {
            devices.push(d);
            epochs.push(e);
            firsts.push(q);
            lasts.push(q);
        }
    }
    // Rows locked in (device, epoch) order, so that two collectors briefly owning
    // the same devices during a rebalance cannot deadlock. All parts of one
    // statement read one snapshot: `before` sees the rows as they were.
    let rows = tx
        .query(
            "WITH batch AS ( \
                 SELECT d, e, range_agg(int8range(a, b, '[]')) AS m \
                 FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[]) AS u(d, e, a, b) \
                 GROUP BY d, e), \
             before AS ( \
                 SELECT s.device_id, s.epoch, s.seqs FROM stored_ranges s \
                 JOIN batch ON s.device_id = batch.d AND s.epoch = batch.e), \
             after AS ( \
                 INSERT INTO stored_ranges AS s (device_id, epoch, seqs, updated_at) \
                 SELECT d, e, m, now() FROM batch ORDER BY d, e \
                 ON CONFLICT (device_id, epoch) DO UPDATE \
                     SET seqs = s.seqs + excluded.seqs, updated_at = excluded.updated_at \
                 RETURNING device_id, epoch, seqs) \
             SELECT after.device_id, after.epoch, after.seqs::text, before.seqs::text \
             FROM after LEFT JOIN before USING (device_id, epoch)",
            &[&devices, &epochs, &firsts, &lasts],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut before = RangesBefore::new();
    for row in rows {
        let (device, epoch, text): (String, i64, String) = (row.get(0), row.get(1), row.get(2));
        if let Some(ranges) = row.get::<_, Option<&str>>(3).and_then(parse_multirange) {
            before
                .entry(device.clone())
                .or_default()
                .push((epoch, ranges));
        }
        let (Ok(epoch), Some(ranges)) = (u32::try_from(epoch), parse_multirange(&text)) else {
            continue; // devices number with u32; the checks upstream keep them there
        };
        if ranges.len() > MAX_KEPT_RANGES as usize {
            // Rare (a device skipping numbers): keep the lowest and the newest.
            tx.execute(
                "UPDATE stored_ranges SET seqs = hb_cap_ranges(seqs, $3) \
                 WHERE device_id = $1 AND epoch = $2",
                &[&device, &i64::from(epoch), &MAX_KEPT_RANGES],
            )
            .await?;
        }
        out.push((device, EpochRanges::capped(epoch, ranges)));
    }
    Ok((out, before))
}

/// Inclusive `(first, last)` ranges of an `int8multirange` in PostgreSQL's text
/// form, `{[0,5),[10,13)}` (int8 ranges are canonical: inclusive lower, exclusive
/// upper). `None` for anything else, or numbers outside `u32`.
fn parse_multirange(text: &str) -> Option<Vec<(u32, u32)>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    inner
        .split("),")
        .map(|r| {
            let r = r.strip_prefix('[')?.trim_end_matches(')');
            let (a, b) = r.split_once(',')?;
            let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
            Some((a, b.checked_sub(1)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(device: &str, epoch: i64, seq: i64) -> ReadingRow {
        crate::records::sample_row(device, epoch, seq)
    }

    #[test]
    fn a_batch_without_stored_or_repeated_readings_is_written_as_it_is() {
        let batch = [row("a", 1, 5), row("a", 1, 6), row("b", 1, 5)];
        let before = RangesBefore::from([("a".into(), vec![(1, vec![(0, 4)]), (2, vec![(5, 9)])])]);
        assert_eq!(new_readings(&batch, &before), None);
    }

    #[test]
    fn readings_the_ranges_held_before_the_batch_or_repeated_in_it_are_left_out() {
        let batch = [
            row("a", 1, 3),  // stored: in [0, 4]
            row("a", 1, 5),  // new
            row("a", 1, 10), // stored: in [10, 12]
            row("a", 2, 3),  // new: another epoch
            row("b", 1, 3),  // new: another device
            row("a", 1, 5),  // repeated in the batch
        ];
        let before = RangesBefore::from([("a".into(), vec![(1, vec![(0, 4), (10, 12)])])]);
        let fresh = new_readings(&batch, &before).expect("some left out");
        let keys: Vec<_> = fresh
            .iter()
            .map(|r| (r.device_id.as_str(), r.epoch, r.seq))
            .collect();
        assert_eq!(keys, [("a", 1, 5), ("a", 2, 3), ("b", 1, 3)]);
    }

    #[test]
    fn multiranges_parse_from_postgresql_text() {
        assert_eq!(
            parse_multirange("{[0,5),[10,13)}"),
            Some(vec![(0, 4), (10, 12)])
        );
        assert_eq!(parse_multirange("{[7,8)}"), Some(vec![(7, 7)]));
        assert_eq!(parse_multirange("{}"), Some(vec![]));
        assert_eq!(parse_multirange("{[0,5]}"), None);
        assert_eq!(parse_multirange("[0,5)"), None);
        assert_eq!(parse_multirange("{[0,99999999999)}"), None);
    }
}
