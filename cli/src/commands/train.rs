//! `encore train churn`: a training job run from the command line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use chrono::NaiveDate;
use encore_executor::training::{ChurnJob, Progress, Promotion, train_churn};
use encore_models::churn::ChurnConfig;

use crate::cluster;

/// Train a model on the canonical tables at a cutoff and register it.
///
/// Features come from the point-in-time plans (through --scheduler, or an
/// in-process cluster); training runs in this process with libtorch (CUDA
/// when available). The version is published in the registry with its
/// metrics, TorchScript model and online snapshot, and becomes `production`
/// when it beats the current one (--promote).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    encore train churn --data data --cutoff 2026-03-01 --registry registry\n  \
    encore train churn --data data --cutoff 2026-03-01 --registry registry --set epochs=10 --set lr=0.001\n  \
    encore train churn --data data --cutoff 2026-03-01 --registry registry --config churn.toml --promote never")]
pub struct Args {
    /// What to train: churn.
    #[arg(value_parser = ["churn"])]
    pub kind: String,
    /// Data folder with the canonical tables (plays/ and users/ at least).
    #[arg(long)]
    pub data: PathBuf,
    /// The cutoff T, YYYY-MM-DD: features before it, labels after it.
    #[arg(long)]
    pub cutoff: NaiveDate,
    /// Model registry folder.
    #[arg(long, env = "ENCORE_REGISTRY")]
    pub registry: PathBuf,
    /// Name to register under (default: the kind).
    #[arg(long)]
    pub name: Option<String>,
    /// Scheduler computing the features, e.g. df://127.0.0.1:50050.
    #[arg(long, env = "ENCORE_SCHEDULER_URL")]
    pub scheduler: Option<String>,
    /// Training settings as TOML (keys as for --set).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// One setting as KEY=VALUE, over --config: hidden=128,64 embedding_dim
    /// epochs batch_size lr weight_decay dropout patience seed.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Churn horizons in days.
    #[arg(long, value_delimiter = ',', default_value = "7,15,30")]
    pub horizons: Vec<u32>,
    /// When the new version becomes `production`: never, if-better (its
    /// held-out AUC at the longest horizon beats production's) or always.
    #[arg(long, default_value = "if-better")]
    pub promote: Promotion,
    /// Train on the CPU even when CUDA is available.
    #[arg(long)]
    pub cpu: bool,
}

fn config(args: &Args) -> anyhow::Result<ChurnConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--config {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("--config {}", path.display()))?
        }
        None => ChurnConfig::default(),
    };
    for pair in &args.set {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--set '{pair}': expected KEY=VALUE"))?;
        config.set(key.trim(), value.trim())?;
    }
    config.validate()?;
    Ok(config)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = config(&args)?;
    let job = ChurnJob {
        job_id: format!("cli-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S")),
        data: args.data.clone(),
        cutoff: args.cutoff,
        registry: args.registry.clone(),
        model_name: args.name.clone().unwrap_or_else(|| args.kind.clone()),
        horizons: args.horizons.clone(),
        config,
        promotion: args.promote,
        device: if args.cpu {
            tch::Device::Cpu
        } else {
            encore_models::default_device()
        },
    };
    let target = cluster::Target::start(args.scheduler.as_deref(), 0, None).await?;
    let result = train(&job, &target.url).await;
    target.finish(result).await
}

async fn train(job: &ChurnJob, url: &str) -> anyhow::Result<()> {
    let ctx = cluster::connect(url).await?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] epoch {pos}/{len} {elapsed}",
    )
    .expect("template");
    let mut on_progress = |p: Progress| {
        match p {
            Progress::Stage(stage) => {
                bar.set_message(stage);
            }
            Progress::Epoch(r) => {
                if bar.length().is_none() {
                    bar.set_style(style.clone());
                    bar.set_length(u64::from(r.total_epochs));
                }
                bar.set_position(u64::from(r.epoch));
                bar.set_message(format!(
                    "training: loss {:.4}, validation {:.4}, {:.0} samples/s",
                    r.loss, r.validation_loss, r.samples_per_second
                ));
            }
        }
        true
    };
    let trained = train_churn(&ctx, job, &mut on_progress).await;
    bar.finish_and_clear();
    let trained = trained?;
    println!(
        "registered {}:{} from {} labelled users{}",
        job.model_name,
        trained.version,
        trained.rows,
        if trained.promoted {
            " (now production)"
        } else {
            ""
        }
    );
    let metrics: BTreeMap<_, _> = trained.metrics.iter().collect();
    for (name, value) in metrics {
        println!("  {name:<20} {value:.4}");
    }
    Ok(())
}
