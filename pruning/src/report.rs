//! What a pruner hands back: the mask it applied and a serialisable report.

use crate::Sparsity;
use serde::Serialize;

/// The result of pruning one weight matrix in place.
#[derive(Debug, Clone)]
pub struct Pruned {
    /// `[rows, cols]` row-major, `true` where the method pruned the weight (now exactly `+0.0`).
    /// SparseGPT also zeroes the columns of dead inputs; those zeros are counted in
    /// [`LayerReport::sparsity`] but only marked here when the method's mask picked them.
    pub mask: Vec<bool>,
    /// Figures for logs and `--json` output.
    pub report: LayerReport,
}

/// Figures about one pruned weight matrix, for logs and `--json` output.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// The weight's name, as given by the caller (e.g. `model.layers.0.self_attn.q_proj`).
    pub name: String,
    /// The method's [`name`](crate::PruningMethod::name): `"magnitude"`, `"wanda"`,
    /// `"sparsegpt"`, ...
    pub method: &'static str,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// The target asked for.
    pub target: Sparsity,
    /// Fraction of exact zeros in the weight after pruning.
    pub sparsity: f64,
    /// Relative output reconstruction error on the calibration inputs,
    /// `tr(ΔW·H·ΔWᵀ) / tr(W·H·Wᵀ)` with the undamped Hessian `H`; `None` where the method has no
    /// `H` (the calibration driver may fill it).
    pub rel_error: Option<f64>,
    /// SparseGPT's own loss estimate `Σ (w − q)² / (2·U_ii²)`, summed over the matrix.
    pub obs_loss: Option<f64>,
    /// Wall-clock seconds spent in `prune`.
    pub seconds: f64,
    /// The diagonal damping `λ` finally used (SparseGPT).
    pub damping: Option<f64>,
    /// How many times the damping had to be raised before the Cholesky factorisations succeeded.
    pub retries: u32,
    /// Input columns that calibration never excited (`H_ii = 0`), zeroed by SparseGPT.
    pub dead_columns: usize,
    /// Calibration samples (windows) behind the statistics, where there are any.
    pub nsamples: Option<usize>,
    /// Rows removed by a structural [`Removal`](crate::Removal) (`rows` is the final count);
    /// absent from the JSON when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub removed_rows: usize,
    /// Columns removed by a structural removal (`cols` is the final count); absent when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub removed_cols: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl LayerReport {
    /// An empty report for the weight `name` (`[rows, cols]`) pruned by `method` towards
    /// `target`: sparsity 0, no measurements.
    pub fn new(
        name: &str,
        method: &'static str,
        rows: usize,
        cols: usize,
        target: Sparsity,
    ) -> Self {
        LayerReport {
            name: name.to_string(),
            method,
            rows,
            cols,
            target,
            sparsity: 0.0,
            rel_error: None,
            obs_loss: None,
            seconds: 0.0,
            damping: None,
            retries: 0,
            dead_columns: 0,
            nsamples: None,
            removed_rows: 0,
            removed_cols: 0,
        }
    }
}
