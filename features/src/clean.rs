//! Cleaning the `plays` table, rule by rule, with a report of what each rule
//! removed or changed. The rules are SQL over DataFusion, so they run on a
//! `SessionContext` wherever it executes (in process or on the cluster):
//!
//! 1. `exact_duplicates`: identical rows (same user, item, ts, values) kept once;
//! 2. `impossible_values`: negative or absurd `played_secs` (over
//!    `max_played_secs`), `item_secs` not positive, or a `ts` outside its
//!    `day=` partition (or outside the configured range);
//! 3. `bot_users`: users with more than `max_plays_per_hour` plays in any
//!    hour are dropped whole (their plays counted in `bot_plays`);
//! 4. `imputed_played_secs`: a missing `played_secs` becomes the user's own
//!    mean (rounded), or stays missing if the user has no other play
//!    (`unimputable_played_secs`; such rows are dropped).

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::SessionContext;

use crate::error::{Error, Result};
use crate::tables::{TableSource, register};

/// Thresholds of the cleaning rules.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanConfig {
    /// More plays than this in one clock hour marks a user as a bot.
    pub max_plays_per_hour: u32,
    /// Longest believable single play, seconds.
    pub max_played_secs: u32,
    /// Plays before this instant (RFC 3339) are impossible, when set.
    pub from: Option<String>,
    /// Plays at or after this instant (RFC 3339) are impossible, when set.
    pub to: Option<String>,
}

impl Default for CleanConfig {
    fn default() -> Self {
        Self {
            max_plays_per_hour: 120,
            max_played_secs: 6 * 3600,
            from: None,
            to: None,
        }
    }
}

/// Rows in, out, and per rule.
pub type CleanReport = BTreeMap<String, u64>;

async fn count(ctx: &SessionContext, sql: &str) -> Result<u64> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let value = batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
        })
        .map_or(0, |a| a.value(0));
    Ok(value as u64)
}

fn instant(name: &str, value: &Option<String>) -> Result<Option<String>> {
    value
        .as_ref()
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.to_rfc3339())
                .map_err(|e| Error::InvalidSpec(format!("--{name} '{v}': {e}")))
        })
        .transpose()
}

/// Cleans `<data>/plays` into `<out>/plays` (partitioned by day) and writes
/// `<out>/clean_report.json`.
pub async fn clean_plays(
    ctx: &SessionContext,
    data: &Path,
    out: &Path,
    config: &CleanConfig,
) -> Result<CleanReport> {
    if config.max_plays_per_hour == 0 {
        return Err(Error::InvalidSpec(
            "max_plays_per_hour must be at least 1".into(),
        ));
    }
    let target = out.join("plays");
    if target.exists() {
        return Err(Error::InvalidSpec(format!(
            "{} exists: clean into a new folder",
            target.display()
        )));
    }
    register(
        ctx,
        &TableSource {
            name: "raw_plays".into(),
            path: data.join("plays"),
        },
    )
    .await?;
    let mut range = String::new();
    if let Some(from) = instant("from", &config.from)? {
        range.push_str(&format!(" AND ts >= TIMESTAMP '{from}'"));
    }
    if let Some(to) = instant("to", &config.to)? {
        range.push_str(&format!(" AND ts < TIMESTAMP '{to}'"));
    }
    let steps = [
        ("deduplicated", "SELECT DISTINCT * FROM raw_plays".to_owned()),
        (
            "possible",
            format!(
                "SELECT * FROM deduplicated
                 WHERE (played_secs IS NULL OR played_secs BETWEEN 0 AND {max})
                   AND item_secs > 0
                   AND to_char(ts, '%Y-%m-%d') = CAST(day AS VARCHAR){range}",
                max = config.max_played_secs
            ),
        ),
        (
            "bots",
            format!(
                "SELECT DISTINCT user_id FROM possible
                 GROUP BY user_id, date_trunc('hour', ts)
                 HAVING count(*) > {}",
                config.max_plays_per_hour
            ),
        ),
        (
            "humans",
            "SELECT * FROM possible WHERE user_id NOT IN (SELECT user_id FROM bots)".to_owned(),
        ),
        (
            "cleaned",
            "SELECT user_id, item_id, ts,
                    CAST(COALESCE(played_secs,
                                  round(avg(played_secs) OVER (PARTITION BY user_id))) AS INT) AS played_secs,
                    item_secs, source, device, region, day
             FROM humans"
                .to_owned(),
        ),
    ];
    for (name, sql) in &steps {
        let view = ctx.sql(sql).await?.into_view();
        ctx.register_table(*name, view)?;
    }
    let mut report = CleanReport::new();
    let rows_in = count(ctx, "SELECT count(*) FROM raw_plays").await?;
    let deduplicated = count(ctx, "SELECT count(*) FROM deduplicated").await?;
    let possible = count(ctx, "SELECT count(*) FROM possible").await?;
    let humans = count(ctx, "SELECT count(*) FROM humans").await?;
    let missing = count(ctx, "SELECT count(*) FROM humans WHERE played_secs IS NULL").await?;
    let unimputable = count(
        ctx,
        "SELECT count(*) FROM cleaned WHERE played_secs IS NULL",
    )
    .await?;
    report.insert("rows_in".into(), rows_in);
    report.insert("exact_duplicates".into(), rows_in - deduplicated);
    report.insert("impossible_values".into(), deduplicated - possible);
    report.insert(
        "bot_users".into(),
        count(ctx, "SELECT count(*) FROM bots").await?,
    );
    report.insert("bot_plays".into(), possible - humans);
    report.insert("imputed_played_secs".into(), missing - unimputable);
    report.insert("unimputable_played_secs".into(), unimputable);
    report.insert("rows_out".into(), humans - unimputable);

    let staging = out.join(".plays.cleaning");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(Error::io(&staging))?;
    ctx.sql("SELECT * FROM cleaned WHERE played_secs IS NOT NULL")
        .await?
        .write_parquet(
            &format!("{}/", staging.display()),
            DataFrameWriteOptions::new().with_partition_by(vec!["day".into()]),
            None,
        )
        .await?;
    std::fs::rename(&staging, &target).map_err(Error::io(&target))?;
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::InvalidSpec(format!("report: {e}")))?;
    crate::datagen::write_atomic(&out.join("clean_report.json"), json)?;
    Ok(report)
}
