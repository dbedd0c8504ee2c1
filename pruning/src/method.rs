//! What a pruning method is to the calibration driver: a type implementing [`PruningMethod`],
//! which makes one [`Observer`] per projection input of a decoder layer. An observer sees that
//! input window by window (`observe`, the reference code's `add_batch`), then decides for each
//! projection that reads it (`prune`, the reference's `fasterprune`): a [`Decision::Mask`] (the
//! weight keeps its shape, some entries become exact zeros) or a [`Decision::Remove`] (whole
//! units of the layer go: MLP channels, query heads, KV heads; see [`Removal`]).
//!
//! The driver ([`crate::calibrate`]) knows no method by name: a new method is a new file with a
//! type implementing this trait, plus one line in [`by_name`]'s table for the CLI.
//!
//! ```
//! use shears_pruning::method::{by_name, Decision, Input, Stage};
//! use shears_pruning::Sparsity;
//! use shears_models::config::LayerShape;
//! use shears_tensor::{DType, Tensor};
//! let wanda = by_name("wanda")?;
//! assert!(wanda.needs_calibration() && !wanda.true_sequential_default());
//! let shape = LayerShape { num_attention_heads: 2, num_key_value_heads: 1, intermediate_size: 8 };
//! let input = Input::new(0, Stage::GateUp, 4, shape, 2);
//! assert_eq!(input.name, "model.layers.0.mlp.gate_proj (input)");
//! let mut obs = wanda.observer(&input);
//! obs.observe(&Tensor::randn([2, 16, 4], 0.0, 1.0, DType::F32, 0)?)?; // two windows of 16 tokens
//! let w = Tensor::randn([8, 4], 0.0, 1.0, DType::F32, 1)?;
//! match obs.prune("model.layers.0.mlp.up_proj", &w, &Sparsity::Unstructured(0.5))? {
//!     Decision::Mask { weight, pruned } => {
//!         assert_eq!(weight.zero_fraction(), 0.5);
//!         assert_eq!(pruned.report.method, "wanda");
//!     }
//!     Decision::Remove { .. } => unreachable!("Wanda masks"),
//! }
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::report::{LayerReport, Pruned};
use crate::{Magnitude, Removal, SparseGpt, Sparsity, Wanda};
use shears_models::config::LayerShape;
use shears_tensor::{DType, Error, Result, Tensor};
use std::fmt::Debug;
use std::sync::Arc;

/// A pruning method: its name, what calibration it needs, and a factory of observers.
pub trait PruningMethod: Send + Sync + Debug {
    /// The name reports and the CLI use (`magnitude`, `wanda`, `sparsegpt`).
    fn name(&self) -> &'static str;
    /// Whether observers need to see calibration inputs. When false, the driver runs no forward
    /// pass and calls [`Observer::prune`] on fresh observers.
    fn needs_calibration(&self) -> bool;
    /// The order the method's reference prunes a layer in: `[q,k,v] → [o] → [gate,up] → [down]`,
    /// each group on the inputs the pruned groups before it produce (true), or all seven on the
    /// dense layer's inputs (false).
    fn true_sequential_default(&self) -> bool;
    /// Empty statistics for one input of a decoder layer, shared by the projections reading it.
    fn observer(&self, input: &Input) -> Box<dyn Observer>;
}

/// One input's statistics, then a decision for each projection that reads it.
pub trait Observer: Send {
    /// Accumulates statistics from calibration windows: `x: (windows, tokens, cols)`, or
    /// `(tokens, cols)` for one window; f32 (other float dtypes are converted).
    fn observe(&mut self, x: &Tensor) -> Result<()>;
    /// Decides for the projection `name` with weight `w: [rows, cols]` (f32), given the target.
    /// Unit indices in a [`Decision::Remove`] refer to the layer's shape as this observer's
    /// [`Input`] gave it.
    fn prune(&self, name: &str, w: &Tensor, target: &Sparsity) -> Result<Decision>;
}

/// What an observer decides for one projection.
#[derive(Debug, Clone)]
pub enum Decision {
    /// The weight keeps its shape: `weight` `[rows, cols]` (f32) has the pruned entries at
    /// exact `+0.0`; `pruned` holds the mask and the report.
    Mask {
        /// The new weight.
        weight: Tensor,
        /// The mask and the report.
        pruned: Pruned,
    },
    /// Whole units of the layer go (an empty [`Removal`] leaves the projection as it is). The
    /// driver merges the removals of an input's projections and applies them together; `report`
    /// describes the projection asked about (the driver sets its final shape).
    Remove {
        /// The units to remove.
        units: Removal,
        /// The report for this projection.
        report: LayerReport,
    },
}

