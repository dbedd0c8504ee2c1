//! Composite functions and losses, built only from recorded primitives so their gradients come
//! from the primitive rules (and are covered by the same gradient checks).
//!
//! ```
//! use shears_autograd::{nn, Var};
//! use shears_tensor::{DType, Tensor};
//! let logits = Var::param(Tensor::from_vec(vec![2.0f64, 0.0, 0.0, 0.0, 2.0, 0.0], [2, 3])?);
//! let targets = Tensor::from_vec(vec![0i64, 1], [2])?;
//! let loss = nn::cross_entropy(&logits, &targets, None)?;
//! let expected = (1.0 + 2.0 * (-2.0f64).exp()).ln(); // −log softmax at the target
//! assert!((loss.tensor().to_scalar::<f64>()? - expected).abs() < 1e-12);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::var::Var;
use shears_tensor::{DType, Error, Result, Tensor};

/// RMSNorm (Zhang & Sennrich 2019, eq. 4) over the last dim:
/// `y = x / sqrt(mean(x², -1) + eps) · weight`.
///
/// `x: (.., hidden)`, `weight: (hidden)` → same shape as `x`.
pub fn rms_norm(x: &Var, weight: &Var, eps: f64) -> Result<Var> {
    let inv_rms = x.sqr()?.mean(-1, true)?.add_scalar(eps)?.pow_scalar(-0.5)?;
    x.mul(&inv_rms)?.mul(weight)
}

/// How the two halves of each rotated pair are laid out in a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs `(i, i + d/2)`: Hugging Face LLaMA's `rotate_half`.
    HalfSplit,
    /// Pairs `(2i, 2i + 1)`: Meta's original LLaMA code and GGUF.
    Interleaved,
}

