//! The models being served: one [`Deployment`] per model name, each with one
//! or more routes (the A/B variants, each following an alias or a version)
//! and an optional shadow. [`ModelStore::poll`] re-resolves every route's
//! selector against the registry and swaps in new versions: requests that
//! already hold the old version finish on it, new ones go to the new one,
//! so no request fails during a swap.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tch::Device;
use tracing::{info, warn};

use crate::batcher::{BatchConfig, BatchMetrics};
use crate::error::{Error, Result};
use crate::metrics::ServerMetrics;
use crate::model::ServedModel;
use crate::registry::Registry;

/// A traffic split for one model: variants by weight, and an optional shadow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// (version selector, weight): an alias or a version number each; a
    /// request goes to a variant by a stable hash of its user id.
    pub variants: Vec<(String, u32)>,
    /// A version selector that gets a copy of every request routed by the
    /// split; its answers are measured and dropped.
    pub shadow: Option<String>,
}

impl Split {
    /// Parses `production:90,staging:10` (weights optional: equal when
    /// omitted) and an optional shadow selector.
    pub fn parse(text: &str, shadow: Option<String>) -> Result<Self> {
        let mut variants = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (selector, weight) = match part.split_once(':') {
                Some((s, w)) => {
                    let weight = w.trim().parse::<u32>().map_err(|_| {
                        Error::InvalidArgument(format!(
                            "split '{text}': weight '{w}' of '{s}' is not a whole number"
                        ))
                    })?;
                    (s.trim().to_owned(), weight)
                }
                None => (part.to_owned(), 1),
            };
            if selector.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "split '{text}': a variant has no alias or version"
                )));
            }
            variants.push((selector, weight));
        }
        if variants.iter().map(|v| v.1).sum::<u32>() == 0 {
            return Err(Error::InvalidArgument(format!(
                "split '{text}' needs at least one variant with a weight above 0"
            )));
        }
        Ok(Self { variants, shadow })
    }
}

/// How the store loads and routes models.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Batching and instances per loaded version.
    pub batch: BatchConfig,
    /// A/B splits by model name; models without one follow their
    /// `production` alias (else their newest version).
    pub splits: HashMap<String, Split>,
    /// Where models run.
    pub device: Device,
    /// Score a recommend module's items with the server's exact item index
    /// when the module exports `user_vectors` and `items` (CPU only).
    pub item_index: bool,
}

struct Route {
    selector: String,
    /// Variant label reported to clients and in metrics ("" without a split).
    variant: String,
    weight: u32,
    current: RwLock<Arc<ServedModel>>,
    /// Holds back retries of a version that failed to load here.
    backoff: LoadBackoff,
}

impl Route {
    fn model(&self) -> Arc<ServedModel> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The last version a route's alias moved to that failed to load.
/// Registry versions never change, so only a transient cause (an
/// unreachable object store, a full disk) can clear: the poller skips twice
/// as many polls after each failure of the same version (1, 3, 7, … up to
/// 63) instead of downloading and loading it again on every poll. A version
/// it has not failed on is tried at once.
#[derive(Default)]
struct LoadBackoff(Mutex<Option<FailedLoad>>);

struct FailedLoad {
    version: u64,
    failures: u32,
    /// Polls still to skip before the next try.
    skip: u32,
}

impl LoadBackoff {
    /// Whether this poll should try to load `version`.
    fn should_try(&self, version: u64) -> bool {
        let mut failed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match failed.as_mut() {
            Some(f) if f.version == version && f.skip > 0 => {
                f.skip -= 1;
                false
            }
            _ => true,
        }
    }

    /// Records a failed load of `version`; returns the polls it will skip.
    fn failed(&self, version: u64) -> u32 {
        let mut failed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let failures = match failed.as_ref() {
            Some(f) if f.version == version => f.failures + 1,
            _ => 1,
        };
        let skip = (1u32 << failures.min(6)) - 1;
        *failed = Some(FailedLoad {
            version,
            failures,
            skip,
        });
        skip
    }

