//! Runs one feature plan on a plain in-process DataFusion context (no
//! Ballista; Encore's session defaults) and prints its wall time, or its `EXPLAIN ANALYZE` metrics: the
//! quickest way to see where a plan spends its time, without the CLI's
//! libtorch build.
//!
//! ```sh
//! cargo run --release -p encore-features --example plan_profile -- \
//!     --data target/bench-data/features-u130000-d90 --cutoff 2026-04-01 \
//!     [--generate-users 130000 --generate-days 90] [--partitions 2] \
//!     [--explain | --print] [--out /tmp/out.parquet] user_features
//! ```
//!
//! With `--generate-users`, data is generated into `--data` first when it
//! has no `.complete` marker (the same spec as `encore datagen`: 5,000 items,
//! seed 42, start 2026-01-01).

use std::path::PathBuf;
use std::time::Instant;

use chrono::NaiveDate;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{SessionConfig, SessionContext};
use encore_features::datagen::{DataSpec, generate};
use encore_features::plans::{self, Inputs, PlanParams};
use encore_features::tables::{self, TableSource};

fn usage() -> ! {
    eprintln!(
        "usage: plan_profile --data DIR --cutoff YYYY-MM-DD [--generate-users N --generate-days D] \
         [--partitions N] [--explain | --print] [--out FILE.parquet] PLAN"
    );
    std::process::exit(2)
}

fn plan_sql(
    plan: &str,
    p: &PlanParams,
    inputs: Inputs,
) -> Result<String, Box<dyn std::error::Error>> {
    Ok(match plan {
        "user_features" => plans::user_features_sql(p, inputs)?,
        "user_activity" => plans::user_activity_sql(p)?,
        "user_engagement" => plans::user_engagement_sql(p)?,
        "user_habits" => plans::user_habits_sql(p)?,
        "user_profile" => plans::user_profile_sql(p)?,
        "churn_labels" => plans::churn_labels_sql(p)?,
        "segments" => plans::segments_sql(p)?,
        "item_features" => plans::item_features_sql(p)?,
        "recommendation_pairs" => plans::recommendation_pairs_sql(p)?,
        "subscription_churn" => plans::subscription_churn_sql(p)?,
        other => return Err(format!("unknown plan '{other}'").into()),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut data: Option<PathBuf> = None;
    let mut cutoff: Option<NaiveDate> = None;
    let mut users = None;
    let mut days = 90;
    let mut partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut explain = false;
    let mut print = false;
    let mut out: Option<PathBuf> = None;
    let mut plan = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--data" => data = Some(value().into()),
            "--cutoff" => cutoff = Some(value().parse()?),
            "--generate-users" => users = Some(value().parse()?),
            "--generate-days" => days = value().parse()?,
            "--partitions" => partitions = value().parse()?,
            "--out" => out = Some(value().into()),
            "--explain" => explain = true,
            "--print" => print = true,
            s if !s.starts_with("--") && plan.is_none() => plan = Some(arg),
            _ => usage(),
        }
    }
    let (Some(data), Some(cutoff), Some(plan)) = (data, cutoff, plan) else {
        usage()
    };
    if let Some(users) = users
        && !data.join(".complete").exists()
    {
        let spec = DataSpec {
            users,
            days,
            ..DataSpec::default()
        };
        let started = Instant::now();
        generate(&spec, &data, |_, _| {})?;
        std::fs::write(data.join(".complete"), b"")?;
        eprintln!("generated {} in {:.1?}", data.display(), started.elapsed());
    }

    // Encore's session settings, as every Encore session has them.
    let config = encore_features::plans::SESSION_DEFAULTS.iter().fold(
        SessionConfig::new().with_target_partitions(partitions),
        |config, (key, value)| config.set_str(key, value),
    );
    let ctx = SessionContext::new_with_config(config);
    for name in ["users", "items", "plays", "interactions", "payments"] {
        let path = data.join(name);
        if path.is_dir() {
            tables::register(
                &ctx,
                &TableSource {
                    name: name.into(),
                    path,
                },
            )
            .await?;
        }
    }
    let sql = plan_sql(&plan, &PlanParams::at(cutoff), Inputs::in_dir(&data))?;
    if print {
        println!("{sql}");
        return Ok(());
    }
    let started = Instant::now();
    if explain {
        let batches = ctx
            .sql(&format!("EXPLAIN ANALYZE {sql}"))
            .await?
            .collect()
            .await?;
        println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    } else if let Some(out) = out {
        ctx.sql(&sql)
            .await?
            .write_parquet(
                out.to_str().ok_or("non-UTF-8 path")?,
                DataFrameWriteOptions::new(),
                None,
            )
            .await?;
    } else {
        let rows: usize = ctx
            .sql(&sql)
            .await?
            .collect()
            .await?
            .iter()
            .map(|b| b.num_rows())
            .sum();
        eprintln!("{rows} rows");
    }
    eprintln!(
        "{plan}: {:.2} s ({partitions} partitions)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
