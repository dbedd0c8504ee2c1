//! The gradient checker shared by the gradient-check suites: analytic gradients against f64
//! central finite differences.
//!
//! Tolerances. For `L(x) = Σ f(x) ⊙ r` the central difference `(L(x+h) − L(x−h)) / 2h` has a
//! truncation error `h²/6 · L'''` (≈ 1e-12 · L''' for h = 1e-6) and a rounding error of about
//! `ε · Σ|f ⊙ r| / h` (ε = 2.2e-16, so ≈ 2e-10 per unit of the summed magnitude). We therefore
//! compare with `rtol = 1e-6` and `atol = 1e-8 · max(1, Σ|f ⊙ r|)`: about 50× the rounding
//! noise, yet far below any error a wrong rule produces (those are O(|gradient|)).
#![allow(dead_code)]

use proptest::prelude::*;
use shears_autograd::{no_grad, Grads, Var};
use shears_tensor::{DType, Result, Tensor};

pub const H: f64 = 1e-6;
pub const RTOL: f64 = 1e-6;
pub const ATOL: f64 = 1e-8;

/// `f(inputs)` and the gradients of `Σ f(inputs) ⊙ r` for every input (as parameters), with the
/// random weights `r` and the absolute tolerance `ATOL · max(1, Σ|f ⊙ r|)`.
pub struct Analytic {
    pub params: Vec<Var>,
    pub out: Var,
    pub r: Tensor,
    pub grads: Grads,
    pub atol: f64,
}

/// Runs `f` on `inputs` (converted to f64) as parameters and differentiates `Σ f ⊙ r`.
pub fn analytic(f: &dyn Fn(&[Var]) -> Result<Var>, inputs: &[Tensor]) -> Result<Analytic> {
    let inputs: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_dtype(DType::F64))
        .collect::<Result<_>>()?;
    let params: Vec<Var> = inputs.iter().cloned().map(Var::param).collect();
    let out = f(&params)?;
    let r = Tensor::randn(out.shape(), 0.0, 1.0, DType::F64, 0x5EED)?;
    let weighted = out.mul(&Var::constant(r.clone()))?;
    let scale: f64 = weighted.tensor().to_vec_f64().iter().map(|v| v.abs()).sum();
    let grads = weighted.sum_all()?.backward()?;
    Ok(Analytic {
        params,
        out,
        r,
        grads,
        atol: ATOL * scale.max(1.0),
    })
}

/// The central-difference gradient of `Σ f(inputs) ⊙ r` with respect to input `i`, evaluated
/// under `no_grad` with every input a constant.
pub fn numeric_grad(
    f: &dyn Fn(&[Var]) -> Result<Var>,
    inputs: &[Tensor],
    r: &Tensor,
    i: usize,
) -> Result<Vec<f64>> {
    let inputs: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_dtype(DType::F64))
        .collect::<Result<_>>()?;
    let loss = |xs: &[Tensor]| -> Result<f64> {
        no_grad(|| {
            let vars: Vec<Var> = xs.iter().cloned().map(Var::constant).collect();
            let y = f(&vars)?;
            assert!(!y.requires_grad(), "no_grad recorded a graph");
            Ok(y.tensor().mul(r)?.to_vec_f64().iter().sum())
        })
    };
    let x = &inputs[i];
    let base = x.to_vec_f64();
    (0..base.len())
        .map(|j| {
            let at = |d: f64| -> Result<f64> {
                let mut v = base.clone();
                v[j] += d;
                let mut xs = inputs.clone();
                xs[i] = Tensor::from_vec(v, x.shape())?;
                loss(&xs)
            };
            Ok((at(H)? - at(-H)?) / (2.0 * H))
        })
        .collect()
}

/// Compares the analytic gradient of `Σ f(x) ⊙ r` (for a fixed random `r`) with f64 central
/// finite differences, for every element of every input. Inputs are converted to f64.
pub fn check_grad(
    f: impl Fn(&[Var]) -> Result<Var>,
    inputs: &[Tensor],
) -> std::result::Result<(), String> {
    let e = |err: shears_tensor::Error| err.to_string();
    let a = analytic(&f, inputs).map_err(e)?;
    for (i, x) in inputs.iter().enumerate() {
        let analytic = match a.grads.get(&a.params[i]) {
            Some(g) => {
                if g.dims() != x.dims() {
                    return Err(format!(
                        "input {i}: gradient shape {:?} vs {:?}",
                        g.dims(),
                        x.dims()
                    ));
                }
                g.to_vec_f64()
            }
            None => vec![0.0; x.elem_count()],
        };
        let numeric = numeric_grad(&f, inputs, &a.r, i).map_err(e)?;
        for (j, (&an, &nu)) in analytic.iter().zip(&numeric).enumerate() {
            // Written so that a NaN on either side fails.
            let close = (an - nu).abs() <= a.atol + RTOL * nu.abs();
            if !close {
                return Err(format!(
                    "input {i} {:?}, element {j}: analytic {an}, numeric {nu} (atol {})",
                    x.dims(),
                    a.atol
                ));
            }
        }
    }
    Ok(())
}

pub fn pc(r: std::result::Result<(), String>) -> std::result::Result<(), TestCaseError> {
    r.map_err(TestCaseError::fail)
}