    fn loaded(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The routes of one model.
pub struct Deployment {
    name: String,
    routes: Vec<Route>,
    shadow: Option<Route>,
    total_weight: u64,
}

/// The version chosen for one request.
pub struct Selection {
    /// The version that serves it.
    pub model: Arc<ServedModel>,
    /// The A/B variant ("" when no split applied).
    pub variant: String,
    /// A version that should get a copy of the request.
    pub shadow: Option<Arc<ServedModel>>,
}

/// A stable 64-bit mix of a routing key (SplitMix64's finaliser).
pub fn stable_hash(key: u64) -> u64 {
    let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Deployment {
    /// The model name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every version loaded for this model (routes, then shadow).
    pub fn versions(&self) -> Vec<Arc<ServedModel>> {
        self.routes
            .iter()
            .chain(&self.shadow)
            .map(Route::model)
            .collect()
    }

    /// The version numbers [`versions`](Self::versions) serves.
    pub fn version_numbers(&self) -> Vec<u64> {
        self.versions().iter().map(|m| m.manifest.version).collect()
    }

    /// The version for a request: `selector` empty → the split (by
    /// `routing_key`) or the single route; an alias or number → that loaded
    /// version, bypassing the split.
    pub fn select(
        &self,
        selector: &str,
        routing_key: u64,
        registry: &Registry,
    ) -> Result<Selection> {
        if selector.is_empty() {
            let mut point = stable_hash(routing_key) % self.total_weight.max(1);
            let route = self
                .routes
                .iter()
                .find(|r| {
                    let hit = point < u64::from(r.weight);
                    point = point.saturating_sub(u64::from(r.weight));
                    hit
                })
                .unwrap_or(&self.routes[0]);
            return Ok(Selection {
                model: route.model(),
                variant: route.variant.clone(),
                shadow: self.shadow.as_ref().map(Route::model),
            });
        }
        let loaded = self.versions();
        if let Some(route) = self
            .routes
            .iter()
            .chain(&self.shadow)
            .find(|r| r.selector == selector)
        {
            return Ok(Selection {
                model: route.model(),
                variant: String::new(),
                shadow: None,
            });
        }
        let version = match selector.parse::<u64>() {
            Ok(v) => v,
            Err(_) => registry.resolve(&self.name, selector)?,
        };
        loaded
            .iter()
            .find(|m| m.manifest.version == version)
            .map(|m| Selection {
                model: m.clone(),
                variant: String::new(),
                shadow: None,
            })
            .ok_or_else(|| {
                let serving: Vec<u64> = loaded.iter().map(|m| m.manifest.version).collect();
                Error::NotFound(format!(
                    "version {selector} of model '{}' is not loaded (serving versions {serving:?})",
                    self.name
                ))
            })
    }
}

/// Every deployment, by model name.
pub struct ModelStore {
    /// Where versions come from.
    pub registry: Registry,
    config: StoreConfig,
    metrics: Arc<ServerMetrics>,
    deployments: RwLock<BTreeMap<String, Arc<Deployment>>>,
    /// Versions being loaded now (model, version) → loads in flight: their
    /// cached copies are not evicted under them.
    loading: Mutex<HashMap<(String, u64), usize>>,
}

/// Marks a version as being loaded while alive.
struct Loading<'a> {
    store: &'a ModelStore,
    key: (String, u64),
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        let mut loading = self.store.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = loading.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                loading.remove(&self.key);
            }
        }
    }
}

impl ModelStore {
    /// An empty store over `registry`.
    pub fn new(registry: Registry, config: StoreConfig, metrics: Arc<ServerMetrics>) -> Self {
        Self {
            registry,
            config,
            metrics,
            deployments: RwLock::default(),
            loading: Mutex::default(),
        }
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<ServerMetrics> {
        &self.metrics
    }

    /// True once at least one model is loaded.
    pub fn is_ready(&self) -> bool {
        !self.read().is_empty()
    }

    /// Names of the loaded models.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// The deployment of `name`.
    pub fn deployment(&self, name: &str) -> Result<Arc<Deployment>> {
        self.read().get(name).cloned().ok_or_else(|| {
            Error::NotFound(format!(
                "model '{name}' is not loaded (loaded: {:?})",
                self.names()
            ))
        })
    }

    /// Marks `version` of `name` as being loaded until the guard drops.
    fn loading(&self, name: &str, version: u64) -> Loading<'_> {
        let key = (name.to_string(), version);
        *self
            .loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default() += 1;
        Loading { store: self, key }
    }

