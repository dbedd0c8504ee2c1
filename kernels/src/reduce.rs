//! Reductions over the middle axis of a row-major `[outer, n, inner]` block: the general form of
//! reducing any one dim of a contiguous tensor.

use crate::Float;

/// `out[o, i] = Σ_j x[o, j, i]`; `out` has `outer * inner` elements.
pub fn sum<T: Float>(x: &[T], outer: usize, n: usize, inner: usize) -> Vec<T> {
    assert_eq!(x.len(), outer * n * inner, "reduce::sum: input length");
    let mut out = vec![T::zero(); outer * inner];
    for o in 0..outer {
        let acc = &mut out[o * inner..(o + 1) * inner];
        for j in 0..n {
            let row = &x[(o * n + j) * inner..(o * n + j + 1) * inner];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a = *a + v;
            }
        }
    }
    out
}

/// `out[o, i] = max_j x[o, j, i]` (NaN propagates); `n` must be positive.
pub fn max<T: Float>(x: &[T], outer: usize, n: usize, inner: usize) -> Vec<T> {
    fold(
        x,
        outer,
        n,
        inner,
        |a, b| if a.is_nan() || a >= b { a } else { b },
    )
}

/// `out[o, i] = min_j x[o, j, i]` (NaN propagates); `n` must be positive.
pub fn min<T: Float>(x: &[T], outer: usize, n: usize, inner: usize) -> Vec<T> {
    fold(
        x,
        outer,
        n,
        inner,
        |a, b| if a.is_nan() || a <= b { a } else { b },
    )
}

fn fold<T: Float>(x: &[T], outer: usize, n: usize, inner: usize, f: impl Fn(T, T) -> T) -> Vec<T> {
    assert_eq!(x.len(), outer * n * inner, "reduce: input length");
    assert!(n > 0, "reduce: empty dim");
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        out.extend_from_slice(&x[o * n * inner..(o * n + 1) * inner]);
        let acc = &mut out[o * inner..(o + 1) * inner];
        for j in 1..n {
            let row = &x[(o * n + j) * inner..(o * n + j + 1) * inner];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a = f(*a, v);
            }
        }
    }
    out
}

/// Index along the middle axis of the first maximum (a NaN counts as the maximum, as in PyTorch);
/// `n` must be positive.
pub fn argmax<T: Float>(x: &[T], outer: usize, n: usize, inner: usize) -> Vec<usize> {
    arg_by(x, outer, n, inner, |best, v| {
        !best.is_nan() && (v.is_nan() || v > best)
    })
}

/// Index along the middle axis of the first minimum (a NaN counts as the minimum).
pub fn argmin<T: Float>(x: &[T], outer: usize, n: usize, inner: usize) -> Vec<usize> {
    arg_by(x, outer, n, inner, |best, v| {
        !best.is_nan() && (v.is_nan() || v < best)
    })
}

fn arg_by<T: Float>(
    x: &[T],
    outer: usize,
    n: usize,
    inner: usize,
    better: impl Fn(T, T) -> bool,
) -> Vec<usize> {
    assert_eq!(x.len(), outer * n * inner, "reduce: input length");
    assert!(n > 0, "reduce: empty dim");
    let mut out = vec![0usize; outer * inner];
    for o in 0..outer {
        for i in 0..inner {
            let mut best = x[o * n * inner + i];
            for j in 1..n {
                let v = x[(o * n + j) * inner + i];
                if better(best, v) {
                    best = v;
                    out[o * inner + i] = j;
                }
            }
        }
    }
    out
}
