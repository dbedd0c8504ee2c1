//! Differentiable ops on [`Var`], with the tensor crate's names and shapes. Each forwards to the
//! [`Tensor`] op and records the matching gradient rule (see the `backward` module).
//!
//! ```
//! use shears_autograd::Var;
//! use shears_tensor::{DType, Tensor};
//! let x = Var::param(Tensor::randn([2, 3], 0.0, 1.0, DType::F64, 0)?);
//! let y = x.softmax(-1)?.sum_all()?; // each row sums to 1, so dy/dx = 0
//! let g = y.backward()?;
//! assert!(g.get(&x).unwrap().to_vec_f64().iter().all(|v| v.abs() < 1e-12));
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::backward::{BFn, Op, UFn};
use crate::var::Var;
use shears_tensor::{BinaryOp, Dim, Error, Result, Shape, Tensor, UnaryOp};

macro_rules! unary_methods {
    ($($name:ident => $f:ident),* $(,)?) => {
        impl Var {$(
            #[doc = concat!("Elementwise `", stringify!($name), "` (see [`UnaryOp::", stringify!($f), "`]); same shape.")]
            pub fn $name(&self) -> Result<Var> {
                let t = self.tensor().$name()?;
                Ok(Var::record(t, &[self], || Op::Unary(self.clone(), UFn::$f)))
            }
        )*}
    };
}
unary_methods!(
    neg => Neg, abs => Abs, exp => Exp, log => Log, sqrt => Sqrt, recip => Recip, sin => Sin,
    cos => Cos, tanh => Tanh, relu => Relu, gelu => Gelu, sigmoid => Sigmoid, silu => Silu,
    sqr => Sqr,
);

macro_rules! binary_methods {
    ($($name:ident => $f:ident),* $(,)?) => {
        impl Var {$(
            #[doc = concat!("Elementwise `", stringify!($name), "` with numpy broadcasting; the gradient is summed back to each operand's shape.")]
            pub fn $name(&self, rhs: &Var) -> Result<Var> {
                let t = self.tensor().$name(rhs.tensor())?;
                Ok(Var::record(t, &[self, rhs], || Op::Binary(self.clone(), rhs.clone(), BFn::$f)))
            }
        )*}
    };
}
binary_methods!(
    add => Add, sub => Sub, mul => Mul, div => Div, pow => Pow, maximum => Maximum,
    minimum => Minimum,
);

impl Var {
    /// Applies a tensor-crate [`UnaryOp`]; errors for an op autograd has no rule for yet.
    pub fn unary(&self, op: UnaryOp) -> Result<Var> {
        match op {
            UnaryOp::Neg => self.neg(),
            UnaryOp::Abs => self.abs(),
            UnaryOp::Exp => self.exp(),
            UnaryOp::Log => self.log(),
            UnaryOp::Sqrt => self.sqrt(),
            UnaryOp::Recip => self.recip(),
            UnaryOp::Sin => self.sin(),
            UnaryOp::Cos => self.cos(),
            UnaryOp::Tanh => self.tanh(),
            UnaryOp::Relu => self.relu(),
            UnaryOp::Gelu => self.gelu(),
            UnaryOp::Sigmoid => self.sigmoid(),
            UnaryOp::Silu => self.silu(),
            UnaryOp::Sqr => self.sqr(),
            // UnaryOp is #[non_exhaustive]: an op added later fails loudly until it has a rule.
            other => Err(Error::invalid(
                "autograd",
                format!("no gradient rule for unary op {}", other.name()),
            )),
        }
    }
    /// Applies a tensor-crate [`BinaryOp`] with broadcasting; errors for an op without a rule.
    pub fn binary(&self, rhs: &Var, op: BinaryOp) -> Result<Var> {
        match op {
            BinaryOp::Add => self.add(rhs),
            BinaryOp::Sub => self.sub(rhs),
            BinaryOp::Mul => self.mul(rhs),
            BinaryOp::Div => self.div(rhs),
            BinaryOp::Pow => self.pow(rhs),
            BinaryOp::Maximum => self.maximum(rhs),
            BinaryOp::Minimum => self.minimum(rhs),
            other => Err(Error::invalid(
                "autograd",
                format!("no gradient rule for binary op {}", other.name()),
            )),
        }
    }

