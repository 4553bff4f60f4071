//! Exact top-k retrieval over a recommend model's item vectors, without a
//! float matrix product per request.
//!
//! A two-tower recommend module scores every item by an inner product with
//! the user's vector, then keeps the top k. Over 100,000 items × 64
//! dimensions that product reads 25 MB of floats per request, and libtorch
//! spends over a millisecond on it. [`ItemIndex`] gets the same answer from
//! 8-bit codes (a quarter of the memory, and 64 multiply-adds per AVX-512
//! VNNI instruction) and a proof:
//!
//! - each item vector x is stored as codes c (−127..=127) and a scale s, so
//!   every coordinate is within s/2 of s·c;
//! - the query u is coded as p (−63..=63) with step t, each coordinate
//!   within t/2 of t·p;
//! - the approximate score a = t·s·(p·c) is then within
//!   e = s·(‖u‖₁/2 + t/2·‖c‖₁) of the true score u·x.
//!
//! The scan keeps the k largest lower bounds a − e seen so far; an item
//! whose upper bound a + e falls below the k-th of them cannot be in the
//! top k. The few items that survive are scored again in full precision and
//! the best k returned: the same items, with the same scores, as the
//! module's `u @ items.T` followed by `topk` (up to float rounding between
//! near-equal scores).
//!
//! [`Retrieval`] serves a recommend module this way when it exports two
//! methods besides `forward(user_features, hour, device, k)`:
//! `user_vectors(user_features, hour, device) -> Tensor [N, D]` and
//! `items() -> (Tensor [M, D] item vectors, Tensor [M] item ids)`, such that
//! `forward` returns the top k of `user_vectors(..) @ items()[0].T`. The
//! server checks that on a few users when it loads the model, and keeps
//! calling `forward` if the answers differ.

pub mod kernel;

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use kernel::{BLOCK, GROUP, Kernel};
use tch::{CModule, Device, IValue, Kind, TchError, Tensor};

/// Query codes are −63..=63, shifted by this to be unsigned bytes (1..=127).
const QUERY_OFFSET: i32 = 64;
/// Largest query code.
const QUERY_LEVELS: f32 = 63.0;
/// Largest item code.
const ITEM_LEVELS: f32 = 127.0;
/// Blocks scanned per query before moving to the next query of a batch, so
/// a tile of codes (256 items, 16 KB at 64 dimensions) stays in L1 cache.
const TILE_BLOCKS: usize = 32;

/// Why item vectors cannot be indexed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("item index: {0}")]
pub struct IndexError(String);

/// Item vectors coded for [exact top-k search](ItemIndex::search).
pub struct ItemIndex {
    dim: usize,
    items: usize,
    /// Groups per block ([`GROUP`] dimensions each; an even number).
    groups: usize,
    /// Codes in the kernel's layout: blocks of [`BLOCK`] items.
    codes: Vec<i8>,
    /// Per item (padding included): its scale s.
    scales: Vec<f32>,
    /// Per item: s · ‖c‖₁ (its share of the query's rounding error).
    spreads: Vec<f32>,
    /// Per item: [`QUERY_OFFSET`] · Σc, taken off the kernel's sums.
    offsets: Vec<i32>,
    /// The original vectors, row-major, for the exact scores.
    vectors: Vec<f32>,
    /// The scan's implementation.
    kernel: Kernel,
}

/// One scored item: its position in the index and its exact score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Row of the item in the vectors the index was built from.
    pub item: usize,
    /// Inner product with the user vector.
    pub score: f32,
}

