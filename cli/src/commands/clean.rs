//! `encore clean`: the cleaning rules over `plays`, with a report.

use std::path::PathBuf;

use anyhow::Context;
use encore_features::clean::{CleanConfig, clean_plays};

/// Clean the plays table: exact duplicates, impossible values, bot-like
/// users, missing played_secs imputed from the user's own mean.
///
/// Writes <out>/plays (partitioned by day) and <out>/clean_report.json, and
/// prints the counts per rule.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  encore clean --data data --out data-clean --max-plays-per-hour 120"
)]
pub struct Args {
    /// Data folder holding plays/.
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder (must not hold plays/ yet).
    #[arg(long)]
    pub out: PathBuf,
    /// More plays than this in one hour marks a user as a bot.
    #[arg(long, default_value_t = CleanConfig::default().max_plays_per_hour)]
    pub max_plays_per_hour: u32,
    /// Longest believable play, seconds.
    #[arg(long, default_value_t = CleanConfig::default().max_played_secs)]
    pub max_played_secs: u32,
    /// Plays before this RFC 3339 instant are impossible.
    #[arg(long)]
    pub from: Option<String>,
    /// Plays at or after this RFC 3339 instant are impossible.
    #[arg(long)]
    pub to: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = CleanConfig {
        max_plays_per_hour: args.max_plays_per_hour,
        max_played_secs: args.max_played_secs,
        from: args.from.clone(),
        to: args.to.clone(),
    };
    let spinner = crate::output::Spinner::start("cleaning");
    let ctx = datafusion::prelude::SessionContext::new();
    let report = clean_plays(&ctx, &args.data, &args.out, &config)
        .await
        .with_context(|| format!("cleaning {}", args.data.join("plays").display()));
    drop(spinner);
    let report = report?;
    println!("cleaned plays into {}", args.out.join("plays").display());
    for (rule, count) in &report {
        println!("  {rule:<26} {count:>12}");
    }
    Ok(())
}
