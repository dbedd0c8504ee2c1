//! Attention of one query row over cached keys and values, as a decode step needs it:
//! `out = softmax(q · Kᵀ) · V` over the cached positions.
//!
//! The keys are stored in blocks of [`KEY_BLOCK`] positions, each block `[d, KEY_BLOCK]`
//! (component-major): key `j`'s component `i` is at `kb[(j / 16)·d·16 + i·16 + j % 16]`. The
//! scores of a block then accumulate in one 16-lane register over the `d` components (a broadcast
//! of `q[i]` and one FMA each, no horizontal sums), and a run of positions is one contiguous
//! stretch of memory, which the hardware prefetchers stream. The values stay `[position, d]` and
//! the output accumulates `d` columns at a time over the positions. The scale `1/√d` is the
//! caller's (fold it into `q`). Keys and values are f32, bf16 or f16 ([`WeightElem`]; a
//! half-precision KV cache reads half the bytes), widened to f32 in registers; sums are f32.
//!
//! [`attend_part`] covers a range of positions and [`attend_merge`] combines ranges, so a long
//! cache splits over threads (flash-decoding).

use super::simd::{exp, load_elem_n, load_n, simd_entry, store_n, usable, Simd};
use crate::cpu::{self, Level};
use crate::gemv::WeightElem;

/// Positions per key block (see the module docs).
pub const KEY_BLOCK: usize = 16;

/// Floats of `scores` scratch that [`attend`] and [`attend_part`] need for `len` positions.
pub fn scores_len(len: usize) -> usize {
    len + 2 * KEY_BLOCK
}

/// Index of key `j`'s component `i` in the blocked layout of keys with `d` components.
#[inline]
pub fn key_index(j: usize, i: usize, d: usize) -> usize {
    (j / KEY_BLOCK * d + i) * KEY_BLOCK + j % KEY_BLOCK
}

/// `out[d] = Σ_j softmax(q·Kᵀ)_j · v[j]` over positions `j < len`, at the detected SIMD level,
/// on this thread. `q, out: [d]`; `kb`: the keys in blocks (see the module docs), at least
/// `⌈len/16⌉` blocks; `v: [≥ len, d]`; `scores` is scratch of at least [`scores_len`]`(len)`.
/// With `len == 0` the output is zeros.
pub fn attend<W: WeightElem>(
    q: &[f32],
    kb: &[W],
    v: &[W],
    len: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_with(cpu::level(), q, kb, v, len, scores, out)
}

/// [`attend`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn attend_with<W: WeightElem>(
    level: Level,
    q: &[f32],
    kb: &[W],
    v: &[W],
    len: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (_, sum) = attend_part_with(level, q, kb, v, 0..len, scores, out);
    let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    out.iter_mut().for_each(|o| *o *= inv);
}

/// One part of a split attention (flash-decoding): over positions `range` only, writes the
/// unnormalised `out = Σ_j e^(s_j − m) · v[j]` with `s_j = q·k_j` and returns `(m, Σ_j e^(s_j − m))`,
/// `m` the largest score of the part. An empty range gives `(−∞, 0)` and zeros. Parts over
/// disjoint ranges combine with [`attend_merge`]. Lengths as for [`attend`] with `len =
/// range.end`; `scores` holds at least [`scores_len`]`(range.len())`.
pub fn attend_part<W: WeightElem>(
    q: &[f32],
    kb: &[W],
    v: &[W],
    range: std::ops::Range<usize>,
    scores: &mut [f32],
    out: &mut [f32],
) -> (f32, f32) {
    attend_part_with(cpu::level(), q, kb, v, range, scores, out)
}

/// [`attend_part`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn attend_part_with<W: WeightElem>(
    level: Level,
    q: &[f32],
    kb: &[W],
    v: &[W],
    range: std::ops::Range<usize>,
    scores: &mut [f32],
    out: &mut [f32],
) -> (f32, f32) {
    let mut stats = [(0f32, 0f32)];
    attend_part_many_with(level, q, kb, v, range, scores, out, &mut stats);
    stats[0]
}

