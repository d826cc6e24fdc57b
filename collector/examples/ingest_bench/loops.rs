//! The yardsticks: the same rows written by a raw binary `COPY` loop and by a
//! row-by-row prepared `INSERT` loop, each over the benchmark's own connection.

use std::time::Instant;

use hb_collector::records::ReadingRow;
use hb_collector::store::{row_params, COLUMNS, COLUMN_TYPES};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::Client;

use crate::cpu::CpuMeter;
use crate::database::checkpoint;
use crate::report::Line;

/// `rows` `COPY`ed straight into `readings` with `BinaryCopyInWriter`, `batch`
/// rows per transaction, after a `CHECKPOINT`.
pub async fn raw_copy(
    db: &mut Client,
    rows: &[ReadingRow],
    batch: usize,
    cpu: &CpuMeter,
) -> anyhow::Result<Line> {
    checkpoint(db).await?;
    let before = cpu.now();
    let started = Instant::now();
    ensure_partitions(db, rows).await?;
    for chunk in rows.chunks(batch) {
        let tx = db.transaction().await?;
        let sink = tx
            .copy_in(&format!("COPY readings ({COLUMNS}) FROM STDIN BINARY"))
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &COLUMN_TYPES);
        let mut writer = std::pin::pin!(writer);
        for r in chunk {
            writer.as_mut().write(&row_params(r)).await?;
        }
        writer.finish().await?;
        tx.commit().await?;
    }
    Ok(Line {
        label: format!("raw COPY (BinaryCopyInWriter), {batch}/txn"),
        rows: rows.len(),
        elapsed: started.elapsed(),
        cpu: cpu.now().since(before),
    })
}

/// One prepared `INSERT` per row, `batch` rows per transaction, after a
/// `CHECKPOINT`.
pub async fn insert_loop(
    db: &mut Client,
    rows: &[ReadingRow],
    batch: usize,
    cpu: &CpuMeter,
) -> anyhow::Result<Line> {
    checkpoint(db).await?;
    let before = cpu.now();
    let started = Instant::now();
    ensure_partitions(db, rows).await?;
    let placeholders: Vec<String> = (1..=COLUMN_TYPES.len()).map(|i| format!("${i}")).collect();
    let stmt = db
        .prepare_typed(
            &format!(
                "INSERT INTO readings ({COLUMNS}) VALUES ({})",
                placeholders.join(", ")
            ),
            &COLUMN_TYPES,
        )
        .await?;
    for chunk in rows.chunks(batch) {
        let tx = db.transaction().await?;
        for r in chunk {
            tx.execute(&stmt, &row_params(r)).await?;
        }
        tx.commit().await?;
    }
    Ok(Line {
        label: format!("row-by-row INSERT (prepared), {batch}/txn"),
        rows: rows.len(),
        elapsed: started.elapsed(),
        cpu: cpu.now().since(before),
    })
}

/// The daily partitions of these rows, as the collector makes them.
async fn ensure_partitions(db: &Client, rows: &[ReadingRow]) -> anyhow::Result<()> {
    let stamps = hb_collector::store::one_stamp_per_day(rows);
    db.execute("SELECT hb_ensure_reading_partitions($1)", &[&stamps])
        .await?;
    Ok(())
}
