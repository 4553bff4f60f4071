//! One module per `encore` subcommand.

pub mod clean;
pub mod datagen;
pub mod demo;
pub mod eval;
pub mod features;
pub mod import;
pub mod ingest;
pub mod jobs;
pub mod models;
pub mod segments;
pub mod sql;
pub mod standalone;
pub mod train;

/// `--set KEY=VALUE` flags as (key, value) pairs, trimmed, in order.
pub fn key_values(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--set '{pair}': expected KEY=VALUE"))?;
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}
