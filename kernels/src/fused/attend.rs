//! Attention of one query row over cached keys and values, as a decode step needs it:
//! `out = softmax(q · Kᵀ) · V` over the first `len` cached positions.
//!
//! The keys are stored transposed, `kt[i·ld + j]` = component `i` of key `j`, so the scores of
//! `4·LANES` positions accumulate in registers over the `d` components (one broadcast of `q[i]`
//! and four FMAs per component) with no horizontal sums; the values stay `[position, d]` and the
//! output accumulates `d` columns at a time over the positions. The scale `1/√d` is the caller's
//! (fold it into `q`).

use super::simd::{load_n, simd_entry, store_n, usable, Simd};
use crate::cpu::{self, Level};

/// `out[d] = Σ_j softmax(q·Kᵀ)_j · v[j]` over positions `j < len`, at the detected SIMD level,
/// on this thread. `q, out: [d]`; `kt: [d, ld]` (keys transposed, `ld ≥ len`); `v: [≥ len, d]`;
/// `scores` is scratch of at least `len` floats (it ends holding the probabilities). With
/// `len == 0` the output is zeros.
pub fn attend(
    q: &[f32],
    kt: &[f32],
    ld: usize,
    v: &[f32],
    len: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_with(cpu::level(), q, kt, ld, v, len, scores, out)
}

/// [`attend`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn attend_with(
    level: Level,
    q: &[f32],
    kt: &[f32],
    ld: usize,
    v: &[f32],
    len: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = check("attend", q, kt, ld, v, len, out);
    assert!(
        scores.len() >= len,
        "attend: scores holds {} < {len}",
        scores.len()
    );
    if len == 0 {
        out.fill(0.0);
        return;
    }
    // SAFETY: the level is usable; the lengths were checked above (kt holds d rows of ld ≥ len,
    // v holds len rows of d, scores len, out d).
    unsafe {
        attend_at(
            usable(level),
            q.as_ptr(),
            kt.as_ptr(),
            ld,
            v.as_ptr(),
            d,
            len,
            scores.as_mut_ptr(),
            out.as_mut_ptr(),
        )
    }
}

/// Plain reference for [`attend`], in f64 rounded once.
pub fn attend_ref(q: &[f32], kt: &[f32], ld: usize, v: &[f32], len: usize, out: &mut [f32]) {
    let d = check("attend_ref", q, kt, ld, v, len, out);
    let s: Vec<f64> = (0..len)
        .map(|j| (0..d).map(|i| q[i] as f64 * kt[i * ld + j] as f64).sum())
        .collect();
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    for (i, o) in out.iter_mut().enumerate() {
        let acc: f64 = (0..len).map(|j| e[j] * v[j * d + i] as f64).sum();
        *o = if len == 0 { 0.0 } else { (acc / z) as f32 };
    }
}

/// Checks the lengths; returns `d`.
fn check(
    name: &str,
    q: &[f32],
    kt: &[f32],
    ld: usize,
    v: &[f32],
    len: usize,
    out: &[f32],
) -> usize {
    let d = q.len();
    assert_eq!(out.len(), d, "{name}: out length");
    assert!(ld >= len, "{name}: key stride {ld} < len {len}");
    assert!(
        d == 0 || len == 0 || kt.len() >= (d - 1) * ld + len,
        "{name}: kt holds {} < {} floats",
        kt.len(),
        (d.max(1) - 1) * ld + len
    );
    assert!(
        v.len() >= len * d,
        "{name}: v holds {} < {} floats",
        v.len(),
        len * d
    );
    d
}

simd_entry!(fn attend_at => attend_body(
    q: *const f32,
    kt: *const f32,
    ld: usize,
    v: *const f32,
    d: usize,
    len: usize,
    scores: *mut f32,
    out: *mut f32,
));