/// [`attend_part`] for several query rows that share the keys and values (the heads of one
/// grouped-query KV head): the keys and values are read once for all of them. `qs, outs: [nq,
/// d]`, `scores`: at least `nq ·` [`scores_len`]`(range.len())`, `stats: [nq]` receives each
/// row's `(m, Σ e^(s − m))`.
#[allow(clippy::too_many_arguments)]
pub fn attend_part_many<W: WeightElem>(
    qs: &[f32],
    kb: &[W],
    v: &[W],
    range: std::ops::Range<usize>,
    scores: &mut [f32],
    outs: &mut [f32],
    stats: &mut [(f32, f32)],
) {
    attend_part_many_with(cpu::level(), qs, kb, v, range, scores, outs, stats)
}

/// [`attend_part_many`] at an explicit level (one this CPU lacks falls back to the best it has).
#[allow(clippy::too_many_arguments)]
pub fn attend_part_many_with<W: WeightElem>(
    level: Level,
    qs: &[f32],
    kb: &[W],
    v: &[W],
    range: std::ops::Range<usize>,
    scores: &mut [f32],
    outs: &mut [f32],
    stats: &mut [(f32, f32)],
) {
    let nq = stats.len();
    assert!(nq > 0, "attend: no query rows");
    assert_eq!(
        qs.len() % nq,
        0,
        "attend: {} query floats for {nq} rows",
        qs.len()
    );
    let d = qs.len() / nq;
    let (j0, j1) = (range.start, range.end.max(range.start));
    check("attend", &qs[..d], kb, v, j1, &outs[..d.min(outs.len())]);
    assert_eq!(outs.len(), nq * d, "attend: outs length");
    let sl = scores_len(j1 - j0);
    assert!(
        scores.len() >= nq * sl,
        "attend: scores holds {} < {}",
        scores.len(),
        nq * sl
    );
    if j1 == j0 || d == 0 {
        outs.fill(0.0);
        stats.fill((f32::NEG_INFINITY, 0.0));
        return;
    }
    for q0 in (0..nq).step_by(MAX_Q) {
        let n = MAX_Q.min(nq - q0);
        let mut st = [0f32; 2 * MAX_Q];
        // SAFETY: the level is usable; the lengths were checked above (kb holds the blocks of
        // positions < j1, v holds j1 rows of d, scores nq rows of sl, outs nq rows of d), and
        // rows q0..q0 + n are within them.
        unsafe {
            attend_at(
                usable(level),
                qs.as_ptr().add(q0 * d),
                n,
                kb.as_ptr(),
                v.as_ptr(),
                d,
                j0,
                j1,
                scores.as_mut_ptr().add(q0 * sl),
                sl,
                outs.as_mut_ptr().add(q0 * d),
                st.as_mut_ptr(),
            )
        }
        for (k, s) in stats[q0..q0 + n].iter_mut().enumerate() {
            *s = (st[2 * k], st[2 * k + 1]);
        }
    }
}

/// Query rows one kernel call handles together.
const MAX_Q: usize = 4;

