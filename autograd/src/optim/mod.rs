//! Optimizers ([`Sgd`], [`AdamW`]), gradient clipping by global norm, learning-rate schedules and
//! bit-exact training checkpoints.
//!
//! Papers: AdamW is Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019),
//! Algorithm 2 with the bias-corrected Adam step of Kingma & Ba (2015), Algorithm 1; the update
//! order and the placement of `eps` follow PyTorch's `torch.optim.AdamW`. SGD with momentum and
//! Nesterov momentum follows `torch.optim.SGD` (Sutskever et al. 2013, eq. 3–4, in PyTorch's
//! reformulation, no dampening).
//!
//! A [`Param`] owns the current value of one trainable tensor as a [`Var::param`] leaf. Leaves are
//! immutable, so every optimizer step replaces the leaf with a fresh one: build the forward graph
//! from [`Param::var`] after each step. A parameter may carry a fixed 0/1 mask; its zero entries
//! stay exactly `0.0` through gradients, momentum, Adam moments and weight decay (this is how
//! pruned weights stay pruned during fine-tuning).
//!
//! ```
//! use shears_autograd::optim::{AdamW, LrSchedule, Optimizer, Param};
//! use shears_autograd::{nn, Var};
//! use shears_tensor::{DType, Tensor};
//! let x = Var::constant(Tensor::randn([16, 3], 0.0, 1.0, DType::F64, 0)?);
//! let w_true = Tensor::from_vec(vec![1.0f64, -2.0, 0.5], [3, 1])?;
//! let y = Var::constant(x.tensor().matmul(&w_true)?);
//!
//! // The second weight is pruned: it stays exactly 0.0 while the others fit.
//! let mask = Tensor::from_vec(vec![1u8, 0, 1], [3, 1])?;
//! let mut params = vec![Param::new("w", Tensor::ones([3, 1], DType::F64)?)?.with_mask(mask)?];
//! let mut opt = AdamW::new(0.1);
//! let schedule = LrSchedule::WarmupCosine { warmup: 5, total: 100, min_ratio: 0.1 };
//! for step in 0..100 {
//!     opt.set_lr(schedule.lr_at(step, 0.1));
//!     let loss = nn::mse(&x.matmul(params[0].var())?, &y)?;
//!     let grads = loss.backward()?;
//!     opt.step(&mut params, &grads)?;
//! }
//! assert_eq!(params[0].tensor().to_vec::<f64>()?[1], 0.0);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::{Grads, Var};
use shears_tensor::{DType, Error, Result, Tensor};
use std::collections::{BTreeMap, HashSet};

/// One trainable tensor: its checkpoint name, its current value (a [`Var::param`] leaf) and an
/// optional fixed mask whose zero entries are held at exactly `0.0`.
#[derive(Debug, Clone)]
pub struct Param {
    name: String,
    var: Var,
    /// u8, 1 = trainable, 0 = held at 0.0; same shape as the value.
    keep: Option<Tensor>,
}

impl Param {
    /// A parameter named `name` (its checkpoint key) with initial value `value` (f32 or f64, any
    /// shape). The optimizer computes in this dtype.
    pub fn new(name: impl Into<String>, value: Tensor) -> Result<Param> {
        check_float("Param::new", value.dtype())?;
        Ok(Param {
            name: name.into(),
            var: Var::param(value),
            keep: None,
        })
    }

    /// Attaches a fixed mask (same shape as the value; u8, integer or float, non-zero = trainable)
    /// and zeroes the value where the mask is zero.
    pub fn with_mask(mut self, mask: Tensor) -> Result<Param> {
        if mask.shape() != self.var.shape() {
            return Err(Error::shape(
                "Param::with_mask",
                mask.shape(),
                self.var.shape(),
            ));
        }
        // A contiguous u8 mask of 0s and 1s is kept as given (shared, not copied: a model's
        // masked layers and their parameters hold one mask).
        let is_01 = mask.dtype() == DType::U8
            && mask.is_contiguous()
            && mask
                .as_slice::<u8>()
                .is_ok_and(|m| m.iter().all(|&v| v <= 1));
        self.keep = Some(if is_01 { mask } else { mask.ne_zero()? });
        let value = self.var.tensor().clone();
        self.set(value)?;
        Ok(self)
    }

