//! Arrow batches of a feature query → the rows a model trains on: numeric
//! columns as f32 (null → 0), string columns as categorical codes (0 for
//! null or a value unseen in training, else 1 + its index in the sorted
//! training vocabulary), label columns as 0/1.

use std::collections::BTreeMap;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type, Int64Type};

use super::TrainError;

/// Per categorical column, its values in code order (code = index + 1).
pub type Vocabularies = BTreeMap<String, Vec<String>>;

/// Rows for a model, row-major.
#[derive(Debug, Default)]
pub struct Frame {
    /// `user_id` of each row.
    pub user_ids: Vec<i64>,
    /// Numeric feature names.
    pub numeric_names: Vec<String>,
    /// `rows × numeric_names.len()` values.
    pub numeric: Vec<f32>,
    /// Categorical feature names.
    pub categorical_names: Vec<String>,
    /// `rows × categorical_names.len()` codes.
    pub categorical: Vec<i64>,
    /// `rows × label count` labels.
    pub labels: Vec<f32>,
}

impl Frame {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.user_ids.len()
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_numeric(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Boolean)
}

/// Splits `batches` into ids, features and `labels` columns. With `vocab`
/// the categorical codes follow it (scoring); without, it is built from
/// these rows (training) and returned.
pub fn build(
    batches: &[RecordBatch],
    labels: &[String],
    vocab: Option<&Vocabularies>,
) -> Result<(Frame, Vocabularies), TrainError> {
    let Some(first) = batches.first() else {
        return Err(TrainError::EmptyData(
            "the feature query returned no rows".into(),
        ));
    };
    let schema = first.schema();
    let mut frame = Frame::default();
    for field in schema.fields() {
        let name = field.name();
        if name == "user_id" || labels.contains(name) {
            continue;
        }
        if is_string(field.data_type()) {
            frame.categorical_names.push(name.clone());
        } else if is_numeric(field.data_type()) {
            frame.numeric_names.push(name.clone());
        } else {
            return Err(TrainError::InvalidJob(format!(
                "feature column '{name}' has type {}: features must be numbers, booleans or strings",
                field.data_type()
            )));
        }
    }
    for label in labels {
        if schema.column_with_name(label).is_none() {
            return Err(TrainError::InvalidJob(format!(
                "label column '{label}' is not in the training query"
            )));
        }
    }
    let vocab = match vocab {
        Some(v) => v.clone(),
        None => {
            let mut v = Vocabularies::new();
            for name in &frame.categorical_names {
                let mut values = std::collections::BTreeSet::new();
                for b in batches {
                    let col = cast(b.column_by_name(name).expect("in schema"), &DataType::Utf8)?;
                    let col = col.as_string::<i32>();
                    values.extend(col.iter().flatten().map(str::to_owned));
                }
                v.insert(name.clone(), values.into_iter().collect());
            }
            v
        }
    };
    let (f, c, h) = (
        frame.numeric_names.len(),
        frame.categorical_names.len(),
        labels.len(),
    );
    for b in batches {
        let base = frame.user_ids.len();
        let n = b.num_rows();
        let ids = cast(
            b.column_by_name("user_id")
                .ok_or_else(|| TrainError::InvalidJob("no user_id column".into()))?,
            &DataType::Int64,
        )?;
        let ids = ids.as_primitive::<Int64Type>();
        frame.user_ids.extend(ids.iter().map(|v| v.unwrap_or(-1)));
        frame.numeric.resize((base + n) * f, 0.0);
        for (j, name) in frame.numeric_names.iter().enumerate() {
            let col = cast(
                b.column_by_name(name).expect("in schema"),
                &DataType::Float32,
            )?;
            let col = col.as_primitive::<Float32Type>();
            for (i, v) in col.iter().enumerate() {
                let v = v.unwrap_or(0.0);
                if !v.is_finite() {
                    return Err(TrainError::InvalidJob(format!(
                        "feature '{name}' is {v} for user {}",
                        frame.user_ids[base + i]
                    )));
                }
                frame.numeric[(base + i) * f + j] = v;
            }
        }
        frame.categorical.resize((base + n) * c, 0);
        for (j, name) in frame.categorical_names.iter().enumerate() {
            let values = &vocab[name];
            let col = cast(b.column_by_name(name).expect("in schema"), &DataType::Utf8)?;
            for (i, v) in col.as_string::<i32>().iter().enumerate() {
                let code = v
                    .and_then(|v| values.binary_search_by(|x| x.as_str().cmp(v)).ok())
                    .map_or(0, |k| k as i64 + 1);
                frame.categorical[(base + i) * c + j] = code;
            }
        }
        frame.labels.resize((base + n) * h, 0.0);
        for (j, name) in labels.iter().enumerate() {
            let col = cast(b.column_by_name(name).expect("checked"), &DataType::Float32)?;
            let col = col.as_primitive::<Float32Type>();
            for (i, v) in col.iter().enumerate() {
                frame.labels[(base + i) * h + j] = v.unwrap_or(0.0);
            }
        }
    }
    Ok((frame, vocab))
}
