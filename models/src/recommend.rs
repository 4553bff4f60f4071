//! The recommendation model: two-tower retrieval.
//!
//! - The user tower reads the user id, the listening history (the mean of a
//!   history embedding over the items the user played in training, an
//!   embedding bag capped at `max_history` items), the user's numeric
//!   features (standardised on the training users) and the listening context
//!   (hour slot and device), through an MLP.
//! - The item tower reads the item id, genre, artist and popularity (log of
//!   its training pairs, standardised), through an MLP.
//! - Both outputs are L2-normalised; the score is their dot product over a
//!   temperature.
//! - Training uses in-batch negatives: each (user, item) pair in a batch is
//!   a softmax over the batch's items, with the logQ correction (each
//!   item's logit minus the log of its share of training pairs) so popular
//!   items are not over-penalised for appearing as negatives often. The
//!   context of a pair is dropped (made unknown) with probability
//!   `context_dropout`, so requests without context are served well too.
//! - [`TrainedRecommend::export`] writes a scripted TorchScript module that
//!   maps user features and context to the top-k item ids and scores, with
//!   the item vectors inside (the model server's `recommend` contract).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, CheckpointState};
use crate::churn::TrainControl;
use crate::error::{Error, Result};
use crate::metrics::RankingAtK;

/// Hour slots: unknown, then six slots of four hours (00–03, 04–07, ...).
pub const HOUR_SLOTS: i64 = 7;

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecommendConfig {
    /// Width of embeddings and tower outputs.
    pub dim: i64,
    /// Hidden width of each tower's MLP.
    pub hidden: i64,
    /// Width of the hour-slot and device embeddings.
    pub context_dim: i64,
    /// Most passes over the training pairs.
    pub epochs: u32,
    /// Pairs per step (and in-batch negatives per pair, minus one).
    pub batch_size: i64,
    /// Adam learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Softmax temperature of the normalised dot product.
    pub temperature: f64,
    /// Stop after this many epochs without a better validation recall.
    pub patience: u32,
    /// Most history items per user in the user tower.
    pub max_history: usize,
    /// Probability of training a pair with its context made unknown.
    pub context_dropout: f64,
    /// Whether the item tower reads the item's popularity.
    pub popularity: bool,
    /// Seed of initialisation and shuffles.
    pub seed: i64,
}

impl Default for RecommendConfig {
    fn default() -> Self {
        Self {
            dim: 64,
            hidden: 128,
            context_dim: 8,
            epochs: 40,
            batch_size: 1024,
            lr: 2e-3,
            weight_decay: 1e-5,
            temperature: 0.2,
            patience: 5,
            max_history: 200,
            context_dropout: 0.25,
            popularity: true,
            seed: 7,
        }
    }
}

const SETTINGS: &str = "dim, hidden, context_dim, epochs, batch_size, lr, weight_decay, temperature, patience, max_history, context_dropout, popularity, seed";

impl RecommendConfig {
    /// Settings from a TOML document (the CLI's `--config` file, a job's
    /// `config_toml`); empty text gives the defaults.
    pub fn from_toml(text: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let cfg: Self = toml::from_str(text)
            .map_err(|e| Error::InvalidConfig(format!("TOML: {}", e.message())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sets one field from its string form (`temperature` = `"0.2"`);
    /// unknown names and unparsable values are errors.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let bad = |e: &dyn std::fmt::Display| {
            Error::InvalidConfig(format!("recommend setting {key} = '{value}': {e}"))
        };
        match key {
            "dim" => self.dim = value.parse().map_err(|e| bad(&e))?,
            "hidden" => self.hidden = value.parse().map_err(|e| bad(&e))?,
            "context_dim" => self.context_dim = value.parse().map_err(|e| bad(&e))?,
            "epochs" => self.epochs = value.parse().map_err(|e| bad(&e))?,
            "batch_size" => self.batch_size = value.parse().map_err(|e| bad(&e))?,
            "lr" => self.lr = value.parse().map_err(|e| bad(&e))?,
            "weight_decay" => self.weight_decay = value.parse().map_err(|e| bad(&e))?,
            "temperature" => self.temperature = value.parse().map_err(|e| bad(&e))?,
            "patience" => self.patience = value.parse().map_err(|e| bad(&e))?,
            "max_history" => self.max_history = value.parse().map_err(|e| bad(&e))?,
            "context_dropout" => self.context_dropout = value.parse().map_err(|e| bad(&e))?,
            "popularity" => self.popularity = value.parse().map_err(|e| bad(&e))?,
            "seed" => self.seed = value.parse().map_err(|e| bad(&e))?,
            _ => {
                return Err(Error::InvalidConfig(format!(
                    "unknown recommend setting '{key}' (known: {SETTINGS})"
                )));
            }
        }
        self.validate()
    }

    /// Applies `overrides` (key, value) in order with [`set`](Self::set),
    /// then validates.
    pub fn apply<K: AsRef<str>, V: AsRef<str>>(mut self, overrides: &[(K, V)]) -> Result<Self> {
        for (key, value) in overrides {
            self.set(key.as_ref(), value.as_ref())?;
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks ranges; the message names the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.dim < 1 || self.hidden < 1 || self.context_dim < 1 {
            return bad(format!(
                "dim {}, hidden {} and context_dim {} must be >= 1",
                self.dim, self.hidden, self.context_dim
            ));
        }
        if self.epochs == 0 || self.batch_size < 2 {
            return bad(format!(
                "epochs {} must be >= 1 and batch_size {} >= 2",
                self.epochs, self.batch_size
            ));
        }
        let positive = |x: f64| x > 0.0 && x.is_finite();
        if !positive(self.lr) || !positive(self.temperature) {
            return bad(format!(
                "lr {} and temperature {} must be positive",
                self.lr, self.temperature
            ));
        }
        if !(0.0..=1.0).contains(&self.context_dropout) {
            return bad(format!(
                "context_dropout {} must be in [0, 1]",
                self.context_dropout
            ));
        }
        if self.max_history == 0 {
            return bad("max_history must be >= 1".into());
        }
        Ok(())
    }
}

/// Progress after each epoch; the callback returns false to stop.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RecEpoch {
    /// 1-based epoch.
    pub epoch: u32,
    /// The configured most epochs.
    pub total_epochs: u32,
    /// Optimiser steps so far.
    pub step: u64,
    /// Mean in-batch softmax loss of the epoch.
    pub loss: f64,
    /// Validation Recall@10 after the epoch (minus the loss when there is
    /// no validation split).
    pub validation_recall: f64,
    /// Training pairs per second in the epoch (the optimiser steps only).
    pub samples_per_second: f64,
}

/// Where and how a pair was played.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// Hour of day 0..=23 (UTC), or -1 when unknown.
    pub hour: i64,
    /// Device code: 0 unknown, `i + 1` for the `i`-th device name.
    pub device: i64,
}

