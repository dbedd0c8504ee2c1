//! The fused transformer ops on [`Var`] (`x·Wᵀ`, RMSNorm, SiLU-gated product, rotary embedding,
//! causal attention), a dtype conversion, and activation checkpointing. Each forwards to the
//! tensor crate's fast path and records one node whose rule calls the tensor crate's backward
//! helper; `tests/gradcheck.rs` checks every rule against f64 finite differences and against the
//! composition of primitives it replaces.
//!
//! ```
//! use shears_autograd::Var;
//! use shears_tensor::{DType, Tensor};
//! let x = Var::constant(Tensor::randn([4, 8], 0.0, 1.0, DType::F32, 0)?);
//! let w = Var::param(Tensor::randn([3, 8], 0.0, 0.1, DType::F32, 1)?); // [out, in]
//! let g = Var::param(Tensor::ones([8], DType::F32)?);
//! let y = x.rms_norm(&g, 1e-5)?.matmul_nt(&w)?; // [4, 3]
//! let grads = y.sum_all()?.backward()?;
//! assert_eq!(grads.get(&w).unwrap().dims(), &[3, 8]);
//! assert_eq!(grads.get(&g).unwrap().dims(), &[8]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::backward::{Checkpointed, Op};
use crate::var::{enable_grad, Var};
use shears_tensor::{DType, Error, Result, RopeTables, Tensor};
use std::collections::HashSet;
use std::sync::Arc;

/// A function recomputed in the backward pass of [`Var::checkpoint`].
pub type CheckpointFn = Arc<dyn Fn(&[Var]) -> Result<Var> + Send + Sync>;

impl Var {
    /// `y = x · Wᵀ` with `W: [out, in]` as checkpoints store it (see [`Tensor::matmul_nt`]):
    /// `x: (.., in)` → `(.., out)`. `dx = dy · W`, `dW = dyᵀ · x` (in W's dtype).
    pub fn matmul_nt(&self, w: &Var) -> Result<Var> {
        let t = self.tensor().matmul_nt(w.tensor())?;
        Ok(Var::record(t, &[self, w], || {
            Op::MatmulNt(self.clone(), w.clone(), None)
        }))
    }

    /// [`matmul_nt`](Self::matmul_nt) for a pruned weight trained densely: `mask` (W's shape, 1
    /// where a weight is kept, 0 where pruned, any dtype) multiplies W's gradient, so a pruned
    /// entry gets exactly 0 and an optimizer step leaves it at 0. The forward uses `W` as it is
    /// (its pruned entries are already 0).
    pub fn matmul_nt_masked(&self, w: &Var, mask: &Tensor) -> Result<Var> {
        if mask.dims() != w.dims() {
            return Err(Error::shape_msg(
                "matmul_nt_masked",
                mask.shape(),
                w.shape(),
                "the mask must have the weight's shape",
            ));
        }
        let t = self.tensor().matmul_nt(w.tensor())?;
        Ok(Var::record(t, &[self, w], || {
            Op::MatmulNt(self.clone(), w.clone(), Some(mask.clone()))
        }))
    }

    /// `x · Wᵢᵀ` for several weights sharing the input (Q/K/V, gate/up): one parallel region when
    /// nothing needs a gradient (see [`Tensor::matmul_nt_many`]), else one recorded
    /// [`matmul_nt`](Self::matmul_nt) each.
    pub fn matmul_nt_many(&self, ws: &[&Var]) -> Result<Vec<Var>> {
        let recording = crate::is_grad_enabled()
            && (self.requires_grad() || ws.iter().any(|w| w.requires_grad()));
        if recording {
            return ws.iter().map(|w| self.matmul_nt(w)).collect();
        }
        let ts: Vec<&Tensor> = ws.iter().map(|w| w.tensor()).collect();
        Ok(self
            .tensor()
            .matmul_nt_many(&ts)?
            .into_iter()
            .map(Var::constant)
            .collect())
    }

