//! `encore demo`: the end-to-end demo. Today: generate a music platform,
//! start a standalone cluster, run feature-style SQL on it.

use std::path::PathBuf;

use anyhow::Context;
use encore_features::tables::{self, TableSource};

use super::datagen;
use crate::cluster::{self, LocalCluster};
use crate::output;

/// The queries the demo runs, with a title each.
const QUERIES: [(&str, &str); 3] = [
    (
        "Listening by genre",
        "SELECT i.genre, count(*) AS plays, count(DISTINCT p.user_id) AS listeners, \
         round(sum(p.played_secs) / 3600.0, 1) AS hours, \
         round(avg(CASE WHEN p.played_secs < p.item_secs THEN 1.0 ELSE 0.0 END), 3) AS skip_rate \
         FROM plays p JOIN items i ON p.item_id = i.item_id \
         GROUP BY i.genre ORDER BY hours DESC",
    ),
    (
        "Where plays come from",
        "SELECT source, count(*) AS plays, \
         round(avg(CAST(played_secs AS DOUBLE) / item_secs), 3) AS completion \
         FROM plays GROUP BY source ORDER BY plays DESC",
    ),
    (
        "Taste: share of each user's plays in their top genre (users with 20+ plays)",
        "WITH g AS (SELECT p.user_id, i.genre, count(*) AS n \
                    FROM plays p JOIN items i ON p.item_id = i.item_id GROUP BY 1, 2), \
              u AS (SELECT user_id, max(n) AS top, sum(n) AS total FROM g GROUP BY 1) \
         SELECT count(*) AS users, round(avg(CAST(top AS DOUBLE) / total), 3) AS top_genre_share \
         FROM u WHERE total >= 20",
    ),
];

/// Run the Encore demo: generate data, start a cluster, query it.
///
/// Generates a synthetic music platform under --data (skipped when the same
/// data is already there), starts a scheduler and an executor in this
/// process, and runs feature-style SQL on them.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  encore demo\n  encore demo --users 20000 --days 60 --data /tmp/encore-demo"
)]
pub struct Args {
    /// Folder for the generated data.
    #[arg(long, default_value = "demo-data")]
    pub data: PathBuf,
    /// Number of users to generate.
    #[arg(long, default_value_t = 2_000)]
    pub users: u32,
    /// Days of plays to generate.
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// Task slots of the executor (0: every core).
    #[arg(long, default_value_t = 0)]
    pub concurrent_tasks: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let gen_args = datagen::Args {
        users: args.users,
        items: 5_000,
        days: args.days,
        seed: 42,
        start: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap_or_default(),
        cutoff: None,
        out: args.data.clone(),
    };
    let spec = gen_args.spec();
    let stamp = args.data.join(".encore-datagen");
    let wanted = format!("{spec:?}");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        println!("using data in {}", args.data.display());
    } else {
        let summary = datagen::write_with_progress(spec, args.data.clone()).await?;
        std::fs::write(&stamp, &wanted)
            .with_context(|| format!("cannot write {}", stamp.display()))?;
        println!(
            "generated {} users, {} songs, {} plays in {}",
            summary.users,
            summary.items,
            summary.plays,
            args.data.display()
        );
    }

    let local = LocalCluster::ephemeral(args.concurrent_tasks, None).await?;
    super::standalone::print_addresses(&local);
    let result = run_queries(&local, &args.data).await;
    local.shutdown().await?;
    result
}

async fn run_queries(local: &LocalCluster, data: &std::path::Path) -> anyhow::Result<()> {
    let ctx = cluster::connect(&local.scheduler.url(), &[]).await?;
    for name in ["users", "items", "plays"] {
        let source = TableSource {
            name: name.into(),
            path: data.join(name),
        };
        tables::register(&ctx, &source).await?;
    }
    for (title, sql) in QUERIES {
        println!("\n{title}");
        let spinner = output::Spinner::start("running query");
        let df = ctx
            .sql(sql)
            .await
            .with_context(|| format!("planning '{title}'"))?;
        output::print_after(df, || drop(spinner)).await?;
    }
    Ok(())
}
