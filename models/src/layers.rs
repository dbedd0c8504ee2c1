//! The building blocks of a LLaMA decoder: [`Linear`], [`Embedding`], [`RmsNorm`] and [`Rotary`].
//! Inference runs on plain `f32` activation buffers handed straight to the SIMD kernels, so a
//! decode step pays no tensor bookkeeping; the weights are [`Tensor`]s (f32, bf16 or f16, possibly
//! borrowing a memory-mapped checkpoint).
//!
//! ```
//! use shears_models::layers::Linear;
//! use shears_tensor::{DType, Tensor};
//! let w = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], [2, 3])?; // [out = 2, in = 3]
//! let lin = Linear::new(w.to_dtype(DType::BF16)?)?;
//! let x = Tensor::from_vec(vec![1f32, 0., -1.], [1, 3])?;
//! assert_eq!(lin.forward(&x)?.to_vec::<f32>()?, vec![-2., -2.]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use half::{bf16, f16};
use shears_kernels::fused::{self, RopeLayout};
use shears_kernels::gemv;
use shears_tensor::sparse::SparseTensor;
use shears_tensor::{DType, Error, Result, Tensor};
use std::borrow::Cow;

/// The weight of a [`Linear`] layer, `[out_features, in_features]` as checkpoints store it.
/// Quantized formats join this enum in later work; callers go through [`Linear`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Weight {
    /// A dense, contiguous f32, bf16 or f16 matrix.
    Dense(Tensor),
    /// A sparse matrix (bitmask, N:M or CSR) with f32, bf16 or f16 values: the forward pass
    /// reads only the kept weights, through the sparse kernels.
    Sparse(SparseTensor),
}

/// `y = x · Wᵀ` (no bias: LLaMA's projections have none).
#[derive(Debug, Clone)]
pub struct Linear {
    /// The weight, `[out_features, in_features]`.
    pub weight: Weight,
}

/// `y[m, rows.len()] = x[m, k] · w[rows]ᵀ` for a dense `[n, k]` weight, at its storage dtype.
fn dense_nt(w: &Tensor, x: &[f32], m: usize, rows: std::ops::Range<usize>, y: &mut [f32]) {
    let k = w.dims()[1];
    let (nb, r) = (rows.len(), rows.start * k..rows.end * k);
    match w.dtype() {
        DType::F32 => gemv::matmul_nt(m, nb, k, x, &slice::<f32>(w)[r], y),
        DType::BF16 => gemv::matmul_nt(m, nb, k, x, &slice::<bf16>(w)[r], y),
        DType::F16 => gemv::matmul_nt(m, nb, k, x, &slice::<f16>(w)[r], y),
        other => unreachable!("Linear holds a {other:?} weight (checked at construction)"),
    }
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
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::UnsupportedDType {
            op,
            dtype,
            expected: "f32, bf16 or f16 weights",
        });
    }
    Ok(())
}

