//! Reductions over one dim (sum, mean, max, min, argmax, argmin, var) with `keepdim`, and the
//! numerically stable softmax / log_softmax.
//!
//! ```
//! use shears_tensor::Tensor;
//! let x = Tensor::from_vec(vec![1f32, 5., 3., 4., 2., 6.], [2, 3])?;
//! assert_eq!(x.sum(1, false)?.to_vec::<f32>()?, vec![9., 12.]);
//! assert_eq!(x.max(0, true)?.dims(), &[1, 3]);
//! assert_eq!(x.argmax(-1, false)?.to_vec::<i64>()?, vec![1, 2]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::storage::CpuStorage;
use crate::tensor::{from_float_data, FloatData, FloatOut};
use crate::{Dim, Error, Result, Shape, Tensor};
use rayon::prelude::*;
use shears_kernels::{reduce, softmax, Float};

/// The reductions over one dim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReduceOp {
    /// Σ
    Sum,
    /// arithmetic mean (NaN over an empty dim)
    Mean,
    /// maximum (NaN propagates; errors on an empty dim)
    Max,
    /// minimum (NaN propagates; errors on an empty dim)
    Min,
}

impl ReduceOp {
    fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
        }
    }
    fn run<T: Float>(self, x: &[T], outer: usize, n: usize, inner: usize) -> Vec<T> {
        match self {
            ReduceOp::Sum => sum(x, outer, n, inner),
            ReduceOp::Mean => {
                let inv = T::from(n).unwrap().recip();
                sum(x, outer, n, inner)
                    .into_iter()
                    .map(|v| v * inv)
                    .collect()
            }
            // Over the last dim, each row folds on its own (the same sequential fold as the
            // kernel's, without its per-element row slices).
            ReduceOp::Max if inner == 1 => x.chunks_exact(n).map(|r| fold_row(r, max2)).collect(),
            ReduceOp::Min if inner == 1 => x.chunks_exact(n).map(|r| fold_row(r, min2)).collect(),
            ReduceOp::Max => reduce::max(x, outer, n, inner),
            ReduceOp::Min => reduce::min(x, outer, n, inner),
        }
    }
}

/// NaN-propagating maximum; ties keep `a` (as `reduce::max`).
fn max2<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || a >= b {
        a
    } else {
        b
    }
}

/// NaN-propagating minimum; ties keep `a` (as `reduce::min`).
fn min2<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || a <= b {
        a
    } else {
        b
    }
}

fn fold_row<T: Float>(r: &[T], f: fn(T, T) -> T) -> T {
    r[1..].iter().fold(r[0], |a, &b| f(a, b))
}

/// Independent partial sums per row chunk: wide enough for the compiler to keep them in vector
/// registers, and each of them adds 1/16 of the terms, so rounding grows more slowly than in
/// one running sum.
const LANES: usize = 16;
/// Elements per block of a long sum. Blocks are fixed by the length alone, so a sum is the same
/// whatever the thread count.
const BLOCK: usize = 1 << 14;
/// Fewest elements before a reduction is split over rayon's pool.
const PAR_MIN: usize = 1 << 16;

/// `[outer, n, inner]` summed over `n`. Sums over the last dim (`inner == 1`, which includes
/// `sum_all`) run blocked over [`LANES`] partial sums at memory speed; other dims add whole rows
/// (`reduce::sum`, already vectorised), by blocks of `outer` on rayon's pool when large.
fn sum<T: Float>(x: &[T], outer: usize, n: usize, inner: usize) -> Vec<T> {
    if inner == 1 {
        if outer == 1 {
            return vec![sum_long(x)];
        }
        return if x.len() >= PAR_MIN {
            x.par_chunks_exact(n).map(sum_long).collect()
        } else {
            x.chunks_exact(n).map(sum_long).collect()
        };
    }
    if x.len() < PAR_MIN || outer == 1 {
        return reduce::sum(x, outer, n, inner);
    }
    let per = (BLOCK / (n * inner)).max(1);
    x.par_chunks(per * n * inner)
        .flat_map_iter(|c| reduce::sum(c, c.len() / (n * inner), n, inner))
        .collect()
}

