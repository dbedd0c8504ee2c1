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
use shears_tensor::{DType, Error, Result, Tensor};
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

/// `ln(eᵃ + eᵇ)` without overflow (`-inf` is the identity; NaN propagates).
fn log_add_exp(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            hi
        };
    }
    hi + (lo - hi).exp().ln_1p()
}

/// `−log softmax(logits_r)[targets[r]]` for every row `r` of the normed hidden states
/// `hidden: [targets.len(), hidden]`: the head runs in blocks of the vocabulary with an online
/// log-sum-exp, so the `[rows, vocab]` logits never exist at once. Shared by [`perplexity`] and
/// callers that score many sequences in one batch (Bonsai's sub-models).
pub fn next_token_nll(model: &Llama, hidden: &Tensor, targets: &[u32]) -> Result<Vec<f64>> {
    let v = model.config.vocab_size;
    let rows = targets.len();
    // Per row: ln Σ exp over the blocks so far, and the target's logit.
    let mut lse = vec![f64::NEG_INFINITY; rows];
    let mut target = vec![f64::NAN; rows];
    for v0 in (0..v).step_by(VOCAB_BLOCK) {
        let vb = VOCAB_BLOCK.min(v - v0);
        let logits = model
            .logits_block(hidden, v0..v0 + vb)?
            .to_dtype(DType::F32)?;
        let block = logits.as_slice::<f32>()?;
        for (r, l) in logits.logsumexp()?.as_slice::<f64>()?.iter().enumerate() {
            lse[r] = log_add_exp(lse[r], *l);
            let id = targets[r] as usize;
            if (v0..v0 + vb).contains(&id) {
                target[r] = block[r * vb + id - v0] as f64;
            }
        }
    }
    Ok(lse.iter().zip(&target).map(|(l, t)| l - t).collect())
}

/// Sum of `−log softmax(logits_t)[ids[t+1]]` over the positions `t` of one window.
fn window_nll(model: &Llama, window: &[u32], cache: &mut KvCache) -> Result<f64> {
    cache.clear();
    let hidden = model.forward_hidden(window, cache)?;
    let hidden = hidden.narrow(0, 0, window.len() - 1)?;
    Ok(next_token_nll(model, &hidden, &window[1..])?.iter().sum())
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
    use shears_tensor::{DType, Tensor};

    /// The mean NLL straight from the definition: full logits of each window, log-softmax in f64.
    fn nll_by_definition(model: &Llama, ids: &[u32], seqlen: usize) -> f64 {
        let v = model.config.vocab_size;
        let windows = ids.len() / seqlen;
        let mut sum_of_means = 0.0;
        for w in ids.chunks_exact(seqlen).take(windows) {
            let mut cache = model.new_cache_with_dtype(seqlen, DType::F32).unwrap();
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

    /// ln Σ exp over several blocks, combined with `log_add_exp` the way `window_nll` does.
    fn blocked_lse(blocks: &[&[f32]]) -> f64 {
        blocks.iter().fold(f64::NEG_INFINITY, |acc, b| {
            let t = Tensor::from_slice(b, [1, b.len()]).unwrap();
            log_add_exp(acc, t.logsumexp().unwrap().to_vec::<f64>().unwrap()[0])
        })
    }

    #[test]
    fn a_nan_logit_poisons_its_row() {
        assert!(blocked_lse(&[&[1.0, 2.0, 3.0]]).is_finite());
        assert!(blocked_lse(&[&[1.0, 2.0, 3.0], &[0.0, f32::NAN, 0.0]]).is_nan());
        assert!(blocked_lse(&[&[0.0, f32::NAN], &[1.0, 2.0]]).is_nan());
    }

    #[test]
    fn online_blocks_equal_one_pass() {
        // ln(e^1 + e^-3 + e^5 + e^5 + e^0) in blocks whose maximum rises, then falls; a block of
        // -inf changes nothing.
        let got = blocked_lse(&[&[1.0, -3.0], &[5.0, 5.0], &[f32::NEG_INFINITY], &[0.0]]);
        let want = (1f64.exp() + (-3f64).exp() + 2.0 * 5f64.exp() + 1.0).ln();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
