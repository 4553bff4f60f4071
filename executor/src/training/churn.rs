//! The churn pipeline: user features and churn labels at the cutoff →
//! wide & deep model → metrics on held-out users → TorchScript, manifest and
//! online snapshot (features at the end of the data) → a registry version.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::prelude::SessionContext;
use encore_features::plans::{self, Inputs, PlanParams};
use encore_models::churn::{self as model, ChurnConfig, ChurnData, ChurnSchema};
use encore_models::registry::{self, Feature, Manifest, Registry, RiskTiers, TensorSpec};
use tch::Tensor;

use super::frame::{self, Frame, Vocabularies};
use super::{JobTarget, Progress, TrainError, manifest_extra, promote, register_tables, stage};

/// Share of labelled users held out for early stopping, and again for the
/// reported metrics.
const VALIDATION_SHARE: f64 = 0.15;
const TEST_SHARE: f64 = 0.15;

/// A churn training job.
#[derive(Debug, Clone)]
pub struct ChurnJob {
    /// Data, cutoff (labels in (cutoff, cutoff + horizon]), registry, device.
    pub target: JobTarget,
    /// Horizons in days, ascending.
    pub horizons: Vec<u32>,
    /// Network and optimiser settings.
    pub config: ChurnConfig,
}

/// What a finished job produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Trained {
    /// The registered version.
    pub version: u64,
    /// Held-out metrics (`auc_30d`, `log_loss_30d`, `ece_30d`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Whether it became `production`.
    pub promoted: bool,
    /// Training examples: labelled users (churn, train + validation +
    /// test) or (user, item) pairs (recommend).
    pub rows: usize,
    /// The checkpointed epoch training resumed after, if it resumed.
    pub resumed_after: Option<u32>,
}

impl ChurnJob {
    fn check(&self) -> Result<(), TrainError> {
        registry::check_model_name(&self.target.model_name)
            .map_err(|e| TrainError::InvalidJob(e.to_string()))?;
        if self.horizons.is_empty()
            || self.horizons.iter().any(|h| !(1..=365).contains(h))
            || self.horizons.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(TrainError::InvalidJob(format!(
                "horizons {:?}: one or more days in 1..=365, ascending, no duplicates",
                self.horizons
            )));
        }
        self.config.validate()?;
        Ok(())
    }
}

pub(crate) async fn collect(
    ctx: &SessionContext,
    sql: &str,
) -> Result<Vec<RecordBatch>, TrainError> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// The first and last play in the data.
pub(crate) async fn play_span(
    ctx: &SessionContext,
) -> Result<(DateTime<Utc>, DateTime<Utc>), TrainError> {
    let batches = collect(ctx, "SELECT min(ts) AS first, max(ts) AS last FROM plays").await?;
    let at = |i: usize| -> Result<DateTime<Utc>, TrainError> {
        let b = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| TrainError::EmptyData("plays is empty".into()))?;
        let ms = cast(b.column(i), &DataType::Int64)?;
        let ms = ms.as_primitive::<Int64Type>();
        if ms.is_null(0) {
            return Err(TrainError::EmptyData("plays is empty".into()));
        }
        DateTime::from_timestamp_millis(ms.value(0))
            .ok_or_else(|| TrainError::EmptyData("plays has an invalid timestamp".into()))
    };
    Ok((at(0)?, at(1)?))
}

pub(crate) fn tensors(frame: &Frame, horizons: usize) -> ChurnData {
    let n = frame.rows() as i64;
    ChurnData {
        numeric: Tensor::from_slice(&frame.numeric).reshape([n, frame.numeric_names.len() as i64]),
        categorical: Tensor::from_slice(&frame.categorical)
            .reshape([n, frame.categorical_names.len() as i64]),
        labels: Tensor::from_slice(&frame.labels).reshape([n, horizons as i64]),
    }
}

