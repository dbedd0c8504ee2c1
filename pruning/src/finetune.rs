//! Sparse fine-tuning: a pruned student trains with its masks fixed, distilling from a frozen
//! dense teacher ([`crate::distill`]), with AdamW, warm-up and linear decay as the reference
//! recipe (`shared/ALGORITHMS.md`, "SquareHead"); or, with [`Gradual`], a dense student is pruned
//! on a cubic schedule while it trains (the sparse pre-training recipe in small).
//!
//! The pieces: [`TrainData`] cuts token ids into packed windows, holds some out and serves the
//! batch of any step (shuffled per epoch from the seed, so a resumed run sees the same batches);
//! [`Finetuner`] owns the student, the teacher and the optimizer and runs one step at a time;
//! [`Finetuner::save_state`] / [`Finetuner::load_state`] write and read a training checkpoint
//! from which a run continues bit-identically.
//!
//! ```
//! use shears_models::config::LlamaConfig;
//! use shears_models::llama::Llama;
//! use shears_pruning::distill::LossWeights;
//! use shears_pruning::finetune::{FinetuneConfig, Finetuner, TrainData};
//! let json = r#"{"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
//!   "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
//!   "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
//!   "tie_word_embeddings": true}"#;
//! let config = LlamaConfig::from_json_str(json, "config.json".as_ref())?;
//! let teacher = Llama::random(&config, 1)?;
//! // The student: the teacher with the smaller half of every projection zeroed.
//! let mut student = Llama::random(&config, 1)?;
//! shears_pruning::finetune::prune_by_magnitude(&mut student, 0.5)?;
//! let ids: Vec<u32> = (0..2000u32).map(|i| (i * 37 + i / 7) % 64).collect();
//! let data = TrainData::new(&ids, 16, 2, 3)?;
//! let cfg = FinetuneConfig { steps: 5, batch: 2, seqlen: 16, lr: 1e-3, ..FinetuneConfig::default() };
//! let mut ft = Finetuner::new(student, Some(teacher), cfg)?;
//! let first = ft.step(&data)?;
//! for _ in 1..5 {
//!     ft.step(&data)?;
//! }
//! assert!(first.squarehead.unwrap() > 0.0);
//! assert!((ft.projection_sparsity()? - 0.5).abs() < 0.01); // the masks held
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::distill::{self, LossWeights};
use crate::magnitude_prune;
use crate::Sparsity;
use shears_autograd::optim::{self, AdamW, LrSchedule, Optimizer, Param};
use shears_autograd::{no_grad, Var};
use shears_models::eval::{self, PerplexityReport};
use shears_models::generate::{generate, GenerateOptions, SamplingParams};
use shears_models::layers::{Linear, Weight};
use shears_models::llama::{ForwardOptions, Llama, TrainSpec};
use shears_tensor::{io, DType, Error, Result, Rng, Tensor};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// The settings of a fine-tuning run.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneConfig {
    /// The loss terms and their weights.
    pub loss: LossWeights,
    /// Peak learning rate (after warm-up).
    pub lr: f64,
    /// Steps of linear warm-up from 0; the rate then decays linearly to 0 at `steps`.
    pub warmup: u64,
    /// Optimizer steps of the whole run.
    pub steps: u64,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seqlen: usize,
    /// Seed of the data order.
    pub seed: u64,
    /// AdamW's decoupled weight decay (the reference: 0).
    pub weight_decay: f64,
    /// Global-norm gradient clipping over the trained (kept) weights' gradients; `None` (the
    /// reference) leaves gradients as they are.
    pub clip_norm: Option<f64>,
    /// Recompute each decoder layer in the backward pass instead of keeping its activations.
    pub checkpointing: bool,
    /// A projection with at least this fraction of exact zeros trains under a fixed mask (the
    /// reference: 0.1); others train densely.
    pub mask_min_zeros: f64,
    /// Prune while training (then the student starts dense and no masks come from its zeros).
    pub gradual: Option<Gradual>,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            loss: LossWeights::default(),
            lr: 1e-4,
            warmup: 20,
            steps: 100,
            batch: 4,
            seqlen: 512,
            seed: 17,
            weight_decay: 0.0,
            clip_norm: None,
            checkpointing: true,
            mask_min_zeros: 0.1,
            gradual: None,
        }
    }
}

