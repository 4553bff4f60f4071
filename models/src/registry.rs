//! The model registry on a file system: manifests, integer versions and
//! aliases, read by the model server and written by training.
//!
//! ```text
//! <registry>/<model>/<version>/manifest.json
//! <registry>/<model>/<version>/model.pt
//! <registry>/<model>/<version>/online/*.parquet
//! <registry>/<model>/aliases.json        {"production": 3, "staging": 4}
//! <registry>/<model>/alias_history.json  every alias move, oldest first
//! ```
//!
//! Writes never show a half-written state: a version is staged in a hidden
//! folder and renamed to its number (a rename fails if another writer took
//! that number, and the next one is tried); alias files are written to a
//! temporary name and renamed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What can go wrong reading or writing the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such model, version or alias.
    #[error("{0}")]
    NotFound(String),
    /// A registry file is missing, unreadable or malformed.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result with [`RegistryError`].
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
use RegistryError as Error;

/// One input or output tensor of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Tensor name, as clients send it.
    pub name: String,
    /// KServe datatype: `FP32`, `INT64`, `INT32`, `FP64` or `BYTES`.
    pub dtype: String,
    /// Shape; -1 for a variable dimension (the batch).
    pub shape: Vec<i64>,
}

/// One feature column of the online snapshot: a bare name, or an object with
/// a `name` and details (normalisation, description) the server keeps as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Feature {
    /// Just the column name.
    Name(String),
    /// The column name and what the trainer recorded about it.
    Described {
        /// Column name in `online/users*.parquet`.
        name: String,
        /// Everything else (mean, std, description, ...).
        #[serde(flatten)]
        details: BTreeMap<String, serde_json::Value>,
    },
}

impl Feature {
    /// The snapshot column name.
    pub fn name(&self) -> &str {
        match self {
            Feature::Name(name) | Feature::Described { name, .. } => name,
        }
    }
}

/// Churn-probability thresholds of the risk tiers (on the longest horizon).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RiskTiers {
    /// At or above: `high`.
    pub high: f32,
    /// At or above (and below `high`): `medium`; below: `low`.
    pub medium: f32,
}

impl Default for RiskTiers {
    fn default() -> Self {
        Self {
            high: 0.7,
            medium: 0.3,
        }
    }
}

impl RiskTiers {
    /// The tier name of probability `p`: `high`, `medium` or `low`.
    pub fn tier(&self, p: f32) -> &'static str {
        if p >= self.high {
            "high"
        } else if p >= self.medium {
            "medium"
        } else {
            "low"
        }
    }
}

/// What the registry says about one model version (`manifest.json`). Fields
/// beyond these (metrics, training job, data, cutoff, ...) are kept but not
/// needed for serving.
///
/// `inputs` and `outputs` describe the TorchScript `forward`; for the `churn`
/// and `recommend` kinds the server wraps them in the contracts of DESIGN.md
/// (see [`crate::contract`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model name.
    pub name: String,
    /// Integer version.
    pub version: u64,
    /// Model kind, e.g. `churn` or `recommend`.
    #[serde(default)]
    pub kind: String,
    /// Inputs, in the order the TorchScript `forward` takes them.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in the order `forward` returns them (a tuple for several).
    pub outputs: Vec<TensorSpec>,
    /// Snapshot columns the feature input takes, in order (churn and recommend kinds).
    #[serde(default)]
    pub features: Vec<Feature>,
    /// Population prior per output (e.g. `churn_30d` → training base rate),
    /// served for users missing from the snapshot.
    #[serde(default)]
    pub prior: BTreeMap<String, f32>,
    /// Risk tier thresholds (churn kind).
    #[serde(default)]
    pub risk_tiers: RiskTiers,
    /// Device vocabulary of the recommend kind: device `devices[i]` is passed
    /// to the model as `i + 1`; 0 means unknown.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Number of items the recommend model ranks (caps `k`).
    #[serde(default)]
    pub catalogue_size: Option<i64>,
    /// Everything else in the manifest.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A registry on the local file system.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

