//! The KKBox churn challenge (WSDM Cup 2018), from its CSV files in a folder:
//!
//! | file (any that exist) | columns used | canonical table |
//! |---|---|---|
//! | `members_v3.csv`, `members.csv` | msno, city, bd, gender, registered_via, registration_init_time | `users` |
//! | `transactions.csv`, `transactions_v2.csv` | msno, payment_plan_days, plan_list_price, actual_amount_paid, is_auto_renew, transaction_date, membership_expire_date, is_cancel | `payments` (product `subscription`) |
//! | `user_logs.csv`, `user_logs_v2.csv` | msno, date, num_25, num_50, num_75, num_985, num_100, num_unq, total_secs | `daily_activity` |
//! | `train.csv`, `train_v2.csv` | msno, is_churn | `subscription_labels` |
//!
//! `msno` strings become INT64 ids through the configured [`IdKey`]: the same
//! key maps the same member to the same id in every file and every import.
//! Ages (`bd`) outside 1..=100 — the file has many 0s and some absurd values —
//! become a null birth year, counted in the report. Daily logs: plays = all
//! `num_*`, completed = `num_985 + num_100`, skips = `num_25 + num_50`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMillisecondArray,
};

use super::{
    IdKey, ImportOptions, ImportReport, Rejects, Staging, date_ms, date32, lines, parse, yyyymmdd,
};
use crate::error::{Error, Result};
use crate::schema;

/// The year KKBox's ages refer to.
const AGE_YEAR: i32 = 2017;

fn existing(src: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| src.join(n))
        .filter(|p| p.exists())
        .collect()
}

/// Calls `row` for each data line of a CSV file with the `wanted` columns
/// (located by the header), in `wanted` order.
fn each_row(
    path: &Path,
    wanted: &[&str],
    rejects: &mut Rejects,
    mut row: impl FnMut(usize, &[&str], &mut Rejects) -> Result<()>,
) -> Result<()> {
    let mut positions = Vec::new();
    for line in lines(path)? {
        let (number, text) = line?;
        if text.is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.split(',').collect();
        if number == 1 {
            for w in wanted {
                let p = fields.iter().position(|f| f.trim() == *w).ok_or_else(|| {
                    Error::BadInput(format!(
                        "{}:1: the header lacks column '{w}' (header: {text})",
                        path.display()
                    ))
                })?;
                positions.push(p);
            }
            continue;
        }
        let values: Option<Vec<&str>> = positions.iter().map(|&p| fields.get(p).copied()).collect();
        match values {
            Some(values) => row(number, &values, rejects)?,
            None => rejects.push(
                path,
                number,
                "line",
                format!("{} fields, fewer than the header's", fields.len()),
                &text,
            ),
        }
    }
    Ok(())
}

fn flag(text: &str) -> std::result::Result<bool, String> {
    match text.trim() {
        "1" => Ok(true),
        "0" => Ok(false),
        other => Err(format!("'{other}' is not 0 or 1")),
    }
}

fn optional(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

#[derive(Default)]
struct Activity {
    user_id: Vec<i64>,
    date: Vec<i32>,
    plays: Vec<i64>,
    completed: Vec<i64>,
    skips: Vec<i64>,
    unique: Vec<i64>,
    secs: Vec<f64>,
}

impl Activity {
    fn batch(&mut self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            schema::daily_activity(),
            vec![
                Arc::new(Int64Array::from(std::mem::take(&mut self.user_id))) as ArrayRef,
                Arc::new(Date32Array::from(std::mem::take(&mut self.date))),
                Arc::new(Int64Array::from(std::mem::take(&mut self.plays))),
                Arc::new(Int64Array::from(std::mem::take(&mut self.completed))),
                Arc::new(Int64Array::from(std::mem::take(&mut self.skips))),
                Arc::new(Int64Array::from(std::mem::take(&mut self.unique))),
                Arc::new(Float64Array::from(std::mem::take(&mut self.secs))),
            ],
        )?)
    }
}