impl ItemIndex {
    /// Codes `vectors` (`items × dim`, row-major). Non-finite values are
    /// refused: a NaN would make every bound meaningless.
    pub fn new(vectors: Vec<f32>, dim: usize) -> Result<Self, IndexError> {
        if dim == 0 {
            return Err(IndexError("item vectors have no dimensions".into()));
        }
        if !vectors.len().is_multiple_of(dim) {
            return Err(IndexError(format!(
                "{} values are not whole vectors of {dim}",
                vectors.len()
            )));
        }
        if let Some(i) = vectors.iter().position(|v| !v.is_finite()) {
            return Err(IndexError(format!(
                "item {} has a non-finite value ({})",
                i / dim,
                vectors[i]
            )));
        }
        let items = vectors.len() / dim;
        let groups = dim.div_ceil(2 * GROUP) * 2;
        let blocks = items.div_ceil(BLOCK);
        let mut codes = vec![0i8; blocks * BLOCK * groups * GROUP];
        let mut scales = vec![0f32; blocks * BLOCK];
        let mut spreads = vec![0f32; blocks * BLOCK];
        let mut offsets = vec![0i32; blocks * BLOCK];
        for (i, x) in vectors.chunks_exact(dim).enumerate() {
            let largest = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = largest / ITEM_LEVELS;
            let (block, slot) = (i / BLOCK, i % BLOCK);
            let (mut l1, mut sum) = (0i32, 0i32);
            for (d, v) in x.iter().enumerate() {
                let c = if s > 0.0 {
                    (v / s).round().clamp(-ITEM_LEVELS, ITEM_LEVELS) as i8
                } else {
                    0
                };
                let at = ((block * groups + d / GROUP) * BLOCK + slot) * GROUP + d % GROUP;
                codes[at] = c;
                l1 += i32::from(c).abs();
                sum += i32::from(c);
            }
            scales[i] = s;
            spreads[i] = s * l1 as f32;
            offsets[i] = QUERY_OFFSET * sum;
        }
        Ok(Self {
            dim,
            items,
            groups,
            codes,
            scales,
            spreads,
            offsets,
            vectors,
            kernel: Kernel::best(),
        })
    }

    /// The same index scanning with `kernel` (by default the fastest this
    /// CPU runs); an error if this CPU lacks it.
    pub fn with_kernel(mut self, kernel: Kernel) -> Result<Self, IndexError> {
        if !kernel.is_available() {
            return Err(IndexError(format!(
                "this CPU cannot run the {} kernel",
                kernel.name()
            )));
        }
        self.kernel = kernel;
        Ok(self)
    }

    /// The scan's implementation.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Items indexed.
    pub fn len(&self) -> usize {
        self.items
    }

    /// True without items.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// Dimensions of a vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Memory held, in bytes (codes, per-item terms and the vectors).
    pub fn bytes(&self) -> usize {
        self.codes.len() + 12 * self.scales.len() + 4 * self.vectors.len()
    }

    /// The `min(k, items)` items with the largest inner product with each
    /// of `users` (`n × dim`, row-major), best first, ties by position.
    /// `None` if a user vector holds a non-finite value.
    pub fn search(&self, users: &[f32], k: usize) -> Option<Vec<Vec<Hit>>> {
        if !users.len().is_multiple_of(self.dim) || users.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let k = k.min(self.items);
        let mut queries: Vec<Query> = users
            .chunks_exact(self.dim)
            .map(|u| Query::new(u, self.groups, k))
            .collect();
        if k == 0 {
            return Some(vec![Vec::new(); queries.len()]);
        }
        let block_len = self.groups * GROUP * BLOCK;
        let tile_items = TILE_BLOCKS * BLOCK;
        let mut upper = [0f32; TILE_BLOCKS * BLOCK];
        let mut lower = [0f32; TILE_BLOCKS * BLOCK];
        let mut flags = [0u8; TILE_BLOCKS];
        for (t, codes) in self.codes.chunks(TILE_BLOCKS * block_len).enumerate() {
            let first = t * tile_items;
            let padded = codes.len() / block_len * BLOCK;
            let range = first..first + padded;
            let tile = kernel::Tile {
                codes,
                groups: self.groups,
                scales: &self.scales[range.clone()],
                spreads: &self.spreads[range.clone()],
                offsets: &self.offsets[range],
            };
            // Padding items at the end of the last tile are never offered.
            let count = padded.min(self.items - first);
            for query in &mut queries {
                let terms = kernel::QueryTerms {
                    codes: &query.codes,
                    pairs: &query.pairs,
                    step: query.step,
                    half_l1: query.half_l1,
                    half_step: query.half_step,
                    floor: query.floor,
                };
                let flags = &mut flags[..padded / BLOCK];
                self.kernel.bounds(
                    &tile,
                    &terms,
                    &mut upper[..padded],
                    &mut lower[..padded],
                    flags,
                );
                query.select(first, count, flags, &upper, &lower);
            }
        }
        Some(
            queries
                .into_iter()
                .zip(users.chunks_exact(self.dim))
                .map(|(q, u)| self.rerank(q, u))
                .collect(),
        )
    }

