//! The building blocks of a LLaMA decoder: [`Linear`], [`Embedding`] and [`RmsNorm`], written on
//! [`Var`] so that one forward pass serves inference (constants: no graph is recorded), pruning
//! calibration and training (parameters: gradients flow to them). Weights are f32, bf16 or f16
//! tensors, possibly borrowing a memory-mapped checkpoint; a linear layer's weight may also be
//! sparse (the forward pass reads only the kept weights) or dense under a fixed mask (a pruned
//! weight trained densely).
//!
//! ```
//! use shears_autograd::Var;
//! use shears_models::layers::Linear;
//! use shears_tensor::{DType, Tensor};
//! let w = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], [2, 3])?; // [out = 2, in = 3]
//! let lin = Linear::new(w.to_dtype(DType::BF16)?)?;
//! let x = Var::constant(Tensor::from_vec(vec![1f32, 0., -1.], [1, 3])?);
//! assert_eq!(lin.forward(&x)?.tensor().to_vec::<f32>()?, vec![-2., -2.]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use shears_autograd::{is_grad_enabled, Var};
use shears_tensor::sparse::SparseTensor;
use shears_tensor::{DType, Error, Result, Tensor};
use std::borrow::Cow;

/// The weight of a [`Linear`] layer, `[out_features, in_features]` as checkpoints store it.
/// Quantized formats join this enum in later work; callers go through [`Linear`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Weight {
    /// A dense, contiguous f32, bf16 or f16 matrix (a constant, or a parameter when trained).
    Dense(Var),
    /// A dense matrix trained under a fixed mask (u8 `[out, in]`, 0 = pruned): the pruned entries
    /// are 0 in the weight and receive a zero gradient, so they stay 0.
    Masked {
        /// The weight, 0 at the pruned entries.
        weight: Var,
        /// 1 where a weight is kept, 0 where pruned.
        mask: Tensor,
    },
    /// A sparse matrix (bitmask, N:M or CSR) with f32, bf16 or f16 values: the forward pass reads
    /// only the kept weights through the sparse kernels. `values` are its kept values as a
    /// [`Var`] (a parameter when they are trained: the structure never changes, so a pruned
    /// weight cannot come back).
    Sparse {
        /// The structure and the values the inference kernels read.
        weight: SparseTensor,
        /// The kept values `[nnz]`, as the structure's own values unless trained.
        values: Var,
    },
}

/// `y = x · Wᵀ` (no bias: LLaMA's projections have none).
#[derive(Debug, Clone)]
pub struct Linear {
    /// The weight, `[out_features, in_features]`.
    pub weight: Weight,
}

fn check_float_matrix(op: &'static str, w: &Tensor) -> Result<()> {
    if w.rank() != 2 {
        return Err(Error::invalid(
            op,
            format!("expected a rank-2 weight, got shape {}", w.shape()),
        ));
    }
    check_float(op, w.dtype())
}

fn check_float(op: &'static str, dtype: DType) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16 | DType::F64) {
        return Err(Error::UnsupportedDType {
            op,
            dtype,
            expected: "f32, bf16, f16 (or f64, for gradient checks) weights",
        });
    }
    Ok(())
}

