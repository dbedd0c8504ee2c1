//! Distillation losses for sparse fine-tuning: SquareHead (a per-layer, normalised L2 loss
//! between the student's and the teacher's hidden states), logit KD and the LM cross-entropy,
//! combined with weights as the reference code combines them.
//!
//! SquareHead is Kurtic et al., "Sparse Fine-tuning for Inference Acceleration of Large Language
//! Models" (arXiv 2310.06927), as `IST-DASLab/SparseFinetuning`'s `KnowledgeDistillation`
//! computes it (see `shared/ALGORITHMS.md`, "SquareHead"):
//!
//! `SQ = Σ_{l=1..L} mean((h_s^l − h_t^l)²) / (mean((h_t^l)²) + ε)`, ε = 2⁻⁷ (bf16 epsilon),
//!
//! where `h^l` is HF's `hidden_states[l]`: the raw output of decoder layer `l − 1` for `l < L`
//! and the last layer's output after the final norm for `l = L` (the embeddings, `l = 0`, are not
//! a term). Both means run over every token and hidden unit of the batch (one ratio per layer
//! per batch); the layer terms are summed, not averaged.
//!
//! ```
//! use shears_autograd::Var;
//! use shears_pruning::distill::{squarehead, SQUAREHEAD_EPS};
//! use shears_tensor::Tensor;
//! let teacher = vec![Tensor::from_vec(vec![1.0f32, -1.0, 2.0, 0.0], [1, 2, 2])?];
//! let student = vec![Var::constant(Tensor::from_vec(vec![1.0f32, 0.0, 2.0, 1.0], [1, 2, 2])?)];
//! let (loss, terms) = squarehead(&student, &teacher)?;
//! // mean((s − t)²) = 2/4, mean(t²) = 6/4.
//! let expected = 0.5 / (1.5 + SQUAREHEAD_EPS);
//! assert!((loss.tensor().to_scalar::<f32>()? as f64 - expected).abs() < 1e-6);
//! assert_eq!(terms.len(), 1);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use shears_autograd::{nn, Var};
use shears_tensor::{DType, Error, Result, Tensor};

/// ε of the SquareHead denominator: the bf16 machine epsilon, 2⁻⁷, as the reference code uses
/// (`torch.finfo(torch.bfloat16).eps`).
pub const SQUAREHEAD_EPS: f64 = 1.0 / 128.0;

/// The weights of the loss terms: `loss = ce·CE + kd·KL + squarehead·SQ`. The default is the
/// reference's (`h_ce = 1`, `h_sq = 1`, `h_kl = 0`, `T = 1`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    /// Weight of the next-token cross-entropy on the data.
    pub ce: f64,
    /// Weight of the logit distillation term (`T²`-scaled KL from teacher to student).
    pub kd: f64,
    /// Weight of the SquareHead term.
    pub squarehead: f64,
    /// Softmax temperature of the KD term.
    pub temperature: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            ce: 1.0,
            kd: 0.0,
            squarehead: 1.0,
            temperature: 1.0,
        }
    }
}

impl LossWeights {
    /// Parses a comma list of `name[=weight]` with names `ce`, `kd` and `squarehead` (or `sq`);
    /// terms not named get weight 0, a name without a weight gets 1: `"squarehead,ce"` is the
    /// default, `"kd"` logit distillation alone, `"squarehead=1,ce=0.5"`.
    pub fn parse(s: &str) -> Result<LossWeights> {
        const OP: &str = "LossWeights::parse";
        let mut w = LossWeights {
            ce: 0.0,
            kd: 0.0,
            squarehead: 0.0,
            temperature: 1.0,
        };
        let mut seen = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once('=') {
                Some((n, v)) => {
                    let v: f64 = v
                        .trim()
                        .parse()
                        .map_err(|_| Error::invalid(OP, format!("bad weight {v:?} in {part:?}")))?;
                    (n.trim(), v)
                }
                None => (part, 1.0),
            };
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(Error::invalid(
                    OP,
                    format!("the weight of {name} must be finite and >= 0, got {weight}"),
                ));
            }
            let slot = match name {
                "ce" => &mut w.ce,
                "kd" | "kl" => &mut w.kd,
                "squarehead" | "sq" => &mut w.squarehead,
                _ => {
                    return Err(Error::invalid(
                        OP,
                        format!("unknown loss {name:?} (expected ce, kd or squarehead)"),
                    ))
                }
            };
            if seen.contains(&name) {
                return Err(Error::invalid(OP, format!("{name} is named twice")));
            }
            seen.push(name);
            *slot = weight;
        }
        if w.ce == 0.0 && w.kd == 0.0 && w.squarehead == 0.0 {
            return Err(Error::invalid(
                OP,
                format!("{s:?} gives every loss term weight 0"),
            ));
        }
        Ok(w)
    }

    /// Whether a teacher model is needed (a KD or SquareHead term with a non-zero weight).
    pub fn needs_teacher(&self) -> bool {
        self.kd > 0.0 || self.squarehead > 0.0
    }

    /// `ce=1,squarehead=1` style, the terms with a non-zero weight.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, w) in [
            ("squarehead", self.squarehead),
            ("kd", self.kd),
            ("ce", self.ce),
        ] {
            if w > 0.0 {
                parts.push(format!("{name}={w}"));
            }
        }
        if self.kd > 0.0 && self.temperature != 1.0 {
            parts.push(format!("T={}", self.temperature));
        }
        parts.join(",")
    }
}

