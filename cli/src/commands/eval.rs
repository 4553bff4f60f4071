//! `encore eval`: Encore's models on public data, next to published
//! baselines.

use std::path::PathBuf;

use anyhow::Context;
use encore_executor::training::eval::{self, CdnowEval};
use encore_features::import::{ImportOptions, cdnow};
use encore_models::churn::ChurnConfig;

/// Evaluate Encore's models on public data against published baselines.
///
/// cdnow: the CDNOW panel (`CDNOW_master.txt`, 23,570 customers; fetch it
/// with scripts/fetch-public-data.sh). Calibration up to 1997-09-30, the
/// question is "any purchase in the next 39 weeks"; purchase features at the
/// cutoff train the churn network with k-fold cross-validation, so every
/// customer is scored by a model that never saw them. Prints AUC and log
/// loss next to BG/NBD and RFM logistic regression.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    scripts/fetch-public-data.sh target/public-data\n  \
    encore eval cdnow --src target/public-data/cdnow/CDNOW_master.txt\n  \
    encore eval cdnow --src CDNOW_master.txt --folds 10 --set epochs=50")]
pub struct Args {
    /// The dataset: cdnow.
    #[arg(value_parser = ["cdnow"])]
    pub dataset: String,
    /// The dataset's file (CDNOW_master.txt).
    #[arg(long)]
    pub src: PathBuf,
    /// Cross-validation folds.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// One training setting as KEY=VALUE (as for `encore train`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Train on the CPU even when CUDA is available.
    #[arg(long)]
    pub cpu: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = ChurnConfig::default();
    for pair in &args.set {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--set '{pair}': expected KEY=VALUE"))?;
        config.set(key.trim(), value.trim())?;
    }
    config.validate()?;
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let (src, out) = (args.src.clone(), dir.path().to_path_buf());
    tokio::task::spawn_blocking(move || cdnow::import(&src, &out, &ImportOptions::default()))
        .await
        .context("the importer stopped")?
        .with_context(|| format!("importing {}", args.src.display()))?;
    let device = if args.cpu {
        tch::Device::Cpu
    } else {
        encore_models::default_device()
    };
    let spinner = crate::output::Spinner::start("evaluating on CDNOW (cross-validation)");
    let ctx = datafusion::prelude::SessionContext::new();
    let result = eval::eval_cdnow(&ctx, dir.path(), &config, args.folds, device).await;
    drop(spinner);
    print_cdnow(&result?);
    Ok(())
}

fn print_cdnow(r: &CdnowEval) {
    println!(
        "CDNOW: {} customers, calibration to 1997-09-30, holdout 39 weeks: {} bought again ({:.1}%), {} holdout transactions",
        r.customers,
        r.buyers,
        100.0 * r.buyers as f64 / r.customers as f64,
        r.holdout_purchases
    );
    println!(
        "any purchase in the holdout, {}-fold out-of-fold predictions:",
        r.folds
    );
    println!("  {:<44} {:>6} {:>9}", "model", "AUC", "log loss");
    println!(
        "  {:<44} {:>6.3} {:>9.4}",
        "encore wide & deep (purchase features)", r.auc, r.log_loss
    );
    println!(
        "  {:<44} {:>6.3} {:>9}",
        "BG/NBD expected transactions (lifetimes)", 0.773, "-"
    );
    println!(
        "  {:<44} {:>6} {:>9}",
        "logistic regression on RFM", "0.769-0.778", "-"
    );
    println!(
        "  calibration: ECE {:.3}, mean prediction {:.3} vs rate {:.3}",
        r.ece,
        r.mean_prediction,
        r.buyers as f64 / r.customers as f64
    );
    println!(
        "  goal: AUC >= 0.78 -> {}",
        if r.auc >= 0.78 { "met" } else { "not met" }
    );
}