impl Linear {
    /// A dense layer from a `[out, in]` weight of dtype f32, bf16, f16 or f64 (made contiguous).
    pub fn new(weight: Tensor) -> Result<Linear> {
        Self::from_var(Var::constant(weight))
    }
    /// A dense layer whose weight is `weight` (a constant or a parameter; a tied output head
    /// shares the embedding's).
    pub fn from_var(weight: Var) -> Result<Linear> {
        check_float_matrix("Linear::new", weight.tensor())?;
        let weight = if weight.tensor().is_contiguous() {
            weight
        } else {
            Var::constant(weight.tensor().contiguous()?)
        };
        Ok(Linear {
            weight: Weight::Dense(weight),
        })
    }
    /// A sparse layer from a `[out, in]` sparse weight with f32, bf16 or f16 values.
    pub fn new_sparse(weight: SparseTensor) -> Result<Linear> {
        check_float("Linear::new_sparse", weight.dtype())?;
        let values = Var::constant(weight.values().clone());
        Ok(Linear {
            weight: Weight::Sparse { weight, values },
        })
    }
    /// A dense layer trained under `mask` (`[out, in]`, any dtype, non-zero = kept): pruned
    /// entries of `weight` are set to 0 and get no gradient.
    pub fn masked(weight: Var, mask: &Tensor) -> Result<Linear> {
        check_float_matrix("Linear::masked", weight.tensor())?;
        if mask.dims() != weight.dims() {
            return Err(Error::shape_msg(
                "Linear::masked",
                mask.shape(),
                weight.shape(),
                "the mask must have the weight's shape",
            ));
        }
        let mask = mask.ne_zero()?;
        let w = weight.tensor();
        let zeroed = mask.where_cond(w, &w.zeros_like()?)?;
        let weight = if weight.requires_grad() {
            Var::param(zeroed)
        } else {
            Var::constant(zeroed)
        };
        Ok(Linear {
            weight: Weight::Masked { weight, mask },
        })
    }
    /// The weight as a dense tensor `[out, in]` (a sparse weight is expanded, pruned entries
    /// +0.0).
    pub fn weight_tensor(&self) -> Cow<'_, Tensor> {
        match &self.weight {
            Weight::Dense(w) | Weight::Masked { weight: w, .. } => Cow::Borrowed(w.tensor()),
            Weight::Sparse { weight, .. } => Cow::Owned(
                weight
                    .to_dense()
                    .expect("a validated sparse weight expands to a dense one"),
            ),
        }
    }
    /// The sparse weight, if the layer holds one.
    pub fn sparse(&self) -> Option<&SparseTensor> {
        match &self.weight {
            Weight::Sparse { weight, .. } => Some(weight),
            _ => None,
        }
    }
    /// The trainable tensor of the layer: the dense weight `[out, in]`, or the kept values
    /// `[nnz]` of a sparse one.
    pub fn var(&self) -> &Var {
        match &self.weight {
            Weight::Dense(w) | Weight::Masked { weight: w, .. } => w,
            Weight::Sparse { values, .. } => values,
        }
    }
    /// The 0/1 mask of a masked weight (u8 `[out, in]`), if any.
    pub fn mask(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Masked { mask, .. } => Some(mask),
            _ => None,
        }
    }
    /// Replaces the trainable tensor (see [`var`](Self::var)) with `v` of the same shape, e.g.
    /// an optimizer's new parameter. A sparse layer's inference values follow.
    pub fn set_var(&mut self, v: Var) -> Result<()> {
        if v.dims() != self.var().dims() {
            return Err(Error::shape_msg(
                "Linear::set_var",
                v.shape(),
                self.var().shape(),
                "the new value must have the old one's shape",
            ));
        }
        match &mut self.weight {
            Weight::Dense(w) | Weight::Masked { weight: w, .. } => *w = v,
            Weight::Sparse { weight, values } => {
                let vals = v.tensor().to_dtype(weight.dtype())?;
                *weight = weight.with_values(vals)?;
                *values = v;
            }
        }
        Ok(())
    }
    /// `[out_features, in_features]`.
    pub fn shape(&self) -> [usize; 2] {
        match &self.weight {
            Weight::Dense(w) | Weight::Masked { weight: w, .. } => [w.dims()[0], w.dims()[1]],
            Weight::Sparse { weight, .. } => weight.shape(),
        }
    }
    /// The storage dtype of the weight (of the kept values when sparse).
    pub fn dtype(&self) -> DType {
        match &self.weight {
            Weight::Dense(w) | Weight::Masked { weight: w, .. } => w.dtype(),
            Weight::Sparse { weight, .. } => weight.dtype(),
        }
    }
    /// Output width.
    pub fn out_features(&self) -> usize {
        self.shape()[0]
    }
    /// Input width.
    pub fn in_features(&self) -> usize {
        self.shape()[1]
    }
    /// Bytes of weight read by one forward pass (values, masks and offsets when sparse).
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            Weight::Dense(w) | Weight::Masked { weight: w, .. } => {
                w.elem_count() * w.dtype().size_in_bytes()
            }
            Weight::Sparse { weight, .. } => weight.weight_bytes(),
        }
    }
    /// `x: (.., in)` → `(.., out)`, `y = x · Wᵀ`. Gradients reach `x` and the weight when they
    /// require them.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        match &self.weight {
            Weight::Dense(w) => x.matmul_nt(w),
            Weight::Masked { weight, mask } => x.matmul_nt_masked(weight, mask),
            Weight::Sparse { weight, values } => {
                if is_grad_enabled() && (x.requires_grad() || values.requires_grad()) {
                    x.sparse_linear(values, weight)
                } else {
                    Ok(Var::constant(weight.matmul_nt(x.tensor())?))
                }
            }
        }
    }
    /// Several layers with the same input, `x · Wᵢᵀ` each: one parallel region for the decode
    /// shapes when their weights are dense and share a dtype (Q/K/V, gate/up), one sparse scope
    /// when they are sparse.
    pub fn forward_many(layers: &[&Linear], x: &Var) -> Result<Vec<Var>> {
        let dense: Option<Vec<&Var>> = layers
            .iter()
            .map(|l| match &l.weight {
                Weight::Dense(w) => Some(w),
                _ => None,
            })
            .collect();
        if let Some(ws) = dense {
            return x.matmul_nt_many(&ws);
        }
        let recording = is_grad_enabled()
            && (x.requires_grad() || layers.iter().any(|l| l.var().requires_grad()));
        let sparse: Option<Vec<&SparseTensor>> = layers.iter().map(|l| l.sparse()).collect();
        match sparse {
            Some(ws) if !recording => {
                let outs = SparseTensor::matmul_nt_many(&ws, x.tensor())?;
                Ok(outs.into_iter().map(Var::constant).collect())
            }
            _ => layers.iter().map(|l| l.forward(x)).collect(),
        }
    }
    /// Output features `outs` only, inference: `x: (.., in)` → `(.., outs.len())` (the logits of
    /// one vocabulary block). A dense weight multiplies its rows `outs` in place; a sparse one
    /// computes every output and keeps `outs`.
    pub fn forward_rows(&self, x: &Tensor, outs: std::ops::Range<usize>) -> Result<Tensor> {
        match &self.weight {
            Weight::Dense(w) | Weight::Masked { weight: w, .. } => {
                x.matmul_nt_rows(w.tensor(), outs)
            }
            Weight::Sparse { weight, .. } => {
                let n = weight.shape()[0];
                if outs.start > outs.end || outs.end > n {
                    return Err(Error::invalid(
                        "Linear::forward_rows",
                        format!("outputs {outs:?} of {n}"),
                    ));
                }
                let all = weight.matmul_nt(x)?;
                all.narrow(-1, outs.start, outs.len())?.contiguous()
            }
        }
    }
}

