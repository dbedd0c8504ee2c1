//! Magnitude pruning: zero the weights of smallest `|W_ij|`.
//!
//! The baseline of Han et al., "Learning both Weights and Connections for Efficient Neural
//! Networks" (NeurIPS 2015), in the one-shot form of the Wanda reference code
//! (`locuslab/wanda`, `lib/prune.py::prune_magnitude`), which the Wanda paper (Sun et al., 2024,
//! Table 3) and SparseGPT (Frantar & Alistarh, 2023, Table 1) compare against:
//!
//! - unstructured: one threshold for the whole matrix, `thresh = sort(|W|)[int(numel·s)]`, prune
//!   `|W_ij| <= thresh` (so ties at the threshold are all pruned, and at least
//!   `int(numel·s) + 1` weights go — the reference's arithmetic; see
//!   [`Sparsity::Unstructured`](crate::Sparsity) for the `s = 0` and `s = 1` edge cases);
//! - N:M: per row, the `n` smallest `|W_ij|` in every group of `m` consecutive columns (ties to
//!   the lower column).
//!
//! ```
//! use shears_pruning::{magnitude_prune, Sparsity};
//! let mut w = vec![1.0f32, -4.0, 3.0, -2.0];
//! let p = magnitude_prune("toy", &mut w, 1, 4, &Sparsity::NM { n: 2, m: 4 })?;
//! assert_eq!(w, [0.0, -4.0, 3.0, 0.0]);
//! assert_eq!(p.mask, [true, false, false, true]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```
//!
//! As a [`PruningMethod`] for the calibration driver, [`Magnitude`] needs no calibration data:
//! its observers ignore inputs.

use crate::method::{mask_decision, Decision, Input, Observer, PruningMethod};
use crate::report::{LayerReport, Pruned};
use crate::sparsity::{apply_mask, check_weight, mark_lowest, threshold_mask, zero_fraction};
use crate::Sparsity;
use rayon::prelude::*;
use shears_tensor::{Result, Tensor};
use std::time::Instant;

/// Magnitude pruning as a [`PruningMethod`] (`magnitude`): no calibration, every projection
/// pruned by [`magnitude_prune`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Magnitude;

impl PruningMethod for Magnitude {
    fn name(&self) -> &'static str {
        "magnitude"
    }
    fn needs_calibration(&self) -> bool {
        false
    }
    fn true_sequential_default(&self) -> bool {
        false
    }
    fn observer(&self, _input: &Input) -> Box<dyn Observer> {
        Box::new(MagnitudeObserver)
    }
}

/// Magnitude's observer: no statistics.
struct MagnitudeObserver;

impl Observer for MagnitudeObserver {
    fn observe(&mut self, _x: &Tensor) -> Result<()> {
        Ok(())
    }
    fn prune(&self, name: &str, w: &Tensor, target: &Sparsity) -> Result<Decision> {
        mask_decision(w, |w, rows, cols| {
            magnitude_prune(name, w, rows, cols, target)
        })
    }
}

/// Prunes `w: [rows, cols]` (row-major, `rows` output features) in place by magnitude; pruned
/// weights become exactly `+0.0`. `name` labels errors and the report.
pub fn magnitude_prune(
    name: &str,
    w: &mut [f32],
    rows: usize,
    cols: usize,
    sparsity: &Sparsity,
) -> Result<Pruned> {
    let start = Instant::now();
    check_weight("magnitude_prune", name, w, rows, cols, sparsity)?;
    let scores: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    let mut mask = vec![false; w.len()];
    match *sparsity {
        Sparsity::Unstructured(s) => threshold_mask(&scores, s, &mut mask),
        Sparsity::NM { n, m } => nm_mask(&scores, cols, n, m, &mut mask),
    }
    apply_mask(w, &mask);
    let mut report = LayerReport::new(name, "magnitude", rows, cols, *sparsity);
    report.sparsity = zero_fraction(w);
    report.seconds = start.elapsed().as_secs_f64();
    Ok(Pruned { mask, report })
}

/// Per row, marks the `n` lowest scores of every group of `m` columns (`cols % m == 0`).
pub(crate) fn nm_mask<T: Copy + PartialOrd + Sync>(
    scores: &[T],
    cols: usize,
    n: usize,
    m: usize,
    mask: &mut [bool],
) {
    if cols == 0 {
        return;
    }
    mask.par_chunks_mut(cols)
        .zip(scores.par_chunks(cols))
        .for_each(|(mrow, srow)| {
            for (mg, sg) in mrow.chunks_mut(m).zip(srow.chunks(m)) {
                mark_lowest(sg, n, mg);
            }
        });
}
