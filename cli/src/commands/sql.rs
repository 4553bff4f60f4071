//! `encore sql`: run SQL over Parquet / CSV / NDJSON tables on a cluster.

use std::path::PathBuf;

use anyhow::Context;
use encore_features::tables::{self, TableSource};

use crate::cluster::{self, LocalCluster};
use crate::output;

/// Run SQL over Parquet, CSV or NDJSON tables on a Ballista cluster.
///
/// Tables are files or folders (Hive-style `day=...` sub-folders become
/// columns). Results are printed as a table or written with --out.
/// Without --scheduler, an in-process cluster runs the query (--standalone).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    encore sql --table plays=data/plays \"SELECT source, count(*) FROM plays GROUP BY source\"\n  \
    encore sql --scheduler df://127.0.0.1:50050 --table plays=data/plays --table items=data/items \\\n      \
    \"SELECT i.genre, sum(p.played_secs) AS secs FROM plays p JOIN items i USING (item_id) GROUP BY 1\" --out genres.parquet")]
pub struct Args {
    /// The SQL statement.
    pub sql: String,
    /// Scheduler to run on, e.g. df://127.0.0.1:50050.
    #[arg(long, env = "ENCORE_SCHEDULER_URL", conflicts_with = "standalone")]
    pub scheduler: Option<String>,
    /// Run on an in-process scheduler and executor (the default without --scheduler).
    #[arg(long)]
    pub standalone: bool,
    /// A table as NAME=PATH (file or folder); repeat for more tables.
    #[arg(long = "table", value_name = "NAME=PATH")]
    pub tables: Vec<TableSource>,
    /// Write the result to a .parquet or .csv file instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Task slots of the in-process executor (0: every core).
    #[arg(long, default_value_t = 0)]
    pub concurrent_tasks: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(out) = &args.out {
        // Fail before any work is done.
        output::OutFormat::from_path(out)?;
    }
    let local = match &args.scheduler {
        Some(_) => None,
        None => Some(LocalCluster::ephemeral(args.concurrent_tasks).await?),
    };
    let url = match (&args.scheduler, &local) {
        (Some(url), _) => url.clone(),
        (None, Some(local)) => local.scheduler.url(),
        (None, None) => unreachable!("a local cluster runs when no scheduler is given"),
    };
    let ctx = cluster::connect(&url).await?;
    for table in &args.tables {
        tables::register(&ctx, table).await?;
    }
    let spinner = indicatif::ProgressBar::new_spinner().with_message("running query");
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let df = ctx.sql(&args.sql).await;
    let result = match df {
        Ok(df) => match &args.out {
            Some(out) => output::write(df, out).await.map(|rows| {
                spinner.finish_and_clear();
                println!("wrote {rows} rows to {}", out.display());
            }),
            None => {
                let rows = output::print_after(df, || spinner.finish_and_clear()).await;
                rows.map(|_| ())
            }
        },
        Err(e) => Err(e.into()),
    };
    spinner.finish_and_clear();
    if let Some(local) = local {
        local.shutdown().await.context("stopping the in-process cluster")?;
    }
    result
}
