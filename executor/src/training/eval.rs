//! Evaluation on public data that no one here wrote, against published
//! baselines (`encore eval`).
//!
//! CDNOW (Fader & Hardie's CD retailer panel, 23,570 customers who first
//! bought in Q1 1997): calibration up to 1997-09-30, holdout the next 39
//! weeks. Purchase features come from `plans::purchase_features_sql`, the
//! label from `plans::purchase_labels_sql` (no purchase in the holdout);
//! the churn network (wide & deep, one head) is trained with k-fold
//! cross-validation so that every customer gets an out-of-fold prediction,
//! and AUC and log loss are computed over all of them for "any purchase in
//! the holdout".

use std::path::Path;

use chrono::NaiveDate;
use datafusion::prelude::SessionContext;
use encore_features::plans::{self, PlanParams};
use encore_features::tables::{self, TableSource};
use encore_models::churn::{self as model, ChurnConfig, ChurnData, ChurnSchema, TrainControl};
use encore_models::metrics;
use tch::{Device, Kind, Tensor};

use super::TrainError;
use super::churn::tensors;
use super::frame;

/// CDNOW's calibration period ends the day before this.
pub const CDNOW_CUTOFF: (i32, u32, u32) = (1997, 10, 1);
/// Holdout length: 39 weeks.
pub const CDNOW_HOLDOUT_DAYS: u32 = 273;

/// What `eval cdnow` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct CdnowEval {
    /// Customers with a purchase before the cutoff.
    pub customers: usize,
    /// Of them, customers who bought again in the holdout.
    pub buyers: usize,
    /// Transactions in the holdout (all customers).
    pub holdout_purchases: u64,
    /// Out-of-fold AUC of P(any purchase in the holdout).
    pub auc: f64,
    /// Out-of-fold log loss of the same.
    pub log_loss: f64,
    /// Expected calibration error (10 bins).
    pub ece: f64,
    /// Cross-validation folds.
    pub folds: usize,
    /// Mean predicted probability of a purchase.
    pub mean_prediction: f64,
}

/// Out-of-fold probabilities, one vector per horizon: the rows are dealt
/// into `folds` folds (seeded), and each fold is scored by a model trained
/// on the others (15% of them held out for early stopping).
fn out_of_fold(
    all: &ChurnData,
    schema: &ChurnSchema,
    config: &ChurnConfig,
    folds: usize,
    device: Device,
) -> Result<Vec<Vec<f64>>, TrainError> {
    let n = all.len() as usize;
    let heads = schema.horizons.len();
    tch::manual_seed(config.seed);
    let order = Tensor::randperm(n as i64, (Kind::Int64, Device::Cpu));
    let order = Vec::<i64>::try_from(&order).map_err(encore_models::Error::from)?;
    let mut out = vec![vec![0.0f64; n]; heads];
    for k in 0..folds {
        let (mut held, mut rest) = (Vec::new(), Vec::new());
        for (i, &row) in order.iter().enumerate() {
            if i % folds == k {
                held.push(row);
            } else {
                rest.push(row);
            }
        }
        let (train, validation) = all
            .rows(&Tensor::from_slice(&rest))
            .split(0.15, config.seed + k as i64);
        let test = all.rows(&Tensor::from_slice(&held));
        let trained = model::train(
            schema.clone(),
            &train,
            &validation,
            config,
            device,
            &TrainControl::default(),
            |_| true,
        )?;
        let p = trained
            .predict(&test.numeric, &test.categorical)
            .to_device(Device::Cpu)
            .contiguous();
        let p = Vec::<f32>::try_from(p.flatten(0, -1)).map_err(encore_models::Error::from)?;
        for (j, &row) in held.iter().enumerate() {
            for (h, column) in out.iter_mut().enumerate() {
                column[row as usize] = f64::from(p[j * heads + h]);
            }
        }
    }
    Ok(out)
}

