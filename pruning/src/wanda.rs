//! Wanda: pruning by weights and activations.
//!
//! Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language Models"
//! (ICLR 2024), Eq. (1): `S_ij = |W_ij| · ‖X_j‖₂`, compared per output row (§3, "comparison
//! group"), with no weight update. The arithmetic follows the reference code, `locuslab/wanda`:
//!
//! - statistic (`lib/layerwrapper.py::WrappedGPT.add_batch`, called once per window of one
//!   sample): `scaler ← scaler·n/(n+1); n ← n+1; scaler ← scaler + ‖x_j‖²/n`, i.e. the running
//!   mean over windows of the per-window `Σ_tokens x_j²`. [`WandaStats::observe`] takes `b`
//!   windows at once with the same closed form, `scaler ← scaler·n/(n+b) + Σ_b ‖x_j‖²/(n+b)`
//!   (accumulated in f64; the reference is f32);
//! - score (`lib/prune.py::prune_wanda`): `|W| · sqrt(scaler)` in f32;
//! - unstructured: per row, a stable ascending sort, and the first `int(cols·s)` are pruned
//!   (exactly that many per row, unlike magnitude's `<= thresh`);
//! - N:M: per row, the `n` lowest scores in each group of `m` columns (ties to the lower column).
//!
//! ```
//! use shears_pruning::{Sparsity, WandaStats};
//! // Two input features; feature 1 is ten times larger on the calibration tokens.
//! let mut stats = WandaStats::new("toy.in", 2);
//! stats.observe(&[1.0, 10.0, -1.0, 10.0], 1)?; // one window of two tokens
//! let mut w = vec![2.0f32, 1.0]; // |2|·√2 < |1|·√200: the larger weight goes
//! let p = stats.prune("toy", &mut w, 1, 2, &Sparsity::Unstructured(0.5))?;
//! assert_eq!(w, [0.0, 1.0]);
//! assert_eq!(p.report.nsamples, Some(1));
//! # Ok::<(), shears_tensor::Error>(())
//! ```
//!
//! As a [`PruningMethod`] for the calibration driver, [`Wanda`]'s observers are [`WandaStats`]
//! fed the stage outputs as tensors, one window at a time, all on the dense layer (the
//! reference's order).

use crate::magnitude::nm_mask;
use crate::method::{input_rows, mask_decision, Decision, Input, Observer, PruningMethod};
use crate::report::{LayerReport, Pruned};
use crate::sparsity::{apply_mask, check_finite, check_weight, thresh_index, zero_fraction};
use crate::Sparsity;
use rayon::prelude::*;
use shears_tensor::{Error, Result, Tensor};
use std::time::Instant;

/// Wanda as a [`PruningMethod`] (`wanda`): calibrated, not true-sequential by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanda;

impl PruningMethod for Wanda {
    fn name(&self) -> &'static str {
        "wanda"
    }
    fn needs_calibration(&self) -> bool {
        true
    }
    fn true_sequential_default(&self) -> bool {
        false
    }
    fn observer(&self, input: &Input) -> Box<dyn Observer> {
        Box::new(WandaObserver(WandaStats::new(&input.name, input.cols)))
    }
}

/// [`WandaStats`] behind the [`Observer`] interface.
struct WandaObserver(WandaStats);

impl Observer for WandaObserver {
    fn observe(&mut self, x: &Tensor) -> Result<()> {
        let s = &mut self.0;
        let (x, samples) = input_rows("wanda.observe", &s.name, x, s.cols)?;
        s.observe(x.as_slice::<f32>()?, samples)
    }
    fn prune(&self, name: &str, w: &Tensor, target: &Sparsity) -> Result<Decision> {
        mask_decision(w, |w, rows, cols| self.0.prune(name, w, rows, cols, target))
    }
}

/// Wanda's statistic for one linear layer's input: per input column `j`, the running mean over
/// calibration windows of `Σ_tokens x_j²`. Weights that read the same input (q/k/v, gate/up)
/// can share one object: [`prune`](Self::prune) takes `&self`.
#[derive(Debug, Clone)]
pub struct WandaStats {
    name: String,
    cols: usize,
    nsamples: usize,
    scaler_row: Vec<f64>,
}