/// The four inputs of a LLaMA decoder layer's projections, in true-sequential order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// `input_layernorm(x)`, read by `q_proj`, `k_proj`, `v_proj`: `(.., hidden)`.
    Qkv,
    /// The attention context, read by `o_proj`: `(.., heads · head_dim)`.
    O,
    /// `post_attention_layernorm(h)`, read by `gate_proj`, `up_proj`: `(.., hidden)`.
    GateUp,
    /// `silu(gate(x)) ⊙ up(x)`, read by `down_proj`: `(.., intermediate)`.
    Down,
}

impl Stage {
    /// All four, in true-sequential order.
    pub const ALL: [Stage; 4] = [Stage::Qkv, Stage::O, Stage::GateUp, Stage::Down];

    /// The projections reading this input, as indices into
    /// [`Llama::layer_linears`](shears_models::llama::Llama::layer_linears).
    pub fn projections(self) -> &'static [usize] {
        match self {
            Stage::Qkv => &[0, 1, 2],
            Stage::O => &[3],
            Stage::GateUp => &[4, 5],
            Stage::Down => &[6],
        }
    }
}

/// The projections of a decoder layer, in the order reports list them.
pub(crate) const PROJ: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Where an observer sits: which input of which layer, and the layer's shape at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// `model.layers.{layer}.{first projection} (input)`: labels errors.
    pub name: String,
    /// The decoder layer.
    pub layer: usize,
    /// Which of its inputs.
    pub stage: Stage,
    /// Input features (the projections' columns).
    pub cols: usize,
    /// The layer's query heads, KV heads and MLP width when the observer was made.
    pub shape: LayerShape,
    /// Width of one head.
    pub head_dim: usize,
}

impl Input {
    /// The input `stage` of layer `layer`, `cols` wide, in a layer shaped `shape`.
    pub fn new(
        layer: usize,
        stage: Stage,
        cols: usize,
        shape: LayerShape,
        head_dim: usize,
    ) -> Input {
        Input {
            name: format!(
                "model.layers.{layer}.{} (input)",
                PROJ[stage.projections()[0]]
            ),
            layer,
            stage,
            cols,
            shape,
            head_dim,
        }
    }
}

/// Makes a method with its reference defaults.
type Make = fn() -> Arc<dyn PruningMethod>;

/// The methods the CLI knows: a new method adds its line here.
const METHODS: [(&str, Make); 3] = [
    ("magnitude", || Arc::new(Magnitude)),
    ("wanda", || Arc::new(Wanda)),
    ("sparsegpt", || Arc::new(SparseGpt::default())),
];

/// The method called `name` (`magnitude`, `wanda`, `sparsegpt`) with its reference defaults.
pub fn by_name(name: &str) -> Result<Arc<dyn PruningMethod>> {
    match METHODS.iter().find(|(n, _)| *n == name) {
        Some((_, make)) => Ok(make()),
        None => Err(Error::invalid(
            "method::by_name",
            format!(
                "unknown pruning method {name:?} ({})",
                names().collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// The names [`by_name`] knows.
pub fn names() -> impl Iterator<Item = &'static str> {
    METHODS.iter().map(|(n, _)| *n)
}

/// `x` as a contiguous f32 `[tokens, cols]` tensor and its number of windows: the leading dims
/// of a rank ≥ 3 input count windows; a 2-D input is one window. Errors name `op` and `name`.
pub(crate) fn input_rows(
    op: &'static str,
    name: &str,
    x: &Tensor,
    cols: usize,
) -> Result<(Tensor, usize)> {
    let dims = x.dims();
    if dims.len() < 2 || dims[dims.len() - 1] != cols {
        return Err(Error::invalid(
            op,
            format!(
                "layer `{name}`: input has shape {}, expected (windows, tokens, {cols}) or \
                 (tokens, {cols})",
                x.shape()
            ),
        ));
    }
    let samples: usize = dims[..dims.len() - 2].iter().product();
    let tokens = x.elem_count().checked_div(cols).unwrap_or(0);
    let x = x
        .to_dtype(DType::F32)?
        .contiguous()?
        .reshape([tokens, cols])?;
    Ok((x, samples))
}

/// A [`Decision::Mask`] from an in-place pruner `f(w, rows, cols)` run on a copy of `w`.
pub(crate) fn mask_decision(
    w: &Tensor,
    f: impl FnOnce(&mut [f32], usize, usize) -> Result<Pruned>,
) -> Result<Decision> {
    let (rows, cols) = match *w.dims() {
        [r, c] => (r, c),
        _ => {
            return Err(Error::invalid(
                "prune",
                format!("expected a [rows, cols] weight, got shape {}", w.shape()),
            ))
        }
    };
    let mut v = w.to_dtype(DType::F32)?.to_vec::<f32>()?;
    let pruned = f(&mut v, rows, cols)?;
    Ok(Decision::Mask {
        weight: Tensor::from_vec(v, [rows, cols])?,
        pruned,
    })
}
