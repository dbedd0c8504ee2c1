//! The Gram matrix `XᵀX` of a layer's calibration inputs, the expensive half of SparseGPT, and
//! the factorisation SparseGPT derives from it (the upper Cholesky factor of the damped inverse).
//!
//! `x: [tokens, cols]` row-major. Only the block upper triangle is computed — row block
//! `[a, a + BS)` against columns `[a, cols)`, one f32 [`Tensor::matmul`] of strided views each
//! (`X[:, a..a+BS]ᵀ · X[:, a..]`, read in place by the GEMM), so about half the work of the full
//! product — and it is mirrored only when read, so that a call per calibration window costs no
//! more than the products and one pass over half the sum. Tokens go through in chunks of
//! `TOKENS`, each chunk's f32 product added into an f64 sum, so rounding does not grow with the
//! number of tokens. The f32 GEMM's partition of work between threads does not change its
//! arithmetic, so the result is bit-identical from run to run.
//!
//! ```
//! use shears_pruning::{SparseGptStats};
//! use shears_tensor::{DType, Tensor};
//! let x = Tensor::randn([40, 3], 0.0, 1.0, DType::F32, 0)?;
//! let mut s = SparseGptStats::new("in", 3);
//! s.observe(x.as_slice::<f32>()?, 1)?;
//! let h = s.hessian(); // 2·XᵀX, through this module
//! let xv = x.to_vec::<f32>()?;
//! let h01: f64 = xv.chunks(3).map(|r| 2.0 * r[0] as f64 * r[1] as f64).sum();
//! assert!((h[1] - h01).abs() < 1e-4 * h[0].max(h[4]));
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use rayon::prelude::*;
use shears_tensor::{Error, Result, Tensor};

/// Rows of `XᵀX` per product: smaller blocks skip more of the lower triangle but give products
/// with fewer rows.
const BS: usize = 128;
/// Tokens per f32 product before its result is added to the f64 sum.
const TOKENS: usize = 8192;

/// Adds `XᵀX` for `x: [tokens, cols]` (f32, contiguous) into `acc: [cols, cols]` (f64). Only
/// the upper triangle of `acc` is maintained (the diagonal blocks' lower halves get values too,
/// but are never read): read it back with [`symmetric_from_upper`]. The caller bounds `|x|` so
/// that no f32 product overflows.
pub(crate) fn add_gram_upper(x: &Tensor, acc: &mut [f64]) -> Result<()> {
    let (tokens, cols) = match *x.dims() {
        [t, c] => (t, c),
        _ => {
            return Err(Error::invalid(
                "add_gram_upper",
                format!("expected [tokens, cols], got shape {}", x.shape()),
            ))
        }
    };
    assert_eq!(
        acc.len(),
        cols * cols,
        "add_gram_upper: acc must hold cols·cols values"
    );
    if cols == 0 {
        return Ok(());
    }
    for t0 in (0..tokens).step_by(TOKENS) {
        let xs = x.narrow(0, t0, TOKENS.min(tokens - t0))?;
        for a in (0..cols).step_by(BS) {
            let m = BS.min(cols - a);
            let n = cols - a;
            // (XᵀX)[a + i, a + j] = Σ_t x[t, a + i] · x[t, a + j]: X[:, a..a+m]ᵀ · X[:, a..].
            let xa = xs.narrow(1, a, n)?;
            let c = xa.narrow(1, 0, m)?.t()?.matmul(&xa)?;
            let c = c.as_slice::<f32>()?;
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
    Ok(())
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

/// `U`, the upper Cholesky factor of `(H + λI)⁻¹` (`[cols, cols]`, f64, strict lower triangle
/// zero), with the `λ` used and the number of retries: `cholesky(H + λI)`, `cholesky_inverse`,
/// then `cholesky(.., upper)` of the inverse, as the reference's `fasterprune`. `λ` starts at
/// `percdamp · mean(diag H)` and is raised ×10 (from `0.01 · mean(diag H)` if it was 0) whenever
/// a factorisation fails, at most `max_retries` times; then the error is an `InvalidArgument`
/// naming `op` and the layer `name` with the failing pivot.
pub(crate) fn inverse_hessian_factor(
    op: &'static str,
    name: &str,
    h: &[f64],
    cols: usize,
    percdamp: f64,
    max_retries: u32,
) -> Result<(Tensor, f64, u32)> {
    let mean_diag = if cols == 0 {
        0.0
    } else {
        (0..cols).map(|i| h[i * cols + i]).sum::<f64>() / cols as f64
    };
    let mut damp = percdamp * mean_diag;
    let mut retries = 0;
    loop {
        let mut hd = h.to_vec();
        for i in 0..cols {
            hd[i * cols + i] += damp;
        }
        let failure = match upper_factor_of_inverse(hd, cols)? {
            Ok(u) => return Ok((u, damp, retries)),
            Err(failure) => failure,
        };
        if retries >= max_retries {
            return Err(Error::invalid(
                op,
                format!(
                    "layer `{name}`: Hessian not positive definite with damping {damp:e} after \
                     {retries} retries: {failure}"
                ),
            ));
        }
        retries += 1;
        damp = if damp > 0.0 {
            damp * 10.0
        } else {
            0.01 * mean_diag
        };
    }
}

/// `cholesky_upper(cholesky_inverse(cholesky_lower(hd)))` for the damped Hessian `hd`
/// (`[cols, cols]`), or why a factorisation failed (`Ok(Err(..))`). Each intermediate is dropped
/// as soon as the next exists, so at most two `cols²` matrices are alive here at a time.
fn upper_factor_of_inverse(
    hd: Vec<f64>,
    cols: usize,
) -> Result<std::result::Result<Tensor, String>> {
    let l = match Tensor::from_vec(hd, [cols, cols])?.cholesky(false) {
        Ok(l) => l,
        Err(Error::NotPositiveDefinite { pivot, value, .. }) => {
            return Ok(Err(format!(
                "pivot {pivot} of the damped Hessian is {value:e}"
            )))
        }
        Err(e) => return Err(e),
    };
    let inv = match l.cholesky_inverse(false) {
        Ok(inv) => inv,
        Err(Error::Singular { index, .. }) => {
            return Ok(Err(format!("its Cholesky factor is singular at {index}")))
        }
        Err(e) => return Err(e),
    };
    drop(l);
    match inv.cholesky(true) {
        Ok(u) => Ok(Ok(u)),
        Err(Error::NotPositiveDefinite { pivot, value, .. }) => Ok(Err(format!(
            "pivot {pivot} of the inverse Hessian is {value:e}"
        ))),
        Err(e) => Err(e),
    }
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
            let xt = Tensor::from_slice(&x, [tokens, cols]).unwrap();
            add_gram_upper(&xt, &mut upper).unwrap();
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
