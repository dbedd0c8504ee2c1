//! Cross-entropy of logits against class ids as one fused op: the loss from each row's
//! log-sum-exp (no `[N, C]` log-probabilities are kept), and its gradient `(softmax − onehot)/|V|`
//! in one pass. For a language model's head (C = 49 152 for SmolLM2, N = batch · seq) this saves
//! several `[N, C]` buffers over the composition `log_softmax → gather → mean`.
//!
//! ```
//! use shears_tensor::Tensor;
//! let logits = Tensor::from_vec(vec![2.0f32, 0.0, 0.0, 0.0, 2.0, 0.0], [2, 3])?;
//! let targets = Tensor::from_vec(vec![0i64, 1], [2])?;
//! let loss = logits.cross_entropy(&targets, None)?.to_scalar::<f32>()?;
//! let expected = (1.0 + 2.0 * (-2.0f32).exp()).ln(); // −log softmax at the target
//! assert!((loss - expected).abs() < 1e-6);
//! let d = logits.cross_entropy_backward(&targets, None, 1.0)?; // (softmax − onehot) / 2
//! assert!(d.to_vec::<f32>()?[0] < 0.0 && d.to_vec::<f32>()?[1] > 0.0);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::{DType, Error, Result, Tensor};
use rayon::prelude::*;
use shears_kernels::fused;
use std::borrow::Cow;

/// `(N, C, targets)` after checking logits `(N, C)` f32/f64 against targets `(N)` of an integer
/// dtype, each target in `0..C` or equal to `ignore`.
fn check<'a>(
    op: &'static str,
    logits: &Tensor,
    targets: &'a Tensor,
    ignore: Option<i64>,
) -> Result<(usize, usize, Cow<'a, [i64]>)> {
    if logits.rank() != 2 || targets.rank() != 1 || targets.dims()[0] != logits.dims()[0] {
        return Err(Error::shape_msg(
            op,
            logits.shape(),
            targets.shape(),
            "expected logits (N, C) and targets (N)",
        ));
    }
    if !matches!(logits.dtype(), DType::F32 | DType::F64) {
        return Err(Error::UnsupportedDType {
            op,
            dtype: logits.dtype(),
            expected: "f32 or f64 logits",
        });
    }
    let (n, c) = (logits.dims()[0], logits.dims()[1]);
    let t = targets.index_values(op)?;
    if let Some((i, &bad)) = t
        .iter()
        .enumerate()
        .find(|(_, &x)| Some(x) != ignore && !(0..c as i64).contains(&x))
    {
        return Err(Error::invalid(
            op,
            format!("target {bad} of row {i} is not a class id in 0..{c}"),
        ));
    }
    Ok((n, c, t))
}

/// `ln Σ exp(row)` in f64 (NaN if the row holds NaN; `-inf` for a row of `-inf`).
fn lse_f32(row: &[f32], scratch: &mut [f32], e: &mut [f32]) -> f64 {
    let m = row.iter().copied().fold(
        f32::NEG_INFINITY,
        |m, v| if v > m || v.is_nan() { v } else { m },
    );
    if !m.is_finite() {
        return if row.iter().any(|v| v.is_nan()) {
            f64::NAN
        } else {
            m as f64
        };
    }
    for (s, &v) in scratch.iter_mut().zip(row) {
        *s = v - m;
    }
    fused::exp(scratch, e);
    let sum: f64 = e
        .chunks(16)
        .map(|c| c.iter().map(|&x| x as f64).sum::<f64>())
        .sum();
    m as f64 + sum.ln()
}

fn lse_f64(row: &[f64]) -> f64 {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if row.iter().any(|v| v.is_nan()) {
        f64::NAN
    } else if !m.is_finite() {
        m
    } else {
        m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
    }
}

/// Rows per parallel task.
fn rows_per_task(n: usize) -> usize {
    n.div_ceil(4 * rayon::current_num_threads().max(1)).max(1)
}

