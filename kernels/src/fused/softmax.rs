//! Softmax over rows, `p_j = e^(x_j − m) / Σ_k e^(x_k − m)` with `m = max_k x_k` so no exponential
//! overflows (Bridle 1990, "Probabilistic interpretation of feedforward classification network
//! outputs"), in three vector passes (max, exp and sum, scale). The causal form masks what a query
//! may not see: attention's `softmax(QKᵀ/√d + M)` with the decoder mask `M` (Vaswani et al. 2017,
//! eq. 1 and §3.2.3), where `offset` earlier positions sit in the KV cache.
//!
//! A row whose visible logits are all `-inf` gives NaN, as PyTorch does; a NaN logit makes its
//! whole row NaN.

use super::simd::{exp, load_n, par_rows, simd_entry, store_n, usable, Simd, PAR_EXP};
use crate::cpu::{self, Level};

/// `out[r, j] = softmax(x[r, :])[j]`. x: `[rows, n]` → out: `[rows, n]`, at the detected SIMD
/// level; rows in parallel when the buffer is large.
pub fn softmax_rows(x: &[f32], n: usize, out: &mut [f32]) {
    softmax_rows_with(cpu::level(), x, n, out)
}

/// [`softmax_rows`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn softmax_rows_with(level: Level, x: &[f32], n: usize, out: &mut [f32]) {
    check("softmax_rows", x.len(), out.len(), 1, n);
    run(level, Some(x), out, n, None)
}

/// [`softmax_rows`] in place. x: `[rows, n]`.
pub fn softmax_rows_inplace(x: &mut [f32], n: usize) {
    check("softmax_rows_inplace", x.len(), x.len(), 1, n);
    run(cpu::level(), None, x, n, None)
}

/// Causal softmax of attention scores. x: `[batch, rows, n]` → out: same shape; query row `r`
/// (of each `[rows, n]` block) sees keys `0..=r + offset` (capped at `n`), and every other key
/// gets probability exactly 0. `offset` is the number of positions already in the KV cache, so
/// `n = offset + rows` in the usual layout.
pub fn softmax_causal(x: &[f32], rows: usize, n: usize, offset: usize, out: &mut [f32]) {
    softmax_causal_with(cpu::level(), x, rows, n, offset, out)
}

/// [`softmax_causal`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn softmax_causal_with(
    level: Level,
    x: &[f32],
    rows: usize,
    n: usize,
    offset: usize,
    out: &mut [f32],
) {
    check("softmax_causal", x.len(), out.len(), rows, n);
    run(level, Some(x), out, n, Some((rows, offset)))
}

/// [`softmax_causal`] in place. x: `[batch, rows, n]`.
pub fn softmax_causal_inplace(x: &mut [f32], rows: usize, n: usize, offset: usize) {
    check("softmax_causal_inplace", x.len(), x.len(), rows, n);
    run(cpu::level(), None, x, n, Some((rows, offset)))
}

/// Plain reference for [`softmax_rows`]: `x − m` in f32 like the fast path, then exp, sum and
/// division in f64, rounded once.
pub fn softmax_rows_ref(x: &[f32], n: usize, out: &mut [f32]) {
    check("softmax_rows_ref", x.len(), out.len(), 1, n);
    for (xr, or) in x.chunks(n.max(1)).zip(out.chunks_mut(n.max(1))) {
        row_ref(xr, or, n);
    }
}

/// Plain reference for [`softmax_causal`], computed like [`softmax_rows_ref`].
pub fn softmax_causal_ref(x: &[f32], rows: usize, n: usize, offset: usize, out: &mut [f32]) {
    check("softmax_causal_ref", x.len(), out.len(), rows, n);
    let chunks = x.chunks(n.max(1)).zip(out.chunks_mut(n.max(1)));
    for (i, (xr, or)) in chunks.enumerate() {
        row_ref(xr, or, (i % rows + offset + 1).min(n));
    }
}

fn row_ref(x: &[f32], out: &mut [f32], valid: usize) {
    let m = x[..valid].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let m = if m.is_finite() { m } else { 0.0 };
    let s: f64 = x[..valid].iter().map(|&v| ((v - m) as f64).exp()).sum();
    for (o, &v) in out[..valid].iter_mut().zip(x) {
        *o = (((v - m) as f64).exp() / s) as f32;
    }
    out[valid..].fill(0.0);
}

fn check(name: &str, len: usize, out_len: usize, rows: usize, n: usize) {
    assert_eq!(len, out_len, "{name}: out length");
    if rows * n == 0 {
        assert_eq!(len, 0, "{name}: zero rows or n with a non-empty x");
    } else {
        assert_eq!(
            len % (rows * n),
            0,
            "{name}: x length is not a multiple of rows · n"
        );
    }
}

