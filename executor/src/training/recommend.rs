//! The recommendation pipeline: (user, item) pairs played in the 90 days
//! before the cutoff, with the context they were played in most (hour slot,
//! device), the catalogue (genre, artist) and the users' features → two-tower
//! model → Recall/NDCG/MRR/Hit@10 on the items users discover in the week
//! after the cutoff → scripted TorchScript, manifest and online snapshot
//! (features and history at the end of the data) → a registry version.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;
use encore_features::plans::{self, Inputs, PlanParams};
use encore_models::recommend::{
    self as model, Context, RecData, RecommendConfig, TrainedRecommend,
};
use encore_models::registry::{self, Feature, Manifest, Registry, TensorSpec};
use tch::{Device, Tensor};

use super::churn::{Trained, collect, play_span};
use super::eval::int64s;
use super::{
    JobTarget, Progress, TrainError, frame, manifest_extra, promote, register_tables, stage,
};

/// Share of each user's training pairs held out for early stopping (users
/// with at least [`MIN_PAIRS_FOR_VALIDATION`] pairs).
const VALIDATION_SHARE: u64 = 10;
const MIN_PAIRS_FOR_VALIDATION: usize = 5;
/// Popular items kept in the snapshot for cold-start users.
const POPULAR_ITEMS: usize = 500;
/// Most replayed songs per user kept for the return-playlist mode.
const MAX_REPLAYED: usize = 50;
/// Favourite genres per user kept for the return-playlist mode.
const FAVOURITE_GENRES: usize = 2;
/// The metric automatic promotion compares.
pub const PROMOTION_METRIC: &str = "recall_at_10";

/// A recommendation training job.
#[derive(Debug, Clone)]
pub struct RecommendJob {
    /// Data, cutoff (pairs before it, held-out discoveries in the week
    /// after it), registry, device.
    pub target: JobTarget,
    /// Network and optimiser settings.
    pub config: RecommendConfig,
}

/// Dense codes for ids seen in order.
#[derive(Debug, Default)]
struct Codes {
    index: HashMap<i64, i64>,
    ids: Vec<i64>,
}

impl Codes {
    fn code(&mut self, id: i64) -> i64 {
        let next = self.ids.len() as i64;
        *self.index.entry(id).or_insert_with(|| {
            self.ids.push(id);
            next
        })
    }

    fn get(&self, id: i64) -> Option<i64> {
        self.index.get(&id).copied()
    }
}

/// Dense codes for names, 0 for unknown (null or empty).
#[derive(Debug, Default)]
struct Vocabulary {
    index: HashMap<String, i64>,
    names: Vec<String>,
}

impl Vocabulary {
    fn code(&mut self, name: Option<&str>) -> i64 {
        match name {
            None | Some("") => 0,
            Some(n) => {
                let next = self.names.len() as i64 + 1;
                *self.index.entry(n.to_owned()).or_insert_with(|| {
                    self.names.push(n.to_owned());
                    next
                })
            }
        }
    }
}

fn strings(column: &ArrayRef) -> Result<Vec<Option<String>>, TrainError> {
    let c = cast(column, &DataType::Utf8)?;
    Ok(c.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect())
}

