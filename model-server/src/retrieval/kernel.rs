//! The one hot loop of the item index: for a tile of coded items and one
//! coded query, each item's integer dot product and, from it, the bounds of
//! its true score. An AVX2 version is chosen at run time; the portable one
//! computes the same numbers on any CPU.
//!
//! Layout (see [`super::ItemIndex`]): items come in blocks of [`BLOCK`];
//! within a block, dimensions come in groups of [`GROUP`], and a group holds
//! the 4 `i8` codes of each of the block's 8 items, item after item. A
//! query is one `u32` per group: its 4 codes as unsigned bytes (0..=127).
//! One AVX2 `vpmaddubsw` then multiplies a whole group for 8 items, and the
//! 8 sums stay in 8 lanes: no horizontal additions.

/// Items per block (one AVX2 register of 32-bit sums).
pub const BLOCK: usize = 8;
/// Dimensions per group (one 32-bit lane of bytes).
pub const GROUP: usize = 4;

/// Relative widening of a bound for the float rounding of the score.
pub const ROUNDING: f32 = 1e-6;

/// A tile of the index: whole blocks of codes and, per item (padding
/// included), the terms of its bounds.
pub struct Tile<'a> {
    /// Codes, `groups` groups per block.
    pub codes: &'a [i8],
    /// Groups per block (even).
    pub groups: usize,
    /// Per item: its scale s.
    pub scales: &'a [f32],
    /// Per item: s · ‖c‖₁.
    pub spreads: &'a [f32],
    /// Per item: the query offset times Σc.
    pub offsets: &'a [i32],
}

/// A coded query and the terms of its bounds.
pub struct QueryTerms<'a> {
    /// One word of 4 unsigned bytes (0..=127) per group.
    pub codes: &'a [u32],
    /// Quantisation step t.
    pub step: f32,
    /// ‖u‖₁ / 2, slightly widened.
    pub half_l1: f32,
    /// t / 2, slightly widened.
    pub half_step: f32,
    /// Items whose upper bound is below this are not flagged.
    pub floor: f32,
}

/// Computes every item's bounds: with the integer dot product
/// `dot = Σ query[d] · code[d] − offset`, `a = dot · (step · s)`,
/// `e = s · half_l1 + spread · half_step + ROUNDING · |a|`, then
/// `upper = a + e` and `lower = a − e`; `flags` gets one byte per block,
/// bit j set where item j's upper bound reaches `query.floor`.
///
/// Query bytes must be at most 127 and codes at least -127, so that a pair
/// of products never leaves `i16` (2 · 127 · 127 < 32,767): the AVX2 path
/// then computes exactly the same numbers as the portable one.
#[allow(unsafe_code)] // the call into the AVX2 version
pub fn bounds(
    tile: &Tile,
    query: &QueryTerms,
    upper: &mut [f32],
    lower: &mut [f32],
    flags: &mut [u8],
) {
    let items = tile.codes.len() / (tile.groups * GROUP).max(1);
    assert!(
        tile.groups.is_multiple_of(2)
            && query.codes.len() == tile.groups
            && tile.codes.len() == items * tile.groups * GROUP
            && items.is_multiple_of(BLOCK)
            && [tile.scales.len(), tile.spreads.len(), tile.offsets.len()]
                .iter()
                .all(|&n| n == items)
            && upper.len() == items
            && lower.len() == items
            && flags.len() == items / BLOCK,
        "item index tile layout"
    );
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 is present, and the lengths were checked above.
        unsafe { x86::bounds(tile, query, upper, lower, flags) };
        return;
    }
    portable(tile, query, upper, lower, flags);
}