/// Imports the KKBox folder `src` into `out`; needs `options.id_key`.
pub fn import(src: &Path, out: &Path, options: &ImportOptions) -> Result<ImportReport> {
    let key: &IdKey = options.id_key.as_ref().ok_or_else(|| {
        Error::InvalidSpec(
            "KKBox member ids (msno) are strings: give an id key (--id-key-file or ENCORE_ID_KEY) to map them to INT64 ids"
                .into(),
        )
    })?;
    let members = existing(src, &["members_v3.csv", "members.csv"]);
    let transactions = existing(src, &["transactions.csv", "transactions_v2.csv"]);
    let logs = existing(src, &["user_logs.csv", "user_logs_v2.csv"]);
    let train = existing(src, &["train.csv", "train_v2.csv"]);
    if members.is_empty() && transactions.is_empty() && logs.is_empty() && train.is_empty() {
        return Err(Error::BadInput(format!(
            "{}: no KKBox files (members_v3.csv, transactions.csv, user_logs.csv, train.csv)",
            src.display()
        )));
    }
    let mut staging = Staging::new(out)?;
    let mut rejects = Rejects::new();
    let mut bad_ages = 0usize;

    // Members → users.
    let (mut ids, mut cities, mut years, mut genders, mut vias, mut registered) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let columns = [
        "msno",
        "city",
        "bd",
        "gender",
        "registered_via",
        "registration_init_time",
    ];
    for path in &members {
        each_row(path, &columns, &mut rejects, |number, v, rejects| {
            let parsed = (|| {
                let bd: i32 = parse(v[2], "an age").map_err(|e| ("bd", e))?;
                let date = yyyymmdd(v[5]).map_err(|e| ("registration_init_time", e))?;
                Ok((bd, date))
            })();
            match parsed {
                Ok((bd, date)) => {
                    ids.push(key.id(v[0].trim()));
                    cities.push(optional(v[1]));
                    years.push((1..=100).contains(&bd).then_some(AGE_YEAR - bd));
                    if !(1..=100).contains(&bd) {
                        bad_ages += 1;
                    }
                    genders.push(optional(v[3]));
                    vias.push(optional(v[4]));
                    registered.push(date_ms(date));
                }
                Err((column, reason)) => rejects.push(path, number, column, reason, &v.join(",")),
            }
            Ok(())
        })?;
    }

    // Transactions → payments.
    let (
        mut p_ids,
        mut p_ts,
        mut amount,
        mut plan_days,
        mut list_price,
        mut expires,
        mut renew,
        mut cancel,
    ) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let columns = [
        "msno",
        "payment_plan_days",
        "plan_list_price",
        "actual_amount_paid",
        "is_auto_renew",
        "transaction_date",
        "membership_expire_date",
        "is_cancel",
    ];
    for path in &transactions {
        each_row(path, &columns, &mut rejects, |number, v, rejects| {
            let parsed = (|| {
                let days: i32 = parse(v[1], "a number of days").map_err(|e| (1, e))?;
                let list: f64 = parse(v[2], "a price").map_err(|e| (2, e))?;
                let paid: f64 = parse(v[3], "an amount").map_err(|e| (3, e))?;
                let auto = flag(v[4]).map_err(|e| (4, e))?;
                let at = yyyymmdd(v[5]).map_err(|e| (5, e))?;
                let until = yyyymmdd(v[6]).map_err(|e| (6, e))?;
                let cancelled = flag(v[7]).map_err(|e| (7, e))?;
                for (i, x) in [(1, f64::from(days)), (2, list), (3, paid)] {
                    if x < 0.0 {
                        return Err((i, format!("{x} is negative")));
                    }
                }
                Ok((days, list, paid, auto, at, until, cancelled))
            })();
            match parsed {
                Ok((days, list, paid, auto, at, until, cancelled)) => {
                    p_ids.push(key.id(v[0].trim()));
                    p_ts.push(date_ms(at));
                    amount.push(paid);
                    plan_days.push(days);
                    list_price.push(list);
                    expires.push(date_ms(until));
                    renew.push(auto);
                    cancel.push(cancelled);
                }
                Err((c, reason)) => rejects.push(path, number, columns[c], reason, &v.join(",")),
            }
            Ok(())
        })?;
    }

    // Daily logs → daily_activity, written in parts as they come.
    let mut activity = Activity::default();
    let columns = [
        "msno",
        "date",
        "num_25",
        "num_50",
        "num_75",
        "num_985",
        "num_100",
        "num_unq",
        "total_secs",
    ];
    let mut log_batches = Vec::new();
    for path in &logs {
        each_row(path, &columns, &mut rejects, |number, v, rejects| {
            let parsed = (|| {
                let date = yyyymmdd(v[1]).map_err(|e| (1, e))?;
                let mut counts = [0i64; 6];
                for (i, c) in counts.iter_mut().enumerate() {
                    *c = parse(v[i + 2], "a count").map_err(|e| (i + 2, e))?;
                    if *c < 0 {
                        return Err((i + 2, format!("{c} is negative")));
                    }
                }
                let secs: f64 = parse(v[8], "seconds").map_err(|e| (8, e))?;
                if !(0.0..=86_400.0).contains(&secs) {
                    return Err((8, format!("{secs} is outside one day (0..=86400 s)")));
                }
                Ok((date, counts, secs))
            })();
            match parsed {
                Ok((date, [n25, n50, n75, n985, n100, unq], secs)) => {
                    activity.user_id.push(key.id(v[0].trim()));
                    activity.date.push(date32(date));
                    activity.plays.push(n25 + n50 + n75 + n985 + n100);
                    activity.completed.push(n985 + n100);
                    activity.skips.push(n25 + n50);
                    activity.unique.push(unq);
                    activity.secs.push(secs);
                    if activity.user_id.len() >= Staging::part_rows() {
                        log_batches.push(activity.batch()?);
                    }
                }
                Err((c, reason)) => rejects.push(path, number, columns[c], reason, &v.join(",")),
            }
            Ok(())
        })?;
        // Parts are written between files to bound memory on the real data.
        for batch in log_batches.drain(..) {
            staging.write("daily_activity", batch)?;
        }
    }

    // Labels.
    let (mut l_ids, mut churned) = (Vec::new(), Vec::new());
    for path in &train {
        each_row(
            path,
            &["msno", "is_churn"],
            &mut rejects,
            |number, v, rejects| {
                match flag(v[1]) {
                    Ok(c) => {
                        l_ids.push(key.id(v[0].trim()));
                        churned.push(c);
                    }
                    Err(reason) => rejects.push(path, number, "is_churn", reason, &v.join(",")),
                }
                Ok(())
            },
        )?;
    }
    let rejected = rejects.settle(options)?;

    if !members.is_empty() {
        let n = ids.len();
        staging.write(
            "users",
            RecordBatch::try_new(
                schema::users(),
                vec![
                    Arc::new(Int64Array::from(ids)) as ArrayRef,
                    Arc::new(TimestampMillisecondArray::from(registered).with_timezone("UTC")),
                    Arc::new(StringArray::from(cities)),
                    Arc::new(Int32Array::from(years)),
                    Arc::new(StringArray::from(genders)),
                    Arc::new(StringArray::from(vias)),
                    Arc::new(BooleanArray::from(vec![true; n])),
                ],
            )?,
        )?;
    }
    if !transactions.is_empty() {
        let n = p_ids.len();
        staging.write(
            "payments",
            RecordBatch::try_new(
                schema::payments(),
                vec![
                    Arc::new(Int64Array::from(p_ids)) as ArrayRef,
                    Arc::new(TimestampMillisecondArray::from(p_ts).with_timezone("UTC")),
                    Arc::new(Float64Array::from(amount)),
                    Arc::new(Int32Array::from(vec![None; n])),
                    Arc::new(StringArray::from(vec!["subscription"; n])),
                    Arc::new(Int32Array::from(plan_days)),
                    Arc::new(Float64Array::from(list_price)),
                    Arc::new(TimestampMillisecondArray::from(expires).with_timezone("UTC")),
                    Arc::new(BooleanArray::from(renew)),
                    Arc::new(BooleanArray::from(cancel)),
                ],
            )?,
        )?;
    }
    if !logs.is_empty() && !activity.user_id.is_empty() {
        staging.write("daily_activity", activity.batch()?)?;
    }
    if !train.is_empty() {
        staging.write(
            "subscription_labels",
            RecordBatch::try_new(
                schema::subscription_labels(),
                vec![
                    Arc::new(Int64Array::from(l_ids)) as ArrayRef,
                    Arc::new(BooleanArray::from(churned)),
                ],
            )?,
        )?;
    }
    staging.publish(
        "kkbox",
        rejected,
        vec![(
            "age (bd) outside 1..=100, birth year left null".to_owned(),
            bad_ages,
        )],
    )
}