/// Softmax of `x` (or of `out` itself when `x` is `None`) into `out`.
fn run(level: Level, x: Option<&[f32]>, out: &mut [f32], n: usize, causal: Option<(usize, usize)>) {
    let level = usable(level);
    par_rows(out, n, PAR_EXP, |r0, o| {
        let p = o.as_mut_ptr();
        let src = x.map_or(p.cast_const(), |x| x[r0 * n..r0 * n + o.len()].as_ptr());
        // SAFETY: `level` is supported; `src` and `p` hold `o.len()` elements, whole rows of `n`
        // (checked); when they alias, each element is read before it is written.
        unsafe { rows_at(level, src, p, o.len(), n, r0, causal) }
    });
}

simd_entry!(fn rows_at => rows(
    x: *const f32,
    out: *mut f32,
    len: usize,
    n: usize,
    first_row: usize,
    causal: Option<(usize, usize)>,
));

/// `len / n` rows starting at row `first_row` of the whole buffer.
#[inline(always)]
unsafe fn rows<S: Simd>(
    x: *const f32,
    out: *mut f32,
    len: usize,
    n: usize,
    first_row: usize,
    causal: Option<(usize, usize)>,
) {
    for i in 0..len / n {
        let valid = match causal {
            Some((rows, offset)) => ((first_row + i) % rows + offset + 1).min(n),
            None => n,
        };
        row::<S>(x.add(i * n), out.add(i * n), valid);
        std::ptr::write_bytes(out.add(i * n + valid), 0, n - valid);
    }
}

