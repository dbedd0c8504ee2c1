//! Bonsai: structured pruning with forward passes only (Dery et al. 2024, arXiv 2402.05406; the
//! reference code is ldery/Bonsai). Whole MLP channels (and, if asked, attention KV groups) leave
//! the model, in rounds, and the result is a smaller dense LLaMA with per-layer shapes.
//!
//! Each round, on the current model:
//! 1. **Prior** per unit from calibration activations: channel `j`: `mean_i |W_down[i, j]| ·
//!    sqrt(mean_tokens a_j²)` with `a = silu(gate·x) ⊙ (up·x)`; a head column `c` of `o_proj` the
//!    same on the attention context; a KV group: the mean over its query heads' columns.
//! 2. **Candidates** per module (each layer's attention and MLP apart, `n` units): the
//!    `⌊n·(1 − 2p)⌋` units of highest prior are fixed for the round, the rest are candidates
//!    (`p`: the round's share of the original parameters). **Sub-models** come in pairs: one drops
//!    `⌊p·n⌋ + 1` candidates of every module at once, drawn with probability ∝ (max prior −
//!    prior), its partner drops exactly the candidates the first kept. Under
//!    [`CandidateRule::Global`] (`--candidates global`, not in the reference) the candidates are
//!    chosen across the model instead: units in ascending prior standardised within their module
//!    (z-score) until they hold twice the round's parameter budget, each module keeping at least
//!    one unit; a sub-model drops half of each module's candidates and its partner the other
//!    half, and ties in the removal order go by the standardised prior.
//! 3. Each sub-model's **perplexity** on the round's calibration windows, with the dropped units
//!    masked virtually (their attention-context columns and MLP activations multiplied by 0; no
//!    copies of the weights): all sub-models of a batch run as one forward pass whose sequences
//!    carry their own masks.
//! 4. **Regression** of −perplexity on the keep masks ([`crate::bonsai_fit`]): L1-regularised,
//!    hyper-parameters chosen by held-out Kendall τ over folds.
//! 5. **Removal**: candidates in ascending coefficient leave while their parameters add up to at
//!    most `p` of the original count (the last round takes what is left to the target), physically
//!    ([`Removal`]); the model's per-layer shapes shrink.
//!
//! Rounds repeat until the removed share of the parameters outside the embeddings and head is
//! within 0.02 of the target (the reference's rule).
//!
//! **Units of attention.** SmolLM2 and most current LLaMAs use grouped-query attention (SmolLM2:
//! 9 query heads sharing 3 KV heads). Bonsai here prunes *KV groups*: a KV head together with the
//! query heads that read it. Removing single query heads would leave groups of unequal size,
//! which grouped-query attention in HF transformers, llama.cpp and vLLM cannot express, so the
//! pruned model would no longer run "everywhere", which is the point of structured pruning; a KV
//! head is removed exactly when no query head uses it any more. The price is granularity (a third
//! of a SmolLM2 layer's attention per unit), and the reference's sampling rule, made for modules
//! of many units, would drop a third of all attention in every sub-model; modules of fewer than
//! `1/p` units are therefore perturbed in only some pairs, so that a sub-model loses about `p` of
//! them (see `module_candidates` in the source). A module always keeps at least one unit (the
//! reference skips modules left empty; shears' layers cannot be empty). Coefficients the L1 term
//! sets to exactly 0 are ordered by their prior relative to their module's largest.
//!
//! **MLP channels only, by default.** With KV groups as candidates, the sub-models of a round on
//! SmolLM2 could not price them: with the default 64 sub-models the first round removed 15 of the
//! 90 KV groups (held-out τ 0.38) for 5 % of the parameters, and a one-round 5 % cut from 16
//! sub-models scored 33.9 perplexity (4 evaluation windows) against 27.9 for channels only from
//! the same sub-model budget. [`BonsaiConfig::attention`] (`--attention`) turns them on.
//!
//! **Differences from the reference** besides the units: the prior's `sqrt(mean a²)` is over all
//! tokens of the prior windows at once (the reference averages per-batch values); the defaults
//! of the sub-model count, windows and window length are sized for two CPU cores (see
//! [`BonsaiConfig`]; the reference's values are one option away).
//!
//! ```no_run
//! use shears_pruning::bonsai::{bonsai_prune, BonsaiConfig};
//! # fn f(model: &mut shears_models::llama::Llama, calib_ids: &[u32]) -> shears_tensor::Result<()> {
//! let cfg = BonsaiConfig::new(0.3);
//! let report = bonsai_prune(model, calib_ids, &cfg, |_| {})?;
//! println!("{} of {} parameters left", report.params_after, report.params_before);
//! # Ok(()) }
//! ```

use crate::bonsai_fit::{fit_scores, FitSettings};
use crate::calibrate::calibration_windows;
use crate::Removal;
use rayon::prelude::*;
use serde::Serialize;
use shears_autograd::{no_grad, Var};
use shears_models::eval;
use shears_models::llama::{in_pool, DecoderLayer, Llama};
use shears_tensor::{DType, Error, Result, Rng, Tensor};
use std::time::Instant;

