//! Products of a sparse weight `W: [rows, cols]` (`[out_features, in_features]`) with dense f32
//! activations, through the sparse kernels of `shears_kernels::sparse`: the forward product
//! `y = x · Wᵀ`, the input gradient `dx = dy · W`, and the gradient of the kept values only.
//!
//! ```
//! use shears_tensor::sparse::{Bitmask, SparseTensor};
//! use shears_tensor::Tensor;
//! let w = Tensor::from_vec(vec![1f32, 0., 2., 0., 0., 3.], [2, 3])?;
//! let s = SparseTensor::Bitmask(Bitmask::from_dense(&w)?);
//! let x = Tensor::from_vec(vec![1f32, 1., 1.], [1, 3])?;
//! assert_eq!(s.matmul_nt(&x)?.to_vec::<f32>()?, vec![3., 3.]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use super::{Bitmask, Csr, NmSparse, SparseTensor};
use crate::{DType, Error, Result, Tensor, WithDType};
use half::{bf16, f16};
use shears_kernels::gemv::WeightElem;
use shears_kernels::sparse as k;

/// Calls `$f::<T>(values)` with the values slice in its storage type.
macro_rules! with_values {
    ($values:expr, |$v:ident| $body:expr) => {
        match $values.dtype() {
            DType::F32 => {
                let $v = slice::<f32>($values);
                $body
            }
            DType::BF16 => {
                let $v = slice::<bf16>($values);
                $body
            }
            DType::F16 => {
                let $v = slice::<f16>($values);
                $body
            }
            other => unreachable!("sparse values of dtype {other:?} (checked at construction)"),
        }
    };
}

fn slice<T: WithDType + WeightElem>(t: &Tensor) -> &[T] {
    t.as_slice::<T>()
        .expect("sparse values are contiguous and of the checked dtype")
}

impl SparseTensor {
    /// `y[m, rows] = x[m, cols] · Wᵀ` on plain buffers (overwrites `y`). Panics on wrong
    /// lengths: callers check shapes once (see [`matmul_nt`](Self::matmul_nt)).
    pub fn matmul_nt_slice(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let [n, kk] = self.shape();
        match self {
            SparseTensor::Bitmask(b) => with_values!(b.values(), |v| k::bitmask_matmul_nt(
                m,
                n,
                kk,
                x,
                b.bits(),
                b.row_offsets(),
                v,
                y
            )),
            SparseTensor::Nm(s) => with_values!(s.values(), |v| k::nm_matmul_nt(
                m,
                n,
                kk,
                x,
                s.n(),
                s.m(),
                s.bits(),
                v,
                y
            )),
            SparseTensor::Csr(c) => with_values!(c.values(), |v| k::csr_matmul_nt(
                m,
                n,
                kk,
                x,
                c.indptr(),
                c.indices(),
                v,
                y
            )),
        }
    }

    /// `dx[m, cols] = dy[m, rows] · W` on plain buffers (overwrites `dx`): the gradient of
    /// [`matmul_nt_slice`](Self::matmul_nt_slice) with respect to `x`.
    pub fn matmul_nn_slice(&self, dy: &[f32], m: usize, dx: &mut [f32]) {
        let [n, kk] = self.shape();
        match self {
            SparseTensor::Bitmask(b) => with_values!(b.values(), |v| k::bitmask_matmul_nn(
                m,
                n,
                kk,
                dy,
                b.bits(),
                b.row_offsets(),
                v,
                dx
            )),
            SparseTensor::Nm(s) => with_values!(s.values(), |v| k::nm_matmul_nn(
                m,
                n,
                kk,
                dy,
                s.n(),
                s.m(),
                s.bits(),
                v,
                dx
            )),
            SparseTensor::Csr(c) => with_values!(c.values(), |v| k::csr_matmul_nn(
                m,
                n,
                kk,
                dy,
                c.indptr(),
                c.indices(),
                v,
                dx
            )),
        }
    }

