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
//! use shears_pruning::calibrate::{prune_model, PruneConfig};
//! use shears_pruning::{method, Sparsity};
//! let json = r#"{"model_type": "llama", "vocab_size": 50, "hidden_size": 32,
//!   "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
//!   "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 64}"#;
//! let config = LlamaConfig::from_json_str(json, "config.json".as_ref())?;
//! let mut model = Llama::random(&config, 0)?;
//! let windows: Vec<Vec<u32>> = (0..4).map(|s| (0..16).map(|i| (i * 7 + s) % 50).collect()).collect();
//! let cfg = PruneConfig::new(method::by_name("sparsegpt")?, Sparsity::Unstructured(0.5));
//! let report = prune_model(&mut model, &windows, &cfg, &mut |_| {})?;
//! assert_eq!((report.method.as_str(), report.layers.len()), ("sparsegpt", 2 * 7));
//! assert!((report.sparsity - 0.5).abs() < 0.02);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::method::{Decision, Input, Observer, PruningMethod, Stage, PROJ};
use crate::{LayerReport, Removal, Sparsity};
use serde::Serialize;
use shears_autograd::{no_grad, Var};
use shears_models::layers::Linear;
use shears_models::llama::{DecoderLayer, Llama};
use shears_tensor::{DType, Error, Result, Rng, Tensor};
use std::sync::Arc;
use std::time::Instant;

/// How to prune a whole model.
#[derive(Debug, Clone)]
pub struct PruneConfig {
    /// The method (see [`by_name`](crate::method::by_name) for the ones the CLI knows).
    pub method: Arc<dyn PruningMethod>,
    /// The target, the same for every projection.
    pub sparsity: Sparsity,
    /// Prune `[q,k,v] → [o] → [gate,up] → [down]` in turn, each on the inputs the pruned groups
    /// before it produce. Default: the method's
    /// ([`true_sequential_default`](PruningMethod::true_sequential_default): on for SparseGPT,
    /// off for Wanda, as in each reference).
    pub true_sequential: bool,
    /// Calibration windows on which each projection's relative output error is measured.
    pub error_windows: usize,
}

