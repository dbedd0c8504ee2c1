//! The recorded ops and their gradient rules: one enum, one exhaustive `match` (no wildcard arm),
//! so a new op does not compile until it has a rule. Each rule receives `g = d loss / d out` and
//! hands `d loss / d input` to every input that requires a gradient.

use crate::fused::{checkpoint_backward, matmul_nt_backward, CheckpointFn};
use crate::var::{accumulate, Var};
use shears_tensor::{DType, Result, RopeTables, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

/// What [`Var::checkpoint`] keeps instead of the function's graph: its inputs, the parameters it
/// reaches, and the function to run again.
pub(crate) struct Checkpointed {
    pub(crate) inputs: Vec<Var>,
    pub(crate) params: Vec<Var>,
    pub(crate) f: CheckpointFn,
}

/// Elementwise unary functions, mirroring [`shears_tensor::UnaryOp`] (which is
/// `#[non_exhaustive]`, so autograd keeps its own closed list to match on exhaustively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UFn {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Recip,
    Sin,
    Cos,
    Tanh,
    Relu,
    Gelu,
    Sigmoid,
    Silu,
    Sqr,
}

/// Broadcasting binary functions, mirroring [`shears_tensor::BinaryOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BFn {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Maximum,
    Minimum,
}

/// One recorded op with what its gradient rule needs (inputs, and the output where reusing it is
/// cheaper than recomputing). Dims are resolved, non-negative indices.
pub(crate) enum Op {
    /// A parameter: the sweep stops here and keeps the gradient.
    Leaf,
    Unary(Var, UFn),
    Binary(Var, Var, BFn),
    /// `x * mul + add` (covers add/sub/mul/div by a scalar).
    Affine(Var, f64),
    /// `x ^ p` for a constant `p`.
    PowScalar(Var, f64),
    Sum(Var, usize, bool),
    Mean(Var, usize, bool),
    Max(Var, usize, bool),
    Min(Var, usize, bool),
    /// Input, output, dim.
    Softmax(Var, Tensor, usize),
    /// Input, output, dim.
    LogSoftmax(Var, Tensor, usize),
    /// Both operands have rank >= 2 (1-D cases are reshaped around the op).
    Matmul(Var, Var),
    /// Also records squeeze, unsqueeze and flatten: the gradient is reshaped back.
    Reshape(Var),
    Transpose(Var, usize, usize),
    Permute(Var, Vec<usize>),
    /// Input, dim, start.
    Narrow(Var, usize, usize),
    BroadcastAs(Var),
    Cat(Vec<Var>, usize),
    /// Input, 1-D indices, dim.
    IndexSelect(Var, Tensor, usize),
    /// Input, index (shape of the output), dim.
    Gather(Var, Tensor, usize),
    /// Mask (a constant), on-true, on-false.
    WhereCond(Tensor, Var, Var),
    /// Input `(..., in)`, kept values `[nnz]`, and the sparsity structure of `W: [out, in]`.
    SparseLinear(Var, Var, shears_tensor::sparse::SparseTensor),
    /// `x · Wᵀ`: input `(.., in)`, weight `[out, in]`, and a 0/1 mask of W's gradient.
    MatmulNt(Var, Var, Option<Tensor>),
    /// Input, gain, eps.
    RmsNorm(Var, Var, f64),
    /// Gate, up.
    SiluMul(Var, Var),
    /// Input `(batch, seq, heads, head_dim)`, tables, first position.
    Rope(Var, Arc<RopeTables>, usize),
    /// q, k, v, scale.
    CausalAttention(Var, Var, Var, f64),
    /// A dtype conversion: the gradient goes back to the input's dtype.
    ToDType(Var),
    /// Logits `(N, C)`, class ids `(N)`, the ignored id.
    CrossEntropy(Var, Tensor, Option<i64>),
    /// A function recomputed in the backward pass.
    Checkpoint(Box<Checkpointed>),
}

