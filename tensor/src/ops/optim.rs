//! Fused optimizer updates: one pass over a parameter, its gradient and its state instead of a
//! dozen elementwise ops (each a full pass and a fresh buffer), with the same arithmetic in the
//! same order as their composition, so the results are bit-identical to it.
//!
//! ```
//! use shears_tensor::{AdamWStep, DType, Tensor};
//! let w = Tensor::from_vec(vec![1.0f32, -2.0], [2])?;
//! let g = Tensor::from_vec(vec![0.5f32, 0.25], [2])?;
//! let (m, v) = (w.zeros_like()?, w.zeros_like()?);
//! let hp = AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 1 };
//! let (w1, _, _) = w.adamw_step(&g, &m, &v, &hp)?;
//! // The first Adam step moves each weight by lr against the sign of its gradient.
//! let w1 = w1.to_vec::<f32>()?;
//! assert!((w1[0] - 0.9).abs() < 1e-6 && (w1[1] + 2.1).abs() < 1e-6);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::{DType, Error, Result, Tensor};
use num_traits::Float;
use rayon::prelude::*;

/// The hyper-parameters of one AdamW step (Loshchilov & Hutter 2019, Algorithm 2, in PyTorch's
/// order): `step` counts from 1 and sets the bias corrections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// The step number, from 1.
    pub step: u64,
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

impl Tensor {
    /// One AdamW step on `self` (the parameter) with gradient `g` and moments `m`, `v` (all the
    /// same shape and dtype, f32 or f64) → `(w', m', v')`:
    /// `w₁ = w·(1 − lr·wd)`, `m' = β₁m + (1 − β₁)g`, `v' = β₂v + (1 − β₂)g²`,
    /// `w' = w₁ − (m' / (√v' / √bc₂ + ε))·(lr / bc₁)` with `bcᵢ = 1 − βᵢ^step`, every scalar
    /// rounded to the dtype first, exactly as the composition of the elementwise ops computes it.
    pub fn adamw_step(
        &self,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
        hp: &AdamWStep,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "adamw_step";
        for t in [g, m, v] {
            if t.dims() != self.dims() {
                return Err(Error::shape(OP, t.shape(), self.shape()));
            }
            if t.dtype() != self.dtype() {
                return Err(Error::DTypeMismatch {
                    op: OP,
                    lhs: self.dtype(),
                    rhs: t.dtype(),
                });
            }
        }
        match self.dtype() {
            DType::F32 => adamw::<f32>(self, g, m, v, hp),
            DType::F64 => adamw::<f64>(self, g, m, v, hp),
            dtype => Err(Error::UnsupportedDType {
                op: OP,
                dtype,
                expected: "f32 or f64",
            }),
        }
    }
}

fn adamw<T: Float + crate::WithDType>(
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    hp: &AdamWStep,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = |x: f64| <T as crate::WithDType>::from_f64(x);
    let bc1 = 1.0 - hp.beta1.powi(hp.step as i32);
    let bc2 = 1.0 - hp.beta2.powi(hp.step as i32);
    let decay = (hp.weight_decay != 0.0).then(|| c(1.0 - hp.lr * hp.weight_decay));
    let (b1, nb1, b2, nb2) = (
        c(hp.beta1),
        c(1.0 - hp.beta1),
        c(hp.beta2),
        c(1.0 - hp.beta2),
    );
    let (sbc2, eps, scale) = (c(bc2.sqrt()), c(hp.eps), c(hp.lr / bc1));
    let (wv, gv, mv, vv) = (
        w.values::<T>(),
        g.values::<T>(),
        m.values::<T>(),
        v.values::<T>(),
    );
    let n = wv.len();
    let (mut w2, mut m2, mut v2) = (vec![T::zero(); n], vec![T::zero(); n], vec![T::zero(); n]);
    w2.par_chunks_mut(CHUNK)
        .zip(m2.par_chunks_mut(CHUNK))
        .zip(v2.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(ci, ((wo, mo), vo))| {
            let o = ci * CHUNK;
            for i in 0..wo.len() {
                let (wi, gi) = (wv[o + i], gv[o + i]);
                let w1 = match decay {
                    Some(d) => wi * d,
                    None => wi,
                };
                let m1 = mv[o + i] * b1 + gi * nb1;
                let v1 = vv[o + i] * b2 + gi * gi * nb2;
                let denom = v1.sqrt() / sbc2 + eps;
                wo[i] = w1 - m1 / denom * scale;
                mo[i] = m1;
                vo[i] = v1;
            }
        });
    Ok((
        Tensor::from_vec(w2, w.dims())?,
        Tensor::from_vec(m2, w.dims())?,
        Tensor::from_vec(v2, w.dims())?,
    ))
}