/// Rotary position embedding (Su et al. 2021, eq. 34) composed from primitives, so its gradient
/// comes from theirs: each pair `(a, b)` of the last dim becomes
/// `(a·cos − b·sin, b·cos + a·sin)`.
///
/// `x: (.., seq, head_dim)` with `head_dim` even; `cos`, `sin`: `(seq, head_dim/2)` constants
/// (row `t` holds the angles of the position of `x`'s row `t`) → same shape as `x`.
pub fn rope(x: &Var, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Var> {
    const OP: &str = "rope";
    let dims = x.dims().to_vec();
    let d = *dims.last().unwrap_or(&0);
    if dims.len() < 2 || !d.is_multiple_of(2) {
        return Err(Error::invalid(
            OP,
            format!(
                "x must be (.., seq, head_dim) with an even head_dim, got {:?}",
                dims
            ),
        ));
    }
    let h = d / 2;
    let seq = dims[dims.len() - 2];
    if cos.dims() != [seq, h] || sin.dims() != [seq, h] {
        return Err(Error::shape_msg(
            OP,
            cos.shape(),
            sin.shape(),
            format!("cos and sin must be [{seq}, {h}]"),
        ));
    }
    let (c, s) = (Var::constant(cos.clone()), Var::constant(sin.clone()));
    let rotate = |a: &Var, b: &Var| -> Result<(Var, Var)> {
        Ok((a.mul(&c)?.sub(&b.mul(&s)?)?, b.mul(&c)?.add(&a.mul(&s)?)?))
    };
    match layout {
        RopeLayout::HalfSplit => {
            let (o1, o2) = rotate(&x.narrow(-1, 0, h)?, &x.narrow(-1, h, h)?)?;
            Var::cat(&[&o1, &o2], -1)
        }
        RopeLayout::Interleaved => {
            let mut pairs = dims.clone();
            pairs.pop();
            pairs.extend([h, 2]);
            let xp = x.reshape(pairs)?;
            let (o1, o2) = rotate(
                &xp.narrow(-1, 0, 1)?.squeeze(-1)?,
                &xp.narrow(-1, 1, 1)?.squeeze(-1)?,
            )?;
            Var::stack(&[&o1, &o2], -1)?.reshape(dims)
        }
    }
}

/// SiLU (a.k.a. swish), `x · σ(x)`, elementwise.
pub fn silu(x: &Var) -> Result<Var> {
    x.silu()
}

/// Mean cross-entropy of `logits: (N, C)` against class ids `targets: (N)` (i64, u32 or u8):
///
/// `loss = −(1/|V|) Σ_{n ∈ V} log_softmax(logits_n)[targets_n]`,
///
/// where `V` holds the rows whose target is not `ignore_index` (PyTorch's `reduction="mean"`;
/// 0 when every row is ignored). Computed through `log_softmax` and `gather`, so large logits
/// and `-inf` masks on non-target classes stay finite.
pub fn cross_entropy(logits: &Var, targets: &Tensor, ignore_index: Option<i64>) -> Result<Var> {
    const OP: &str = "cross_entropy";
    if logits.rank() != 2 || targets.rank() != 1 || targets.dims()[0] != logits.dims()[0] {
        return Err(Error::shape_msg(
            OP,
            logits.shape(),
            targets.shape(),
            "expected logits (N, C) and targets (N)",
        ));
    }
    if !targets.dtype().is_int() {
        return Err(Error::UnsupportedDType {
            op: OP,
            dtype: targets.dtype(),
            expected: "integer class ids (i64, u32, u8)",
        });
    }
    let tgt = targets.to_dtype(DType::I64)?;
    let lsm = logits.log_softmax(1)?;
    let Some(ignore) = ignore_index else {
        let picked = lsm.gather(1, &tgt.unsqueeze(1)?)?;
        return picked.mean_all()?.neg();
    };
    let valid = tgt.ne_scalar(ignore as f64)?;
    // Ignored rows gather class 0 (any in-range id would do) and are then zeroed.
    let safe = valid.where_cond(&tgt, &Tensor::zeros((), DType::I64)?)?;
    let picked = lsm
        .gather(1, &safe.unsqueeze(1)?)?
        .squeeze(1)?
        .masked_fill(&valid.eq_scalar(0.0)?, 0.0)?;
    let count = valid.to_vec_f64().iter().sum::<f64>().max(1.0);
    picked.sum_all()?.mul_scalar(-1.0 / count)
}

/// Mean squared error over all elements: `mean((pred − target)²)` (shapes broadcast).
pub fn mse(pred: &Var, target: &Var) -> Result<Var> {
    pred.sub(target)?.sqr()?.mean_all()
}

/// Distillation loss of Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network",
/// §2): the KL divergence between temperature-softened distributions over the last dim,
///
/// `loss = T² · (1/B) Σ_rows Σ_c p_c (log p_c − log q_c)`, with `p = softmax(teacher / T)`,
/// `q = softmax(student / T)` and `B` the number of rows (PyTorch's `batchmean`).
///
/// The `T²` factor keeps the gradient magnitude independent of `T`. Terms with `p_c = 0`
/// (for instance `-inf` teacher logits) contribute 0. Pass the teacher as a constant (or
/// [`Var::detach`] it) unless its gradient is wanted.
pub fn kl_div_with_temperature(student: &Var, teacher: &Var, temperature: f64) -> Result<Var> {
    const OP: &str = "kl_div_with_temperature";
    if student.shape() != teacher.shape() || student.rank() == 0 {
        return Err(Error::shape_msg(
            OP,
            student.shape(),
            teacher.shape(),
            "student and teacher logits must have one shape of rank >= 1",
        ));
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(Error::invalid(
            OP,
            format!("temperature must be positive, got {temperature}"),
        ));
    }
    let inv_t = 1.0 / temperature;
    let log_q = student.mul_scalar(inv_t)?.log_softmax(-1)?;
    let log_p = teacher.mul_scalar(inv_t)?.log_softmax(-1)?;
    let p = log_p.exp()?;
    let zero_p = p.tensor().eq_scalar(0.0)?;
    let terms = p.mul(&log_p.sub(&log_q)?)?.masked_fill(&zero_p, 0.0)?;
    let classes = *student.dims().last().expect("rank >= 1");
    let rows = (student.elem_count() / classes.max(1)).max(1) as f64;
    terms
        .sum_all()?
        .mul_scalar(temperature * temperature / rows)
}