/// One row's sum: blocks of [`BLOCK`] (in parallel when long), each over [`LANES`] partial
/// sums, then the block sums in order.
fn sum_long<T: Float>(x: &[T]) -> T {
    if x.len() <= BLOCK {
        return sum_block(x);
    }
    let blocks: Vec<T> = if x.len() >= PAR_MIN {
        x.par_chunks(BLOCK).map(sum_block).collect()
    } else {
        x.chunks(BLOCK).map(sum_block).collect()
    };
    sum_block(&blocks)
}

fn sum_block<T: Float>(x: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = *a + v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a = *a + v;
    }
    // Pairwise over the partial sums.
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] = acc[i] + acc[i + w];
        }
    }
    acc[0]
}

/// `(outer, n, inner)` and the output shape for reducing `dim`.
fn split_dims(shape: &Shape, d: usize, keepdim: bool) -> (usize, usize, usize, Shape) {
    let dims = shape.dims();
    let outer = dims[..d].iter().product();
    let inner = dims[d + 1..].iter().product();
    let mut out = dims.to_vec();
    if keepdim {
        out[d] = 1;
    } else {
        out.remove(d);
    }
    (outer, dims[d], inner, out.into())
}

impl Tensor {
    /// The first NaN or infinity in row-major order, as (flat index, value), or `None` when every
    /// element is finite. Float dtypes are scanned (f16 / bf16 widened exactly, in parallel);
    /// integer dtypes hold only finite values. For naming a damaged weight before it spreads.
    pub fn first_non_finite(&self) -> Result<Option<(usize, f64)>> {
        fn scan<T: Copy + Sync>(v: &[T], f: impl Fn(T) -> f64 + Sync) -> Option<(usize, f64)> {
            v.par_iter()
                .position_first(|&x| !f(x).is_finite())
                .map(|i| (i, f(v[i])))
        }
        Ok(match self.cpu() {
            CpuStorage::F32(_) => scan(&self.values::<f32>(), f64::from),
            CpuStorage::F64(_) => scan(&self.values::<f64>(), |x| x),
            CpuStorage::F16(_) => scan(&self.values::<half::f16>(), f64::from),
            CpuStorage::BF16(_) => scan(&self.values::<half::bf16>(), f64::from),
            _ => None,
        })
    }

