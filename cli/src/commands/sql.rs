//! `encore sql`: run SQL over Parquet / CSV / NDJSON tables on a cluster.

use std::path::PathBuf;

use encore_features::tables::{self, TableSource};

use crate::cluster;
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
    /// Memory pool of the in-process executor in bytes; operators spill to
    /// disk beyond it (default: 70% of memory; 0 = unbounded).
    #[arg(long, env = "ENCORE_EXECUTOR_MEMORY_POOL_SIZE")]
    pub memory_pool_size: Option<u64>,
    /// A session setting, as SQL's `SET key = value` (e.g.
    /// datafusion.execution.target_partitions=4); repeat for more.
    #[arg(long = "conf", value_name = "KEY=VALUE", value_parser = cluster::parse_conf)]
    pub conf: Vec<(String, String)>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(out) = &args.out {
        // Fail before any work is done.
        output::OutFormat::from_path(out)?;
    }
    let target = cluster::Target::start(
        args.scheduler.as_deref(),
        args.concurrent_tasks,
        args.memory_pool_size,
    )
    .await?;
    let conf = target.conf(&args.conf);
    let result = query(&args, &target.url, &conf).await;
    target.finish(result).await
}

async fn query(args: &Args, url: &str, conf: &[(String, String)]) -> anyhow::Result<()> {
    let ctx = cluster::connect(url, conf).await?;
    for table in &args.tables {
        tables::register(&ctx, table).await?;
    }
    let spinner = output::Spinner::start("running query");
    let df = ctx.sql(&args.sql).await?;
    match &args.out {
        Some(out) => {
            let rows = output::write(df, out).await?;
            drop(spinner);
            println!("wrote {rows} rows to {}", out.display());
        }
        None => {
            output::print_after(df, || drop(spinner)).await?;
        }
    }
    Ok(())
}
