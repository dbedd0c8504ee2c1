//! Linear algebra on square matrices, computed in the tensor's own dtype (f32 or f64): Cholesky
//! factor, inverse from a factor, inverse of a symmetric positive-definite matrix, triangular
//! solves. SparseGPT (Frantar & Alistarh, 2023, Algorithm 1) needs exactly these for its inverse
//! Hessian `H⁻¹ = (L·Lᵀ)⁻¹` and the upper Cholesky factor of `H⁻¹`; the kernels, which follow
//! Golub & Van Loan §4.2 (Cholesky) and §3.1 (substitution), live in `shears_kernels::linalg`.
//!
//! ```
//! use shears_tensor::Tensor;
//! // A = [[4, 2], [2, 3]] = L·Lᵀ with L = [[2, 0], [1, √2]].
//! let a = Tensor::from_vec(vec![4f64, 2., 2., 3.], [2, 2])?;
//! let l = a.cholesky(false)?;
//! let lv = l.to_vec::<f64>()?;
//! let llt = |i: usize, j: usize| (0..2).map(|k| lv[i * 2 + k] * lv[j * 2 + k]).sum::<f64>();
//! assert!((llt(0, 0) - 4.).abs() < 1e-12 && (llt(1, 0) - 2.).abs() < 1e-12);
//! assert!((llt(1, 1) - 3.).abs() < 1e-12);
//! // A⁻¹ = [[3, -2], [-2, 4]] / 8, from A or from its factor.
//! let inv = a.inverse_spd()?.to_vec::<f64>()?;
//! assert!((inv[0] - 0.375).abs() < 1e-12 && (inv[1] + 0.25).abs() < 1e-12);
//! assert_eq!(l.cholesky_inverse(false)?.to_vec::<f64>()?, inv);
//! // A·x = b as L·y = b, then Lᵀ·x = y.
//! let b = Tensor::from_vec(vec![6f64, 5.], [2])?;
//! let x = l.triangular_solve(&b, false, false)?.to_vec::<f64>()?;
//! let x = l.triangular_solve(&Tensor::from_vec(x, [2])?, false, true)?;
//! assert!(x.to_vec::<f64>()?.iter().all(|v| (v - 1.).abs() < 1e-12));
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::{DType, Error, Result, Shape, Tensor, WithDType};
use shears_kernels::linalg::{self, CholeskyError, SingularError};
use shears_kernels::Float;

impl Tensor {
    /// Cholesky factor of a symmetric positive-definite matrix: `[n, n] → [n, n]`, lower `L` with
    /// `A = L·Lᵀ`, or upper `U` with `A = Uᵀ·U` when `upper`. Reads only that triangle of `self`
    /// (any layout); f32 or f64. Errors with [`Error::NotPositiveDefinite`] naming the first
    /// failing pivot.
    pub fn cholesky(&self, upper: bool) -> Result<Tensor> {
        const OP: &str = "cholesky";
        let n = square(self, OP)?;
        match self.dtype() {
            DType::F32 => factor::<f32>(self, n, upper, OP),
            DType::F64 => factor::<f64>(self, n, upper, OP),
            dtype => Err(unsupported(OP, dtype)),
        }
    }

    /// Inverse of `A` from its Cholesky factor `self`: `[n, n] → [n, n]`, `self` lower `L` with
    /// `A = L·Lᵀ` (or upper `U` with `A = Uᵀ·U` when `upper`; only that triangle is read), as
    /// `torch.cholesky_inverse`. The result is exactly symmetric. Errors with [`Error::Singular`]
    /// on a zero diagonal entry.
    pub fn cholesky_inverse(&self, upper: bool) -> Result<Tensor> {
        const OP: &str = "cholesky_inverse";
        let n = square(self, OP)?;
        match self.dtype() {
            DType::F32 => inverse_from_factor(&self.values::<f32>(), n, upper, OP),
            DType::F64 => inverse_from_factor(&self.values::<f64>(), n, upper, OP),
            dtype => Err(unsupported(OP, dtype)),
        }
    }

