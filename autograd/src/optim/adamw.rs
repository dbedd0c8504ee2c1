//! AdamW with decoupled weight decay.

use super::{check_state, check_unique, Optimizer, Param};
use crate::Grads;
use shears_tensor::{AdamWStep, DType, Error, Result, Tensor};
use std::collections::BTreeMap;

/// AdamW (Loshchilov & Hutter 2019, Algorithm 2), as `torch.optim.AdamW`: per parameter,
/// `t ← t+1; p ← p − lr·wd·p; m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
/// p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)`.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the bias-corrected √v.
    pub eps: f64,
    /// Decoupled weight decay, multiplied by `lr`.
    pub weight_decay: f64,
    state: BTreeMap<String, AdamState>,
}

#[derive(Debug, Clone)]
struct AdamState {
    step: i64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

impl AdamW {
    /// AdamW with learning rate `lr` and PyTorch's defaults: β = (0.9, 0.999), ε = 1e-8,
    /// weight decay 0.01.
    pub fn new(lr: f64) -> AdamW {
        AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            state: BTreeMap::new(),
        }
    }
}

const EXP_AVG: &str = ".exp_avg";
const EXP_AVG_SQ: &str = ".exp_avg_sq";
const STEP: &str = ".step";

impl Optimizer for AdamW {
    fn kind(&self) -> &'static str {
        "adamw"
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn step(&mut self, params: &mut [Param], grads: &Grads) -> Result<()> {
        check_unique("AdamW::step", params)?;
        for p in params.iter_mut() {
            let Some(g) = p.masked_grad("AdamW::step", grads)? else {
                continue;
            };
            let st = match self.state.remove(p.name()) {
                Some(st) => {
                    check_state("AdamW::step", p, &st.exp_avg)?;
                    check_state("AdamW::step", p, &st.exp_avg_sq)?;
                    st
                }
                None => AdamState {
                    step: 0,
                    exp_avg: g.zeros_like()?,
                    exp_avg_sq: g.zeros_like()?,
                },
            };
            let step = st.step + 1;
            // Masked entries: g = 0 there, so both moments stay exactly 0. One fused pass, the
            // same arithmetic as w·(1 − lr·wd) − m̂ / (√v̂ + ε) composed from elementwise ops.
            let (w, exp_avg, exp_avg_sq) = p.tensor().adamw_step(
                &g,
                &st.exp_avg,
                &st.exp_avg_sq,
                &AdamWStep {
                    lr: self.lr,
                    beta1: self.beta1,
                    beta2: self.beta2,
                    eps: self.eps,
                    weight_decay: self.weight_decay,
                    step: step as u64,
                },
            )?;
            p.set(w)?;
            self.state.insert(
                p.name().to_string(),
                AdamState {
                    step,
                    exp_avg,
                    exp_avg_sq,
                },
            );
        }
        Ok(())
    }
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(3 * self.state.len());
        for (n, st) in &self.state {
            out.push((format!("{n}{EXP_AVG}"), st.exp_avg.clone()));
            out.push((format!("{n}{EXP_AVG_SQ}"), st.exp_avg_sq.clone()));
            out.push((
                format!("{n}{STEP}"),
                Tensor::from_vec(vec![st.step], [1]).expect("one element for shape [1]"),
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
    fn load_state_tensors(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        const OP: &str = "AdamW::load_state_tensors";
        let mut out = BTreeMap::new();
        for key in state.keys() {
            let Some(name) = key.strip_suffix(STEP) else {
                if key.ends_with(EXP_AVG) || key.ends_with(EXP_AVG_SQ) {
                    continue;
                }
                return Err(Error::invalid(
                    OP,
                    format!("unexpected state tensor '{key}'"),
                ));
            };
            let get = |suffix: &str| {
                state
                    .get(&format!("{name}{suffix}"))
                    .cloned()
                    .ok_or_else(|| {
                        Error::invalid(OP, format!("state of '{name}' lacks '{name}{suffix}'"))
                    })
            };
            let step = state[key].to_dtype(DType::I64)?.to_vec::<i64>()?;
            let [step] = step[..] else {
                return Err(Error::invalid(OP, format!("'{key}' must hold one value")));
            };
            out.insert(
                name.to_string(),
                AdamState {
                    step,
                    exp_avg: get(EXP_AVG)?,
                    exp_avg_sq: get(EXP_AVG_SQ)?,
                },
            );
        }
        self.state = out;
        Ok(())
    }
}