/// Settings of a Bonsai run.
#[derive(Debug, Clone)]
pub struct BonsaiConfig {
    /// Fraction of the parameters outside the embeddings and the head to remove.
    pub target: f64,
    /// Share of the original parameters removed per round (`p`; reference 0.05).
    pub round_share: f64,
    /// Sub-models scored per round, in pairs (reference 200).
    pub submodels: usize,
    /// Calibration windows each sub-model is scored on, new ones each round (reference 32).
    pub windows: usize,
    /// Tokens per window (reference: the full context, 4096 for LLaMA-2).
    pub seqlen: usize,
    /// Windows the priors are computed on, each round.
    pub prior_windows: usize,
    /// Sequences per forward pass (sub-models × windows are batched together).
    pub batch: usize,
    /// Seed of the windows, the sampling and the regression.
    pub seed: u64,
    /// Skip the sub-models and the regression: remove the candidates of lowest prior, standardised
    /// within each module as FLAP does (`(prior − mean) / sd` over the module's units, so layers
    /// and kinds of unit compare), by the same rounds: the forward-only one-shot baseline.
    pub prior_only: bool,
    /// Stop once the removed share is within this of the target (reference 0.02).
    pub tolerance: f64,
    /// MLP channels per candidate of the sub-model sampling and the regression: 1 is the
    /// reference (each channel its own unit); larger groups bundle channels of neighbouring prior
    /// in a layer, so that a few dozen sub-models can price them (README, "Structured pruning
    /// with Bonsai"). Not used with `prior_only`.
    pub channel_group: usize,
    /// Prune attention KV groups as well as MLP channels. Off by default: on SmolLM2 (three KV
    /// groups per layer, a third of its attention each) the sub-models cannot price them at this
    /// sampling budget (README, "Structured pruning with Bonsai").
    pub attention: bool,
    /// How the round's candidates are chosen: per module by the reference's rule, or globally
    /// by standardised prior ([`CandidateRule`]).
    pub candidates: CandidateRule,
    /// The regression's grid and limits.
    pub fit: FitSettings,
}

/// How a round picks the units its sub-models perturb (the others are fixed for the round).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateRule {
    /// The reference's rule, module by module: the `⌊n(1−2p)⌋` units of highest prior of each
    /// module are fixed, a sample drops `⌊p·n⌋ + 1` of the rest (see `module_candidates` in the
    /// source). Every layer loses about the same share, whatever its priors say.
    Module,
    /// Across the model: units in ascending standardised prior (`(prior − mean) / sd` within
    /// their module, as the prior-only baseline ranks them) until they hold twice the round's
    /// budget of parameters, each module keeping at least one unit; a sample drops half of each
    /// module's candidates and its partner the other half. Layers whose priors are low get more
    /// candidates, so removal can be as uneven across layers as the priors allow, and the
    /// sub-models decide within that set.
    Global,
}

impl BonsaiConfig {
    /// The defaults for a small model on two CPU cores at `target`: rounds of 0.05 (as the
    /// reference), 64 sub-models on 8 windows of 256 tokens per round, priors on 8 windows, MLP
    /// channels only.
    pub fn new(target: f64) -> BonsaiConfig {
        BonsaiConfig {
            target,
            round_share: 0.05,
            submodels: 64,
            windows: 8,
            seqlen: 256,
            prior_windows: 8,
            batch: 8,
            seed: 0,
            prior_only: false,
            tolerance: 0.02,
            attention: false,
            channel_group: 1,
            candidates: CandidateRule::Module,
            fit: FitSettings::default(),
        }
    }

    /// The reference's sampling settings (200 sub-models on 32 windows of `seqlen`).
    pub fn reference(target: f64, seqlen: usize) -> BonsaiConfig {
        BonsaiConfig {
            submodels: 200,
            windows: 32,
            seqlen,
            prior_windows: 32,
            ..BonsaiConfig::new(target)
        }
    }

    fn validate(&self) -> Result<()> {
        let op = "bonsai";
        let bad = |m: String| Err(Error::invalid(op, m));
        if !(self.target > 0.0 && self.target < 1.0) {
            return bad(format!("the target {} must be in (0, 1)", self.target));
        }
        if !(self.round_share > 0.0 && self.round_share <= 0.5) {
            return bad(format!(
                "the share per round {} must be in (0, 0.5]",
                self.round_share
            ));
        }
        if !(0.0..self.target).contains(&self.tolerance) {
            return bad(format!(
                "the tolerance {} must be in [0, target)",
                self.tolerance
            ));
        }
        if !self.prior_only && (self.submodels < 2 || !self.submodels.is_multiple_of(2)) {
            return bad(format!(
                "sub-models come in pairs: {} must be even and at least 2",
                self.submodels
            ));
        }
        if self.windows == 0 || self.prior_windows == 0 || self.batch == 0 {
            return bad("windows, prior windows and batch must be positive".into());
        }
        if self.seqlen < 2 {
            return bad(format!("seqlen {} must be at least 2", self.seqlen));
        }
        Ok(())
    }
}

/// What a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// An MLP channel: row `j` of `gate_proj` and `up_proj`, column `j` of `down_proj`.
    Channel,
    /// A KV head with the query heads that read it.
    KvGroup,
}