/// Whether `(user, item)` goes to validation: a stable hash, so a resumed
/// attempt splits the same way.
fn held_for_validation(user: i64, item: i64, seed: i64) -> bool {
    let mut x = (user as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (item as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ seed as u64;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    x % 100 < VALIDATION_SHARE
}

/// The catalogue: dense item codes with genre and artist codes.
struct Catalogue {
    items: Codes,
    genre: Vec<i64>,
    artist: Vec<i64>,
    genres: Vocabulary,
    artists: Vocabulary,
}

impl Catalogue {
    fn code(&mut self, item: i64) -> i64 {
        let code = self.items.code(item);
        if code as usize == self.genre.len() {
            self.genre.push(0);
            self.artist.push(0);
        }
        code
    }
}

async fn catalogue(ctx: &SessionContext) -> Result<Catalogue, TrainError> {
    let mut c = Catalogue {
        items: Codes::default(),
        genre: Vec::new(),
        artist: Vec::new(),
        genres: Vocabulary::default(),
        artists: Vocabulary::default(),
    };
    if !ctx.table_exist("items")? {
        return Ok(c);
    }
    let batches = collect(
        ctx,
        "SELECT item_id, CAST(genre AS VARCHAR) AS genre, CAST(artist_id AS VARCHAR) AS artist FROM items ORDER BY item_id",
    )
    .await?;
    for b in &batches {
        let ids = int64s(b.column(0))?;
        let (genres, artists) = (strings(b.column(1))?, strings(b.column(2))?);
        for (r, id) in ids.into_iter().enumerate() {
            let code = c.code(id) as usize;
            c.genre[code] = c.genres.code(genres[r].as_deref());
            c.artist[code] = c.artists.code(artists[r].as_deref());
        }
    }
    Ok(c)
}

/// Training pairs with their most-played context, and the device names.
struct Pairs {
    users: Codes,
    pairs: Vec<(i64, i64)>,
    contexts: Vec<Context>,
    plays: Vec<i64>,
    devices: Vocabulary,
}

async fn training_pairs(
    ctx: &SessionContext,
    params: &PlanParams,
    catalogue: &mut Catalogue,
) -> Result<Pairs, TrainError> {
    let sql = format!(
        "SELECT * FROM ({}) c ORDER BY user_id, item_id, hour_slot, device",
        plans::recommendation_context_sql(params)?
    );
    let batches = collect(ctx, &sql).await?;
    let mut out = Pairs {
        users: Codes::default(),
        pairs: Vec::new(),
        contexts: Vec::new(),
        plays: Vec::new(),
        devices: Vocabulary::default(),
    };
    // (user, item) → row in `pairs`, and the plays of its best context.
    let mut at: HashMap<(i64, i64), (usize, i64)> = HashMap::new();
    for b in &batches {
        let (users, items) = (int64s(b.column(0))?, int64s(b.column(1))?);
        let slots = int64s(b.column(2))?;
        let devices = strings(b.column(3))?;
        let plays = int64s(b.column(4))?;
        for r in 0..b.num_rows() {
            let u = out.users.code(users[r]);
            let i = catalogue.code(items[r]);
            let context = Context {
                hour: slots[r] * 4,
                device: out.devices.code(devices[r].as_deref()),
            };
            match at.get_mut(&(u, i)) {
                Some((row, best)) => {
                    out.plays[*row] += plays[r];
                    if plays[r] > *best {
                        *best = plays[r];
                        out.contexts[*row] = context;
                    }
                }
                None => {
                    at.insert((u, i), (out.pairs.len(), plays[r]));
                    out.pairs.push((u, i));
                    out.contexts.push(context);
                    out.plays.push(plays[r]);
                }
            }
        }
    }
    Ok(out)
}

/// Numeric user features (`names`, values row-major) for `users`, zero for
/// users the plan has no row for.
async fn user_features(
    ctx: &SessionContext,
    params: &PlanParams,
    inputs: Inputs,
    users: &[i64],
) -> Result<(Vec<String>, Vec<f32>), TrainError> {
    let batches = collect(ctx, &plans::user_features_sql(params, inputs)?).await?;
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Err(TrainError::EmptyData(format!(
            "no user features at {}",
            params.cutoff
        )));
    }
    let (rows, _) = frame::build(&batches, &[], None)?;
    let f = rows.numeric_names.len();
    let by_id: HashMap<i64, usize> = rows
        .user_ids
        .iter()
        .enumerate()
        .map(|(r, id)| (*id, r))
        .collect();
    let mut values = vec![0f32; users.len() * f];
    for (k, id) in users.iter().enumerate() {
        if let Some(&r) = by_id.get(id) {
            values[k * f..(k + 1) * f].copy_from_slice(&rows.numeric[r * f..(r + 1) * f]);
        }
    }
    Ok((rows.numeric_names, values))
}

/// One row of the recommendation pairs plan.
struct PairRow {
    train: bool,
    user: i64,
    item: i64,
    plays: i64,
    seen_before: bool,
}

/// Every row of the recommendation pairs plan at `params`. Filtered in
/// Rust, not in SQL: with `WHERE split = ...` the optimiser prunes one side
/// of the UNION to an empty stage, and Ballista 55's adaptive planner then
/// hangs on that job (it cannot cancel the stage and rejects the task
/// status updates that follow).
async fn pair_rows(ctx: &SessionContext, params: &PlanParams) -> Result<Vec<PairRow>, TrainError> {
    let sql = format!(
        "SELECT split, user_id, item_id, plays, seen_before FROM ({}) p",
        plans::recommendation_pairs_sql(params)?
    );
    let mut out = Vec::new();
    for b in collect(ctx, &sql).await? {
        let split = strings(b.column(0))?;
        let (u, i, n) = (
            int64s(b.column(1))?,
            int64s(b.column(2))?,
            int64s(b.column(3))?,
        );
        let seen = cast(b.column(4), &DataType::Boolean)?;
        let seen = seen.as_boolean();
        for r in 0..b.num_rows() {
            out.push(PairRow {
                train: split[r].as_deref() == Some("train"),
                user: u[r],
                item: i[r],
                plays: n[r],
                seen_before: seen.is_valid(r) && seen.value(r),
            });
        }
    }
    Ok(out)
}

/// Per user, the items they discovered (completed, not played before) in
/// the holdout after the cutoff, in dense codes; users or items training
/// never saw are left out.
async fn discoveries(
    ctx: &SessionContext,
    params: &PlanParams,
    users: &Codes,
    catalogue: &Catalogue,
) -> Result<Vec<(i64, i64)>, TrainError> {
    Ok(pair_rows(ctx, params)
        .await?
        .into_iter()
        .filter(|r| !r.train && !r.seen_before)
        .filter_map(|r| Some((users.get(r.user)?, catalogue.items.get(r.item)?)))
        .collect())
}

/// Runs the job on `ctx`; `progress` sees each stage and epoch and returns
/// false to cancel.
pub async fn train_recommend(
    ctx: &SessionContext,
    job: &RecommendJob,
    progress: &mut (dyn FnMut(Progress) -> bool + Send),
) -> Result<Trained, TrainError> {
    registry::check_model_name(&job.target.model_name)
        .map_err(|e| TrainError::InvalidJob(e.to_string()))?;
    job.config.validate()?;
    stage(progress, "computing pairs and features")?;
    register_tables(ctx, &job.target.data).await?;
    let (first, last) = play_span(ctx).await?;
    if first.date_naive() >= job.target.cutoff || last.date_naive() < job.target.cutoff {
        return Err(TrainError::InvalidJob(format!(
            "cutoff {}: plays run from {} to {}, but training needs plays before the cutoff and after it (to evaluate on)",
            job.target.cutoff,
            first.date_naive(),
            last.date_naive()
        )));
    }
    let inputs = Inputs::in_dir(&job.target.data);
    let params = PlanParams::at(job.target.cutoff);
    let mut catalogue = catalogue(ctx).await?;
    let pairs = training_pairs(ctx, &params, &mut catalogue).await?;
    if pairs.pairs.len() < 20 {
        return Err(TrainError::EmptyData(format!(
            "only {} (user, item) pairs in the 90 days before {}: too few to train",
            pairs.pairs.len(),
            job.target.cutoff
        )));
    }
    let (feature_names, features) = user_features(ctx, &params, inputs, &pairs.users.ids).await?;
    let test = discoveries(ctx, &params, &pairs.users, &catalogue).await?;

    let per_user = {
        let mut n = vec![0usize; pairs.users.ids.len()];
        for (u, _) in &pairs.pairs {
            n[*u as usize] += 1;
        }
        n
    };
    let mut data = RecData {
        users: pairs.users.ids.len() as i64,
        items: catalogue.items.ids.len() as i64,
        item_genre: catalogue.genre.clone(),
        genres: catalogue.genres.names.len() as i64 + 1,
        item_artist: catalogue.artist.clone(),
        artists: catalogue.artists.names.len() as i64 + 1,
        user_feature_names: feature_names.clone(),
        user_features: features,
        devices: pairs.devices.names.len() as i64 + 1,
        ..Default::default()
    };
    // Most-played first, so capped histories keep a user's favourites.
    let mut order: Vec<usize> = (0..pairs.pairs.len()).collect();
    order.sort_by_key(|&r| (pairs.pairs[r].0, std::cmp::Reverse(pairs.plays[r])));
    for r in order {
        let (u, i) = pairs.pairs[r];
        if per_user[u as usize] >= MIN_PAIRS_FOR_VALIDATION
            && held_for_validation(
                pairs.users.ids[u as usize],
                catalogue.items.ids[i as usize],
                job.config.seed,
            )
        {
            data.validation.push((u, i));
        } else {
            data.train.push((u, i));
            data.train_context.push(pairs.contexts[r]);
        }
    }

    stage(progress, "training")?;
    let trained = model::train(
        &data,
        &job.config,
        job.target.device,
        &job.target.control,
        |r| progress(Progress::RecEpoch(*r)),
    )
    .map_err(|e| match e {
        encore_models::Error::Cancelled => TrainError::Cancelled,
        e => TrainError::Model(e),
    })?;

    stage(progress, "evaluating")?;
    let metrics = evaluate(&data, &trained, &test)?;

    stage(progress, "exporting")?;
    let registry = Registry::open(&job.target.registry)?;
    let staged = registry.stage(&job.target.model_name)?;
    let artifact = |path: &std::path::Path, e: &dyn std::fmt::Display| TrainError::Artifact {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    trained.export(&catalogue.items.ids, &staged.join("model.pt"))?;
    let serve_at = last.date_naive() + chrono::Days::new(1);
    let online = staged.join("online");
    let files = snapshot(
        ctx,
        &PlanParams::at(serve_at),
        inputs,
        &trained,
        &pairs.users,
        &catalogue,
        &feature_names,
        job.config.max_history,
    )
    .await?;
    for (name, batch) in files {
        encore_features::datagen::write_parquet(&online, name, batch)
            .map_err(|e| artifact(&online, &e))?;
    }
    let manifest = manifest(job, &trained, &data, &pairs, &metrics, serve_at, test.len());
    let version = registry.publish(&job.target.model_name, &staged, &manifest)?;

    let promoted = promote(
        &registry,
        &job.target.model_name,
        version,
        job.target.promotion,
        PROMOTION_METRIC,
        &metrics,
    )?;
    Ok(Trained {
        version,
        metrics,
        promoted,
        rows: pairs.pairs.len(),
        resumed_after: trained.resumed_after,
    })
}

/// Ranking metrics at 10 on the held-out discoveries (every item ranked,
/// training and validation pairs excluded), for the model and for "most
/// popular" as a baseline.
fn evaluate(
    data: &RecData,
    trained: &TrainedRecommend,
    test: &[(i64, i64)],
) -> Result<BTreeMap<String, f64>, TrainError> {
    let mut metrics = BTreeMap::new();
    let best = trained.history[trained.best_epoch.max(1) as usize - 1];
    metrics.insert("validation_recall_at_10".into(), best);
    metrics.insert("test_users".into(), model::by_user(test).len() as f64);
    if test.is_empty() {
        return Ok(metrics);
    }
    let mut seen = model::by_user(&data.train);
    for (u, i) in &data.validation {
        seen.entry(*u).or_default().insert(*i);
    }
    let relevant = model::by_user(test);
    let m = model::evaluate(
        &trained.user_vectors,
        &trained.item_vectors,
        &seen,
        &relevant,
        10,
    )?;
    metrics.insert("recall_at_10".into(), m.recall);
    metrics.insert("ndcg_at_10".into(), m.ndcg);
    metrics.insert("mrr_at_10".into(), m.mrr);
    metrics.insert("hit_at_10".into(), m.hit);
    let mut counts = vec![0f32; data.items as usize];
    for (_, i) in &data.train {
        counts[*i as usize] += 1.0;
    }
    let popular = model::evaluate(
        &Tensor::ones([data.users, 1], (tch::Kind::Float, Device::Cpu)),
        &Tensor::from_slice(&counts).unsqueeze(1),
        &seen,
        &relevant,
        10,
    )?;
    metrics.insert("popular_recall_at_10".into(), popular.recall);
    metrics.insert("popular_ndcg_at_10".into(), popular.ndcg);
    Ok(metrics)
}

/// `online/users.parquet` (user_id, the raw user features, then the user
/// inputs: id embedding and history mean over the last 90 days of plays)
/// and `online/popular.parquet` (item_id, score: plays in those 90 days),
/// at the end of the data; plus the return-playlist files
/// ([`return_playlist_batches`]).
#[allow(clippy::too_many_arguments)]
async fn snapshot(
    ctx: &SessionContext,
    params: &PlanParams,
    inputs: Inputs,
    trained: &TrainedRecommend,
    users: &Codes,
    catalogue: &Catalogue,
    feature_names: &[String],
    max_history: usize,
) -> Result<Vec<(&'static str, RecordBatch)>, TrainError> {
    // Plays per (user, item) in the 90 days before the snapshot, from the
    // context plan (it reads no day after the data's end).
    let mut plays: HashMap<(i64, i64), i64> = HashMap::new();
    let sql = plans::recommendation_context_sql(params)?;
    for b in collect(ctx, &sql).await? {
        let (u, i, n) = (
            int64s(b.column(0))?,
            int64s(b.column(1))?,
            int64s(b.column(4))?,
        );
        for r in 0..b.num_rows() {
            *plays.entry((u[r], i[r])).or_default() += n[r];
        }
    }
    let mut rows: Vec<PairRow> = plays
        .into_iter()
        .map(|((user, item), plays)| PairRow {
            train: true,
            user,
            item,
            plays,
            seen_before: true,
        })
        .collect();
    rows.sort_by_key(|r| (r.user, std::cmp::Reverse(r.plays), r.item));
    let mut history: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut item_plays: HashMap<i64, i64> = HashMap::new();
    for r in &rows {
        *item_plays.entry(r.item).or_default() += r.plays;
        if let Some(code) = catalogue.items.get(r.item) {
            let h = history.entry(r.user).or_default();
            if h.len() < max_history {
                h.push(code);
            }
        }
    }
    // Users with a history, plus users training knew.
    let ids: Vec<i64> = history
        .keys()
        .copied()
        .chain(users.ids.iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let (names, values) = user_features(ctx, params, inputs, &ids).await?;
    if names != feature_names {
        return Err(TrainError::InvalidJob(
            "the snapshot's feature columns differ from training's".into(),
        ));
    }
    let f = names.len();
    let width = trained.static_width() as usize;
    let mut inputs_flat = Vec::with_capacity(ids.len() * width);
    for chunk in ids.chunks(4096) {
        let known: Vec<Option<i64>> = chunk.iter().map(|id| users.get(*id)).collect();
        let hist: Vec<Vec<i64>> = chunk
            .iter()
            .map(|id| history.get(id).cloned().unwrap_or_default())
            .collect();
        let t = trained.user_inputs(&known, &hist)?;
        inputs_flat
            .extend(Vec::<f32>::try_from(t.flatten(0, -1)).map_err(encore_models::Error::from)?);
    }
    let mut fields = vec![Field::new("user_id", DataType::Int64, false)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(ids.clone()))];
    for (j, name) in names.iter().enumerate() {
        fields.push(Field::new(name, DataType::Float32, false));
        columns.push(Arc::new(Float32Array::from_iter_values(
            (0..ids.len()).map(|r| values[r * f + j]),
        )));
    }
    for (j, name) in static_columns(width).iter().enumerate() {
        fields.push(Field::new(name, DataType::Float32, false));
        columns.push(Arc::new(Float32Array::from_iter_values(
            (0..ids.len()).map(|r| inputs_flat[r * width + j]),
        )));
    }
    let users_batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;

    let mut popular: Vec<(i64, i64)> = item_plays.into_iter().collect();
    popular.sort_by_key(|&(item, plays)| (std::cmp::Reverse(plays), item));
    popular.truncate(POPULAR_ITEMS);
    let popular_batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("item_id", DataType::Int64, false),
            Field::new("score", DataType::Float32, false),
            Field::new("device", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(popular.iter().map(|p| p.0))),
            Arc::new(Float32Array::from_iter_values(
                popular.iter().map(|p| p.1 as f32),
            )),
            Arc::new(StringArray::from(vec![None::<&str>; popular.len()])),
        ],
    )?;
    let (returning, items) = return_playlist_batches(&rows, catalogue)?;
    Ok(vec![
        ("users.parquet", users_batch),
        ("popular.parquet", popular_batch),
        ("return.parquet", returning),
        ("items.parquet", items),
    ])
}

