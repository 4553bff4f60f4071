//! The training worker's pipelines: from canonical tables to a registered
//! model version. Each pipeline computes its features with the features
//! crate's plans on whatever `SessionContext` it is given (the Ballista
//! cluster, or in process), streams the Arrow batches into tensors, trains
//! with the models crate, evaluates on held-out rows, exports TorchScript,
//! writes the manifest and the online snapshot, and publishes the version.

pub mod churn;
pub mod eval;
mod frame;
pub mod recommend;

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use datafusion::prelude::SessionContext;
use encore_features::tables::{self, TableSource};

pub use churn::{ChurnJob, Trained, train_churn};
pub use recommend::{RecommendJob, train_recommend};

/// What every training job names besides its model's settings: the data
/// and cutoff it learns from, where and as what it registers, and where
/// and under whose control it runs.
#[derive(Debug, Clone)]
pub struct JobTarget {
    /// The job id recorded in the manifest.
    pub job_id: String,
    /// Folder with the canonical tables.
    pub data: PathBuf,
    /// Features before it; labels or held-out interactions after it.
    pub cutoff: NaiveDate,
    /// Registry location: a folder or `s3://bucket/prefix`.
    pub registry: String,
    /// Name to register under.
    pub model_name: String,
    /// Whether the new version takes the production alias.
    pub promotion: Promotion,
    /// Where to train.
    pub device: tch::Device,
    /// Checkpoint folder and cancel flag.
    pub control: encore_models::churn::TrainControl,
}

/// Errors of a training pipeline, each naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The job's settings are unusable.
    #[error("{0}")]
    InvalidJob(String),
    /// The data gave nothing to train on.
    #[error("{0}")]
    EmptyData(String),
    /// A query failed.
    #[error("query: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    /// Converting a column failed.
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// A plan could not be written.
    #[error("{0}")]
    Plan(#[from] encore_features::Error),
    /// Training, evaluation or export failed.
    #[error("{0}")]
    Model(#[from] encore_models::Error),
    /// The registry refused the version or alias.
    #[error("registry: {0}")]
    Registry(#[from] encore_models::registry::RegistryError),
    /// Writing an artifact failed.
    #[error("{path}: {reason}")]
    Artifact {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// What a pipeline reports while it runs; returning false from the
/// callback cancels the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A step started (`computing features`, `training`, `exporting`, ...).
    Stage(String),
    /// A churn epoch finished.
    Epoch(encore_models::churn::EpochReport),
    /// A recommendation epoch finished.
    RecEpoch(encore_models::recommend::RecEpoch),
}

/// When a new version takes the `production` alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Promotion {
    /// Never automatically.
    Never,
    /// When its validation metric beats production's (or there is none).
    #[default]
    IfBetter,
    /// Always.
    Always,
}

impl std::str::FromStr for Promotion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(Self::Never),
            "if-better" => Ok(Self::IfBetter),
            "always" => Ok(Self::Always),
            _ => Err(format!(
                "promotion '{s}': expected never, if-better or always"
            )),
        }
    }
}

/// Reports the start of stage `name`; an error when `progress` says stop.
pub(crate) fn stage(
    progress: &mut (dyn FnMut(Progress) -> bool + Send),
    name: &str,
) -> Result<(), TrainError> {
    if progress(Progress::Stage(name.into())) {
        Ok(())
    } else {
        Err(TrainError::Cancelled)
    }
}

/// Applies `promotion` to the new `version` of `model`: with `IfBetter` it
/// takes `production` when its `metrics[key]` beats production's (or there
/// is no production yet). Returns whether it was promoted.
pub(crate) fn promote(
    registry: &encore_models::registry::Registry,
    model: &str,
    version: u64,
    promotion: Promotion,
    key: &str,
    metrics: &std::collections::BTreeMap<String, f64>,
) -> Result<bool, TrainError> {
    let promoted = match promotion {
        Promotion::Never => false,
        Promotion::Always => true,
        Promotion::IfBetter => {
            let current = registry
                .aliases(model)?
                .get("production")
                .and_then(|&v| registry.manifest(model, v).ok())
                .and_then(|m| m.extra.get("metrics")?.get(key)?.as_f64());
            match current {
                None => true,
                Some(c) => metrics.get(key).is_some_and(|m| *m > c),
            }
        }
    };
    if promoted {
        registry.set_alias(model, "production", version, "auto-promote")?;
    }
    Ok(promoted)
}

/// The manifest fields every trained version records: creation time, the
/// job, held-out metrics, the data it saw, its settings, the kept epoch and
/// the per-epoch history.
pub(crate) fn manifest_extra(
    job_id: &str,
    metrics: &std::collections::BTreeMap<String, f64>,
    data: serde_json::Value,
    config: serde_json::Value,
    best_epoch: u32,
    history: serde_json::Value,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    use serde_json::json;
    std::collections::BTreeMap::from([
        ("created_at".into(), json!(chrono::Utc::now().to_rfc3339())),
        ("training_job_id".into(), json!(job_id)),
        ("metrics".into(), json!(metrics)),
        ("data".into(), data),
        ("config".into(), config),
        ("best_epoch".into(), json!(best_epoch)),
        ("history".into(), history),
    ])
}

/// Registers every canonical table found under `data` on `ctx` (replacing
/// tables of those names); plays and users must be there.
pub async fn register_tables(ctx: &SessionContext, data: &Path) -> Result<(), TrainError> {
    for required in ["plays", "users"] {
        if !data.join(required).is_dir() {
            return Err(TrainError::InvalidJob(format!(
                "data {}: no {required}/ table",
                data.display()
            )));
        }
    }
    for name in ["plays", "users", "items", "interactions", "payments"] {
        if data.join(name).is_dir() {
            register_table(ctx, name, &data.join(name)).await?;
        } else {
            ctx.deregister_table(name)?;
        }
    }
    Ok(())
}

/// Registers the table at `path` as `name` on `ctx`, replacing one of that
/// name (a session may serve several jobs: each one reads its own data).
pub(crate) async fn register_table(
    ctx: &SessionContext,
    name: &str,
    path: &Path,
) -> Result<(), TrainError> {
    ctx.deregister_table(name)?;
    tables::register(
        ctx,
        &TableSource {
            name: name.into(),
            path: path.to_path_buf(),
        },
    )
    .await?;
    Ok(())
}

/// Registers each of `names` from `data/<name>/`; a missing one is an
/// error that says how to produce it (`hint`).
pub(crate) async fn register_required(
    ctx: &SessionContext,
    data: &Path,
    names: &[&str],
    hint: &str,
) -> Result<(), TrainError> {
    for name in names {
        let path = data.join(name);
        if !path.is_dir() {
            return Err(TrainError::InvalidJob(format!(
                "data {}: no {name}/ table ({hint})",
                data.display()
            )));
        }
        register_table(ctx, name, &path).await?;
    }
    Ok(())
}
