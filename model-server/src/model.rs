//! One model version being served: manifest, contract, online snapshot and
//! its batcher, with the contract-level operations (score churn for user
//! ids, recommend) that the KServe, typed and Flight front ends share.

use std::collections::HashSet;
use std::time::Instant;

use prometheus::{IntCounter, IntGauge};
use tch::{Device, IValue, Kind, Tensor};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::batcher::{BatchConfig, BatchMetrics, Batcher, FloatOutputs, Outputs, Signature};
use crate::contract::{Contract, MAX_K};
use crate::error::{Error, Result};
use crate::native::Plan;
use crate::registry::{Manifest, Registry};
use crate::retrieval::Retrieval;
use crate::snapshot::Snapshot;

/// A loaded model version.
pub struct ServedModel {
    /// Its manifest.
    pub manifest: Manifest,
    /// How clients see it.
    pub contract: Contract,
    /// Per-user features and popular items.
    pub snapshot: Snapshot,
    batcher: Batcher,
    snapshot_misses: IntCounter,
    /// The model compiled to native code, for requests of at most
    /// `native_max_rows` rows (churn models that compile and match libtorch).
    native: Option<Plan>,
    native_max_rows: usize,
}

/// Churn scores of a list of users, one entry per user in request order.
pub struct ChurnScores {
    /// Per model output (horizon), the probabilities.
    pub horizons: Vec<Vec<f32>>,
    /// True where the user is not in the snapshot (prior served).
    pub fallback: Vec<bool>,
    /// Snapshot row per user (for segments).
    pub rows: Vec<Option<usize>>,
}

/// Recommendations for one user.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendations {
    /// (item id, score), best first, at most k.
    pub items: Vec<(i64, f32)>,
    /// True for a cold start (popular items for the context).
    pub fallback: bool,
}

/// One user's recommendation request, as the contract takes it.
pub struct RecommendQuery<'a> {
    /// The user.
    pub user_id: i64,
    /// Local hour 0..=23, or -1.
    pub hour: i32,
    /// Device class ("" unknown).
    pub device: &'a str,
    /// Items that must not be returned.
    pub exclude: &'a HashSet<i64>,
}

impl<'a> RecommendQuery<'a> {
    /// One query per row of parallel user id, hour and device columns, none
    /// excluding anything (`nothing` is an empty set the queries borrow).
    pub fn rows(
        ids: &[i64],
        hours: &[i32],
        devices: &'a [String],
        nothing: &'a HashSet<i64>,
    ) -> Vec<Self> {
        ids.iter()
            .zip(hours)
            .zip(devices)
            .map(|((&user_id, &hour), device)| RecommendQuery {
                user_id,
                hour,
                device,
                exclude: nothing,
            })
            .collect()
    }
}