/// Gradual magnitude pruning on the cubic schedule of Zhu & Gupta, "To prune, or not to prune"
/// (arXiv 1710.01878, eq. 1) from sparsity 0:
/// `s(t) = target · (1 − (1 − (t − start)/(end − start))³)` for `start ≤ t ≤ end`. At `start`
/// and every `every` steps after it, up to and including `end`, each decoder projection's mask is
/// re-selected by magnitude (one threshold per matrix) at `s(t)`; after `end` the masks stay
/// fixed for the rest of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gradual {
    /// Final sparsity of every decoder projection.
    pub target: f64,
    /// First pruning step.
    pub start: u64,
    /// Last pruning step (the target is reached here).
    pub end: u64,
    /// Steps between pruning steps.
    pub every: u64,
}

impl Gradual {
    /// Checks the schedule.
    pub fn validate(&self) -> Result<()> {
        if !(self.target > 0.0 && self.target < 1.0) {
            return Err(Error::invalid(
                "Gradual",
                format!(
                    "the target sparsity must lie in (0, 1), got {}",
                    self.target
                ),
            ));
        }
        if self.end < self.start || self.every == 0 {
            return Err(Error::invalid(
                "Gradual",
                format!(
                    "the schedule needs start <= end and every >= 1 (start {}, end {}, every {})",
                    self.start, self.end, self.every
                ),
            ));
        }
        Ok(())
    }

    /// The scheduled sparsity at `step` (0 before `start`, `target` from `end` on).
    pub fn sparsity_at(&self, step: u64) -> f64 {
        if step < self.start {
            return 0.0;
        }
        if step >= self.end {
            return self.target;
        }
        let p = (step - self.start) as f64 / (self.end - self.start) as f64;
        self.target * (1.0 - (1.0 - p).powi(3))
    }

    /// Whether masks are re-selected at `step`.
    pub fn prunes_at(&self, step: u64) -> bool {
        step >= self.start
            && step <= self.end
            && ((step - self.start).is_multiple_of(self.every) || step == self.end)
    }
}

/// Training windows cut from token ids, with some held out.
///
/// The ids are cut into windows of `seqlen + 1` tokens starting every `seqlen` tokens (each
/// window's inputs are its first `seqlen` tokens, its targets the last `seqlen`: every position
/// is a target), the tail is dropped, and `holdout` windows chosen at random from the seed are
/// kept out of training for held-out perplexity. Step `s` reads the training windows
/// `s·batch .. (s+1)·batch` of a sequence that visits every window once per epoch, in an order
/// shuffled per epoch from the seed: the batches of any step follow from the seed alone.
#[derive(Debug, Clone)]
pub struct TrainData {
    train: Vec<Vec<u32>>,
    heldout: Vec<Vec<u32>>,
    seqlen: usize,
    seed: u64,
}

