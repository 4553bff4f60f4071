//! `encore datagen`: write a synthetic music platform's canonical tables.

use std::path::PathBuf;

use anyhow::Context;
use chrono::NaiveDate;
use encore_features::datagen::{DataSpec, generate};

/// Simulate a music platform: users, songs, plays, interactions, payments,
/// and the ground truth of churn, as Parquet.
///
/// Users have latent taste, activity, habits, price sensitivity and
/// satisfaction that drive what they play and whether they churn; at the
/// cutoff each user's true probability of no activity within 7, 15 and 30
/// days is written to ground_truth/cutoff=YYYY-MM-DD/. Deterministic: the
/// same arguments always write the same bytes. Plays are partitioned by day
/// (plays/day=YYYY-MM-DD/).
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  encore datagen --users 10000 --days 30 --seed 7 --out data")]
pub struct Args {
    /// Number of users.
    #[arg(long, default_value_t = 2_000)]
    pub users: u32,
    /// Number of songs.
    #[arg(long, default_value_t = 5_000)]
    pub items: u32,
    /// Days of plays.
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// First day, YYYY-MM-DD.
    #[arg(long, default_value = "2026-01-01")]
    pub start: NaiveDate,
    /// Day of the ground truth (each user's true churn probability), YYYY-MM-DD.
    /// Default: 30 days before the end, or the middle of shorter spans.
    #[arg(long)]
    pub cutoff: Option<NaiveDate>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
}

impl Args {
    /// The generator spec these arguments describe.
    pub fn spec(&self) -> DataSpec {
        DataSpec {
            users: self.users,
            items: self.items,
            days: self.days,
            start: self.start,
            seed: self.seed,
            cutoff: self.cutoff,
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let summary = write_with_progress(args.spec(), args.out.clone()).await?;
    println!(
        "wrote {} users, {} songs, {} plays, {} interactions, {} payments ({} files) to {}; ground truth at {}",
        summary.users,
        summary.items,
        summary.plays,
        summary.interactions,
        summary.payments,
        summary.files,
        args.out.display(),
        args.spec().cutoff()
    );
    Ok(())
}

/// Runs the generator off the async threads with a progress bar on stderr.
pub async fn write_with_progress(
    spec: DataSpec,
    out: PathBuf,
) -> anyhow::Result<encore_features::datagen::DataSummary> {
    let bar = indicatif::ProgressBar::new(spec.days as u64).with_style(
        indicatif::ProgressStyle::with_template("generating {bar:30} {pos}/{len} days {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = bar.clone();
    let target = out.clone();
    let summary = tokio::task::spawn_blocking(move || {
        generate(&spec, &target, |done, _| progress.set_position(done as u64))
    })
    .await
    .context("the generator stopped")?
    .with_context(|| format!("generating data in {}", out.display()))?;
    bar.finish_and_clear();
    Ok(summary)
}