impl ServedModel {
    /// Loads version `version` of `name`: manifest, contract check, snapshot,
    /// and `batch.instances` copies of `model.pt` on `device`. With
    /// `item_index` (a gauge it sets to the items indexed), a recommend
    /// module that exports `user_vectors` and `items` gets its items scored
    /// by the exact [`Retrieval`] index, once that answers a probe as
    /// `forward` does.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        registry: &Registry,
        name: &str,
        version: u64,
        batch: BatchConfig,
        metrics: BatchMetrics,
        snapshot_misses: IntCounter,
        device: Device,
        item_index: Option<IntGauge>,
    ) -> Result<Self> {
        let manifest = registry.manifest(name, version)?;
        let dir = registry.fetch(name, version)?;
        let contract = Contract::of(&manifest).map_err(|e| Error::Registry {
            path: dir.join("manifest.json"),
            reason: e.to_string(),
        })?;
        let features: Vec<&str> = manifest.features.iter().map(|f| f.name()).collect();
        let snapshot = Snapshot::load(&dir, &features)?;
        let path = dir.join("model.pt");
        let label = format!("{name}:{version}");
        let load_module = || {
            tch::CModule::load_on_device(&path, device).map_err(|source| Error::Torch {
                model: label.clone(),
                source,
            })
        };
        let mut first = None;
        let mut retrieval = None;
        if let (Some(gauge), Contract::Recommend { width }, Device::Cpu) =
            (&item_index, &contract, device)
        {
            let module = load_module()?;
            retrieval = index_items(&module, &label, &snapshot, *width, &manifest);
            gauge.set(retrieval.as_ref().map_or(0, |r| r.index().len() as i64));
            first = Some(module);
        }
        // One zero row through `forward` on the serving device: an export
        // that cannot run here (a traced device, a wrong width) fails the
        // load, and an alias move to it keeps the current version, instead
        // of failing every request. A module with an item index has just
        // run `forward` on this device in the index's check (snapshot rows,
        // no hour and unknown device among them, k = 1 / 16 / 128).
        let row = |width: usize| Tensor::zeros([1, width as i64], (Kind::Float, device));
        let on_device = |v: i64| Tensor::from_slice(&[v]).to_device(device);
        let probe = match &contract {
            Contract::Churn { width, .. } => Some(vec![row(*width)]),
            // No hour (-1), unknown device (0), top 1.
            Contract::Recommend { .. } if retrieval.is_some() => None,
            Contract::Recommend { width } => {
                Some(vec![row(*width), on_device(-1), on_device(0), on_device(1)])
            }
            Contract::Generic => None,
        };
        if let Some(args) = probe {
            let module = first.take().map_or_else(load_module, Ok)?;
            let args: Vec<IValue> = args.into_iter().map(IValue::Tensor).collect();
            crate::batcher::adopt_torch_threads();
            tch::no_grad(|| module.forward_is(&args)).map_err(|e| Error::Registry {
                path: path.clone(),
                reason: format!("a one-row probe on {device:?} failed: {e}"),
            })?;
            first = Some(module);
        }
        let native = match (&contract, device) {
            (Contract::Churn { width, .. }, Device::Cpu) if batch.native_max_rows > 0 => {
                let module = first.take().map_or_else(load_module, Ok)?;
                let plan = compile_native(&path, &module, *width, &manifest, &snapshot, &label);
                first = Some(module);
                plan
            }
            _ => None,
        };
        let signature = Signature {
            batched: manifest
                .inputs
                .iter()
                .map(|s| s.shape.first() == Some(&-1))
                .collect(),
            outputs: manifest.outputs.len(),
            retrieval: retrieval.map(std::sync::Arc::new),
        };
        let batcher = Batcher::start(label.clone(), batch, signature, metrics, device, || {
            first.take().map_or_else(load_module, Ok)
        })?;
        info!(
            model = name,
            version,
            kind = %manifest.kind,
            snapshot_users = snapshot.users(),
            instances = batch.instances,
            "model version loaded"
        );
        Ok(Self {
            manifest,
            contract,
            snapshot,
            batcher,
            snapshot_misses,
            native,
            native_max_rows: batch.native_max_rows,
        })
    }

    /// `name:version`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.manifest.name, self.manifest.version)
    }

    /// Requests queued for this version now.
    pub fn queued(&self) -> usize {
        self.batcher.queued()
    }

    /// Runs `forward` on module-level `inputs` through the batcher (at once,
    /// on this thread, when it runs idle requests inline).
    pub async fn run(
        &self,
        inputs: Vec<Tensor>,
        key: u64,
        deadline: Option<Instant>,
    ) -> Result<Outputs> {
        let rows = inputs
            .iter()
            .zip(&self.manifest.inputs)
            .find(|(_, s)| s.shape.first() == Some(&-1))
            .map_or(1, |(t, _)| {
                t.size().first().copied().unwrap_or(1).max(0) as usize
            });
        if let Some(result) = self.batcher.run_inline(&inputs, rows, deadline) {
            return result;
        }
        let receiver = self.batcher.submit(inputs, rows, key, deadline)?;
        self.answer(receiver, deadline).await
    }

    /// Runs a module whose one input is a float matrix `[n, width]` on
    /// `values` (its rows, row-major) through the batcher: per output, the
    /// values of the rows as plain floats. A small request of a model with
    /// a native plan runs at once on this thread instead.
    pub async fn run_floats(
        &self,
        values: Vec<f32>,
        width: usize,
        deadline: Option<Instant>,
    ) -> Result<FloatOutputs> {
        // No rows go where libtorch answers them (a plan's shapes assume some).
        if let Some(plan) = &self.native
            && width > 0
            && !values.is_empty()
            && values.len().is_multiple_of(width)
            && values.len() / width <= self.native_max_rows
        {
            return self.batcher.run_native(plan, values, width, deadline);
        }
        if let Some(result) = self.batcher.run_inline_floats(&values, width, deadline) {
            return result;
        }
        let receiver = self.batcher.submit_floats(values, width, deadline)?;
        self.answer(receiver, deadline).await
    }

    /// The batcher's reply to one request, within its deadline.
    async fn answer<T>(
        &self,
        receiver: oneshot::Receiver<Result<T>>,
        deadline: Option<Instant>,
    ) -> Result<T> {
        let reply = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), receiver)
                .await
                .map_err(|_| {
                    Error::DeadlineExceeded(format!("deadline exceeded on model {}", self.label()))
                })?,
            None => receiver.await,
        };
        reply.map_err(|_| Error::Unavailable(format!("model {} stopped", self.label())))?
    }

    fn gather(&self, user_ids: &[i64]) -> (Vec<Option<usize>>, Vec<f32>) {
        let rows: Vec<Option<usize>> = user_ids.iter().map(|u| self.snapshot.row(*u)).collect();
        let width = self.snapshot.width();
        let known = rows.iter().flatten().count();
        let mut features = Vec::with_capacity(known * width);
        for row in rows.iter().flatten() {
            features.extend_from_slice(self.snapshot.features(*row));
        }
        let misses = (rows.len() - known) as u64;
        if misses > 0 {
            self.snapshot_misses.inc_by(misses);
        }
        (rows, features)
    }

    /// Churn probabilities for `features` rows (`[n, F]`, row-major).
    pub async fn churn_features(
        &self,
        features: Vec<f32>,
        n: usize,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>> {
        let Contract::Churn { width, .. } = self.contract else {
            return Err(self.wrong_kind("churn"));
        };
        if n == 0 {
            return Ok(vec![Vec::new(); self.manifest.outputs.len()]);
        }
        let outputs = self.run_floats(features, width, deadline).await?;
        for values in &outputs {
            if values.len() != n {
                return Err(Error::Internal(format!(
                    "model {} returned {} values in an output for {n} rows (one per row expected)",
                    self.label(),
                    values.len()
                )));
            }
        }
        Ok(outputs)
    }

    /// Churn scores of `user_ids`; users missing from the snapshot get the
    /// manifest's prior (NaN for a horizon without one).
    pub async fn churn(&self, user_ids: &[i64], deadline: Option<Instant>) -> Result<ChurnScores> {
        let (rows, features) = self.gather(user_ids);
        let known = rows.iter().flatten().count();
        let scored = self.churn_features(features, known, deadline).await?;
        let mut horizons = Vec::with_capacity(scored.len());
        for (output, values) in self.manifest.outputs.iter().zip(scored) {
            let prior = self
                .manifest
                .prior
                .get(&output.name)
                .copied()
                .unwrap_or(f32::NAN);
            let mut values = values.into_iter();
            horizons.push(
                rows.iter()
                    .map(|r| match r {
                        Some(_) => values.next().unwrap_or(f32::NAN),
                        None => prior,
                    })
                    .collect(),
            );
        }
        Ok(ChurnScores {
            horizons,
            fallback: rows.iter().map(Option::is_none).collect(),
            rows,
        })
    }

    /// The risk tier of each row from the longest horizon of per-output
    /// probabilities (`horizons[output][row]`); empty for non-churn models.
    pub fn risk_tiers(&self, horizons: &[Vec<f32>]) -> Vec<&'static str> {
        let Contract::Churn { longest, .. } = self.contract else {
            return Vec::new();
        };
        horizons
            .get(longest)
            .map(|h| {
                h.iter()
                    .map(|p| self.manifest.risk_tiers.tier(*p))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Top-`k` items for each query; unknown users get the popular items of
    /// their context. Excluded and duplicate items are never returned.
    pub async fn recommend(
        &self,
        queries: &[RecommendQuery<'_>],
        k: usize,
        deadline: Option<Instant>,
    ) -> Result<Vec<Recommendations>> {
        let Contract::Recommend { width } = self.contract else {
            return Err(self.wrong_kind("recommend"));
        };
        if k == 0 || k > MAX_K {
            return Err(Error::InvalidArgument(format!(
                "k must be between 1 and {MAX_K}, got {k}"
            )));
        }
        for q in queries {
            if !(-1..=23).contains(&q.hour) {
                return Err(Error::InvalidArgument(format!(
                    "hour must be 0 to 23, or -1 for unknown; got {}",
                    q.hour
                )));
            }
        }
        let ids: Vec<i64> = queries.iter().map(|q| q.user_id).collect();
        let (rows, features) = self.gather(&ids);
        let known: Vec<&RecommendQuery> = queries
            .iter()
            .zip(&rows)
            .filter(|(_, r)| r.is_some())
            .map(|(q, _)| q)
            .collect();
        let mut personal = Vec::new();
        if !known.is_empty() {
            let most_excluded = known.iter().map(|q| q.exclude.len()).max().unwrap_or(0);
            // Ask the model for a few more than needed so exclusions still leave
            // k; round up so requests with nearby k share batches.
            let mut module_k = (k + most_excluded).next_power_of_two().max(16);
            if let Some(size) = self.manifest.catalogue_size {
                module_k = module_k.min(size.max(1) as usize);
            }
            let n = known.len() as i64;
            let hours: Vec<i64> = known.iter().map(|q| i64::from(q.hour)).collect();
            let devices: Vec<i64> = known.iter().map(|q| self.device_index(q.device)).collect();
            let inputs = vec![
                Tensor::from_slice(&features).view([n, width as i64]),
                Tensor::from_slice(&hours),
                Tensor::from_slice(&devices),
                Tensor::from_slice(&[module_k as i64]),
            ];
            let outputs = self.run(inputs, module_k as u64, deadline).await?;
            let torch = |source| Error::Torch {
                model: self.label(),
                source,
            };
            let items = Vec::<i64>::try_from(outputs[0].to_kind(Kind::Int64).flatten(0, -1))
                .map_err(torch)?;
            let scores = Vec::<f32>::try_from(outputs[1].to_kind(Kind::Float).flatten(0, -1))
                .map_err(torch)?;
            let per_row = outputs[0].size().get(1).copied().unwrap_or(0) as usize;
            for (i, q) in known.iter().enumerate() {
                let range = i * per_row..(i + 1) * per_row;
                let pairs = items[range.clone()]
                    .iter()
                    .copied()
                    .zip(scores[range].iter().copied());
                personal.push(top_k(pairs, k, q.exclude));
            }
        }
        let mut personal = personal.into_iter();
        Ok(queries
            .iter()
            .zip(&rows)
            .map(|(q, row)| match row {
                Some(_) => Recommendations {
                    items: personal.next().unwrap_or_default(),
                    fallback: false,
                },
                None => Recommendations {
                    items: top_k(
                        self.snapshot.popular(q.hour, q.device).iter().copied(),
                        k,
                        q.exclude,
                    ),
                    fallback: true,
                },
            })
            .collect())
    }

    /// A return playlist of `k` items for `query`'s user: the songs they
    /// replayed most (a `replay_share` of the list) interleaved with songs
    /// new to them, from their favourite genres first, as the model ranks
    /// them for the context. Each item comes with its reason (`replay`,
    /// `new_in_genre`, `model`, or `popular` for a user the snapshot lacks)
    /// and its position score (1, then falling by 1/k).
    pub async fn return_playlist(
        &self,
        query: &RecommendQuery<'_>,
        k: usize,
        replay_share: f32,
        deadline: Option<Instant>,
    ) -> Result<(Vec<(i64, f32, &'static str)>, bool)> {
        if !(0.0..=1.0).contains(&replay_share) {
            return Err(Error::InvalidArgument(format!(
                "replay_share must be between 0 and 1, got {replay_share}"
            )));
        }
        let position = |items: Vec<(i64, &'static str)>| {
            items
                .into_iter()
                .enumerate()
                .map(|(i, (item, why))| (item, 1.0 - i as f32 / k as f32, why))
                .collect()
        };
        let nothing = HashSet::new();
        let returning = self.snapshot.returning(query.user_id);
        let info = returning.cloned().unwrap_or_default();
        let replays: Vec<i64> = info
            .replayed
            .iter()
            .copied()
            .filter(|i| !query.exclude.contains(i))
            .take((k as f32 * replay_share).round() as usize)
            .collect();
        // New to the user: neither played nor excluded.
        let mut exclude: HashSet<i64> = query.exclude.clone();
        exclude.extend(info.played.iter().copied());
        exclude.extend(replays.iter().copied());
        let wanted = k - replays.len();
        let ask = (wanted * 8).clamp(wanted, MAX_K);
        let ranked = self
            .recommend(
                &[RecommendQuery {
                    exclude: if wanted == 0 { &nothing } else { &exclude },
                    ..*query
                }],
                ask.max(1),
                deadline,
            )
            .await?
            .pop()
            .unwrap_or(Recommendations {
                items: Vec::new(),
                fallback: true,
            });
        if ranked.fallback {
            let items = ranked
                .items
                .into_iter()
                .take(k)
                .map(|(i, _)| (i, "popular"));
            return Ok((position(items.collect()), true));
        }
        let in_genre = |item: &i64| {
            self.snapshot
                .genre(*item)
                .is_some_and(|g| info.genres.iter().any(|f| f == g))
        };
        let (mut fresh, other): (Vec<i64>, Vec<i64>) =
            ranked.items.iter().map(|(i, _)| *i).partition(in_genre);
        fresh.truncate(wanted);
        let mut fresh: Vec<(i64, &'static str)> =
            fresh.into_iter().map(|i| (i, "new_in_genre")).collect();
        // Too few in the favourite genres: the model's other picks.
        let short = wanted - fresh.len();
        fresh.extend(other.into_iter().take(short).map(|i| (i, "model")));
        let mut blended = Vec::with_capacity(k);
        let (mut r, mut f) = (replays.into_iter(), fresh.into_iter());
        loop {
            match (r.next(), f.next()) {
                (None, None) => break,
                (a, b) => {
                    blended.extend(a.map(|i| (i, "replay")));
                    blended.extend(b);
                }
            }
        }
        blended.truncate(k);
        Ok((position(blended), false))
    }

    fn device_index(&self, device: &str) -> i64 {
        self.manifest
            .devices
            .iter()
            .position(|d| d == device)
            .map_or(0, |i| i as i64 + 1)
    }

    fn wrong_kind(&self, wanted: &str) -> Error {
        Error::InvalidArgument(format!(
            "model {} is a '{}' model, not '{wanted}'",
            self.label(),
            self.manifest.kind
        ))
    }
}

/// The item index of a recommend `module` that exports `user_vectors` and
/// `items`, if it answers a probe of up to 8 snapshot users in several
/// contexts exactly as `forward` does; otherwise (logged) `None`.
fn index_items(
    module: &tch::CModule,
    label: &str,
    snapshot: &Snapshot,
    width: usize,
    manifest: &Manifest,
) -> Option<Retrieval> {
    let retrieval = match Retrieval::of_module(module) {
        Ok(Some(r)) => r,
        Ok(None) => {
            info!(
                model = label,
                "no user_vectors/items methods: forward scores the items"
            );
            return None;
        }
        Err(reason) => {
            warn!(model = label, %reason, "item index not built: forward scores the items");
            return None;
        }
    };
    let rows = snapshot.users().clamp(1, 8);
    let mut features = vec![0f32; rows * width];
    for (row, out) in features
        .chunks_exact_mut(width.max(1))
        .enumerate()
        .take(snapshot.users())
    {
        out.copy_from_slice(snapshot.features(row));
    }
    let hours: Vec<i64> = (0..rows as i64)
        .map(|i| [-1, 0, 8, 17, 23][i as usize % 5])
        .collect();
    let devices: Vec<i64> = (0..rows as i64)
        .map(|i| i % (manifest.devices.len() as i64 + 1))
        .collect();
    // A top-1, a page-sized and a long list (at most every item: a module's
    // top-k may refuse more): each k fills and prunes the index's candidate
    // heap differently.
    let items = retrieval.index().len() as i64;
    let probe = |k: i64| {
        let k = k.min(items).max(1);
        let args = [
            Tensor::from_slice(&features).view([rows as i64, width as i64]),
            Tensor::from_slice(&hours),
            Tensor::from_slice(&devices),
            Tensor::from_slice(&[k]),
        ]
        .map(IValue::Tensor);
        tch::no_grad(|| retrieval.check(module, &args))
            .map_err(|reason| format!("k = {k}: {reason}"))
    };
    match [1, 16, 128].into_iter().try_for_each(probe) {
        Ok(()) => {
            let index = retrieval.index();
            info!(
                model = label,
                items = index.len(),
                dim = index.dim(),
                megabytes = index.bytes() as f64 / 1e6,
                kernel = index.kernel().name(),
                "exact item index built and checked against forward"
            );
            Some(retrieval)
        }
        Err(reason) => {
            warn!(model = label, %reason, "item index disagrees with forward: forward scores the items");
            None
        }
    }
}

/// The native plan of the churn module at `path` once it compiles and
/// answers random batches and a few snapshot rows as `module` does;
/// otherwise (logged) `None`, and the model runs on libtorch.
fn compile_native(
    path: &std::path::Path,
    module: &tch::CModule,
    width: usize,
    manifest: &Manifest,
    snapshot: &Snapshot,
    label: &str,
) -> Option<Plan> {
    let graph = match encore_models::graph::FrozenGraph::load(path) {
        Ok(graph) => graph,
        Err(e) => {
            warn!(model = label, reason = %e, "not compiled to native code: libtorch runs it");
            return None;
        }
    };
    let plan = match Plan::compile(&graph, manifest.outputs.len()) {
        Ok(plan) => plan,
        Err(reason) => {
            info!(model = label, %reason, "not compiled to native code: libtorch runs it");
            return None;
        }
    };
    let samples: Vec<f32> = (0..snapshot.users().min(8))
        .flat_map(|row| snapshot.features(row).iter().copied())
        .collect();
    crate::batcher::adopt_torch_threads();
    match plan.check(module, width, &samples) {
        Ok(()) => {
            info!(
                model = label,
                ops = plan.len(),
                "compiled to native code and checked against libtorch"
            );
            Some(plan)
        }
        Err(reason) => {
            warn!(model = label, %reason, "native code disagrees with libtorch: libtorch runs it");
            None
        }
    }
}

/// The first `k` pairs that are neither excluded nor repeated.
fn top_k(
    pairs: impl IntoIterator<Item = (i64, f32)>,
    k: usize,
    exclude: &HashSet<i64>,
) -> Vec<(i64, f32)> {
    let mut seen = HashSet::with_capacity(k);
    pairs
        .into_iter()
        .filter(|(item, _)| *item >= 0 && !exclude.contains(item) && seen.insert(*item))
        .take(k)
        .collect()
}