/// A token embedding table `[vocab, hidden]` (f32, bf16 or f16; f64 for gradient checks).
#[derive(Debug, Clone)]
pub struct Embedding {
    /// The table, `[vocab, hidden]`.
    pub weight: Var,
}

impl Embedding {
    /// Wraps a `[vocab, hidden]` table (made contiguous) as a constant.
    pub fn new(weight: Tensor) -> Result<Embedding> {
        check_float_matrix("Embedding::new", &weight)?;
        Ok(Embedding {
            weight: Var::constant(weight.contiguous()?),
        })
    }
    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.weight.dims()[0]
    }
    /// Row width.
    pub fn hidden_size(&self) -> usize {
        self.weight.dims()[1]
    }
    /// `ids: (..)` u32 token ids → `(.., hidden)` in `dtype` (f32 for a half-precision table);
    /// an id ≥ vocab is an error.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Var> {
        self.weight.embedding(ids)?.to_dtype(dtype)
    }
}

/// RMSNorm with a learned gain (kept in f32 whatever the checkpoint's dtype; f64 for gradient
/// checks).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// The gain, `[hidden]`.
    pub weight: Var,
    /// Added to the mean square before the square root.
    pub eps: f64,
}

impl RmsNorm {
    /// From a `[hidden]` gain of any float dtype (stored f32, or f64 when given f64).
    pub fn new(weight: Tensor, eps: f64) -> Result<RmsNorm> {
        if weight.rank() != 1 {
            return Err(Error::invalid(
                "RmsNorm::new",
                format!("expected a rank-1 gain, got shape {}", weight.shape()),
            ));
        }
        let dt = if weight.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        Ok(RmsNorm {
            weight: Var::constant(weight.to_dtype(dt)?.contiguous()?),
            eps,
        })
    }
    /// `x / sqrt(mean(x²) + eps) · g` over the last dim of `x: (.., hidden)`.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        x.rms_norm(&self.weight, self.eps)
    }
}
