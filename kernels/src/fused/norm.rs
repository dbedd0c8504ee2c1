//! RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization", eq. 4) as LLaMA uses
//! it: `y = x / sqrt(mean(x²) + eps) · g` over each row, computed in f32 like PyTorch's f32 path
//! (so `x²` must stay finite in f32).

use super::simd::{par_rows, simd_entry, usable, Simd, PAR_STREAM};
use crate::cpu::{self, Level};

/// `out = x / sqrt(mean(x²) + eps) · weight` per row. x: `[rows, n]`, weight: `[n]` → out:
/// `[rows, n]`, at the detected SIMD level; rows in parallel when the buffer is large.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_with(cpu::level(), x, weight, eps, out)
}

/// [`rms_norm`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn rms_norm_with(level: Level, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    check("rms_norm", x, weight, out);
    let level = usable(level);
    let n = weight.len();
    par_rows(out, n, PAR_STREAM, |r0, o| {
        let xs = &x[r0 * n..r0 * n + o.len()];
        // SAFETY: `level` is supported; `xs`, `o` hold the same whole rows of `n = weight.len()`.
        unsafe { rows_at(level, xs, weight, eps, o) }
    });
}

/// Plain reference for [`rms_norm`]: sums of squares and the scaling in f64, rounded once.
pub fn rms_norm_ref(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    check("rms_norm_ref", x, weight, out);
    let n = weight.len();
    if n == 0 {
        return;
    }
    for (xr, or) in x.chunks(n).zip(out.chunks_mut(n)) {
        let ss: f64 = xr.iter().map(|&v| v as f64 * v as f64).sum();
        let scale = 1.0 / (ss / n as f64 + eps as f64).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(weight) {
            *o = (v as f64 * scale * g as f64) as f32;
        }
    }
}

fn check(name: &str, x: &[f32], weight: &[f32], out: &[f32]) {
    assert_eq!(x.len(), out.len(), "{name}: out length");
    let n = weight.len();
    if n == 0 {
        assert!(x.is_empty(), "{name}: empty weight with a non-empty x");
    } else {
        assert_eq!(
            x.len() % n,
            0,
            "{name}: x length is not a multiple of weight length {n}"
        );
    }
}

simd_entry!(fn rows_at => rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]));

/// Whole rows of `w.len() > 0` elements.
#[inline(always)]
unsafe fn rows<S: Simd>(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let (xp, wp, op) = (xr.as_ptr(), w.as_ptr(), or.as_mut_ptr());
        let scale = 1.0 / (sum_sq::<S>(xp, n) / n as f32 + eps).sqrt();
        let s = S::splat(scale);
        let mut i = 0;
        while i + S::LANES <= n {
            let y = S::mul(S::mul(S::load(xp.add(i)), s), S::load(wp.add(i)));
            S::store(op.add(i), y);
            i += S::LANES;
        }
        if i < n {
            let v = n - i;
            let y = S::mul(
                S::mul(S::load_part(xp.add(i), v, 0.0), s),
                S::load_part(wp.add(i), v, 0.0),
            );
            S::store_part(op.add(i), y, v);
        }
    }
}

/// `Σ x[i]²` over `n` elements in four vector accumulators: the FMA latency is hidden and each
/// lane sums only `n / (4·LANES)` terms, which bounds the f32 rounding error.
#[inline(always)]
unsafe fn sum_sq<S: Simd>(x: *const f32, n: usize) -> f32 {
    let l = S::LANES;
    let mut acc = [S::splat(0.0); 4];
    let mut i = 0;
    while i + 4 * l <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let v = S::load(x.add(i + k * l));
            *a = S::fma(v, v, *a);
        }
        i += 4 * l;
    }
    while i + l <= n {
        let v = S::load(x.add(i));
        acc[0] = S::fma(v, v, acc[0]);
        i += l;
    }
    if i < n {
        let v = S::load_part(x.add(i), n - i, 0.0);
        acc[1] = S::fma(v, v, acc[1]);
    }
    S::hsum(S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{assert_close, dim, fill, pool};
    use proptest::prelude::*;

    /// rtol 1e-5: the reference is exact to f32 rounding; the fast path's f32 sum of squares has
    /// relative error ≤ (n/(4·LANES) + 5)·2⁻²⁴ ≈ 8e-6 for n = 4096 at 8 lanes, halved by the square
    /// root, plus three roundings (rsqrt, two products). Products only, no cancellation, so no
    /// absolute term is needed.
    const RTOL: f32 = 1e-5;

    fn check_all(rows: usize, n: usize, seed: u64) -> Result<(), TestCaseError> {
        let x = fill(rows * n, seed, 4.0);
        let w = fill(n, !seed, 2.0);
        let mut want = vec![0f32; x.len()];
        rms_norm_ref(&x, &w, 1e-6, &mut want);
        for level in cpu::available() {
            for t in [1, 2] {
                let mut got = vec![f32::NAN; x.len()];
                pool(t).install(|| rms_norm_with(level, &x, &w, 1e-6, &mut got));
                assert_close(
                    &got,
                    &want,
                    0.0,
                    RTOL,
                    &format!("{level:?} t{t} {rows}x{n}"),
                )?;
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn rms_norm_matches_ref(rows in prop_oneof![0usize..6, 100usize..140], n in dim(), seed: u64) {
            check_all(rows, n, seed)?;
        }
    }

    #[test]
    fn large_every_level() {
        check_all(11, 4096, 7).unwrap();
        // Past PAR_STREAM, so two threads split it.
        check_all(70, 4096, 8).unwrap();
    }

    #[test]
    fn known_values() {
        for level in cpu::available() {
            // [3, 4]: mean of squares 12.5, so y = [3, 4] / √12.5 = [0.84852814, 1.1313708].
            let mut y = [0f32; 2];
            rms_norm_with(level, &[3.0, 4.0], &[1.0, 1.0], 0.0, &mut y);
            assert!((y[0] - 0.848_528_1).abs() < 1e-6 && (y[1] - 1.131_370_8).abs() < 1e-6);
            // A constant row c normalises to sign(c)·weight; a zero row stays zero thanks to eps.
            let mut y = [0f32; 34];
            let x: Vec<f32> = [-5.0f32; 17].into_iter().chain([0.0; 17]).collect();
            let w: Vec<f32> = (0..17).map(|i| i as f32).collect();
            rms_norm_with(level, &x, &w, 1e-12, &mut y);
            for i in 0..17 {
                assert!(
                    (y[i] + w[i]).abs() <= 1e-6 * w[i],
                    "{level:?} {i}: {}",
                    y[i]
                );
                assert_eq!(y[17 + i], 0.0);
            }
        }
    }

    #[test]
    #[should_panic(expected = "rms_norm: x length is not a multiple")]
    fn ragged_rows_panic() {
        rms_norm(&[1.0; 5], &[1.0; 2], 1e-6, &mut [0.0; 5]);
    }
}
