//! Sampling and generation: greedy, temperature, top-k and top-p (nucleus, Holtzman et al. 2020,
//! "The Curious Case of Neural Text Degeneration") sampling with a seed; batched prefill of the
//! prompt, then one decode step per token through the KV cache, stopping at EOS.
//!
//! ```
//! use shears_models::generate::{Sampler, SamplingParams};
//! let logits = [0.5f32, 3.0, -1.0, 2.9];
//! assert_eq!(Sampler::new(SamplingParams::greedy()).sample(&logits)?, 1);
//! // top-k 2 at temperature 1 picks one of the two largest, reproducibly for a seed.
//! let params = SamplingParams { temperature: 1.0, top_k: 2, top_p: 1.0, seed: 42 };
//! let picks: Vec<u32> = {
//!     let mut s = Sampler::new(params.clone());
//!     (0..20).map(|_| s.sample(&logits)).collect::<Result<_, _>>()?
//! };
//! assert!(picks.iter().all(|&t| t == 1 || t == 3));
//! let mut again = Sampler::new(params);
//! assert_eq!(picks, (0..20).map(|_| again.sample(&logits)).collect::<Result<Vec<_>, _>>()?);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::llama::Llama;
use shears_tensor::{Error, Result, Rng};
use std::time::Instant;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (arg-max).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: no limit).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Seed of the sampler's random numbers.
    pub seed: u64,
}

impl SamplingParams {
    /// Arg-max decoding.
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
    fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::invalid(
                "sampling",
                format!("temperature {} must be finite and ≥ 0", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(
                "sampling",
                format!("top_p {} must be in (0, 1]", self.top_p),
            ));
        }
        Ok(())
    }
}

/// Draws tokens from logits according to [`SamplingParams`].
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    /// A sampler seeded with `params.seed`.
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler { params, rng }
    }

    /// The next token for `logits: [vocab]`. NaN logits or an empty vocabulary are errors.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        self.params.validate()?;
        if logits.is_empty() {
            return Err(Error::invalid("sample", "empty logits"));
        }
        if logits.iter().any(|x| x.is_nan()) {
            return Err(Error::invalid("sample", "NaN in the logits"));
        }
        let argmax = || {
            let mut best = 0;
            for (i, &x) in logits.iter().enumerate() {
                if x > logits[best] {
                    best = i;
                }
            }
            best as u32
        };
        if self.params.temperature == 0.0 || self.params.top_k == 1 {
            return Ok(argmax());
        }
        // Candidates sorted by logit, descending (ties by id), cut to top-k.
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = if self.params.top_k == 0 {
            logits.len()
        } else {
            self.params.top_k.min(logits.len())
        };
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, by_logit);
            idx.truncate(k);
        }
        idx.sort_unstable_by(by_logit);
        let t = self.params.temperature as f64;
        let m = logits[idx[0] as usize] as f64;
        if m == f64::NEG_INFINITY {
            return Err(Error::invalid("sample", "every logit is -inf"));
        }
        let mut p: Vec<f64> = idx
            .iter()
            .map(|&i| ((logits[i as usize] as f64 - m) / t).exp())
            .collect();
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= z);
        // Nucleus: the shortest prefix whose mass reaches top_p (at least one token).
        let mut keep = p.len();
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            for (j, &x) in p.iter().enumerate() {
                acc += x;
                if acc >= self.params.top_p as f64 {
                    keep = j + 1;
                    break;
                }
            }
        }
        let mass: f64 = p[..keep].iter().sum();
        let mut u = self.rng.uniform() * mass;
        for j in 0..keep {
            u -= p[j];
            if u < 0.0 {
                return Ok(idx[j]);
            }
        }
        Ok(idx[keep - 1])
    }
}

/// Options of [`generate`].
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most new tokens to produce.
    pub max_tokens: usize,
    /// How tokens are drawn.
    pub sampling: SamplingParams,
    /// Stop after emitting one of the model's EOS tokens (it is included in the output).
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampling: SamplingParams::greedy(),
            stop_at_eos: true,
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An EOS token was produced.
    Eos,
    /// `max_tokens` were produced.
    MaxTokens,
    /// The model's context length was reached.
    ContextFull,
    /// The token callback asked to stop.
    Callback,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// The new tokens (not the prompt).
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Seconds spent on the prompt (prefill, including the first token's logits).
    pub prefill_secs: f64,
    /// Seconds spent on the decode steps after the first token.
    pub decode_secs: f64,
}

/// Generates up to `opts.max_tokens` tokens after `prompt`, calling `on_token` with each new
/// token as soon as it is chosen (return `false` to stop).
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<Generation> {
    opts.sampling.validate()?;
    if prompt.is_empty() {
        return Err(Error::invalid("generate", "the prompt has no tokens"));
    }
    let ctx = model.config.max_position_embeddings;
    if prompt.len() >= ctx {
        return Err(Error::invalid(
            "generate",
            format!(
                "the prompt has {} tokens; the context length is {ctx}",
                prompt.len()
            ),
        ));
    }
    let capacity = (prompt.len() + opts.max_tokens).min(ctx);
    let mut cache = model.new_cache(capacity)?;
    let mut sampler = Sampler::new(opts.sampling.clone());
    let mut tokens = Vec::new();
    let t0 = Instant::now();
    let mut logits = model.forward_last(prompt, &mut cache)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let stop = loop {
        if tokens.len() >= opts.max_tokens {
            break StopReason::MaxTokens;
        }
        let next = sampler.sample(&logits)?;
        tokens.push(next);
        if !on_token(next)? {
            break StopReason::Callback;
        }
        if opts.stop_at_eos && model.config.eos_token_ids.contains(&next) {
            break StopReason::Eos;
        }
        if tokens.len() >= opts.max_tokens {
            break StopReason::MaxTokens;
        }
        if cache.len() >= capacity {
            break StopReason::ContextFull;
        }
        logits = model.forward_last(&[next], &mut cache)?;
    };
    Ok(Generation {
        tokens,
        stop,
        prefill_secs,
        decode_secs: t1.elapsed().as_secs_f64(),
    })
}