    /// Loads one version (blocking: run it off the async threads).
    fn load_version(&self, name: &str, version: u64) -> Result<Arc<ServedModel>> {
        let _loading = self.loading(name, version);
        let started = Instant::now();
        let m = &self.metrics;
        let v = version.to_string();
        let batch_metrics = BatchMetrics {
            queue: m.queue_duration.with_label_values(&[name]),
            inference: m.inference_duration.with_label_values(&[name]),
            batch_size: m.batch_size.with_label_values(&[name]),
            ok: m.inferences.with_label_values(&[name, &v, "ok"]),
            failed: m.inferences.with_label_values(&[name, &v, "error"]),
            inline: m.inline_inferences.with_label_values(&[name]),
            native: m.native_inferences.with_label_values(&[name]),
        };
        let loaded = ServedModel::load(
            &self.registry,
            name,
            version,
            self.config.batch,
            batch_metrics,
            m.snapshot_misses.with_label_values(&[name]),
            self.config.device,
            self.config
                .item_index
                .then(|| m.item_index_items.with_label_values(&[name, &v])),
        );
        match loaded {
            Ok(model) => {
                m.load_duration
                    .with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
                m.load_failures.with_label_values(&[name]);
                Ok(Arc::new(model))
            }
            Err(e) => {
                m.load_failures.with_label_values(&[name]).inc();
                Err(e)
            }
        }
    }

    fn route(&self, name: &str, selector: &str, variant: &str, weight: u32) -> Result<Route> {
        let version = self.registry.resolve(name, selector)?;
        Ok(Route {
            selector: selector.to_owned(),
            variant: variant.to_owned(),
            weight,
            current: RwLock::new(self.load_version(name, version)?),
            backoff: LoadBackoff::default(),
        })
    }

    /// Loads `name` with its configured split, or following its
    /// `production` alias (else newest version); replaces a loaded one.
    /// Blocking.
    pub fn load(&self, name: &str) -> Result<Arc<Deployment>> {
        let split = self.config.splits.get(name);
        let mut routes = Vec::new();
        match split {
            Some(split) => {
                for (selector, weight) in &split.variants {
                    routes.push(self.route(name, selector, selector, *weight)?);
                }
            }
            None => routes.push(self.route(name, "", "", 1)?),
        }
        let shadow = match split.and_then(|s| s.shadow.as_deref()) {
            Some(selector) => Some(self.route(name, selector, "shadow", 0)?),
            None => None,
        };
        let deployment = Arc::new(Deployment {
            name: name.to_owned(),
            total_weight: routes.iter().map(|r| u64::from(r.weight)).sum(),
            routes,
            shadow,
        });
        let versions = deployment.version_numbers();
        info!(model = name, ?versions, "model serving");
        let replaced = {
            let mut deployments = self.write();
            let replaced = deployments.insert(name.to_owned(), deployment.clone());
            self.metrics.loaded_models.set(deployments.len() as i64);
            replaced
        };
        if let Some(old) = replaced {
            self.retire(name, old.version_numbers());
        }
        Ok(deployment)
    }

    /// Stops serving `name`; false if it was not loaded.
    pub fn unload(&self, name: &str) -> bool {
        let removed = {
            let mut deployments = self.write();
            let removed = deployments.remove(name);
            self.metrics.loaded_models.set(deployments.len() as i64);
            removed
        };
        if let Some(old) = &removed {
            self.retire(name, old.version_numbers());
        }
        removed.is_some()
    }

    /// Cleans up after those of `versions` of `name` that the deployment
    /// now in place (if any) no longer serves: drops their per-version
    /// gauges, so that dashboards summing over versions count only what
    /// serves, and evicts their local copies from an object-store
    /// registry's cache (a version loaded again is downloaded again), so
    /// that a server following frequent retrains does not fill its disk.
    fn retire(&self, name: &str, versions: Vec<u64>) {
        let kept = self
            .read()
            .get(name)
            .map(|d| d.version_numbers())
            .unwrap_or_default();
        for version in versions.into_iter().filter(|v| !kept.contains(v)) {
            let _ = self
                .metrics
                .item_index_items
                .remove_label_values(&[name, &version.to_string()]);
            // A load of this version in flight (a repository load racing
            // the alias poller) reads the cached files: keep them. The lock
            // is held through the eviction, so no load starts reading a
            // copy while it is being removed.
            let loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
            if loading.contains_key(&(name.to_string(), version)) {
                info!(
                    model = name,
                    version, "being loaded again: cached copy kept"
                );
                continue;
            }
            match self.registry.evict(name, version) {
                Ok(true) => info!(model = name, version, "evicted the cached copy"),
                Ok(false) => {}
                Err(e) => warn!(model = name, version, error = %e, "cannot evict the cached copy"),
            }
        }
    }