/// # Safety
/// `S`'s level is supported; `q, out` hold `d`, `kt` `d` rows of stride `ld ≥ len`, `v` `len`
/// rows of `d`, `scores` `len`; `len > 0`.
#[inline(always)]
unsafe fn attend_body<S: Simd>(
    q: *const f32,
    kt: *const f32,
    ld: usize,
    v: *const f32,
    d: usize,
    len: usize,
    scores: *mut f32,
    out: *mut f32,
) {
    let l = S::LANES;
    // Scores, 4 vectors of positions at a time.
    let mut j = 0;
    while j + 4 * l <= len {
        let mut a = [S::splat(0.0); 4];
        for i in 0..d {
            let qi = S::splat(*q.add(i));
            let p = kt.add(i * ld + j);
            for (k, acc) in a.iter_mut().enumerate() {
                *acc = S::fma(qi, S::load(p.add(k * l)), *acc);
            }
        }
        for (k, acc) in a.iter().enumerate() {
            S::store(scores.add(j + k * l), *acc);
        }
        j += 4 * l;
    }
    while j < len {
        let valid = (len - j).min(l);
        let mut acc = S::splat(0.0);
        for i in 0..d {
            acc = S::fma(
                S::splat(*q.add(i)),
                load_n::<S>(kt.add(i * ld + j), valid, 0.0),
                acc,
            );
        }
        store_n::<S>(scores.add(j), acc, valid);
        j += valid;
    }
    super::softmax::row::<S>(scores, scores, len);
    // out = Σ_j p_j · v_j, 4 vectors of columns at a time.
    let mut c = 0;
    while c < d {
        let cols = (d - c).min(4 * l);
        let mut a = [S::splat(0.0); 4];
        for j in 0..len {
            let p = S::splat(*scores.add(j));
            let row = v.add(j * d + c);
            for (k, acc) in a.iter_mut().enumerate() {
                let valid = cols.saturating_sub(k * l).min(l);
                if valid > 0 {
                    *acc = S::fma(p, load_n::<S>(row.add(k * l), valid, 0.0), *acc);
                }
            }
        }
        for (k, acc) in a.iter().enumerate() {
            let valid = cols.saturating_sub(k * l).min(l);
            if valid > 0 {
                store_n::<S>(out.add(c + k * l), *acc, valid);
            }
        }
        c += cols;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{assert_close, fill};
    use proptest::prelude::*;

    /// Scores of up to 128 products of terms in [-1, 1] carry about 1e-5 of absolute rounding,
    /// which the softmax turns into that much relative error of the weights; outputs are convex
    /// combinations of values in [-1, 1].
    fn case(level: Level, d: usize, len: usize, ld: usize, seed: u64) -> Result<(), TestCaseError> {
        let q = fill(d, seed, 1.0);
        let kt = fill(d * ld, seed + 1, 1.0);
        let v = fill(len * d, seed + 2, 1.0);
        let mut scores = vec![f32::NAN; len];
        let mut out = vec![f32::NAN; d];
        let mut want = vec![0f32; d];
        attend_with(level, &q, &kt, ld, &v, len, &mut scores, &mut out);
        attend_ref(&q, &kt, ld, &v, len, &mut want);
        assert_close(
            &out,
            &want,
            3e-5,
            1e-4,
            &format!("{level:?} d={d} len={len} ld={ld}"),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every level against the f64 reference over head dims and lengths around the vector
        /// widths (8 and 16 lanes, blocks of 4 vectors) and a key stride past the length.
        #[test]
        fn attend_matches_ref(
            d in prop::sample::select(vec![1usize, 7, 15, 16, 17, 31, 64, 65, 80, 128]),
            len in prop::sample::select(vec![1usize, 2, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 641]),
            extra in 0usize..20,
            seed in 0u64..1000,
        ) {
            for level in crate::cpu::available() {
                case(level, d, len, len + extra, seed)?;
            }
        }
    }

    #[test]
    fn no_positions_gives_zeros() {
        let mut out = [1f32; 4];
        attend(&[1.0; 4], &[], 0, &[], 0, &mut [], &mut out);
        assert_eq!(out, [0.0; 4]);
    }

    #[test]
    fn one_dominant_key_selects_its_value() {
        // d = 2, three positions; key 1 is aligned with q and large.
        let q = [1.0f32, 0.0];
        let kt = [0.0f32, 100.0, -5.0, /* */ 0.0, 0.0, 0.0];
        let v = [1.0f32, 2.0, 30.0, 40.0, 5.0, 6.0];
        let mut out = [0f32; 2];
        attend(&q, &kt, 3, &v, 3, &mut [0.0; 3], &mut out);
        assert_eq!(out, [30.0, 40.0]);
    }

    #[test]
    #[should_panic(expected = "attend: key stride")]
    fn short_stride_panics() {
        attend(
            &[1.0; 2],
            &[0.0; 4],
            1,
            &[0.0; 4],
            2,
            &mut [0.0; 2],
            &mut [0.0; 2],
        );
    }
}
