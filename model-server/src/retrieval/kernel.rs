//! The one hot loop of the item index: for a tile of coded items and one
//! coded query, each item's integer dot product and, from it, the bounds of
//! its true score. The fastest [`Kernel`] the CPU has is chosen at run time
//! (AVX-512 VNNI, else AVX2); the portable one computes the same numbers on
//! any CPU, and every kernel's output is bit-identical to it.
//!
//! Layout (see [`super::ItemIndex`]): items come in blocks of [`BLOCK`];
//! within a block, dimensions come in groups of [`GROUP`], and a group holds
//! the 4 `i8` codes of each of the block's 8 items, item after item. A
//! query is one `u32` per group: its 4 codes as unsigned bytes (0..=127).
//! One AVX2 `vpmaddubsw` then multiplies a whole group for 8 items, and the
//! 8 sums stay in 8 lanes: no horizontal additions. One AVX-512 `vpdpbusd`
//! multiplies and sums two groups of 8 items (64 products) at once, the
//! query word of the first group in the low 8 lanes and of the second in
//! the high 8 ([`QueryTerms::pairs`]).

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
    /// The same words for the AVX-512 kernel, from [`pairs`]: per pair of
    /// groups, the first's word 8 times, then the second's 8 times.
    pub pairs: &'a [[u32; 2 * BLOCK]],
    /// Quantisation step t.
    pub step: f32,
    /// ‖u‖₁ / 2, slightly widened.
    pub half_l1: f32,
    /// t / 2, slightly widened.
    pub half_step: f32,
    /// Items whose upper bound is below this are not flagged.
    pub floor: f32,
}

/// A query's words laid out for [`QueryTerms::pairs`] (`codes` has an even
/// length, as the index's groups do).
pub fn pairs(codes: &[u32]) -> Vec<[u32; 2 * BLOCK]> {
    codes
        .chunks_exact(2)
        .map(|w| std::array::from_fn(|lane| w[lane / BLOCK]))
        .collect()
}

/// An implementation of [`Kernel::bounds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, any CPU: the reference.
    Portable,
    /// AVX2 `vpmaddubsw` + `vpmaddwd`: 32 products in two instructions.
    Avx2,
    /// AVX-512 VNNI `vpdpbusd`: 64 products summed in one instruction.
    Avx512Vnni,
}

impl Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Self; 3] = [Self::Portable, Self::Avx2, Self::Avx512Vnni];

    /// The fastest kernel this CPU runs.
    pub fn best() -> Self {
        *Self::available().last().unwrap_or(&Self::Portable)
    }

    /// Every kernel this CPU runs, slowest first.
    pub fn available() -> Vec<Self> {
        Self::ALL.into_iter().filter(|k| k.is_available()).collect()
    }

    /// Whether this CPU runs the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Its name in logs and benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512vnni",
        }
    }

    /// Computes every item's bounds: with the integer dot product
    /// `dot = Σ query[d] · code[d] − offset`, `a = dot · (step · s)`,
    /// `e = s · half_l1 + spread · half_step + ROUNDING · |a|`, then
    /// `upper = a + e` and `lower = a − e`; `flags` gets one byte per
    /// block, bit j set where item j's upper bound reaches `query.floor`.
    /// A kernel this CPU lacks runs as [`Kernel::Portable`].
    ///
    /// Query bytes must be at most 127 and codes at least -127, so that a
    /// pair of products never leaves `i16` (2 · 127 · 127 < 32,767): the
    /// AVX2 path then computes exactly the same numbers as the portable
    /// one (the AVX-512 one sums in `i32` and is exact anyway).
    #[allow(unsafe_code)] // the calls into the SIMD versions
    pub fn bounds(
        self,
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
                && query.pairs.len() == tile.groups / 2
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
        match self {
            Self::Avx512Vnni if self.is_available() => {
                // SAFETY: the CPU has the features, and the lengths were
                // checked above.
                unsafe { x86::bounds_vnni(tile, query, upper, lower, flags) };
                return;
            }
            Self::Avx2 if self.is_available() => {
                // SAFETY: as above.
                unsafe { x86::bounds_avx2(tile, query, upper, lower, flags) };
                return;
            }
            _ => {}
        }
        portable(tile, query, upper, lower, flags);
    }
}