    /// `dvalues[j] = Σ_i dy[i, row(j)] · x[i, col(j)]` for every kept entry `j` in storage
    /// order (overwrites `dvalues: [nnz]`): the gradient of the product with respect to the kept
    /// values, and nothing for the pruned ones. `dy: [m, rows]`, `x: [m, cols]`.
    pub fn weight_grad_slice(&self, dy: &[f32], x: &[f32], m: usize, dvalues: &mut [f32]) {
        let [n, kk] = self.shape();
        match self {
            SparseTensor::Bitmask(b) => {
                k::bitmask_weight_grad(m, n, kk, dy, x, b.bits(), b.row_offsets(), dvalues)
            }
            SparseTensor::Nm(s) => {
                k::nm_weight_grad(m, n, kk, dy, x, s.n(), s.m(), s.bits(), dvalues)
            }
            SparseTensor::Csr(c) => {
                k::csr_weight_grad(m, n, kk, dy, x, c.indptr(), c.indices(), dvalues)
            }
        }
    }

    /// `x: (..., cols)` f32 → `(..., rows)` f32, `y = x · Wᵀ`.
    pub fn matmul_nt(&self, x: &Tensor) -> Result<Tensor> {
        let [n, kk] = self.shape();
        let x = check_input("SparseTensor::matmul_nt", x, kk)?;
        let m = x.elem_count() / kk.max(1);
        let mut y = vec![0f32; m * n];
        self.matmul_nt_slice(x.as_slice::<f32>()?, m, &mut y);
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("rank ≥ 1") = n;
        Tensor::from_vec(y, dims)
    }

