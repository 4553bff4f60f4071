//! `encore features`: the feature and label plans at a cutoff, as Parquet
//! tables with a manifest.

use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::NaiveDate;
use encore_features::plans::{self, PlanParams};
use encore_features::tables::{self, TableSource};

use crate::cluster;
use crate::output;

/// Compute user features and churn labels at a cutoff, point-in-time.
///
/// Features read only plays before the cutoff; labels only the horizons
/// after it. Writes <out>/user_features.parquet, <out>/churn_labels.parquet,
/// <out>/user_habits.parquet, <out>/recommendation_pairs.parquet,
/// <out>/user_profile.parquet, <out>/segments.parquet and
/// <out>/subscription_churn.parquet (when users/ and payments/ exist),
/// <out>/user_engagement.parquet (when interactions/ exists),
/// <out>/item_features.parquet (when items/ and interactions/ exist) and
/// <out>/manifest.json (columns with types and meanings, cutoff,
/// windows, horizons, input data version). Without --scheduler an
/// in-process cluster runs the plans.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  encore features --data data --cutoff 2026-03-01 --out features\n  encore features --scheduler df://127.0.0.1:50050 --data /shared/data --cutoff 2026-03-01 --out features --windows 7,30"
)]
pub struct Args {
    /// Data folder with the canonical tables (plays/ at least).
    #[arg(long)]
    pub data: PathBuf,
    /// The cutoff T, YYYY-MM-DD.
    #[arg(long)]
    pub cutoff: NaiveDate,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Scheduler to run on, e.g. df://127.0.0.1:50050 (the data folder must be readable by the executors).
    #[arg(long, env = "ENCORE_SCHEDULER_URL")]
    pub scheduler: Option<String>,
    /// Feature windows in days.
    #[arg(long, value_delimiter = ',', default_value = "7,14,30,90")]
    pub windows: Vec<u32>,
    /// Label horizons in days.
    #[arg(long, value_delimiter = ',', default_value = "7,15,30")]
    pub horizons: Vec<u32>,
    /// Days without a play that count as churn inside a horizon (capped
    /// at the shortest horizon).
    #[arg(long, default_value_t = 7)]
    pub lapse_days: u32,
    /// Keep users without consent (default: left out; needs users/ otherwise).
    #[arg(long)]
    pub include_unconsented: bool,
    /// Memory pool of the in-process executor in bytes; operators spill to
    /// disk beyond it (default: 70% of memory; 0 = unbounded).
    #[arg(long, env = "ENCORE_EXECUTOR_MEMORY_POOL_SIZE")]
    pub memory_pool_size: Option<u64>,
    /// A session setting, as SQL's `SET key = value` (e.g.
    /// datafusion.execution.target_partitions=4); repeat for more.
    #[arg(long = "conf", value_name = "KEY=VALUE", value_parser = crate::cluster::parse_conf)]
    pub conf: Vec<(String, String)>,
}

/// A fingerprint of the input files (names, sizes, modification times).
fn data_version(dir: &Path) -> anyhow::Result<String> {
    let mut entries = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                entries.push(format!("{}:{}:{modified}", e.path().display(), meta.len()));
            }
        }
    }
    entries.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in entries.join("\n").bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    Ok(format!("{:016x} ({} files)", hash, entries.len()))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let plays = args.data.join("plays");
    anyhow::ensure!(
        plays.exists(),
        "--data {}: no plays/ folder",
        args.data.display()
    );
    let params = PlanParams {
        windows: args.windows.clone(),
        horizons: args.horizons.clone(),
        include_unconsented: args.include_unconsented,
        lapse_days: args.lapse_days,
        ..PlanParams::at(args.cutoff)
    };
    // Check the parameters before starting anything.
    plans::user_activity_sql(&params)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create --out {}", args.out.display()))?;
    let target =
        cluster::Target::start(args.scheduler.as_deref(), 0, args.memory_pool_size).await?;
    let conf = target.conf(&args.conf);
    let result = compute(&args, &params, &target.url, &conf).await;
    target.finish(result).await
}

