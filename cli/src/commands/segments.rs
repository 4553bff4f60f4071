//! `encore segments`: segment sizes at a cutoff.

use std::path::PathBuf;

use chrono::NaiveDate;
use encore_features::plans::{self, PlanParams};
use encore_features::tables::{self, TableSource};

use crate::cluster;
use crate::output;

/// Print how many users are in each segment (lifecycle stage × RFM value tier) at a cutoff.
///
/// Reads users/, plays/ and payments/ under --data; users without consent
/// are left out. `encore features` writes the per-user table.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  encore segments --data data --cutoff 2026-03-01")]
pub struct Args {
    /// Data folder with users/, plays/ and payments/.
    #[arg(long)]
    pub data: PathBuf,
    /// The cutoff T, YYYY-MM-DD.
    #[arg(long)]
    pub cutoff: NaiveDate,
    /// Scheduler to run on, e.g. df://127.0.0.1:50050.
    #[arg(long, env = "ENCORE_SCHEDULER_URL")]
    pub scheduler: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    for table in ["users", "plays", "payments"] {
        anyhow::ensure!(
            args.data.join(table).exists(),
            "--data {}: no {table}/ folder",
            args.data.display()
        );
    }
    let target = cluster::Target::start(args.scheduler.as_deref(), 0, None).await?;
    let conf = target.conf(&[]);
    let result = print(&args, &target.url, &conf).await;
    target.finish(result).await
}

async fn print(args: &Args, url: &str, conf: &[(String, String)]) -> anyhow::Result<()> {
    let ctx = cluster::connect(url, conf).await?;
    for table in ["users", "plays", "payments"] {
        tables::register(
            &ctx,
            &TableSource {
                name: table.into(),
                path: args.data.join(table),
            },
        )
        .await?;
    }
    let sql = plans::segments_sql(&PlanParams::at(args.cutoff))?;
    let spinner = output::Spinner::start("computing segments");
    let df = ctx
        .sql(&format!(
            "SELECT lifecycle, value_tier, count(*) AS users FROM ({sql}) GROUP BY lifecycle, value_tier ORDER BY lifecycle, value_tier"
        ))
        .await?;
    output::print_after(df, || drop(spinner)).await?;
    Ok(())
}