impl Op {
    /// The inputs, by value (used to unlink a graph without recursion: the returned handles keep
    /// the input nodes alive while `self` is dropped).
    pub(crate) fn into_inputs(self) -> Vec<Var> {
        let mut inputs = Vec::new();
        self.for_each_input(|x| inputs.push(x.clone()));
        inputs
    }
    /// Calls `f` on every input of the op.
    pub(crate) fn for_each_input(&self, mut f: impl FnMut(&Var)) {
        match self {
            Op::Leaf => {}
            Op::Unary(x, _)
            | Op::Affine(x, _)
            | Op::PowScalar(x, _)
            | Op::Sum(x, ..)
            | Op::Mean(x, ..)
            | Op::Max(x, ..)
            | Op::Min(x, ..)
            | Op::Softmax(x, ..)
            | Op::LogSoftmax(x, ..)
            | Op::Reshape(x)
            | Op::Transpose(x, ..)
            | Op::Permute(x, _)
            | Op::Narrow(x, ..)
            | Op::BroadcastAs(x)
            | Op::IndexSelect(x, ..)
            | Op::Gather(x, ..)
            | Op::Rope(x, ..)
            | Op::ToDType(x)
            | Op::CrossEntropy(x, ..) => f(x),
            Op::Binary(a, b, _)
            | Op::Matmul(a, b)
            | Op::WhereCond(_, a, b)
            | Op::SparseLinear(a, b, _)
            | Op::MatmulNt(a, b, _)
            | Op::RmsNorm(a, b, _)
            | Op::SiluMul(a, b) => {
                f(a);
                f(b);
            }
            Op::CausalAttention(q, k, v, _) => {
                f(q);
                f(k);
                f(v);
            }
            Op::Cat(xs, _) => xs.iter().for_each(f),
            Op::Checkpoint(c) => c.inputs.iter().chain(&c.params).for_each(f),
        }
    }
}

/// Sums `g` down to `dims` (undoes numpy broadcasting): leading extra dims are summed away and
/// dims that are 1 in `dims` are summed with keepdim.
pub(crate) fn sum_to(mut g: Tensor, dims: &[usize]) -> Result<Tensor> {
    while g.rank() > dims.len() {
        g = g.sum(0, false)?;
    }
    for (i, &d) in dims.iter().enumerate() {
        if d == 1 && g.dims()[i] != 1 {
            g = g.sum(i, true)?;
        }
    }
    Ok(g)
}

/// `f` applied to every element in f64, returned in `x`'s dtype (for derivatives the tensor crate
/// has no op for, such as the normal density in GELU's).
fn map_f64(x: &Tensor, f: impl Fn(f64) -> f64) -> Result<Tensor> {
    let v: Vec<f64> = x.to_vec_f64().into_iter().map(f).collect();
    Tensor::from_vec(v, x.shape())?.to_dtype(x.dtype())
}

/// A u8 mask as 0/1 in `dtype`.
fn mask_as(m: Tensor, dtype: DType) -> Result<Tensor> {
    m.to_dtype(dtype)
}