/// Combines the parts of a split attention: `parts[i] = (m_i, sum_i)` and `outs: [parts, d]`
/// from [`attend_part`] over disjoint ranges → the normalised `out: [d]`.
pub fn attend_merge(parts: &[(f32, f32)], outs: &[f32], out: &mut [f32]) {
    let d = out.len();
    assert_eq!(outs.len(), parts.len() * d, "attend_merge: outs length");
    let m = parts.iter().map(|p| p.0).fold(f32::NEG_INFINITY, f32::max);
    out.fill(0.0);
    if m == f32::NEG_INFINITY {
        return;
    }
    let mut total = 0f32;
    for (&(mi, si), oi) in parts.iter().zip(outs.chunks_exact(d.max(1))) {
        if si == 0.0 {
            continue;
        }
        let w = (mi - m).exp();
        total += w * si;
        for (o, &x) in out.iter_mut().zip(oi) {
            *o += w * x;
        }
    }
    let inv = 1.0 / total;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Plain reference for [`attend`], in f64 rounded once.
pub fn attend_ref<W: WeightElem>(q: &[f32], kb: &[W], v: &[W], len: usize, out: &mut [f32]) {
    let d = check("attend_ref", q, kb, v, len, out);
    let s: Vec<f64> = (0..len)
        .map(|j| {
            (0..d)
                .map(|i| q[i] as f64 * kb[key_index(j, i, d)].to_f32() as f64)
                .sum()
        })
        .collect();
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    for (i, o) in out.iter_mut().enumerate() {
        let acc: f64 = (0..len).map(|j| e[j] * v[j * d + i].to_f32() as f64).sum();
        *o = if len == 0 { 0.0 } else { (acc / z) as f32 };
    }
}

/// Checks the lengths for positions `< len`; returns `d`.
fn check<W>(name: &str, q: &[f32], kb: &[W], v: &[W], len: usize, out: &[f32]) -> usize {
    let d = q.len();
    assert_eq!(out.len(), d, "{name}: out length");
    let blocks = len.div_ceil(KEY_BLOCK) * KEY_BLOCK * d;
    assert!(
        kb.len() >= blocks,
        "{name}: kb holds {} < {blocks} elements",
        kb.len()
    );
    assert!(
        v.len() >= len * d,
        "{name}: v holds {} < {} elements",
        v.len(),
        len * d
    );
    d
}

simd_entry!(fn attend_at<W: WeightElem> => attend_body(
    qs: *const f32,
    nq: usize,
    kb: *const W,
    v: *const W,
    d: usize,
    j0: usize,
    j1: usize,
    scores: *mut f32,
    sl: usize,
    outs: *mut f32,
    stats: *mut f32,
));

/// Positions `j0..j1` for `nq ≤ MAX_Q` query rows `qs: [nq, d]`: unnormalised outputs `outs:
/// [nq, d]`, and row r's `(max, Σ exp)` into `stats[2r..2r + 2]`; row r's scores use
/// `scores[r·sl ..]`.
///
/// # Safety
/// `S`'s level is supported; `qs, outs` hold `nq·d`, `d > 0`; `kb` the key blocks of positions
/// `< j1`; `v` `j1` rows of `d`; `scores` `nq` rows of `sl ≥ j1 − j0 + 2·KEY_BLOCK`; `j0 < j1`;
/// `1 ≤ nq ≤ MAX_Q`.
#[inline(always)]
unsafe fn attend_body<S: Simd, W: WeightElem>(
    qs: *const f32,
    nq: usize,
    kb: *const W,
    v: *const W,
    d: usize,
    j0: usize,
    j1: usize,
    scores: *mut f32,
    sl: usize,
    outs: *mut f32,
    stats: *mut f32,
) {
    const B: usize = KEY_BLOCK;
    let l = S::LANES;
    let per = B / l;
    // One block is B / l ≤ 2 vectors at every level (l ≥ 8).
    debug_assert!(B.is_multiple_of(l) && per <= 2 && (1..=MAX_Q).contains(&nq));
    // Scores of whole blocks `b0..b1` into `scores[r·sl + (b − b0)·B ..]`: each block's keys are
    // loaded once for every query row, two blocks at a time; lanes outside `j0..j1` are cut
    // below.
    let (b0, b1) = (j0 / B, j1.div_ceil(B));
    // The values' first rows now, so their stream is under way when the scores are done.
    cpu::prefetch_once(v.wrapping_add(j0 * d).cast(), V_AHEAD * d * size_of::<W>());
    let mut b = b0;
    while b < b1 {
        let nb = (b1 - b).min(2);
        let mut acc = [[S::splat(0.0); 4]; MAX_Q];
        for i in 0..d {
            // The same component of the next two blocks, once per cache line.
            if (i * B * size_of::<W>()).is_multiple_of(64) {
                for k in 0..2 {
                    cpu::prefetch_once(kb.wrapping_add(((b + 2 + k) * d + i) * B).cast(), 1);
                }
            }
            let mut kv = [S::splat(0.0); 4];
            for k in 0..nb {
                let row = kb.add(((b + k) * d + i) * B);
                for u in 0..per {
                    kv[k * per + u] = load_elem_n::<S, W>(row.add(u * l), l, 0.0);
                }
            }
            for (r, a) in acc.iter_mut().enumerate().take(nq) {
                let qi = S::splat(*qs.add(r * d + i));
                for (x, &k) in a.iter_mut().zip(&kv).take(nb * per) {
                    *x = S::fma(qi, k, *x);
                }
            }
        }
        for (r, a) in acc.iter().enumerate().take(nq) {
            for (w, x) in a.iter().enumerate().take(nb * per) {
                S::store(scores.add(r * sl + (b - b0) * B + w * l), *x);
            }
        }
        b += nb;
    }
    // Row r's scores of the part start at `scores + r·sl + (j0 − b0·B)`; turn them into
    // e^(s − m) in place and sum them.
    let len = j1 - j0;
    let neg_inf = f32::NEG_INFINITY;
    for r in 0..nq {
        let sc = scores.add(r * sl + j0 - b0 * B);
        let mut mx = S::splat(neg_inf);
        let mut j = 0;
        while j < len {
            let valid = (len - j).min(l);
            mx = S::max(mx, load_n::<S>(sc.add(j), valid, neg_inf));
            j += valid;
        }
        let m = S::hmax(mx);
        // No finite max (+inf or NaN scores): shift by 0 and let the non-finite values through.
        let shift = S::splat(if m.is_finite() { m } else { 0.0 });
        let mut sum = S::splat(0.0);
        let mut j = 0;
        while j < len {
            let valid = (len - j).min(l);
            let e = exp::<S>(S::sub(load_n::<S>(sc.add(j), valid, neg_inf), shift));
            store_n::<S>(sc.add(j), e, valid);
            sum = S::add(sum, e);
            j += valid;
        }
        *stats.add(2 * r) = m;
        *stats.add(2 * r + 1) = S::hsum(sum);
    }
    // outs[r] = Σ_j e_rj · v_j, 4 vectors of columns at a time, each value row loaded once.
    let mut c = 0;
    while c < d {
        let cols = (d - c).min(4 * l);
        let nv = cols.div_ceil(l);
        let mut acc = [[S::splat(0.0); 4]; MAX_Q];
        for j in 0..len {
            let row = v.add((j0 + j) * d + c);
            if c == 0 {
                cpu::prefetch_once(
                    v.wrapping_add((j0 + j + V_AHEAD) * d).cast(),
                    d * size_of::<W>(),
                );
            }
            let mut vv = [S::splat(0.0); 4];
            for (k, x) in vv.iter_mut().enumerate().take(nv) {
                *x = load_elem_n::<S, W>(row.add(k * l), (cols - k * l).min(l), 0.0);
            }
            for (r, a) in acc.iter_mut().enumerate().take(nq) {
                let p = S::splat(*scores.add(r * sl + j0 - b0 * B + j));
                for (x, &y) in a.iter_mut().zip(&vv).take(nv) {
                    *x = S::fma(p, y, *x);
                }
            }
        }
        for (r, a) in acc.iter().enumerate().take(nq) {
            for (k, x) in a.iter().enumerate().take(nv) {
                store_n::<S>(outs.add(r * d + c + k * l), *x, (cols - k * l).min(l));
            }
        }
        c += cols;
    }
}

/// Value rows ahead of the one being read that [`attend_body`] prefetches (keys: the next two
/// blocks). The attention reads a few hundred kilobytes per layer in short streams that the
/// hardware prefetchers ramp up on too slowly: measured on Zen 5, one thread over 288 positions
/// of 3 groups of 3 heads (d = 64, f32) with the cache flushed went from 32.7 to 21.8 µs a layer,
/// and SmolLM2-135M decode, interleaved step by step with the version without, +3-5 % tokens/s
/// in f32 and +4-6 % in bf16 (bf16 cache). Prefetching the first `V_AHEAD` value rows before
/// the scores cut the attention of a bf16 step from 0.66 / 0.60 to 0.53 / 0.54 ms (in-model
/// timers, two runs each); prefetching the first two key blocks as well gained nothing.
const V_AHEAD: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{assert_close, fill};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every level against the f64 reference over head dims and lengths around the vector
        /// widths and key blocks (8 and 16 lanes, 16 positions a block, 4 blocks at a time), with
        /// more positions cached than attended; keys and values in f32, bf16 and f16 (the value
        /// tails of `d % lanes ≠ 0` take the partial half loads).
        #[test]
        fn attend_matches_ref(
            d in prop::sample::select(vec![1usize, 7, 15, 16, 17, 31, 64, 65, 80, 128]),
            len in prop::sample::select(vec![1usize, 2, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 641]),
            extra in 0usize..40,
            seed in 0u64..1000,
        ) {
            for level in crate::cpu::available() {
                case(level, d, len, len + extra, seed, |x| x)?;
                case(level, d, len, len + extra, seed, half::bf16::from_f32)?;
                case(level, d, len, len + extra, seed, half::f16::from_f32)?;
            }
        }
    }

    /// Scores of up to 128 products of terms in [-1, 1] carry about 1e-5 of absolute rounding,
    /// which the softmax turns into that much relative error of the weights; outputs are convex
    /// combinations of values in [-1, 1].
    /// Keys and values are stored as `W` (`from` rounds them; a half-precision KV cache): the
    /// reference reads the same rounded values, so one tolerance fits every `W`.
    fn case<W: WeightElem>(
        level: Level,
        d: usize,
        len: usize,
        cached: usize,
        seed: u64,
        from: impl Fn(f32) -> W,
    ) -> Result<(), TestCaseError> {
        let q = fill(d, seed, 1.0);
        let kb: Vec<W> = fill(cached.div_ceil(KEY_BLOCK) * KEY_BLOCK * d, seed + 1, 1.0)
            .into_iter()
            .map(&from)
            .collect();
        let v: Vec<W> = fill(cached * d, seed + 2, 1.0)
            .into_iter()
            .map(&from)
            .collect();
        let mut scores = vec![f32::NAN; scores_len(len)];
        let mut out = vec![f32::NAN; d];
        let mut want = vec![0f32; d];
        attend_with(level, &q, &kb, &v, len, &mut scores, &mut out);
        attend_ref(&q, &kb, &v, len, &mut want);
        assert_close(
            &out,
            &want,
            3e-5,
            1e-4,
            &format!("{level:?} {:?} d={d} len={len}", W::KIND),
        )
    }

    #[test]
    fn half_kv_widens_exactly() {
        // Values exactly representable in both half formats: the kernel must see them unchanged.
        let q = [0.5f32, -1.0, 2.0];
        let keys: Vec<f32> = (0..3 * KEY_BLOCK)
            .map(|i| (i % 7) as f32 * 0.25 - 0.75)
            .collect();
        let vals: Vec<f32> = (0..9).map(|i| i as f32 - 4.0).collect();
        let mut want = [0f32; 3];
        attend(&q, &keys, &vals, 3, &mut [0.0; 35], &mut want);
        for level in crate::cpu::available() {
            let kb: Vec<half::bf16> = keys.iter().map(|&x| half::bf16::from_f32(x)).collect();
            let v: Vec<half::bf16> = vals.iter().map(|&x| half::bf16::from_f32(x)).collect();
            let mut out = [0f32; 3];
            attend_with(level, &q, &kb, &v, 3, &mut [0.0; 35], &mut out);
            assert_eq!(out, want, "{level:?} bf16");
            let kb: Vec<half::f16> = keys.iter().map(|&x| half::f16::from_f32(x)).collect();
            let v: Vec<half::f16> = vals.iter().map(|&x| half::f16::from_f32(x)).collect();
            attend_with(level, &q, &kb, &v, 3, &mut [0.0; 35], &mut out);
            assert_eq!(out, want, "{level:?} f16");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Parts over a split of the positions (at any offsets, not only block edges) merge to
        /// the unsplit result.
        #[test]
        fn parts_merge_to_the_whole(
            d in prop::sample::select(vec![1usize, 16, 17, 64]),
            len in 1usize..300,
            cuts in prop::collection::vec(0usize..300, 0..4),
            seed in 0u64..1000,
        ) {
            let q = fill(d, seed, 2.0);
            let kb = fill(len.div_ceil(KEY_BLOCK) * KEY_BLOCK * d, seed + 1, 2.0);
            let v = fill(len * d, seed + 2, 1.0);
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % (len + 1)).collect();
            bounds.extend([0, len]);
            bounds.sort_unstable();
            let (mut parts, mut outs) = (Vec::new(), Vec::new());
            let mut scores = vec![0f32; scores_len(len)];
            for w in bounds.windows(2) {
                let mut o = vec![f32::NAN; d];
                parts.push(attend_part(&q, &kb, &v, w[0]..w[1], &mut scores, &mut o));
                outs.extend(o);
            }
            let mut out = vec![0f32; d];
            attend_merge(&parts, &outs, &mut out);
            let mut want = vec![0f32; d];
            attend_ref(&q, &kb, &v, len, &mut want);
            assert_close(&out, &want, 3e-5, 1e-4, "merged")?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Several query rows over shared keys equal each row alone (more rows than one kernel
        /// call takes, too).
        #[test]
        fn many_rows_equal_one_at_a_time(
            nq in 1usize..11,
            d in prop::sample::select(vec![1usize, 17, 64, 80]),
            j0 in 0usize..40,
            len in 1usize..200,
            seed in 0u64..1000,
        ) {
            let j1 = j0 + len;
            let qs = fill(nq * d, seed, 1.0);
            let kb = fill(j1.div_ceil(KEY_BLOCK) * KEY_BLOCK * d, seed + 1, 1.0);
            let v = fill(j1 * d, seed + 2, 1.0);
            for level in crate::cpu::available() {
                let mut scores = vec![0f32; nq * scores_len(len)];
                let mut outs = vec![f32::NAN; nq * d];
                let mut stats = vec![(0f32, 0f32); nq];
                attend_part_many_with(level, &qs, &kb, &v, j0..j1, &mut scores, &mut outs, &mut stats);
                for r in 0..nq {
                    let mut o = vec![0f32; d];
                    let st = attend_part_with(level, &qs[r * d..(r + 1) * d], &kb, &v, j0..j1, &mut scores, &mut o);
                    prop_assert_eq!(st, stats[r]);
                    assert_close(&outs[r * d..(r + 1) * d], &o, 0.0, 0.0, "row")?;
                }
            }
        }
    }

    #[test]
    fn no_positions_gives_zeros() {
        let mut out = [1f32; 4];
        attend::<f32>(&[1.0; 4], &[], &[], 0, &mut [0.0; 32], &mut out);
        assert_eq!(out, [0.0; 4]);
    }

    #[test]
    fn one_dominant_key_selects_its_value() {
        // d = 2, three positions; key 1 = (100, 0) is aligned with q and large.
        let q = [1.0f32, 0.0];
        let mut kb = [0f32; 2 * KEY_BLOCK];
        kb[key_index(1, 0, 2)] = 100.0;
        kb[key_index(2, 0, 2)] = -5.0;
        let v = [1.0f32, 2.0, 30.0, 40.0, 5.0, 6.0];
        let mut out = [0f32; 2];
        attend(&q, &kb, &v, 3, &mut [0.0; 35], &mut out);
        assert_eq!(out, [30.0, 40.0]);
    }

    #[test]
    #[should_panic(expected = "attend: kb holds")]
    fn short_keys_panic() {
        attend(
            &[1.0; 2],
            &[0.0; 4],
            &[0.0; 4],
            2,
            &mut [0.0; 34],
            &mut [0.0; 2],
        );
    }
}