    /// The exact top k of a query's surviving candidates.
    fn rerank(&self, query: Query, user: &[f32]) -> Vec<Hit> {
        let mut hits: Vec<Hit> = query
            .candidates
            .into_iter()
            .filter(|&(_, upper)| upper >= query.floor)
            .map(|(item, _)| {
                let item = item as usize;
                let x = &self.vectors[item * self.dim..(item + 1) * self.dim];
                let score = dot(x, user);
                Hit { item, score }
            })
            .collect();
        hits.sort_unstable_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.item.cmp(&b.item))
        });
        hits.truncate(query.k);
        hits
    }
}

/// A recommend module's item scoring done by an [`ItemIndex`] over the
/// module's own item vectors.
pub struct Retrieval {
    index: ItemIndex,
    ids: Vec<i64>,
}

impl Retrieval {
    /// The module method mapping `forward`'s inputs but `k` to user vectors.
    pub const USER_VECTORS: &str = "user_vectors";
    /// The module method returning (item vectors, item ids).
    pub const ITEMS: &str = "items";

    /// Indexes `module.items()`; `Ok(None)` for a module without the two
    /// methods, an error for item vectors that cannot be indexed.
    pub fn of_module(module: &CModule) -> Result<Option<Self>, String> {
        let no_args: [IValue; 0] = [];
        let Ok(items) = module.method_is(Self::ITEMS, &no_args) else {
            return Ok(None);
        };
        let (vectors, ids) = match items {
            IValue::Tuple(mut parts) if parts.len() == 2 => {
                match (parts.remove(0), parts.remove(0)) {
                    (IValue::Tensor(v), IValue::Tensor(i)) => (v, i),
                    _ => return Err(format!("{}() must return two tensors", Self::ITEMS)),
                }
            }
            _ => {
                return Err(format!(
                    "{}() must return a tuple of two tensors",
                    Self::ITEMS
                ));
            }
        };
        let (size, id_size) = (vectors.size(), ids.size());
        if size.len() != 2 || id_size != [size[0]] {
            return Err(format!(
                "{}() returned vectors of shape {size:?} and ids of shape {id_size:?}; \
                 expected [M, D] and [M]",
                Self::ITEMS
            ));
        }
        let values =
            Vec::<f32>::try_from(flat(&vectors, Kind::Float)).map_err(|e| e.to_string())?;
        let ids = Vec::<i64>::try_from(flat(&ids, Kind::Int64)).map_err(|e| e.to_string())?;
        let index = ItemIndex::new(values, size[1] as usize).map_err(|e| e.to_string())?;
        Ok(Some(Self { index, ids }))
    }

    /// The index.
    pub fn index(&self) -> &ItemIndex {
        &self.index
    }