impl Registry {
    /// The registry rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Model names (folders holding at least one version).
    pub fn models(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.root).map_err(|e| Error::Invalid {
            path: self.root.clone(),
            reason: e.to_string(),
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|name| self.versions(name).is_ok_and(|v| !v.is_empty()))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Versions of `model`, ascending.
    pub fn versions(&self, model: &str) -> Result<Vec<u64>> {
        let dir = self.root.join(model);
        let entries = std::fs::read_dir(&dir)
            .map_err(|_| Error::NotFound(format!("model '{model}' is not in the registry")))?;
        let mut versions: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("manifest.json").is_file())
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// `aliases.json` of `model` (empty when absent).
    pub fn aliases(&self, model: &str) -> Result<BTreeMap<String, u64>> {
        let path = self.root.join(model).join("aliases.json");
        if path.exists() {
            read_json(&path)
        } else {
            Ok(BTreeMap::new())
        }
    }

    /// Resolves a version selector: empty (the `production` alias, else the
    /// newest version), an alias name, or a version number.
    pub fn resolve(&self, model: &str, selector: &str) -> Result<u64> {
        let versions = self.versions(model)?;
        let aliases = self.aliases(model)?;
        let version = if selector.is_empty() {
            aliases
                .get("production")
                .copied()
                .or_else(|| versions.last().copied())
        } else if let Ok(n) = selector.parse::<u64>() {
            Some(n)
        } else {
            Some(*aliases.get(selector).ok_or_else(|| {
                Error::NotFound(format!("model '{model}' has no alias '{selector}'"))
            })?)
        };
        match version {
            Some(v) if versions.contains(&v) => Ok(v),
            Some(v) => Err(Error::NotFound(format!(
                "model '{model}' has no version {v} (versions: {versions:?})"
            ))),
            None => Err(Error::NotFound(format!("model '{model}' has no versions"))),
        }
    }

    /// The folder of one version.
    pub fn version_dir(&self, model: &str, version: u64) -> PathBuf {
        self.root.join(model).join(version.to_string())
    }

    /// The manifest of one version, checked against the folder it is in.
    pub fn manifest(&self, model: &str, version: u64) -> Result<Manifest> {
        let path = self.version_dir(model, version).join("manifest.json");
        let manifest: Manifest = read_json(&path)?;
        if manifest.name != model || manifest.version != version {
            return Err(Error::Invalid {
                path,
                reason: format!(
                    "manifest says {}:{}, but it is stored as {model}:{version}",
                    manifest.name, manifest.version
                ),
            });
        }
        if manifest.inputs.is_empty() || manifest.outputs.is_empty() {
            return Err(Error::Invalid {
                path,
                reason: "a manifest needs at least one input and one output".into(),
            });
        }
        Ok(manifest)
    }
}

/// One alias move, as `alias_history.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasMove {
    /// The alias.
    pub alias: String,
    /// The version it pointed at before (None: it did not exist).
    pub from: Option<u64>,
    /// The version it points at now.
    pub to: u64,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Why: `promote`, `rollback`, `auto-promote` (training) or `set`.
    pub reason: String,
}

/// `text` to `path` through a temporary file in the same folder and a rename.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let io = |e: std::io::Error| Error::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A model name must be a plain folder name: `[a-z0-9][a-z0-9_-]{0,63}`.
pub fn check_model_name(name: &str) -> Result<()> {
    encore_common::names::check_model_name(name).map_err(Error::NotFound)
}

