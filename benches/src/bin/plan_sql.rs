//! Prints the SQL of one of the feature plans at a cutoff, so a peer engine
//! (benches/peers/duckdb_features.py) runs exactly the text Encore runs.
//!
//!   plan-sql --cutoff 2026-04-01 user_features

use chrono::NaiveDate;
use clap::Parser;
use encore_features::plans::{self, PlanParams};

#[derive(Parser)]
struct Args {
    /// The cutoff T, YYYY-MM-DD.
    #[arg(long)]
    cutoff: NaiveDate,
    /// user_features (the full user vector), user_activity, user_engagement,
    /// user_habits, user_profile, churn_labels, segments, item_features,
    /// recommendation_pairs or subscription_churn.
    plan: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let p = PlanParams::at(args.cutoff);
    let sql = match args.plan.as_str() {
        "user_features" => plans::user_features_sql(&p, plans::Inputs::ALL)?,
        "user_activity" => plans::user_activity_sql(&p)?,
        "user_engagement" => plans::user_engagement_sql(&p)?,
        "user_habits" => plans::user_habits_sql(&p)?,
        "user_profile" => plans::user_profile_sql(&p)?,
        "churn_labels" => plans::churn_labels_sql(&p)?,
        "segments" => plans::segments_sql(&p)?,
        "item_features" => plans::item_features_sql(&p)?,
        "recommendation_pairs" => plans::recommendation_pairs_sql(&p)?,
        "subscription_churn" => plans::subscription_churn_sql(&p)?,
        other => anyhow::bail!("unknown plan '{other}'"),
    };
    println!("{sql}");
    Ok(())
}