    /// Re-resolves every route and swaps in versions whose alias moved.
    /// Failures keep the old version serving and are logged and counted.
    /// Blocking. Returns the number of swaps.
    pub fn poll(&self) -> usize {
        let deployments: Vec<Arc<Deployment>> = self.read().values().cloned().collect();
        let mut swaps = 0;
        for deployment in deployments {
            for route in deployment.routes.iter().chain(&deployment.shadow) {
                let name = &deployment.name;
                let current = route.model().manifest.version;
                let wanted = match self.registry.resolve(name, &route.selector) {
                    Ok(v) if v != current => v,
                    Ok(_) => continue,
                    Err(e) => {
                        warn!(model = %name, selector = %route.selector, error = %e, "cannot resolve; keeping version {current}");
                        continue;
                    }
                };
                if !route.backoff.should_try(wanted) {
                    continue;
                }
                match self.load_version(name, wanted) {
                    Ok(model) => {
                        route.backoff.loaded();
                        *route.current.write().unwrap_or_else(|p| p.into_inner()) = model;
                        // Another route (an A/B variant) may still serve it.
                        self.retire(name, vec![current]);
                        self.metrics.version_swaps.with_label_values(&[name]).inc();
                        info!(model = %name, from = current, to = wanted, variant = %route.variant, "version swapped");
                        swaps += 1;
                    }
                    Err(e) => {
                        let skip = route.backoff.failed(wanted);
                        warn!(model = %name, version = wanted, error = %e, "cannot load; keeping version {current}; next try after {skip} more polls");
                        // Nothing of the failed version stays behind (its
                        // per-version gauge, its cached copy).
                        self.retire(name, vec![wanted]);
                    }
                }
            }
        }
        swaps
    }

    /// Polls every `interval` until the store is dropped.
    pub fn spawn_poller(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(store) = store.upgrade() else { return };
                if tokio::task::spawn_blocking(move || store.poll())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Deployment>>> {
        self.deployments.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Deployment>>> {
        self.deployments.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_models::registry::object::ObjectRegistry;
    use object_store::memory::InMemory;

    #[test]
    fn a_version_that_failed_to_load_is_retried_after_doubling_waits() {
        let backoff = LoadBackoff::default();
        assert!(backoff.should_try(2));
        let tries = |backoff: &LoadBackoff, version| {
            (0..20)
                .map(|_| backoff.should_try(version))
                .position(|t| t)
                .expect("tried within 20 polls")
        };
        // After the n-th failure of one version, 2^n - 1 polls pass it by.
        for (failure, skipped) in [(1, 1), (2, 3), (3, 7), (4, 15)] {
            assert_eq!(backoff.failed(2), skipped, "failure {failure}");
            assert_eq!(tries(&backoff, 2), skipped as usize, "failure {failure}");
        }
        for _ in 0..6 {
            backoff.failed(2);
        }
        assert_eq!(backoff.failed(2), 63, "the wait stops doubling");
        // Another version is tried at once and starts its own count.
        assert!(backoff.should_try(3));
        assert_eq!(backoff.failed(3), 1);
        // A success forgets the failure.
        backoff.loaded();
        assert!(backoff.should_try(3));
    }

    #[test]
    fn a_version_being_loaded_keeps_its_cached_copy() {
        let cache = tempfile::tempdir().unwrap();
        let registry = Registry::object(ObjectRegistry::new(
            "memory://test/reg",
            Arc::new(InMemory::new()),
            "reg",
            cache.path(),
        ));
        let store = ModelStore::new(
            registry,
            StoreConfig {
                batch: BatchConfig::default(),
                splits: HashMap::new(),
                device: Device::Cpu,
                item_index: false,
            },
            Arc::new(ServerMetrics::new().unwrap()),
        );
        let copy = cache.path().join("churn").join("1");
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::write(copy.join("model.pt"), b"weights").unwrap();
        let first = store.loading("churn", 1);
        let second = store.loading("churn", 1);
        store.retire("churn", vec![1]);
        assert!(copy.join("model.pt").is_file(), "evicted under a load");
        drop(first);
        store.retire("churn", vec![1]);
        assert!(
            copy.join("model.pt").is_file(),
            "evicted under the second load"
        );
        drop(second);
        assert!(store.loading.lock().unwrap().is_empty());
        store.retire("churn", vec![1]);
        assert!(!copy.exists(), "not evicted once no load was in flight");
    }
}
