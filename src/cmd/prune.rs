//! `shears prune`: one-shot pruning of a model, layer by layer, with perplexity before and after.
//!
//! ```text
//! shears prune --sparsity 0.5 --eval                # SparseGPT on the fetched model, ppl before/after
//! shears prune --method wanda --nm 2:4 --out pruned --format compressed --json
//! shears prune --method magnitude --sparsity 0.3 --bench   # decode speed dense vs sparse layers
//! shears prune --method bonsai --sparsity 0.3 --out small  # structured: a smaller dense model
//! ```

use super::common::{json_line, peak_rss_bytes, progress_bar, save_atomically, CliResult};
use super::model::{decode_tokens_per_s, default_texts, ModelArgs};
use super::prune_bonsai::BonsaiArgs;
use clap::{Args, ValueEnum};
use shears::models::eval;
use shears::models::llama::Llama;
use shears::models::load;
use shears::models::tokenizer::Tokenizer;
use shears::pruning::calibrate::{self, Event, PruneConfig};
use shears::pruning::{method, PruningMethod, Sparsity};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// How the pruned model is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutFormat {
    /// HF safetensors with the pruned weights as exact +0.0 (what serving engines load).
    Dense,
    /// compressed-tensors sparse layouts (bitmask, or 2:4) with `sparsity_config` in config.json.
    Compressed,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Pruning method: magnitude, wanda or sparsegpt (layer by layer, unstructured or N:M), or
    /// bonsai (structured: whole MLP channels and KV groups leave; see the Bonsai options).
    #[arg(long, value_parser = parse_method, default_value = "sparsegpt")]
    pub(crate) method: MethodArg,
    /// Unstructured sparsity, the fraction of each projection's weights removed [default: 0.5
    /// unless --nm is given]; with bonsai, the fraction of the parameters outside the embeddings
    /// and the head.
    #[arg(long, conflicts_with = "nm")]
    pub(crate) sparsity: Option<f64>,
    /// N:M semi-structured sparsity: N of every M consecutive input weights are removed (2:4).
    #[arg(long, value_parser = parse_nm)]
    pub(crate) nm: Option<(usize, usize)>,
    /// Calibration text files, joined by a blank line [default: lcet10.txt and plrabn12.txt in
    /// the data folder].
    #[arg(long, num_args = 1..)]
    pub(crate) calib: Vec<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 128)]
    nsamples: usize,
    /// Tokens per calibration (and evaluation) window.
    #[arg(long, default_value_t = 512)]
    pub(crate) seqlen: usize,
    /// Seed of the calibration window offsets.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Prune [q,k,v] → [o] → [gate,up] → [down] in turn [default: on for sparsegpt, off for wanda].
    #[arg(long)]
    true_sequential: Option<bool>,
    /// Where to write the pruned model (an HF directory; replaced atomically when it exists).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// How to write it.
    #[arg(long, value_enum, default_value = "dense")]
    pub(crate) format: OutFormat,
    /// Evaluate perplexity before and after on these files (`--eval` alone: alice29.txt and
    /// asyoulik.txt in the data folder).
    #[arg(long, num_args = 0..)]
    pub(crate) eval: Option<Vec<PathBuf>>,
    /// Evaluate only the first N windows.
    #[arg(long)]
    pub(crate) eval_windows: Option<usize>,
    /// With --eval, skip the dense model's perplexity (when it is known already).
    #[arg(long)]
    pub(crate) no_dense_eval: bool,
    /// Also time decoding (128 tokens, greedy) with the dense model and with the pruned one held
    /// in sparse layers (bitmask, or N:M), in the same run.
    #[arg(long)]
    pub(crate) bench: bool,
    /// Print one JSON object (method, sparsity, seconds, ppl_before, ppl_after, peak_rss_bytes,
    /// layers, ...).
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) bonsai: BonsaiArgs,
}

/// A layer-wise method, or Bonsai.
#[derive(Clone, Debug)]
pub enum MethodArg {
    /// Magnitude, Wanda, SparseGPT: masks per projection, layer by layer.
    Layerwise(Arc<dyn PruningMethod>),
    /// Bonsai: structured removal scored by sub-model perplexities.
    Bonsai,
}

fn parse_method(s: &str) -> Result<MethodArg, String> {
    if s.eq_ignore_ascii_case("bonsai") {
        return Ok(MethodArg::Bonsai);
    }
    method::by_name(s)
        .map(MethodArg::Layerwise)
        .map_err(|e| format!("{e} (or bonsai)"))
}

/// The calibration token ids: `--calib` files, or lcet10.txt and plrabn12.txt.
pub(crate) fn calibration_ids(args: &PruneArgs, tok: &Tokenizer) -> CliResult<Vec<u32>> {
    let calib_files = if args.calib.is_empty() {
        default_texts(|dir| ["lcet10.txt", "plrabn12.txt"].map(|f| dir.join(f)).to_vec())?
    } else {
        args.calib.clone()
    };
    Ok(tok.encode(&eval::load_texts(&calib_files)?, false)?)
}

