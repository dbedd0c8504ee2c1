//! Perplexity, exactly as ../shared/ALGORITHMS.md defines it: the text files are read as UTF-8,
//! CRLF becomes LF, files are joined by `"\n\n"` and tokenized in one call without BOS; the ids
//! are cut into non-overlapping windows of `seqlen` (the tail is dropped); each window is run from
//! an empty cache and scored on its `seqlen − 1` next-token predictions; the mean token
//! cross-entropy is averaged over windows and exponentiated.
//!
//! ```
//! use shears_models::config::LlamaConfig;
//! use shears_models::eval::perplexity;
//! use shears_models::llama::Llama;
//! let json = r#"{"model_type": "llama", "vocab_size": 30, "hidden_size": 16,
//!   "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
//!   "rms_norm_eps": 1e-6, "max_position_embeddings": 32, "tie_word_embeddings": false}"#;
//! let model = Llama::random(&LlamaConfig::from_json_str(json, "c.json".as_ref())?, 1)?;
//! let ids: Vec<u32> = (0..50).map(|i| (i * 7 % 30) as u32).collect();
//! let r = perplexity(&model, &ids, 16, |_, _| {})?;
//! assert_eq!((r.windows, r.scored_tokens), (3, 45)); // 50 ids → 3 windows of 16, 15 scored each
//! // Near-random weights predict near-uniformly: perplexity ≈ vocab size.
//! assert!((r.ppl - 30.0).abs() < 3.0, "{}", r.ppl);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::llama::{KvCache, Llama};
use rayon::prelude::*;
use shears_kernels::fused;
use shears_tensor::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A perplexity measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityReport {
    /// `exp` of the mean over windows of each window's mean token cross-entropy.
    pub ppl: f64,
    /// The mean cross-entropy in nats (`ln ppl`).
    pub nll: f64,
    /// Tokens of the whole text.
    pub tokens: usize,
    /// Windows evaluated.
    pub windows: usize,
    /// Window length.
    pub seqlen: usize,
    /// Predictions scored (`windows · (seqlen − 1)`).
    pub scored_tokens: usize,
    /// Wall-clock seconds of the forward passes and scoring.
    pub secs: f64,
    /// Tokens run through the model per second (`windows · seqlen / secs`).
    pub tokens_per_s: f64,
}

