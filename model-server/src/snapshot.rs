//! The online feature snapshot of a model version, held in memory:
//!
//! ```text
//! <version>/online/users*.parquet   user_id INT64, the manifest's feature columns
//!                                   (any numeric type, read as f32; null → 0),
//!                                   optional lifecycle / value_tier strings
//! <version>/online/popular.parquet  item_id INT64, score (float), optional
//!                                   hour INT32 (null or -1: any hour) and
//!                                   device string (null or "": any device)
//! <version>/online/return.parquet  optional, for the return-playlist mode:
//!                                   user_id INT64, replayed LIST<INT64> (best
//!                                   first), played LIST<INT64>,
//!                                   favourite_genres LIST<string>
//! <version>/online/items.parquet    optional: item_id INT64, genre string
//! ```
//!
//! Users missing from the snapshot get the documented fallbacks (population
//! prior for churn, popular items for recommend).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast_with_options;
use arrow::datatypes::{DataType, Float32Type, Int32Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{Error, Result};

/// Per-user features and segments, and the popular items per context.
#[derive(Debug, Default)]
pub struct Snapshot {
    index: HashMap<i64, u32>,
    width: usize,
    features: Vec<f32>,
    lifecycle: Vec<u8>,
    value_tier: Vec<u8>,
    vocabulary: Vec<String>,
    popular: HashMap<(i32, String), Vec<(i64, f32)>>,
    returning: HashMap<i64, Returning>,
    item_genre: HashMap<i64, String>,
}

/// What the return-playlist mode knows about one user.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Returning {
    /// Songs replayed most, best first.
    pub replayed: Vec<i64>,
    /// Every song played in the snapshot's window.
    pub played: std::collections::HashSet<i64>,
    /// Favourite genres, most played first.
    pub genres: Vec<String>,
}

