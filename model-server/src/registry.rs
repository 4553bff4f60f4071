//! Reading the model registry: manifests, aliases and versions.
//!
//! ```text
//! <registry>/<model>/<version>/manifest.json
//! <registry>/<model>/<version>/model.pt
//! <registry>/<model>/aliases.json      {"production": 3, "staging": 4}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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
    let text = std::fs::read_to_string(path).map_err(|e| Error::Registry {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Registry {
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
        let entries = std::fs::read_dir(&self.root).map_err(|e| Error::Registry {
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
            return Err(Error::Registry {
                path,
                reason: format!(
                    "manifest says {}:{}, but it is stored as {model}:{version}",
                    manifest.name, manifest.version
                ),
            });
        }
        if manifest.inputs.is_empty() || manifest.outputs.is_empty() {
            return Err(Error::Registry {
                path,
                reason: "a manifest needs at least one input and one output".into(),
            });
        }
        Ok(manifest)
    }
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
            Err(Error::NotFound(_))
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
}