    /// Several sparse products with one input, `x · Wᵢᵀ` each (a layer's Q/K/V or gate/up): one
    /// rayon scope, so the threads balance over every product's row tasks instead of meeting at
    /// a join after each.
    pub fn matmul_nt_many(ws: &[&SparseTensor], x: &Tensor) -> Result<Vec<Tensor>> {
        let Some(first) = ws.first() else {
            return Ok(Vec::new());
        };
        let kk = first.shape()[1];
        let x = check_input("SparseTensor::matmul_nt_many", x, kk)?;
        for w in ws {
            if w.shape()[1] != kk {
                return Err(Error::invalid(
                    "SparseTensor::matmul_nt_many",
                    format!("weights of {} and {kk} columns", w.shape()[1]),
                ));
            }
        }
        let m = x.elem_count() / kk.max(1);
        let xs = x.as_slice::<f32>()?;
        let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; m * w.shape()[0]]).collect();
        rayon::scope(|s| {
            for (w, y) in ws.iter().zip(ys.iter_mut()) {
                s.spawn(move |_| w.matmul_nt_slice(xs, m, y));
            }
        });
        ws.iter()
            .zip(ys)
            .map(|(w, y)| {
                let mut dims = x.dims().to_vec();
                *dims.last_mut().expect("rank ≥ 1") = w.shape()[0];
                Tensor::from_vec(y, dims)
            })
            .collect()
    }

    /// `dy: (..., rows)` f32 → `(..., cols)` f32, `dx = dy · W`.
    pub fn matmul_nn(&self, dy: &Tensor) -> Result<Tensor> {
        let [n, kk] = self.shape();
        let dy = check_input("SparseTensor::matmul_nn", dy, n)?;
        let m = dy.elem_count() / n.max(1);
        let mut dx = vec![0f32; m * kk];
        self.matmul_nn_slice(dy.as_slice::<f32>()?, m, &mut dx);
        let mut dims = dy.dims().to_vec();
        *dims.last_mut().expect("rank ≥ 1") = kk;
        Tensor::from_vec(dx, dims)
    }

    /// The gradient of `x · Wᵀ` with respect to the kept values, `[nnz]` f32, from
    /// `dy: (..., rows)` and `x: (..., cols)` with the same leading dims.
    pub fn weight_grad(&self, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
        let [n, kk] = self.shape();
        let dy = check_input("SparseTensor::weight_grad", dy, n)?;
        let x = check_input("SparseTensor::weight_grad", x, kk)?;
        if dy.dims()[..dy.rank() - 1] != x.dims()[..x.rank() - 1] {
            return Err(Error::invalid(
                "SparseTensor::weight_grad",
                format!(
                    "dy {} and x {} differ in their leading dims",
                    dy.shape(),
                    x.shape()
                ),
            ));
        }
        let m = x.elem_count() / kk.max(1);
        let mut dv = vec![0f32; self.nnz()];
        self.weight_grad_slice(dy.as_slice::<f32>()?, x.as_slice::<f32>()?, m, &mut dv);
        Tensor::from_vec(dv, [self.nnz()])
    }

    /// The kept values, `[nnz]`, in storage order.
    pub fn values(&self) -> &Tensor {
        match self {
            SparseTensor::Bitmask(b) => b.values(),
            SparseTensor::Nm(s) => s.values(),
            SparseTensor::Csr(c) => c.values(),
        }
    }

    /// The row-major flat index `row · cols + col` of every kept entry, in storage order (the
    /// order of the values).
    pub fn kept_positions(&self) -> Vec<usize> {
        let [rows, cols] = self.shape();
        let mut out = Vec::with_capacity(self.nnz());
        match self {
            SparseTensor::Csr(c) => {
                for r in 0..rows {
                    for &j in &c.indices()[c.indptr()[r]..c.indptr()[r + 1]] {
                        out.push(r * cols + j as usize);
                    }
                }
            }
            SparseTensor::Bitmask(_) | SparseTensor::Nm(_) => {
                let (bits, rb) = match self {
                    SparseTensor::Bitmask(b) => (b.bits(), b.row_bytes()),
                    SparseTensor::Nm(s) => (s.bits(), s.row_bytes()),
                    SparseTensor::Csr(_) => unreachable!(),
                };
                for r in 0..rows {
                    for c in 0..cols {
                        if bits[r * rb + c / 8] >> (c % 8) & 1 == 1 {
                            out.push(r * cols + c);
                        }
                    }
                }
            }
        }
        out
    }

    /// The same matrix with its values converted to `dtype` (f32, bf16 or f16).
    pub fn to_dtype(&self, dtype: DType) -> Result<SparseTensor> {
        Ok(match self {
            SparseTensor::Bitmask(b) => SparseTensor::Bitmask(b.to_dtype(dtype)?),
            SparseTensor::Nm(s) => SparseTensor::Nm(s.to_dtype(dtype)?),
            SparseTensor::Csr(c) => SparseTensor::Csr(c.to_dtype(dtype)?),
        })
    }

    /// The same sparsity structure with new kept values (`[nnz]`, f32, bf16 or f16), e.g. after
    /// an optimizer step on them.
    pub fn with_values(&self, values: Tensor) -> Result<SparseTensor> {
        let nnz = self.nnz();
        if values.dims() != [nnz] {
            return Err(Error::SparseFormat {
                op: "SparseTensor::with_values",
                msg: format!("expected [{nnz}] values, got shape {}", values.shape()),
            });
        }
        if !matches!(values.dtype(), DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::UnsupportedDType {
                op: "SparseTensor::with_values",
                dtype: values.dtype(),
                expected: "f32, bf16 or f16 values",
            });
        }
        let values = values.contiguous()?;
        Ok(match self {
            SparseTensor::Bitmask(b) => SparseTensor::Bitmask(Bitmask::new_unchecked(
                b.rows(),
                b.cols(),
                b.bits().to_vec(),
                b.row_offsets().to_vec(),
                values,
            )),
            SparseTensor::Nm(s) => SparseTensor::Nm(NmSparse::new_unchecked(
                s.rows(),
                s.cols(),
                s.n(),
                s.m(),
                s.bits().to_vec(),
                values,
            )),
            SparseTensor::Csr(c) => SparseTensor::Csr(Csr::new_unchecked(
                c.rows(),
                c.cols(),
                c.indptr().to_vec(),
                c.indices().to_vec(),
                values,
            )),
        })
    }
}

fn check_input(op: &'static str, x: &Tensor, width: usize) -> Result<Tensor> {
    if x.rank() == 0 || *x.dims().last().expect("rank ≥ 1") != width || x.dtype() != DType::F32 {
        return Err(Error::invalid(
            op,
            format!(
                "expected f32 input (..., {width}), got {:?} {}",
                x.dtype(),
                x.shape()
            ),
        ));
    }
    x.contiguous()
}
