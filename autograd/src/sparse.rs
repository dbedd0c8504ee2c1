//! A linear map with a sparse weight whose kept values are a trainable [`Var`]: the sparsity
//! structure (which entries exist) is fixed, and gradients exist only for the kept values, so
//! optimizer steps can never revive a pruned weight.
//!
//! ```
//! use shears_autograd::Var;
//! use shears_tensor::sparse::{Bitmask, SparseTensor};
//! use shears_tensor::Tensor;
//! // W = [[1, 0, 2], [0, 3, 0]]: three kept values.
//! let w = SparseTensor::Bitmask(Bitmask::from_dense(&Tensor::from_vec(
//!     vec![1f32, 0., 2., 0., 3., 0.], [2, 3])?)?);
//! let values = Var::param(w.values().clone());
//! let x = Var::constant(Tensor::from_vec(vec![1f32, 2., 3.], [1, 3])?);
//! let y = x.sparse_linear(&values, &w)?; // x · Wᵀ = [[7, 6]]
//! assert_eq!(y.tensor().to_vec::<f32>()?, vec![7., 6.]);
//! let grads = y.sum_all()?.backward()?;
//! // d Σy / d value = the input at that value's column: [x0, x2, x1].
//! assert_eq!(grads.get(&values).unwrap().to_vec::<f32>()?, vec![1., 3., 2.]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::backward::Op;
use crate::var::Var;
use shears_tensor::sparse::SparseTensor;
use shears_tensor::{DType, Error, Result, Tensor};

impl Var {
    /// `self: (..., in)` → `(..., out)`, `y = x · Wᵀ` with `W: [out, in]` the matrix of
    /// `structure` holding `values: [nnz]` at its kept entries (the values stored in `structure`
    /// itself are ignored). f32 runs the sparse kernels; other float dtypes (f64, for gradient
    /// checks) run an exact dense path. `x` and `values` must share the dtype.
    pub fn sparse_linear(&self, values: &Var, structure: &SparseTensor) -> Result<Var> {
        let [_, cols] = structure.shape();
        let op = "Var::sparse_linear";
        if self.rank() == 0 || *self.dims().last().expect("rank ≥ 1") != cols {
            return Err(Error::invalid(
                op,
                format!("expected input (..., {cols}), got {}", self.shape()),
            ));
        }
        if values.dims() != [structure.nnz()] {
            return Err(Error::invalid(
                op,
                format!(
                    "expected [{}] values, got {}",
                    structure.nnz(),
                    values.shape()
                ),
            ));
        }
        if values.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch {
                op,
                lhs: self.dtype(),
                rhs: values.dtype(),
            });
        }
        let y = forward(self.tensor(), values.tensor(), structure)?;
        Ok(Var::record(y, &[self, values], || {
            Op::SparseLinear(self.clone(), values.clone(), structure.clone())
        }))
    }
}

/// The dense `[rows, cols]` matrix with `values` at the kept entries (the exact path).
fn dense(values: &Tensor, structure: &SparseTensor) -> Result<Tensor> {
    let [rows, cols] = structure.shape();
    let mut w = vec![0f64; rows * cols];
    for (p, v) in structure
        .kept_positions()
        .into_iter()
        .zip(values.to_vec_f64())
    {
        w[p] = v;
    }
    Tensor::from_vec(w, [rows, cols])?.to_dtype(values.dtype())
}

fn forward(x: &Tensor, values: &Tensor, s: &SparseTensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        return s.with_values(values.clone())?.matmul_nt(x);
    }
    x.matmul(&dense(values, s)?.t()?)
}

/// `(dx, dvalues)` for the output gradient `g: (..., out)`; each only when asked for.
pub(crate) fn backward(
    x: &Tensor,
    values: &Tensor,
    s: &SparseTensor,
    g: &Tensor,
    want_dx: bool,
    want_dvalues: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    if x.dtype() == DType::F32 {
        let s = s.with_values(values.clone())?;
        let dx = want_dx.then(|| s.matmul_nn(g)).transpose()?;
        let dv = want_dvalues
            .then(|| s.weight_grad(&g.contiguous()?, &x.contiguous()?))
            .transpose()?;
        return Ok((dx, dv));
    }
    let [rows, cols] = s.shape();
    let dx = want_dx.then(|| g.matmul(&dense(values, s)?)).transpose()?;
    let dv = want_dvalues
        .then(|| -> Result<Tensor> {
            // dW = gᵀ · x over all leading positions, then its kept entries.
            let m = x.elem_count() / cols.max(1);
            let g2 = g.reshape([m, rows])?;
            let x2 = x.reshape([m, cols])?;
            let dw = g2.t()?.matmul(&x2)?.contiguous()?.to_vec_f64();
            let dv: Vec<f64> = s.kept_positions().into_iter().map(|p| dw[p]).collect();
            Tensor::from_vec(dv, [s.nnz()])?.to_dtype(values.dtype())
        })
        .transpose()?;
    Ok((dx, dv))
}