/// SquareHead of the student's hidden states against the teacher's, layer by layer (same count
/// and shapes, `(batch, seq, hidden)` each, as the module docs define them): the summed loss and
/// each layer's ratio as a number.
pub fn squarehead(student: &[Var], teacher: &[Tensor]) -> Result<(Var, Vec<f64>)> {
    const OP: &str = "squarehead";
    if student.len() != teacher.len() || student.is_empty() {
        return Err(Error::invalid(
            OP,
            format!(
                "{} student and {} teacher hidden states (need the same, at least one)",
                student.len(),
                teacher.len()
            ),
        ));
    }
    let mut total: Option<Var> = None;
    let mut terms = Vec::with_capacity(student.len());
    for (l, (s, t)) in student.iter().zip(teacher).enumerate() {
        if s.dims() != t.dims() {
            return Err(Error::shape_msg(
                OP,
                s.shape(),
                t.shape(),
                format!("hidden state {l}: the student's and the teacher's shapes differ"),
            ));
        }
        let t = t.to_dtype(s.dtype())?;
        let denom = t
            .sqr()?
            .mean_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            + SQUAREHEAD_EPS;
        let term = nn::mse(s, &Var::constant(t))?.mul_scalar(1.0 / denom)?;
        terms.push(term.tensor().to_dtype(DType::F64)?.to_scalar::<f64>()?);
        total = Some(match total {
            None => term,
            Some(acc) => acc.add(&term)?,
        });
    }
    Ok((total.expect("at least one layer"), terms))
}

/// The hidden states SquareHead compares, from a forward pass's per-layer outputs and its final
/// normed output: the outputs of decoder layers `0..L−1` and then the normed last one (HF's
/// `hidden_states[1..=L]`).
pub fn squarehead_states<T: Clone>(layer_outputs: &[T], normed: &T) -> Vec<T> {
    let keep = layer_outputs.len().saturating_sub(1);
    layer_outputs[..keep]
        .iter()
        .cloned()
        .chain(std::iter::once(normed.clone()))
        .collect()
}

/// The logit distillation term: `T² · mean over rows of KL(softmax(z_t/T) ‖ softmax(z_s/T))`
/// for logits `(rows, vocab)` (every row a target token).
pub fn kd(student_logits: &Var, teacher_logits: &Tensor, temperature: f64) -> Result<Var> {
    nn::kl_div_with_temperature(
        student_logits,
        &Var::constant(teacher_logits.to_dtype(student_logits.dtype())?),
        temperature,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_loss_lists() {
        assert_eq!(
            LossWeights::parse("squarehead,ce").unwrap(),
            LossWeights::default()
        );
        let w = LossWeights::parse("kd=2, ce=0.5").unwrap();
        assert_eq!((w.kd, w.ce, w.squarehead), (2.0, 0.5, 0.0));
        assert!(LossWeights::parse("ce").unwrap().ce == 1.0);
        assert!(!LossWeights::parse("ce").unwrap().needs_teacher());
        for bad in ["", "ce=0", "mse", "ce,ce", "ce=-1", "kd=x", "ce=nan"] {
            assert!(LossWeights::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn squarehead_states_are_hf_hidden_states_1_to_l() {
        assert_eq!(squarehead_states(&[1, 2, 3], &9), vec![1, 2, 9]);
        assert_eq!(squarehead_states(&[1], &9), vec![9]);
    }
}
