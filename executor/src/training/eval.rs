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
use encore_models::churn::{self as model, ChurnConfig, ChurnSchema, TrainControl};
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
    tch::manual_seed(config.seed);
    let order = Tensor::randperm(n as i64, (Kind::Int64, Device::Cpu));
    let order = Vec::<i64>::try_from(&order).map_err(encore_models::Error::from)?;
    let mut p_purchase = vec![0.0f64; n];
    for k in 0..folds {
        let (held, rest): (Vec<i64>, Vec<i64>) =
            order
                .iter()
                .enumerate()
                .fold((Vec::new(), Vec::new()), |mut acc, (i, &row)| {
                    if i % folds == k {
                        acc.0.push(row);
                    } else {
                        acc.1.push(row);
                    }
                    acc
                });
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
        let p_churn = trained.predict(&test.numeric, &test.categorical);
        let p_churn = Vec::<f32>::try_from(p_churn.to_device(Device::Cpu).flatten(0, -1))
            .map_err(encore_models::Error::from)?;
        for (&row, p) in held.iter().zip(p_churn) {
            p_purchase[row as usize] = 1.0 - f64::from(p);
        }
    }
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
