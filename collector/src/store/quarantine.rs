//! Quarantine entries written in a batch's transaction: one `quarantine` row per
//! refused reading or record, one `quarantine_payloads` row per record.

use std::collections::HashSet;

use tokio_postgres::Transaction;

use crate::records::QuarantineRow;

/// Writes `quarantine` (not empty); returns the `quarantine` rows added (a
/// replayed batch adds none).
pub(super) async fn write(
    tx: &Transaction<'_>,
    quarantine: &[QuarantineRow],
) -> Result<u64, tokio_postgres::Error> {
    let stmt = tx
        .prepare(
            "INSERT INTO quarantine (source_topic, source_partition, source_offset, reason, \
             detail, received_at, device_id, epoch, seq) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .await?;
    let payload_stmt = tx
        .prepare(
            "INSERT INTO quarantine_payloads (source_topic, source_partition, source_offset, \
             payload) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .await?;
    let mut quarantined = 0;
    // One payload per record, however many of its readings are refused.
    let mut payloads_written = HashSet::new();
    for q in quarantine {
        if payloads_written.insert((&q.source.topic, q.source.partition, q.source.offset)) {
            tx.execute(
                &payload_stmt,
                &[
                    &q.source.topic,
                    &q.source.partition,
                    &q.source.offset,
                    &&*q.payload,
                ],
            )
            .await?;
        }
        let (device, epoch, seq) = match &q.reading {
            Some((d, e, s)) => (Some(d.as_str()), Some(*e), Some(*s)),
            None => (None, None, None),
        };
        quarantined += tx
            .execute(
                &stmt,
                &[
                    &q.source.topic,
                    &q.source.partition,
                    &q.source.offset,
                    &q.reason,
                    &q.detail,
                    &q.received_at,
                    &device,
                    &epoch,
                    &seq,
                ],
            )
            .await?;
    }
    Ok(quarantined)
}