async fn compute(
    args: &Args,
    params: &PlanParams,
    url: &str,
    conf: &[(String, String)],
) -> anyhow::Result<()> {
    let ctx = cluster::connect(url, conf).await?;
    tables::register(
        &ctx,
        &TableSource {
            name: "plays".into(),
            path: args.data.join("plays"),
        },
    )
    .await?;
    if !params.include_unconsented {
        tables::register(
            &ctx,
            &TableSource {
                name: "users".into(),
                path: args.data.join("users"),
            },
        )
        .await?;
    }
    let mut plan_list = vec![
        ("user_features", plans::user_activity_sql(params)?),
        ("churn_labels", plans::churn_labels_sql(params)?),
        ("user_habits", plans::user_habits_sql(params)?),
        (
            "recommendation_pairs",
            plans::recommendation_pairs_sql(params)?,
        ),
    ];
    // The profile (lifecycle, payments) needs users/ and payments/.
    let (users, payments) = (args.data.join("users"), args.data.join("payments"));
    if users.exists() && payments.exists() {
        if params.include_unconsented {
            tables::register(
                &ctx,
                &TableSource {
                    name: "users".into(),
                    path: users,
                },
            )
            .await?;
        }
        tables::register(
            &ctx,
            &TableSource {
                name: "payments".into(),
                path: payments,
            },
        )
        .await?;
        plan_list.push(("user_profile", plans::user_profile_sql(params)?));
        plan_list.push(("segments", plans::segments_sql(params)?));
        plan_list.push(("subscription_churn", plans::subscription_churn_sql(params)?));
    }
    // Engagement and early warnings need interactions/.
    let interactions = args.data.join("interactions");
    if interactions.exists() {
        tables::register(
            &ctx,
            &TableSource {
                name: "interactions".into(),
                path: interactions,
            },
        )
        .await?;
        plan_list.push(("user_engagement", plans::user_engagement_sql(params)?));
        let items = args.data.join("items");
        if items.exists() {
            tables::register(
                &ctx,
                &TableSource {
                    name: "items".into(),
                    path: items,
                },
            )
            .await?;
            plan_list.push(("item_features", plans::item_features_sql(params)?));
        }
    }
    let mut manifest_tables = serde_json::Map::new();
    for (name, sql) in plan_list {
        let spinner = output::Spinner::start(match name {
            "user_features" => "computing user features",
            "churn_labels" => "computing churn labels",
            "user_profile" => "computing user profiles",
            "segments" => "computing segments",
            "user_habits" => "computing habits",
            "item_features" => "computing item features",
            "recommendation_pairs" => "computing recommendation pairs",
            "subscription_churn" => "computing subscription churn labels",
            _ => "computing engagement",
        });
        let key = if name == "item_features" {
            "item_id"
        } else {
            "user_id"
        };
        let df = ctx
            .sql(&format!("SELECT * FROM ({sql}) ORDER BY {key}"))
            .await?;
        let columns: Vec<serde_json::Value> = df
            .schema()
            .fields()
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name(),
                    "type": f.data_type().to_string(),
                    "description": plans::describe(f.name()).unwrap_or_default(),
                })
            })
            .collect();
        let path = args.out.join(format!("{name}.parquet"));
        let rows = output::write(df, &path).await?;
        drop(spinner);
        println!("wrote {rows} rows to {}", path.display());
        manifest_tables.insert(
            name.into(),
            serde_json::json!({"file": format!("{name}.parquet"), "rows": rows, "columns": columns, "sql": sql}),
        );
    }
    let manifest = serde_json::json!({
        "cutoff": params.cutoff.to_string(),
        "windows_days": params.windows,
        "horizons_days": params.horizons,
        "lookback_days": params.lookback_days,
        "lapse_days": params.lapse_days,
        "unconsented_users": if params.include_unconsented { "included" } else { "excluded" },
        "input": {"data": args.data.display().to_string(), "version": data_version(&args.data.join("plays"))?},
        "tables": manifest_tables,
    });
    let path = args.out.join("manifest.json");
    encore_features::datagen::write_atomic(&path, serde_json::to_string_pretty(&manifest)?)?;
    println!("wrote {}", path.display());
    Ok(())
}