    /// RMSNorm over the last dim, `x / sqrt(mean(x²) + eps) · weight` (see
    /// [`Tensor::rms_norm`]); equals `nn::rms_norm`, the composition of primitives.
    pub fn rms_norm(&self, weight: &Var, eps: f64) -> Result<Var> {
        let t = self.tensor().rms_norm(weight.tensor(), eps)?;
        Ok(Var::record(t, &[self, weight], || {
            Op::RmsNorm(self.clone(), weight.clone(), eps)
        }))
    }

    /// `silu(self) ⊙ up`, SwiGLU's gated product (see [`Tensor::silu_mul`]).
    pub fn silu_mul(&self, up: &Var) -> Result<Var> {
        let t = self.tensor().silu_mul(up.tensor())?;
        Ok(Var::record(t, &[self, up], || {
            Op::SiluMul(self.clone(), up.clone())
        }))
    }

    /// Rotary embedding of `x: (batch, seq, heads, head_dim)` at positions `offset..` (see
    /// [`Tensor::rope`]); the gradient is the inverse rotation.
    pub fn rope(&self, tables: &Arc<RopeTables>, offset: usize) -> Result<Var> {
        let t = self.tensor().rope(tables, offset)?;
        Ok(Var::record(t, &[self], || {
            Op::Rope(self.clone(), tables.clone(), offset)
        }))
    }

    /// Causal grouped-query attention of `q: (batch, seq, heads, head_dim)` over `k, v: (batch,
    /// seq, kv_heads, head_dim)` (see [`Tensor::causal_attention`]); the backward pass recomputes
    /// the probabilities.
    pub fn causal_attention(q: &Var, k: &Var, v: &Var, scale: f64) -> Result<Var> {
        let t = Tensor::causal_attention(q.tensor(), k.tensor(), v.tensor(), scale)?;
        Ok(Var::record(t, &[q, k, v], || {
            Op::CausalAttention(q.clone(), k.clone(), v.clone(), scale)
        }))
    }

    /// Attention of new positions over a KV cache (see [`Tensor::attend_cached`]): inference
    /// only, an error when a gradient would be needed (the cache is state, not a function of
    /// the inputs).
    pub fn attend_cached(
        &self,
        k: &Var,
        v: &Var,
        cache: &mut shears_tensor::kv::KvCache,
        layer: usize,
        scale: f64,
    ) -> Result<Var> {
        if crate::is_grad_enabled() && [self, k, v].iter().any(|x| x.requires_grad()) {
            return Err(Error::invalid(
                "Var::attend_cached",
                "attention over a KV cache is inference only: run without a cache (causal \
                 attention) to train, or inside no_grad",
            ));
        }
        let t = self
            .tensor()
            .attend_cached(k.tensor(), v.tensor(), cache, layer, scale)?;
        Ok(Var::constant(t))
    }

