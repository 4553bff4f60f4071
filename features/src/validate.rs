//! Checks record batches against the canonical tables: every column present
//! with its type, no unexpected columns (so raw PII cannot slip in), no nulls
//! where the schema forbids them, and values in their domain. Each violation
//! names the table, column, row and reason.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};

use crate::error::{Error, Result};
use crate::schema;

/// One thing wrong with the data.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Canonical table.
    pub table: String,
    /// Column.
    pub column: String,
    /// Row (0-based, counted from the first batch of the file) when the
    /// violation is about one value; None for a column-level problem.
    pub row: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.row {
            Some(row) => write!(
                f,
                "table {}, column {}, row {row}: {}",
                self.table, self.column, self.reason
            ),
            None => write!(
                f,
                "table {}, column {}: {}",
                self.table, self.column, self.reason
            ),
        }
    }
}

/// A value domain.
enum Rule {
    NonNegative,
    Positive,
    Between(f64, f64),
    OneOf(&'static [&'static str]),
}

fn rules(table: &str) -> Vec<(&'static str, Rule)> {
    use Rule::*;
    match table {
        "users" => vec![("birth_year", Between(1900.0, 2030.0))],
        "items" => vec![("duration_secs", NonNegative)],
        "plays" => vec![
            ("played_secs", Between(0.0, 86_400.0)),
            ("item_secs", Positive),
            ("source", OneOf(&schema::PLAY_SOURCES)),
        ],
        "interactions" => vec![("kind", OneOf(&schema::INTERACTION_KINDS))],
        "payments" => vec![
            ("amount", NonNegative),
            ("quantity", NonNegative),
            ("plan_days", NonNegative),
            ("list_price", NonNegative),
            ("product", OneOf(&schema::PRODUCTS)),
        ],
        "daily_activity" => vec![
            ("plays", NonNegative),
            ("completed_plays", NonNegative),
            ("skips", NonNegative),
            ("unique_items", NonNegative),
            ("total_secs", NonNegative),
        ],
        _ => Vec::new(),
    }
}

/// Every violation in `batch` as rows `first_row..` of canonical `table`.
pub fn validate(table: &str, batch: &RecordBatch, first_row: usize) -> Result<Vec<Violation>> {
    let expected = schema::by_name(table).ok_or_else(|| {
        Error::InvalidSpec(format!(
            "unknown table '{table}' (canonical tables: {:?})",
            schema::TABLES
        ))
    })?;
    let mut out = Vec::new();
    let violation = |column: &str, row: Option<usize>, reason: String| Violation {
        table: table.to_owned(),
        column: column.to_owned(),
        row,
        reason,
    };
    for field in batch.schema().fields() {
        if expected.field_with_name(field.name()).is_err() {
            out.push(violation(
                field.name(),
                None,
                "not a column of this table (raw PII and extra fields must be dropped or hashed at import)"
                    .into(),
            ));
        }
    }
    let rules = rules(table);
    for field in expected.fields() {
        let name = field.name();
        let Some(array) = batch.column_by_name(name) else {
            out.push(violation(name, None, "missing".into()));
            continue;
        };
        if array.data_type() != field.data_type() {
            out.push(violation(
                name,
                None,
                format!("type {}, expected {}", array.data_type(), field.data_type()),
            ));
            continue;
        }
        if !field.is_nullable() && array.null_count() > 0 {
            for row in (0..array.len()).filter(|&r| array.is_null(r)) {
                out.push(violation(name, Some(first_row + row), "null".into()));
            }
        }
        for (_, rule) in rules.iter().filter(|(c, _)| c == name) {
            match rule {
                Rule::OneOf(allowed) => {
                    let values = array.as_string::<i32>();
                    for (row, value) in values.iter().enumerate() {
                        if let Some(v) = value
                            && !allowed.contains(&v)
                        {
                            out.push(violation(
                                name,
                                Some(first_row + row),
                                format!("'{v}' is not one of {allowed:?}"),
                            ));
                        }
                    }
                }
                numeric => {
                    let values = cast(array, &DataType::Float64)?;
                    let values = values.as_primitive::<Float64Type>();
                    for (row, value) in values.iter().enumerate() {
                        let Some(v) = value else { continue };
                        let reason = match numeric {
                            // NaN fails these checks too.
                            Rule::NonNegative if v.is_nan() || v < 0.0 => {
                                format!("{v} is negative")
                            }
                            Rule::Positive if v.is_nan() || v <= 0.0 => {
                                format!("{v} is not positive")
                            }
                            Rule::Between(lo, hi) if !(*lo..=*hi).contains(&v) => {
                                format!("{v} is outside {lo}..={hi}")
                            }
                            _ => continue,
                        };
                        out.push(violation(name, Some(first_row + row), reason));
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, StringArray};

    use super::*;

    #[test]
    fn reports_table_column_row_and_reason() {
        let batch = RecordBatch::try_from_iter(vec![
            (
                "user_id",
                Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
            ),
            (
                "ts",
                Arc::new(
                    arrow::array::TimestampMillisecondArray::from(vec![0, 1]).with_timezone("UTC"),
                ),
            ),
            ("amount", Arc::new(Float64Array::from(vec![9.5, -1.0]))),
            ("quantity", Arc::new(Int32Array::from(vec![Some(1), None]))),
            ("product", Arc::new(StringArray::from(vec!["cd", "vinyl"]))),
            ("email", Arc::new(StringArray::from(vec!["a@b", "c@d"]))),
        ])
        .unwrap();
        let found: Vec<String> = validate("payments", &batch, 10)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            found
                .iter()
                .any(|v| v.starts_with("table payments, column email: not a column")),
            "{found:?}"
        );
        assert!(
            found.contains(&"table payments, column amount, row 11: -1 is negative".to_owned()),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|v| v.contains("column product, row 11: 'vinyl' is not one of")),
            "{found:?}"
        );
        assert!(
            found.contains(&"table payments, column plan_days: missing".to_owned()),
            "{found:?}"
        );
        assert!(
            !found.iter().any(|v| v.contains("quantity")),
            "null quantity is allowed: {found:?}"
        );
        assert!(validate("nope", &batch, 0).is_err());
    }
}