impl Context {
    /// No context.
    pub const UNKNOWN: Context = Context {
        hour: -1,
        device: 0,
    };

    /// The hour slot: 0 unknown, 1..=6 for four-hour slots.
    pub fn slot(&self) -> i64 {
        if (0..24).contains(&self.hour) {
            self.hour / 4 + 1
        } else {
            0
        }
    }
}

impl Default for Context {
    fn default() -> Self {
        Self::UNKNOWN
    }
}

/// Users, items and their interactions with dense ids (0..users, 0..items).
#[derive(Debug, Clone, Default)]
pub struct RecData {
    /// Number of users.
    pub users: i64,
    /// Number of items.
    pub items: i64,
    /// Genre code of each item (0 = unknown).
    pub item_genre: Vec<i64>,
    /// Number of genre codes.
    pub genres: i64,
    /// Artist code of each item (0 = unknown); empty when no artists.
    pub item_artist: Vec<i64>,
    /// Number of artist codes.
    pub artists: i64,
    /// Names of the users' numeric features (may be none).
    pub user_feature_names: Vec<String>,
    /// `users × user_feature_names.len()` values, row-major.
    pub user_features: Vec<f32>,
    /// Number of device codes, 0 (unknown) included.
    pub devices: i64,
    /// Training pairs (user, item).
    pub train: Vec<(i64, i64)>,
    /// Context of each training pair; empty when unknown.
    pub train_context: Vec<Context>,
    /// Validation pairs, for early stopping.
    pub validation: Vec<(i64, i64)>,
}

impl RecData {
    fn check(&self) -> Result<()> {
        if self.train.is_empty() {
            return Err(Error::EmptyData("no training pairs".into()));
        }
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.item_genre.len() != self.items as usize {
            return bad(format!(
                "{} genre codes for {} items",
                self.item_genre.len(),
                self.items
            ));
        }
        if !self.item_artist.is_empty() && self.item_artist.len() != self.items as usize {
            return bad(format!(
                "{} artist codes for {} items",
                self.item_artist.len(),
                self.items
            ));
        }
        let f = self.user_feature_names.len();
        if self.user_features.len() != f * self.users as usize {
            return bad(format!(
                "{} user feature values for {} users x {f} features",
                self.user_features.len(),
                self.users
            ));
        }
        if let Some(v) = self.user_features.iter().find(|v| !v.is_finite()) {
            return bad(format!("user feature value {v} is not finite"));
        }
        if !self.train_context.is_empty() && self.train_context.len() != self.train.len() {
            return bad(format!(
                "{} contexts for {} training pairs",
                self.train_context.len(),
                self.train.len()
            ));
        }
        let codes = |v: &[i64], n: i64| v.iter().find(|c| !(0..n.max(1)).contains(c)).copied();
        if let Some(c) = codes(&self.item_genre, self.genres) {
            return bad(format!("genre code {c} is outside 0..{}", self.genres));
        }
        if let Some(c) = codes(&self.item_artist, self.artists) {
            return bad(format!("artist code {c} is outside 0..{}", self.artists));
        }
        if let Some(c) = self
            .train_context
            .iter()
            .find(|c| !(0..self.devices.max(1)).contains(&c.device))
        {
            return bad(format!(
                "device code {} is outside 0..{}",
                c.device, self.devices
            ));
        }
        if let Some(&(u, i)) = self
            .train
            .iter()
            .chain(&self.validation)
            .find(|(u, i)| !(0..self.users).contains(u) || !(0..self.items).contains(i))
        {
            return bad(format!(
                "pair ({u}, {i}) is outside {} users x {} items",
                self.users, self.items
            ));
        }
        Ok(())
    }

    /// Each user's history: up to `cap` distinct training items, in
    /// training order.
    pub fn histories(&self, cap: usize) -> Vec<Vec<i64>> {
        let mut out = vec![Vec::new(); self.users as usize];
        let mut seen = HashSet::new();
        for &(u, i) in &self.train {
            let h = &mut out[u as usize];
            if h.len() < cap && seen.insert((u, i)) {
                h.push(i);
            }
        }
        out
    }
}

fn mlp(p: nn::Path, input: i64, hidden: i64, out: i64) -> (nn::Linear, nn::Linear) {
    (
        nn::linear(&p / "0", input, hidden, Default::default()),
        nn::linear(&p / "1", hidden, out, Default::default()),
    )
}

fn run_mlp(layers: &(nn::Linear, nn::Linear), x: &Tensor) -> Tensor {
    layers.1.forward(&layers.0.forward(x).relu())
}

struct Towers {
    user_id: nn::Embedding,
    history: nn::Embedding,
    hour: nn::Embedding,
    device: nn::Embedding,
    user_mlp: (nn::Linear, nn::Linear),
    item_id: nn::Embedding,
    genre: nn::Embedding,
    artist: nn::Embedding,
    item_mlp: (nn::Linear, nn::Linear),
}

/// A batch's distinct ids in first-seen order, where each position's id
/// sits among them, and how often each occurs.
struct Distinct {
    values: Vec<i64>,
    positions: Vec<i64>,
    counts: Vec<u32>,
}

impl Distinct {
    fn of(ids: &[i64]) -> Self {
        let mut at: HashMap<i64, i64> = HashMap::with_capacity(ids.len());
        let (mut values, mut counts) = (Vec::new(), Vec::new());
        let positions = ids
            .iter()
            .map(|&id| {
                let p = *at.entry(id).or_insert_with(|| {
                    values.push(id);
                    counts.push(0);
                    values.len() as i64 - 1
                });
                counts[p as usize] += 1;
                p
            })
            .collect();
        Self {
            values,
            positions,
            counts,
        }
    }