impl Tensor {
    /// Mean cross-entropy of `self = logits: (N, C)` (f32 or f64) against class ids `targets:
    /// (N)` (i64, u32 or u8): `−(1/|V|) Σ_{n∈V} log_softmax(logits_n)[targets_n]` over the rows
    /// `V` whose target is not `ignore_index` (0 when every row is ignored) → a scalar of the
    /// logits' dtype. Each row's log-sum-exp is summed in f64. A target outside `0..C` (other
    /// than `ignore_index`) is an error.
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: Option<i64>) -> Result<Tensor> {
        let (n, c, t) = check("cross_entropy", self, targets, ignore_index)?;
        let per = rows_per_task(n);
        let nll: Vec<f64> = match self.dtype() {
            DType::F32 => {
                let x = self.values::<f32>();
                (0..n.div_ceil(per))
                    .into_par_iter()
                    .map(|task| {
                        let (mut s, mut e) = (vec![0f32; c], vec![0f32; c]);
                        let rows = task * per..((task + 1) * per).min(n);
                        rows.map(|r| match t[r] {
                            k if Some(k) == ignore_index => 0.0,
                            k => {
                                let row = &x[r * c..(r + 1) * c];
                                lse_f32(row, &mut s, &mut e) - row[k as usize] as f64
                            }
                        })
                        .sum::<f64>()
                    })
                    .collect()
            }
            _ => {
                let x = self.values::<f64>();
                (0..n)
                    .into_par_iter()
                    .map(|r| match t[r] {
                        k if Some(k) == ignore_index => 0.0,
                        k => {
                            let row = &x[r * c..(r + 1) * c];
                            lse_f64(row) - row[k as usize]
                        }
                    })
                    .collect()
            }
        };
        let count = t.iter().filter(|&&k| Some(k) != ignore_index).count();
        let loss = nll.iter().sum::<f64>() / count.max(1) as f64;
        Tensor::from_vec(vec![loss], ())?.to_dtype(self.dtype())
    }

    /// The gradient of [`cross_entropy`](Self::cross_entropy) scaled by the upstream gradient
    /// `g` of the loss: `(N, C)`, row `n` equal to `g/|V| · (softmax(logits_n) − onehot(t_n))`,
    /// zero for ignored rows.
    pub fn cross_entropy_backward(
        &self,
        targets: &Tensor,
        ignore_index: Option<i64>,
        g: f64,
    ) -> Result<Tensor> {
        let (n, c, t) = check("cross_entropy_backward", self, targets, ignore_index)?;
        let count = t.iter().filter(|&&k| Some(k) != ignore_index).count();
        let scale = g / count.max(1) as f64;
        let per = rows_per_task(n);
        match self.dtype() {
            DType::F32 => {
                let x = self.values::<f32>();
                let mut d = vec![0f32; n * c];
                d.par_chunks_mut((per * c).max(1))
                    .enumerate()
                    .for_each(|(task, out)| {
                        let (mut s, mut e) = (vec![0f32; c], vec![0f32; c]);
                        for (i, o) in out.chunks_mut(c.max(1)).enumerate() {
                            let r = task * per + i;
                            let k = t[r];
                            if Some(k) == ignore_index {
                                continue;
                            }
                            let row = &x[r * c..(r + 1) * c];
                            let lse = lse_f32(row, &mut s, &mut e) as f32;
                            for (sj, &v) in s.iter_mut().zip(row) {
                                *sj = v - lse;
                            }
                            fused::exp(&s, o);
                            let sc = scale as f32;
                            o.iter_mut().for_each(|p| *p *= sc);
                            o[k as usize] -= sc;
                        }
                    });
                Tensor::from_vec(d, [n, c])
            }
            _ => {
                let x = self.values::<f64>();
                let mut d = vec![0f64; n * c];
                d.par_chunks_mut(c.max(1)).enumerate().for_each(|(r, o)| {
                    let k = t[r];
                    if Some(k) == ignore_index {
                        return;
                    }
                    let row = &x[r * c..(r + 1) * c];
                    let lse = lse_f64(row);
                    for (oj, &v) in o.iter_mut().zip(row) {
                        *oj = (v - lse).exp() * scale;
                    }
                    o[k as usize] -= scale;
                });
                Tensor::from_vec(d, [n, c])
            }
        }
    }
}