    /// Inverse of a symmetric positive-definite matrix via its Cholesky factor: `[n, n] → [n, n]`,
    /// exactly symmetric; only the lower triangle of `self` is read. Errors with
    /// [`Error::NotPositiveDefinite`] when the factorisation fails.
    pub fn inverse_spd(&self) -> Result<Tensor> {
        const OP: &str = "inverse_spd";
        let n = square(self, OP)?;
        match self.dtype() {
            DType::F32 => inverse_spd_as::<f32>(self, n, OP),
            DType::F64 => inverse_spd_as::<f64>(self, n, OP),
            dtype => Err(unsupported(OP, dtype)),
        }
    }

    /// Solves `op(self)·X = b` for triangular `self: [n, n]` (lower, or upper when `upper`; only
    /// that triangle is read), `op` the identity or the transpose (when `transpose`); `b: [n]` or
    /// `[n, k]` → `X` of `b`'s shape. Both f32 or both f64. Errors with [`Error::Singular`] on a
    /// zero or non-finite diagonal entry.
    pub fn triangular_solve(&self, b: &Tensor, upper: bool, transpose: bool) -> Result<Tensor> {
        const OP: &str = "triangular_solve";
        let n = square(self, OP)?;
        if !matches!(self.dtype(), DType::F32 | DType::F64) {
            return Err(unsupported(OP, self.dtype()));
        }
        if b.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch {
                op: OP,
                lhs: self.dtype(),
                rhs: b.dtype(),
            });
        }
        let nrhs = match *b.dims() {
            [m] if m == n => 1,
            [m, k] if m == n => k,
            _ => {
                return Err(Error::shape_msg(
                    OP,
                    self.shape(),
                    b.shape(),
                    format!("b must be [{n}] or [{n}, k]"),
                ))
            }
        };
        match self.dtype() {
            DType::F32 => solve::<f32>(self, b, n, nrhs, upper, transpose, OP),
            _ => solve::<f64>(self, b, n, nrhs, upper, transpose, OP),
        }
    }
}

/// `n` for a square `[n, n]` tensor, else a shape error naming `op`.
fn square(t: &Tensor, op: &'static str) -> Result<usize> {
    match *t.dims() {
        [r, c] if r == c => Ok(r),
        _ => {
            let r = t.dims().first().copied().unwrap_or(0);
            Err(Error::shape_msg(
                op,
                t.shape(),
                &Shape::from([r, r]),
                "expected a square 2-D matrix",
            ))
        }
    }
}

fn unsupported(op: &'static str, dtype: DType) -> Error {
    Error::UnsupportedDType {
        op,
        dtype,
        expected: "f32 or f64",
    }
}

fn not_pd(op: &'static str, e: CholeskyError) -> Error {
    Error::NotPositiveDefinite {
        op,
        pivot: e.pivot,
        value: e.value,
    }
}

fn singular(op: &'static str, e: SingularError) -> Error {
    Error::Singular {
        op,
        index: e.index,
        value: e.value,
    }
}

fn factor<T: WithDType + Float>(
    t: &Tensor,
    n: usize,
    upper: bool,
    op: &'static str,
) -> Result<Tensor> {
    let mut a = t.values::<T>().into_owned();
    let r = if upper {
        linalg::cholesky_upper(&mut a, n)
    } else {
        linalg::cholesky_lower(&mut a, n)
    };
    r.map_err(|e| not_pd(op, e))?;
    Tensor::from_vec(a, [n, n])
}

fn inverse_from_factor<T: WithDType + Float>(
    l: &[T],
    n: usize,
    upper: bool,
    op: &'static str,
) -> Result<Tensor> {
    let inv = linalg::cholesky_inverse(l, n, upper).map_err(|e| singular(op, e))?;
    Tensor::from_vec(inv, [n, n])
}

fn inverse_spd_as<T: WithDType + Float>(a: &Tensor, n: usize, op: &'static str) -> Result<Tensor> {
    let mut l = a.values::<T>().into_owned();
    linalg::cholesky_lower(&mut l, n).map_err(|e| not_pd(op, e))?;
    inverse_from_factor(&l, n, false, op)
}

fn solve<T: WithDType + Float>(
    t: &Tensor,
    b: &Tensor,
    n: usize,
    nrhs: usize,
    upper: bool,
    transpose: bool,
    op: &'static str,
) -> Result<Tensor> {
    let mut x = b.values::<T>().into_owned();
    linalg::tri_solve(&t.values::<T>(), n, &mut x, nrhs, upper, transpose)
        .map_err(|e| singular(op, e))?;
    Tensor::from_vec(x, b.shape().clone())
}