/// What the model server's return-playlist mode reads: per user
/// (`online/return.parquet`) the songs replayed most (two plays or more,
/// best first), every song played (so "new" means new to them) and the
/// favourite genres (most plays first); per item (`online/items.parquet`)
/// its genre. `rows` are (user, item, plays) sorted by user, then plays
/// descending.
fn return_playlist_batches(
    rows: &[PairRow],
    catalogue: &Catalogue,
) -> Result<(RecordBatch, RecordBatch), TrainError> {
    use datafusion::arrow::array::Int64Builder;
    use datafusion::arrow::array::{ListBuilder, StringBuilder};
    let genre_of = |item: i64| -> Option<&str> {
        let code = catalogue.items.get(item)?;
        let g = catalogue.genre[code as usize];
        (g > 0).then(|| catalogue.genres.names[g as usize - 1].as_str())
    };
    let mut users = Vec::new();
    let mut replayed = ListBuilder::new(Int64Builder::new());
    let mut played = ListBuilder::new(Int64Builder::new());
    let mut genres = ListBuilder::new(StringBuilder::new());
    for group in rows.chunk_by(|a, b| a.user == b.user) {
        users.push(group[0].user);
        for r in group.iter().filter(|r| r.plays >= 2).take(MAX_REPLAYED) {
            replayed.values().append_value(r.item);
        }
        replayed.append(true);
        for r in group {
            played.values().append_value(r.item);
        }
        played.append(true);
        let mut by_genre: BTreeMap<&str, i64> = BTreeMap::new();
        for r in group {
            if let Some(g) = genre_of(r.item) {
                *by_genre.entry(g).or_default() += r.plays;
            }
        }
        let mut ranked: Vec<(&str, i64)> = by_genre.into_iter().collect();
        ranked.sort_by_key(|&(g, n)| (std::cmp::Reverse(n), g));
        for (g, _) in ranked.into_iter().take(FAVOURITE_GENRES) {
            genres.values().append_value(g);
        }
        genres.append(true);
    }
    let returning = RecordBatch::try_from_iter(vec![
        ("user_id", Arc::new(Int64Array::from(users)) as ArrayRef),
        ("replayed", Arc::new(replayed.finish()) as ArrayRef),
        ("played", Arc::new(played.finish()) as ArrayRef),
        ("favourite_genres", Arc::new(genres.finish()) as ArrayRef),
    ])?;
    let items = RecordBatch::try_from_iter(vec![
        (
            "item_id",
            Arc::new(Int64Array::from(catalogue.items.ids.clone())) as ArrayRef,
        ),
        (
            "genre",
            Arc::new(StringArray::from_iter(
                catalogue.items.ids.iter().map(|&i| genre_of(i)),
            )) as ArrayRef,
        ),
    ])?;
    Ok((returning, items))
}

