//! Helpers for tests across the workspace: the one closeness check with per-dtype tolerances.
//!
//! ```
//! use shears_tensor::{test_util, DType, Tensor};
//! let t = Tensor::from_vec(vec![1.0f32, 2.0], [2])?;
//! test_util::assert_tensor_close(&t, &[1.0, 2.0000001], None);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::{DType, Tensor};

pub mod fuzz;

/// Default `(atol, rtol)` for comparing results computed in `dtype` with an f64 reference.
pub fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-10, 1e-10),
        DType::F32 => (1e-5, 1e-5),
        DType::F16 => (2e-3, 2e-3),
        DType::BF16 => (1.6e-2, 1.6e-2),
        _ => (0.0, 0.0),
    }
}

/// Index and values of the first element where `|a - b| > atol + rtol·|b|`; NaN equals NaN and
/// infinities must match exactly.
pub fn first_mismatch(
    actual: &[f64],
    expected: &[f64],
    atol: f64,
    rtol: f64,
) -> Option<(usize, f64, f64)> {
    actual
        .iter()
        .zip(expected)
        .enumerate()
        .find_map(|(i, (&a, &b))| {
            let ok = if a.is_nan() || b.is_nan() {
                a.is_nan() && b.is_nan()
            } else if a.is_infinite() || b.is_infinite() {
                a == b
            } else {
                (a - b).abs() <= atol + rtol * b.abs()
            };
            (!ok).then_some((i, a, b))
        })
}

/// Panics with the first differing index unless `actual` ≈ `expected` elementwise (same length).
pub fn assert_close(actual: &[f64], expected: &[f64], atol: f64, rtol: f64) {
    assert_eq!(actual.len(), expected.len(), "assert_close: lengths differ");
    if let Some((i, a, b)) = first_mismatch(actual, expected, atol, rtol) {
        panic!("assert_close: element {i}: got {a}, expected {b} (atol {atol}, rtol {rtol})");
    }
}

/// [`assert_close`] on a tensor's elements, with `tol` or the dtype's [`tolerance`].
pub fn assert_tensor_close(actual: &Tensor, expected: &[f64], tol: Option<(f64, f64)>) {
    let (atol, rtol) = tol.unwrap_or_else(|| tolerance(actual.dtype()));
    assert_close(&actual.to_vec_f64(), expected, atol, rtol);
}