/// Runs the CDNOW evaluation on canonical tables (from `encore import
/// cdnow`) in `data`, with `folds`-fold cross-validation.
pub async fn eval_cdnow(
    ctx: &SessionContext,
    data: &Path,
    config: &ChurnConfig,
    folds: usize,
    device: Device,
) -> Result<CdnowEval, TrainError> {
    config.validate()?;
    if !(2..=20).contains(&folds) {
        return Err(TrainError::InvalidJob(format!(
            "folds {folds}: use 2 to 20"
        )));
    }
    for name in ["payments", "users"] {
        let path = data.join(name);
        if !path.is_dir() {
            return Err(TrainError::InvalidJob(format!(
                "data {}: no {name}/ table (import CDNOW with `encore import cdnow` first)",
                data.display()
            )));
        }
        ctx.deregister_table(name)?;
        tables::register(
            ctx,
            &TableSource {
                name: name.into(),
                path,
            },
        )
        .await?;
    }
    let (y, m, d) = CDNOW_CUTOFF;
    let params = PlanParams {
        windows: vec![30, 90, 180],
        horizons: vec![CDNOW_HOLDOUT_DAYS],
        ..PlanParams::at(NaiveDate::from_ymd_opt(y, m, d).expect("valid date"))
    };
    let label = format!("no_purchase_{CDNOW_HOLDOUT_DAYS}d");
    let sql = format!(
        "SELECT f.*, l.{label}, l.purchases_{CDNOW_HOLDOUT_DAYS}d AS holdout_purchases
         FROM ({}) f JOIN ({}) l USING (user_id) ORDER BY user_id",
        plans::purchase_features_sql(&params)?,
        plans::purchase_labels_sql(&params)?
    );
    let mut batches = ctx.sql(&sql).await?.collect().await?;
    let mut holdout_purchases = 0u64;
    for b in &mut batches {
        let column = b
            .column_by_name("holdout_purchases")
            .expect("selected above")
            .clone();
        let counts = datafusion::arrow::compute::cast(
            &column,
            &datafusion::arrow::datatypes::DataType::Int64,
        )?;
        let counts = counts
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .expect("cast to Int64");
        holdout_purchases += counts
            .iter()
            .flatten()
            .map(|c| c.max(0) as u64)
            .sum::<u64>();
        let keep: Vec<usize> = (0..b.num_columns())
            .filter(|&i| b.schema().field(i).name() != "holdout_purchases")
            .collect();
        *b = b.project(&keep)?;
    }
    let (rows, _) = frame::build(&batches, std::slice::from_ref(&label), None)?;
    let n = rows.rows();
    if n < folds * 10 {
        return Err(TrainError::EmptyData(format!(
            "only {n} customers bought before {}: too few for {folds}-fold cross-validation",
            params.cutoff
        )));
    }
    let all = tensors(&rows, 1);
    let schema = ChurnSchema {
        numeric: rows.numeric_names.clone(),
        categorical: Vec::new(),
        horizons: vec![CDNOW_HOLDOUT_DAYS],
    };
    let p_churn = out_of_fold(&all, &schema, config, folds, device)?;
    let p_purchase: Vec<f64> = p_churn[0].iter().map(|p| 1.0 - p).collect();
    let bought: Vec<bool> = (0..n).map(|i| rows.labels[i] < 0.5).collect();
    Ok(CdnowEval {
        customers: n,
        buyers: bought.iter().filter(|&&b| b).count(),
        holdout_purchases,
        auc: metrics::auc(&p_purchase, &bought),
        log_loss: metrics::log_loss(&p_purchase, &bought),
        ece: metrics::ece(&p_purchase, &bought, 10),
        folds,
        mean_prediction: p_purchase.iter().sum::<f64>() / n as f64,
    })
}

/// One horizon of `eval synthetic`.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticHorizon {
    /// Days.
    pub horizon: u32,
    /// Out-of-fold AUC of the churn model.
    pub model_auc: f64,
    /// AUC of the generator's true churn probability (`p_lapse_<h>d`) on
    /// the same users and labels.
    pub oracle_auc: f64,
    /// Share of labelled users who churned.
    pub positive_rate: f64,
}