/// `d out / d x` of an elementwise function at `x`.
fn unary_derivative(f: UFn, x: &Tensor) -> Result<Tensor> {
    let dt = x.dtype();
    match f {
        UFn::Neg => Tensor::full(x.shape(), -1.0, dt),
        UFn::Abs => mask_as(x.gt_scalar(0.0)?, dt)?.sub(&mask_as(x.lt_scalar(0.0)?, dt)?),
        UFn::Exp => x.exp(),
        UFn::Log => x.recip(),
        UFn::Sqrt => x.sqrt()?.recip()?.mul_scalar(0.5),
        UFn::Recip => x.sqr()?.recip()?.neg(),
        UFn::Sin => x.cos(),
        UFn::Cos => x.sin()?.neg(),
        UFn::Tanh => x.tanh()?.sqr()?.affine(-1.0, 1.0),
        UFn::Relu => mask_as(x.gt_scalar(0.0)?, dt),
        // d/dx x·Φ(x) = Φ(x) + x·φ(x), Φ the normal CDF, φ its density.
        UFn::Gelu => map_f64(x, |v| {
            let cdf = 0.5 * (1.0 + libm::erf(v * std::f64::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
            cdf + v * pdf
        }),
        // σ' = σ(1 − σ) and (xσ)' = σ(1 + x(1 − σ)), times g in the same pass
        // (`Tensor::sigmoid_grad`, `Tensor::silu_grad`); `propagate` calls those directly.
        UFn::Sigmoid => x.sigmoid_grad(&x.ones_like()?),
        UFn::Silu => x.silu_grad(&x.ones_like()?),
        UFn::Sqr => x.mul_scalar(2.0),
    }
}

/// Reinserts a reduced dim so `g` broadcasts against the input.
fn keep(g: Tensor, dim: usize, keepdim: bool) -> Result<Tensor> {
    if keepdim {
        Ok(g)
    } else {
        g.unsqueeze(dim)
    }
}

/// Gradient of max/min over `dim`: all of `g` goes to the first arg-max (arg-min) position.
fn extremum_grad(x: &Tensor, g: Tensor, dim: usize, keepdim: bool, is_max: bool) -> Result<Tensor> {
    let idx = if is_max {
        x.argmax(dim, true)?
    } else {
        x.argmin(dim, true)?
    };
    x.zeros_like()?
        .scatter_add(dim, &idx, &keep(g, dim, keepdim)?.contiguous()?)
}

/// Runs the gradient rule of `op` for the output gradient `g`, accumulating into `pending`.
pub(crate) fn propagate(op: &Op, g: Tensor, pending: &mut HashMap<u64, Tensor>) -> Result<()> {
    let mut acc = |v: &Var, grad: Tensor| accumulate(pending, v, grad);
    match op {
        Op::Leaf => Ok(()),
        // σ and SiLU fuse `g ⊙ f'(x)` into one pass instead of materialising f'(x).
        Op::Unary(x, UFn::Sigmoid) => acc(x, x.tensor().sigmoid_grad(&g)?),
        Op::Unary(x, UFn::Silu) => acc(x, x.tensor().silu_grad(&g)?),
        Op::Unary(x, f) => acc(x, g.mul(&unary_derivative(*f, x.tensor())?)?),
        Op::Binary(a, b, f) => {
            let (ta, tb) = (a.tensor(), b.tensor());
            let dt = g.dtype();
            let (ga, gb) = match f {
                BFn::Add => (Some(g.clone()), Some(g)),
                BFn::Sub => (Some(g.clone()), Some(g.neg()?)),
                BFn::Mul => (Some(g.mul(tb)?), Some(g.mul(ta)?)),
                // d(a/b)/db = −a/b²
                BFn::Div => (Some(g.div(tb)?), Some(g.mul(ta)?.div(&tb.sqr()?)?.neg()?)),
                // d(aᵇ)/da = b·aᵇ⁻¹, d(aᵇ)/db = aᵇ·ln a
                BFn::Pow => {
                    // ln a is NaN for a ≤ 0, so dB is only formed when b needs it.
                    let ga = a
                        .requires_grad()
                        .then(|| g.mul(tb)?.mul(&ta.pow(&tb.add_scalar(-1.0)?)?))
                        .transpose()?;
                    let gb = b
                        .requires_grad()
                        .then(|| g.mul(&ta.pow(tb)?)?.mul(&ta.log()?))
                        .transpose()?;
                    (ga, gb)
                }
                // The forward picks `a` only where a > b (ties go to b); the gradient follows.
                BFn::Maximum => {
                    let m = ta.gt(tb)?;
                    let ga = g.mul(&mask_as(m.clone(), dt)?)?;
                    let gb = g.mul(&mask_as(m.eq_scalar(0.0)?, dt)?)?;
                    (Some(ga), Some(gb))
                }
                // The forward picks `a` only where a < b (ties go to b).
                BFn::Minimum => {
                    let m = ta.lt(tb)?;
                    let ga = g.mul(&mask_as(m.clone(), dt)?)?;
                    let gb = g.mul(&mask_as(m.eq_scalar(0.0)?, dt)?)?;
                    (Some(ga), Some(gb))
                }
            };
            if let (Some(ga), true) = (ga, a.requires_grad()) {
                acc(a, sum_to(ga, a.dims())?)?;
            }
            if let (Some(gb), true) = (gb, b.requires_grad()) {
                acc(b, sum_to(gb, b.dims())?)?;
            }
            Ok(())
        }
        Op::Affine(x, mul) => acc(x, g.mul_scalar(*mul)?),
        // d(xᵖ)/dx = p·xᵖ⁻¹
        Op::PowScalar(x, p) => {
            let t = x.tensor();
            acc(x, g.mul(&t.pow_scalar(p - 1.0)?.mul_scalar(*p)?)?)
        }
        Op::Sum(x, dim, keepdim) => acc(x, keep(g, *dim, *keepdim)?.broadcast_as(x.shape())?),
        Op::Mean(x, dim, keepdim) => {
            let n = x.dims()[*dim] as f64;
            let g = keep(g, *dim, *keepdim)?.mul_scalar(1.0 / n)?;
            acc(x, g.broadcast_as(x.shape())?)
        }
        Op::Max(x, dim, keepdim) => acc(x, extremum_grad(x.tensor(), g, *dim, *keepdim, true)?),
        Op::Min(x, dim, keepdim) => acc(x, extremum_grad(x.tensor(), g, *dim, *keepdim, false)?),
        // dx = y ⊙ (g − Σ_dim g ⊙ y)
        Op::Softmax(x, y, dim) => {
            let s = g.mul(y)?.sum(*dim, true)?;
            acc(x, y.mul(&g.sub(&s)?)?)
        }
        // dx = g − softmax(x) · Σ_dim g, with softmax(x) = exp(y)
        Op::LogSoftmax(x, y, dim) => {
            let s = g.sum(*dim, true)?;
            acc(x, g.sub(&y.exp()?.mul(&s)?)?)
        }
        // C = A·B: dA = G·Bᵀ, dB = Aᵀ·G, each summed over broadcast batch dims.
        Op::Matmul(a, b) => {
            if a.requires_grad() {
                let ga = g.matmul(&b.tensor().t()?)?;
                acc(a, sum_to(ga, a.dims())?)?;
            }
            if b.requires_grad() {
                let gb = a.tensor().t()?.matmul(&g)?;
                acc(b, sum_to(gb, b.dims())?)?;
            }
            Ok(())
        }
        // y = x · Wᵀ with W sparse: dx = g · W; dvalues = (gᵀ · x) at the kept entries only.
        Op::SparseLinear(x, values, s) => {
            let (dx, dv) = crate::sparse::backward(
                x.tensor(),
                values.tensor(),
                s,
                &g,
                x.requires_grad(),
                values.requires_grad(),
            )?;
            if let Some(dx) = dx {
                acc(x, dx)?;
            }
            if let Some(dv) = dv {
                acc(values, dv)?;
            }
            Ok(())
        }
        Op::Reshape(x) => acc(x, g.reshape(x.shape())?),
        Op::Transpose(x, d0, d1) => acc(x, g.transpose(*d0, *d1)?),
        Op::Permute(x, perm) => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            acc(x, g.permute(&inv)?)
        }
        // Zero-pad the gradient back to the full extent of `dim`.
        Op::Narrow(x, dim, start) => {
            let len = g.dims()[*dim];
            let full = x.dims()[*dim];
            let pad = |n: usize| {
                let mut d = x.dims().to_vec();
                d[*dim] = n;
                Tensor::zeros(d, g.dtype())
            };
            let (before, after) = (pad(*start)?, pad(full - start - len)?);
            acc(x, Tensor::cat(&[&before, &g, &after], *dim)?)
        }
        Op::BroadcastAs(x) => acc(x, sum_to(g, x.dims())?),
        Op::Cat(xs, dim) => {
            let mut start = 0;
            for x in xs {
                let len = x.dims()[*dim];
                if x.requires_grad() {
                    acc(x, g.narrow(*dim, start, len)?)?;
                }
                start += len;
            }
            Ok(())
        }
        // Scatter-add each selected slice back to the row it came from (repeats accumulate).
        Op::IndexSelect(x, idx, dim) => {
            let mut shape = vec![1; x.rank()];
            shape[*dim] = idx.elem_count();
            let index = idx
                .to_dtype(DType::I64)?
                .reshape(shape)?
                .broadcast_as(g.shape())?
                .contiguous()?;
            acc(x, x.tensor().zeros_like()?.scatter_add(*dim, &index, &g)?)
        }
        Op::Gather(x, index, dim) => acc(x, x.tensor().zeros_like()?.scatter_add(*dim, index, &g)?),
        Op::MatmulNt(x, w, mask) => {
            let (dx, dw) = matmul_nt_backward(x, w, mask.as_ref(), &g)?;
            if let Some(dx) = dx {
                acc(x, dx)?;
            }
            if let Some(dw) = dw {
                acc(w, dw)?;
            }
            Ok(())
        }
        Op::RmsNorm(x, w, eps) => {
            let (dx, dw) = x.tensor().rms_norm_backward(w.tensor(), *eps, &g)?;
            acc(x, dx)?;
            acc(w, dw)
        }
        Op::SiluMul(gate, up) => {
            let (dg, du) = gate.tensor().silu_mul_backward(up.tensor(), &g)?;
            acc(gate, dg)?;
            acc(up, du)
        }
        Op::Rope(x, tables, offset) => acc(x, g.rope_backward(tables, *offset)?),
        Op::CausalAttention(q, k, v, scale) => {
            let (dq, dk, dv) =
                Tensor::causal_attention_backward(q.tensor(), k.tensor(), v.tensor(), &g, *scale)?;
            acc(q, dq)?;
            acc(k, dk)?;
            acc(v, dv)
        }
        Op::ToDType(x) => acc(x, g.to_dtype(x.dtype())?),
        Op::CrossEntropy(x, targets, ignore) => {
            let gs = g.to_vec_f64()[0];
            acc(x, x.tensor().cross_entropy_backward(targets, *ignore, gs)?)
        }
        Op::Checkpoint(c) => checkpoint_backward(c, g, &mut acc),
        Op::WhereCond(mask, t, f) => {
            let zero = Tensor::zeros((), g.dtype())?;
            if t.requires_grad() {
                acc(t, sum_to(mask.where_cond(&g, &zero)?, t.dims())?)?;
            }
            if f.requires_grad() {
                acc(f, sum_to(mask.where_cond(&zero, &g)?, f.dims())?)?;
            }
            Ok(())
        }
    }
}