impl TrainData {
    /// Cuts `ids` (see the type's docs). An error when fewer than `holdout + 1` windows fit.
    pub fn new(ids: &[u32], seqlen: usize, holdout: usize, seed: u64) -> Result<TrainData> {
        const OP: &str = "TrainData::new";
        if seqlen < 2 {
            return Err(Error::invalid(
                OP,
                format!("seqlen must be at least 2, got {seqlen}"),
            ));
        }
        let n = ids.len().saturating_sub(1) / seqlen;
        if n < holdout + 1 {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} tokens make {n} windows of {seqlen} (+1) tokens: too few for {holdout} \
                     held out and at least one to train on",
                    ids.len()
                ),
            ));
        }
        let windows = (0..n)
            .map(|w| ids[w * seqlen..w * seqlen + seqlen + 1].to_vec())
            .collect();
        Self::from_windows(windows, holdout, seed)
    }

    /// From whole windows of `seqlen + 1` tokens each (e.g. sampled from the teacher with
    /// [`sample_from_teacher`]), `holdout` of them held out at random from the seed.
    pub fn from_windows(windows: Vec<Vec<u32>>, holdout: usize, seed: u64) -> Result<TrainData> {
        const OP: &str = "TrainData::from_windows";
        let Some(first) = windows.first() else {
            return Err(Error::invalid(OP, "no windows"));
        };
        let seqlen = first.len().saturating_sub(1);
        if seqlen < 2 || windows.iter().any(|w| w.len() != seqlen + 1) {
            return Err(Error::invalid(
                OP,
                "every window needs the same length of at least 3 tokens",
            ));
        }
        if windows.len() < holdout + 1 {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} windows: too few for {holdout} held out and at least one to train on",
                    windows.len()
                ),
            ));
        }
        let n = windows.len();
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, seed ^ 0x4845_4c44_4f55_5421);
        let mut is_heldout = vec![false; n];
        for &i in &order[..holdout] {
            is_heldout[i] = true;
        }
        let (mut train, mut heldout) = (Vec::new(), Vec::new());
        for (w, held) in windows.into_iter().zip(is_heldout) {
            if held {
                heldout.push(w);
            } else {
                train.push(w);
            }
        }
        Ok(TrainData {
            train,
            heldout,
            seqlen,
            seed,
        })
    }

    /// Training windows.
    pub fn train_windows(&self) -> usize {
        self.train.len()
    }

    /// Held-out windows.
    pub fn heldout_windows(&self) -> usize {
        self.heldout.len()
    }

    /// Tokens per sequence.
    pub fn seqlen(&self) -> usize {
        self.seqlen
    }

    /// The held-out windows' inputs joined (`heldout_windows · seqlen` ids), to score with
    /// [`eval::perplexity`] at `seqlen`.
    pub fn heldout_ids(&self) -> Vec<u32> {
        self.heldout
            .iter()
            .flat_map(|w| w[..self.seqlen].iter().copied())
            .collect()
    }

    /// Indices of the training windows of `step` with `batch` sequences per step.
    pub fn window_indices(&self, step: u64, batch: usize) -> Vec<usize> {
        let n = self.train.len() as u64;
        let mut epoch_order: Option<(u64, Vec<usize>)> = None;
        (0..batch as u64)
            .map(|j| {
                let k = step * batch as u64 + j;
                let (epoch, pos) = (k / n, (k % n) as usize);
                if epoch_order.as_ref().map(|(e, _)| *e) != Some(epoch) {
                    let mut order: Vec<usize> = (0..n as usize).collect();
                    shuffle(
                        &mut order,
                        self.seed.wrapping_add(epoch.wrapping_mul(0x9E37_79B9)),
                    );
                    epoch_order = Some((epoch, order));
                }
                epoch_order.as_ref().expect("set above").1[pos]
            })
            .collect()
    }

    /// The batch of `step`: token ids `(batch, seqlen)` (u32) and next-token targets
    /// `(batch · seqlen)` (i64).
    pub fn batch(&self, step: u64, batch: usize) -> Result<(Tensor, Tensor)> {
        let t = self.seqlen;
        let mut input = Vec::with_capacity(batch * t);
        let mut target = Vec::with_capacity(batch * t);
        for i in self.window_indices(step, batch) {
            let w = &self.train[i];
            input.extend_from_slice(&w[..t]);
            target.extend(w[1..].iter().map(|&id| id as i64));
        }
        Ok((
            Tensor::from_vec(input, [batch, t])?,
            Tensor::from_vec(target, [batch * t])?,
        ))
    }
}

