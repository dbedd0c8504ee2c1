//! The layer-by-layer calibration driver (ALGORITHMS.md, "Calibration"): embed every calibration
//! window once, then for each decoder layer observe the inputs of its projections, prune them,
//! run the pruned layer and hand its outputs to the next layer. Only one layer's statistics and
//! the activations of the current layer are alive at a time.
//!
//! With `true_sequential` (SparseGPT's default) the projections are pruned in four groups,
//! `[q, k, v] → [o] → [gate, up] → [down]`, and each group observes the inputs that the already
//! pruned groups produce; otherwise (Wanda's reference) all seven observe the dense layer.
//!
//! ```
//! use shears_models::config::LlamaConfig;
//! use shears_models::llama::Llama;
//! use shears_pruning::calibrate::{prune_model, Method, PruneConfig};
//! use shears_pruning::Sparsity;
//! let json = r#"{"model_type": "llama", "vocab_size": 50, "hidden_size": 32,
//!   "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
//!   "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 64}"#;
//! let config = LlamaConfig::from_json_str(json, "config.json".as_ref())?;
//! let mut model = Llama::random(&config, 0)?;
//! let windows: Vec<Vec<u32>> = (0..4).map(|s| (0..16).map(|i| (i * 7 + s) % 50).collect()).collect();
//! let cfg = PruneConfig::new(Method::SparseGpt, Sparsity::Unstructured(0.5));
//! let report = prune_model(&mut model, &windows, &cfg, &mut |_| {})?;
//! assert_eq!(report.layers.len(), 2 * 7);
//! assert!((report.sparsity - 0.5).abs() < 0.02);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::{
    magnitude_prune, LayerReport, Pruned, SparseGptConfig, SparseGptStats, Sparsity, WandaStats,
};
use serde::Serialize;
use shears_autograd::{no_grad, Var};
use shears_models::layers::Linear;
use shears_models::llama::{DecoderLayer, Llama};
use shears_tensor::{DType, Error, Result, Rng, Tensor};
use std::time::Instant;

/// Which pruning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// |W| (no calibration data).
    Magnitude,
    /// |W|·‖x‖ (Sun et al. 2023).
    Wanda,
    /// Optimal-brain-surgeon updates with the inverse Hessian (Frantar & Alistarh 2023).
    SparseGpt,
}

impl Method {
    /// The CLI name (`magnitude`, `wanda`, `sparsegpt`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Wanda => "wanda",
            Method::SparseGpt => "sparsegpt",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Method> {
        match s {
            "magnitude" => Ok(Method::Magnitude),
            "wanda" => Ok(Method::Wanda),
            "sparsegpt" => Ok(Method::SparseGpt),
            other => Err(Error::invalid(
                "Method::from_str",
                format!("unknown pruning method {other:?} (magnitude, wanda, sparsegpt)"),
            )),
        }
    }
}

/// How to prune a whole model.
#[derive(Debug, Clone)]
pub struct PruneConfig {
    /// The method.
    pub method: Method,
    /// The target, the same for every projection.
    pub sparsity: Sparsity,
    /// Prune `[q,k,v] → [o] → [gate,up] → [down]` in turn, each on the inputs the pruned groups
    /// before it produce. Default: on for SparseGPT, off for Wanda (as in each reference).
    pub true_sequential: bool,
    /// SparseGPT's column block (128).
    pub blocksize: usize,
    /// SparseGPT's damping as a fraction of the Hessian's mean diagonal (0.01).
    pub percdamp: f64,
    /// Calibration windows on which each projection's relative output error is measured.
    pub error_windows: usize,
}

impl PruneConfig {
    /// The reference defaults for `method`.
    pub fn new(method: Method, sparsity: Sparsity) -> PruneConfig {
        PruneConfig {
            method,
            sparsity,
            true_sequential: method == Method::SparseGpt,
            blocksize: 128,
            percdamp: 0.01,
            error_windows: 8,
        }
    }
}

/// What happened while pruning, for progress displays.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// The calibration windows were embedded.
    Embedded {
        /// Number of windows.
        windows: usize,
    },
    /// Decoder layer `layer` (of `layers`) starts.
    LayerStart {
        /// Its index.
        layer: usize,
        /// The model's layer count.
        layers: usize,
    },
    /// One projection was pruned.
    Pruned(&'a LayerReport),
    /// Decoder layer `layer` is done.
    LayerDone {
        /// Its index.
        layer: usize,
        /// Seconds it took.
        seconds: f64,
    },
}