/// The evaluation token ids when `--eval` is given (cut to `--eval-windows`).
pub(crate) fn evaluation_ids(args: &PruneArgs, tok: &Tokenizer) -> CliResult<Option<Vec<u32>>> {
    let Some(files) = &args.eval else {
        return Ok(None);
    };
    let files = if files.is_empty() {
        default_texts(eval::default_eval_files)?
    } else {
        files.clone()
    };
    let mut ids = tok.encode(&eval::load_texts(&files)?, false)?;
    if let Some(w) = args.eval_windows {
        ids.truncate(w * args.seqlen);
    }
    Ok(Some(ids))
}

/// Perplexity of `model` on `ids` with a progress bar, printed unless `--json`.
pub(crate) fn evaluate(
    args: &PruneArgs,
    model: &Llama,
    ids: Option<&[u32]>,
    show: bool,
    what: &str,
) -> CliResult<Option<eval::PerplexityReport>> {
    let Some(ids) = ids else {
        return Ok(None);
    };
    let bar = progress_bar(
        (ids.len() / args.seqlen) as u64,
        show,
        &format!("windows ({what})"),
    );
    let r = eval::perplexity(model, ids, args.seqlen, |d, _| bar.set_position(d as u64))?;
    bar.finish_and_clear();
    if !args.json {
        eprintln!(
            "perplexity {what}: {:.4} ({} windows of {})",
            r.ppl, r.windows, r.seqlen
        );
    }
    Ok(Some(r))
}

fn parse_nm(s: &str) -> Result<(usize, usize), String> {
    let err = || format!("expected N:M such as 2:4, got {s:?}");
    let (n, m) = s.split_once(':').ok_or_else(err)?;
    let (n, m) = (
        n.trim().parse().map_err(|_| err())?,
        m.trim().parse().map_err(|_| err())?,
    );
    if n == 0 || n >= m {
        return Err(format!("N:M needs 0 < N < M, got {n}:{m}"));
    }
    Ok((n, m))
}

