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
//! The registry is a local folder (the default) or an object store
//! (`s3://bucket/prefix`, see [`object`]); [`Registry::open`] takes either.
//!
//! Writes never show a half-written state. On a file system a version is
//! staged in a hidden folder and renamed to its number (a rename fails if
//! another writer took that number, and the next one is tried); alias files
//! are updated under an exclusive lock on a hidden `.<file>.lock` beside
//! them, written to a temporary name and renamed. On an object store a
//! writer claims the number with a conditional put and writes the manifest
//! last, and alias files are rewritten with conditional puts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod object;
pub use object::ObjectRegistry;

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
/// (see `encore_model_server::contract`).
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

/// A model registry: a local folder or an object store.
#[derive(Debug, Clone)]
pub struct Registry {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Local(PathBuf),
    Object(ObjectRegistry),
}

impl Registry {
    /// The registry in the local folder `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            backend: Backend::Local(root.into()),
        }
    }

    /// The registry at `location`: a folder, a `file://` URL, or
    /// `s3://bucket/prefix` (credentials and endpoint from the `AWS_*`
    /// environment variables; versions are cached locally, see [`object`]).
    pub fn open(location: &str) -> Result<Self> {
        match location.split_once("://") {
            None => Ok(Self::new(location)),
            Some(("file", path)) => Ok(Self::new(path)),
            Some(("s3" | "s3a", _)) => Ok(Self::object(ObjectRegistry::s3(location)?)),
            Some((scheme, _)) => Err(Error::Invalid {
                path: PathBuf::from(location),
                reason: format!(
                    "{scheme}:// registries are not supported: use a folder, file:// or s3://"
                ),
            }),
        }
    }

    /// The registry in an object store.
    pub fn object(registry: ObjectRegistry) -> Self {
        Self {
            backend: Backend::Object(registry),
        }
    }

    /// The object store behind the registry, if it is not a local folder.
    pub fn as_object(&self) -> Option<&ObjectRegistry> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Object(store) => Some(store),
        }
    }

    /// Where the registry is: its folder or URL.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Local(root) => root.display().to_string(),
            Backend::Object(store) => store.url().to_owned(),
        }
    }

    /// `rel` (a `/`-separated path in the registry) as users see it.
    fn describe(&self, rel: &str) -> PathBuf {
        match &self.backend {
            Backend::Local(root) => root.join(rel),
            Backend::Object(store) => store.describe(rel),
        }
    }

    /// The bytes of registry file `rel`, or None if it does not exist.
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match &self.backend {
            Backend::Local(root) => match std::fs::read(root.join(rel)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::Invalid {
                    path: root.join(rel),
                    reason: e.to_string(),
                }),
            },
            Backend::Object(store) => store.read(rel),
        }
    }

    /// Registry file `rel` parsed as JSON; None if it does not exist.
    fn read_json<T: for<'de> Deserialize<'de>>(&self, rel: &str) -> Result<Option<T>> {
        let Some(bytes) = self.read(rel)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Invalid {
                path: self.describe(rel),
                reason: e.to_string(),
            })
    }

    /// Model names (folders holding at least one version).
    pub fn models(&self) -> Result<Vec<String>> {
        let candidates = match &self.backend {
            Backend::Local(root) => std::fs::read_dir(root)
                .map_err(|e| Error::Invalid {
                    path: root.clone(),
                    reason: e.to_string(),
                })?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect(),
            Backend::Object(store) => store.model_names()?,
        };
        let mut names: Vec<String> = candidates
            .into_iter()
            .filter(|name| self.versions(name).is_ok_and(|v| !v.is_empty()))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Versions of `model`, ascending.
    pub fn versions(&self, model: &str) -> Result<Vec<u64>> {
        let root = match &self.backend {
            Backend::Local(root) => root,
            Backend::Object(store) => return store.versions(model),
        };
        let entries = std::fs::read_dir(root.join(model))
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
        Ok(self
            .read_json(&format!("{model}/aliases.json"))?
            .unwrap_or_default())
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

    /// The local folder of one version: in the registry itself, or for an
    /// object store the cache folder [`Registry::fetch`] fills.
    pub fn version_dir(&self, model: &str, version: u64) -> PathBuf {
        match &self.backend {
            Backend::Local(root) => root.join(model).join(version.to_string()),
            Backend::Object(store) => store.cache_dir(model, version),
        }
    }

    /// A local folder with every file of one version (for an object store,
    /// downloaded into the cache on first use).
    pub fn fetch(&self, model: &str, version: u64) -> Result<PathBuf> {
        match &self.backend {
            Backend::Local(_) => Ok(self.version_dir(model, version)),
            Backend::Object(store) => store.fetch(model, version),
        }
    }

    /// Drops the local copy of one version that [`fetch`](Self::fetch)
    /// downloaded from an object store (it is fetched again if needed);
    /// true if there was one. A file-system registry keeps its versions:
    /// false.
    pub fn evict(&self, model: &str, version: u64) -> Result<bool> {
        match &self.backend {
            Backend::Local(_) => Ok(false),
            Backend::Object(store) => store.evict(model, version),
        }
    }

    /// The manifest of one version, checked against the folder it is in.
    pub fn manifest(&self, model: &str, version: u64) -> Result<Manifest> {
        let rel = format!("{model}/{version}/manifest.json");
        let path = self.describe(&rel);
        let manifest: Manifest = self.read_json(&rel)?.ok_or_else(|| Error::Invalid {
            path: path.clone(),
            reason: "no such file".into(),
        })?;
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

/// `text` to `path` atomically ([`encore_common::fs::write_atomic`]).
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    encore_common::fs::write_atomic(path, text).map_err(|e| Error::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// `.<file name>.<suffix>` in `path`'s folder (created if missing): the
/// hidden sibling of a registry file that [`lock_beside`] locks.
fn beside(path: &Path, suffix: &str) -> std::io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    Ok(dir.join(format!(".{name}.{suffix}")))
}

/// An exclusive lock on `.<name>.lock` beside `path`, held until the file
/// handle is dropped (blocks while another thread or process holds it).
fn lock_beside(path: &Path) -> Result<std::fs::File> {
    let io = |e: std::io::Error| Error::Invalid {
        path: path.to_path_buf(),
        reason: format!("locking for an update: {e}"),
    };
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(beside(path, "lock").map_err(io)?)
        .map_err(io)?;
    lock.lock().map_err(io)?;
    Ok(lock)
}

/// `location` made independent of the working directory: URLs as they
/// are, a folder (or `file://` URL) as an absolute path.
pub fn absolute_location(location: &str) -> std::io::Result<String> {
    match location.split_once("://") {
        Some(("file", path)) => Ok(std::path::absolute(path)?.display().to_string()),
        Some(_) => Ok(location.to_owned()),
        None => Ok(std::path::absolute(location)?.display().to_string()),
    }
}

/// Whether `location` names a registry outside the local file system.
pub fn is_remote(location: &str) -> bool {
    location.contains("://") && !location.starts_with("file://")
}

/// A name no other writer uses at the same time: `prefix-<pid>-<nanos>`.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    )
}

/// A model name must be a plain folder name: `[a-z0-9][a-z0-9_-]{0,63}`.
pub fn check_model_name(name: &str) -> Result<()> {
    encore_common::names::check_model_name(name).map_err(Error::NotFound)
}

impl Registry {
    /// A fresh hidden local folder to stage a new version of `model` in;
    /// pass it to [`Registry::publish`] once every file is written.
    pub fn stage(&self, model: &str) -> Result<PathBuf> {
        check_model_name(model)?;
        // Beside the versions, or beside the cached copies of an object store.
        let root = match &self.backend {
            Backend::Local(root) => root,
            Backend::Object(store) => store.cache_root(),
        };
        let dir = root.join(model).join(unique(".staging"));
        std::fs::create_dir_all(&dir).map_err(|e| Error::Invalid {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        Ok(dir)
    }

    /// Makes a staged folder the next version of `model` with `manifest`
    /// (its `name` and `version` set here). On a file system the folder is
    /// renamed to the version number; on an object store it is uploaded,
    /// manifest last, and kept as the cached copy. Returns the version.
    pub fn publish(&self, model: &str, staged: &Path, manifest: &Manifest) -> Result<u64> {
        check_model_name(model)?;
        if !staged.join("model.pt").is_file() {
            return Err(Error::Invalid {
                path: staged.join("model.pt"),
                reason: "a version needs its model.pt before it is published".into(),
            });
        }
        let text = |version: u64| {
            let mut manifest = manifest.clone();
            manifest.name = model.to_owned();
            manifest.version = version;
            serde_json::to_string_pretty(&manifest).map_err(|e| Error::Invalid {
                path: staged.join("manifest.json"),
                reason: e.to_string(),
            })
        };
        if let Backend::Object(store) = &self.backend {
            return store.publish(model, staged, text);
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
            write_atomic(&staged.join("manifest.json"), &text(version)?)?;
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
            path: self.describe(model),
            reason: "could not claim a version number after 100 tries".into(),
        })
    }

    /// Every alias move of `model`, oldest first.
    pub fn alias_history(&self, model: &str) -> Result<Vec<AliasMove>> {
        Ok(self
            .read_json(&format!("{model}/alias_history.json"))?
            .unwrap_or_default())
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
        let mut from = None;
        self.update_json(
            &format!("{model}/aliases.json"),
            |aliases: &mut BTreeMap<String, u64>| {
                from = aliases.insert(alias.to_owned(), version);
            },
        )?;
        self.update_json(
            &format!("{model}/alias_history.json"),
            |history: &mut Vec<AliasMove>| {
                history.push(AliasMove {
                    alias: alias.to_owned(),
                    from,
                    to: version,
                    at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    reason: reason.to_owned(),
                });
            },
        )?;
        Ok(from)
    }

    /// Reads registry file `rel` as JSON (default when absent), applies
    /// `change` and writes it back. In an object store the write is
    /// conditional on the file being unchanged since the read (and retried
    /// if it was); in a folder the read and write hold an exclusive lock on
    /// a `.<file>.lock` beside it (flock, across threads and processes). So
    /// concurrent alias moves are never lost.
    fn update_json<T>(&self, rel: &str, mut change: impl FnMut(&mut T)) -> Result<()>
    where
        T: Default + Serialize + for<'de> Deserialize<'de>,
    {
        let path = self.describe(rel);
        let apply = |bytes: Option<&[u8]>| -> Result<String> {
            let mut value: T = match bytes {
                Some(bytes) => serde_json::from_slice(bytes).map_err(|e| Error::Invalid {
                    path: path.clone(),
                    reason: e.to_string(),
                })?,
                None => T::default(),
            };
            change(&mut value);
            Ok(pretty(&value))
        };
        match &self.backend {
            Backend::Local(root) => {
                let mut apply = apply;
                let target = root.join(rel);
                let _lock = lock_beside(&target)?;
                let text = apply(self.read(rel)?.as_deref())?;
                write_atomic(&target, &text)
            }
            Backend::Object(store) => store.update(rel, apply),
        }
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
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

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
        // A file-system registry is the versions themselves: nothing to evict.
        assert!(!registry.evict("churn", 1).unwrap());
        assert!(dir.path().join("churn/1/manifest.json").is_file());
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

    /// A registry in an in-memory object store, caching into `cache`.
    fn in_memory(store: &Arc<InMemory>, cache: &Path) -> Registry {
        Registry::object(ObjectRegistry::new(
            "memory://test/reg",
            store.clone(),
            "reg",
            cache,
        ))
    }

    #[test]
    fn publishing_numbers_versions_and_aliases_move_and_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&Registry::new(dir.path()));
        let cache = tempfile::tempdir().unwrap();
        exercise(&in_memory(&Arc::new(InMemory::new()), cache.path()));
    }

    fn exercise(registry: &Registry) {
        // Nothing staged is visible as a version.
        let first = staged(registry);
        assert!(registry.versions("churn").map_or(true, |v| v.is_empty()));
        assert_eq!(registry.publish("churn", &first, &manifest()).unwrap(), 1);
        assert_eq!(
            registry
                .publish("churn", &staged(registry), &manifest())
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

    #[test]
    fn an_object_store_registry_claims_numbers_and_fetches_whole_versions() {
        let store = Arc::new(InMemory::new());
        let writer_cache = tempfile::tempdir().unwrap();
        let writer = in_memory(&store, writer_cache.path());
        let dir = writer.stage("churn").unwrap();
        std::fs::write(dir.join("model.pt"), b"weights").unwrap();
        std::fs::create_dir_all(dir.join("online")).unwrap();
        std::fs::write(dir.join("online/users.parquet"), vec![7u8; 100_000]).unwrap();
        assert_eq!(writer.publish("churn", &dir, &manifest()).unwrap(), 1);
        assert!(!dir.exists(), "the staged folder became the cached copy");

        // A reader with an empty cache downloads the same files.
        let reader_cache = tempfile::tempdir().unwrap();
        let reader = in_memory(&store, reader_cache.path());
        assert_eq!(reader.models().unwrap(), vec!["churn"]);
        let local = reader.fetch("churn", 1).unwrap();
        assert!(local.starts_with(reader_cache.path()));
        assert_eq!(std::fs::read(local.join("model.pt")).unwrap(), b"weights");
        assert_eq!(
            std::fs::read(local.join("online/users.parquet")).unwrap(),
            vec![7u8; 100_000]
        );
        assert_eq!(reader.manifest("churn", 1).unwrap().version, 1);
        assert!(!local.join(".claim").exists());

        // Evicting drops the local copy only; the next fetch downloads it again.
        assert!(reader.evict("churn", 1).unwrap());
        assert!(!local.exists(), "the cached copy is gone");
        assert!(!reader.evict("churn", 1).unwrap(), "nothing left to evict");
        assert_eq!(
            std::fs::read_dir(local.parent().unwrap()).unwrap().count(),
            0,
            "no renamed-away folder is left behind"
        );
        assert_eq!(reader.versions("churn").unwrap(), vec![1]);
        assert_eq!(reader.fetch("churn", 1).unwrap(), local);
        assert_eq!(std::fs::read(local.join("model.pt")).unwrap(), b"weights");

        // A writer that claimed 2 but died before its manifest: 2 stays
        // invisible, is never fetched, and the next version is 3.
        let orphan = object_store::path::Path::from("reg/churn/2/.claim");
        futures::executor::block_on(store.put(&orphan, PutPayload::from_static(b"{}"))).unwrap();
        let half = object_store::path::Path::from("reg/churn/2/model.pt");
        futures::executor::block_on(store.put(&half, PutPayload::from_static(b"half"))).unwrap();
        assert_eq!(reader.versions("churn").unwrap(), vec![1]);
        assert!(matches!(
            reader.fetch("churn", 2),
            Err(RegistryError::NotFound(_))
        ));
        assert_eq!(reader.resolve("churn", "").unwrap(), 1);
        let next = staged(&writer);
        assert_eq!(writer.publish("churn", &next, &manifest()).unwrap(), 3);

        // Writers racing for numbers each get their own.
        let mut numbers: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let cache = writer_cache.path().to_path_buf();
                    let store = store.clone();
                    scope.spawn(move || {
                        let registry = in_memory(&store, &cache);
                        registry
                            .publish("churn", &staged(&registry), &manifest())
                            .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        numbers.sort_unstable();
        assert_eq!(numbers, vec![4, 5, 6, 7]);
        assert_eq!(reader.versions("churn").unwrap(), vec![1, 3, 4, 5, 6, 7]);
        for version in [4, 7] {
            assert_eq!(reader.manifest("churn", version).unwrap().version, version);
        }
        assert!(matches!(
            reader.versions("nope"),
            Err(RegistryError::NotFound(_))
        ));

        // Alias moves racing each other are all kept (conditional writes).
        std::thread::scope(|scope| {
            for t in 0..8 {
                let registry = in_memory(&store, writer_cache.path());
                scope.spawn(move || {
                    registry
                        .set_alias("churn", &format!("canary-{t}"), 3, "set")
                        .unwrap()
                });
            }
        });
        let aliases = reader.aliases("churn").unwrap();
        assert_eq!(aliases.len(), 8, "{aliases:?}");
        assert!(aliases.values().all(|&v| v == 3));
        assert_eq!(reader.alias_history("churn").unwrap().len(), 8);
    }

    #[test]
    fn racing_alias_moves_in_a_folder_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path());
        registry
            .publish("churn", &staged(&registry), &manifest())
            .unwrap();
        // Separate handles, as separate processes would have.
        std::thread::scope(|scope| {
            for t in 0..8 {
                let registry = Registry::new(dir.path());
                scope.spawn(move || {
                    for round in 0..5 {
                        registry
                            .set_alias("churn", &format!("canary-{t}-{round}"), 1, "set")
                            .unwrap();
                    }
                });
            }
        });
        let aliases = registry.aliases("churn").unwrap();
        assert_eq!(aliases.len(), 40, "{aliases:?}");
        assert_eq!(registry.alias_history("churn").unwrap().len(), 40);
        // Only the lock files are left beside the alias files.
        let mut hidden: Vec<String> = std::fs::read_dir(dir.path().join("churn"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        hidden.sort();
        assert_eq!(hidden, [".alias_history.json.lock", ".aliases.json.lock"]);
    }

    #[test]
    fn locations_open_the_right_backend_or_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let local = Registry::open(&dir.path().display().to_string()).unwrap();
        assert_eq!(local.location(), dir.path().display().to_string());
        let url = format!("file://{}", dir.path().display());
        assert_eq!(
            Registry::open(&url).unwrap().location(),
            dir.path().display().to_string()
        );
        assert_eq!(
            Registry::open("s3://bucket/a/b/").unwrap().location(),
            "s3://bucket/a/b"
        );
        let err = Registry::open("gs://bucket/x").unwrap_err().to_string();
        assert!(err.contains("gs:// registries are not supported"), "{err}");
        let err = Registry::open("s3:///x").unwrap_err().to_string();
        assert!(err.contains("needs a bucket"), "{err}");
        assert!(is_remote("s3://b/x") && !is_remote("file:///x") && !is_remote("rel/x"));
        assert_eq!(absolute_location("s3://b/x").unwrap(), "s3://b/x");
        assert!(absolute_location("rel").unwrap().starts_with('/'));
    }
}