/// `windows` sequences of `len` tokens sampled from `model` itself (its own distribution, so
/// distillation needs no corpus): each starts with the BOS token (token 0 without one) and goes
/// on at temperature 1 with no top-k / top-p cut, through EOS tokens, with the sampler seeded by
/// `seed` and the sequence's index. `progress(done, total)` is called after each sequence.
pub fn sample_from_teacher(
    model: &Llama,
    windows: usize,
    len: usize,
    seed: u64,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<u32>>> {
    if len < 2 || len > model.config.max_position_embeddings {
        return Err(Error::invalid(
            "sample_from_teacher",
            format!(
                "sequences of {len} tokens (need 2 to the context length {})",
                model.config.max_position_embeddings
            ),
        ));
    }
    let bos = model.config.bos_token_id.unwrap_or(0);
    let mut out = Vec::with_capacity(windows);
    for i in 0..windows {
        let opts = GenerateOptions {
            max_tokens: len - 1,
            sampling: SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                seed: seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(i as u64),
            },
            stop_at_eos: false,
        };
        let g = generate(model, &[bos], &opts, |_| Ok(true))?;
        let mut w = Vec::with_capacity(len);
        w.push(bos);
        w.extend(g.tokens);
        out.push(w);
        progress(i + 1, windows);
    }
    Ok(out)
}

/// Fisher–Yates from a seed.
fn shuffle(v: &mut [usize], seed: u64) {
    let mut rng = Rng::new(seed);
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// What one training step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The step's index (from 0).
    pub step: u64,
    /// The weighted total loss.
    pub loss: f64,
    /// The cross-entropy, when it is a term.
    pub ce: Option<f64>,
    /// The KD term (before its weight), when it is a term.
    pub kd: Option<f64>,
    /// The SquareHead sum (before its weight), when it is a term.
    pub squarehead: Option<f64>,
    /// The learning rate of the step.
    pub lr: f64,
    /// The gradient norm before clipping, when clipping is on.
    pub grad_norm: Option<f64>,
    /// The scheduled sparsity when the masks were re-selected at this step.
    pub pruned_to: Option<f64>,
    /// Tokens the student trained on.
    pub tokens: usize,
    /// Wall-clock seconds of the step (teacher, student, optimizer).
    pub secs: f64,
}

/// A fine-tuning run: the student (trained), the teacher (frozen, run without a graph), the
/// optimizer and the step count.
pub struct Finetuner {
    student: Llama,
    teacher: Option<Llama>,
    params: Vec<Param>,
    opt: AdamW,
    cfg: FinetuneConfig,
    step: u64,
    masked: usize,
}

/// Whether a checkpoint name is a decoder projection's weight.
fn is_projection(name: &str) -> bool {
    name.starts_with("model.layers.") && (name.contains(".self_attn.") || name.contains(".mlp."))
}

/// Zeroes the `sparsity` smallest-magnitude share of every decoder projection of `model` (one
/// threshold per matrix, as [`magnitude_prune`]), keeping the projections dense.
pub fn prune_by_magnitude(model: &mut Llama, sparsity: f64) -> Result<()> {
    for l in &mut model.model.layers {
        for (name, lin) in Llama::layer_linears_mut(l) {
            let w = lin.weight_tensor().to_dtype(DType::F32)?;
            let [rows, cols] = lin.shape();
            let mut v = w.to_vec::<f32>()?;
            magnitude_prune(name, &mut v, rows, cols, &Sparsity::Unstructured(sparsity))?;
            *lin = Linear::new(Tensor::from_vec(v, [rows, cols])?.to_dtype(w.dtype())?)?;
        }
    }
    Ok(())
}

