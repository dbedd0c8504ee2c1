//! Stochastic gradient descent with (Nesterov) momentum.

use super::{check_state, check_unique, Optimizer, Param};
use crate::Grads;
use shears_tensor::{Error, Result, Tensor};
use std::collections::BTreeMap;

/// Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay, as in
/// `torch.optim.SGD` without dampening:
/// `g ← g + wd·p; b ← μ·b + g (b₁ = g); g ← nesterov ? g + μ·b : b; p ← p − lr·g`.
#[derive(Debug, Clone)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor μ (0 disables the buffer).
    pub momentum: f64,
    /// Nesterov momentum (needs `momentum > 0`).
    pub nesterov: bool,
    /// L2 penalty added to the gradient (coupled, unlike [`AdamW`](super::AdamW)).
    pub weight_decay: f64,
    buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    /// Plain SGD with learning rate `lr`; set the other fields directly.
    pub fn new(lr: f64) -> Sgd {
        Sgd {
            lr,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            buffers: BTreeMap::new(),
        }
    }
}

const MOMENTUM: &str = ".momentum_buffer";

impl Optimizer for Sgd {
    fn kind(&self) -> &'static str {
        "sgd"
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn step(&mut self, params: &mut [Param], grads: &Grads) -> Result<()> {
        check_unique("Sgd::step", params)?;
        for p in params.iter_mut() {
            let Some(mut g) = p.masked_grad("Sgd::step", grads)? else {
                continue;
            };
            let w = p.tensor().clone();
            if self.weight_decay != 0.0 {
                g = g.add(&w.mul_scalar(self.weight_decay)?)?;
            }
            if self.momentum != 0.0 {
                let buf = match self.buffers.remove(p.name()) {
                    Some(b) => {
                        check_state("Sgd::step", p, &b)?;
                        b.mul_scalar(self.momentum)?.add(&g)?
                    }
                    None => g.clone(),
                };
                g = if self.nesterov {
                    g.add(&buf.mul_scalar(self.momentum)?)?
                } else {
                    buf.clone()
                };
                self.buffers.insert(p.name().to_string(), buf);
            }
            p.set(w.sub(&g.mul_scalar(self.lr)?)?)?;
        }
        Ok(())
    }
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.buffers
            .iter()
            .map(|(n, b)| (format!("{n}{MOMENTUM}"), b.clone()))
            .collect()
    }
    fn load_state_tensors(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut buffers = BTreeMap::new();
        for (key, t) in state {
            let Some(name) = key.strip_suffix(MOMENTUM) else {
                return Err(Error::invalid(
                    "Sgd::load_state_tensors",
                    format!("unexpected state tensor '{key}'"),
                ));
            };
            buffers.insert(name.to_string(), t.clone());
        }
        self.buffers = buffers;
        Ok(())
    }
}
