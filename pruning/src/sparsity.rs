//! Sparsity targets, the masks all methods share, and the checks every pruner runs at its
//! boundary.
//!
//! ```
//! use shears_pruning::Sparsity;
//! assert!(Sparsity::Unstructured(0.5).validate("demo").is_ok());
//! assert!(Sparsity::NM { n: 2, m: 4 }.validate("demo").is_ok());
//! assert!(Sparsity::Unstructured(1.5).validate("demo").is_err());
//! assert!(Sparsity::NM { n: 4, m: 4 }.validate("demo").is_err());
//! assert_eq!(Sparsity::NM { n: 2, m: 4 }.fraction(), 0.5);
//! ```

use serde::Serialize;
use shears_tensor::{Error, Result};

/// What to prune.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Sparsity {
    /// Prune this fraction `s` (`0 ≤ s ≤ 1`) of the weights, the comparison group being the
    /// method's (whole matrix, row, or 128-column block).
    Unstructured(f64),
    /// Semi-structured `n:m`: in every group of `m` consecutive input columns of a row, `n` are
    /// pruned (`0 < n < m`; 2:4 is what sparse tensor cores accelerate).
    NM {
        /// Weights pruned per group.
        n: usize,
        /// Group width, in input columns.
        m: usize,
    },
}

impl Sparsity {
    /// Checks the target: `0 ≤ s ≤ 1` (finite) or `0 < n < m`. `layer` names the weight in the
    /// error message.
    pub fn validate(&self, layer: &str) -> Result<()> {
        match *self {
            Sparsity::Unstructured(s) if (0.0..=1.0).contains(&s) => Ok(()),
            Sparsity::Unstructured(s) => Err(Error::invalid(
                "prune",
                format!("layer `{layer}`: unstructured sparsity must lie in [0, 1], got {s}"),
            )),
            Sparsity::NM { n, m } if 0 < n && n < m => Ok(()),
            Sparsity::NM { n, m } => Err(Error::invalid(
                "prune",
                format!("layer `{layer}`: N:M sparsity needs 0 < n < m, got {n}:{m}"),
            )),
        }
    }

    /// The fraction of weights this target prunes (`s`, or `n / m`).
    pub fn fraction(&self) -> f64 {
        match *self {
            Sparsity::Unstructured(s) => s,
            Sparsity::NM { n, m } => n as f64 / m as f64,
        }
    }
}

/// Index of the threshold in the ascending sort of `numel` scores, as the references compute it:
/// Python's `int(numel * s)` (the f64 product, truncated).
pub(crate) fn thresh_index(numel: usize, s: f64) -> usize {
    (numel as f64 * s) as usize
}

/// The unstructured mask of the references: `score <= sort(score)[int(numel·s)]`.
///
/// Because of `<=`, this prunes at least `int(numel·s) + 1` weights (more on ties): that is the
/// reference arithmetic (wanda `prune_magnitude`, sparsegpt `fasterprune`) and we keep it. Two
/// edge cases differ from the reference, which would index past the end at `s = 1` and prune the
/// smallest weight at `s = 0`: here `s = 1` prunes everything and `s = 0` prunes nothing.
pub(crate) fn threshold_mask<T: Copy + PartialOrd>(scores: &[T], s: f64, mask: &mut [bool]) {
    debug_assert_eq!(scores.len(), mask.len());
    let numel = scores.len();
    let k = thresh_index(numel, s);
    if s <= 0.0 || numel == 0 {
        mask.fill(false);
        return;
    }
    if k >= numel {
        mask.fill(true);
        return;
    }
    let mut sorted = scores.to_vec();
    // The k-th smallest value is the same whether or not the sort is stable; scores were checked
    // finite, so the comparison is total.
    let (_, &mut thresh, _) =
        sorted.select_nth_unstable_by(k, |a, b| a.partial_cmp(b).expect("finite scores"));
    for (m, &v) in mask.iter_mut().zip(scores) {
        *m = v <= thresh;
    }
}

/// Marks the `n` lowest of `scores` (one group of at most `m` columns) in `mask`, ties going to the
/// lower column index (`torch.topk(largest=False)` leaves tie order unspecified; this is the
/// stable, deterministic choice).
pub(crate) fn mark_lowest<T: Copy + PartialOrd>(scores: &[T], n: usize, mask: &mut [bool]) {
    debug_assert_eq!(scores.len(), mask.len());
    let mut idx: [usize; 64] = [0; 64];
    let g = scores.len();
    if g <= idx.len() {
        for (i, v) in idx.iter_mut().take(g).enumerate() {
            *v = i;
        }
        let idx = &mut idx[..g];
        idx.sort_by(|&a, &b| scores[a].partial_cmp(&scores[b]).expect("finite scores"));
        for &i in idx.iter().take(n) {
            mask[i] = true;
        }
    } else {
        let mut idx: Vec<usize> = (0..g).collect();
        idx.sort_by(|&a, &b| scores[a].partial_cmp(&scores[b]).expect("finite scores"));
        for &i in idx.iter().take(n) {
            mask[i] = true;
        }
    }
}

/// Checks `w.len() == rows·cols`, and for N:M that `m` divides `cols` (a trailing partial group
/// has no defined meaning; the references would fail on it or prune it unevenly).
pub(crate) fn check_weight(
    op: &'static str,
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    sparsity: &Sparsity,
) -> Result<()> {
    sparsity.validate(name)?;
    if rows.checked_mul(cols) != Some(w.len()) {
        return Err(Error::invalid(
            op,
            format!(
                "layer `{name}`: weight holds {} values, expected rows·cols = {rows}·{cols}",
                w.len()
            ),
        ));
    }
    if let Sparsity::NM { n, m } = *sparsity {
        if !cols.is_multiple_of(m) {
            return Err(Error::invalid(
                op,
                format!("layer `{name}`: {n}:{m} sparsity needs cols ({cols}) divisible by {m}"),
            ));
        }
    }
    check_finite(op, name, "weight", w, cols)
}

/// Errors, naming the layer and the first offending position, if `x` (`[_, cols]`) holds a NaN or
/// an infinity.
pub(crate) fn check_finite(
    op: &'static str,
    name: &str,
    what: &str,
    x: &[f32],
    cols: usize,
) -> Result<()> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let bad = x
        .par_chunks(CHUNK)
        .enumerate()
        .find_map_first(|(c, chunk)| {
            chunk
                .iter()
                .position(|v| !v.is_finite())
                .map(|p| c * CHUNK + p)
        });
    match bad {
        None => Ok(()),
        Some(at) => Err(Error::invalid(
            op,
            format!(
                "layer `{name}`: {what} holds a non-finite value ({}) at row {}, column {}",
                x[at],
                at / cols.max(1),
                at % cols.max(1)
            ),
        )),
    }
}

/// Fraction of exact zeros in `w`.
pub(crate) fn zero_fraction(w: &[f32]) -> f64 {
    if w.is_empty() {
        return 0.0;
    }
    w.iter().filter(|&&v| v == 0.0).count() as f64 / w.len() as f64
}

/// Sets the masked weights to `+0.0`.
pub(crate) fn apply_mask(w: &mut [f32], mask: &[bool]) {
    for (v, &m) in w.iter_mut().zip(mask) {
        if m {
            *v = 0.0;
        }
    }
}