/// The outcome of [`prune_model`].
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// The method.
    pub method: Method,
    /// Fraction of zeros over all pruned projections.
    pub sparsity: f64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// One report per projection, in model order.
    pub layers: Vec<LayerReport>,
}

/// `nsamples` windows of `seqlen` tokens at random offsets into `tokens`, from `seed` (the
/// reference draws `randint(0, len − seqlen − 1)` per window).
pub fn calibration_windows(
    tokens: &[u32],
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    if seqlen == 0 || nsamples == 0 {
        return Err(Error::invalid(
            "calibration_windows",
            "nsamples and seqlen must be positive",
        ));
    }
    if tokens.len() <= seqlen {
        return Err(Error::invalid(
            "calibration_windows",
            format!(
                "the calibration text has {} tokens, fewer than one window of {seqlen} + 1",
                tokens.len()
            ),
        ));
    }
    let mut rng = Rng::new(seed);
    let span = (tokens.len() - seqlen) as u64;
    Ok((0..nsamples)
        .map(|_| {
            let start = rng.below(span) as usize;
            tokens[start..start + seqlen].to_vec()
        })
        .collect())
}

/// The projections of a decoder layer, in the order the reports list them.
const PROJ: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// The four inputs of a decoder layer's projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Qkv,
    O,
    GateUp,
    Down,
}

impl Stage {
    fn projections(self) -> &'static [usize] {
        match self {
            Stage::Qkv => &[0, 1, 2],
            Stage::O => &[3],
            Stage::GateUp => &[4, 5],
            Stage::Down => &[6],
        }
    }
}

fn linear_mut(l: &mut DecoderLayer, p: usize) -> &mut Linear {
    Llama::layer_linears_mut(l)
        .into_iter()
        .nth(p)
        .expect("a decoder layer has seven projections")
        .1
}

/// Statistics of one stage's input, for the method in use.
enum Stats {
    None,
    Wanda(WandaStats),
    SparseGpt(SparseGptStats),
}

impl Stats {
    fn new(method: Method, name: &str, cols: usize) -> Stats {
        match method {
            Method::Magnitude => Stats::None,
            Method::Wanda => Stats::Wanda(WandaStats::new(name, cols)),
            Method::SparseGpt => Stats::SparseGpt(SparseGptStats::new(name, cols)),
        }
    }
    fn observe(&mut self, x: &[f32]) -> Result<()> {
        match self {
            Stats::None => Ok(()),
            Stats::Wanda(s) => s.observe(x, 1),
            Stats::SparseGpt(s) => s.observe(x, 1),
        }
    }
}

/// Inputs of one stage kept for measuring the relative output error after pruning.
struct ErrorProbe {
    x: Vec<f32>,
    rows: usize,
}

/// Prunes every projection of every decoder layer of `model` in place with the method and target
/// in `cfg`, calibrated on `windows` (token ids, all of one length). Embeddings, norms and the
/// output head are left dense. `progress` hears of each layer and projection as it finishes.
pub fn prune_model(
    model: &mut Llama,
    windows: &[Vec<u32>],
    cfg: &PruneConfig,
    progress: &mut dyn FnMut(Event),
) -> Result<ModelReport> {
    let start = Instant::now();
    cfg.sparsity.validate("prune_model")?;
    let needs_data = cfg.method != Method::Magnitude;
    let t = windows.first().map_or(0, Vec::len);
    if needs_data && (windows.is_empty() || t == 0) {
        return Err(Error::invalid(
            "prune_model",
            format!("{} needs calibration windows", cfg.method.name()),
        ));
    }
    if windows.iter().any(|w| w.len() != t) {
        return Err(Error::invalid(
            "prune_model",
            "calibration windows must all have the same length",
        ));
    }
    if t > model.config.max_position_embeddings {
        return Err(Error::invalid(
            "prune_model",
            format!(
                "windows of {t} tokens exceed the context length {}",
                model.config.max_position_embeddings
            ),
        ));
    }
    no_grad(|| prune_layers(model, windows, cfg, progress, start))
}