    /// The checkpoint name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The current value as a graph leaf; valid until the next [`Param::set`] or optimizer step.
    pub fn var(&self) -> &Var {
        &self.var
    }
    /// The current value.
    pub fn tensor(&self) -> &Tensor {
        self.var.tensor()
    }
    /// The u8 mask (1 = trainable, 0 = held at `0.0`), if any.
    pub fn mask(&self) -> Option<&Tensor> {
        self.keep.as_ref()
    }

    /// Replaces the value (same shape and dtype) with a fresh leaf, zeroing masked entries.
    pub fn set(&mut self, value: Tensor) -> Result<()> {
        check_like("Param::set", &self.name, value.dtype(), self.var.tensor())?;
        if value.shape() != self.var.shape() {
            return Err(Error::shape("Param::set", value.shape(), self.var.shape()));
        }
        self.var = Var::param(self.apply_mask(value)?);
        Ok(())
    }

    /// `x` with the masked entries set to exactly `0.0` (`x` itself without a mask).
    pub fn apply_mask(&self, x: Tensor) -> Result<Tensor> {
        match &self.keep {
            // `where_cond` writes a literal +0.0; multiplying by the mask would turn NaN or inf
            // into NaN and could leave -0.0.
            Some(keep) => keep.where_cond(&x, &x.zeros_like()?),
            None => Ok(x),
        }
    }

    /// This parameter's gradient in `grads` with masked entries zeroed, checked for shape and
    /// dtype; `None` when the sweep did not reach it.
    fn masked_grad(&self, op: &'static str, grads: &Grads) -> Result<Option<Tensor>> {
        let Some(g) = grads.get(&self.var) else {
            return Ok(None);
        };
        check_like(op, &self.name, g.dtype(), self.var.tensor())?;
        if g.shape() != self.var.shape() {
            return Err(Error::shape(op, g.shape(), self.var.shape()));
        }
        self.apply_mask(g.clone()).map(Some)
    }
}

fn check_float(op: &'static str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F64 => Ok(()),
        dtype => Err(Error::UnsupportedDType {
            op,
            dtype,
            expected: "f32 or f64",
        }),
    }
}

fn check_like(op: &'static str, name: &str, dtype: DType, value: &Tensor) -> Result<()> {
    if dtype != value.dtype() {
        return Err(Error::invalid(
            op,
            format!("parameter '{name}' is {} but got {dtype}", value.dtype()),
        ));
    }
    Ok(())
}

/// Loaded state must match its parameter exactly: a broadcastable shape would otherwise be
/// accepted silently by the elementwise ops.
fn check_state(op: &'static str, p: &Param, state: &Tensor) -> Result<()> {
    if state.shape() != p.tensor().shape() || state.dtype() != p.tensor().dtype() {
        return Err(Error::invalid(
            op,
            format!(
                "state of parameter '{}' is {} {}, the parameter is {} {}",
                p.name(),
                state.shape(),
                state.dtype(),
                p.tensor().shape(),
                p.tensor().dtype()
            ),
        ));
    }
    Ok(())
}

fn check_unique(op: &'static str, params: &[Param]) -> Result<()> {
    let mut seen = HashSet::new();
    for p in params {
        if !seen.insert(p.name()) {
            return Err(Error::invalid(
                op,
                format!("two parameters are named '{}'", p.name()),
            ));
        }
    }
    Ok(())
}

/// A first-order optimizer whose state is keyed by parameter name, so it can be saved and loaded
/// into fresh objects.
pub trait Optimizer {
    /// A short tag stored in checkpoints (`"sgd"`, `"adamw"`); loading checks it.
    fn kind(&self) -> &'static str;
    /// The current learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate (call with [`LrSchedule::lr_at`] before each step).
    fn set_lr(&mut self, lr: f64);
    /// Updates every parameter that has a gradient in `grads` (others are skipped, their state
    /// untouched) and replaces its leaf. Parameter names must be unique.
    fn step(&mut self, params: &mut [Param], grads: &Grads) -> Result<()>;
    /// The optimizer state as `("<param>.<slot>", tensor)` pairs, sorted by key.
    fn state_tensors(&self) -> Vec<(String, Tensor)>;
    /// Replaces the state with `state` as written by [`Optimizer::state_tensors`].
    fn load_state_tensors(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()>;
}

mod adamw;
mod checkpoint;
mod clip;
mod schedule;
mod sgd;

pub use adamw::AdamW;
pub use checkpoint::{load_state, save_state};
pub use clip::clip_grad_norm;
pub use schedule::LrSchedule;
pub use sgd::Sgd;
