//! `encore ingest`: append a batch file to a canonical table.

use std::path::PathBuf;

use anyhow::Context;

/// Append a batch (Parquet, CSV or NDJSON) to a canonical table in a data folder.
///
/// The batch is cast to the table's schema and validated; its rows are
/// written as new Parquet files (plays: into their day= partitions), each
/// appearing whole, so a running cluster sees the rows on its next query.
/// Ingesting the same batch again adds nothing (its content hash is the key).
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  encore ingest --table plays --src new-plays.csv --data data")]
pub struct Args {
    /// Canonical table: users, items, plays, interactions, payments, daily_activity.
    #[arg(long)]
    pub table: String,
    /// The batch file.
    #[arg(long)]
    pub src: PathBuf,
    /// Data folder holding one folder per table.
    #[arg(long)]
    pub data: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = encore_features::ingest::ingest(&args.table, &args.src, &args.data)
        .await
        .with_context(|| format!("ingesting {} into {}", args.src.display(), args.table))?;
    if report.duplicate {
        println!(
            "{} was ingested before (key {}): nothing added",
            args.src.display(),
            report.key
        );
    } else {
        println!(
            "appended {} rows to {} in {} file(s) (key {})",
            report.rows,
            args.table,
            report.files.len(),
            report.key
        );
    }
    Ok(())
}
