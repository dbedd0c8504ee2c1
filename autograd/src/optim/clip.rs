//! Gradient clipping by global L2 norm.

use super::Param;
use crate::Grads;
use shears_tensor::{Error, Result};

/// Scales the gradients of `params` so that their global L2 norm is at most `max_norm`, in
/// place, and returns the norm before clipping (as `torch.nn.utils.clip_grad_norm_`: the factor
/// is `max_norm / (norm + 1e-6)`, applied only when below 1). Masked entries are zeroed first,
/// since they never reach the parameter. Parameters without a gradient are skipped. A NaN or
/// infinite norm is an error naming the first parameter with a non-finite gradient.
pub fn clip_grad_norm(grads: &mut Grads, params: &[Param], max_norm: f64) -> Result<f64> {
    const OP: &str = "clip_grad_norm";
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::invalid(
            OP,
            format!("max_norm must be finite and positive, got {max_norm}"),
        ));
    }
    let mut masked = Vec::new();
    let mut sum_sq = 0.0f64;
    let mut bad = None;
    for p in params {
        let Some(g) = p.masked_grad(OP, grads)? else {
            continue;
        };
        // Accumulate in f64 in a fixed order, so the norm is reproducible and f32 grads do not
        // overflow.
        let s: f64 = g.to_vec_f64().iter().map(|x| x * x).sum();
        if !s.is_finite() && bad.is_none() {
            bad = Some(p.name().to_string());
        }
        sum_sq += s;
        masked.push((p, g));
    }
    let norm = sum_sq.sqrt();
    if !norm.is_finite() {
        let which = bad.map_or(String::new(), |n| {
            format!(" (parameter '{n}' has a non-finite gradient)")
        });
        let what = if norm.is_nan() { "NaN" } else { "infinite" };
        return Err(Error::invalid(
            OP,
            format!("gradient norm is {what}{which}"),
        ));
    }
    let coef = max_norm / (norm + 1e-6);
    for (p, g) in masked {
        let g = if coef < 1.0 { g.mul_scalar(coef)? } else { g };
        grads.insert(p.var(), g);
    }
    Ok(norm)
}
