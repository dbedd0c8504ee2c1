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

/// Rows of logits scored per head call: bounds the logits buffer to `CHUNK · vocab` floats.
const CHUNK: usize = 64;

/// `ln Σ_j exp(x_j)` around the maximum (so nothing overflows), with the SIMD exp and the sum of
/// the exponentials in f64; `shifted` and `e` are as long as `x`.
fn log_sum_exp(x: &[f32], shifted: &mut [f32], e: &mut [f32]) -> f64 {
    let mut m = f32::NEG_INFINITY;
    for &v in x {
        if v.is_nan() {
            return f64::NAN;
        }
        m = m.max(v);
    }
    if m == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    for (s, &v) in shifted.iter_mut().zip(x) {
        *s = v - m;
    }
    fused::exp(shifted, e);
    let s: f64 = e
        .chunks(16)
        .map(|c| c.iter().map(|&e| e as f64).sum::<f64>())
        .sum();
    m as f64 + s.ln()
}

/// Sum of `−log softmax(logits_t)[ids[t+1]]` over the positions `t` of one window.
fn window_nll(model: &Llama, window: &[u32], cache: &mut KvCache) -> Result<f64> {
    cache.clear();
    let hidden = model.forward_hidden(window, cache)?;
    let (d, v) = (model.config.hidden_size, model.config.vocab_size);
    let scored = window.len() - 1;
    let mut total = 0.0;
    let (mut shifted, mut e) = (vec![0f32; v], vec![0f32; v]);
    for r0 in (0..scored).step_by(CHUNK) {
        let rows = CHUNK.min(scored - r0);
        let logits = model.logits_slice(&hidden[r0 * d..(r0 + rows) * d], rows);
        for (r, row) in logits.chunks(v).enumerate() {
            let target = window[r0 + r + 1] as usize;
            total += log_sum_exp(row, &mut shifted, &mut e) - row[target] as f64;
        }
    }
    Ok(total)
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
    let mut cache = KvCache::new(&model.config, seqlen);
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