/// One round's account.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    /// Round number from 1.
    pub round: usize,
    /// MLP channels and KV groups in the model at the start of the round.
    pub channels_before: usize,
    /// KV groups at the start of the round.
    pub kv_groups_before: usize,
    /// Candidates (units not fixed by their prior).
    pub candidates: usize,
    /// MLP channels removed.
    pub channels_removed: usize,
    /// KV groups removed.
    pub kv_groups_removed: usize,
    /// Parameters outside the embeddings and head after the round.
    pub params_after: usize,
    /// Removed share of the original parameters after the round.
    pub sparsity: f64,
    /// Each sub-model's perplexity (empty with `prior_only`).
    pub submodel_ppl: Vec<f64>,
    /// Mean held-out Kendall τ of the chosen regression (None with `prior_only`).
    pub tau: Option<f64>,
    /// The chosen regression's L1 weight, learning-rate factor and batch.
    pub fit: Option<(f64, f64, usize)>,
    /// Seconds spent on the priors, the sub-models and the regression.
    pub secs_prior: f64,
    /// Seconds of the sub-model forward passes.
    pub secs_submodels: f64,
    /// Seconds of the regression.
    pub secs_fit: f64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct BonsaiReport {
    /// Parameters outside the embeddings and head before.
    pub params_before: usize,
    /// And after.
    pub params_after: usize,
    /// `1 − after / before`.
    pub sparsity: f64,
    /// Every round.
    pub rounds: Vec<RoundReport>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Progress of [`bonsai_prune`].
#[derive(Debug)]
pub enum BonsaiEvent<'a> {
    /// A round starts at this removed share.
    RoundStart {
        /// Round number from 1.
        round: usize,
        /// Removed share so far.
        sparsity: f64,
    },
    /// Sequences scored so far in this round's sub-model passes.
    Scored {
        /// Done.
        done: usize,
        /// Of.
        total: usize,
    },
    /// A round ended; `model` is the pruned model as it stands (to save snapshots on the way to
    /// the target: with the target a multiple of the round share, a run to 0.5 passes through the
    /// very models that runs to 0.2 and 0.3 with the same seed give).
    RoundDone {
        /// The round's account.
        report: &'a RoundReport,
        /// The model after the round.
        model: &'a Llama,
    },
}

/// Parameters outside the embeddings and the head: the seven projections and the two norms of
/// every decoder layer, and the final norm.
pub fn prunable_params(model: &Llama) -> usize {
    let layers: usize = model
        .model
        .layers
        .iter()
        .map(|l| {
            let p: usize = Llama::layer_linears(l)
                .iter()
                .map(|(_, lin)| {
                    let [r, c] = lin.shape();
                    r * c
                })
                .sum();
            p + l.input_layernorm.weight.elem_count()
                + l.post_attention_layernorm.weight.elem_count()
        })
        .sum();
    layers + model.model.norm.weight.elem_count()
}

/// Parameters of one unit of `kind` in a layer of `shape` (hidden size `d`, head width `hd`).
fn unit_params(layer: &DecoderLayer, kind: UnitKind, d: usize) -> usize {
    let s = layer.shape();
    match kind {
        UnitKind::Channel => 3 * d,
        UnitKind::KvGroup => {
            let group = s.num_attention_heads / s.num_key_value_heads;
            (2 * group + 2) * layer.self_attn.head_dim() * d
        }
    }
}

/// Per-layer priors: one per MLP channel and one per KV group.
#[derive(Debug, Clone)]
struct LayerPrior {
    channels: Vec<f64>,
    groups: Vec<f64>,
}

/// Per-sequence keep flags of one layer for a batch: query heads `[b · h]` and MLP channels
/// `[b · f]`; `None` keeps everything.
struct LayerMask {
    heads: Option<Vec<bool>>,
    channels: Option<Vec<bool>>,
}

/// `x: (b, t, units · width)` with unit `u` of sequence `s` set to zero where `!keep[s · units +
/// u]` (a copy; the masked-out spans are written as 0, the rest copied).
fn zero_units(x: &Var, keep: &[bool], units: usize, width: usize) -> Result<Var> {
    fn go<T: shears_tensor::WithDType + Default + Copy + Send + Sync>(
        x: &Tensor,
        keep: &[bool],
        units: usize,
        width: usize,
    ) -> Result<Tensor> {
        let (b, t) = (x.dims()[0], x.dims()[1]);
        let row = units * width;
        let src = x.as_slice::<T>()?;
        let mut out = vec![T::default(); src.len()];
        out.par_chunks_mut(row)
            .zip(src.par_chunks(row))
            .enumerate()
            .for_each(|(r, (o, i))| {
                let k = &keep[(r / t) * units..(r / t + 1) * units];
                for (u, &kept) in k.iter().enumerate() {
                    if kept {
                        o[u * width..(u + 1) * width]
                            .copy_from_slice(&i[u * width..(u + 1) * width]);
                    }
                }
            });
        Tensor::from_vec(out, [b, t, row])
    }
    let xt = x.tensor().contiguous()?;
    let out = match xt.dtype() {
        DType::F32 => go::<f32>(&xt, keep, units, width)?,
        DType::F64 => go::<f64>(&xt, keep, units, width)?,
        d => {
            return Err(Error::invalid(
                "bonsai",
                format!("masking units of {d:?} activations (the compute dtype is f32 or f64)"),
            ))
        }
    };
    Ok(Var::constant(out))
}

/// The final normed hidden states `(b, t, d)` of `ids` with units masked per sequence (`masks`:
/// one per layer, or empty for none), and, when `stats` is given, each layer's Σ over tokens of
/// the squared attention context (per column) and MLP activation (per channel), added in.
fn masked_hidden(
    model: &Llama,
    ids: &Tensor,
    masks: &[LayerMask],
    mut stats: Option<&mut [(Vec<f64>, Vec<f64>)]>,
) -> Result<Tensor> {
    let sq_sum = |v: &Var, acc: &mut Vec<f64>| -> Result<()> {
        let x = v.tensor().to_dtype(DType::F32)?;
        let x = x.as_slice::<f32>()?;
        let n = acc.len();
        for row in x.chunks_exact(n) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += (v as f64) * (v as f64);
            }
        }
        Ok(())
    };
    in_pool(|| {
        no_grad(|| -> Result<Tensor> {
            let m = &model.model;
            let mut x = m.embed_tokens.forward(ids, model.compute_dtype())?;
            for (i, l) in m.layers.iter().enumerate() {
                let mut ctx = l.attention_context(&l.attention_input(&x)?, None)?;
                let (h, hd) = (l.self_attn.num_heads(), l.self_attn.head_dim());
                if let Some(hm) = masks.get(i).and_then(|m| m.heads.as_ref()) {
                    ctx = zero_units(&ctx, hm, h, hd)?;
                }
                let hres = l.attention_residual(&x, &ctx)?;
                let mut act = l.mlp.activation(&l.mlp_input(&hres)?)?;
                if let Some(cm) = masks.get(i).and_then(|m| m.channels.as_ref()) {
                    act = zero_units(&act, cm, l.mlp.down_proj.in_features(), 1)?;
                }
                if let Some(st) = stats.as_deref_mut() {
                    sq_sum(&ctx, &mut st[i].0)?;
                    sq_sum(&act, &mut st[i].1)?;
                }
                x = l.mlp_residual(&hres, &act)?;
            }
            Ok(m.norm.forward(&x)?.into_tensor())
        })
    })
}