/// Whether the AVX2 kernel is used on this CPU.
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The reference version of [`bounds`], for any CPU.
pub fn portable(
    tile: &Tile,
    query: &QueryTerms,
    upper: &mut [f32],
    lower: &mut [f32],
    flags: &mut [u8],
) {
    let block_len = tile.groups * GROUP * BLOCK;
    for (b, block) in tile.codes.chunks_exact(block_len).enumerate() {
        flags[b] = 0;
        for slot in 0..BLOCK {
            let i = b * BLOCK + slot;
            let mut sum = 0i32;
            for (group, q) in block.chunks_exact(GROUP * BLOCK).zip(query.codes) {
                let codes = &group[slot * GROUP..(slot + 1) * GROUP];
                for (&c, q) in codes.iter().zip(q.to_le_bytes()) {
                    sum += i32::from(c) * i32::from(q);
                }
            }
            let s = tile.scales[i];
            let a = (sum - tile.offsets[i]) as f32 * (query.step * s);
            let e = s * query.half_l1 + tile.spreads[i] * query.half_step + ROUNDING * a.abs();
            upper[i] = a + e;
            lower[i] = a - e;
            if upper[i] >= query.floor {
                flags[b] |= 1 << slot;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // SIMD intrinsics; the audited exception besides models/src/script.rs
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK, GROUP, QueryTerms, ROUNDING, Tile};

    /// AVX2 [`super::bounds`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and the lengths must be those that
    /// [`super::bounds`] checks.
    #[target_feature(enable = "avx2")]
    pub unsafe fn bounds(
        tile: &Tile,
        query: &QueryTerms,
        upper: &mut [f32],
        lower: &mut [f32],
        flags: &mut [u8],
    ) {
        let ones = _mm256_set1_epi16(1);
        let step = _mm256_set1_ps(query.step);
        let half_l1 = _mm256_set1_ps(query.half_l1);
        let half_step = _mm256_set1_ps(query.half_step);
        let rounding = _mm256_set1_ps(ROUNDING);
        let sign = _mm256_set1_ps(-0.0);
        let floor = _mm256_set1_ps(query.floor);
        let block_len = tile.groups * GROUP * BLOCK;
        for (b, block) in tile.codes.chunks_exact(block_len).enumerate() {
            let mut acc0 = _mm256_setzero_si256();
            let mut acc1 = _mm256_setzero_si256();
            for (pair, q) in block
                .chunks_exact(2 * GROUP * BLOCK)
                .zip(query.codes.chunks_exact(2))
            {
                // SAFETY: `pair` is 64 bytes: two unaligned 256-bit loads.
                let (x0, x1) = unsafe {
                    let p = pair.as_ptr().cast::<__m256i>();
                    (_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1)))
                };
                let q0 = _mm256_set1_epi32(q[0] as i32);
                let q1 = _mm256_set1_epi32(q[1] as i32);
                // u8 query × i8 codes, adjacent pairs summed to i16 (never
                // saturating, see `bounds`), then pairs of those to i32.
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, x0), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, x1), ones);
                acc0 = _mm256_add_epi32(acc0, p0);
                acc1 = _mm256_add_epi32(acc1, p1);
            }
            let i = b * BLOCK;
            // SAFETY: items i..i + 8 exist in every per-item slice (their
            // lengths are the item count, a multiple of BLOCK = 8).
            unsafe {
                let offsets = _mm256_loadu_si256(tile.offsets.as_ptr().add(i).cast());
                let s = _mm256_loadu_ps(tile.scales.as_ptr().add(i));
                let spread = _mm256_loadu_ps(tile.spreads.as_ptr().add(i));
                let dot = _mm256_sub_epi32(_mm256_add_epi32(acc0, acc1), offsets);
                let a = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(step, s));
                let e = _mm256_add_ps(
                    _mm256_add_ps(_mm256_mul_ps(s, half_l1), _mm256_mul_ps(spread, half_step)),
                    _mm256_mul_ps(rounding, _mm256_andnot_ps(sign, a)),
                );
                let up = _mm256_add_ps(a, e);
                _mm256_storeu_ps(upper.as_mut_ptr().add(i), up);
                _mm256_storeu_ps(lower.as_mut_ptr().add(i), _mm256_sub_ps(a, e));
                flags[b] = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(up, floor)) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Kernel = fn(&Tile, &QueryTerms, &mut [f32], &mut [f32], &mut [u8]);

    #[test]
    fn avx2_and_portable_bounds_agree_at_the_extremes_and_on_random_codes() {
        let groups = 16;
        let items = 5 * BLOCK;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let scales: Vec<f32> = (0..items).map(|i| 0.001 * (i + 1) as f32).collect();
        let spreads: Vec<f32> = scales.iter().map(|s| s * 700.0).collect();
        let offsets: Vec<i32> = (0..items).map(|i| (i as i32 - 20) * 64).collect();
        for round in 0..50 {
            let codes: Vec<i8> = (0..items * groups * GROUP)
                .map(|i| match round {
                    0 => -127,
                    1 => 127,
                    _ if i % 7 == 0 => -127,
                    _ => ((next() % 255) as u8 as i8).max(-127),
                })
                .collect();
            let query: Vec<u32> = (0..groups)
                .map(|_| {
                    let b: [u8; 4] = std::array::from_fn(|_| match round {
                        0 | 1 => 127,
                        _ => (next() % 128) as u8,
                    });
                    u32::from_le_bytes(b)
                })
                .collect();
            let tile = Tile {
                codes: &codes,
                groups,
                scales: &scales,
                spreads: &spreads,
                offsets: &offsets,
            };
            let terms = QueryTerms {
                codes: &query,
                step: 0.01,
                half_l1: 3.0,
                half_step: 0.005,
                floor: -50.0 + round as f32,
            };
            let run = |f: Kernel| {
                let (mut upper, mut lower) = (vec![0.0; items], vec![0.0; items]);
                let mut flags = vec![0xAA; items / BLOCK];
                f(&tile, &terms, &mut upper, &mut lower, &mut flags);
                let flagged: Vec<bool> = (0..items)
                    .map(|i| flags[i / BLOCK] & (1 << (i % BLOCK)) != 0)
                    .collect();
                for (u, f) in upper.iter().zip(&flagged) {
                    assert_eq!(*f, *u >= terms.floor);
                }
                (
                    upper.into_iter().zip(lower).collect::<Vec<(f32, f32)>>(),
                    flagged,
                )
            };
            let (fast, slow) = (run(bounds), run(portable));
            assert_eq!(fast, slow, "round {round}");
            if round == 0 {
                // 64 dimensions of 127 · -127, less the offset.
                let s = 0.001f32;
                let a = (-127 * 127 * 64 + 20 * 64) as f32 * (0.01 * s);
                let e = s * 3.0 + s * 700.0 * 0.005 + ROUNDING * a.abs();
                assert_eq!(slow.0[0], (a + e, a - e));
            }
        }
    }
}
