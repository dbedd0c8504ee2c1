//! Reverse-mode automatic differentiation for shears tensors.
//!
//! A [`Var`] is a [`Tensor`](shears_tensor::Tensor) plus an optional node of the recorded graph.
//! Ops record a node only when an input requires a gradient, so inference on constants pays one
//! branch per op. [`Var::backward`] walks the graph once in reverse and returns [`Grads`], one
//! gradient per parameter. Every rule lives in one exhaustive `match` (the `backward` module) and
//! is checked against f64 central finite differences in `tests/gradcheck.rs`. The [`optim`]
//! module holds the optimizers (SGD, AdamW with masks), gradient clipping, learning-rate
//! schedules and resumable checkpoints.
//!
//! One step of gradient descent on a linear regression `y ≈ x·w + b`:
//!
//! ```
//! use shears_autograd::{nn, Var};
//! use shears_tensor::{DType, Tensor};
//! let x = Var::constant(Tensor::randn([8, 3], 0.0, 1.0, DType::F64, 0)?);
//! let w_true = Tensor::from_vec(vec![1.0f64, -2.0, 0.5], [3, 1])?;
//! let y = Var::constant(x.tensor().matmul(&w_true)?.add_scalar(0.3)?);
//!
//! let mut w = Var::param(Tensor::zeros([3, 1], DType::F64)?);
//! let mut b = Var::param(Tensor::zeros([1], DType::F64)?);
//! let loss = nn::mse(&x.matmul(&w)?.add(&b)?, &y)?;
//! let grads = loss.backward()?;
//! let lr = 0.1;
//! w = Var::param(w.tensor().sub(&grads.get(&w).unwrap().mul_scalar(lr)?)?);
//! b = Var::param(b.tensor().sub(&grads.get(&b).unwrap().mul_scalar(lr)?)?);
//!
//! let new_loss = nn::mse(&x.matmul(&w)?.add(&b)?, &y)?;
//! assert!(new_loss.tensor().to_scalar::<f64>()? < loss.tensor().to_scalar::<f64>()?);
//! # Ok::<(), shears_tensor::Error>(())
//! ```
#![warn(missing_docs)]

mod backward;
pub mod fused;
pub mod nn;
mod ops;
pub mod optim;
pub mod sparse;
mod var;

pub use var::{is_grad_enabled, no_grad, with_grad_enabled, Grads, Var, VarId};