impl WandaStats {
    /// Empty statistics for an input of `cols` features; `name` labels errors.
    pub fn new(name: &str, cols: usize) -> Self {
        WandaStats {
            name: name.to_string(),
            cols,
            nsamples: 0,
            scaler_row: vec![0.0; cols],
        }
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Windows observed so far.
    pub fn nsamples(&self) -> usize {
        self.nsamples
    }

    /// The statistic, `[cols]`: the running mean over windows of `Σ_tokens x_j²`.
    pub fn scaler_row(&self) -> &[f64] {
        &self.scaler_row
    }

    /// Adds `samples` windows: `x: [tokens, cols]` row-major holds their tokens stacked (any
    /// split of tokens between windows gives the same result). Equals the reference's `add_batch`
    /// once per window. Errors, leaving the statistics unchanged, on a shape mismatch, zero
    /// samples, or a NaN/infinity in `x`.
    pub fn observe(&mut self, x: &[f32], samples: usize) -> Result<()> {
        let op = "wanda.observe";
        check_input(op, &self.name, x, self.cols, samples)?;
        let cols = self.cols;
        if cols == 0 {
            self.nsamples += samples;
            return Ok(());
        }
        const ROWS: usize = 1024;
        // Fixed chunks summed in a fixed order: the result does not depend on the thread count.
        let partial: Vec<Vec<f64>> = x
            .par_chunks(ROWS * cols)
            .map(|chunk| {
                let mut acc = vec![0.0f64; cols];
                for row in chunk.chunks_exact(cols) {
                    for (a, &v) in acc.iter_mut().zip(row) {
                        let v = v as f64;
                        *a += v * v;
                    }
                }
                acc
            })
            .collect();
        let mut sum = vec![0.0f64; cols];
        for p in &partial {
            for (s, &v) in sum.iter_mut().zip(p) {
                *s += v;
            }
        }
        let n = self.nsamples as f64;
        let total = (self.nsamples + samples) as f64;
        for (s, &v) in self.scaler_row.iter_mut().zip(&sum) {
            *s = *s * (n / total) + v / total;
        }
        self.nsamples += samples;
        Ok(())
    }

    /// Prunes `w: [rows, cols]` (row-major, reading this input) in place; pruned weights become
    /// exactly `+0.0`. `name` labels errors and the report. Errors before any calibration sample
    /// was observed.
    pub fn prune(
        &self,
        name: &str,
        w: &mut [f32],
        rows: usize,
        cols: usize,
        sparsity: &Sparsity,
    ) -> Result<Pruned> {
        let start = Instant::now();
        let op = "wanda.prune";
        check_weight(op, name, w, rows, cols, sparsity)?;
        check_stats(op, name, cols, self.cols, self.nsamples)?;
        // f32 as in the reference: |W| * sqrt(scaler_row), scaler_row f32.
        let scale: Vec<f32> = self.scaler_row.iter().map(|&s| (s as f32).sqrt()).collect();
        let metric: Vec<f32> = w
            .par_chunks(cols.max(1))
            .flat_map_iter(|row| row.iter().zip(&scale).map(|(v, s)| v.abs() * s))
            .collect();
        let mut mask = vec![false; w.len()];
        match *sparsity {
            Sparsity::Unstructured(s) => {
                let k = thresh_index(cols, s).min(cols);
                if cols > 0 {
                    mask.par_chunks_mut(cols)
                        .zip(metric.par_chunks(cols))
                        .for_each(|(mrow, srow)| {
                            let mut idx: Vec<usize> = (0..cols).collect();
                            // Stable: equal scores keep column order (torch.sort(stable=True)).
                            idx.sort_by(|&a, &b| {
                                srow[a].partial_cmp(&srow[b]).expect("finite scores")
                            });
                            for &j in &idx[..k] {
                                mrow[j] = true;
                            }
                        });
                }
            }
            Sparsity::NM { n, m } => nm_mask(&metric, cols, n, m, &mut mask),
        }
        apply_mask(w, &mask);
        let mut report = LayerReport::new(name, "wanda", rows, cols, *sparsity);
        report.sparsity = zero_fraction(w);
        report.nsamples = Some(self.nsamples);
        report.dead_columns = self.scaler_row.iter().filter(|&&s| s == 0.0).count();
        report.seconds = start.elapsed().as_secs_f64();
        Ok(Pruned { mask, report })
    }
}

/// Shared `observe` checks: `x` is `[tokens, cols]`, at least one sample, all finite.
pub(crate) fn check_input(
    op: &'static str,
    name: &str,
    x: &[f32],
    cols: usize,
    samples: usize,
) -> Result<()> {
    if samples == 0 {
        return Err(Error::invalid(
            op,
            format!("layer `{name}`: samples must be at least 1"),
        ));
    }
    if (cols == 0 && !x.is_empty()) || (cols > 0 && !x.len().is_multiple_of(cols)) {
        return Err(Error::invalid(
            op,
            format!(
                "layer `{name}`: input holds {} values, not a whole number of rows of {cols}",
                x.len()
            ),
        ));
    }
    check_finite(op, name, "input", x, cols)
}

/// Shared `prune` checks: the weight's `cols` match the statistics, and some sample was seen.
pub(crate) fn check_stats(
    op: &'static str,
    name: &str,
    cols: usize,
    stats_cols: usize,
    nsamples: usize,
) -> Result<()> {
    if cols != stats_cols {
        return Err(Error::invalid(
            op,
            format!("layer `{name}`: weight has {cols} columns, the statistics {stats_cols}"),
        ));
    }
    if nsamples == 0 {
        return Err(Error::invalid(
            op,
            format!("layer `{name}`: no calibration samples observed"),
        ));
    }
    Ok(())
}