impl Linear {
    /// A dense layer from a `[out, in]` weight of dtype f32, bf16 or f16 (made contiguous).
    pub fn new(weight: Tensor) -> Result<Linear> {
        check_float_matrix("Linear::new", &weight)?;
        Ok(Linear {
            weight: Weight::Dense(weight.contiguous()?),
        })
    }
    /// A sparse layer from a `[out, in]` sparse weight with f32, bf16 or f16 values.
    pub fn new_sparse(weight: SparseTensor) -> Result<Linear> {
        check_float("Linear::new_sparse", weight.dtype())?;
        Ok(Linear {
            weight: Weight::Sparse(weight),
        })
    }
    /// The weight as a dense tensor `[out, in]` (a sparse weight is expanded, pruned entries
    /// +0.0).
    pub fn weight_tensor(&self) -> Cow<'_, Tensor> {
        match &self.weight {
            Weight::Dense(t) => Cow::Borrowed(t),
            Weight::Sparse(s) => Cow::Owned(
                s.to_dense()
                    .expect("a validated sparse weight expands to a dense one"),
            ),
        }
    }
    /// The sparse weight, if the layer holds one.
    pub fn sparse(&self) -> Option<&SparseTensor> {
        match &self.weight {
            Weight::Dense(_) => None,
            Weight::Sparse(s) => Some(s),
        }
    }
    /// `[out_features, in_features]`.
    pub fn shape(&self) -> [usize; 2] {
        match &self.weight {
            Weight::Dense(t) => [t.dims()[0], t.dims()[1]],
            Weight::Sparse(s) => s.shape(),
        }
    }
    /// The storage dtype of the weight (of the kept values when sparse).
    pub fn dtype(&self) -> DType {
        match &self.weight {
            Weight::Dense(t) => t.dtype(),
            Weight::Sparse(s) => s.dtype(),
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
            Weight::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Weight::Sparse(s) => s.weight_bytes(),
        }
    }
    /// `y[m, out] = x[m, in] · Wᵀ` on plain buffers. Panics on wrong lengths (callers check).
    pub fn forward_slice(&self, x: &[f32], m: usize, y: &mut [f32]) {
        match &self.weight {
            Weight::Dense(w) => dense_nt(w, x, m, 0..self.out_features(), y),
            Weight::Sparse(s) => s.matmul_nt_slice(x, m, y),
        }
    }
    /// Output features `outs` only: `y[m, outs.len()] = x[m, in] · W[outs]ᵀ` (the logits of one
    /// vocabulary block). A dense weight multiplies its rows `outs` in place; a sparse one
    /// computes every output and keeps `outs`. Panics on wrong lengths or a range past
    /// `out_features`.
    pub fn forward_outputs_slice(
        &self,
        x: &[f32],
        m: usize,
        outs: std::ops::Range<usize>,
        y: &mut [f32],
    ) {
        let n = self.out_features();
        assert!(
            outs.start <= outs.end && outs.end <= n,
            "Linear: outputs {outs:?} of {n}"
        );
        match &self.weight {
            Weight::Dense(w) => dense_nt(w, x, m, outs, y),
            Weight::Sparse(s) => {
                let mut all = vec![0f32; m * n];
                s.matmul_nt_slice(x, m, &mut all);
                for (dst, src) in y.chunks_mut(outs.len().max(1)).zip(all.chunks(n)) {
                    dst.copy_from_slice(&src[outs.clone()]);
                }
            }
        }
    }
    /// Several layers with the same input, `ys[i][m, outᵢ] = x[m, in] · Wᵢᵀ`, as one parallel
    /// region when their weights are dense and share a dtype (Q/K/V, gate/up). Panics on wrong
    /// lengths.
    pub fn forward_many(layers: &[&Linear], x: &[f32], m: usize, ys: &mut [&mut [f32]]) {
        assert_eq!(layers.len(), ys.len(), "Linear::forward_many: outputs");
        let Some(first) = layers.first() else { return };
        let k = first.in_features();
        let dt = first.dtype();
        let dense: Option<Vec<&Tensor>> = layers
            .iter()
            .map(|l| match &l.weight {
                Weight::Dense(t) if l.in_features() == k && t.dtype() == dt => Some(t),
                _ => None,
            })
            .collect();
        let Some(dense) = dense else {
            // Sparse (or mixed) layers: one scope, so the threads balance over every layer's row
            // tasks instead of meeting at a join after each layer.
            rayon::scope(|s| {
                for (l, y) in layers.iter().zip(ys.iter_mut()) {
                    s.spawn(move |_| l.forward_slice(x, m, y));
                }
            });
            return;
        };
        let ns: Vec<usize> = layers.iter().map(|l| l.out_features()).collect();
        fn many<W: gemv::WeightElem + shears_tensor::WithDType>(
            ws: &[&Tensor],
            m: usize,
            k: usize,
            x: &[f32],
            ns: &[usize],
            ys: &mut [&mut [f32]],
        ) {
            let ws: Vec<&[W]> = ws.iter().map(|w| slice::<W>(w)).collect();
            gemv::matmul_nt_many(m, k, x, &ws, ns, ys);
        }
        match dt {
            DType::F32 => many::<f32>(&dense, m, k, x, &ns, ys),
            DType::BF16 => many::<bf16>(&dense, m, k, x, &ns, ys),
            DType::F16 => many::<f16>(&dense, m, k, x, &ns, ys),
            other => unreachable!("Linear holds a {other:?} weight (checked at construction)"),
        }
    }
    /// `x: (..., in)` f32 → `(..., out)` f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.in_features();
        if x.rank() == 0 || *x.dims().last().unwrap() != k || x.dtype() != DType::F32 {
            return Err(Error::invalid(
                "Linear::forward",
                format!(
                    "expected f32 input (..., {k}), got {:?} {}",
                    x.dtype(),
                    x.shape()
                ),
            ));
        }
        let x = x.contiguous()?;
        let m = x.elem_count() / k.max(1);
        let mut y = vec![0f32; m * self.out_features()];
        self.forward_slice(x.as_slice::<f32>()?, m, &mut y);
        let mut dims = x.dims().to_vec();
        *dims.last_mut().unwrap() = self.out_features();
        Tensor::from_vec(y, dims)
    }
}