impl Registry {
    /// The registry's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh hidden folder to stage a new version of `model` in; pass it
    /// to [`Registry::publish`] once every file is written.
    pub fn stage(&self, model: &str) -> Result<PathBuf> {
        check_model_name(model)?;
        let dir = self.root.join(model).join(format!(
            ".staging-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| Error::Invalid {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        Ok(dir)
    }

    /// Makes a staged folder the next version of `model`: writes
    /// `manifest` (its `name` and `version` set here) into it and renames it
    /// to the version number. Returns the version.
    pub fn publish(&self, model: &str, staged: &Path, manifest: &Manifest) -> Result<u64> {
        check_model_name(model)?;
        if !staged.join("model.pt").is_file() {
            return Err(Error::Invalid {
                path: staged.join("model.pt"),
                reason: "a version needs its model.pt before it is published".into(),
            });
        }
        let io = |path: &Path, e: std::io::Error| Error::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        for _ in 0..100 {
            let version = self
                .versions(model)
                .unwrap_or_default()
                .last()
                .map_or(1, |v| v + 1);
            let mut manifest = manifest.clone();
            manifest.name = model.to_owned();
            manifest.version = version;
            let text = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Invalid {
                path: staged.join("manifest.json"),
                reason: e.to_string(),
            })?;
            write_atomic(&staged.join("manifest.json"), &text)?;
            let target = self.version_dir(model, version);
            // rename(2) onto an existing non-empty folder fails: another
            // writer took this number, so try the next.
            match std::fs::rename(staged, &target) {
                Ok(()) => return Ok(version),
                Err(_) if target.exists() => continue,
                Err(e) => return Err(io(&target, e)),
            }
        }
        Err(Error::Invalid {
            path: self.root.join(model),
            reason: "could not claim a version number after 100 tries".into(),
        })
    }

    /// Every alias move of `model`, oldest first.
    pub fn alias_history(&self, model: &str) -> Result<Vec<AliasMove>> {
        let path = self.root.join(model).join("alias_history.json");
        if path.exists() {
            read_json(&path)
        } else {
            Ok(Vec::new())
        }
    }

    /// Points `alias` of `model` at `version` (which must exist) and records
    /// the move. Returns the version it pointed at before.
    pub fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: u64,
        reason: &str,
    ) -> Result<Option<u64>> {
        check_model_name(model)?;
        if alias.is_empty() || alias.parse::<u64>().is_ok() {
            return Err(Error::NotFound(format!(
                "invalid alias '{alias}': a name that is not a number"
            )));
        }
        let versions = self.versions(model)?;
        if !versions.contains(&version) {
            return Err(Error::NotFound(format!(
                "model '{model}' has no version {version} (versions: {versions:?})"
            )));
        }
        let mut aliases = self.aliases(model)?;
        let from = aliases.insert(alias.to_owned(), version);
        let mut history = self.alias_history(model)?;
        history.push(AliasMove {
            alias: alias.to_owned(),
            from,
            to: version,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            reason: reason.to_owned(),
        });
        write_atomic(
            &self.root.join(model).join("alias_history.json"),
            &pretty(&history),
        )?;
        write_atomic(
            &self.root.join(model).join("aliases.json"),
            &pretty(&aliases),
        )?;
        Ok(from)
    }

    /// Moves `alias` back to the version it pointed at before its last move
    /// (MLflow-style rollback). Returns (from, to).
    pub fn rollback(&self, model: &str, alias: &str) -> Result<(u64, u64)> {
        let aliases = self.aliases(model)?;
        let current = *aliases
            .get(alias)
            .ok_or_else(|| Error::NotFound(format!("model '{model}' has no alias '{alias}'")))?;
        let previous = self
            .alias_history(model)?
            .iter()
            .rev()
            .find(|m| m.alias == alias && m.to == current && m.from.is_some())
            .and_then(|m| m.from)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "alias '{alias}' of model '{model}' has no earlier version to roll back to"
                ))
            })?;
        self.set_alias(model, alias, previous, "rollback")?;
        Ok((current, previous))
    }
}

