//! CPU compute kernels for shears: plain slices in, plain slices out, no tensor type.
//!
//! Every kernel `op` has a plain scalar twin `op_ref`; property tests compare them. Kernels trust
//! their callers: lengths are checked once with `assert!` at entry, and the tensor crate checks
//! shapes before it calls in.
//!
//! ```
//! use shears_kernels::gemm::{gemm, MatRef};
//! // C[2x2] = A[2x3] · B[3x2], B given transposed (as a [2, 3] row-major buffer) with no copy.
//! let a = [1f32, 2., 3., 4., 5., 6.];
//! let bt = [1f32, 0., 1., 0., 1., 0.];
//! let mut c = [0f32; 4];
//! gemm(2, 2, 3, MatRef::new(&a, 3, 1), MatRef::new(&bt, 1, 3), &mut c);
//! assert_eq!(c, [4., 2., 10., 5.]);
//! ```
#![warn(missing_docs)]
// Kernels take raw dimensions, strides and pointers; bundling them would only obscure the math.
#![allow(clippy::too_many_arguments)]

pub mod cpu;
pub mod fused;
pub mod gemm;
pub mod gemv;
pub mod limits;
pub mod linalg;
pub mod quant;
pub mod reduce;
mod send_ptr;
pub mod softmax;
pub mod sparse;
#[doc(hidden)]
pub mod testing;

/// The float types the kernels compute in.
pub trait Float:
    num_traits::Float + Send + Sync + Copy + std::fmt::Debug + Default + 'static
{
}
impl Float for f32 {}
impl Float for f64 {}