/// Mean next-token cross-entropy of each sequence of `ids: (b, t)` from its normed hidden
/// states `(b, t, d)` ([`eval::next_token_nll`] on all rows; each sequence's last position,
/// which has no next token, is scored against a placeholder and left out).
fn sequence_nll(model: &Llama, ids: &Tensor, hidden: &Tensor) -> Result<Vec<f64>> {
    let (b, t) = (ids.dims()[0], ids.dims()[1]);
    let hidden = hidden.reshape([b * t, model.config.hidden_size])?;
    let tok = ids.as_slice::<u32>()?;
    let targets: Vec<u32> = (0..b * t)
        .map(|r| if r % t + 1 < t { tok[r + 1] } else { 0 })
        .collect();
    let nll = eval::next_token_nll(model, &hidden, &targets)?;
    Ok(nll
        .chunks_exact(t)
        .map(|s| s[..t - 1].iter().sum::<f64>() / (t - 1) as f64)
        .collect())
}

/// The priors of every unit of `model` on `windows` (`batch` sequences per forward pass).
fn priors(model: &Llama, windows: &[Vec<u32>], batch: usize) -> Result<Vec<LayerPrior>> {
    let layers = &model.model.layers;
    let mut stats: Vec<(Vec<f64>, Vec<f64>)> = layers
        .iter()
        .map(|l| {
            (
                vec![0.0; l.self_attn.o_proj.in_features()],
                vec![0.0; l.mlp.down_proj.in_features()],
            )
        })
        .collect();
    let mut tokens = 0usize;
    for chunk in windows.chunks(batch) {
        let t = chunk[0].len();
        let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, [chunk.len(), t])?;
        masked_hidden(model, &ids, &[], Some(&mut stats))?;
        tokens += chunk.len() * t;
    }
    let col_abs_mean = |w: &Tensor| -> Result<Vec<f64>> {
        let w = w.to_dtype(DType::F32)?;
        let (r, c) = (w.dims()[0], w.dims()[1]);
        let mut out = vec![0.0f64; c];
        for row in w.as_slice::<f32>()?.chunks_exact(c) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o += v.abs() as f64;
            }
        }
        out.iter_mut().for_each(|o| *o /= r as f64);
        Ok(out)
    };
    layers
        .iter()
        .zip(stats)
        .map(|(l, (ctx, act))| {
            let n = tokens as f64;
            let down = col_abs_mean(&l.mlp.down_proj.weight_tensor())?;
            let channels = down
                .iter()
                .zip(&act)
                .map(|(w, a)| w * (a / n).sqrt())
                .collect();
            let o = col_abs_mean(&l.self_attn.o_proj.weight_tensor())?;
            let cols: Vec<f64> = o
                .iter()
                .zip(&ctx)
                .map(|(w, a)| w * (a / n).sqrt())
                .collect();
            let s = l.shape();
            let per_group = cols.len() / s.num_key_value_heads;
            let groups = cols
                .chunks(per_group)
                .map(|g| g.iter().sum::<f64>() / per_group as f64)
                .collect();
            Ok(LayerPrior { channels, groups })
        })
        .collect()
}

/// One candidate unit of a round.
#[derive(Debug, Clone)]
struct Candidate {
    layer: usize,
    kind: UnitKind,
    /// The unit, or the channels of a group of them ([`BonsaiConfig::channel_group`]).
    units: Vec<usize>,
    params: usize,
    /// The unit's prior over the largest prior of its module.
    rel_prior: f64,
    /// The prior standardised over its module's units: (prior − mean) / standard deviation.
    z_prior: f64,
}

/// A module's candidates (indices into the round's candidate list) and how many a sample drops.
struct Module {
    members: Vec<usize>,
    weights: Vec<f64>,
    drop: usize,
    /// Probability that a pair perturbs this module at all (1 by the reference rule; less for
    /// modules of fewer than `1/p` units, see [`module_candidates`]).
    take_part: f64,
}

