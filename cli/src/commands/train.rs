//! `encore train churn|recommend`: submit a training job and follow it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::NaiveDate;
use encore_executor::ExecutorConfig;
use encore_executor::training::Promotion;
use encore_models::churn::ChurnConfig;
use encore_models::recommend::RecommendConfig;
use encore_models::registry;
use encore_proto::encore::v1::{JobKind, JobSpec, SubmitJobRequest};
use encore_scheduler::SchedulerConfig;

use super::jobs;
use crate::cluster::{LocalCluster, Target};

/// Train a model on the canonical tables at a cutoff and register it.
///
/// The job goes to the scheduler's job service (--scheduler), or to an
/// in-process cluster started for it. An executor computes the features
/// with the point-in-time plans through the cluster, trains with libtorch
/// (CUDA when available), evaluates on held-out users (churn) or on the
/// items users discover in the week after the cutoff (recommend) and
/// publishes a version in the registry with its metrics, TorchScript model and online
/// snapshot; it becomes `production` when it beats the current one
/// (--promote). Progress shows on stderr; --detach prints the job id and
/// returns at once (follow it with `encore jobs watch`).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    encore train churn --data data --cutoff 2026-03-01 --registry registry\n  \
    encore train churn --data /srv/data --cutoff 2026-03-01 --scheduler df://10.0.0.5:50050 --detach\n  \
    encore train churn --data data --cutoff 2026-03-01 --registry registry --set epochs=10 --set lr=0.001\n  \
    encore train churn --data data --cutoff 2026-03-01 --registry registry --config churn.toml --promote never\n  \
    encore train recommend --data data --cutoff 2026-03-01 --registry registry --set dim=32 --set epochs=20")]
pub struct Args {
    /// What to train: churn (wide & deep churn risk per horizon) or
    /// recommend (two-tower retrieval).
    #[arg(value_parser = ["churn", "recommend"])]
    pub kind: String,
    /// Data folder with the canonical tables (plays/ and users/ at least).
    #[arg(long)]
    pub data: PathBuf,
    /// The cutoff T, YYYY-MM-DD: features before it, labels after it.
    #[arg(long)]
    pub cutoff: NaiveDate,
    /// Model registry: a folder or s3://bucket/prefix (default with --scheduler: the scheduler's).
    #[arg(long, env = "ENCORE_REGISTRY")]
    pub registry: Option<String>,
    /// Name to register under (default: the kind).
    #[arg(long)]
    pub name: Option<String>,
    /// Scheduler to submit the job to, e.g. df://127.0.0.1:50050 (default:
    /// an in-process cluster for this one job).
    #[arg(long, env = "ENCORE_SCHEDULER_URL")]
    pub scheduler: Option<String>,
    /// Training settings as TOML (keys as for --set).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// One setting as KEY=VALUE, over --config. churn: hidden=128,64
    /// embedding_dim epochs batch_size lr weight_decay dropout patience seed;
    /// recommend: dim hidden context_dim epochs batch_size lr weight_decay
    /// temperature patience max_history context_dropout popularity seed.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Churn horizons in days (default 7,15,30; churn only).
    #[arg(long, value_delimiter = ',')]
    pub horizons: Vec<u32>,
    /// When the new version becomes `production`: never, if-better (its
    /// held-out metric beats production's: AUC at the longest horizon for
    /// churn, recall@10 for recommend) or always.
    #[arg(long, default_value = "if-better")]
    pub promote: Promotion,
    /// Train on the CPU even when CUDA is available (in-process cluster only;
    /// a scheduler's executors decide for themselves).
    #[arg(long)]
    pub cpu: bool,
    /// Attempts before the job fails (default: the scheduler's, 3).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Print the job id and return without waiting (needs --scheduler).
    #[arg(long, requires = "scheduler")]
    pub detach: bool,
}

/// The spec's config_toml and hyperparameters, checked here first so
/// mistakes fail before anything is submitted.
fn settings(args: &Args) -> anyhow::Result<(String, HashMap<String, String>)> {
    let text = match &args.config {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("--config {}", path.display()))?
        }
        None => String::new(),
    };
    let flag = || {
        format!(
            "--config {}",
            args.config
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        )
    };
    let overrides = super::key_values(&args.set)?;
    if args.kind == "recommend" {
        RecommendConfig::from_toml(&text)
            .with_context(flag)?
            .apply(&overrides)?;
    } else {
        ChurnConfig::from_toml(&text)
            .with_context(flag)?
            .apply(&overrides)?;
    }
    Ok((text, overrides.into_iter().collect()))
}

fn absolute(flag: &str, path: &Path) -> anyhow::Result<String> {
    let path = std::path::absolute(path).with_context(|| format!("{flag} {}", path.display()))?;
    Ok(path.display().to_string())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (config_toml, hyperparameters) = settings(&args)?;
    let spec = JobSpec {
        data_uri: absolute("--data", &args.data)?,
        cutoff: args.cutoff.format("%Y-%m-%d").to_string(),
        registry_uri: match &args.registry {
            Some(r) => registry::absolute_location(r).with_context(|| format!("--registry {r}"))?,
            None if args.scheduler.is_none() => {
                anyhow::bail!("--registry is required without --scheduler")
            }
            None => String::new(),
        },
        model_name: args.name.clone().unwrap_or_default(),
        horizons_days: args.horizons.clone(),
        hyperparameters,
        config_toml,
        max_attempts: args.max_attempts.unwrap_or(0),
        promote: match args.promote {
            Promotion::Never => "never",
            Promotion::IfBetter => "if-better",
            Promotion::Always => "always",
        }
        .into(),
    };
    let target = match &args.scheduler {
        Some(url) => Target::start(Some(url), 0, None).await?,
        None => {
            let executor = ExecutorConfig {
                training_cpu_only: args.cpu,
                job_poll_interval_ms: 100,
                ..ExecutorConfig::default().with_free_ports()
            };
            let local =
                LocalCluster::start(SchedulerConfig::default().with_bind_port(0), executor).await?;
            Target::local(local)
        }
    };
    let kind = if args.kind == "recommend" {
        JobKind::Recommend
    } else {
        JobKind::Churn
    };
    let result = submit(&target.url, kind, spec, args.detach).await;
    target.finish(result).await
}

async fn submit(url: &str, kind: JobKind, spec: JobSpec, detach: bool) -> anyhow::Result<()> {
    let mut client = jobs::connect(url).await?;
    let id = client
        .submit_job(SubmitJobRequest {
            kind: kind as i32,
            spec: Some(spec),
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?
        .into_inner()
        .job_id;
    if detach {
        println!("{id}");
        return Ok(());
    }
    eprintln!("submitted {id}");
    let job = jobs::watch(&mut client, &id).await?;
    jobs::finish(&job)
}