/// [`prune_model`] after its checks, with recording off.
fn prune_layers(
    model: &mut Llama,
    windows: &[Vec<u32>],
    cfg: &PruneConfig,
    progress: &mut dyn FnMut(Event),
    start: Instant,
) -> Result<ModelReport> {
    let needs_data = cfg.method != Method::Magnitude;
    let t = windows.first().map_or(0, Vec::len);
    let n = if needs_data { windows.len() } else { 0 };
    // Hidden states of every window, each (1, t, hidden): decoder layer i's inputs, then its
    // outputs.
    let dt = model.compute_dtype();
    let mut x: Vec<Var> = windows
        .iter()
        .take(n)
        .map(|w| {
            let ids = Tensor::from_slice(w, [1, w.len()])?;
            model.model.embed_tokens.forward(&ids, dt)
        })
        .collect::<Result<_>>()?;
    progress(Event::Embedded { windows: n });
    let layers = model.model.layers.len();
    let mut reports = Vec::with_capacity(layers * PROJ.len());
    for li in 0..layers {
        let lt = Instant::now();
        progress(Event::LayerStart { layer: li, layers });
        let mut layer_reports: Vec<Option<LayerReport>> = vec![None; PROJ.len()];
        if !needs_data {
            for p in 0..PROJ.len() {
                let name = format!("model.layers.{li}.{}", PROJ[p]);
                let lin = linear_mut(&mut model.model.layers[li], p);
                let r = prune_linear(lin, |w, rows, cols| {
                    magnitude_prune(&name, w, rows, cols, &cfg.sparsity)
                })?;
                progress(Event::Pruned(&r));
                layer_reports[p] = Some(r);
            }
        } else if cfg.true_sequential {
            run_sequential(model, li, &mut x, t, cfg, &mut layer_reports, progress)?;
        } else {
            run_parallel(model, li, &mut x, t, cfg, &mut layer_reports, progress)?;
        }
        for (w, xs) in x.iter().enumerate() {
            let v = xs.tensor().as_slice::<f32>()?;
            if let Some(bad) = v.iter().find(|v| !v.is_finite()) {
                return Err(Error::invalid(
                    "prune_model",
                    format!(
                        "model.layers.{li} produced a non-finite activation ({bad}) in window {w}"
                    ),
                ));
            }
        }
        reports.extend(layer_reports.into_iter().flatten());
        progress(Event::LayerDone {
            layer: li,
            seconds: lt.elapsed().as_secs_f64(),
        });
    }
    let (zeros, total) = reports.iter().fold((0f64, 0f64), |(z, n), r| {
        let e = (r.rows * r.cols) as f64;
        (z + r.sparsity * e, n + e)
    });
    Ok(ModelReport {
        method: cfg.method,
        sparsity: if total > 0.0 { zeros / total } else { 0.0 },
        seconds: start.elapsed().as_secs_f64(),
        layers: reports,
    })
}

/// The weight of `lin` as f32 `[rows, cols]`, pruned by `f`, written back in its dtype.
fn prune_linear(
    lin: &mut Linear,
    f: impl FnOnce(&mut [f32], usize, usize) -> Result<Pruned>,
) -> Result<LayerReport> {
    let wt = lin.weight_tensor();
    let (rows, cols, dtype) = (wt.dims()[0], wt.dims()[1], wt.dtype());
    let mut w = wt.to_dtype(DType::F32)?.to_vec::<f32>()?;
    let pruned = f(&mut w, rows, cols)?;
    *lin = Linear::new(Tensor::from_vec(w, [rows, cols])?.to_dtype(dtype)?)?;
    Ok(pruned.report)
}

/// ‖X·(W − Ŵ)ᵀ‖² / ‖X·Wᵀ‖² over the probe's rows.
fn rel_output_error(probe: &ErrorProbe, dense: &[f32], pruned: &Linear) -> Result<f64> {
    let (n, k) = (pruned.out_features(), pruned.in_features());
    let m = probe.rows;
    if m == 0 {
        return Ok(0.0);
    }
    let x = Tensor::from_slice(&probe.x, [m, k])?;
    let yd = x.matmul_nt(&Tensor::from_slice(dense, [n, k])?)?;
    let yp = x.matmul_nt(&pruned.weight_tensor().to_dtype(DType::F32)?)?;
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in yd.as_slice::<f32>()?.iter().zip(yp.as_slice::<f32>()?) {
        num += ((a - b) as f64).powi(2);
        den += (*a as f64).powi(2);
    }
    Ok(if den > 0.0 { num / den } else { 0.0 })
}

