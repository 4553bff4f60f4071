//! Arrow → tch: numeric columns of a [`RecordBatch`] become a `[rows, columns]`
//! f32 tensor, with errors that name the column and row at fault.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrowPrimitiveType, PrimitiveArray, RecordBatch};
use arrow_schema::DataType;
use tch::Tensor;

use crate::error::{Error, Result};

/// Stacks `columns` of `batch` into a row-major `[rows, columns.len()]` f32 tensor.
pub fn features_to_tensor(batch: &RecordBatch, columns: &[&str]) -> Result<Tensor> {
    let rows = batch.num_rows();
    let width = columns.len();
    let mut data = vec![0f32; rows * width];
    for (j, name) in columns.iter().enumerate() {
        let array = batch
            .column_by_name(name)
            .ok_or_else(|| Error::MissingColumn((*name).to_owned()))?;
        if let Some(row) = (0..rows).find(|&r| array.is_null(r)) {
            return Err(Error::Null {
                column: (*name).to_owned(),
                row,
            });
        }
        let values = column_as_f32(name, array.as_ref())?;
        for (i, v) in values.into_iter().enumerate() {
            data[i * width + j] = v;
        }
    }
    Ok(Tensor::from_slice(&data).reshape([rows as i64, width as i64]))
}

/// One Int64 column (ids, labels) as a `[rows]` i64 tensor.
pub fn ids_to_tensor(batch: &RecordBatch, column: &str) -> Result<Tensor> {
    let array = batch
        .column_by_name(column)
        .ok_or_else(|| Error::MissingColumn(column.to_owned()))?;
    let ids = array
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| Error::UnsupportedType {
            column: column.to_owned(),
            data_type: array.data_type().to_string(),
        })?;
    if let Some(row) = (0..ids.len()).find(|&r| ids.is_null(r)) {
        return Err(Error::Null {
            column: column.to_owned(),
            row,
        });
    }
    Ok(Tensor::from_slice(ids.values()))
}

fn cast<T: ArrowPrimitiveType>(a: &PrimitiveArray<T>, f: impl Fn(T::Native) -> f32) -> Vec<f32> {
    a.values().iter().map(|v| f(*v)).collect()
}

fn column_as_f32(name: &str, array: &dyn Array) -> Result<Vec<f32>> {
    Ok(match array.data_type() {
        DataType::Float32 => array.as_primitive::<Float32Type>().values().to_vec(),
        DataType::Float64 => cast(array.as_primitive::<Float64Type>(), |v| v as f32),
        DataType::Int8 => cast(array.as_primitive::<Int8Type>(), f32::from),
        DataType::Int16 => cast(array.as_primitive::<Int16Type>(), f32::from),
        DataType::Int32 => cast(array.as_primitive::<Int32Type>(), |v| v as f32),
        DataType::Int64 => cast(array.as_primitive::<Int64Type>(), |v| v as f32),
        DataType::UInt8 => cast(array.as_primitive::<UInt8Type>(), f32::from),
        DataType::UInt16 => cast(array.as_primitive::<UInt16Type>(), f32::from),
        DataType::UInt32 => cast(array.as_primitive::<UInt32Type>(), |v| v as f32),
        DataType::UInt64 => cast(array.as_primitive::<UInt64Type>(), |v| v as f32),
        DataType::Boolean => array
            .as_boolean()
            .iter()
            .map(|v| if v == Some(true) { 1.0 } else { 0.0 })
            .collect(),
        other => {
            return Err(Error::UnsupportedType {
                column: name.to_owned(),
                data_type: other.to_string(),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray};

    use super::*;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            (
                "user_id",
                Arc::new(Int64Array::from(vec![10, 11, 12])) as ArrayRef,
            ),
            (
                "plays",
                Arc::new(Int32Array::from(vec![1, 2, 3])) as ArrayRef,
            ),
            (
                "secs",
                Arc::new(Float64Array::from(vec![0.5, 1.5, 2.5])) as ArrayRef,
            ),
            (
                "fav",
                Arc::new(BooleanArray::from(vec![true, false, true])) as ArrayRef,
            ),
            (
                "city",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
            ),
            (
                "gap",
                Arc::new(Int32Array::from(vec![Some(1), None, Some(3)])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn stacks_numeric_columns_row_major() {
        let t = features_to_tensor(&batch(), &["plays", "secs", "fav"]).unwrap();
        assert_eq!(t.size(), vec![3, 3]);
        assert_eq!(t.kind(), tch::Kind::Float);
        let row1: Vec<f32> = Vec::try_from(t.get(1)).unwrap();
        assert_eq!(row1, vec![2.0, 1.5, 0.0]);
        let sum = t.sum(tch::Kind::Float).double_value(&[]);
        assert!((sum - (6.0 + 4.5 + 2.0)).abs() < 1e-6, "{sum}");
        let ids = ids_to_tensor(&batch(), "user_id").unwrap();
        assert_eq!(Vec::<i64>::try_from(&ids).unwrap(), vec![10, 11, 12]);
    }

    #[test]
    fn errors_name_column_and_row() {
        let b = batch();
        let e = features_to_tensor(&b, &["nope"]).unwrap_err().to_string();
        assert!(e.contains("'nope'"), "{e}");
        let e = features_to_tensor(&b, &["city"]).unwrap_err().to_string();
        assert!(e.contains("'city'") && e.contains("Utf8"), "{e}");
        let e = features_to_tensor(&b, &["plays", "gap"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'gap'") && e.contains("row 1"), "{e}");
    }

    #[test]
    fn default_device_runs_a_matmul() {
        let device = crate::default_device();
        let x = Tensor::ones([4, 3], (tch::Kind::Float, device));
        let w = Tensor::ones([3, 2], (tch::Kind::Float, device));
        let y = x.matmul(&w).sum(tch::Kind::Float).double_value(&[]);
        assert_eq!(y, 24.0);
    }
}