impl PruneConfig {
    /// `method`'s defaults for `sparsity`.
    pub fn new(method: Arc<dyn PruningMethod>, sparsity: Sparsity) -> PruneConfig {
        PruneConfig {
            true_sequential: method.true_sequential_default(),
            method,
            sparsity,
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
    /// The method's name.
    pub method: String,
    /// Fraction of zeros over all pruned projections (removed rows and columns count as zeros
    /// of the original shapes).
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
    let needs_data = cfg.method.needs_calibration();
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
    let needs_data = cfg.method.needs_calibration();
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
        let shapes = Llama::layer_linears(&model.model.layers[li]).map(|(_, l)| l.shape());
        let mut layer_reports: Vec<Option<LayerReport>> = vec![None; PROJ.len()];
        let mut run = StageRun {
            model: &mut *model,
            li,
            cfg,
            out: &mut layer_reports,
            progress: &mut *progress,
        };
        if !needs_data {
            // Nothing to observe: each stage's observer decides on the weights alone.
            for stage in Stage::ALL {
                let obs = run.observer(stage);
                let removal = run.prune_stage(stage, obs.as_ref(), &ErrorProbe::default())?;
                run.remove(removal)?;
            }
        } else if cfg.true_sequential {
            run.sequential(&mut x)?;
        } else {
            run.parallel(&mut x)?;
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
        let layer = &model.model.layers[li];
        for ((r, lin), was) in layer_reports
            .iter_mut()
            .zip(Llama::layer_linears(layer))
            .zip(shapes)
        {
            if let Some(r) = r {
                shrunk(r, lin.1, was);
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
        let gone = ((r.rows + r.removed_rows) * (r.cols + r.removed_cols)) as f64 - e;
        (z + r.sparsity * e + gone, n + e + gone)
    });
    Ok(ModelReport {
        method: cfg.method.name().to_string(),
        sparsity: if total > 0.0 { zeros / total } else { 0.0 },
        seconds: start.elapsed().as_secs_f64(),
        layers: reports,
    })
}

/// Brings the report of a projection that a structural removal shrank from `was` to its final
/// shape: rows, columns, what went, and the zeros of what is left.
fn shrunk(r: &mut LayerReport, lin: &Linear, was: [usize; 2]) {
    let now = lin.shape();
    if now == was {
        return;
    }
    r.rows = now[0];
    r.cols = now[1];
    r.removed_rows = was[0] - now[0];
    r.removed_cols = was[1] - now[1];
    r.sparsity = lin.weight_tensor().zero_fraction();
}

/// Inputs of one stage kept for measuring the relative output error after pruning: the first
/// `error_windows` windows, each `(1, t, cols)`.
#[derive(Default)]
struct ErrorProbe {
    x: Vec<Tensor>,
}

/// ‖X·(W − Ŵ)ᵀ‖² / ‖X·Wᵀ‖² over the probe's rows, `dense` the f32 weight before pruning.
fn rel_output_error(probe: &ErrorProbe, dense: &Tensor, pruned: &Linear) -> Result<f64> {
    if probe.x.is_empty() {
        return Ok(0.0);
    }
    let k = pruned.in_features();
    let x = Tensor::cat(&probe.x.iter().collect::<Vec<_>>(), 1)?;
    let x = x.reshape([x.elem_count() / k.max(1), k])?;
    let yd = x.matmul_nt(dense)?;
    let yp = x.matmul_nt(&pruned.weight_tensor().to_dtype(DType::F32)?)?;
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in yd.as_slice::<f32>()?.iter().zip(yp.as_slice::<f32>()?) {
        num += ((a - b) as f64).powi(2);
        den += (*a as f64).powi(2);
    }
    Ok(if den > 0.0 { num / den } else { 0.0 })
}

fn linear_mut(l: &mut DecoderLayer, p: usize) -> &mut Linear {
    Llama::layer_linears_mut(l)
        .into_iter()
        .nth(p)
        .expect("a decoder layer has seven projections")
        .1
}

/// One decoder layer being pruned: the model, which layer, the configuration, its reports (one
/// slot per projection) and the progress callback.
struct StageRun<'a> {
    model: &'a mut Llama,
    li: usize,
    cfg: &'a PruneConfig,
    out: &'a mut [Option<LayerReport>],
    progress: &'a mut dyn FnMut(Event),
}

impl StageRun<'_> {
    fn layer(&self) -> &DecoderLayer {
        &self.model.model.layers[self.li]
    }

    /// A fresh observer for `stage`'s input, as the layer is shaped now.
    fn observer(&self, stage: Stage) -> Box<dyn Observer> {
        let shape = self.layer().shape();
        let hd = self.model.config.head_dim;
        let cols = match stage {
            Stage::Qkv | Stage::GateUp => self.model.config.hidden_size,
            Stage::O => shape.num_attention_heads * hd,
            Stage::Down => shape.intermediate_size,
        };
        self.cfg
            .method
            .observer(&Input::new(self.li, stage, cols, shape, hd))
    }

    /// Feeds `xs` (one window's input of a stage, `(1, t, cols)`) to `obs`, and keeps it for
    /// the error probe while the probe has room.
    fn observe(&self, obs: &mut dyn Observer, probe: &mut ErrorProbe, xs: &Var) -> Result<()> {
        obs.observe(xs.tensor())?;
        if probe.x.len() < self.cfg.error_windows {
            probe.x.push(xs.tensor().clone());
        }
        Ok(())
    }

    /// Asks `obs` about each projection of `stage`: masks are applied at once (and their
    /// output error measured on the probe), removals merged and returned for the caller to
    /// apply when the indices they hold are no longer needed.
    fn prune_stage(
        &mut self,
        stage: Stage,
        obs: &dyn Observer,
        probe: &ErrorProbe,
    ) -> Result<Removal> {
        let li = self.li;
        let mut removal = Removal::default();
        for &p in stage.projections() {
            let name = format!("model.layers.{li}.{}", PROJ[p]);
            let lin = linear_mut(&mut self.model.model.layers[li], p);
            let (dense, dtype) = {
                let wt = lin.weight_tensor();
                (wt.to_dtype(DType::F32)?, wt.dtype())
            };
            let report = match obs.prune(&name, &dense, &self.cfg.sparsity)? {
                Decision::Mask { weight, pruned } => {
                    if weight.dims() != dense.dims() {
                        return Err(Error::invalid(
                            "prune_model",
                            format!(
                                "{name}: the method returned a {} weight for a {} one",
                                weight.shape(),
                                dense.shape()
                            ),
                        ));
                    }
                    *lin = Linear::new(weight.to_dtype(dtype)?)?;
                    let mut r = pruned.report;
                    if self.cfg.method.needs_calibration() {
                        r.rel_error = Some(rel_output_error(probe, &dense, lin)?);
                    }
                    r
                }
                Decision::Remove { units, report } => {
                    removal.extend(units);
                    report
                }
            };
            (self.progress)(Event::Pruned(&report));
            self.out[p] = Some(report);
        }
        Ok(removal)
    }

    /// Applies a structural removal to the layer; true when something went.
    fn remove(&mut self, removal: Removal) -> Result<bool> {
        if removal.is_empty() {
            return Ok(false);
        }
        let li = self.li;
        removal.apply(
            &mut self.model.model.layers[li],
            &format!("model.layers.{li}"),
        )?;
        self.model.refresh_shapes()?;
        Ok(true)
    }

    /// True-sequential order: four passes over the windows, one per projection group, each with
    /// the groups before it already pruned. The attention context of every window is kept
    /// between two passes instead of being recomputed (unless `o_proj`'s pass removed heads);
    /// the MLP activation is recomputed for the outputs.
    fn sequential(&mut self, x: &mut [Var]) -> Result<()> {
        // [q, k, v] on input_layernorm(x).
        let mut obs = self.observer(Stage::Qkv);
        let mut probe = ErrorProbe::default();
        for xs in x.iter() {
            let xn = self.layer().attention_input(xs)?;
            self.observe(obs.as_mut(), &mut probe, &xn)?;
        }
        let removal = self.prune_stage(Stage::Qkv, obs.as_ref(), &probe)?;
        self.remove(removal)?;
        // [o] on the attention context of the pruned q, k, v.
        let mut obs = self.observer(Stage::O);
        let mut probe = ErrorProbe::default();
        let context = |layer: &DecoderLayer, xs: &Var| {
            layer.attention_context(&layer.attention_input(xs)?, None)
        };
        let mut ctx = Vec::with_capacity(x.len());
        for xs in x.iter() {
            let c = context(self.layer(), xs)?;
            self.observe(obs.as_mut(), &mut probe, &c)?;
            ctx.push(c);
        }
        let removal = self.prune_stage(Stage::O, obs.as_ref(), &probe)?;
        if self.remove(removal)? {
            ctx = x
                .iter()
                .map(|xs| context(self.layer(), xs))
                .collect::<Result<_>>()?;
        }
        // [gate, up] on post_attention_layernorm(x + o(ctx)); x becomes the residual h.
        let mut obs = self.observer(Stage::GateUp);
        let mut probe = ErrorProbe::default();
        for (xs, c) in x.iter_mut().zip(&ctx) {
            *xs = self.layer().attention_residual(xs, c)?;
            let xn = self.layer().mlp_input(xs)?;
            self.observe(obs.as_mut(), &mut probe, &xn)?;
        }
        drop(ctx);
        let removal = self.prune_stage(Stage::GateUp, obs.as_ref(), &probe)?;
        self.remove(removal)?;
        // [down] on silu(gate(xn)) ⊙ up(xn).
        let mut obs = self.observer(Stage::Down);
        let mut probe = ErrorProbe::default();
        for xs in x.iter() {
            let layer = self.layer();
            let a = layer.mlp.activation(&layer.mlp_input(xs)?)?;
            self.observe(obs.as_mut(), &mut probe, &a)?;
        }
        let removal = self.prune_stage(Stage::Down, obs.as_ref(), &probe)?;
        self.remove(removal)?;
        drop(obs);
        drop(probe);
        // The layer's outputs. The activation is computed again rather than kept for every
        // window: it is the largest buffer, `[windows · t, intermediate]` (403 MB for SmolLM2 at
        // 128 × 512), and recomputing it costs one more gate/up product per window.
        for xs in x.iter_mut() {
            let layer = self.layer();
            let a = layer.mlp.activation(&layer.mlp_input(xs)?)?;
            *xs = layer.mlp_residual(xs, &a)?;
        }
        Ok(())
    }

    /// All projections observe the dense layer in one pass, are pruned (removals, whose
    /// indices all refer to the dense layer, are applied together at the end), and the pruned
    /// layer is run again for the outputs (Wanda's reference order).
    fn parallel(&mut self, x: &mut [Var]) -> Result<()> {
        let mut obs: Vec<Box<dyn Observer>> =
            Stage::ALL.iter().map(|&s| self.observer(s)).collect();
        let mut probes: Vec<ErrorProbe> = (0..4).map(|_| ErrorProbe::default()).collect();
        for xs in x.iter() {
            let layer = self.layer();
            let xn = layer.attention_input(xs)?;
            let ctx = layer.attention_context(&xn, None)?;
            let h = layer.attention_residual(xs, &ctx)?;
            let hn = layer.mlp_input(&h)?;
            let act = layer.mlp.activation(&hn)?;
            for (i, v) in [xn, ctx, hn, act].iter().enumerate() {
                self.observe(obs[i].as_mut(), &mut probes[i], v)?;
            }
        }
        let mut removal = Removal::default();
        for (i, &s) in Stage::ALL.iter().enumerate() {
            removal.extend(self.prune_stage(s, obs[i].as_ref(), &probes[i])?);
        }
        drop(obs);
        drop(probes);
        self.remove(removal)?;
        for xs in x.iter_mut() {
            *xs = self.layer().forward(xs, None)?;
        }
        Ok(())
    }
}