    /// Reduces `dim` with `op`; keeps it as size 1 when `keepdim`. Float dtypes; output dtype is
    /// the input's.
    pub fn reduce(&self, op: ReduceOp, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        let d = dim.to_index(op.name(), self.shape())?;
        let (outer, n, inner, out_shape) = split_dims(self.shape(), d, keepdim);
        if n == 0 && matches!(op, ReduceOp::Max | ReduceOp::Min) && outer * inner > 0 {
            return Err(Error::invalid(
                op.name(),
                format!("cannot reduce empty dim {d} of {}", self.shape()),
            ));
        }
        let out = match self.float_values(op.name())? {
            FloatData::F32(v) => FloatOut::F32(if n == 0 {
                empty(op, outer * inner)
            } else {
                op.run(&v, outer, n, inner)
            }),
            FloatData::F64(v) => FloatOut::F64(if n == 0 {
                empty(op, outer * inner)
            } else {
                op.run(&v, outer, n, inner)
            }),
        };
        Ok(from_float_data(out, out_shape, self.dtype()))
    }
    /// Sum over `dim`.
    pub fn sum(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Sum, dim, keepdim)
    }
    /// Mean over `dim`.
    pub fn mean(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Mean, dim, keepdim)
    }
    /// Maximum over `dim`.
    pub fn max(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Max, dim, keepdim)
    }
    /// Minimum over `dim`.
    pub fn min(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Min, dim, keepdim)
    }
    /// Sum of all elements, as a rank-0 tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.flatten_all()?.sum(0, false)
    }
    /// Mean of all elements, as a rank-0 tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.flatten_all()?.mean(0, false)
    }
    /// Variance over `dim` with Bessel's correction (divides by `n - 1`, PyTorch's default).
    pub fn var(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        self.var_with(dim, keepdim, 1)
    }
    /// Variance over `dim` dividing by `n - correction` (0 gives the population variance).
    pub fn var_with(&self, dim: impl Dim, keepdim: bool, correction: usize) -> Result<Tensor> {
        let d = dim.to_index("var", self.shape())?;
        let n = self.dims()[d];
        let centered = self.sub(&self.mean(d, true)?)?;
        let ss = centered.sqr()?.sum(d, keepdim)?;
        ss.div_scalar(n as f64 - correction as f64)
    }
    /// Index of the maximum along `dim` (first one on ties; NaN counts as the maximum), as i64.
    pub fn argmax(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        self.arg_reduce("argmax", dim, keepdim, true)
    }
    /// Index of the minimum along `dim` (first one on ties), as i64.
    pub fn argmin(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        self.arg_reduce("argmin", dim, keepdim, false)
    }
    fn arg_reduce(
        &self,
        op: &'static str,
        dim: impl Dim,
        keepdim: bool,
        is_max: bool,
    ) -> Result<Tensor> {
        let d = dim.to_index(op, self.shape())?;
        let (outer, n, inner, out_shape) = split_dims(self.shape(), d, keepdim);
        if n == 0 {
            if outer * inner > 0 {
                return Err(Error::invalid(
                    op,
                    format!("cannot reduce empty dim {d} of {}", self.shape()),
                ));
            }
            return Ok(Tensor::from_cpu(
                CpuStorage::I64(Vec::new().into()),
                out_shape,
            ));
        }
        let idx = match self.float_values(op)? {
            FloatData::F32(v) if is_max => reduce::argmax(&v, outer, n, inner),
            FloatData::F32(v) => reduce::argmin(&v, outer, n, inner),
            FloatData::F64(v) if is_max => reduce::argmax(&v, outer, n, inner),
            FloatData::F64(v) => reduce::argmin(&v, outer, n, inner),
        };
        let idx: Vec<i64> = idx.into_iter().map(|i| i as i64).collect();
        Ok(Tensor::from_cpu(CpuStorage::I64(idx.into()), out_shape))
    }

    /// Softmax along `dim`, computed stably (the max is subtracted first). Float dtypes.
    pub fn softmax(&self, dim: impl Dim) -> Result<Tensor> {
        self.softmax_impl("softmax", dim, false)
    }
    /// Log-softmax along `dim`, computed stably. Float dtypes.
    pub fn log_softmax(&self, dim: impl Dim) -> Result<Tensor> {
        self.softmax_impl("log_softmax", dim, true)
    }
    fn softmax_impl(&self, op: &'static str, dim: impl Dim, log: bool) -> Result<Tensor> {
        let d = dim.to_index(op, self.shape())?;
        let last = self.rank() - 1;
        // Work on rows: move `dim` last, compute, move it back.
        let x = if d == last {
            self.clone()
        } else {
            self.transpose(d, last)?
        };
        let n = x.dims()[last];
        let out = match x.float_values(op)? {
            FloatData::F32(v) if !log => {
                // The SIMD kernel (vectorised exp), tested against its reference in kernels.
                let mut out = vec![0f32; v.len()];
                shears_kernels::fused::softmax_rows(&v, n, &mut out);
                FloatOut::F32(out)
            }
            FloatData::F32(v) => FloatOut::F32(rows(&v, n, log)),
            FloatData::F64(v) => FloatOut::F64(rows(&v, n, log)),
        };
        let y = from_float_data(out, x.shape().clone(), self.dtype());
        if d == last {
            Ok(y)
        } else {
            y.transpose(d, last)?.contiguous()
        }
    }
}

fn rows<T: Float>(v: &[T], n: usize, log: bool) -> Vec<T> {
    let mut out = vec![T::zero(); v.len()];
    if log {
        softmax::log_softmax_rows(v, n, &mut out);
    } else {
        softmax::softmax_rows(v, n, &mut out);
    }
    out
}

fn empty<T: Float>(op: ReduceOp, len: usize) -> Vec<T> {
    let v = match op {
        ReduceOp::Sum => T::zero(),
        _ => T::nan(),
    };
    vec![v; len]
}