/// The network's input shape for `rows`: their numeric columns, and each
/// categorical column with its vocabulary plus the unknown code.
pub(crate) fn schema_of(rows: &Frame, vocab: &Vocabularies, horizons: &[u32]) -> ChurnSchema {
    ChurnSchema {
        numeric: rows.numeric_names.clone(),
        categorical: rows
            .categorical_names
            .iter()
            .map(|n| (n.clone(), vocab[n].len() as i64 + 1))
            .collect(),
        horizons: horizons.to_vec(),
    }
}

/// The user feature vector joined with the churn labels at `params`'
/// cutoff (tables already registered): the label column names, the rows and
/// the categorical vocabularies.
pub(crate) async fn labelled_rows(
    ctx: &SessionContext,
    params: &PlanParams,
    inputs: Inputs,
) -> Result<(Vec<String>, Frame, Vocabularies), TrainError> {
    let labels: Vec<String> = params
        .horizons
        .iter()
        .map(|h| format!("churn_{h}d"))
        .collect();
    let sql = format!(
        "SELECT * FROM ({}) f JOIN ({}) l USING (user_id) ORDER BY user_id",
        plans::user_features_sql(params, inputs)?,
        plans::churn_labels_sql(params)?
    );
    let batches = collect(ctx, &sql).await?;
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Err(TrainError::EmptyData(format!(
            "no labelled users at {}: nobody played in the {} days before it",
            params.cutoff, params.lookback_days
        )));
    }
    let (rows, vocab) = frame::build(&batches, &labels, None)?;
    if rows.rows() < 20 {
        return Err(TrainError::EmptyData(format!(
            "only {} labelled users at {}: too few to train and evaluate",
            rows.rows(),
            params.cutoff
        )));
    }
    Ok((labels, rows, vocab))
}