    fn values(&self, device: Device) -> Tensor {
        Tensor::from_slice(&self.values).to_device(device)
    }

    fn positions(&self, device: Device) -> Tensor {
        Tensor::from_slice(&self.positions).to_device(device)
    }

    fn log_counts(&self, device: Device) -> Tensor {
        let logs: Vec<f32> = self.counts.iter().map(|&c| (c as f32).ln()).collect();
        Tensor::from_slice(&logs).to_device(device)
    }

    /// Mean over positions of ln(count of the position's id).
    fn mean_log_count_per_position(&self) -> f64 {
        let total: f64 = self
            .positions
            .iter()
            .map(|&p| f64::from(self.counts[p as usize]).ln())
            .sum();
        total / self.positions.len().max(1) as f64
    }
}

/// The in-batch softmax loss with logQ correction: row `r` of the batch
/// should pick its own item among every pair's item, each scored
/// `u·v / temperature - log Q(item)`.
///
/// Computed with one column per *distinct* item plus the log of its count
/// (a repeated column adds its exp once per copy), so the logits are
/// `[B, U]` instead of `[B, B]`, the temperature is applied to the `[B, D]`
/// user vectors and the logQ term is fused into the product. The value and
/// the gradients are those of the one-column-per-pair loss: the distinct
/// form only drops the per-row constant `ln(count of the row's item)`,
/// added back here.
fn in_batch_loss(
    users: &Tensor,
    items: &Tensor,
    batch_items: &Distinct,
    log_q: &Tensor,
    temperature: f64,
) -> Tensor {
    let device = users.device();
    let bias = batch_items.log_counts(device) - log_q.index_select(0, &batch_items.values(device));
    let logits = bias
        .unsqueeze(0)
        .addmm(&(users / temperature), &items.transpose(0, 1));
    logits.cross_entropy_for_logits(&batch_items.positions(device))
        + batch_items.mean_log_count_per_position()
}

/// A batch's histories as an embedding bag: the items, and where each
/// user's run starts.
fn bag(histories: &[Vec<i64>], users: &[i64], device: Device) -> (Tensor, Tensor) {
    let mut items = Vec::new();
    let mut offsets = Vec::with_capacity(users.len());
    for &u in users {
        offsets.push(items.len() as i64);
        items.extend_from_slice(&histories[u as usize]);
    }
    (
        Tensor::from_slice(&items).to_device(device),
        Tensor::from_slice(&offsets).to_device(device),
    )
}

impl Towers {
    fn new(p: &nn::Path, data: &RecData, cfg: &RecommendConfig) -> Self {
        let emb = |name: &str, n: i64, dim: i64| {
            nn::embedding(
                p / name,
                n.max(1),
                dim,
                nn::EmbeddingConfig {
                    ws_init: nn::Init::Randn {
                        mean: 0.0,
                        stdev: 0.1,
                    },
                    ..Default::default()
                },
            )
        };
        let features = data.user_feature_names.len() as i64;
        Self {
            user_id: emb("user_id", data.users, cfg.dim),
            history: emb("history", data.items, cfg.dim),
            hour: emb("hour", HOUR_SLOTS, cfg.context_dim),
            device: emb("device", data.devices, cfg.context_dim),
            user_mlp: mlp(
                p / "user_mlp",
                2 * cfg.dim + features + 2 * cfg.context_dim,
                cfg.hidden,
                cfg.dim,
            ),
            item_id: emb("item_id", data.items, cfg.dim),
            genre: emb("genre", data.genres, cfg.dim),
            artist: emb("artist", data.artists, cfg.dim),
            item_mlp: mlp(p / "item_mlp", 3 * cfg.dim + 1, cfg.hidden, cfg.dim),
        }
    }

    /// The part of the user tower's input that depends on the user alone:
    /// id embedding and history mean, `[B, 2 dim]`.
    fn user_static(&self, ids: &Tensor, bag: &(Tensor, Tensor)) -> Tensor {
        let (history, _, _, _) = Tensor::embedding_bag::<Tensor>(
            &self.history.ws,
            &bag.0,
            &bag.1,
            false,
            1,
            false,
            None,
            false,
        );
        Tensor::cat(&[self.user_id.forward(ids), history], 1)
    }

    fn users(&self, fixed: &Tensor, numeric: &Tensor, slot: &Tensor, device: &Tensor) -> Tensor {
        let x = Tensor::cat(
            &[
                fixed.shallow_clone(),
                numeric.shallow_clone(),
                self.hour.forward(slot),
                self.device.forward(device),
            ],
            1,
        );
        normalise(&run_mlp(&self.user_mlp, &x))
    }

    fn items(&self, ids: &Tensor, item: &ItemInputs) -> Tensor {
        let x = Tensor::cat(
            &[
                self.item_id.forward(ids),
                self.genre.forward(&item.genre.index_select(0, ids)),
                self.artist.forward(&item.artist.index_select(0, ids)),
                item.popularity.index_select(0, ids),
            ],
            1,
        );
        normalise(&run_mlp(&self.item_mlp, &x))
    }
}

/// Per-item inputs on the training device.
struct ItemInputs {
    genre: Tensor,
    artist: Tensor,
    /// `[items, 1]`, standardised log pair count.
    popularity: Tensor,
}

fn normalise(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [1], true).clamp_min(1e-6)
}

/// Per user, the set of items in `pairs`.
pub fn by_user(pairs: &[(i64, i64)]) -> HashMap<i64, HashSet<i64>> {
    let mut m: HashMap<i64, HashSet<i64>> = HashMap::new();
    for &(u, i) in pairs {
        m.entry(u).or_default().insert(i);
    }
    m
}