/// Softmax of the `n` elements at `x` into `out` (which may equal `x`).
#[inline(always)]
pub(super) unsafe fn row<S: Simd>(x: *const f32, out: *mut f32, n: usize) {
    let l = S::LANES;
    let neg_inf = f32::NEG_INFINITY;
    let mut mx = [S::splat(neg_inf); 2];
    let mut i = 0;
    while i + 2 * l <= n {
        mx[0] = S::max(mx[0], S::load(x.add(i)));
        mx[1] = S::max(mx[1], S::load(x.add(i + l)));
        i += 2 * l;
    }
    while i < n {
        let v = (n - i).min(l);
        mx[0] = S::max(mx[0], load_n::<S>(x.add(i), v, neg_inf));
        i += v;
    }
    let m = S::hmax(S::max(mx[0], mx[1]));
    // No finite max (all -inf, or +inf present): shift by 0 so -inf still maps to 0.
    let m = S::splat(if m.is_finite() { m } else { 0.0 });

    // Four sums: each lane adds ≤ n / (4·LANES) terms, which bounds the rounding error.
    let mut acc = [S::splat(0.0); 4];
    let mut i = 0;
    while i + 4 * l <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let e = exp::<S>(S::sub(S::load(x.add(i + k * l)), m));
            S::store(out.add(i + k * l), e);
            *a = S::add(*a, e);
        }
        i += 4 * l;
    }
    while i < n {
        let v = (n - i).min(l);
        // Padding lanes load -inf, so they add e^-inf = 0.
        let e = exp::<S>(S::sub(load_n::<S>(x.add(i), v, neg_inf), m));
        store_n::<S>(out.add(i), e, v);
        acc[0] = S::add(acc[0], e);
        i += v;
    }
    let s = S::hsum(S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3])));

    let inv = S::splat(1.0 / s);
    let mut i = 0;
    while i < n {
        let v = (n - i).min(l);
        store_n::<S>(out.add(i), S::mul(load_n::<S>(out.add(i), v, 0.0), inv), v);
        i += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{assert_close, dim, fill, pool};
    use proptest::prelude::*;

    /// rtol 1e-5: the reference is exact to f32 rounding; the fast exp is within 2 ulp (2.4e-7),
    /// each lane of the f32 sum adds ≤ n/(4·LANES) terms (≤ 128·2⁻²⁴ ≈ 7.6e-6 relative for
    /// n = 4096 at 8 lanes), and the reciprocal and product round once each. atol 1e-38, about
    /// f32's smallest normal: subnormal probabilities carry only absolute precision.
    const RTOL: f32 = 1e-5;
    const ATOL: f32 = 1e-38;

    fn check_all(
        batch: usize,
        rows: usize,
        n: usize,
        scale: f32,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let mut x = fill(batch * rows * n, seed, scale);
        // Some masked logits, as an additive attention mask leaves them.
        for v in x.iter_mut().skip(5).step_by(13) {
            *v = f32::NEG_INFINITY;
        }
        let offset = (seed % 5) as usize;
        let (mut want, mut want_c) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        softmax_rows_ref(&x, n, &mut want);
        softmax_causal_ref(&x, rows, n, offset, &mut want_c);
        for level in cpu::available() {
            for t in [1, 2] {
                let what = format!("{level:?} t{t} {batch}x{rows}x{n} scale {scale}");
                let mut got = vec![f32::NAN; x.len()];
                pool(t).install(|| softmax_rows_with(level, &x, n, &mut got));
                assert_close(&got, &want, ATOL, RTOL, &what)?;
                pool(t).install(|| softmax_causal_with(level, &x, rows, n, offset, &mut got));
                assert_close(
                    &got,
                    &want_c,
                    ATOL,
                    RTOL,
                    &format!("causal +{offset} {what}"),
                )?;
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn softmax_matches_ref(
            batch in prop_oneof![0usize..3, 30usize..40],
            rows in 1usize..5,
            n in dim(),
            scale in prop::sample::select(vec![0.1f32, 10.0, 200.0]),
            seed: u64,
        ) {
            check_all(batch, rows, n, scale, seed)?;
        }
    }

    #[test]
    fn large_every_level() {
        check_all(1, 11, 4096, 20.0, 2).unwrap();
        check_all(32, 1, 4096, 20.0, 3).unwrap();
    }

    #[test]
    fn equal_logits_are_uniform() {
        for level in cpu::available() {
            for n in [1, 7, 16, 33, 100] {
                let mut p = vec![0f32; 2 * n];
                softmax_rows_with(level, &vec![3.5; 2 * n], n, &mut p);
                let u = 1.0 / n as f32;
                assert!(
                    p.iter().all(|&v| (v - u).abs() <= 2.0 * f32::EPSILON * u),
                    "{level:?} {n}"
                );
            }
        }
    }

    #[test]
    fn causal_rows_are_zero_past_their_position() {
        let (rows, offset) = (5, 3);
        let n = rows + offset;
        let x = fill(2 * rows * n, 8, 6.0);
        for level in cpu::available() {
            let mut p = vec![f32::NAN; x.len()];
            softmax_causal_with(level, &x, rows, n, offset, &mut p);
            for (i, (pr, xr)) in p.chunks(n).zip(x.chunks(n)).enumerate() {
                let seen = i % rows + offset + 1;
                assert!(pr[seen..].iter().all(|&v| v == 0.0), "{level:?} row {i}");
                // The visible part is exactly a plain softmax of the visible logits.
                let mut q = vec![0f32; seen];
                softmax_rows_with(level, &xr[..seen], seen, &mut q);
                assert_eq!(&pr[..seen], &q[..], "{level:?} row {i}");
                assert!((pr.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn inplace_equals_out_of_place() {
        let x = fill(7 * 45, 4, 30.0);
        let mut a = vec![0f32; x.len()];
        softmax_rows(&x, 45, &mut a);
        let mut b = x.clone();
        softmax_rows_inplace(&mut b, 45);
        assert_eq!(a, b);
        softmax_causal(&x, 7, 45, 38, &mut a);
        let mut b = x.clone();
        softmax_causal_inplace(&mut b, 7, 45, 38);
        assert_eq!(a, b);
    }

    #[test]
    fn special_values() {
        let inf = f32::INFINITY;
        for level in cpu::available() {
            let mut p = [0f32; 3];
            // Huge logits stay finite: the max is subtracted first.
            softmax_rows_with(level, &[1000.0, 1000.0, -1000.0], 3, &mut p);
            assert_eq!(p, [0.5, 0.5, 0.0], "{level:?}");
            softmax_rows_with(level, &[-inf, 0.0, -inf], 3, &mut p);
            assert_eq!(p, [0.0, 1.0, 0.0], "{level:?}");
            // A fully masked row is NaN, as in PyTorch; so is a row with a NaN.
            softmax_rows_with(level, &[-inf; 3], 3, &mut p);
            assert!(p.iter().all(|v| v.is_nan()), "{level:?}");
            softmax_rows_with(level, &[0.0, f32::NAN, 1.0], 3, &mut p);
            assert!(p.iter().all(|v| v.is_nan()), "{level:?}");
        }
    }

    #[test]
    #[should_panic(expected = "softmax_causal: x length is not a multiple of rows · n")]
    fn ragged_blocks_panic() {
        softmax_causal(&[0.0; 10], 2, 3, 0, &mut [0.0; 10]);
    }
}