    /// `self * mul + add`, elementwise.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Var> {
        let t = self.tensor().affine(mul, add)?;
        Ok(Var::record(t, &[self], || Op::Affine(self.clone(), mul)))
    }
    /// `self + v`.
    pub fn add_scalar(&self, v: f64) -> Result<Var> {
        self.affine(1.0, v)
    }
    /// `self - v`.
    pub fn sub_scalar(&self, v: f64) -> Result<Var> {
        self.affine(1.0, -v)
    }
    /// `self * v`.
    pub fn mul_scalar(&self, v: f64) -> Result<Var> {
        self.affine(v, 0.0)
    }
    /// `self / v`.
    pub fn div_scalar(&self, v: f64) -> Result<Var> {
        self.affine(1.0 / v, 0.0)
    }
    /// `self ^ p` for a constant exponent.
    pub fn pow_scalar(&self, p: f64) -> Result<Var> {
        let t = self.tensor().pow_scalar(p)?;
        Ok(Var::record(t, &[self], || Op::PowScalar(self.clone(), p)))
    }
    /// `max(self, v)` elementwise; the gradient passes where `self > v`.
    pub fn maximum_scalar(&self, v: f64) -> Result<Var> {
        self.maximum(&Var::constant(Tensor::full((), v, self.dtype())?))
    }
    /// `min(self, v)` elementwise; the gradient passes where `self < v`.
    pub fn minimum_scalar(&self, v: f64) -> Result<Var> {
        self.minimum(&Var::constant(Tensor::full((), v, self.dtype())?))
    }
    /// Clamps into `[lo, hi]`; the gradient is zero where clamped.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Var> {
        self.maximum_scalar(lo)?.minimum_scalar(hi)
    }

    /// Sum over `dim` (size 1 kept when `keepdim`).
    pub fn sum(&self, dim: impl Dim, keepdim: bool) -> Result<Var> {
        let d = dim.to_index("sum", self.shape())?;
        let t = self.tensor().sum(d, keepdim)?;
        Ok(Var::record(t, &[self], || {
            Op::Sum(self.clone(), d, keepdim)
        }))
    }
    /// Mean over `dim`.
    pub fn mean(&self, dim: impl Dim, keepdim: bool) -> Result<Var> {
        let d = dim.to_index("mean", self.shape())?;
        let t = self.tensor().mean(d, keepdim)?;
        Ok(Var::record(t, &[self], || {
            Op::Mean(self.clone(), d, keepdim)
        }))
    }
    /// Maximum over `dim`; the gradient goes to the first arg-max.
    pub fn max(&self, dim: impl Dim, keepdim: bool) -> Result<Var> {
        let d = dim.to_index("max", self.shape())?;
        let t = self.tensor().max(d, keepdim)?;
        Ok(Var::record(t, &[self], || {
            Op::Max(self.clone(), d, keepdim)
        }))
    }
    /// Minimum over `dim`; the gradient goes to the first arg-min.
    pub fn min(&self, dim: impl Dim, keepdim: bool) -> Result<Var> {
        let d = dim.to_index("min", self.shape())?;
        let t = self.tensor().min(d, keepdim)?;
        Ok(Var::record(t, &[self], || {
            Op::Min(self.clone(), d, keepdim)
        }))
    }
    /// Sum of all elements: a rank-0 value.
    pub fn sum_all(&self) -> Result<Var> {
        self.flatten_all()?.sum(0, false)
    }
    /// Mean of all elements: a rank-0 value.
    pub fn mean_all(&self) -> Result<Var> {
        self.flatten_all()?.mean(0, false)
    }
    /// Softmax along `dim` (stable).
    pub fn softmax(&self, dim: impl Dim) -> Result<Var> {
        let d = dim.to_index("softmax", self.shape())?;
        let t = self.tensor().softmax(d)?;
        Ok(Var::record(t.clone(), &[self], || {
            Op::Softmax(self.clone(), t, d)
        }))
    }
    /// Log-softmax along `dim` (stable).
    pub fn log_softmax(&self, dim: impl Dim) -> Result<Var> {
        let d = dim.to_index("log_softmax", self.shape())?;
        let t = self.tensor().log_softmax(d)?;
        Ok(Var::record(t.clone(), &[self], || {
            Op::LogSoftmax(self.clone(), t, d)
        }))
    }

    /// Matrix product with `torch.matmul` semantics (broadcast batch dims; a 1-D operand is a
    /// row or column vector whose dim is dropped from the result).
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        if self.rank() == 0 || rhs.rank() == 0 {
            // Let the tensor op produce its error.
            self.tensor().matmul(rhs.tensor())?;
        }
        if self.rank() == 1 {
            // The row dim sits last when rhs was a vector (its column dim is already gone).
            let row = if rhs.rank() == 1 { -1 } else { -2 };
            return self.unsqueeze(0)?.matmul(rhs)?.squeeze(row);
        }
        if rhs.rank() == 1 {
            return self.matmul(&rhs.unsqueeze(1)?)?.squeeze(-1);
        }
        let t = self.tensor().matmul(rhs.tensor())?;
        Ok(Var::record(t, &[self, rhs], || {
            Op::Matmul(self.clone(), rhs.clone())
        }))
    }

    /// The same elements in a new shape.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Var> {
        let t = self.tensor().reshape(shape)?;
        Ok(Var::record(t, &[self], || Op::Reshape(self.clone())))
    }
    /// All dims merged into one.
    pub fn flatten_all(&self) -> Result<Var> {
        self.reshape(self.elem_count())
    }
    /// Removes a size-1 dim.
    pub fn squeeze(&self, dim: impl Dim) -> Result<Var> {
        let t = self.tensor().squeeze(dim)?;
        Ok(Var::record(t, &[self], || Op::Reshape(self.clone())))
    }
    /// Inserts a size-1 dim at `dim` (`0..=rank`).
    pub fn unsqueeze(&self, dim: impl Dim) -> Result<Var> {
        let t = self.tensor().unsqueeze(dim)?;
        Ok(Var::record(t, &[self], || Op::Reshape(self.clone())))
    }
    /// Swaps two dims.
    pub fn transpose(&self, d0: impl Dim, d1: impl Dim) -> Result<Var> {
        let a = d0.to_index("transpose", self.shape())?;
        let b = d1.to_index("transpose", self.shape())?;
        let t = self.tensor().transpose(a, b)?;
        Ok(Var::record(t, &[self], || {
            Op::Transpose(self.clone(), a, b)
        }))
    }
    /// Transpose of the last two dims.
    pub fn t(&self) -> Result<Var> {
        if self.rank() < 2 {
            self.tensor().t()?;
        }
        self.transpose(self.rank() - 2, self.rank() - 1)
    }
    /// Reorders the dims: output dim `i` is input dim `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let t = self.tensor().permute(perm)?;
        Ok(Var::record(t, &[self], || {
            Op::Permute(self.clone(), perm.to_vec())
        }))
    }
    /// `len` entries of `dim` from `start`.
    pub fn narrow(&self, dim: impl Dim, start: usize, len: usize) -> Result<Var> {
        let d = dim.to_index("narrow", self.shape())?;
        let t = self.tensor().narrow(d, start, len)?;
        Ok(Var::record(t, &[self], || {
            Op::Narrow(self.clone(), d, start)
        }))
    }
    /// Broadcast to `shape` (numpy rules); the gradient is summed back.
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Var> {
        let t = self.tensor().broadcast_as(shape)?;
        Ok(Var::record(t, &[self], || Op::BroadcastAs(self.clone())))
    }
    /// Concatenates along `dim`.
    pub fn cat(vars: &[&Var], dim: impl Dim) -> Result<Var> {
        let ts: Vec<&Tensor> = vars.iter().map(|v| v.tensor()).collect();
        let t = Tensor::cat(&ts, dim)?;
        let d = dim.to_index("cat", vars[0].shape())?;
        Ok(Var::record(t, vars, || {
            Op::Cat(vars.iter().map(|v| (*v).clone()).collect(), d)
        }))
    }
    /// Stacks equal-shaped values along a new dim `dim` (`0..=rank`).
    pub fn stack(vars: &[&Var], dim: impl Dim) -> Result<Var> {
        let first = vars
            .first()
            .ok_or_else(|| Error::invalid("stack", "empty list of values"))?;
        let d = dim.to_index_plus_one("stack", first.shape())?;
        let parts: Vec<Var> = vars.iter().map(|v| v.unsqueeze(d)).collect::<Result<_>>()?;
        let refs: Vec<&Var> = parts.iter().collect();
        Var::cat(&refs, d)
    }
    /// Splits `dim` into pieces of `size` (the last may be smaller).
    pub fn split(&self, size: usize, dim: impl Dim) -> Result<Vec<Var>> {
        let d = dim.to_index("split", self.shape())?;
        if size == 0 {
            return Err(Error::invalid("split", "split size must be positive"));
        }
        let n = self.dims()[d];
        (0..n)
            .step_by(size)
            .map(|s| self.narrow(d, s, size.min(n - s)))
            .collect()
    }

    /// Picks entries `indices` (1-D, an integer constant) along `dim`; the gradient is
    /// scatter-added back (repeated indices accumulate).
    pub fn index_select(&self, indices: &Tensor, dim: impl Dim) -> Result<Var> {
        let d = dim.to_index("index_select", self.shape())?;
        let t = self.tensor().index_select(indices, d)?;
        Ok(Var::record(t, &[self], || {
            Op::IndexSelect(self.clone(), indices.clone(), d)
        }))
    }
    /// Embedding lookup: `self` is a `[vocab, hidden]` table, `ids` any shape of token ids →
    /// `ids.shape + [hidden]`; the table's gradient is a scatter-add of the output gradient.
    pub fn embedding(&self, ids: &Tensor) -> Result<Var> {
        if self.rank() != 2 {
            // Let the tensor op produce its error.
            self.tensor().embedding(ids)?;
        }
        let rows = self.index_select(&ids.flatten_all()?, 0)?;
        let mut dims = ids.dims().to_vec();
        dims.push(self.dims()[1]);
        rows.reshape(dims)
    }
    /// `out[i][j] = self[i][index[i][j]]` (for `dim = 1`); output has `index`'s shape.
    pub fn gather(&self, dim: impl Dim, index: &Tensor) -> Result<Var> {
        let d = dim.to_index("gather", self.shape())?;
        let t = self.tensor().gather(d, index)?;
        Ok(Var::record(t, &[self], || {
            Op::Gather(self.clone(), index.clone(), d)
        }))
    }
    /// `on_true` where `mask` (an integer constant) is non-zero, else `on_false`; all three
    /// broadcast together.
    pub fn where_cond(mask: &Tensor, on_true: &Var, on_false: &Var) -> Result<Var> {
        let t = mask.where_cond(on_true.tensor(), on_false.tensor())?;
        Ok(Var::record(t, &[on_true, on_false], || {
            Op::WhereCond(mask.clone(), on_true.clone(), on_false.clone())
        }))
    }
    /// `value` where `mask` is non-zero, else `self` (no gradient flows to filled entries).
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Var> {
        let fill = Var::constant(Tensor::full((), value, self.dtype())?);
        let out = Var::where_cond(mask, &fill, self)?;
        if out.shape() != self.shape() {
            return Err(Error::Broadcast {
                op: "masked_fill",
                lhs: mask.shape().clone(),
                rhs: self.shape().clone(),
            });
        }
        Ok(out)
    }
}