/// The reference version of [`Kernel::bounds`], for any CPU.
fn portable(
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

    /// The bounds of the 8 items of block `b` (first item `i = b · 8`) from
    /// their integer sums, before the offsets are taken off.
    ///
    /// # Safety
    /// The CPU must support AVX2; items `i..i + 8` must exist in every
    /// per-item slice and block `b` in `flags`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn finish8(
        sums: __m256i,
        b: usize,
        tile: &Tile,
        query: &QueryTerms,
        upper: &mut [f32],
        lower: &mut [f32],
        flags: &mut [u8],
    ) {
        let i = b * BLOCK;
        // SAFETY: items i..i + 8 exist (the caller's contract).
        unsafe {
            let offsets = _mm256_loadu_si256(tile.offsets.as_ptr().add(i).cast());
            let s = _mm256_loadu_ps(tile.scales.as_ptr().add(i));
            let spread = _mm256_loadu_ps(tile.spreads.as_ptr().add(i));
            let dot = _mm256_sub_epi32(sums, offsets);
            let step = _mm256_set1_ps(query.step);
            let a = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(step, s));
            let e = _mm256_add_ps(
                _mm256_add_ps(
                    _mm256_mul_ps(s, _mm256_set1_ps(query.half_l1)),
                    _mm256_mul_ps(spread, _mm256_set1_ps(query.half_step)),
                ),
                _mm256_mul_ps(
                    _mm256_set1_ps(ROUNDING),
                    _mm256_andnot_ps(_mm256_set1_ps(-0.0), a),
                ),
            );
            let up = _mm256_add_ps(a, e);
            _mm256_storeu_ps(upper.as_mut_ptr().add(i), up);
            _mm256_storeu_ps(lower.as_mut_ptr().add(i), _mm256_sub_ps(a, e));
            let floor = _mm256_set1_ps(query.floor);
            *flags.get_unchecked_mut(b) =
                _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(up, floor)) as u8;
        }
    }

    /// AVX2 [`super::Kernel::bounds`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and the lengths must be those that
    /// [`super::Kernel::bounds`] checks.
    #[target_feature(enable = "avx2")]
    pub unsafe fn bounds_avx2(
        tile: &Tile,
        query: &QueryTerms,
        upper: &mut [f32],
        lower: &mut [f32],
        flags: &mut [u8],
    ) {
        let ones = _mm256_set1_epi16(1);
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
            // SAFETY: block b's items exist (lengths checked by the caller).
            unsafe {
                finish8(
                    _mm256_add_epi32(acc0, acc1),
                    b,
                    tile,
                    query,
                    upper,
                    lower,
                    flags,
                )
            };
        }
    }

    /// The integer sums of one block (its pairs of groups at `codes`, 64
    /// bytes each) in one register: even pairs and odd pairs summed in two
    /// chains of `vpdpbusd`, so that one waits less on the other; the first
    /// group of each pair lands in the low 8 lanes, the second in the high 8.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and VNNI; `codes` must hold `P` × 64
    /// bytes.
    #[target_feature(enable = "avx512f,avx512vnni")]
    #[inline]
    unsafe fn sums16<const P: usize>(codes: *const i8, query: &[__m512i; P]) -> __m512i {
        let mut even = _mm512_setzero_si512();
        let mut odd = _mm512_setzero_si512();
        let mut p = 0;
        while p + 2 <= P {
            // SAFETY: pairs p and p + 1 are within `codes`.
            unsafe {
                let x0 = _mm512_loadu_si512(codes.add(p * 64).cast());
                let x1 = _mm512_loadu_si512(codes.add((p + 1) * 64).cast());
                even = _mm512_dpbusd_epi32(even, query[p], x0);
                odd = _mm512_dpbusd_epi32(odd, query[p + 1], x1);
            }
            p += 2;
        }
        if P % 2 == 1 {
            // SAFETY: as above, for the last pair.
            let x = unsafe { _mm512_loadu_si512(codes.add((P - 1) * 64).cast()) };
            even = _mm512_dpbusd_epi32(even, query[P - 1], x);
        }
        _mm512_add_epi32(even, odd)
    }

    /// AVX-512 VNNI [`super::Kernel::bounds`]. Dispatches on the number of
    /// pairs of groups, so that the query stays in registers for the whole
    /// tile; past 16 pairs (128 dimensions) it runs the AVX2 kernel.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, VL and VNNI, and the lengths must be
    /// those that [`super::Kernel::bounds`] checks.
    #[target_feature(enable = "avx512f,avx512vl,avx512vnni")]
    pub unsafe fn bounds_vnni(
        tile: &Tile,
        query: &QueryTerms,
        upper: &mut [f32],
        lower: &mut [f32],
        flags: &mut [u8],
    ) {
        macro_rules! by_pairs {
            ($($n:literal)*) => {
                match query.pairs.len() {
                    // SAFETY: the caller's contract.
                    $($n => unsafe { scan::<$n>(tile, query, upper, lower, flags) },)*
                    // SAFETY: AVX-512 F implies AVX2; the caller's contract.
                    _ => unsafe { bounds_avx2(tile, query, upper, lower, flags) },
                }
            };
        }
        by_pairs!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
    }

    /// [`bounds_vnni`] for `P` pairs of groups: two blocks (16 items) per
    /// step, their bounds computed in one 512-bit register.
    ///
    /// # Safety
    /// As [`bounds_vnni`], with `query.pairs.len() == P`.
    #[target_feature(enable = "avx512f,avx512vl,avx512vnni")]
    unsafe fn scan<const P: usize>(
        tile: &Tile,
        query: &QueryTerms,
        upper: &mut [f32],
        lower: &mut [f32],
        flags: &mut [u8],
    ) {
        let mut words = [_mm512_setzero_si512(); P];
        for (w, pair) in words.iter_mut().zip(query.pairs) {
            // SAFETY: `pair` is 16 words, 64 bytes.
            *w = unsafe { _mm512_loadu_si512(pair.as_ptr().cast()) };
        }
        let block_len = tile.groups * GROUP * BLOCK;
        let blocks = tile.codes.len() / block_len;
        let codes = tile.codes.as_ptr();
        let step = _mm512_set1_ps(query.step);
        let half_l1 = _mm512_set1_ps(query.half_l1);
        let half_step = _mm512_set1_ps(query.half_step);
        let rounding = _mm512_set1_ps(ROUNDING);
        let floor = _mm512_set1_ps(query.floor);
        let mut b = 0;
        while b + 2 <= blocks {
            let i = b * BLOCK;
            // SAFETY: blocks b and b + 1 and their 16 items exist (lengths
            // checked by the caller).
            unsafe {
                let s0 = sums16(codes.add(b * block_len), &words);
                let s1 = sums16(codes.add((b + 1) * block_len), &words);
                // Fold each block's two halves into 8 sums, then the two
                // blocks into one register of 16 items.
                let s0 = _mm256_add_epi32(
                    _mm512_castsi512_si256(s0),
                    _mm512_extracti64x4_epi64::<1>(s0),
                );
                let s1 = _mm256_add_epi32(
                    _mm512_castsi512_si256(s1),
                    _mm512_extracti64x4_epi64::<1>(s1),
                );
                let sums = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(s0), s1);
                let offsets = _mm512_loadu_si512(tile.offsets.as_ptr().add(i).cast());
                let s = _mm512_loadu_ps(tile.scales.as_ptr().add(i));
                let spread = _mm512_loadu_ps(tile.spreads.as_ptr().add(i));
                let dot = _mm512_sub_epi32(sums, offsets);
                // The same operations, in the same order, as `portable`.
                let a = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(step, s));
                let e = _mm512_add_ps(
                    _mm512_add_ps(_mm512_mul_ps(s, half_l1), _mm512_mul_ps(spread, half_step)),
                    _mm512_mul_ps(rounding, _mm512_abs_ps(a)),
                );
                let up = _mm512_add_ps(a, e);
                _mm512_storeu_ps(upper.as_mut_ptr().add(i), up);
                _mm512_storeu_ps(lower.as_mut_ptr().add(i), _mm512_sub_ps(a, e));
                let mask = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(up, floor);
                *flags.get_unchecked_mut(b) = mask as u8;
                *flags.get_unchecked_mut(b + 1) = (mask >> 8) as u8;
            }
            b += 2;
        }
        if b < blocks {
            // SAFETY: block b and its 8 items exist; AVX-512 F implies AVX2.
            unsafe {
                let s = sums16(codes.add(b * block_len), &words);
                let s =
                    _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64::<1>(s));
                finish8(s, b, tile, query, upper, lower, flags);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_equals_the_portable_one_at_the_extremes_and_on_random_codes() {
        let kernels = Kernel::available();
        assert_eq!(kernels[0], Kernel::Portable);
        assert_eq!(*kernels.last().unwrap(), Kernel::best());
        // Odd and even numbers of blocks and of pairs of groups, for the
        // AVX-512 kernel's tails.
        for (groups, blocks) in [(16, 5), (16, 4), (6, 3), (2, 1), (10, 2)] {
            agree(&kernels, groups, blocks);
        }
    }

    fn agree(kernels: &[Kernel], groups: usize, blocks: usize) {
        let items = blocks * BLOCK;
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
            let pairs = pairs(&query);
            let terms = QueryTerms {
                codes: &query,
                pairs: &pairs,
                step: 0.01,
                half_l1: 3.0,
                half_step: 0.005,
                floor: -50.0 + round as f32,
            };
            let run = |kernel: Kernel| {
                let (mut upper, mut lower) = (vec![0.0; items], vec![0.0; items]);
                let mut flags = vec![0xAA; items / BLOCK];
                kernel.bounds(&tile, &terms, &mut upper, &mut lower, &mut flags);
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
            let slow = run(Kernel::Portable);
            for &kernel in kernels {
                assert_eq!(
                    run(kernel),
                    slow,
                    "{kernel:?}, {groups} groups, {blocks} blocks, round {round}"
                );
            }
            if round == 0 {
                // All dimensions 127 · -127, less the offset.
                let s = 0.001f32;
                let dims = (groups * GROUP) as i32;
                let a = (-127 * 127 * dims + 20 * 64) as f32 * (0.01 * s);
                let e = s * 3.0 + s * 700.0 * 0.005 + ROUNDING * a.abs();
                assert_eq!(slow.0[0], (a + e, a - e));
            }
        }
    }
}