/// Mean Recall/NDCG/MRR/Hit@`k` over the users in `relevant`, ranking every
/// item except those in `seen` (full ranking).
pub fn evaluate(
    user_vectors: &Tensor,
    item_vectors: &Tensor,
    seen: &HashMap<i64, HashSet<i64>>,
    relevant: &HashMap<i64, HashSet<i64>>,
    k: usize,
) -> Result<RankingAtK> {
    let mut users: Vec<i64> = relevant.keys().copied().collect();
    users.sort_unstable();
    let mut total = RankingAtK::default();
    if users.is_empty() {
        return Ok(total);
    }
    let items = item_vectors.size()[0];
    let k = k.min(items as usize);
    for chunk in users.chunks(512) {
        let ids = Tensor::from_slice(chunk).to_device(user_vectors.device());
        let scores = tch::no_grad(|| {
            user_vectors
                .index_select(0, &ids)
                .matmul(&item_vectors.transpose(0, 1))
        })
        .to_device(Device::Cpu);
        let mut mask = vec![0f32; chunk.len() * items as usize];
        for (r, u) in chunk.iter().enumerate() {
            if let Some(s) = seen.get(u) {
                for &i in s {
                    mask[r * items as usize + i as usize] = f32::NEG_INFINITY;
                }
            }
        }
        let scores = scores + Tensor::from_slice(&mask).reshape([chunk.len() as i64, items]);
        let (_, top) = scores.topk(k as i64, 1, true, true);
        let top = Vec::<i64>::try_from(top.flatten(0, -1))?;
        for (r, u) in chunk.iter().enumerate() {
            let m = RankingAtK::of(&top[r * k..(r + 1) * k], &relevant[u], k);
            total.recall += m.recall;
            total.ndcg += m.ndcg;
            total.mrr += m.mrr;
            total.hit += m.hit;
        }
    }
    let n = users.len() as f64;
    Ok(RankingAtK {
        recall: total.recall / n,
        ndcg: total.ndcg / n,
        mrr: total.mrr / n,
        hit: total.hit / n,
    })
}

/// A trained two-tower model.
pub struct TrainedRecommend {
    _vs: nn::VarStore,
    towers: Towers,
    histories: Vec<Vec<i64>>,
    /// Standardised user features `[users, F]` on the training device.
    numeric: Tensor,
    /// Mean and standard deviation of each user feature (training users).
    pub standardisation: Vec<(String, f32, f32)>,
    /// Normalised user vectors `[users, dim]`, context unknown.
    pub user_vectors: Tensor,
    /// Normalised item vectors `[items, dim]`.
    pub item_vectors: Tensor,
    /// Validation recall@10 after each epoch.
    pub history: Vec<f64>,
    /// Per-epoch reports.
    pub reports: Vec<RecEpoch>,
    /// The epoch whose weights were kept.
    pub best_epoch: u32,
    /// The checkpointed epoch training resumed after, if it resumed.
    pub resumed_after: Option<u32>,
    dim: i64,
}

fn context_tensors(contexts: &[Context], device: Device) -> (Tensor, Tensor) {
    let slots: Vec<i64> = contexts.iter().map(Context::slot).collect();
    let devices: Vec<i64> = contexts.iter().map(|c| c.device).collect();
    (
        Tensor::from_slice(&slots).to_device(device),
        Tensor::from_slice(&devices).to_device(device),
    )
}

impl TrainedRecommend {
    /// Normalised vectors of dense `users` in `context`, `[N, dim]`.
    pub fn user_vectors_in(&self, users: &[i64], context: Context) -> Tensor {
        let device = self.item_vectors.device();
        let ids = Tensor::from_slice(users).to_device(device);
        let (slot, dev) = context_tensors(&vec![context; users.len()], device);
        tch::no_grad(|| {
            let fixed = self
                .towers
                .user_static(&ids, &bag(&self.histories, users, device));
            self.towers
                .users(&fixed, &self.numeric.index_select(0, &ids), &slot, &dev)
        })
    }

    /// Width of the user-only part of the user tower's input: the id
    /// embedding then the history mean ([`user_inputs`](Self::user_inputs)).
    pub fn static_width(&self) -> i64 {
        2 * self.dim
    }