/// The candidates of one module of `n` units with `priors` at round share `p`, how many a
/// sample drops, and the probability that a pair perturbs the module at all.
///
/// The reference rule: the `⌊n(1−2p)⌋` highest-prior units are fixed, the rest are candidates,
/// a sample drops `⌊p·n⌋ + 1` of them. For modules of fewer than `1/p` units (`⌊p·n⌋ = 0`:
/// SmolLM2's three KV groups per layer) that rule drops the module's only candidate in every
/// sample of every layer at once, a third of all attention, far beyond the share `p` the round
/// removes. Here such a module has at least 2 candidates (never all `n`), a pair takes part with
/// probability `min(1, 2·p·n)` (a sample then drops one candidate and its partner the others), so
/// a sample removes about `p` of the attention, as the reference's rule does for wide modules.
fn module_candidates(priors: &[f64], p: f64) -> (Vec<usize>, usize, f64) {
    let n = priors.len();
    if n < 2 {
        return (Vec::new(), 0, 0.0);
    }
    let fixed = (n as f64 * (1.0 - 2.0 * p)).floor() as usize;
    let cand = (n - fixed.min(n)).max(2.min(n - 1)).min(n - 1);
    let mut order: Vec<usize> = (0..n).collect();
    // Ascending prior; ties by index for determinism.
    order.sort_by(|&a, &b| priors[a].total_cmp(&priors[b]).then(a.cmp(&b)));
    let members: Vec<usize> = order[..cand].to_vec();
    let per = (p * n as f64).floor() as usize;
    if per >= 1 {
        (members, (per + 1).min(cand - 1).max(1), 1.0)
    } else {
        (members, 1, (2.0 * p * n as f64).min(1.0))
    }
}

/// The candidates of every module under [`CandidateRule::Global`]: `modules[m]` holds the
/// priors of module `m` and the parameters of one of its units. Units are taken in ascending
/// standardised prior (ties by module, then unit) until their parameters reach `want`; a module
/// gives at most all but one of its units. Returns each module's candidates in ascending prior.
fn global_candidates(modules: &[(&[f64], usize)], want: usize) -> Vec<Vec<usize>> {
    let mut all: Vec<(f64, usize, usize)> = Vec::new();
    for (mi, (prior, _)) in modules.iter().enumerate() {
        let n = prior.len() as f64;
        let mean = prior.iter().sum::<f64>() / n;
        let sd = (prior.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / n)
            .sqrt()
            .max(f64::MIN_POSITIVE);
        all.extend(
            prior
                .iter()
                .enumerate()
                .map(|(u, p)| ((p - mean) / sd, mi, u)),
        );
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); modules.len()];
    let mut held = 0usize;
    for (_, mi, u) in all {
        if held >= want {
            break;
        }
        let (prior, params) = modules[mi];
        if out[mi].len() + 1 >= prior.len() {
            continue;
        }
        out[mi].push(u);
        held += params;
    }
    for (m, (prior, _)) in out.iter_mut().zip(modules) {
        m.sort_by(|&a, &b| prior[a].total_cmp(&prior[b]).then(a.cmp(&b)));
    }
    out
}

/// Draws `k` of `weights.len()` items without replacement with probability ∝ weight
/// (Efraimidis–Spirakis keys `ln(u) / w`, largest first).
fn weighted_sample(rng: &mut Rng, weights: &[f64], k: usize) -> Vec<usize> {
    let mut keys: Vec<(f64, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let u = rng.uniform().max(f64::MIN_POSITIVE);
            (u.ln() / w, i)
        })
        .collect();
    keys.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    keys.truncate(k);
    keys.into_iter().map(|(_, i)| i).collect()
}

/// The per-layer masks of a batch whose sequence `s` keeps `keep[s]` (over the round's
/// candidates; every other unit is kept).
fn batch_masks(model: &Llama, cands: &[Candidate], keep: &[&[bool]]) -> Result<Vec<LayerMask>> {
    let b = keep.len();
    let layers = &model.model.layers;
    let mut heads: Vec<Option<Vec<bool>>> = vec![None; layers.len()];
    let mut chans: Vec<Option<Vec<bool>>> = vec![None; layers.len()];
    for (ci, c) in cands.iter().enumerate() {
        let l = &layers[c.layer];
        let s = l.shape();
        for (si, k) in keep.iter().enumerate() {
            if k[ci] {
                continue;
            }
            match c.kind {
                UnitKind::Channel => {
                    let f = s.intermediate_size;
                    let m = chans[c.layer].get_or_insert_with(|| vec![true; b * f]);
                    for &u in &c.units {
                        m[si * f + u] = false;
                    }
                }
                UnitKind::KvGroup => {
                    let h = s.num_attention_heads;
                    let group = h / s.num_key_value_heads;
                    let m = heads[c.layer].get_or_insert_with(|| vec![true; b * h]);
                    for &g in &c.units {
                        for q in g * group..(g + 1) * group {
                            m[si * h + q] = false;
                        }
                    }
                }
            }
        }
    }
    Ok(heads
        .into_iter()
        .zip(chans)
        .map(|(heads, channels)| LayerMask { heads, channels })
        .collect())
}

