//! CDNOW (`CDNOW_master.txt`, as shipped in the `lifetimes` PyPI package):
//! an optional header line, then one purchase per line, whitespace-separated
//! `customer_id date(YYYYMMDD) number_of_cds dollar_value`, e.g.
//! ` 00001 19970101  1   11.77` (CRLF line ends). Purchases become `payments` (product `cd`);
//! each customer becomes a `users` row registered at their first purchase.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};

use super::{ImportOptions, ImportReport, Rejects, Staging, date_ms, lines, parse, yyyymmdd};
use crate::error::Result;
use crate::schema;

const COLUMNS: [&str; 4] = ["customer_id", "date", "quantity", "amount"];

#[derive(Default)]
struct Payments {
    user_id: Vec<i64>,
    ts: Vec<i64>,
    quantity: Vec<i32>,
    amount: Vec<f64>,
}

impl Payments {
    fn batch(&mut self) -> Result<RecordBatch> {
        let n = self.user_id.len();
        let ts = || TimestampMillisecondArray::from(vec![None; n]).with_timezone("UTC");
        Ok(RecordBatch::try_new(
            schema::payments(),
            vec![
                Arc::new(Int64Array::from(std::mem::take(&mut self.user_id))) as ArrayRef,
                Arc::new(
                    TimestampMillisecondArray::from(std::mem::take(&mut self.ts))
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from(std::mem::take(&mut self.amount))),
                Arc::new(Int32Array::from(std::mem::take(&mut self.quantity))),
                Arc::new(StringArray::from(vec!["cd"; n])),
                Arc::new(Int32Array::from(vec![None; n])),
                Arc::new(Float64Array::from(vec![None; n])),
                Arc::new(ts()),
                Arc::new(BooleanArray::from(vec![None; n])),
                Arc::new(BooleanArray::from(vec![None; n])),
            ],
        )?)
    }
}

/// Imports `src` (the CDNOW_master.txt file) into `out`.
pub fn import(src: &Path, out: &Path, options: &ImportOptions) -> Result<ImportReport> {
    let mut staging = Staging::new(out)?;
    let mut rejects = Rejects::new();
    let mut payments = Payments::default();
    let mut first_purchase: BTreeMap<i64, i64> = BTreeMap::new();
    for line in lines(src)? {
        let (number, text) = line?;
        if text.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.split_whitespace().collect();
        // The lifetimes copy starts with a header line.
        if number == 1 && fields.first() == Some(&"customer_id") {
            continue;
        }
        if fields.len() != COLUMNS.len() {
            let column = COLUMNS.get(fields.len()).unwrap_or(&"line");
            rejects.push(
                src,
                number,
                column,
                format!(
                    "{} fields, expected 4 ({})",
                    fields.len(),
                    COLUMNS.join(" ")
                ),
                &text,
            );
            continue;
        }
        let parsed = (|| {
            let user: i64 = parse(fields[0], "a customer id").map_err(|e| (0, e))?;
            let date = yyyymmdd(fields[1]).map_err(|e| (1, e))?;
            let quantity: i32 = parse(fields[2], "a whole quantity").map_err(|e| (2, e))?;
            let amount: f64 = parse(fields[3], "an amount").map_err(|e| (3, e))?;
            if quantity < 0 {
                return Err((2, format!("{quantity} is negative")));
            }
            if !(amount.is_finite() && amount >= 0.0) {
                return Err((3, format!("{amount} is not a non-negative amount")));
            }
            Ok((user, date_ms(date), quantity, amount))
        })();
        match parsed {
            Ok((user, ts, quantity, amount)) => {
                payments.user_id.push(user);
                payments.ts.push(ts);
                payments.quantity.push(quantity);
                payments.amount.push(amount);
                first_purchase
                    .entry(user)
                    .and_modify(|t| *t = (*t).min(ts))
                    .or_insert(ts);
                if payments.user_id.len() >= Staging::part_rows() {
                    staging.write("payments", payments.batch()?)?;
                }
            }
            Err((column, reason)) => rejects.push(src, number, COLUMNS[column], reason, &text),
        }
    }
    let rejected = rejects.settle(options)?;
    if !payments.user_id.is_empty() {
        staging.write("payments", payments.batch()?)?;
    }
    let n = first_purchase.len();
    let users = RecordBatch::try_new(
        schema::users(),
        vec![
            Arc::new(Int64Array::from_iter_values(first_purchase.keys().copied())) as ArrayRef,
            Arc::new(
                TimestampMillisecondArray::from_iter_values(first_purchase.values().copied())
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
            Arc::new(Int32Array::from(vec![None; n])),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
            Arc::new(BooleanArray::from(vec![true; n])),
        ],
    )?;
    staging.write("users", users)?;
    staging.publish("cdnow", rejected, Vec::new())
}