    /// `forward(args)` computed through the index: (item ids [N, k'],
    /// scores [N, k']) with k' = min(k, items). `None` where `forward`
    /// should run instead: k below 1, or a user vector that is not finite.
    pub fn run(&self, module: &CModule, args: &[IValue]) -> Result<Option<Vec<Tensor>>, TchError> {
        let Some((IValue::Tensor(k), user_args)) = args.split_last() else {
            return Ok(None);
        };
        let k = match Vec::<i64>::try_from(flat(k, Kind::Int64))?.first() {
            Some(&k) if k >= 1 => k as usize,
            _ => return Ok(None),
        };
        let users = match module.method_is(Self::USER_VECTORS, user_args)? {
            IValue::Tensor(t) => t,
            other => {
                return Err(TchError::Kind(format!(
                    "{} returned {other:?}, expected a tensor",
                    Self::USER_VECTORS
                )));
            }
        };
        let size = users.size();
        if size.len() != 2 || size[1] as usize != self.index.dim() {
            return Err(TchError::Shape(format!(
                "{} returned shape {size:?}, the items have {} dimensions",
                Self::USER_VECTORS,
                self.index.dim()
            )));
        }
        let rows = size[0];
        let values = Vec::<f32>::try_from(flat(&users, Kind::Float))?;
        let Some(found) = self.index.search(&values, k) else {
            return Ok(None);
        };
        let width = k.min(self.index.len()) as i64;
        let ids: Vec<i64> = found.iter().flatten().map(|h| self.ids[h.item]).collect();
        let scores: Vec<f32> = found.iter().flatten().map(|h| h.score).collect();
        Ok(Some(vec![
            Tensor::from_slice(&ids).view([rows, width]),
            Tensor::from_slice(&scores).view([rows, width]),
        ]))
    }

