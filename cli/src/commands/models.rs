//! `encore models`: the model registry: list, show, promote, rollback.

use std::path::Path;

use anyhow::Context;
use encore_models::registry::{self, Registry};

/// Inspect the model registry and move its aliases.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    encore models list --registry registry\n  \
    encore models show churn --registry registry            (production, or the newest)\n  \
    encore models show churn:3 --registry registry\n  \
    encore models promote churn:3 --registry registry       (alias production)\n  \
    encore models promote churn:4 --alias staging --registry registry\n  \
    encore models rollback churn --registry registry")]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    /// Model registry: a folder or s3://bucket/prefix.
    #[arg(long, env = "ENCORE_REGISTRY", global = true)]
    pub registry: Option<String>,
}

/// What to do.
#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Every model with its versions, aliases and headline metric.
    List,
    /// One version's manifest: MODEL[:VERSION|:ALIAS].
    Show {
        /// MODEL, MODEL:VERSION or MODEL:ALIAS.
        model: String,
    },
    /// Point an alias (default production) at MODEL:VERSION.
    Promote {
        /// MODEL:VERSION or MODEL:ALIAS.
        model: String,
        /// The alias to move.
        #[arg(long, default_value = "production")]
        alias: String,
    },
    /// Move an alias (default production) back to its previous version.
    Rollback {
        /// MODEL.
        model: String,
        /// The alias to move back.
        #[arg(long, default_value = "production")]
        alias: String,
    },
}

fn split(model: &str) -> (&str, &str) {
    model.split_once(':').unwrap_or((model, ""))
}

/// The metric shown in lists: the longest horizon's AUC (churn), else
/// Recall@10 (recommend), else the first metric.
fn headline(manifest: &encore_models::registry::Manifest) -> String {
    let Some(metrics) = manifest.extra.get("metrics").and_then(|m| m.as_object()) else {
        return String::new();
    };
    let auc = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("auc_"))
        .max_by_key(|(k, _)| {
            k.trim_start_matches("auc_")
                .trim_end_matches('d')
                .parse::<u32>()
                .unwrap_or(0)
        });
    let recall = metrics.get_key_value("recall_at_10");
    match auc.or(recall).or_else(|| metrics.iter().next()) {
        Some((k, v)) => format!("{k}={:.4}", v.as_f64().unwrap_or(f64::NAN)),
        None => String::new(),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let root = args
        .registry
        .context("--registry is required (or ENCORE_REGISTRY)")?;
    anyhow::ensure!(
        registry::is_remote(&root) || Path::new(root.trim_start_matches("file://")).is_dir(),
        "--registry {root}: no such folder"
    );
    let registry = Registry::open(&root)?;
    match args.action {
        Action::List => {
            println!(
                "{:<16} {:>7}  {:<24} {:<20} METRIC",
                "MODEL", "VERSION", "ALIASES", "CREATED"
            );
            for model in registry.models()? {
                let aliases = registry.aliases(&model)?;
                for version in registry.versions(&model)? {
                    let manifest = registry.manifest(&model, version)?;
                    let names: Vec<&str> = aliases
                        .iter()
                        .filter(|(_, v)| **v == version)
                        .map(|(a, _)| a.as_str())
                        .collect();
                    let created = manifest
                        .extra
                        .get("created_at")
                        .and_then(|v| v.as_str())
                        .map(|s| s.chars().take(19).collect::<String>())
                        .unwrap_or_default();
                    println!(
                        "{model:<16} {version:>7}  {:<24} {created:<20} {}",
                        names.join(","),
                        headline(&manifest)
                    );
                }
            }
        }
        Action::Show { model } => {
            let (name, selector) = split(&model);
            let version = registry.resolve(name, selector)?;
            let manifest = registry.manifest(name, version)?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
        }
        Action::Promote { model, alias } => {
            let (name, selector) = split(&model);
            anyhow::ensure!(
                !selector.is_empty(),
                "promote {model}: name the version as MODEL:VERSION"
            );
            let version = registry.resolve(name, selector)?;
            let before = registry.set_alias(name, &alias, version, "promote")?;
            match before {
                Some(b) => println!("{name}: {alias} {b} -> {version}"),
                None => println!("{name}: {alias} -> {version}"),
            }
        }
        Action::Rollback { model, alias } => {
            let (from, to) = registry.rollback(&model, &alias)?;
            println!("{model}: {alias} {from} -> {to}");
        }
    }
    Ok(())
}