/// Pretty JSON of a small value (alias files).
fn pretty<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_version(root: &Path, model: &str, version: u64) {
        let dir = root.join(model).join(version.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = serde_json::json!({
            "name": model, "version": version, "kind": "churn",
            "inputs": [{"name": "features", "dtype": "FP32", "shape": [-1, 3]}],
            "outputs": [{"name": "churn_30d", "dtype": "FP32", "shape": [-1]}],
            "metrics": {"auc": 0.8},
        });
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    }

    #[test]
    fn resolves_aliases_numbers_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path());
        write_version(dir.path(), "churn", 1);
        write_version(dir.path(), "churn", 2);
        assert_eq!(registry.models().unwrap(), vec!["churn"]);
        assert_eq!(registry.resolve("churn", "").unwrap(), 2);
        std::fs::write(
            dir.path().join("churn/aliases.json"),
            r#"{"production": 1}"#,
        )
        .unwrap();
        assert_eq!(registry.resolve("churn", "").unwrap(), 1);
        assert_eq!(registry.resolve("churn", "2").unwrap(), 2);
        assert_eq!(registry.resolve("churn", "production").unwrap(), 1);
        let err = registry
            .resolve("churn", "staging")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no alias 'staging'"), "{err}");
        let err = registry.resolve("churn", "9").unwrap_err().to_string();
        assert!(err.contains("no version 9"), "{err}");
        assert!(matches!(
            registry.resolve("nope", ""),
            Err(RegistryError::NotFound(_))
        ));
        let m = registry.manifest("churn", 2).unwrap();
        assert_eq!(m.inputs[0].shape, vec![-1, 3]);
        assert!(m.extra.contains_key("metrics"));
    }

    #[test]
    fn a_misfiled_manifest_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_version(dir.path(), "churn", 1);
        std::fs::rename(dir.path().join("churn/1"), dir.path().join("churn/5")).unwrap();
        let err = Registry::new(dir.path())
            .manifest("churn", 5)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("manifest.json") && err.contains("churn:1"),
            "{err}"
        );
    }

    fn staged(registry: &Registry) -> PathBuf {
        let dir = registry.stage("churn").unwrap();
        std::fs::write(dir.join("model.pt"), b"weights").unwrap();
        dir
    }

    fn manifest() -> Manifest {
        serde_json::from_value(serde_json::json!({
            "name": "", "version": 0, "kind": "churn",
            "inputs": [{"name": "features", "dtype": "FP32", "shape": [-1, 3]}],
            "outputs": [{"name": "churn_30d", "dtype": "FP32", "shape": [-1]}],
        }))
        .unwrap()
    }

    #[test]
    fn publishing_numbers_versions_and_aliases_move_and_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path());
        // Nothing staged is visible as a version.
        let first = staged(&registry);
        assert!(registry.versions("churn").unwrap().is_empty());
        assert_eq!(registry.publish("churn", &first, &manifest()).unwrap(), 1);
        assert_eq!(
            registry
                .publish("churn", &staged(&registry), &manifest())
                .unwrap(),
            2
        );
        assert_eq!(registry.versions("churn").unwrap(), vec![1, 2]);
        assert_eq!(registry.manifest("churn", 2).unwrap().version, 2);
        // A staged folder without model.pt is refused.
        let empty = registry.stage("churn").unwrap();
        assert!(registry.publish("churn", &empty, &manifest()).is_err());

        assert_eq!(
            registry
                .set_alias("churn", "production", 1, "promote")
                .unwrap(),
            None
        );
        assert_eq!(
            registry
                .set_alias("churn", "production", 2, "promote")
                .unwrap(),
            Some(1)
        );
        assert_eq!(registry.resolve("churn", "production").unwrap(), 2);
        assert_eq!(registry.rollback("churn", "production").unwrap(), (2, 1));
        assert_eq!(registry.resolve("churn", "production").unwrap(), 1);
        let history = registry.alias_history("churn").unwrap();
        assert_eq!(history.len(), 3);
        assert_eq!(history[2].reason, "rollback");
        // Bad requests name what is wrong.
        let err = registry
            .set_alias("churn", "production", 9, "promote")
            .unwrap_err();
        assert!(err.to_string().contains("no version 9"), "{err}");
        assert!(
            registry
                .set_alias("Bad Name", "production", 1, "x")
                .is_err()
        );
        let err = registry.rollback("churn", "staging").unwrap_err();
        assert!(err.to_string().contains("no alias 'staging'"), "{err}");
    }
}