/// Prunes the projections of `stage` of layer `li` from the statistics gathered for it.
#[allow(clippy::too_many_arguments)]
fn prune_stage(
    model: &mut Llama,
    li: usize,
    stage: Stage,
    stats: &Stats,
    probe: &ErrorProbe,
    cfg: &PruneConfig,
    out: &mut [Option<LayerReport>],
    progress: &mut dyn FnMut(Event),
) -> Result<()> {
    for &p in stage.projections() {
        let name = format!("model.layers.{li}.{}", PROJ[p]);
        let lin = linear_mut(&mut model.model.layers[li], p);
        let dense = lin.weight_tensor().to_dtype(DType::F32)?.to_vec::<f32>()?;
        let mut r = prune_linear(lin, |w, rows, cols| match stats {
            Stats::None => magnitude_prune(&name, w, rows, cols, &cfg.sparsity),
            Stats::Wanda(s) => s.prune(&name, w, rows, cols, &cfg.sparsity),
            Stats::SparseGpt(s) => {
                let mut c = SparseGptConfig::new(cfg.sparsity);
                c.blocksize = cfg.blocksize;
                c.percdamp = cfg.percdamp;
                s.prune(&name, w, rows, cols, &c)
            }
        })?;
        let lin = linear_mut(&mut model.model.layers[li], p);
        r.rel_error = Some(rel_output_error(probe, &dense, lin)?);
        progress(Event::Pruned(&r));
        out[p] = Some(r);
    }
    Ok(())
}

fn stage_name(li: usize, stage: Stage) -> String {
    let p = stage.projections();
    format!("model.layers.{li}.{} (input)", PROJ[p[0]])
}

/// Observes `xs` (one window's input of `stage`, `(1, t, cols)`) and keeps it for the error
/// probe while the probe has room.
fn observe(
    stats: &mut Stats,
    probe: &mut ErrorProbe,
    xs: &Var,
    t: usize,
    keep: bool,
) -> Result<()> {
    let xs = xs.tensor().as_slice::<f32>()?;
    stats.observe(xs)?;
    if keep {
        probe.x.extend_from_slice(xs);
        probe.rows += t;
    }
    Ok(())
}

fn empty_probe() -> ErrorProbe {
    ErrorProbe {
        x: Vec::new(),
        rows: 0,
    }
}