/// What `eval synthetic` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticEval {
    /// Labelled users (active in the 30 days before the cutoff).
    pub users: usize,
    /// Cross-validation folds.
    pub folds: usize,
    /// Per horizon, ascending.
    pub horizons: Vec<SyntheticHorizon>,
}

/// Trains the churn model on generated data (`encore datagen` output in
/// `data`, ground truth at `cutoff`) with `folds`-fold cross-validation and
/// compares its AUC per horizon with the AUC of the generator's own churn
/// probabilities on the same users: the best any model could do.
pub async fn eval_synthetic(
    ctx: &SessionContext,
    data: &Path,
    cutoff: NaiveDate,
    config: &ChurnConfig,
    folds: usize,
    device: Device,
) -> Result<SyntheticEval, TrainError> {
    config.validate()?;
    if !(2..=20).contains(&folds) {
        return Err(TrainError::InvalidJob(format!(
            "folds {folds}: use 2 to 20"
        )));
    }
    super::register_tables(ctx, data).await?;
    let truth_dir = data
        .join("ground_truth")
        .join(format!("cutoff={}", cutoff.format("%Y-%m-%d")));
    if !truth_dir.is_dir() {
        return Err(TrainError::InvalidJob(format!(
            "{}: no ground truth at {cutoff} (generate the data with `encore datagen --cutoff {cutoff}`)",
            truth_dir.display()
        )));
    }
    ctx.deregister_table("truth")?;
    tables::register(
        ctx,
        &TableSource {
            name: "truth".into(),
            path: truth_dir,
        },
    )
    .await?;
    let params = PlanParams {
        horizons: vec![7, 15, 30],
        ..PlanParams::at(cutoff)
    };
    let (labels, rows, vocab) =
        super::churn::labelled_rows(ctx, &params, plans::Inputs::in_dir(data)).await?;
    let heads = labels.len();
    let truth_sql = format!(
        "SELECT user_id, {} FROM truth",
        params
            .horizons
            .iter()
            .map(|h| format!("CAST(p_lapse_{h}d AS DOUBLE) AS p_lapse_{h}d"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut truth: std::collections::HashMap<i64, Vec<f64>> = std::collections::HashMap::new();
    for b in ctx.sql(&truth_sql).await?.collect().await? {
        let ids = datafusion::arrow::compute::cast(
            b.column(0),
            &datafusion::arrow::datatypes::DataType::Int64,
        )?;
        let ids = ids
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .expect("cast to Int64");
        let columns: Vec<&datafusion::arrow::array::Float64Array> = (1..=heads)
            .map(|c| {
                b.column(c)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Float64Array>()
                    .expect("cast to DOUBLE")
            })
            .collect();
        for i in 0..b.num_rows() {
            truth.insert(ids.value(i), columns.iter().map(|c| c.value(i)).collect());
        }
    }
    let schema = ChurnSchema {
        numeric: rows.numeric_names.clone(),
        categorical: rows
            .categorical_names
            .iter()
            .map(|n| (n.clone(), vocab[n].len() as i64 + 1))
            .collect(),
        horizons: params.horizons.clone(),
    };
    let all = tensors(&rows, heads);
    let predicted = out_of_fold(&all, &schema, config, folds, device)?;
    let n = rows.rows();
    let mut horizons = Vec::new();
    for (h, &days) in params.horizons.iter().enumerate() {
        let y: Vec<bool> = (0..n).map(|i| rows.labels[i * heads + h] > 0.5).collect();
        let oracle: Vec<f64> = rows
            .user_ids
            .iter()
            .map(|id| truth.get(id).map_or(f64::NAN, |p| p[h]))
            .collect();
        if oracle.iter().any(|p| p.is_nan()) {
            return Err(TrainError::InvalidJob(
                "the ground truth lacks some labelled users: is it from the same data?".into(),
            ));
        }
        horizons.push(SyntheticHorizon {
            horizon: days,
            model_auc: metrics::auc(&predicted[h], &y),
            oracle_auc: metrics::auc(&oracle, &y),
            positive_rate: y.iter().filter(|&&b| b).count() as f64 / n as f64,
        });
    }
    Ok(SyntheticEval {
        users: n,
        folds,
        horizons,
    })
}