fn snapshot_error(path: &Path, reason: impl ToString) -> Error {
    Error::Snapshot {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(|e| snapshot_error(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(64 * 1024).build())
        .map_err(|e| snapshot_error(path, e))?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| snapshot_error(path, e))
}

/// The column `name` of `batch` cast to `to`, or an error naming the file.
fn column(
    path: &Path,
    batch: &RecordBatch,
    name: &str,
    to: &DataType,
) -> Result<Option<arrow::array::ArrayRef>> {
    let Some(array) = batch.column_by_name(name) else {
        return Ok(None);
    };
    strict_cast(array, to)
        .map(Some)
        .map_err(|e| snapshot_error(path, format!("column '{name}': {e}")))
}

/// Casts `array` to `to`, failing on values that do not convert ("a" as
/// int64) instead of turning them into nulls as Arrow's default cast does.
pub fn strict_cast(
    array: &arrow::array::ArrayRef,
    to: &DataType,
) -> std::result::Result<arrow::array::ArrayRef, arrow::error::ArrowError> {
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(array, to, &options)
}

impl Snapshot {
    /// Loads `<version_dir>/online/`; `features` are the columns to read, in
    /// order. A model with features but no `users*.parquet` is an error.
    pub fn load(version_dir: &Path, features: &[&str]) -> Result<Self> {
        let online = version_dir.join("online");
        let mut user_files: Vec<PathBuf> = match std::fs::read_dir(&online) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "parquet")
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("users"))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        user_files.sort();
        if !features.is_empty() && user_files.is_empty() {
            return Err(snapshot_error(
                &online,
                "the manifest lists features but there is no online/users*.parquet",
            ));
        }
        let mut snapshot = Snapshot {
            width: features.len(),
            vocabulary: vec![String::new()],
            ..Default::default()
        };
        for path in &user_files {
            for batch in read_parquet(path)? {
                snapshot.add_users(path, &batch, features)?;
            }
        }
        let popular = online.join("popular.parquet");
        if popular.exists() {
            for batch in read_parquet(&popular)? {
                snapshot.add_popular(&popular, &batch)?;
            }
            for items in snapshot.popular.values_mut() {
                items.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            }
        }
        let returning = online.join("return.parquet");
        if returning.exists() {
            for batch in read_parquet(&returning)? {
                snapshot.add_returning(&returning, &batch)?;
            }
        }
        let items = online.join("items.parquet");
        if items.exists() {
            for batch in read_parquet(&items)? {
                let ids = column(&items, &batch, "item_id", &DataType::Int64)?
                    .ok_or_else(|| snapshot_error(&items, "no item_id column"))?;
                let genres = column(&items, &batch, "genre", &DataType::Utf8)?
                    .ok_or_else(|| snapshot_error(&items, "no genre column"))?;
                let (ids, genres) = (ids.as_primitive::<Int64Type>(), genres.as_string::<i32>());
                for row in 0..batch.num_rows() {
                    if !genres.is_null(row) {
                        snapshot
                            .item_genre
                            .insert(ids.value(row), genres.value(row).to_owned());
                    }
                }
            }
        }
        Ok(snapshot)
    }

    fn add_returning(&mut self, path: &Path, batch: &RecordBatch) -> Result<()> {
        let ids = column(path, batch, "user_id", &DataType::Int64)?
            .ok_or_else(|| snapshot_error(path, "no user_id column"))?;
        let ids = ids.as_primitive::<Int64Type>();
        let list = |name: &str, item: DataType| -> Result<arrow::array::ArrayRef> {
            let to = DataType::List(std::sync::Arc::new(arrow::datatypes::Field::new(
                "item", item, true,
            )));
            column(path, batch, name, &to)?
                .ok_or_else(|| snapshot_error(path, format!("no {name} column")))
        };
        let replayed = list("replayed", DataType::Int64)?;
        let played = list("played", DataType::Int64)?;
        let genres = list("favourite_genres", DataType::Utf8)?;
        let (replayed, played, genres) = (
            replayed.as_list::<i32>(),
            played.as_list::<i32>(),
            genres.as_list::<i32>(),
        );
        let ints = |a: arrow::array::ArrayRef| -> Vec<i64> {
            a.as_primitive::<Int64Type>().iter().flatten().collect()
        };
        for row in 0..batch.num_rows() {
            let names = genres.value(row);
            self.returning.insert(
                ids.value(row),
                Returning {
                    replayed: ints(replayed.value(row)),
                    played: ints(played.value(row)).into_iter().collect(),
                    genres: names
                        .as_string::<i32>()
                        .iter()
                        .flatten()
                        .map(str::to_owned)
                        .collect(),
                },
            );
        }
        Ok(())
    }

    /// Return-playlist facts of `user_id`, when the snapshot has them.
    pub fn returning(&self, user_id: i64) -> Option<&Returning> {
        self.returning.get(&user_id)
    }

    /// Genre of `item_id`, when known.
    pub fn genre(&self, item_id: i64) -> Option<&str> {
        self.item_genre.get(&item_id).map(String::as_str)
    }

    fn intern(&mut self, value: &str) -> Result<u8> {
        if let Some(i) = self.vocabulary.iter().position(|v| v == value) {
            return Ok(i as u8);
        }
        if self.vocabulary.len() == usize::from(u8::MAX) {
            return Err(Error::Internal(
                "more than 255 distinct segment names in the snapshot".into(),
            ));
        }
        self.vocabulary.push(value.to_owned());
        Ok((self.vocabulary.len() - 1) as u8)
    }

    fn add_users(&mut self, path: &Path, batch: &RecordBatch, features: &[&str]) -> Result<()> {
        let ids = column(path, batch, "user_id", &DataType::Int64)?
            .ok_or_else(|| snapshot_error(path, "no user_id column"))?;
        let ids = ids.as_primitive::<Int64Type>();
        let mut columns = Vec::with_capacity(features.len());
        for name in features {
            let array = column(path, batch, name, &DataType::Float32)?.ok_or_else(|| {
                snapshot_error(path, format!("feature column '{name}' is missing"))
            })?;
            columns.push(array);
        }
        let columns: Vec<_> = columns
            .iter()
            .map(|c| c.as_primitive::<Float32Type>())
            .collect();
        let segment = |name| column(path, batch, name, &DataType::Utf8);
        let lifecycle = segment("lifecycle")?;
        let value_tier = segment("value_tier")?;
        for row in 0..batch.num_rows() {
            if ids.is_null(row) {
                return Err(snapshot_error(path, format!("row {row}: user_id is null")));
            }
            let id = ids.value(row);
            let position = self.lifecycle.len() as u32;
            if self.index.insert(id, position).is_some() {
                return Err(snapshot_error(path, format!("user_id {id} appears twice")));
            }
            for c in &columns {
                self.features
                    .push(if c.is_null(row) { 0.0 } else { c.value(row) });
            }
            let mut code = |array: &Option<arrow::array::ArrayRef>| match array {
                Some(a) if !a.is_null(row) => self.intern(a.as_string::<i32>().value(row)),
                _ => Ok(0),
            };
            let l = code(&lifecycle)?;
            let v = code(&value_tier)?;
            self.lifecycle.push(l);
            self.value_tier.push(v);
        }
        Ok(())
    }

    fn add_popular(&mut self, path: &Path, batch: &RecordBatch) -> Result<()> {
        let items = column(path, batch, "item_id", &DataType::Int64)?
            .ok_or_else(|| snapshot_error(path, "no item_id column"))?;
        let scores = column(path, batch, "score", &DataType::Float32)?
            .ok_or_else(|| snapshot_error(path, "no score column"))?;
        let hours = column(path, batch, "hour", &DataType::Int32)?;
        let devices = column(path, batch, "device", &DataType::Utf8)?;
        let (items, scores) = (
            items.as_primitive::<Int64Type>(),
            scores.as_primitive::<Float32Type>(),
        );
        for row in 0..batch.num_rows() {
            let hour = hours
                .as_ref()
                .filter(|h| !h.is_null(row))
                .map_or(-1, |h| h.as_primitive::<Int32Type>().value(row));
            let device = devices
                .as_ref()
                .filter(|d| !d.is_null(row))
                .map_or("", |d| d.as_string::<i32>().value(row));
            self.popular
                .entry((hour, device.to_owned()))
                .or_default()
                .push((items.value(row), scores.value(row)));
        }
        Ok(())
    }

    /// Number of users in the snapshot.
    pub fn users(&self) -> usize {
        self.index.len()
    }

    /// Features per user.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The snapshot row of `user_id`.
    pub fn row(&self, user_id: i64) -> Option<usize> {
        self.index.get(&user_id).map(|&r| r as usize)
    }

    /// The features of snapshot row `row`.
    pub fn features(&self, row: usize) -> &[f32] {
        &self.features[row * self.width..(row + 1) * self.width]
    }

    /// Lifecycle stage and value tier of row `row` ("" when unknown).
    pub fn segment(&self, row: usize) -> (&str, &str) {
        (
            &self.vocabulary[usize::from(self.lifecycle[row])],
            &self.vocabulary[usize::from(self.value_tier[row])],
        )
    }

    /// The most popular items for a context, best first: the (hour, device)
    /// list, else (hour, any device), else (any hour, device), else overall.
    pub fn popular(&self, hour: i32, device: &str) -> &[(i64, f32)] {
        [(hour, device), (hour, ""), (-1, device), (-1, "")]
            .into_iter()
            .find_map(|(h, d)| self.popular.get(&(h, d.to_owned())))
            .map_or(&[], Vec::as_slice)
    }
}