/// True-sequential order: four passes over the windows, one per projection group, each with the
/// groups before it already pruned. The attention context of every window is kept between two
/// passes instead of being recomputed; the MLP activation is recomputed for the outputs.
fn run_sequential(
    model: &mut Llama,
    li: usize,
    x: &mut [Var],
    t: usize,
    cfg: &PruneConfig,
    out: &mut [Option<LayerReport>],
    progress: &mut dyn FnMut(Event),
) -> Result<()> {
    let layer_shape = model.model.layers[li].shape();
    let d = model.config.hidden_size;
    let qd = layer_shape.num_attention_heads * model.config.head_dim;
    let f = layer_shape.intermediate_size;
    let keep = |w: usize| w < cfg.error_windows;
    // [q, k, v] on input_layernorm(x).
    let mut stats = Stats::new(cfg.method, &stage_name(li, Stage::Qkv), d);
    let mut probe = empty_probe();
    for (w, xs) in x.iter().enumerate() {
        let xn = model.model.layers[li].attention_input(xs)?;
        observe(&mut stats, &mut probe, &xn, t, keep(w))?;
    }
    prune_stage(model, li, Stage::Qkv, &stats, &probe, cfg, out, progress)?;
    // [o] on the attention context of the pruned q, k, v.
    let mut stats = Stats::new(cfg.method, &stage_name(li, Stage::O), qd);
    let mut probe = empty_probe();
    let mut ctx = Vec::with_capacity(x.len());
    for (w, xs) in x.iter().enumerate() {
        let layer = &model.model.layers[li];
        let c = layer.attention_context(&layer.attention_input(xs)?, None)?;
        observe(&mut stats, &mut probe, &c, t, keep(w))?;
        ctx.push(c);
    }
    prune_stage(model, li, Stage::O, &stats, &probe, cfg, out, progress)?;
    // [gate, up] on post_attention_layernorm(x + o(ctx)); x becomes the residual h.
    let mut stats = Stats::new(cfg.method, &stage_name(li, Stage::GateUp), d);
    let mut probe = empty_probe();
    for (w, (xs, c)) in x.iter_mut().zip(&ctx).enumerate() {
        let layer = &model.model.layers[li];
        *xs = layer.attention_residual(xs, c)?;
        let xn = layer.mlp_input(xs)?;
        observe(&mut stats, &mut probe, &xn, t, keep(w))?;
    }
    drop(ctx);
    prune_stage(model, li, Stage::GateUp, &stats, &probe, cfg, out, progress)?;
    // [down] on silu(gate(xn)) ⊙ up(xn).
    let mut stats = Stats::new(cfg.method, &stage_name(li, Stage::Down), f);
    let mut probe = empty_probe();
    for (w, xs) in x.iter().enumerate() {
        let layer = &model.model.layers[li];
        let a = layer.mlp.activation(&layer.mlp_input(xs)?)?;
        observe(&mut stats, &mut probe, &a, t, keep(w))?;
    }
    prune_stage(model, li, Stage::Down, &stats, &probe, cfg, out, progress)?;
    drop(stats);
    drop(probe);
    // The layer's outputs. The activation is computed again rather than kept for every window:
    // it is the largest buffer, `[windows · t, intermediate]` (403 MB for SmolLM2 at 128 × 512),
    // and recomputing it costs one more gate/up product per window.
    for xs in x.iter_mut() {
        let layer = &model.model.layers[li];
        let a = layer.mlp.activation(&layer.mlp_input(xs)?)?;
        *xs = layer.mlp_residual(xs, &a)?;
    }
    Ok(())
}

/// All projections observe the dense layer in one pass, are pruned, and the pruned layer is run
/// again for the outputs (Wanda's reference order).
fn run_parallel(
    model: &mut Llama,
    li: usize,
    x: &mut [Var],
    t: usize,
    cfg: &PruneConfig,
    out: &mut [Option<LayerReport>],
    progress: &mut dyn FnMut(Event),
) -> Result<()> {
    let layer_shape = model.model.layers[li].shape();
    let d = model.config.hidden_size;
    let qd = layer_shape.num_attention_heads * model.config.head_dim;
    let f = layer_shape.intermediate_size;
    let keep = |w: usize| w < cfg.error_windows;
    let stages = [Stage::Qkv, Stage::O, Stage::GateUp, Stage::Down];
    let mut stats: Vec<Stats> = stages
        .iter()
        .zip([d, qd, d, f])
        .map(|(&s, cols)| Stats::new(cfg.method, &stage_name(li, s), cols))
        .collect();
    let mut probes: Vec<ErrorProbe> = (0..4).map(|_| empty_probe()).collect();
    for (w, xs) in x.iter().enumerate() {
        let layer = &model.model.layers[li];
        let xn = layer.attention_input(xs)?;
        observe(&mut stats[0], &mut probes[0], &xn, t, keep(w))?;
        let ctx = layer.attention_context(&xn, None)?;
        observe(&mut stats[1], &mut probes[1], &ctx, t, keep(w))?;
        let h = layer.attention_residual(xs, &ctx)?;
        let xn = layer.mlp_input(&h)?;
        observe(&mut stats[2], &mut probes[2], &xn, t, keep(w))?;
        let act = layer.mlp.activation(&xn)?;
        observe(&mut stats[3], &mut probes[3], &act, t, keep(w))?;
    }
    for (i, &s) in stages.iter().enumerate() {
        prune_stage(model, li, s, &stats[i], &probes[i], cfg, out, progress)?;
    }
    drop(stats);
    drop(probes);
    for xs in x.iter_mut() {
        *xs = model.model.layers[li].forward(xs, None)?;
    }
    Ok(())
}
