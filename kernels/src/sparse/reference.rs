//! The plain scalar products every `_ref` kernel is made of: list the kept entries, then loop
//! over them accumulating in f64.

use crate::gemv::WeightElem;

/// `(row, column, value index)` of each kept entry of a bit pattern, row by row.
pub(crate) fn bit_entries(
    n: usize,
    k: usize,
    bits: &[u8],
    start: impl Fn(usize) -> usize,
) -> Vec<(usize, usize, usize)> {
    let rb = k.div_ceil(8);
    let mut out = Vec::new();
    for r in 0..n {
        let mut j = start(r);
        for c in 0..k {
            if (bits[r * rb + c / 8] >> (c % 8)) & 1 == 1 {
                out.push((r, c, j));
                j += 1;
            }
        }
    }
    out
}

/// `(row, column, value index)` of each entry of a CSR pattern.
pub(crate) fn csr_entries(
    n: usize,
    indptr: &[usize],
    indices: &[u32],
) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for r in 0..n {
        for (j, &c) in indices
            .iter()
            .enumerate()
            .take(indptr[r + 1])
            .skip(indptr[r])
        {
            out.push((r, c as usize, j));
        }
    }
    out
}

/// `y[m×n] = x[m×k] · Wᵀ`.
pub(crate) fn nt<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    entries: &[(usize, usize, usize)],
    values: &[W],
    y: &mut [f32],
) {
    let mut acc = vec![0f64; m * n];
    for &(r, c, j) in entries {
        let v = values[j].to_f32() as f64;
        for i in 0..m {
            acc[i * n + r] += x[i * k + c] as f64 * v;
        }
    }
    for (o, a) in y.iter_mut().zip(acc) {
        *o = a as f32;
    }
}

/// `dx[m×k] = dy[m×n] · W`.
pub(crate) fn nn<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    entries: &[(usize, usize, usize)],
    values: &[W],
    dx: &mut [f32],
) {
    let mut acc = vec![0f64; m * k];
    for &(r, c, j) in entries {
        let v = values[j].to_f32() as f64;
        for i in 0..m {
            acc[i * k + c] += dy[i * n + r] as f64 * v;
        }
    }
    for (o, a) in dx.iter_mut().zip(acc) {
        *o = a as f32;
    }
}

/// `dvalues[j] = Σ_i dy[i, row(j)] · x[i, col(j)]`.
pub(crate) fn weight_grad(
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    x: &[f32],
    entries: &[(usize, usize, usize)],
    dvalues: &mut [f32],
) {
    for &(r, c, j) in entries {
        let mut acc = 0f64;
        for i in 0..m {
            acc += dy[i * n + r] as f64 * x[i * k + c] as f64;
        }
        dvalues[j] = acc as f32;
    }
}
