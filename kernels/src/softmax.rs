//! Numerically stable softmax and log-softmax over the rows of a row-major `[rows, n]` buffer.

use crate::Float;
use rayon::prelude::*;

/// `out[r, j] = exp(x[r, j] - max_r) / Σ_j exp(x[r, j] - max_r)`, rows in parallel.
pub fn softmax_rows<T: Float>(x: &[T], n: usize, out: &mut [T]) {
    rows(x, n, out, false)
}

/// `out[r, j] = x[r, j] - max_r - log Σ_j exp(x[r, j] - max_r)`, rows in parallel.
pub fn log_softmax_rows<T: Float>(x: &[T], n: usize, out: &mut [T]) {
    rows(x, n, out, true)
}

fn rows<T: Float>(x: &[T], n: usize, out: &mut [T], log: bool) {
    assert_eq!(x.len(), out.len(), "softmax: output length");
    if n == 0 {
        return;
    }
    assert_eq!(
        x.len() % n,
        0,
        "softmax: length is not a multiple of the row size"
    );
    let row = |(xr, or): (&[T], &mut [T])| {
        let m = xr.iter().fold(
            T::neg_infinity(),
            |a, &b| if a.is_nan() || a >= b { a } else { b },
        );
        // A row of -inf (fully masked) has no finite max; shifting by 0 keeps exp(-inf) = 0.
        let m = if m.is_finite() || m.is_nan() {
            m
        } else {
            T::zero()
        };
        let mut s = T::zero();
        for (o, &v) in or.iter_mut().zip(xr) {
            let e = (v - m).exp();
            *o = e;
            s = s + e;
        }
        if log {
            let ls = s.ln();
            for (o, &v) in or.iter_mut().zip(xr) {
                *o = v - m - ls;
            }
        } else {
            let inv = s.recip();
            for o in or.iter_mut() {
                *o = *o * inv;
            }
        }
    };
    if x.len() >= 1 << 15 {
        x.par_chunks(n).zip(out.par_chunks_mut(n)).for_each(row);
    } else {
        x.chunks(n).zip(out.chunks_mut(n)).for_each(row);
    }
}

/// Plain reference for [`softmax_rows`] (two passes, no parallelism).
pub fn softmax_rows_ref<T: Float>(x: &[T], n: usize, out: &mut [T]) {
    assert_eq!(x.len(), out.len(), "softmax_ref: output length");
    for (xr, or) in x.chunks(n.max(1)).zip(out.chunks_mut(n.max(1))) {
        let m = xr.iter().cloned().fold(T::neg_infinity(), T::max);
        let m = if m.is_finite() { m } else { T::zero() };
        let s = xr
            .iter()
            .map(|&v| (v - m).exp())
            .fold(T::zero(), |a, b| a + b);
        for (o, &v) in or.iter_mut().zip(xr) {
            *o = (v - m).exp() / s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn softmax_matches_ref(rows_n in 0usize..5, n in prop_oneof![Just(1usize), Just(15), Just(16), Just(17), 1usize..50], scale in 0.1f32..100.0, seed: u32) {
            let x: Vec<f32> = (0..rows_n * n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed)) as f32 / u32::MAX as f32 - 0.5) * scale).collect();
            let mut a = vec![0f32; x.len()];
            let mut b = vec![0f32; x.len()];
            softmax_rows(&x, n, &mut a);
            softmax_rows_ref(&x, n, &mut b);
            for (p, q) in a.iter().zip(&b) {
                prop_assert!((p - q).abs() <= 1e-6 + 1e-5 * q.abs());
            }
        }
    }

    #[test]
    fn huge_logits_stay_finite() {
        let x = [1000f32, 1000., -1000.];
        let mut o = [0f32; 3];
        softmax_rows(&x, 3, &mut o);
        assert_eq!(o, [0.5, 0.5, 0.0]);
        log_softmax_rows(&x, 3, &mut o);
        assert!((o[0] + std::f32::consts::LN_2).abs() < 1e-6 && o[2] < -1999.0);
    }
}