/// A contiguous tensor's elements; the dtype was checked by the caller.
fn slice<T: shears_tensor::WithDType>(t: &Tensor) -> &[T] {
    t.as_slice::<T>()
        .expect("layer weights are contiguous and of the checked dtype")
}

/// A token embedding table `[vocab, hidden]` (f32, bf16 or f16).
#[derive(Debug, Clone)]
pub struct Embedding {
    /// The table, `[vocab, hidden]`.
    pub weight: Tensor,
}

impl Embedding {
    /// Wraps a `[vocab, hidden]` table (made contiguous).
    pub fn new(weight: Tensor) -> Result<Embedding> {
        check_float_matrix("Embedding::new", &weight)?;
        Ok(Embedding {
            weight: weight.contiguous()?,
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
    /// Writes the rows of `ids` into `out: [ids.len(), hidden]`; an id ≥ vocab is an error.
    pub fn forward_slice(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        let (v, d) = (self.vocab_size(), self.hidden_size());
        assert_eq!(out.len(), ids.len() * d, "Embedding: out length");
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
            return Err(Error::IndexOutOfRange {
                op: "embedding",
                index: bad as i64,
                dim: 0,
                size: v,
            });
        }
        for (&id, row) in ids.iter().zip(out.chunks_mut(d.max(1))) {
            let r = id as usize * d..(id as usize + 1) * d;
            match self.weight.dtype() {
                DType::F32 => row.copy_from_slice(&slice::<f32>(&self.weight)[r]),
                DType::BF16 => fused::bf16_to_f32(&slice::<bf16>(&self.weight)[r], row),
                DType::F16 => fused::f16_to_f32(&slice::<f16>(&self.weight)[r], row),
                other => unreachable!("Embedding holds a {other:?} table (checked)"),
            }
        }
        Ok(())
    }
}

/// RMSNorm with a learned gain (kept in f32 whatever the checkpoint's dtype).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// The gain, `[hidden]`, f32.
    pub weight: Tensor,
    /// Added to the mean square before the square root.
    pub eps: f32,
}

impl RmsNorm {
    /// From a `[hidden]` gain of any float dtype.
    pub fn new(weight: Tensor, eps: f64) -> Result<RmsNorm> {
        if weight.rank() != 1 {
            return Err(Error::invalid(
                "RmsNorm::new",
                format!("expected a rank-1 gain, got shape {}", weight.shape()),
            ));
        }
        Ok(RmsNorm {
            weight: weight.to_dtype(DType::F32)?.contiguous()?,
            eps: eps as f32,
        })
    }
    /// `out = x / sqrt(mean(x²) + eps) · g` per row of `x: [rows, hidden]`.
    pub fn forward_slice(&self, x: &[f32], out: &mut [f32]) {
        fused::rms_norm(x, slice::<f32>(&self.weight), self.eps, out)
    }
}

/// Rotary position embedding tables and the pair layout of the checkpoint's Q/K rows.
#[derive(Debug, Clone)]
pub struct Rotary {
    /// `cos(p·θᵢ)`, `[max_pos, head_dim/2]`.
    cos: Vec<f32>,
    /// `sin(p·θᵢ)`, `[max_pos, head_dim/2]`.
    sin: Vec<f32>,
    /// Width of one head.
    pub head_dim: usize,
    /// Positions the tables cover.
    pub max_pos: usize,
    /// Which dims form the rotated pairs: HF checkpoints use half-split, GGUF files interleaved.
    pub layout: RopeLayout,
}

impl Rotary {
    /// Tables for `max_pos` positions with base `theta`.
    pub fn new(head_dim: usize, max_pos: usize, theta: f64, layout: RopeLayout) -> Rotary {
        let (cos, sin) = fused::rope_tables(head_dim, max_pos, theta as f32);
        Rotary {
            cos,
            sin,
            head_dim,
            max_pos,
            layout,
        }
    }
    /// Rotates `x: [positions.len(), heads, head_dim]` in place.
    pub fn apply(&self, x: &mut [f32], heads: usize, positions: &[usize]) {
        fused::rope(
            x,
            heads,
            self.head_dim,
            positions,
            &self.cos,
            &self.sin,
            self.layout,
        )
    }
}