pub fn run(args: &PruneArgs) -> CliResult {
    let t_all = Instant::now();
    let sparsity = match (args.sparsity, args.nm) {
        (_, Some((n, m))) => Sparsity::NM { n, m },
        (Some(s), None) => Sparsity::Unstructured(s),
        (None, None) => Sparsity::Unstructured(0.5),
    };
    sparsity.validate("shears prune")?;
    let method = match &args.method {
        MethodArg::Layerwise(m) => m.clone(),
        MethodArg::Bonsai => return super::prune_bonsai::run(args, t_all),
    };
    if args.format == OutFormat::Compressed && args.out.is_none() {
        return Err("--format compressed needs --out DIR".into());
    }
    let (mut model, tok, load_secs) = args.model.load()?;
    // A NaN or infinity in a weight would turn every logit into NaN: name it instead.
    model.check_finite()?;
    let show = !args.json && std::io::stderr().is_terminal();
    let calib_ids = calibration_ids(args, &tok)?;
    let windows =
        calibrate::calibration_windows(&calib_ids, args.nsamples, args.seqlen, args.seed)?;
    drop(calib_ids);
    let eval_ids = evaluation_ids(args, &tok)?;
    let run_eval =
        |model: &Llama, what: &str| evaluate(args, model, eval_ids.as_deref(), show, what);
    let before = if args.no_dense_eval {
        None
    } else {
        run_eval(&model, "dense")?
    };
    let bench_prompt: Vec<u32> = windows[0].clone();
    let decode_dense = if args.bench {
        let tps = decode_tokens_per_s(&model, &bench_prompt, 128)?;
        if !args.json {
            eprintln!("decode dense: {tps:.1} tokens/s");
        }
        Some(tps)
    } else {
        None
    };

    let mut cfg = PruneConfig::new(method.clone(), sparsity);
    if let Some(ts) = args.true_sequential {
        cfg.true_sequential = ts;
    }
    let layers = model.config.num_hidden_layers;
    let layer_bar = progress_bar(layers as u64, show, "layers");
    let mut log = |e: Event| match e {
        Event::Embedded { windows } => {
            layer_bar.set_message(format!("{windows} calibration windows embedded"))
        }
        Event::LayerStart { layer, .. } => layer_bar.set_message(format!("layer {layer}")),
        Event::Pruned(r) => {
            if !args.json {
                let line = format!(
                    "{:<40} {:>5}x{:<5} sparsity {:.4}  rel. error {}  {:.2} s{}",
                    r.name,
                    r.rows,
                    r.cols,
                    r.sparsity,
                    r.rel_error.map_or("-".to_string(), |e| format!("{e:.3e}")),
                    r.seconds,
                    if r.retries > 0 {
                        format!("  (damping raised {}×)", r.retries)
                    } else {
                        String::new()
                    }
                );
                if layer_bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    layer_bar.println(line);
                }
            }
        }
        Event::LayerDone { layer, .. } => layer_bar.set_position(layer as u64 + 1),
    };
    let report = calibrate::prune_model(&mut model, &windows, &cfg, &mut log)?;
    layer_bar.finish_and_clear();
    drop(windows);
    if !args.json {
        eprintln!(
            "pruned {} projections with {} to sparsity {:.4} in {:.1} s",
            report.layers.len(),
            method.name(),
            report.sparsity,
            report.seconds
        );
    }
    let after = run_eval(&model, "pruned")?;
    let layout = match sparsity {
        Sparsity::Unstructured(_) => load::SparseLayout::Bitmask,
        // `--nm N:M` prunes N of every M; the layout counts the kept ones.
        Sparsity::NM { n, m } => load::SparseLayout::Nm { n: m - n, m },
    };
    let decode_sparse = if args.bench {
        // The pruned projections move into sparse layers; the function is the same.
        load::sparsify(&mut model, layout)?;
        let tps = decode_tokens_per_s(&model, &bench_prompt, 128)?;
        if !args.json {
            eprintln!("decode pruned (sparse layers): {tps:.1} tokens/s");
        }
        Some(tps)
    } else {
        None
    };
    if let Some(out) = &args.out {
        let t = Instant::now();
        save_atomically(out, |dir| match args.format {
            OutFormat::Dense => Ok(load::save_hf(&model, Some(&tok), dir, None)?),
            OutFormat::Compressed => Ok(load::save_compressed(
                &model,
                Some(&tok),
                dir,
                layout,
                None,
            )?),
        })?;
        if !args.json {
            eprintln!(
                "saved to {} in {:.1} s",
                out.display(),
                t.elapsed().as_secs_f64()
            );
        }
    }
    let rss = peak_rss_bytes();
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let target: serde_json::Value = match &sparsity {
            Sparsity::Unstructured(s) => (*s).into(),
            Sparsity::NM { n, m } => format!("{n}:{m}").into(),
        };
        // Keys in alphabetical order, as this line has always printed them.
        let line = json_line(&[
            ("achieved_sparsity", report.sparsity.into()),
            (
                "decode_speedup",
                decode_dense.zip(decode_sparse).map(|(d, s)| s / d).into(),
            ),
            ("decode_tokens_per_s_dense", decode_dense.into()),
            ("decode_tokens_per_s_pruned", decode_sparse.into()),
            ("eval_windows", after.as_ref().map(|r| r.windows).into()),
            (
                "format",
                args.out
                    .as_ref()
                    .map(|_| format!("{:?}", args.format).to_lowercase())
                    .into(),
            ),
            ("layers", serde_json::to_value(&report.layers)?),
            ("load_secs", load_secs.into()),
            ("method", method.name().into()),
            ("nsamples", args.nsamples.into()),
            (
                "out",
                args.out.as_ref().map(|p| p.display().to_string()).into(),
            ),
            ("peak_rss_bytes", rss.into()),
            ("ppl_after", after.as_ref().map(|r| r.ppl).into()),
            ("ppl_before", before.as_ref().map(|r| r.ppl).into()),
            ("seconds", report.seconds.into()),
            ("seed", args.seed.into()),
            ("seqlen", args.seqlen.into()),
            ("sparsity", target),
            ("threads", rayon::current_num_threads().into()),
            ("total_seconds", t_all.elapsed().as_secs_f64().into()),
            ("true_sequential", cfg.true_sequential.into()),
        ]);
        writeln!(stdout, "{line}")?;
    } else {
        let fmt = |r: &Option<eval::PerplexityReport>| {
            r.as_ref().map_or("-".into(), |r| format!("{:.4}", r.ppl))
        };
        writeln!(
            stdout,
            "{} {}: sparsity {:.4}, {:.1} s pruning | perplexity dense {} → pruned {} (seqlen {}) | decode dense {} → pruned {} tokens/s | peak RSS {}",
            method.name(),
            match &sparsity {
                Sparsity::Unstructured(s) => format!("{:.0}%", s * 100.0),
                Sparsity::NM { n, m } => format!("{n}:{m}"),
            },
            report.sparsity,
            report.seconds,
            fmt(&before),
            fmt(&after),
            args.seqlen,
            decode_dense.map_or("-".into(), |t| format!("{t:.1}")),
            decode_sparse.map_or("-".into(), |t| format!("{t:.1}")),
            rss.map_or("?".into(), |b| format!("{:.2} GB", b as f64 / 1e9)),
        )?;
    }
    Ok(())
}