impl Finetuner {
    /// Prepares a run. The student must hold f32 weights; its decoder projections with at least
    /// `cfg.mask_min_zeros` exact zeros (or held sparse) train under the fixed mask of their
    /// nonzeros (unless `cfg.gradual`, where masks come from the schedule); the decoder
    /// projections and norms train, the embeddings and the head stay frozen. A teacher is
    /// needed when the loss has a KD or SquareHead term, and must have the student's vocabulary,
    /// width and depth.
    pub fn new(
        mut student: Llama,
        teacher: Option<Llama>,
        cfg: FinetuneConfig,
    ) -> Result<Finetuner> {
        const OP: &str = "Finetuner::new";
        if student.dtype() != DType::F32 {
            return Err(Error::invalid(
                OP,
                format!(
                    "the student holds {} weights; fine-tuning trains f32 weights (load it with \
                     dtype f32)",
                    student.dtype()
                ),
            ));
        }
        if cfg.batch == 0 || cfg.seqlen < 2 || cfg.steps == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "batch {} must be >= 1, seqlen {} >= 2 and steps {} >= 1",
                    cfg.batch, cfg.seqlen, cfg.steps
                ),
            ));
        }
        if cfg.seqlen > student.config.max_position_embeddings {
            return Err(Error::invalid(
                OP,
                format!(
                    "seqlen {} exceeds the context length {}",
                    cfg.seqlen, student.config.max_position_embeddings
                ),
            ));
        }
        if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
            return Err(Error::invalid(
                OP,
                format!("the learning rate must be positive, got {}", cfg.lr),
            ));
        }
        if let Some(g) = &cfg.gradual {
            g.validate()?;
        }
        match &teacher {
            None if cfg.loss.needs_teacher() => {
                return Err(Error::invalid(
                    OP,
                    format!("the loss {} needs a teacher model", cfg.loss.describe()),
                ))
            }
            Some(t) => {
                let (s, tc) = (&student.config, &t.config);
                if (s.vocab_size, s.hidden_size, s.num_hidden_layers)
                    != (tc.vocab_size, tc.hidden_size, tc.num_hidden_layers)
                {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "the teacher (vocabulary {}, width {}, {} layers) does not match the \
                             student (vocabulary {}, width {}, {} layers)",
                            tc.vocab_size,
                            tc.hidden_size,
                            tc.num_hidden_layers,
                            s.vocab_size,
                            s.hidden_size,
                            s.num_hidden_layers
                        ),
                    ));
                }
            }
            None => {}
        }
        // Every weight into memory of its own: a checkpoint's tensors are windows of its mapped
        // file, whose pages would otherwise stay resident beside the trained copies.
        own_weights(&mut student)?;
        let masked = if cfg.gradual.is_some() {
            // Sparse layers expand to dense ones; the schedule chooses the masks.
            for l in &mut student.model.layers {
                for (_, lin) in Llama::layer_linears_mut(l) {
                    if lin.sparse().is_some() {
                        *lin = Linear::new(lin.weight_tensor().into_owned())?;
                    }
                }
            }
            0
        } else {
            mask_projections(&mut student, cfg.mask_min_zeros)?
        };
        let params = student.params(TrainSpec::default())?;
        let mut opt = AdamW::new(cfg.lr);
        opt.weight_decay = cfg.weight_decay;
        Ok(Finetuner {
            student,
            teacher,
            params,
            opt,
            cfg,
            step: 0,
            masked,
        })
    }

    /// The run's settings.
    pub fn config(&self) -> &FinetuneConfig {
        &self.cfg
    }

    /// Steps done so far (the index of the next step).
    pub fn step_index(&self) -> u64 {
        self.step
    }

    /// Decoder projections training under a fixed mask (0 with a gradual schedule).
    pub fn masked_projections(&self) -> usize {
        self.masked
    }

    /// Elements the optimizer updates.
    pub fn trained_parameters(&self) -> usize {
        self.params.iter().map(|p| p.tensor().elem_count()).sum()
    }

    /// The student as it stands.
    pub fn student(&self) -> &Llama {
        &self.student
    }

    /// The student, trained.
    pub fn into_student(self) -> Llama {
        self.student
    }

    /// The fraction of exact zeros over all decoder projections of the student.
    pub fn projection_sparsity(&self) -> Result<f64> {
        let (mut zeros, mut total) = (0usize, 0usize);
        for l in &self.student.model.layers {
            for (_, lin) in Llama::layer_linears(l) {
                let w = lin.weight_tensor();
                total += w.elem_count();
                zeros += (w.zero_fraction() * w.elem_count() as f64).round() as usize;
            }
        }
        Ok(if total == 0 {
            0.0
        } else {
            zeros as f64 / total as f64
        })
    }

    /// The learning rate of `step`: warm-up, then linear decay to 0 at the last step.
    pub fn lr_at(&self, step: u64) -> f64 {
        LrSchedule::WarmupLinear {
            warmup: self.cfg.warmup,
            total: self.cfg.steps,
        }
        .lr_at(step, self.cfg.lr)
    }

    /// Runs the next step on its batch of `data`: teacher forward (no graph), student forward
    /// with the loss terms, backward, optional clipping, AdamW; with a gradual schedule the
    /// masks are re-selected first when the schedule says so. A non-finite loss is an error.
    pub fn step(&mut self, data: &TrainData) -> Result<StepReport> {
        const OP: &str = "Finetuner::step";
        if data.seqlen() != self.cfg.seqlen {
            return Err(Error::invalid(
                OP,
                format!(
                    "the data has windows of {} tokens, the run {}",
                    data.seqlen(),
                    self.cfg.seqlen
                ),
            ));
        }
        let t0 = Instant::now();
        let step = self.step;
        let mut pruned_to = None;
        if let Some(g) = self.cfg.gradual {
            if g.prunes_at(step) {
                let s = g.sparsity_at(step);
                self.reselect_masks(s)?;
                pruned_to = Some(s);
            }
        }
        let w = self.cfg.loss;
        let (b, t) = (self.cfg.batch, self.cfg.seqlen);
        let (ids, targets) = data.batch(step, b)?;
        let want_states = w.squarehead > 0.0;
        let want_logits = w.ce > 0.0 || w.kd > 0.0;
        let v = self.student.config.vocab_size;
        // The teacher: hidden states and logits as plain tensors.
        let (teacher_states, teacher_logits) = match &self.teacher {
            Some(teacher) if w.needs_teacher() => no_grad(|| -> Result<_> {
                let out = teacher.forward_batch(
                    &ids,
                    None,
                    ForwardOptions {
                        hidden_states: want_states,
                        checkpointing: false,
                    },
                )?;
                let logits = if w.kd > 0.0 {
                    Some(
                        teacher
                            .logits(&out.hidden)?
                            .into_tensor()
                            .reshape([b * t, v])?,
                    )
                } else {
                    None
                };
                let states = if want_states {
                    distill::squarehead_states(&out.layers, &out.hidden)
                        .into_iter()
                        .map(Var::into_tensor)
                        .collect()
                } else {
                    Vec::new()
                };
                Ok((states, logits))
            })?,
            _ => (Vec::new(), None),
        };
        let out = self.student.forward_batch(
            &ids,
            None,
            ForwardOptions {
                hidden_states: want_states,
                checkpointing: self.cfg.checkpointing,
            },
        )?;
        let mut total: Option<Var> = None;
        let mut add = |term: Var, weight: f64| -> Result<()> {
            let term = term.mul_scalar(weight)?;
            total = Some(match total.take() {
                None => term,
                Some(acc) => acc.add(&term)?,
            });
            Ok(())
        };
        let scalar =
            |v: &Var| -> Result<f64> { v.tensor().to_dtype(DType::F64)?.to_scalar::<f64>() };
        let mut report = StepReport {
            step,
            loss: 0.0,
            ce: None,
            kd: None,
            squarehead: None,
            lr: self.lr_at(step),
            grad_norm: None,
            pruned_to,
            tokens: b * t,
            secs: 0.0,
        };
        if want_states {
            let states = distill::squarehead_states(&out.layers, &out.hidden);
            let (sq, _) = distill::squarehead(&states, &teacher_states)?;
            report.squarehead = Some(scalar(&sq)?);
            add(sq, w.squarehead)?;
        }
        drop(teacher_states);
        if want_logits {
            let logits = self.student.logits(&out.hidden)?.reshape([b * t, v])?;
            if w.ce > 0.0 {
                // The fused op: no `(rows, vocab)` log-softmax kept for the backward pass.
                let ce = logits.cross_entropy(&targets, None)?;
                report.ce = Some(scalar(&ce)?);
                add(ce, w.ce)?;
            }
            if let Some(tl) = &teacher_logits {
                let kd = distill::kd(&logits, tl, w.temperature)?;
                report.kd = Some(scalar(&kd)?);
                add(kd, w.kd)?;
            }
        }
        drop(teacher_logits);
        drop(out);
        let loss = total.expect("LossWeights has a non-zero term");
        report.loss = scalar(&loss)?;
        if !report.loss.is_finite() {
            return Err(Error::invalid(
                OP,
                format!(
                    "step {step}: the loss is {} (ce {:?}, kd {:?}, squarehead {:?}); lower the \
                     learning rate",
                    report.loss, report.ce, report.kd, report.squarehead
                ),
            ));
        }
        let mut grads = loss.backward()?;
        drop(loss);
        // Every trainable weight feeds the loss; one without a gradient means the forward did
        // not record (the optimizer would skip it silently).
        if let Some(p) = self.params.iter().find(|p| grads.get(p.var()).is_none()) {
            return Err(Error::invalid(
                OP,
                format!(
                    "step {step}: no gradient reached {} (the forward pass recorded no graph \
                     through it)",
                    p.name()
                ),
            ));
        }
        if let Some(max) = self.cfg.clip_norm {
            report.grad_norm = Some(optim::clip_grad_norm(&mut grads, &self.params, max)?);
        }
        self.opt.set_lr(report.lr);
        self.opt.step(&mut self.params, &grads)?;
        drop(grads);
        self.student.set_params(&self.params)?;
        self.step += 1;
        report.secs = t0.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Re-selects every decoder projection's mask by magnitude at sparsity `s` (the pruned
    /// entries become 0 and stay 0 until the next re-selection).
    fn reselect_masks(&mut self, s: f64) -> Result<()> {
        for p in &mut self.params {
            if !is_projection(p.name()) {
                continue;
            }
            let dims = p.tensor().dims().to_vec();
            let (rows, cols) = (dims[0], dims[1]);
            let mut v = p.tensor().to_vec::<f32>()?;
            let pruned = magnitude_prune(p.name(), &mut v, rows, cols, &Sparsity::Unstructured(s))?;
            let keep: Vec<u8> = pruned.mask.iter().map(|&m| u8::from(!m)).collect();
            let name = p.name().to_string();
            *p = Param::new(name, Tensor::from_vec(v, [rows, cols])?)?
                .with_mask(Tensor::from_vec(keep, [rows, cols])?)?;
        }
        self.student.set_params(&self.params)
    }

    /// Perplexity of the student on `data`'s held-out windows.
    pub fn heldout_perplexity(&self, data: &TrainData) -> Result<PerplexityReport> {
        eval::perplexity(&self.student, &data.heldout_ids(), data.seqlen(), |_, _| {})
    }

    /// Writes a training checkpoint into the directory `dir` (created if missing):
    /// `train_state.safetensors` (the trained tensors, the AdamW moments and the step, see
    /// [`optim::save_state`]) and, with a gradual schedule, `train_masks.safetensors` (each
    /// projection's current mask). Each file is written atomically.
    pub fn save_state(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if self.cfg.gradual.is_some() {
            let masks: Vec<(String, &Tensor)> = self
                .params
                .iter()
                .filter_map(|p| Some((p.name().to_string(), p.mask()?)))
                .collect();
            // The step ties the masks to the state written next: a crash between the two files
            // leaves a pair that load_state refuses.
            let meta = BTreeMap::from([("step".to_string(), self.step.to_string())]);
            io::save(
                masks.iter().map(|(n, t)| (n.as_str(), *t)),
                dir.join(MASKS_FILE),
                Some(&meta),
            )?;
        }
        optim::save_state(dir.join(STATE_FILE), &self.params, &self.opt, self.step)
    }

    /// Continues from a checkpoint [`save_state`](Self::save_state) wrote for the same student
    /// and settings: the run then goes on bit-identically. Returns the step it resumes at.
    pub fn load_state(&mut self, dir: &Path) -> Result<u64> {
        if self.cfg.gradual.is_some() {
            let path = dir.join(MASKS_FILE);
            if path.exists() {
                let step_of = |p: &Path| -> Result<Option<String>> {
                    Ok(io::load_metadata(p)?.metadata.get("step").cloned())
                };
                let (ms, ss) = (step_of(&path)?, step_of(&dir.join(STATE_FILE))?);
                if ms != ss {
                    return Err(Error::format(
                        &path,
                        None,
                        format!(
                            "the masks are of step {} and the training state of step {}: the \
                             checkpoint was interrupted while being written",
                            ms.as_deref().unwrap_or("?"),
                            ss.as_deref().unwrap_or("?")
                        ),
                    ));
                }
                let mut masks = io::load(&path)?;
                for p in &mut self.params {
                    if let Some(m) = masks.remove(p.name()) {
                        let name = p.name().to_string();
                        *p = Param::new(name, p.tensor().clone())?.with_mask(m)?;
                    }
                }
            }
        }
        let step = optim::load_state(dir.join(STATE_FILE), &mut self.params, &mut self.opt)?;
        if step > self.cfg.steps {
            return Err(Error::invalid(
                "Finetuner::load_state",
                format!(
                    "the checkpoint is at step {step}, past this run's {} steps",
                    self.cfg.steps
                ),
            ));
        }
        self.student.set_params(&self.params)?;
        self.step = step;
        Ok(step)
    }

    /// The current trained tensors by name (parameters only).
    pub fn param_tensors(&self) -> BTreeMap<String, Tensor> {
        self.params
            .iter()
            .map(|p| (p.name().to_string(), p.tensor().clone()))
            .collect()
    }
}