/// Reads text files as UTF-8, turns CRLF into LF and joins them with `"\n\n"`.
pub fn load_texts(files: &[PathBuf]) -> Result<String> {
    let mut parts = Vec::with_capacity(files.len());
    for f in files {
        let bytes = std::fs::read(f).map_err(|source| Error::Io {
            path: f.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::format(
                f,
                None,
                format!(
                    "not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            )
        })?;
        parts.push(text.replace("\r\n", "\n"));
    }
    Ok(parts.join("\n\n"))
}

/// Vocabulary entries per head call: the logits of every position of a window against this many
/// entries (`seqlen × VOCAB_BLOCK` floats, 8 MB at seqlen 512) are one well-shaped GEMM, and the
/// log-sum-exp runs online over the blocks, so the `[seqlen, vocab]` logits never exist at once.
const VOCAB_BLOCK: usize = 4096;

/// One position's loss, accumulated over the vocabulary blocks: a running `ln Σ exp` (`max` so
/// far and `Σ exp(x − max)` in f64; a NaN logit poisons it) and the target's logit.
#[derive(Clone, Copy)]
struct RowLoss {
    max: f32,
    sum: f64,
    nan: bool,
    target: f32,
}

impl RowLoss {
    const EMPTY: RowLoss = RowLoss {
        max: f32::NEG_INFINITY,
        sum: 0.0,
        nan: false,
        target: f32::NAN,
    };

    /// Folds in one block of the row; `shifted` and `e` are scratch at least as long as `x`.
    fn add(&mut self, x: &[f32], shifted: &mut [f32], e: &mut [f32]) {
        let mut m = f32::NEG_INFINITY;
        let mut nan = false;
        for &v in x {
            nan |= v.is_nan();
            m = if v > m { v } else { m };
        }
        if nan {
            self.nan = true;
            return;
        }
        if m == f32::NEG_INFINITY {
            return;
        }
        if m > self.max {
            if self.max > f32::NEG_INFINITY {
                self.sum *= (self.max as f64 - m as f64).exp();
            }
            self.max = m;
        }
        let base = self.max;
        let (shifted, e) = (&mut shifted[..x.len()], &mut e[..x.len()]);
        for (s, &v) in shifted.iter_mut().zip(x) {
            *s = v - base;
        }
        fused::exp(shifted, e);
        self.sum += e
            .chunks(16)
            .map(|c| c.iter().map(|&e| e as f64).sum::<f64>())
            .sum::<f64>();
    }

    /// `ln Σ exp(logits) − logit[target]` (NaN if a logit was NaN).
    fn nll(&self) -> f64 {
        if self.nan {
            f64::NAN
        } else {
            self.max as f64 + self.sum.ln() - self.target as f64
        }
    }
}

/// Sum of `−log softmax(logits_t)[ids[t+1]]` over the positions `t` of one window.
fn window_nll(model: &Llama, window: &[u32], cache: &mut KvCache) -> Result<f64> {
    cache.clear();
    let hidden = model.forward_hidden(window, cache)?;
    let (d, v) = (model.config.hidden_size, model.config.vocab_size);
    let rows = window.len() - 1;
    let hidden = &hidden[..rows * d];
    let mut loss = vec![RowLoss::EMPTY; rows];
    let mut logits = vec![0f32; rows * VOCAB_BLOCK.min(v)];
    for v0 in (0..v).step_by(VOCAB_BLOCK) {
        let vb = VOCAB_BLOCK.min(v - v0);
        let block = &mut logits[..rows * vb];
        model.logits_block(hidden, rows, v0..v0 + vb, block);
        let per = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
        let run = |(i, (loss, block)): (usize, (&mut [RowLoss], &[f32]))| {
            let (mut shifted, mut e) = (vec![0f32; vb], vec![0f32; vb]);
            for (r, (row, x)) in loss.iter_mut().zip(block.chunks(vb)).enumerate() {
                row.add(x, &mut shifted, &mut e);
                let id = window[i * per + r + 1] as usize;
                if (v0..v0 + vb).contains(&id) {
                    row.target = x[id - v0];
                }
            }
        };
        loss.par_chunks_mut(per)
            .zip(block.par_chunks(per * vb))
            .enumerate()
            .for_each(run);
    }
    Ok(loss.iter().map(RowLoss::nll).sum())
}

/// The perplexity of `model` on the token ids `ids` with windows of `seqlen`; `progress(done,
/// total)` is called after each window.
pub fn perplexity(
    model: &Llama,
    ids: &[u32],
    seqlen: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<PerplexityReport> {
    if seqlen < 2 {
        return Err(Error::invalid(
            "perplexity",
            format!("seqlen {seqlen} must be at least 2"),
        ));
    }
    if seqlen > model.config.max_position_embeddings {
        return Err(Error::invalid(
            "perplexity",
            format!(
                "seqlen {seqlen} exceeds the model's context length {}",
                model.config.max_position_embeddings
            ),
        ));
    }
    let windows = ids.len() / seqlen;
    if windows == 0 {
        return Err(Error::invalid(
            "perplexity",
            format!(
                "the text has {} tokens, fewer than one window of {seqlen}",
                ids.len()
            ),
        ));
    }
    let mut cache = model.new_cache(seqlen)?;
    let t0 = Instant::now();
    let mut sum_of_means = 0.0;
    for w in 0..windows {
        let window = &ids[w * seqlen..(w + 1) * seqlen];
        let nll = window_nll(model, window, &mut cache)?;
        if !nll.is_finite() {
            return Err(Error::invalid(
                "perplexity",
                format!("window {w} has a non-finite loss ({nll})"),
            ));
        }
        sum_of_means += nll / (seqlen - 1) as f64;
        progress(w + 1, windows);
    }
    let secs = t0.elapsed().as_secs_f64();
    let nll = sum_of_means / windows as f64;
    Ok(PerplexityReport {
        ppl: nll.exp(),
        nll,
        tokens: ids.len(),
        windows,
        seqlen,
        scored_tokens: windows * (seqlen - 1),
        secs,
        tokens_per_s: (windows * seqlen) as f64 / secs,
    })
}

/// [`perplexity`] of text files (see the module docs for how they are joined and tokenized).
pub fn perplexity_of_files(
    model: &Llama,
    tokenizer: &crate::tokenizer::Tokenizer,
    files: &[PathBuf],
    seqlen: usize,
    progress: impl FnMut(usize, usize),
) -> Result<PerplexityReport> {
    let text = load_texts(files)?;
    let ids = tokenizer.encode(&text, false)?;
    perplexity(model, &ids, seqlen, progress)
}

/// The default evaluation corpus in a data folder: alice29.txt and asyoulik.txt.
pub fn default_eval_files(data_dir: &Path) -> Vec<PathBuf> {
    ["alice29.txt", "asyoulik.txt"]
        .iter()
        .map(|f| data_dir.join(f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LlamaConfig;

    /// The mean NLL straight from the definition: full logits of each window, log-softmax in f64.
    fn nll_by_definition(model: &Llama, ids: &[u32], seqlen: usize) -> f64 {
        let v = model.config.vocab_size;
        let windows = ids.len() / seqlen;
        let mut sum_of_means = 0.0;
        for w in ids.chunks_exact(seqlen).take(windows) {
            let mut cache = KvCache::new(&model.config, seqlen);
            let logits = model
                .forward(w, &mut cache)
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            let mut nll = 0.0;
            for t in 0..seqlen - 1 {
                let row: Vec<f64> = logits[t * v..(t + 1) * v]
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + row.iter().map(|&x| (x - m).exp()).sum::<f64>().ln();
                nll += lse - row[w[t + 1] as usize];
            }
            sum_of_means += nll / (seqlen - 1) as f64;
        }
        sum_of_means / windows as f64
    }

    #[test]
    fn blocked_online_loss_equals_the_definition() {
        // A vocabulary of two full blocks and a ragged third, so the online log-sum-exp crosses
        // block boundaries and targets fall in every block.
        let vocab = 2 * VOCAB_BLOCK + 17;
        let json = format!(
            r#"{{"model_type": "llama", "vocab_size": {vocab}, "hidden_size": 16,
            "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "max_position_embeddings": 64,
            "tie_word_embeddings": true}}"#
        );
        let config = LlamaConfig::from_json_str(&json, "c.json".as_ref()).unwrap();
        let model = Llama::random(&config, 7).unwrap();
        let ids: Vec<u32> = (0..100u32)
            .map(|i| i.wrapping_mul(2654435761) % vocab as u32)
            .collect();
        let r = perplexity(&model, &ids, 24, |_, _| {}).unwrap();
        let want = nll_by_definition(&model, &ids, 24);
        assert!(
            (r.nll - want).abs() < 1e-6 * want.abs(),
            "{} vs {want}",
            r.nll
        );
        assert_eq!((r.windows, r.scored_tokens), (4, 92));
    }

    #[test]
    fn a_nan_logit_poisons_its_row() {
        let mut row = RowLoss::EMPTY;
        let (mut s, mut e) = (vec![0f32; 3], vec![0f32; 3]);
        row.add(&[1.0, 2.0, 3.0], &mut s, &mut e);
        row.target = 2.0;
        assert!(row.nll().is_finite());
        row.add(&[0.0, f32::NAN, 0.0], &mut s, &mut e);
        assert!(row.nll().is_nan());
    }

    #[test]
    fn online_blocks_equal_one_pass() {
        // ln(e^1 + e^-3 + e^5 + e^5 + e^0) in blocks whose maximum rises, then falls (a short
        // last block with longer scratch).
        let mut row = RowLoss::EMPTY;
        let (mut s, mut e) = (vec![0f32; 2], vec![0f32; 2]);
        row.add(&[1.0, -3.0], &mut s, &mut e);
        row.add(&[5.0, 5.0], &mut s, &mut e);
        row.add(&[0.0], &mut s, &mut e);
        row.target = 0.0;
        let want = (1f64.exp() + (-3f64).exp() + 2.0 * 5f64.exp() + 1.0).ln();
        assert!((row.nll() - want).abs() < 1e-6, "{} vs {want}", row.nll());
    }
}
