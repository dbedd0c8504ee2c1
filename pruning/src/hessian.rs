//! The Gram matrix `XᵀX` of a layer's calibration inputs, the expensive half of SparseGPT.
//!
//! `x: [tokens, cols]` row-major. Only the block upper triangle is computed — row block
//! `[a, a + BS)` against columns `[a, cols)`, one f32 GEMM each, so about half the work of the
//! full product — and it is mirrored only when read, so that a call per calibration window costs
//! no more than the GEMMs and one pass over half the sum. Tokens go through in chunks of `TOKENS`, each chunk's f32
//! product added into an f64 sum, so rounding does not grow with the number of tokens. The f32
//! GEMM's partition of work between threads does not change its arithmetic, so the result is
//! bit-identical from run to run.

use rayon::prelude::*;
use shears_kernels::gemm::{gemm, MatRef};

/// Rows of `XᵀX` per GEMM: smaller blocks skip more of the lower triangle but give GEMM calls
/// with fewer rows.
const BS: usize = 128;
/// Tokens per f32 GEMM before its result is added to the f64 sum.
const TOKENS: usize = 8192;

/// Adds `XᵀX` for `x: [tokens, cols]` into `acc: [cols, cols]` (f64). Only the upper triangle of
/// `acc` is maintained (the diagonal blocks' lower halves get values too, but are never read):
/// read it back with [`symmetric_from_upper`]. The caller bounds `|x|` so that no f32 product
/// overflows.
pub(crate) fn add_gram_upper(x: &[f32], cols: usize, acc: &mut [f64]) {
    assert_eq!(
        acc.len(),
        cols * cols,
        "add_gram_upper: acc must hold cols·cols values"
    );
    if cols == 0 {
        return;
    }
    let tokens = x.len() / cols;
    let mut cbuf = vec![0.0f32; BS.min(cols) * cols];
    for t0 in (0..tokens).step_by(TOKENS) {
        let kt = TOKENS.min(tokens - t0);
        let xs = &x[t0 * cols..(t0 + kt) * cols];
        for a in (0..cols).step_by(BS) {
            let m = BS.min(cols - a);
            let n = cols - a;
            let c = &mut cbuf[..m * n];
            // (XᵀX)[a + i, a + j] = Σ_t x[t, a + i] · x[t, a + j]: A = X[:, a..]ᵀ, B = X[:, a..].
            gemm(
                m,
                n,
                kt,
                MatRef::new(&xs[a..], 1, cols),
                MatRef::new(&xs[a..], cols, 1),
                c,
            );
            acc[a * cols..(a + m) * cols]
                .par_chunks_mut(cols)
                .zip(c.par_chunks(n))
                .for_each(|(arow, crow)| {
                    for (s, &v) in arow[a..].iter_mut().zip(crow) {
                        *s += v as f64;
                    }
                });
        }
    }
}

/// `scale · S` as a full, exactly symmetric `[cols, cols]` matrix, from the upper triangle of `s`.
pub(crate) fn symmetric_from_upper(s: &[f64], cols: usize, scale: f64) -> Vec<f64> {
    let mut h = vec![0.0f64; cols * cols];
    if cols == 0 {
        return h;
    }
    h.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
        for (j, v) in row.iter_mut().enumerate() {
            let (r, c) = if i <= j { (i, j) } else { (j, i) };
            *v = scale * s[r * cols + c];
        }
    });
    h
}

/// Plain reference for [`add_gram_upper`]: `Σ_t x_t x_tᵀ` in f64, one token at a time.
#[cfg(test)]
pub(crate) fn gram_ref(x: &[f32], cols: usize) -> Vec<f64> {
    let mut acc = vec![0.0f64; cols * cols];
    for row in x.chunks_exact(cols) {
        for i in 0..cols {
            for j in 0..cols {
                acc[i * cols + j] += row[i] as f64 * row[j] as f64;
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gram_matches_reference_across_block_and_chunk_edges() {
        // cols straddles BS, tokens straddle TOKENS.
        for &(tokens, cols) in &[(3, 1), (5, 129), (TOKENS + 3, 130), (17, 300)] {
            let mut s = 12345u64;
            let x: Vec<f32> = (0..tokens * cols)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect();
            let mut upper = vec![0.0f64; cols * cols];
            add_gram_upper(&x, cols, &mut upper);
            let got = symmetric_from_upper(&upper, cols, 1.0);
            let want = gram_ref(&x, cols);
            // f32 products: error relative to the Cauchy–Schwarz bound √(H_ii·H_jj).
            for i in 0..cols {
                for j in 0..cols {
                    let (g, w) = (got[i * cols + j], want[i * cols + j]);
                    let bound = (want[i * cols + i] * want[j * cols + j]).sqrt();
                    assert!(
                        (g - w).abs() <= 1e-5 * bound,
                        "tokens {tokens} cols {cols} at ({i}, {j}): {g} vs {w}"
                    );
                }
            }
            for i in 0..cols {
                for j in 0..cols {
                    assert_eq!(got[i * cols + j], got[j * cols + i]);
                }
            }
        }
    }
}