/// A copy in memory of its own of a tensor that is a window of a mapped file (else the tensor).
fn owned(t: &Tensor) -> Result<Tensor> {
    if !t.is_mapped() {
        return Ok(t.clone());
    }
    match t.dtype() {
        DType::F32 => Tensor::from_vec(t.to_vec::<f32>()?, t.shape().clone()),
        DType::F64 => Tensor::from_vec(t.to_vec::<f64>()?, t.shape().clone()),
        dtype => Err(Error::UnsupportedDType {
            op: "Finetuner::new",
            dtype,
            expected: "f32 weights",
        }),
    }
}

/// Replaces every mapped weight of `model` by a copy in memory (see [`owned`]).
fn own_weights(model: &mut Llama) -> Result<()> {
    let tied = model.config.tie_word_embeddings;
    let embed = Var::constant(owned(model.model.embed_tokens.weight.tensor())?);
    model.model.embed_tokens.weight = embed.clone();
    if tied {
        model.lm_head.set_var(embed)?;
    } else if let Weight::Dense(w) = &model.lm_head.weight {
        model.lm_head = Linear::new(owned(w.tensor())?)?;
    }
    model.model.norm.weight = Var::constant(owned(model.model.norm.weight.tensor())?);
    for l in &mut model.model.layers {
        for n in [&mut l.input_layernorm, &mut l.post_attention_layernorm] {
            n.weight = Var::constant(owned(n.weight.tensor())?);
        }
        for (_, lin) in Llama::layer_linears_mut(l) {
            if let Weight::Dense(w) = &lin.weight {
                if w.tensor().is_mapped() {
                    *lin = Linear::new(owned(w.tensor())?)?;
                }
            }
        }
    }
    Ok(())
}

/// The training checkpoint's file in a state directory.
pub const STATE_FILE: &str = "train_state.safetensors";
/// The gradual schedule's masks in a state directory.
pub const MASKS_FILE: &str = "train_masks.safetensors";

/// Puts every decoder projection of `model` with at least `min_zeros` exact zeros, or held
/// sparse, under the fixed mask of its nonzeros (a dense [`Weight::Masked`] layer, which trains
/// with dense products); returns how many.
pub fn mask_projections(model: &mut Llama, min_zeros: f64) -> Result<usize> {
    let mut n = 0;
    for l in &mut model.model.layers {
        for (_, lin) in Llama::layer_linears_mut(l) {
            let replace = match &lin.weight {
                Weight::Sparse { .. } => true,
                Weight::Dense(w) => w.tensor().zero_fraction() >= min_zeros && min_zeros <= 1.0,
                _ => false,
            };
            if replace {
                let w = lin.weight_tensor().into_owned();
                let mask = w.ne_zero()?;
                *lin = Linear::masked(Var::constant(w), &mask)?;
                n += 1;
            } else if lin.mask().is_some() {
                n += 1;
            }
        }
    }
    Ok(n)
}