/// Perplexity of each sub-model (`keep[s]` over `cands`) on `windows`: every (sub-model,
/// window) pair is one sequence, `batch` sequences per forward pass.
fn submodel_perplexities(
    model: &Llama,
    cands: &[Candidate],
    keep: &[Vec<bool>],
    windows: &[Vec<u32>],
    batch: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<f64>> {
    let pairs: Vec<(usize, usize)> = (0..keep.len())
        .flat_map(|s| (0..windows.len()).map(move |w| (s, w)))
        .collect();
    let mut nll = vec![0.0f64; keep.len()];
    let t = windows[0].len();
    for (done, chunk) in pairs.chunks(batch).enumerate() {
        let flat: Vec<u32> = chunk
            .iter()
            .flat_map(|&(_, w)| windows[w].iter().copied())
            .collect();
        let ids = Tensor::from_vec(flat, [chunk.len(), t])?;
        let ks: Vec<&[bool]> = chunk.iter().map(|&(s, _)| keep[s].as_slice()).collect();
        let masks = batch_masks(model, cands, &ks)?;
        let hidden = masked_hidden(model, &ids, &masks, None)?;
        for (&(s, _), l) in chunk.iter().zip(sequence_nll(model, &ids, &hidden)?) {
            nll[s] += l;
        }
        progress((done * batch + chunk.len()).min(pairs.len()), pairs.len());
    }
    Ok(nll
        .iter()
        .map(|l| {
            let p = (l / windows.len() as f64).exp();
            // The reference caps perplexities at 1e8; NaN (a broken sub-model) counts as the cap.
            if p.is_finite() {
                p.min(1e8)
            } else {
                1e8
            }
        })
        .collect())
}

/// Removes `chosen` candidates from `model` physically and refreshes its shapes.
fn remove(model: &mut Llama, chosen: &[Candidate]) -> Result<()> {
    let n = model.model.layers.len();
    let mut per_layer: Vec<Removal> = vec![Removal::default(); n];
    for c in chosen {
        let shape = model.model.layers[c.layer].shape();
        match c.kind {
            UnitKind::Channel => per_layer[c.layer].channels.extend(&c.units),
            UnitKind::KvGroup => {
                for &g in &c.units {
                    per_layer[c.layer].extend(Removal::kv_group(&shape, g)?);
                }
            }
        }
    }
    for (i, r) in per_layer.iter().enumerate() {
        if !r.is_empty() {
            r.apply(&mut model.model.layers[i], &format!("model.layers.{i}"))?;
        }
    }
    model.refresh_shapes()
}

/// Prunes `model` with Bonsai to `cfg.target` of its parameters outside the embeddings and
/// head, scoring sub-models on windows drawn from `calib_ids`; `progress` hears of each round.
pub fn bonsai_prune(
    model: &mut Llama,
    calib_ids: &[u32],
    cfg: &BonsaiConfig,
    mut progress: impl FnMut(BonsaiEvent),
) -> Result<BonsaiReport> {
    cfg.validate()?;
    let t0 = Instant::now();
    let d = model.config.hidden_size;
    let original = prunable_params(model);
    let mut rounds = Vec::new();
    let mut round = 0usize;
    loop {
        let now = prunable_params(model);
        let done = 1.0 - now as f64 / original as f64;
        if done >= cfg.target - cfg.tolerance {
            break;
        }
        round += 1;
        progress(BonsaiEvent::RoundStart {
            round,
            sparsity: done,
        });
        let share = cfg.round_share.min(cfg.target - done);
        let budget = (share * original as f64).floor() as usize;
        let seed = cfg.seed.wrapping_add(1000 * round as u64);

        // 1. Priors on this round's windows.
        let tp = Instant::now();
        let prior_windows = calibration_windows(calib_ids, cfg.prior_windows, cfg.seqlen, seed)?;
        let pri = priors(model, &prior_windows, cfg.batch)?;
        let secs_prior = tp.elapsed().as_secs_f64();

        // 2. Candidates per module, by the reference's rule or across the model.
        let mut cands: Vec<Candidate> = Vec::new();
        let mut modules: Vec<Module> = Vec::new();
        let mut listed: Vec<(usize, UnitKind, &[f64])> = Vec::new();
        for (li, lp) in pri.iter().enumerate() {
            if cfg.attention {
                listed.push((li, UnitKind::KvGroup, &lp.groups));
            }
            listed.push((li, UnitKind::Channel, &lp.channels));
        }
        let global = (cfg.candidates == CandidateRule::Global).then(|| {
            let sizes: Vec<(&[f64], usize)> = listed
                .iter()
                .map(|&(li, kind, prior)| (prior, unit_params(&model.model.layers[li], kind, d)))
                .collect();
            global_candidates(&sizes, 2 * budget)
        });
        for (mi, &(li, kind, prior)) in listed.iter().enumerate() {
            let l = &model.model.layers[li];
            let (members, drop, take_part) = match &global {
                None => module_candidates(prior, share),
                // Half of them per sample (one of one: the partner keeps it).
                Some(g) => (g[mi].clone(), (g[mi].len() / 2).max(1), 1.0),
            };
            if members.is_empty() {
                continue;
            }
            let max = prior.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mean = prior.iter().sum::<f64>() / prior.len() as f64;
            let sd = (prior.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / prior.len() as f64)
                .sqrt()
                .max(f64::MIN_POSITIVE);
            let params = unit_params(l, kind, d);
            // Channels in groups of `channel_group` of neighbouring prior (members come in
            // ascending prior), each group one candidate; a sample drops as many groups as
            // make up about the channels the reference rule drops.
            let g = match kind {
                UnitKind::Channel if !cfg.prior_only => cfg.channel_group.max(1),
                _ => 1,
            };
            let groups: Vec<&[usize]> = members.chunks(g).collect();
            let drop = if g == 1 {
                drop
            } else if groups.len() >= 2 {
                ((drop as f64 / g as f64).round() as usize).clamp(1, groups.len() - 1)
            } else {
                1
            };
            let mut idx = Vec::new();
            let mut weights = Vec::new();
            for grp in groups {
                idx.push(cands.len());
                // ∝ (max prior − prior); a tiny floor keeps the highest candidate drawable.
                let w: f64 = grp
                    .iter()
                    .map(|&u| (max - prior[u]).max(max.abs() * 1e-9).max(1e-30))
                    .sum();
                weights.push(w);
                let k = grp.len() as f64;
                cands.push(Candidate {
                    layer: li,
                    kind,
                    units: grp.to_vec(),
                    params: params * grp.len(),
                    rel_prior: grp.iter().map(|&u| prior[u]).sum::<f64>()
                        / k
                        / max.max(f64::MIN_POSITIVE),
                    z_prior: grp.iter().map(|&u| (prior[u] - mean) / sd).sum::<f64>() / k,
                });
            }
            modules.push(Module {
                members: idx,
                weights,
                drop,
                take_part,
            });
        }
        if cands.is_empty() {
            return Err(Error::invalid(
                "bonsai",
                format!(
                    "no unit left to remove at {:.1} % (every module is down to one unit)",
                    100.0 * done
                ),
            ));
        }

        // 3–4. Sub-models and the regression, or the prior alone.
        let (score, submodel_ppl, tau, fit, secs_submodels, secs_fit) = if cfg.prior_only {
            let score: Vec<f64> = cands.iter().map(|c| c.z_prior).collect();
            (score, Vec::new(), None, None, 0.0, 0.0)
        } else {
            let mut rng = Rng::new(seed ^ 0x5EED_B0A5);
            let mut keep: Vec<Vec<bool>> = Vec::with_capacity(cfg.submodels);
            for _ in 0..cfg.submodels / 2 {
                let mut a = vec![true; cands.len()];
                let mut b = vec![true; cands.len()];
                for m in &modules {
                    // Both draws happen always, so one module's outcome does not shift the
                    // random stream of the next.
                    let part = rng.uniform() < m.take_part;
                    let dropped = weighted_sample(&mut rng, &m.weights, m.drop);
                    if !part {
                        continue;
                    }
                    let mut in_a = vec![false; m.members.len()];
                    for &i in &dropped {
                        in_a[i] = true;
                    }
                    for (j, &ci) in m.members.iter().enumerate() {
                        a[ci] = !in_a[j];
                        b[ci] = in_a[j];
                    }
                }
                keep.push(a);
                keep.push(b);
            }
            let windows =
                calibration_windows(calib_ids, cfg.windows, cfg.seqlen, seed.wrapping_add(1))?;
            let ts = Instant::now();
            let ppl =
                submodel_perplexities(model, &cands, &keep, &windows, cfg.batch, |done, total| {
                    progress(BonsaiEvent::Scored { done, total })
                })?;
            let secs_submodels = ts.elapsed().as_secs_f64();
            let tf = Instant::now();
            let y: Vec<f64> = ppl.iter().map(|p| -p).collect();
            let settings = FitSettings {
                seed,
                ..cfg.fit.clone()
            };
            let f = fit_scores(&keep, &y, &settings)?;
            let secs_fit = tf.elapsed().as_secs_f64();
            (
                f.beta,
                ppl,
                Some(f.heldout_tau),
                Some((f.l1, f.lr_factor, f.batch)),
                secs_submodels,
                secs_fit,
            )
        };

        // 5. Removal in ascending score within the budget.
        let mut order: Vec<usize> = (0..cands.len()).collect();
        // Ties (the L1 term sets many coefficients to exactly 0) go by the prior relative to the
        // module's largest, so they do not fall to whichever kind of unit is listed first.
        // Under the global rule the candidates were chosen by standardised prior, and ties go by
        // that too.
        let tie = |c: &Candidate| match cfg.candidates {
            CandidateRule::Module => c.rel_prior,
            CandidateRule::Global => c.z_prior,
        };
        order.sort_by(|&a, &b| {
            score[a]
                .total_cmp(&score[b])
                .then(tie(&cands[a]).total_cmp(&tie(&cands[b])))
                .then(a.cmp(&b))
        });
        let mut chosen = Vec::new();
        let mut spent = 0usize;
        for &i in &order {
            if spent + cands[i].params > budget {
                break;
            }
            spent += cands[i].params;
            chosen.push(cands[i].clone());
        }
        if chosen.is_empty() {
            // The budget is smaller than the cheapest first unit: take that one, so the run
            // ends instead of looping.
            chosen.push(cands[order[0]].clone());
        }
        let channels_before = model
            .model
            .layers
            .iter()
            .map(|l| l.shape().intermediate_size)
            .sum();
        let kv_groups_before = model
            .model
            .layers
            .iter()
            .map(|l| l.shape().num_key_value_heads)
            .sum();
        remove(model, &chosen)?;
        let params_after = prunable_params(model);
        let report = RoundReport {
            round,
            channels_before,
            kv_groups_before,
            candidates: cands.len(),
            channels_removed: chosen
                .iter()
                .filter(|c| c.kind == UnitKind::Channel)
                .map(|c| c.units.len())
                .sum(),
            kv_groups_removed: chosen
                .iter()
                .filter(|c| c.kind == UnitKind::KvGroup)
                .map(|c| c.units.len())
                .sum(),
            params_after,
            sparsity: 1.0 - params_after as f64 / original as f64,
            submodel_ppl,
            tau,
            fit,
            secs_prior,
            secs_submodels,
            secs_fit,
        };
        progress(BonsaiEvent::RoundDone {
            report: &report,
            model,
        });
        rounds.push(report);
    }
    let params_after = prunable_params(model);
    Ok(BonsaiReport {
        params_before: original,
        params_after,
        sparsity: 1.0 - params_after as f64 / original as f64,
        rounds,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Masks of whole units as a forward pass sees them, for tests and tools: the final normed
/// hidden states `(b, t, d)` of `ids: (b, t)` with, in layer `l`, the KV groups
/// `groups[l]` and MLP channels `channels[l]` of every sequence masked to zero.
pub fn hidden_with_units_masked(
    model: &Llama,
    ids: &Tensor,
    groups: &[Vec<usize>],
    channels: &[Vec<usize>],
) -> Result<Tensor> {
    let b = ids.dims()[0];
    let layers = &model.model.layers;
    if groups.len() != layers.len() || channels.len() != layers.len() {
        return Err(Error::invalid(
            "hidden_with_units_masked",
            format!("expected unit lists for {} layers", layers.len()),
        ));
    }
    let mut cands = Vec::new();
    for (li, l) in layers.iter().enumerate() {
        let s = l.shape();
        for &g in &groups[li] {
            if g >= s.num_key_value_heads {
                return Err(Error::invalid(
                    "hidden_with_units_masked",
                    format!(
                        "layer {li} has {} KV groups, not {}",
                        s.num_key_value_heads,
                        g + 1
                    ),
                ));
            }
            cands.push(Candidate {
                layer: li,
                kind: UnitKind::KvGroup,
                units: vec![g],
                params: 0,
                rel_prior: 0.0,
                z_prior: 0.0,
            });
        }
        for &c in &channels[li] {
            if c >= s.intermediate_size {
                return Err(Error::invalid(
                    "hidden_with_units_masked",
                    format!(
                        "layer {li} has {} MLP channels, not {}",
                        s.intermediate_size,
                        c + 1
                    ),
                ));
            }
            cands.push(Candidate {
                layer: li,
                kind: UnitKind::Channel,
                units: vec![c],
                params: 0,
                rel_prior: 0.0,
                z_prior: 0.0,
            });
        }
    }
    let none = vec![false; cands.len()];
    let keep: Vec<&[bool]> = (0..b).map(|_| none.as_slice()).collect();
    let masks = batch_masks(model, &cands, &keep)?;
    masked_hidden(model, ids, &masks, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_the_reference_rule_and_widen_small_modules() {
        // n = 1536, p = 0.05: ⌊1536·0.9⌋ = 1382 fixed, 154 candidates, ⌊76.8⌋ + 1 = 77 dropped.
        let priors: Vec<f64> = (0..1536).map(|i| ((i * 7919) % 1536) as f64).collect();
        let (m, drop, part) = module_candidates(&priors, 0.05);
        assert_eq!((m.len(), drop, part), (154, 77, 1.0));
        // The candidates are the lowest priors: values 0..154.
        assert!(m.iter().all(|&u| priors[u] < 154.0));
        // n = 3 (SmolLM2's KV groups): the reference gives 1 candidate; widened to 2, drop 1,
        // in 2·0.05·3 = 30 % of the pairs.
        let (m, drop, part) = module_candidates(&[3.0, 1.0, 2.0], 0.05);
        assert_eq!((m, drop), (vec![1, 2], 1));
        assert!((part - 0.3).abs() < 1e-12);
        // n = 2: one candidate, dropped by one member of a pair that takes part.
        let (m, drop, part) = module_candidates(&[1.0, 0.5], 0.05);
        assert_eq!((m, drop), (vec![1], 1));
        assert!((part - 0.2).abs() < 1e-12);
        // n = 1: none.
        assert_eq!(module_candidates(&[1.0], 0.05).0, Vec::<usize>::new());
    }

    #[test]
    fn global_candidates_follow_standardised_priors_across_modules() {
        // Module 0 has one unit far below its others (z ≈ −2.24); module 1's priors are spread
        // evenly, and module 2 has two units, which may give at most one.
        let m0 = [10.0, 10.0, 10.0, 10.0, 10.0, 1.0];
        let m1 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let m2 = [0.5, 0.25];
        let z = |p: &[f64], u: usize| {
            let n = p.len() as f64;
            let mean = p.iter().sum::<f64>() / n;
            let sd = (p.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
            (p[u] - mean) / sd
        };
        // The order by z, independently: m0[5] −2.24, m1[0] −1.46, m2[1] −1, m2[0] +1 (refused:
        // the module's last unit), m1[1] −0.88, ...
        assert!(z(&m0, 5) < z(&m1, 0) && z(&m1, 0) < z(&m2, 1) && z(&m2, 1) < z(&m1, 1));
        let mods: Vec<(&[f64], usize)> = vec![(&m0, 10), (&m1, 10), (&m2, 100)];
        // 10 parameters: the single lowest unit.
        assert_eq!(global_candidates(&mods, 10), vec![vec![5], vec![], vec![]]);
        // 120: m0[5], m1[0], then m2[1] (100 parameters) reaches it.
        assert_eq!(
            global_candidates(&mods, 120),
            vec![vec![5], vec![0], vec![1]]
        );
        // Everything: every module gives all but one unit, m0's candidates in ascending prior
        // (the tied 10s by index), m2 only its lower unit.
        let all = global_candidates(&mods, usize::MAX);
        assert_eq!(all[0], vec![5, 0, 1, 2, 3]);
        assert_eq!(all[1], vec![0, 1, 2, 3, 4]);
        assert_eq!(all[2], vec![1]);
        // A module of one unit never gives it.
        let one = [3.0];
        assert_eq!(
            global_candidates(&[(&one, 1)], usize::MAX),
            vec![Vec::<usize>::new()]
        );
    }

    #[test]
    fn weighted_sampling_prefers_heavy_items() {
        let mut rng = Rng::new(3);
        let w = [1.0, 1.0, 8.0, 1e-9];
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            for i in weighted_sample(&mut rng, &w, 1) {
                counts[i] += 1;
            }
        }
        // P(item 2) = 8/10: 3200 ± a few sigma (sd ≈ 25).
        assert!((3050..3350).contains(&counts[2]), "{counts:?}");
        assert!(counts[3] < 5, "{counts:?}");
        let two = weighted_sample(&mut rng, &w, 2);
        assert_eq!(two.len(), 2);
        assert_ne!(two[0], two[1]);
    }
}