/// Names of the user-input columns: the id embedding, then the history mean.
fn static_columns(width: usize) -> Vec<String> {
    let half = width / 2;
    (0..half)
        .map(|j| format!("user_embedding_{j}"))
        .chain((0..half).map(|j| format!("history_embedding_{j}")))
        .collect()
}

fn manifest(
    job: &RecommendJob,
    trained: &TrainedRecommend,
    data: &RecData,
    pairs: &Pairs,
    metrics: &BTreeMap<String, f64>,
    serve_at: NaiveDate,
    test_pairs: usize,
) -> Manifest {
    let width = trained.static_width() as usize;
    let mut features: Vec<Feature> = trained
        .standardisation
        .iter()
        .map(|(name, mean, std)| {
            let mut details = BTreeMap::new();
            details.insert("mean".into(), serde_json::json!(mean));
            details.insert("std".into(), serde_json::json!(std));
            if let Some(text) = plans::describe(name) {
                details.insert("description".into(), serde_json::json!(text));
            }
            Feature::Described {
                name: name.clone(),
                details,
            }
        })
        .collect();
    features.extend(static_columns(width).into_iter().map(Feature::Name));
    let spec = |name: &str, dtype: &str, shape: &[i64]| TensorSpec {
        name: name.into(),
        dtype: dtype.into(),
        shape: shape.to_vec(),
    };
    let mut extra = manifest_extra(
        &job.target.job_id,
        metrics,
        serde_json::json!({
            "path": job.target.data.display().to_string(),
            "cutoff": job.target.cutoff.to_string(),
            "snapshot_cutoff": serve_at.to_string(),
            "users": data.users,
            "items": data.items,
            "training_pairs": data.train.len(),
            "validation_pairs": data.validation.len(),
            "test_pairs": test_pairs,
        }),
        serde_json::json!(job.config),
        trained.best_epoch,
        serde_json::json!(trained.reports),
    );
    extra.insert(
        "hour_slots".into(),
        serde_json::json!("hour -1: unknown; else UTC hour 0-23 in four-hour slots"),
    );
    Manifest {
        name: job.target.model_name.clone(),
        version: 0,
        kind: "recommend".into(),
        inputs: vec![
            spec(
                "user_features",
                "FP32",
                &[-1, (trained.standardisation.len() + width) as i64],
            ),
            spec("hour", "INT64", &[-1]),
            spec("device", "INT64", &[-1]),
            spec("k", "INT64", &[1]),
        ],
        outputs: vec![
            spec("item_ids", "INT64", &[-1, -1]),
            spec("scores", "FP32", &[-1, -1]),
        ],
        features,
        prior: BTreeMap::new(),
        risk_tiers: Default::default(),
        devices: pairs.devices.names.clone(),
        catalogue_size: Some(data.items),
        extra,
    }
}