    /// Mean cross-entropy of `self = logits: (N, C)` against class ids `targets: (N)`, fused
    /// (see [`Tensor::cross_entropy`]): equal to `nn::cross_entropy`, the composition of
    /// primitives, without its `[N, C]` intermediates; the gradient `(softmax − onehot)/|V|` is
    /// one pass.
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: Option<i64>) -> Result<Var> {
        let t = self.tensor().cross_entropy(targets, ignore_index)?;
        Ok(Var::record(t, &[self], || {
            Op::CrossEntropy(self.clone(), targets.clone(), ignore_index)
        }))
    }

    /// The value in `dtype` (a float); the gradient is converted back to the input's dtype.
    pub fn to_dtype(&self, dtype: DType) -> Result<Var> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let t = self.tensor().to_dtype(dtype)?;
        Ok(Var::record(t, &[self], || Op::ToDType(self.clone())))
    }

    /// Activation checkpointing: `f(inputs)` whose intermediate values are not kept. The forward
    /// runs `f` once, keeps its output and forgets its graph; the backward pass runs `f` again on
    /// the same inputs with recording on and differentiates that. Parameters that `f` reaches
    /// (its captured weights) receive their gradients as if `f` had been recorded directly.
    /// `f` must be deterministic.
    pub fn checkpoint(
        inputs: &[&Var],
        f: impl Fn(&[Var]) -> Result<Var> + Send + Sync + 'static,
    ) -> Result<Var> {
        let f: CheckpointFn = Arc::new(f);
        if !crate::is_grad_enabled() {
            let xs: Vec<Var> = inputs.iter().map(|&x| x.clone()).collect();
            return f(&xs);
        }
        // Run once with recording on to learn which parameters `f` reaches, then drop the graph.
        let xs = fresh_leaves(inputs);
        let y = f(&xs)?;
        let own: HashSet<_> = xs.iter().filter_map(Var::id).collect();
        let params: Vec<Var> = y
            .leaves()
            .into_iter()
            .filter(|p| p.id().is_some_and(|id| !own.contains(&id)))
            .collect();
        let out = y.tensor().clone();
        drop(y);
        let record_params = params.clone();
        let all: Vec<&Var> = inputs.iter().copied().chain(params.iter()).collect();
        Ok(Var::record(out, &all, || {
            Op::Checkpoint(Box::new(Checkpointed {
                inputs: inputs.iter().map(|&x| x.clone()).collect(),
                params: record_params,
                f,
            }))
        }))
    }
}

/// Leaves standing in for `inputs` in a checkpointed function: a fresh parameter for each input
/// that needs a gradient (so the recomputation yields one for it), a constant for the others.
pub(crate) fn fresh_leaves(inputs: &[&Var]) -> Vec<Var> {
    inputs
        .iter()
        .map(|x| {
            if x.requires_grad() {
                Var::param(x.tensor().clone())
            } else {
                x.detach()
            }
        })
        .collect()
}

/// The backward rule of a checkpointed function: recompute, differentiate, hand the gradients to
/// the inputs and to the parameters inside.
pub(crate) fn checkpoint_backward(
    c: &Checkpointed,
    g: Tensor,
    acc: &mut dyn FnMut(&Var, Tensor) -> Result<()>,
) -> Result<()> {
    let refs: Vec<&Var> = c.inputs.iter().collect();
    let xs = fresh_leaves(&refs);
    let inner = enable_grad(|| -> Result<_> { (c.f)(&xs)?.backward_with(g) })?;
    for (x, xp) in c.inputs.iter().zip(&xs) {
        if let Some(gx) = inner.get(xp) {
            acc(x, gx.clone())?;
        }
    }
    for p in &c.params {
        if let Some(gp) = inner.get(p) {
            acc(p, gp.clone())?;
        }
    }
    Ok(())
}

/// The gradients of `y = x · Wᵀ` (`mask`, if any, multiplies dW).
pub(crate) fn matmul_nt_backward(
    x: &Var,
    w: &Var,
    mask: Option<&Tensor>,
    g: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (n, k) = (w.dims()[0], w.dims()[1]);
    // The rows of x, not `g.elem_count() / n`: with no output features (n = 0) g is empty
    // whatever m is, and dx must still have x's shape.
    let m: usize = x.dims()[..x.rank() - 1].iter().product();
    let g2 = g.reshape([m, n])?;
    let dx = if x.requires_grad() {
        let wt = w.tensor().to_dtype(g.dtype())?;
        Some(g2.matmul(&wt)?.reshape(x.shape())?)
    } else {
        None
    };
    let dw = if w.requires_grad() {
        let x2 = x.tensor().reshape([m, k])?;
        let mut dw = g2.t()?.matmul(&x2)?;
        if let Some(mask) = mask {
            dw = dw.mul(&mask.to_dtype(dw.dtype())?)?;
        }
        Some(dw.to_dtype(w.dtype())?)
    } else {
        None
    };
    Ok((dx, dw))
}