    /// The user-only inputs the exported module takes after the user
    /// features: for each user, `Some(dense id)` or `None` (a user training
    /// did not see: zero id embedding) and a history of dense item ids
    /// (capped as in training). `[N, 2 dim]` on the CPU.
    pub fn user_inputs(&self, users: &[Option<i64>], histories: &[Vec<i64>]) -> Result<Tensor> {
        let device = self.item_vectors.device();
        let max = self.towers.user_id.ws.size()[0];
        let items = self.towers.history.ws.size()[0];
        if let Some(bad) = histories.iter().flatten().find(|i| !(0..items).contains(i)) {
            return Err(Error::InvalidConfig(format!(
                "history item {bad} is outside 0..{items}"
            )));
        }
        let ids: Vec<i64> = users
            .iter()
            .map(|u| u.unwrap_or(0).clamp(0, max - 1))
            .collect();
        let known: Vec<f32> = users
            .iter()
            .map(|u| {
                if u.is_some_and(|u| (0..max).contains(&u)) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let positions: Vec<i64> = (0..users.len() as i64).collect();
        Ok(tch::no_grad(|| {
            let ids = Tensor::from_slice(&ids).to_device(device);
            let id_part = self.towers.user_id.forward(&ids)
                * Tensor::from_slice(&known).to_device(device).unsqueeze(1);
            let fixed = self
                .towers
                .user_static(&ids, &bag(histories, &positions, device));
            Tensor::cat(&[id_part, fixed.narrow(1, self.dim, self.dim)], 1)
        })
        .to_device(Device::Cpu))
    }

    /// Writes the serving module to `path`: a scripted TorchScript
    /// `forward(user_features FP32 [N, F + 2 dim], hour INT64 [N], device
    /// INT64 [N], k INT64 [1]) -> (item_ids INT64 [N, k'], scores FP32 [N,
    /// k'])` with k' = min(k, items). `user_features` is the raw user
    /// features (standardised inside) followed by [`user_inputs`](Self::user_inputs);
    /// `item_ids` maps dense item codes to the catalogue's ids.
    pub fn export(&self, item_ids: &[i64], path: &Path) -> Result<()> {
        if item_ids.len() as i64 != self.item_vectors.size()[0] {
            return Err(Error::InvalidConfig(format!(
                "{} item ids for {} items",
                item_ids.len(),
                self.item_vectors.size()[0]
            )));
        }
        let cpu = |t: &Tensor| t.detach().to_device(Device::Cpu).contiguous();
        let (mean, std): (Vec<f32>, Vec<f32>) = self
            .standardisation
            .iter()
            .map(|(_, m, s)| (*m, *s))
            .unzip();
        let mean = Tensor::from_slice(&mean);
        let std = Tensor::from_slice(&std);
        let ids = Tensor::from_slice(item_ids);
        let l = &self.towers.user_mlp;
        let bias = |b: &Option<Tensor>| b.as_ref().map(cpu).expect("linear layers have biases");
        let buffers = [
            ("feature_mean", mean),
            ("feature_std", std),
            ("hour_embedding", cpu(&self.towers.hour.ws)),
            ("device_embedding", cpu(&self.towers.device.ws)),
            ("w0", cpu(&l.0.ws)),
            ("b0", bias(&l.0.bs)),
            ("w1", cpu(&l.1.ws)),
            ("b1", bias(&l.1.bs)),
            ("item_vectors", cpu(&self.item_vectors)),
            ("item_ids", ids),
        ];
        let named: Vec<(&str, &Tensor)> = buffers.iter().map(|(n, t)| (*n, t)).collect();
        crate::script::save("EncoreRecommend", RECOMMEND_SOURCE, &named, path)
    }
}

/// The serving module's methods (see [`TrainedRecommend::export`]): the
/// user tower (`user_vectors`, concatenating as [`Towers::users`] does),
/// the items, and `forward`, the top k of their inner products. The model
/// server scores the items itself when a module has the first two.
const RECOMMEND_SOURCE: &str = r#"
def user_vectors(self, user_features: Tensor, hour: Tensor, device: Tensor) -> Tensor:
    f = self.feature_mean.size(0)
    numeric = (user_features[:, :f] - self.feature_mean) / self.feature_std
    fixed = user_features[:, f:]
    known_hour = (hour >= 0) & (hour < 24)
    slot = torch.where(known_hour, torch.clamp(hour, 0, 23) // 4 + 1, torch.zeros_like(hour))
    known_device = (device > 0) & (device < self.device_embedding.size(0))
    code = torch.where(known_device, device, torch.zeros_like(device))
    x = torch.cat([fixed, numeric, self.hour_embedding[slot], self.device_embedding[code]], 1)
    h = torch.relu(torch.matmul(x, self.w0.t()) + self.b0)
    u = torch.matmul(h, self.w1.t()) + self.b1
    return u / torch.clamp(torch.sqrt(torch.sum(u * u, 1, True)), 1e-6)

def items(self) -> Tuple[Tensor, Tensor]:
    return self.item_vectors, self.item_ids

def forward(self, user_features: Tensor, hour: Tensor, device: Tensor, k: Tensor) -> Tuple[Tensor, Tensor]:
    u = self.user_vectors(user_features, hour, device)
    scores = torch.matmul(u, self.item_vectors.t())
    kk = min(max(int(k[0]), 0), scores.size(1))
    top = torch.topk(scores, kk, 1)
    return self.item_ids[top[1]], top[0]
"#;

/// Standardisation of `data`'s user features: per column mean and std
/// (1 where constant), and the standardised `[users, F]` values.
fn standardise(data: &RecData) -> (Vec<(String, f32, f32)>, Vec<f32>) {
    let f = data.user_feature_names.len();
    let n = data.users as usize;
    let mut out = data.user_features.clone();
    let mut stats = Vec::with_capacity(f);
    for (j, name) in data.user_feature_names.iter().enumerate() {
        let column = (0..n).map(|i| f64::from(data.user_features[i * f + j]));
        let mean = column.clone().sum::<f64>() / n.max(1) as f64;
        let var = column.map(|x| (x - mean).powi(2)).sum::<f64>() / n.max(1) as f64;
        let std = if var.sqrt() > 1e-9 { var.sqrt() } else { 1.0 };
        for i in 0..n {
            out[i * f + j] = ((f64::from(out[i * f + j]) - mean) / std) as f32;
        }
        stats.push((name.clone(), mean as f32, std as f32));
    }
    (stats, out)
}

/// Trains on `data.train` with in-batch negatives and logQ correction,
/// keeping the weights with the best validation recall@10. `control`'s
/// cancel flag is checked before every mini-batch; with a checkpoint folder
/// a run resumes after the last finished epoch of the same model.
pub fn train(
    data: &RecData,
    cfg: &RecommendConfig,
    device: Device,
    control: &TrainControl,
    mut report: impl FnMut(&RecEpoch) -> bool,
) -> Result<TrainedRecommend> {
    cfg.validate()?;
    data.check()?;
    tch::manual_seed(cfg.seed);
    let mut vs = nn::VarStore::new(device);
    let towers = Towers::new(&vs.root(), data, cfg);
    let mut opt = crate::optim::AdamW::new(&vs, cfg.lr, cfg.weight_decay)?;
    let histories = data.histories(cfg.max_history);
    let (standardisation, numeric) = standardise(data);
    let numeric = Tensor::from_slice(&numeric)
        .reshape([data.users, data.user_feature_names.len() as i64])
        .to_device(device);
    let mut frequency = vec![0f32; data.items as usize];
    for &(_, i) in &data.train {
        frequency[i as usize] += 1.0;
    }
    let log_count = Tensor::from_slice(&frequency).log1p();
    let popularity = if cfg.popularity {
        (&log_count - log_count.mean(Kind::Float)) / log_count.std(false).clamp_min(1e-6)
    } else {
        log_count.zeros_like()
    };
    let artists = if data.item_artist.is_empty() {
        vec![0; data.items as usize]
    } else {
        data.item_artist.clone()
    };
    let item_inputs = ItemInputs {
        genre: Tensor::from_slice(&data.item_genre).to_device(device),
        artist: Tensor::from_slice(&artists).to_device(device),
        popularity: popularity.unsqueeze(1).to_device(device),
    };
    let log_q = (Tensor::from_slice(&frequency) / data.train.len() as f64)
        .clamp_min(1e-9)
        .log()
        .to_device(device);
    let seen = by_user(&data.train);
    let relevant = by_user(&data.validation);
    let all_user_ids: Vec<i64> = (0..data.users).collect();
    let all_users = Tensor::arange(data.users, (Kind::Int64, device));
    let all_items = Tensor::arange(data.items, (Kind::Int64, device));
    let all_bag = bag(&histories, &all_user_ids, device);
    let unknown = context_tensors(&vec![Context::UNKNOWN; data.users as usize], device);
    let vectors = |towers: &Towers| {
        tch::no_grad(|| {
            let fixed = towers.user_static(&all_users, &all_bag);
            (
                towers.users(&fixed, &numeric, &unknown.0, &unknown.1),
                towers.items(&all_items, &item_inputs),
            )
        })
    };
    let n = data.train.len() as i64;
    let mut best = (f64::NEG_INFINITY, 0u32);
    let mut best_weights: Option<Vec<(String, Tensor)>> = None;
    let mut reports: Vec<RecEpoch> = Vec::new();
    let mut step = 0u64;
    let mut first_epoch = 1;
    let mut resumed_after = None;
    let fingerprint = serde_json::json!({
        "model": "recommend",
        "users": data.users,
        "items": data.items,
        "features": data.user_feature_names,
        "pairs": [data.train.len(), data.validation.len()],
        "config": cfg,
    })
    .to_string();
    if let Some(dir) = &control.checkpoint_dir
        && let Some(restored) = checkpoint::restore(dir, &mut vs, &fingerprint)?
    {
        let s = restored.state;
        reports = s.reports();
        best = (-s.best_loss, s.best_epoch);
        best_weights = Some(restored.best);
        step = s.step;
        first_epoch = s.epoch + 1;
        resumed_after = Some(s.epoch);
    }
    for epoch in first_epoch..=cfg.epochs {
        if epoch > 1 && epoch - 1 - best.1 >= cfg.patience {
            break;
        }
        // Seeded per epoch, so a resumed run draws what the first would have.
        tch::manual_seed(cfg.seed.wrapping_add(i64::from(epoch)));
        let perm = Vec::<i64>::try_from(Tensor::randperm(n, (Kind::Int64, Device::Cpu)))?;
        let dropped = Vec::<f32>::try_from(Tensor::rand([n], (Kind::Float, Device::Cpu)))?;
        let started = std::time::Instant::now();
        let (mut total, mut steps) = (0.0, 0u32);
        for chunk in perm.chunks(cfg.batch_size as usize) {
            if control
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                return Err(Error::Cancelled);
            }
            let users: Vec<i64> = chunk.iter().map(|&r| data.train[r as usize].0).collect();
            let items: Vec<i64> = chunk.iter().map(|&r| data.train[r as usize].1).collect();
            let contexts: Vec<Context> = chunk
                .iter()
                .map(|&r| match data.train_context.get(r as usize) {
                    Some(c) if f64::from(dropped[r as usize]) >= cfg.context_dropout => *c,
                    _ => Context::UNKNOWN,
                })
                .collect();
            let u = Tensor::from_slice(&users).to_device(device);
            let (slot, dev) = context_tensors(&contexts, device);
            // What depends on the user alone (id, history bag) and the item
            // towers run once per distinct user and item of the batch.
            let (bu, bi) = (Distinct::of(&users), Distinct::of(&items));
            let (bu_ids, bi_ids) = (bu.values(device), bi.values(device));
            let fixed = towers
                .user_static(&bu_ids, &bag(&histories, &bu.values, device))
                .index_select(0, &bu.positions(device));
            let uv = towers.users(&fixed, &numeric.index_select(0, &u), &slot, &dev);
            let iv = towers.items(&bi_ids, &item_inputs);
            let loss = in_batch_loss(&uv, &iv, &bi, &log_q, cfg.temperature);
            opt.backward_step(&loss)?;
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                return Err(Error::Diverged { epoch, step });
            }
            total += value;
            steps += 1;
            step += 1;
        }
        let samples_per_second = n as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let loss = total / f64::from(steps.max(1));
        let recall = if relevant.is_empty() {
            -loss
        } else {
            let (uv, iv) = vectors(&towers);
            evaluate(&uv, &iv, &seen, &relevant, 10)?.recall
        };
        let r = RecEpoch {
            epoch,
            total_epochs: cfg.epochs,
            step,
            loss,
            validation_recall: recall,
            samples_per_second,
        };
        reports.push(r);
        if recall > best.0 {
            best = (recall, epoch);
            best_weights = Some(checkpoint::snapshot(&vs));
        }
        if let Some(dir) = &control.checkpoint_dir {
            // The checkpoint keeps a loss to minimise: minus the recall.
            let state =
                CheckpointState::after(epoch, step, (-best.0, best.1), &reports, &fingerprint);
            checkpoint::save(dir, &vs, best_weights.as_deref().unwrap_or(&[]), &state)?;
        }
        if !report(&r) {
            return Err(Error::Cancelled);
        }
    }
    if let Some(weights) = best_weights {
        checkpoint::restore_weights(&vs, weights);
    }
    vs.freeze();
    let (user_vectors, item_vectors) = vectors(&towers);
    Ok(TrainedRecommend {
        _vs: vs,
        towers,
        histories,
        numeric,
        standardisation,
        user_vectors,
        item_vectors,
        history: reports.iter().map(|r| r.validation_recall).collect(),
        reports,
        best_epoch: best.1,
        resumed_after,
        dim: cfg.dim,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Users in two taste groups, each liking its own half of the items.
    fn planted(seed: u64) -> (RecData, Vec<(i64, i64)>) {
        let (users, items) = (200i64, 100i64);
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as i64
        };
        let (mut train, mut validation, mut test) = (Vec::new(), Vec::new(), Vec::new());
        for u in 0..users {
            let group = u % 2;
            let mut liked: Vec<i64> = (0..items).filter(|i| i % 2 == group).collect();
            for k in (1..liked.len()).rev() {
                liked.swap(k, (next() % (k as i64 + 1)) as usize);
            }
            for (j, &i) in liked.iter().take(20).enumerate() {
                match j % 10 {
                    8 => validation.push((u, i)),
                    9 => test.push((u, i)),
                    _ => train.push((u, i)),
                }
            }
        }
        let data = RecData {
            users,
            items,
            item_genre: (0..items).map(|i| 1 + i % 2).collect(),
            genres: 3,
            train,
            validation,
            ..Default::default()
        };
        (data, test)
    }

    #[test]
    fn distinct_in_batch_loss_equals_one_column_per_pair() {
        let _rng = crate::serial_rng();
        tch::manual_seed(3);
        let (dim, n_items, temperature) = (8, 6, 0.2);
        // Repeats, a single occurrence, first-seen order not sorted.
        let items: Vec<i64> = vec![4, 1, 4, 0, 1, 4, 5, 1];
        let log_q = Tensor::rand([n_items], (Kind::Float, Device::Cpu)).log();
        let grads = |distinct: bool| {
            let u = Tensor::randn([items.len() as i64, dim], (Kind::Float, Device::Cpu))
                .set_requires_grad(true);
            let table =
                Tensor::randn([n_items, dim], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let loss = if distinct {
                let d = Distinct::of(&items);
                let iv = table.index_select(0, &d.values(Device::Cpu));
                in_batch_loss(&u, &iv, &d, &log_q, temperature)
            } else {
                let ids = Tensor::from_slice(&items);
                let logits = u.matmul(&table.index_select(0, &ids).transpose(0, 1)) / temperature
                    - log_q.index_select(0, &ids).unsqueeze(0);
                logits.cross_entropy_for_logits(&Tensor::arange(
                    items.len() as i64,
                    (Kind::Int64, Device::Cpu),
                ))
            };
            loss.backward();
            (loss.double_value(&[]), u.grad(), table.grad())
        };
        tch::manual_seed(11);
        let (plain, plain_u, plain_table) = grads(false);
        tch::manual_seed(11);
        let (distinct, distinct_u, distinct_table) = grads(true);
        assert!((plain - distinct).abs() < 1e-5, "{plain} vs {distinct}");
        assert!(plain_u.allclose(&distinct_u, 1e-5, 1e-6, false));
        assert!(plain_table.allclose(&distinct_table, 1e-5, 1e-6, false));
        // Items 2 and 3 are in no pair: no gradient reaches them.
        assert_eq!(
            plain_table.get(2).abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
        let d = Distinct::of(&items);
        assert_eq!(d.values, [4, 1, 0, 5]);
        assert_eq!(d.positions, [0, 1, 0, 2, 1, 0, 3, 1]);
        assert_eq!(d.counts, [3, 3, 1, 1]);
    }

    #[test]
    fn learns_planted_tastes_and_ranks_held_out_items() {
        let _rng = crate::serial_rng();
        let (data, test) = planted(1);
        let cfg = RecommendConfig {
            epochs: 15,
            batch_size: 256,
            ..Default::default()
        };
        let trained = train(&data, &cfg, Device::Cpu, &TrainControl::default(), |_| true).unwrap();
        let mut seen = by_user(&data.train);
        for (u, i) in &data.validation {
            seen.entry(*u).or_default().insert(*i);
        }
        let m = evaluate(
            &trained.user_vectors,
            &trained.item_vectors,
            &seen,
            &by_user(&test),
            10,
        )
        .unwrap();
        // Two held-out items per user among 82 unseen: a random ranking
        // recalls 10/82 = 0.12 of them and hits one for about 22% of users.
        assert!(m.recall > 0.2, "{m:?}");
        assert!(m.hit > 0.35, "{m:?}");
        assert!(trained.best_epoch >= 1);
    }

    #[test]
    fn bad_settings_and_data_are_named() {
        let _rng = crate::serial_rng();
        let (mut data, _) = planted(2);
        let cfg = RecommendConfig {
            batch_size: 1,
            ..Default::default()
        };
        let e = train(&data, &cfg, Device::Cpu, &TrainControl::default(), |_| true)
            .err()
            .unwrap();
        assert!(e.to_string().contains("batch_size"), "{e}");
        let set = |k: &str, v: &str| RecommendConfig::default().apply(&[(k, v)]);
        assert_eq!(set("temperature", "0.3").unwrap().temperature, 0.3);
        assert!(!set("popularity", "false").unwrap().popularity);
        assert!(
            set("temp", "1")
                .err()
                .unwrap()
                .to_string()
                .contains("unknown recommend setting 'temp'")
        );
        assert!(
            set("dim", "x")
                .err()
                .unwrap()
                .to_string()
                .contains("dim = 'x'")
        );
        data.train.push((999, 0));
        let e = train(
            &data,
            &RecommendConfig::default(),
            Device::Cpu,
            &TrainControl::default(),
            |_| true,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("(999, 0)"), "{e}");
    }

    /// Every user plays genre-1 items on device 1 and genre-2 items on
    /// device 2, in the evening and the morning respectively.
    fn by_device() -> RecData {
        let (users, items) = (100i64, 40i64);
        let mut train = Vec::new();
        let mut train_context = Vec::new();
        for u in 0..users {
            for j in 0..8 {
                let i = (u * 7 + j * 5) % items;
                let (device, hour) = if i % 2 == 0 { (1, 20) } else { (2, 7) };
                train.push((u, i));
                train_context.push(Context { hour, device });
            }
        }
        RecData {
            users,
            items,
            item_genre: (0..items).map(|i| 1 + i % 2).collect(),
            genres: 3,
            item_artist: (0..items).map(|i| 1 + i % 4).collect(),
            artists: 5,
            user_feature_names: vec!["plays".into(), "tenure".into()],
            user_features: (0..users)
                .flat_map(|u| [u as f32 * 3.0, 100.0 - u as f32])
                .collect(),
            devices: 3,
            train,
            train_context,
            validation: Vec::new(),
        }
    }

    #[test]
    fn context_changes_the_ranking() {
        let _rng = crate::serial_rng();
        let data = by_device();
        let cfg = RecommendConfig {
            epochs: 25,
            batch_size: 64,
            context_dropout: 0.1,
            ..Default::default()
        };
        let trained = train(&data, &cfg, Device::Cpu, &TrainControl::default(), |_| true).unwrap();
        let users: Vec<i64> = (0..data.users).collect();
        let share_even = |context: Context| {
            let uv = trained.user_vectors_in(&users, context);
            let (_, top) = uv
                .matmul(&trained.item_vectors.transpose(0, 1))
                .topk(5, 1, true, true);
            let top = Vec::<i64>::try_from(top.flatten(0, -1)).unwrap();
            top.iter().filter(|i| *i % 2 == 0).count() as f64 / top.len() as f64
        };
        let evening_phone = share_even(Context {
            hour: 21,
            device: 1,
        });
        let morning_tablet = share_even(Context { hour: 6, device: 2 });
        // Without context both shares would be about one half.
        assert!(
            evening_phone >= 0.75 && morning_tablet <= 0.25,
            "top-5 even share: device 1 {evening_phone}, device 2 {morning_tablet}"
        );
    }

    #[test]
    fn exported_module_ranks_like_the_model_and_takes_k_at_run_time() {
        let _rng = crate::serial_rng();
        let data = by_device();
        let cfg = RecommendConfig {
            epochs: 3,
            batch_size: 64,
            ..Default::default()
        };
        let trained = train(&data, &cfg, Device::Cpu, &TrainControl::default(), |_| true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.pt");
        let item_ids: Vec<i64> = (0..data.items).map(|i| 1000 + i).collect();
        trained.export(&item_ids, &path).unwrap();
        let module = tch::CModule::load(&path).unwrap();

        let users = [3i64, 57];
        let histories = data.histories(cfg.max_history);
        let fixed = trained
            .user_inputs(
                &users.iter().map(|u| Some(*u)).collect::<Vec<_>>(),
                &users
                    .iter()
                    .map(|u| histories[*u as usize].clone())
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let raw = Tensor::from_slice(
            &users
                .iter()
                .flat_map(|&u| data.user_features[u as usize * 2..u as usize * 2 + 2].to_vec())
                .collect::<Vec<f32>>(),
        )
        .reshape([2, 2]);
        let input = Tensor::cat(&[raw, fixed], 1);
        let context = Context {
            hour: 20,
            device: 1,
        };
        let run = |k: i64| {
            let out = module
                .forward_is(&[
                    tch::IValue::Tensor(input.shallow_clone()),
                    tch::IValue::Tensor(Tensor::from_slice(&[context.hour, context.hour])),
                    tch::IValue::Tensor(Tensor::from_slice(&[context.device, context.device])),
                    tch::IValue::Tensor(Tensor::from_slice(&[k])),
                ])
                .unwrap();
            let tch::IValue::Tuple(parts) = out else {
                panic!("not a tuple")
            };
            let (tch::IValue::Tensor(ids), tch::IValue::Tensor(scores)) = (&parts[0], &parts[1])
            else {
                panic!("not tensors")
            };
            (ids.shallow_clone(), scores.shallow_clone())
        };
        let expected = trained
            .user_vectors_in(&users, context)
            .matmul(&trained.item_vectors.transpose(0, 1));
        let (expected_scores, expected_top) = expected.topk(5, 1, true, true);
        let (ids, scores) = run(5);
        assert_eq!(ids.size(), [2, 5]);
        assert_eq!(
            Vec::<i64>::try_from(ids.flatten(0, -1)).unwrap(),
            Vec::<i64>::try_from((expected_top + 1000).flatten(0, -1)).unwrap()
        );
        let gap = (scores - expected_scores).abs().max().double_value(&[]);
        assert!(gap < 1e-4, "scores differ by {gap}");
        assert_eq!(run(12).0.size(), [2, 12]);
        // The user tower and the items, which the model server's item index
        // scores in place of forward, are the model's own.
        let vectors = module
            .method_ts(
                "user_vectors",
                &[
                    input.shallow_clone(),
                    Tensor::from_slice(&[context.hour, context.hour]),
                    Tensor::from_slice(&[context.device, context.device]),
                ],
            )
            .unwrap();
        let gap = (vectors - trained.user_vectors_in(&users, context))
            .abs()
            .max()
            .double_value(&[]);
        assert!(gap < 1e-5, "user vectors differ by {gap}");
        let no_args: [tch::IValue; 0] = [];
        let tch::IValue::Tuple(items) = module.method_is("items", &no_args).unwrap() else {
            panic!("items() is not a tuple")
        };
        let (tch::IValue::Tensor(vectors), tch::IValue::Tensor(ids)) = (&items[0], &items[1])
        else {
            panic!("items() is not two tensors")
        };
        assert!(vectors.equal(&trained.item_vectors));
        assert_eq!(Vec::<i64>::try_from(ids).unwrap(), item_ids);
        // k beyond the catalogue returns every item.
        assert_eq!(run(1000).0.size(), [2, data.items]);
        // Unknown context and device codes are accepted.
        let out = module.forward_is(&[
            tch::IValue::Tensor(input.shallow_clone()),
            tch::IValue::Tensor(Tensor::from_slice(&[-1i64, 99])),
            tch::IValue::Tensor(Tensor::from_slice(&[0i64, 42])),
            tch::IValue::Tensor(Tensor::from_slice(&[3i64])),
        ]);
        assert!(out.is_ok(), "{out:?}");
        // A cold user (no id, no history) still gets a ranking.
        let cold = trained.user_inputs(&[None], &[Vec::new()]).unwrap();
        assert_eq!(cold.size(), [1, trained.static_width()]);
        assert_eq!(cold.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn cancel_stops_training_and_a_checkpoint_resumes_it() {
        let _rng = crate::serial_rng();
        let (data, _) = planted(3);
        let cfg = RecommendConfig {
            epochs: 3,
            batch_size: 256,
            patience: 10,
            ..Default::default()
        };
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let control = TrainControl {
            checkpoint_dir: None,
            cancel: Some(cancel),
        };
        let e = train(&data, &cfg, Device::Cpu, &control, |_| true)
            .err()
            .unwrap();
        assert!(matches!(e, Error::Cancelled), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let control = TrainControl {
            checkpoint_dir: Some(dir.path().to_path_buf()),
            cancel: None,
        };
        // The first attempt stops after epoch 2 (its report says stop).
        let e = train(&data, &cfg, Device::Cpu, &control, |r| r.epoch < 2)
            .err()
            .unwrap();
        assert!(matches!(e, Error::Cancelled), "{e}");
        assert_eq!(checkpoint::latest_epoch(dir.path()), Some(2));
        let mut epochs = Vec::new();
        let resumed = train(&data, &cfg, Device::Cpu, &control, |r| {
            epochs.push(r.epoch);
            true
        })
        .unwrap();
        assert_eq!(resumed.resumed_after, Some(2));
        assert_eq!(epochs, [3]);
        assert_eq!(resumed.reports.len(), 3, "history carried over");
    }
}
