//! Appending a batch (Parquet, CSV or NDJSON file) to a canonical table in a
//! data folder while a cluster may be reading it.
//!
//! The batch is cast to the table's schema, validated, and written as new
//! Parquet files named after the batch's content hash — each written to a
//! hidden temp name and renamed, so a query sees a file whole or not at all.
//! `plays` rows go to their `day=YYYY-MM-DD` partition. A marker under
//! `<data>/.ingested/<table>/` records the hash last: ingesting the same
//! batch again adds nothing.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};

use arrow::array::{ArrayRef, AsArray, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::{CastOptions, cast_with_options, concat_batches, take_record_batch};
use arrow::datatypes::TimestampMillisecondType;
use datafusion::prelude::SessionContext;

use crate::datagen::write_parquet;
use crate::error::{Error, Result};
use crate::schema;
use crate::tables::{TableSource, register};
use crate::validate::validate;

/// What an ingest did.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestReport {
    /// Rows in the batch.
    pub rows: usize,
    /// Files written (empty for a duplicate).
    pub files: Vec<PathBuf>,
    /// True when this batch had been ingested before (nothing written).
    pub duplicate: bool,
    /// The batch's content hash (its dedupe key).
    pub key: String,
}

fn content_key(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let mut h = siphasher::sip::SipHasher24::new_with_keys(0x696e_6765_7374, 0x656e_636f_7265);
    h.write(&bytes);
    Ok(format!("{:016x}", h.finish()))
}

/// The batch as the canonical table: columns by name, cast to their types
/// (values that do not convert are errors, not nulls), missing nullable
/// columns filled with nulls.
fn conform(table: &str, batch: &RecordBatch) -> Result<RecordBatch> {
    let target = schema::by_name(table).ok_or_else(|| {
        Error::InvalidSpec(format!(
            "unknown table '{table}' (tables: {:?})",
            schema::TABLES
        ))
    })?;
    for field in batch.schema().fields() {
        if target.field_with_name(field.name()).is_err() {
            return Err(Error::BadInput(format!(
                "column '{}' is not a column of {table} (columns: {:?})",
                field.name(),
                target.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
            )));
        }
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut columns: Vec<ArrayRef> = Vec::new();
    for field in target.fields() {
        let column = match batch.column_by_name(field.name()) {
            Some(array) => cast_with_options(array, field.data_type(), &options).map_err(|e| {
                Error::BadInput(format!(
                    "column '{}' as {}: {e}",
                    field.name(),
                    field.data_type()
                ))
            })?,
            None if field.is_nullable() => new_null_array(field.data_type(), batch.num_rows()),
            None => {
                return Err(Error::BadInput(format!(
                    "column '{}' is missing (required in {table})",
                    field.name()
                )));
            }
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new(target, columns)?)
}

/// Appends the rows of `src` to `table` under `data`.
pub async fn ingest(table: &str, src: &Path, data: &Path) -> Result<IngestReport> {
    let key = content_key(src)?;
    let marker = data.join(".ingested").join(table).join(&key);
    let ctx = SessionContext::new();
    register(
        &ctx,
        &TableSource {
            name: "batch".into(),
            path: src.to_path_buf(),
        },
    )
    .await?;
    let batches = ctx.sql("SELECT * FROM batch").await?.collect().await?;
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => {
            return Ok(IngestReport {
                rows: 0,
                files: Vec::new(),
                duplicate: false,
                key,
            });
        }
    };
    let batch = conform(table, &concat_batches(&schema, &batches)?)?;
    let violations = validate(table, &batch, 0)?;
    if let Some(first) = violations.first() {
        return Err(Error::BadInput(format!(
            "{}: {} violation(s), the first: {first} (row counted from 0)",
            src.display(),
            violations.len()
        )));
    }
    if marker.exists() {
        return Ok(IngestReport {
            rows: batch.num_rows(),
            files: Vec::new(),
            duplicate: true,
            key,
        });
    }
    let name = format!("ingest-{key}.parquet");
    let mut files = Vec::new();
    if table == "plays" {
        let ts = batch
            .column_by_name("ts")
            .map(|c| c.as_primitive::<TimestampMillisecondType>().clone())
            .ok_or_else(|| Error::BadInput("plays needs ts".into()))?;
        let mut days: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for row in 0..ts.len() {
            let day = chrono::DateTime::from_timestamp_millis(ts.value(row))
                .map(|t| t.format("%Y-%m-%d").to_string())
                .ok_or_else(|| Error::BadInput(format!("row {row}: ts out of range")))?;
            days.entry(day).or_default().push(row as u32);
        }
        for (day, rows) in days {
            let part = take_record_batch(&batch, &UInt32Array::from(rows))?;
            let dir = data.join(table).join(format!("day={day}"));
            files.push(write_parquet(&dir, &name, part)?);
        }
    } else {
        files.push(write_parquet(&data.join(table), &name, batch.clone())?);
    }
    let parent = marker.parent().unwrap_or(data);
    std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
    std::fs::write(&marker, src.display().to_string()).map_err(Error::io(&marker))?;
    Ok(IngestReport {
        rows: batch.num_rows(),
        files,
        duplicate: false,
        key,
    })
}