    /// Checks that [`run`](Self::run) answers `args` as `module.forward`
    /// does: the same scores (within 1e-4) and the same items, except
    /// where near-equal scores swap places.
    pub fn check(&self, module: &CModule, args: &[IValue]) -> Result<(), String> {
        let text = |e: TchError| e.to_string();
        let ours = self
            .run(module, args)
            .map_err(text)?
            .ok_or("the probe users have non-finite vectors")?;
        let theirs = match module.forward_is(args).map_err(text)? {
            IValue::Tuple(values) if values.len() == 2 => values,
            other => return Err(format!("forward returned {other:?}, expected two tensors")),
        };
        let (IValue::Tensor(ids), IValue::Tensor(scores)) = (&theirs[0], &theirs[1]) else {
            return Err("forward did not return two tensors".into());
        };
        if ids.size() != ours[0].size() {
            return Err(format!(
                "forward returned {:?} items, the index {:?}",
                ids.size(),
                ours[0].size()
            ));
        }
        let (their_ids, our_ids, their_scores, our_scores) = (
            Vec::<i64>::try_from(flat(ids, Kind::Int64)).map_err(text)?,
            Vec::<i64>::try_from(flat(&ours[0], Kind::Int64)).map_err(text)?,
            Vec::<f32>::try_from(flat(scores, Kind::Float)).map_err(text)?,
            Vec::<f32>::try_from(flat(&ours[1], Kind::Float)).map_err(text)?,
        );
        let width = (ids.size()[1] as usize).max(1);
        for (row, (start, scores)) in (0..their_ids.len())
            .step_by(width)
            .zip(their_scores.chunks(width))
            .enumerate()
        {
            for j in 0..scores.len() {
                let (a, b) = (scores[j], our_scores[start + j]);
                let (theirs, ours) = (their_ids[start + j], our_ids[start + j]);
                let close = (a - b).abs() <= 1e-4 * a.abs().max(1.0);
                if !close || (theirs != ours && !near_tie(scores, j)) {
                    return Err(format!(
                        "user {row}, rank {j}: forward gives item {theirs} (score {a}), \
                         the index item {ours} (score {b})"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `t` on the CPU as a flat, contiguous tensor of `kind`.
fn flat(t: &Tensor, kind: Kind) -> Tensor {
    t.to_device(Device::Cpu).to_kind(kind).contiguous().view(-1)
}

/// Whether the score at `j` is within 1e-4 of a neighbour (ranks may swap).
fn near_tie(scores: &[f32], j: usize) -> bool {
    let near = |i: usize| {
        scores
            .get(i)
            .is_some_and(|s| (s - scores[j]).abs() <= 1e-4 * s.abs().max(1.0))
    };
    (j > 0 && near(j - 1)) || near(j + 1)
}

/// The inner product of two vectors in f32, in 8 interleaved sums (which
/// the compiler keeps in SIMD registers).
pub fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    let (xs, ys) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xs
        .remainder()
        .iter()
        .zip(ys.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xs.zip(ys) {
        for j in 0..8 {
            sums[j] += a[j] * b[j];
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// A float ordered by `total_cmp`, for the heap of lower bounds.
#[derive(Clone, Copy, PartialEq)]
struct Total(f32);

impl Eq for Total {}

impl PartialOrd for Total {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Total {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One user's search state.
struct Query {
    k: usize,
    /// Coded vector, one word of 4 unsigned bytes per group.
    codes: Vec<u32>,
    /// The same, laid out for the AVX-512 kernel ([`kernel::pairs`]).
    pairs: Vec<[u32; 2 * BLOCK]>,
    /// Quantisation step t.
    step: f32,
    /// ‖u‖₁ / 2.
    half_l1: f32,
    /// t / 2.
    half_step: f32,
    /// The k largest lower bounds so far (a min-heap).
    lowers: BinaryHeap<Reverse<Total>>,
    /// The k-th largest lower bound (−∞ until k items were seen).
    floor: f32,
    /// (item, upper bound) of every item offered.
    candidates: Vec<(u32, f32)>,
}

impl Query {
    fn new(u: &[f32], groups: usize, k: usize) -> Self {
        let largest = u.iter().fold(0f32, |m, v| m.max(v.abs()));
        let step = largest / QUERY_LEVELS;
        let mut bytes = vec![QUERY_OFFSET as u8; groups * GROUP];
        if step > 0.0 {
            for (b, v) in bytes.iter_mut().zip(u) {
                let p = (v / step).round().clamp(-QUERY_LEVELS, QUERY_LEVELS) as i32;
                *b = (p + QUERY_OFFSET) as u8;
            }
        }
        let codes: Vec<u32> = bytes
            .chunks_exact(GROUP)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Self {
            k,
            pairs: kernel::pairs(&codes),
            codes,
            step,
            // Widened by far more than the float rounding of the bound.
            half_l1: u.iter().map(|v| v.abs()).sum::<f32>() / 2.0 * (1.0 + 1e-5),
            half_step: step / 2.0 * (1.0 + 1e-5),
            lowers: BinaryHeap::with_capacity(k + 1),
            floor: f32::NEG_INFINITY,
            candidates: Vec::with_capacity(4 * k + 64),
        }
    }

    /// Offers the flagged items of a tile that starts at item `first` and
    /// holds `count` real items (the floor may have risen since flagging).
    fn select(&mut self, first: usize, count: usize, flags: &[u8], upper: &[f32], lower: &[f32]) {
        for (b, &flag) in flags.iter().enumerate() {
            let mut flag = flag;
            while flag != 0 {
                let j = b * BLOCK + flag.trailing_zeros() as usize;
                flag &= flag - 1;
                if j < count && upper[j] >= self.floor {
                    self.offer(first + j, upper[j], lower[j]);
                }
            }
        }
    }

    fn offer(&mut self, item: usize, upper: f32, lower: f32) {
        self.candidates.push((item as u32, upper));
        let lower = Total(lower);
        if self.lowers.len() < self.k {
            self.lowers.push(Reverse(lower));
        } else if lower.0 > self.floor {
            self.lowers.pop();
            self.lowers.push(Reverse(lower));
        } else {
            return;
        }
        if self.lowers.len() == self.k {
            self.floor = self.lowers.peek().map_or(f32::NEG_INFINITY, |r| r.0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Roughly normal (sum of uniforms).
        fn normal(&mut self) -> f32 {
            (0..4)
                .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
                .sum::<f32>()
                - 2.0
        }
    }

    fn brute(vectors: &[f32], dim: usize, u: &[f32], k: usize) -> Vec<Hit> {
        let mut all: Vec<Hit> = vectors
            .chunks_exact(dim)
            .enumerate()
            .map(|(item, x)| Hit {
                item,
                score: dot(x, u),
            })
            .collect();
        all.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
        all.truncate(k);
        all
    }

    fn normalised(v: &mut [f32], dim: usize) {
        for x in v.chunks_exact_mut(dim) {
            let n = x.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-6);
            x.iter_mut().for_each(|a| *a /= n);
        }
    }

    #[test]
    fn finds_exactly_the_brute_force_top_k() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        // Dimensions that fill whole groups and ones that need padding;
        // item counts that fill whole tiles and ones that do not.
        for (items, dim, unit) in [
            (5000, 64, true),
            (777, 13, false),
            (2049, 100, true),
            (9, 8, false),
            (300, 3, true),
        ] {
            let mut vectors: Vec<f32> = (0..items * dim).map(|_| rng.normal()).collect();
            if unit {
                normalised(&mut vectors, dim);
            } else {
                // Lengths spread over two orders of magnitude.
                for (i, x) in vectors.chunks_exact_mut(dim).enumerate() {
                    let f = 0.1 + (i % 10) as f32;
                    x.iter_mut().for_each(|a| *a *= f);
                }
            }
            let users: Vec<f32> = (0..7 * dim).map(|_| rng.normal()).collect();
            for kernel in Kernel::available() {
                let index = ItemIndex::new(vectors.clone(), dim)
                    .unwrap()
                    .with_kernel(kernel)
                    .unwrap();
                for k in [1, 10, 16, 100, items + 5] {
                    let found = index.search(&users, k).unwrap();
                    assert_eq!(found.len(), 7);
                    for (u, hits) in users.chunks_exact(dim).zip(&found) {
                        let expected = brute(&vectors, dim, u, k);
                        let case = format!("{kernel:?}, {items}×{dim}, k {k}");
                        assert_eq!(hits.len(), expected.len(), "{case}");
                        for (h, e) in hits.iter().zip(&expected) {
                            assert_eq!(h.item, e.item, "{case}");
                            assert_eq!(h.score, e.score, "{case}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn equal_items_zero_users_and_zero_items_are_exact() {
        let dim = 16;
        // 40 identical items and one better one.
        let mut vectors = vec![0.25f32; 41 * dim];
        vectors[40 * dim] = 0.5;
        let index = ItemIndex::new(vectors.clone(), dim).unwrap();
        let u = vec![1.0f32; dim];
        let hits = &index.search(&u, 3).unwrap()[0];
        assert_eq!(
            hits.iter().map(|h| h.item).collect::<Vec<_>>(),
            vec![40, 0, 1]
        );
        // A zero user scores every item 0: the first k by position.
        let zero = vec![0.0f32; dim];
        let hits = &index.search(&zero, 4).unwrap()[0];
        assert_eq!(
            hits.iter().map(|h| h.item).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        // Zero item vectors score 0, below any positive match.
        let mut vectors = vec![0.0f32; 20 * dim];
        vectors[7 * dim + 3] = 0.001;
        let index = ItemIndex::new(vectors, dim).unwrap();
        assert_eq!(index.search(&u, 1).unwrap()[0][0].item, 7);
    }

    #[test]
    fn refuses_what_it_cannot_bound() {
        assert!(ItemIndex::new(vec![1.0, f32::NAN], 2).is_err());
        assert!(ItemIndex::new(vec![1.0, 2.0, 3.0], 2).is_err());
        assert!(ItemIndex::new(vec![1.0, 2.0], 0).is_err());
        let index = ItemIndex::new(vec![1.0, 2.0, 3.0, 4.0], 2).unwrap();
        assert!(index.search(&[f32::INFINITY, 0.0], 1).is_none());
        assert!(index.search(&[1.0, 0.0, 1.0], 1).is_none());
        assert_eq!(index.search(&[1.0, 0.0], 0).unwrap(), vec![Vec::new()]);
    }
}