/// Runs the job on `ctx`; `progress` sees each stage and epoch and returns
/// false to cancel.
pub async fn train_churn(
    ctx: &SessionContext,
    job: &ChurnJob,
    progress: &mut (dyn FnMut(Progress) -> bool + Send),
) -> Result<Trained, TrainError> {
    job.check()?;
    stage(progress, "computing features and labels")?;
    register_tables(ctx, &job.target.data).await?;
    let (first, last) = play_span(ctx).await?;
    let longest = *job.horizons.last().expect("checked");
    let label_end = job.target.cutoff + chrono::Days::new(u64::from(longest));
    if last.date_naive() < label_end - chrono::Days::new(1)
        || first.date_naive() >= job.target.cutoff
    {
        return Err(TrainError::InvalidJob(format!(
            "cutoff {}: plays run from {} to {}, but training needs plays before the cutoff and up to {label_end} for the {longest}-day label",
            job.target.cutoff,
            first.date_naive(),
            last.date_naive()
        )));
    }
    let inputs = Inputs::in_dir(&job.target.data);
    let params = PlanParams {
        horizons: job.horizons.clone(),
        ..PlanParams::at(job.target.cutoff)
    };
    let (labels, rows, vocab) = labelled_rows(ctx, &params, inputs).await?;
    let all = tensors(&rows, labels.len());
    let (rest, test) = all.split(TEST_SHARE, job.config.seed);
    let (train, validation) =
        rest.split(VALIDATION_SHARE / (1.0 - TEST_SHARE), job.config.seed + 1);
    let schema = schema_of(&rows, &vocab, &job.horizons);

    stage(progress, "training")?;
    let trained = model::train(
        schema,
        &train,
        &validation,
        &job.config,
        job.target.device,
        &job.target.control,
        |r| progress(Progress::Epoch(*r)),
    )
    .map_err(|e| match e {
        encore_models::Error::Cancelled => TrainError::Cancelled,
        e => TrainError::Model(e),
    })?;

    stage(progress, "evaluating")?;
    let mut metrics = BTreeMap::new();
    for m in trained.evaluate(&test)? {
        let h = m.horizon;
        metrics.insert(format!("auc_{h}d"), m.auc);
        metrics.insert(format!("log_loss_{h}d"), m.log_loss);
        metrics.insert(format!("ece_{h}d"), m.ece);
        metrics.insert(format!("positive_rate_{h}d"), m.positive_rate);
    }
    let best = trained.history[trained.best_epoch as usize - 1];
    metrics.insert("validation_loss".into(), best.validation_loss);

    stage(progress, "exporting")?;
    let registry = Registry::open(&job.target.registry)?;
    let staged = registry.stage(&job.target.model_name)?;
    let artifact = |path: &std::path::Path, e: &dyn std::fmt::Display| TrainError::Artifact {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    trained.export(&staged.join("model.pt"))?;
    // The online snapshot: the same features at the end of the data.
    let serve_at = last.date_naive() + chrono::Days::new(1);
    let snapshot_params = PlanParams {
        cutoff: serve_at,
        ..params.clone()
    };
    let snap_batches = collect(
        ctx,
        &format!(
            "SELECT * FROM ({}) f ORDER BY user_id",
            plans::user_features_sql(&snapshot_params, inputs)?
        ),
    )
    .await?;
    let (snap, _) = frame::build(&snap_batches, &[], Some(&vocab))?;
    if snap.numeric_names != rows.numeric_names || snap.categorical_names != rows.categorical_names
    {
        return Err(TrainError::InvalidJob(
            "the snapshot's feature columns differ from training's".into(),
        ));
    }
    let segments = if inputs.payments {
        let b = collect(ctx, &plans::segments_sql(&snapshot_params)?).await?;
        segment_map(&b)?
    } else {
        HashMap::new()
    };
    let online = staged.join("online");
    let snapshot = snapshot_batch(&snap, &segments)?;
    encore_features::datagen::write_parquet(&online, "users.parquet", snapshot)
        .map_err(|e| artifact(&online, &e))?;

    let feature_names: Vec<String> = rows
        .numeric_names
        .iter()
        .cloned()
        .chain(rows.categorical_names.iter().map(|n| format!("{n}_code")))
        .collect();
    let manifest = manifest(
        job,
        &trained,
        &rows,
        &vocab,
        &feature_names,
        &metrics,
        serve_at,
        &all,
    );
    let version = registry.publish(&job.target.model_name, &staged, &manifest)?;

    let key = format!("auc_{longest}d");
    let promoted = promote(
        &registry,
        &job.target.model_name,
        version,
        job.target.promotion,
        &key,
        &metrics,
    )?;
    Ok(Trained {
        version,
        metrics,
        promoted,
        rows: rows.rows(),
        resumed_after: trained.resumed_after,
    })
}

fn segment_map(batches: &[RecordBatch]) -> Result<HashMap<i64, (String, String)>, TrainError> {
    let mut map = HashMap::new();
    for b in batches {
        let ids = cast(
            b.column_by_name("user_id").expect("segments plan"),
            &DataType::Int64,
        )?;
        let lifecycle = cast(
            b.column_by_name("lifecycle").expect("segments plan"),
            &DataType::Utf8,
        )?;
        let tier = cast(
            b.column_by_name("value_tier").expect("segments plan"),
            &DataType::Utf8,
        )?;
        let (ids, lifecycle, tier) = (
            ids.as_primitive::<Int64Type>(),
            lifecycle.as_string::<i32>(),
            tier.as_string::<i32>(),
        );
        for i in 0..b.num_rows() {
            map.insert(
                ids.value(i),
                (lifecycle.value(i).to_owned(), tier.value(i).to_owned()),
            );
        }
    }
    Ok(map)
}

/// `online/users.parquet`: user_id, the model's input columns, and the
/// lifecycle / value tier segment of each user.
fn snapshot_batch(
    snap: &Frame,
    segments: &HashMap<i64, (String, String)>,
) -> Result<RecordBatch, TrainError> {
    let (f, c) = (snap.numeric_names.len(), snap.categorical_names.len());
    let mut fields = vec![Field::new("user_id", DataType::Int64, false)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(snap.user_ids.clone()))];
    for (j, name) in snap.numeric_names.iter().enumerate() {
        fields.push(Field::new(name, DataType::Float32, false));
        columns.push(Arc::new(Float32Array::from_iter_values(
            (0..snap.rows()).map(|i| snap.numeric[i * f + j]),
        )));
    }
    for (j, name) in snap.categorical_names.iter().enumerate() {
        fields.push(Field::new(format!("{name}_code"), DataType::Float32, false));
        columns.push(Arc::new(Float32Array::from_iter_values(
            (0..snap.rows()).map(|i| snap.categorical[i * c + j] as f32),
        )));
    }
    if !segments.is_empty() {
        for (k, name) in ["lifecycle", "value_tier"].into_iter().enumerate() {
            fields.push(Field::new(name, DataType::Utf8, true));
            columns.push(Arc::new(StringArray::from_iter(snap.user_ids.iter().map(
                |id| {
                    segments
                        .get(id)
                        .map(|s| if k == 0 { s.0.clone() } else { s.1.clone() })
                },
            ))));
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[allow(clippy::too_many_arguments)]
fn manifest(
    job: &ChurnJob,
    trained: &model::TrainedChurn,
    rows: &Frame,
    vocab: &Vocabularies,
    feature_names: &[String],
    metrics: &BTreeMap<String, f64>,
    serve_at: NaiveDate,
    all: &ChurnData,
) -> Manifest {
    let standard = trained.standardisation();
    let features = feature_names
        .iter()
        .map(|name| {
            let mut details = BTreeMap::new();
            if let Some((mean, std)) = standard.get(name) {
                details.insert("mean".into(), serde_json::json!(mean));
                details.insert("std".into(), serde_json::json!(std));
                // mean and std are of sign(x)·ln(1 + |x|), as the module standardises.
                details.insert("transform".into(), serde_json::json!("signed_log1p"));
            }
            let base = name.strip_suffix("_code").unwrap_or(name);
            if let Some(values) = vocab.get(base) {
                details.insert("categories".into(), serde_json::json!(values));
            }
            if let Some(text) = plans::describe(base) {
                details.insert("description".into(), serde_json::json!(text));
            }
            Feature::Described {
                name: name.clone(),
                details,
            }
        })
        .collect();
    let outputs: Vec<TensorSpec> = job
        .horizons
        .iter()
        .map(|h| TensorSpec {
            name: format!("churn_{h}d"),
            dtype: "FP32".into(),
            shape: vec![-1],
        })
        .collect();
    let rates = all.labels.mean_dim(0, false, tch::Kind::Float);
    let prior = job
        .horizons
        .iter()
        .enumerate()
        .map(|(k, h)| {
            (
                format!("churn_{h}d"),
                rates.double_value(&[k as i64]) as f32,
            )
        })
        .collect();
    let mut extra = manifest_extra(
        &job.target.job_id,
        metrics,
        serde_json::json!({
            "path": job.target.data.display().to_string(),
            "cutoff": job.target.cutoff.to_string(),
            "snapshot_cutoff": serve_at.to_string(),
            "labelled_users": rows.rows(),
        }),
        serde_json::json!(job.config),
        trained.best_epoch,
        serde_json::json!(trained
            .history
            .iter()
            .map(|r| serde_json::json!({"epoch": r.epoch, "loss": r.loss, "validation_loss": r.validation_loss, "samples_per_second": r.samples_per_second}))
            .collect::<Vec<_>>()),
    );
    extra.insert("horizons_days".into(), serde_json::json!(job.horizons));
    Manifest {
        name: job.target.model_name.clone(),
        version: 0,
        kind: "churn".into(),
        inputs: vec![TensorSpec {
            name: "features".into(),
            dtype: "FP32".into(),
            shape: vec![-1, feature_names.len() as i64],
        }],
        outputs,
        features,
        prior,
        risk_tiers: RiskTiers::default(),
        devices: Vec::new(),
        catalogue_size: None,
        extra,
    }
}
