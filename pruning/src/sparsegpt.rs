//! SparseGPT: one-shot pruning with optimal-brain-surgeon weight updates.
//!
//! Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"
//! (ICML 2023), Algorithm 1 (the full algorithm with lazy batch updates, adaptive mask selection
//! per block of `B_s = 128` columns, and the upper Cholesky factor of `H⁻¹`), which applies the
//! optimal-brain-surgeon update of §3, `δ_m = −(w_m / [H⁻¹]_mm) · H⁻¹_{:,m}` with saliency
//! `w_m² / [H⁻¹]_mm`, column by column. The arithmetic follows the reference code,
//! `IST-DASLab/sparsegpt`:
//!
//! - `add_batch`, called once per calibration window (`tmp = 1` in `llama.py`):
//!   `H ← H·n/(n+1); n ← n+1; H ← H + (2/n)·x·xᵀ`, which by induction is
//!   `H = (2/n)·Σ_windows XᵀX`. [`SparseGptStats::observe`] keeps that closed form — the f64 sum
//!   `Σ XᵀX` (its block upper triangle, f32 GEMMs) and `n` — so `b` windows in one call, or one
//!   per call, give the same `H` as `b` calls of `add_batch`, up to rounding.
//! - `fasterprune`: dead inputs (`H_ii = 0` → `H_ii = 1`, `W[:, i] = 0`); damping
//!   `λ = percdamp · mean(diag H)`; `U = cholesky_upper(cholesky_inverse(cholesky(H + λI)))`;
//!   for each block `[i1, i2)` of `blocksize` columns, the unstructured mask
//!   `W1² / diag(U1)² <= sort(...)[int(numel·s)]` over the whole block (on the weights already
//!   updated by earlier blocks), or the N:M mask at every `i % m == 0` inside the block (on the
//!   weights updated so far); column by column `err = (w − q) / U_ii`,
//!   `W1[:, i:] −= err · U[i, i:]`; then `W[:, i2:] −= Err · U[i1:i2, i2:]`.
//!
//! Where `shared/ALGORITHMS.md` says "prune the `floor(rows·128·p)` lowest scores of the block",
//! the reference's `<= sort(...)[int(numel·s)]` prunes at least one more (and all ties at the
//! threshold); we follow the reference.
//!
//! Deviations from the reference, all for robustness: the factorisations and the column-by-column
//! updates are computed in f64 (the reference is f32 on a GPU; the lazy trailing update
//! `Err · U[i1:i2, i2:]` stays an f32 GEMM, added into the f64 weights); where a Cholesky
//! factorisation fails, the damping is raised ×10 and the factorisations retried up to
//! [`SparseGptConfig::max_retries`] times (the reference raises an exception), and if they still
//! fail the error is an `InvalidArgument` naming the layer (`NotPositiveDefinite` has no room for
//! the name); `s = 0` prunes nothing and `s = 1` everything (see [`Sparsity`]); N:M needs `m` to
//! divide both `cols` and `blocksize`.
//!
//! ```
//! use shears_pruning::{SparseGptConfig, SparseGptStats, Sparsity};
//! // One window of 8 tokens over 4 input features.
//! let x: Vec<f32> = (0..32).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
//! let mut stats = SparseGptStats::new("toy.in", 4);
//! stats.observe(&x, 1)?;
//! let mut w = vec![0.3f32, -1.2, 0.8, 0.1, 1.0, 0.2, -0.4, 0.9];
//! let p = stats.prune("toy", &mut w, 2, 4, &SparseGptConfig::new(Sparsity::NM { n: 2, m: 4 }))?;
//! for row in p.mask.chunks(4) {
//!     assert_eq!(row.iter().filter(|&&m| m).count(), 2);
//! }
//! assert!(p.report.rel_error.unwrap() < 1.0);
//! # Ok::<(), shears_tensor::Error>(())
//! ```
//!
//! As a [`PruningMethod`] for the calibration driver, [`SparseGpt`] (blocksize, damping and
//! retries; the target comes from the driver) makes observers holding a [`SparseGptStats`], fed
//! the stage outputs as tensors, read in place. The products (`XᵀX`, the lazy update, the
//! reconstruction error) are [`Tensor::matmul`]s and the factorisations `Tensor::cholesky` and
//! `Tensor::cholesky_inverse`: the same kernels, so the same numbers, as calling them directly.

use crate::hessian::{add_gram_upper, inverse_hessian_factor, symmetric_from_upper};
use crate::method::{input_rows, mask_decision, Decision, Input, Observer, PruningMethod};
use crate::report::{LayerReport, Pruned};
use crate::sparsity::{check_weight, mark_lowest, threshold_mask, zero_fraction};
use crate::wanda::{check_input, check_stats};
use crate::Sparsity;
use rayon::prelude::*;
use shears_tensor::{DType, Error, Result, Tensor};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// SparseGPT as a [`PruningMethod`] (`sparsegpt`): calibrated, true-sequential by default, with
/// the settings of [`SparseGptConfig`] other than the target. [`Default`] gives the reference's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseGpt {
    /// Columns per lazy-update block (reference: 128).
    pub blocksize: usize,
    /// Damping as a fraction of the mean Hessian diagonal (reference: 0.01).
    pub percdamp: f64,
    /// How many times the damping may be raised ×10 when a factorisation fails (4).
    pub max_retries: u32,
}

impl Default for SparseGpt {
    fn default() -> Self {
        let c = SparseGptConfig::new(Sparsity::Unstructured(0.0));
        SparseGpt {
            blocksize: c.blocksize,
            percdamp: c.percdamp,
            max_retries: c.max_retries,
        }
    }
}

impl SparseGpt {
    /// The full configuration for `sparsity`.
    pub fn config(&self, sparsity: Sparsity) -> SparseGptConfig {
        SparseGptConfig {
            sparsity,
            blocksize: self.blocksize,
            percdamp: self.percdamp,
            max_retries: self.max_retries,
        }
    }
}

impl PruningMethod for SparseGpt {
    fn name(&self) -> &'static str {
        "sparsegpt"
    }
    fn needs_calibration(&self) -> bool {
        true
    }
    fn true_sequential_default(&self) -> bool {
        true
    }
    fn observer(&self, input: &Input) -> Box<dyn Observer> {
        Box::new(SparseGptObserver {
            stats: SparseGptStats::new(&input.name, input.cols),
            method: *self,
        })
    }
}

/// [`SparseGptStats`] behind the [`Observer`] interface; q/k/v (and gate/up) share one, and so
/// one factorisation of `H`.
struct SparseGptObserver {
    stats: SparseGptStats,
    method: SparseGpt,
}

impl Observer for SparseGptObserver {
    fn observe(&mut self, x: &Tensor) -> Result<()> {
        let s = &mut self.stats;
        let (x, samples) = input_rows("sparsegpt.observe", &s.name, x, s.cols)?;
        s.observe_rows(&x, samples)
    }
    fn prune(&self, name: &str, w: &Tensor, target: &Sparsity) -> Result<Decision> {
        let cfg = self.method.config(*target);
        mask_decision(w, |w, rows, cols| {
            self.stats.prune(name, w, rows, cols, &cfg)
        })
    }
}

/// How SparseGPT prunes one weight; [`SparseGptConfig::new`] gives the reference's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseGptConfig {
    /// The target.
    pub sparsity: Sparsity,
    /// Columns per lazy-update block, and the mask-selection group of unstructured pruning
    /// (reference: 128).
    pub blocksize: usize,
    /// Damping as a fraction of the mean Hessian diagonal (reference: 0.01).
    pub percdamp: f64,
    /// How many times the damping may be raised ×10 when a Cholesky factorisation fails.
    pub max_retries: u32,
}

impl SparseGptConfig {
    /// The reference defaults for `sparsity`: blocksize 128, percdamp 0.01, up to 4 retries.
    pub fn new(sparsity: Sparsity) -> Self {
        SparseGptConfig {
            sparsity,
            blocksize: 128,
            percdamp: 0.01,
            max_retries: 4,
        }
    }
}

/// SparseGPT's statistic for one linear layer's input: the Hessian of the layer-wise squared
/// error, `H = (2/n)·Σ_windows XᵀX` (`[cols, cols]`, f64) — the reference's running mean in closed
/// form, kept as the f64 sum `Σ XᵀX` (upper triangle) and the window count `n`.
/// Weights that read the same input (q/k/v, gate/up) can share one object: [`prune`](Self::prune)
/// takes `&self`, and the factorisation of `H` is computed once and reused while the statistics
/// and the damping settings stay the same.
#[derive(Debug)]
pub struct SparseGptStats {
    name: String,
    cols: usize,
    nsamples: usize,
    /// `Σ XᵀX`, upper triangle only (see [`add_gram_upper`]).
    sum: Vec<f64>,
    factor: Mutex<Option<Arc<Factor>>>,
}

impl Clone for SparseGptStats {
    fn clone(&self) -> Self {
        SparseGptStats {
            name: self.name.clone(),
            cols: self.cols,
            nsamples: self.nsamples,
            sum: self.sum.clone(),
            factor: Mutex::new(self.cached_factor()),
        }
    }
}

/// What `prune` derives from `H` alone: the upper Cholesky factor of the damped inverse, the
/// damping that made it exist, and the dead columns; cached per `(percdamp, max_retries)`.
#[derive(Debug)]
struct Factor {
    percdamp: f64,
    max_retries: u32,
    /// `[cols, cols]` f64.
    u: Tensor,
    damping: f64,
    retries: u32,
    dead: Vec<usize>,
}

impl SparseGptStats {
    /// Empty statistics for an input of `cols` features; `name` labels errors.
    pub fn new(name: &str, cols: usize) -> Self {
        SparseGptStats {
            name: name.to_string(),
            cols,
            nsamples: 0,
            sum: vec![0.0; cols * cols],
            factor: Mutex::new(None),
        }
    }

    /// Statistics from a Hessian computed elsewhere: `h: [cols, cols]` row-major, symmetric (only
    /// its upper triangle is read), averaged over `nsamples` windows. Errors on a length
    /// mismatch, `nsamples = 0`, or a non-finite entry.
    pub fn from_hessian(name: &str, cols: usize, nsamples: usize, h: Vec<f64>) -> Result<Self> {
        let op = "sparsegpt.from_hessian";
        if h.len() != cols * cols {
            return Err(Error::invalid(
                op,
                format!(
                    "layer `{name}`: Hessian holds {} values, expected {cols}·{cols}",
                    h.len()
                ),
            ));
        }
        if nsamples == 0 {
            return Err(Error::invalid(
                op,
                format!("layer `{name}`: nsamples must be at least 1"),
            ));
        }
        check_finite_h(op, name, &h, cols)?;
        let to_sum = nsamples as f64 / 2.0;
        Ok(SparseGptStats {
            name: name.to_string(),
            cols,
            nsamples,
            sum: h.into_iter().map(|v| v * to_sum).collect(),
            factor: Mutex::new(None),
        })
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Windows observed so far.
    pub fn nsamples(&self) -> usize {
        self.nsamples
    }

    /// The Hessian `H = (2/n)·Σ XᵀX`, `[cols, cols]` row-major, exactly symmetric (zero before
    /// any sample). Built on each call from the stored sum.
    pub fn hessian(&self) -> Vec<f64> {
        let scale = if self.nsamples == 0 {
            0.0
        } else {
            2.0 / self.nsamples as f64
        };
        symmetric_from_upper(&self.sum, self.cols, scale)
    }

    /// Adds `samples` windows: `x: [tokens, cols]` row-major holds their tokens stacked (any
    /// split of tokens between windows gives the same result). Equals the reference's
    /// `add_batch` once per window, up to rounding: both give `H = (2/n)·Σ XᵀX`. A call per window
    /// costs little more than one call for all of them. Errors, leaving the statistics
    /// unchanged, on a shape mismatch, zero samples, or a NaN, infinity or value beyond `±1e17`
    /// (whose square could overflow the f32 products) in `x`. `x` is copied into a tensor
    /// (the driver's observers hand theirs over without a copy).
    pub fn observe(&mut self, x: &[f32], samples: usize) -> Result<()> {
        check_input("sparsegpt.observe", &self.name, x, self.cols, samples)?;
        let tokens = x.len().checked_div(self.cols).unwrap_or(0);
        self.observe_rows(&Tensor::from_slice(x, [tokens, self.cols])?, samples)
    }

    /// [`observe`](Self::observe) of `x: [tokens, cols]`, f32 and contiguous.
    fn observe_rows(&mut self, x: &Tensor, samples: usize) -> Result<()> {
        let op = "sparsegpt.observe";
        let xs = x.as_slice::<f32>()?;
        check_input(op, &self.name, xs, self.cols, samples)?;
        check_magnitude(op, &self.name, xs, self.cols)?;
        add_gram_upper(x, &mut self.sum)?;
        self.nsamples += samples;
        *self.factor.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Prunes `w: [rows, cols]` (row-major, reading this input) in place with SparseGPT; pruned
    /// weights become exactly `+0.0` and the others take the OBS updates. `name` labels errors
    /// and the report. Errors on bad shapes or configuration, before any sample was observed, or
    /// when the damped Hessian stays not positive definite after `max_retries` raises.
    pub fn prune(
        &self,
        name: &str,
        w: &mut [f32],
        rows: usize,
        cols: usize,
        cfg: &SparseGptConfig,
    ) -> Result<Pruned> {
        let start = Instant::now();
        let op = "sparsegpt.prune";
        check_weight(op, name, w, rows, cols, &cfg.sparsity)?;
        check_stats(op, name, cols, self.cols, self.nsamples)?;
        check_config(op, name, cfg)?;

        let h = self.hessian();
        let factor = self.factor(op, name, &h, cfg)?;
        let mut wd: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        for &i in &factor.dead {
            for r in 0..rows {
                wd[r * cols + i] = 0.0;
            }
        }
        let mut mask = vec![false; w.len()];
        let obs_loss = sweep(&mut wd, &mut mask, &factor.u, rows, cols, cfg)?;

        let original = w.to_vec();
        for ((v, &d), &m) in w.iter_mut().zip(&wd).zip(&mask) {
            *v = if m { 0.0 } else { d as f32 };
        }
        let rel_error = relative_error(&original, w, &h, rows, cols)?;

        let mut report = LayerReport::new(name, "sparsegpt", rows, cols, cfg.sparsity);
        report.sparsity = zero_fraction(w);
        report.rel_error = rel_error;
        report.obs_loss = Some(obs_loss);
        report.damping = Some(factor.damping);
        report.retries = factor.retries;
        report.dead_columns = factor.dead.len();
        report.nsamples = Some(self.nsamples);
        report.seconds = start.elapsed().as_secs_f64();
        Ok(Pruned { mask, report })
    }
}

impl SparseGptStats {
    fn cached_factor(&self) -> Option<Arc<Factor>> {
        self.factor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The cached factorisation for `cfg`'s damping settings, computed on a miss.
    fn factor(
        &self,
        op: &'static str,
        name: &str,
        h: &[f64],
        cfg: &SparseGptConfig,
    ) -> Result<Arc<Factor>> {
        if let Some(f) = self.cached_factor() {
            if f.percdamp == cfg.percdamp && f.max_retries == cfg.max_retries {
                return Ok(f);
            }
        }
        let cols = self.cols;
        let mut h = h.to_vec();
        let mut dead = Vec::new();
        for i in 0..cols {
            if h[i * cols + i] == 0.0 {
                dead.push(i);
                h[i * cols + i] = 1.0;
            }
        }
        let (u, damping, retries) =
            inverse_hessian_factor(op, name, &h, cols, cfg.percdamp, cfg.max_retries)?;
        let f = Arc::new(Factor {
            percdamp: cfg.percdamp,
            max_retries: cfg.max_retries,
            u,
            damping,
            retries,
            dead,
        });
        *self.factor.lock().unwrap_or_else(|e| e.into_inner()) = Some(f.clone());
        Ok(f)
    }
}

fn check_config(op: &'static str, name: &str, cfg: &SparseGptConfig) -> Result<()> {
    if cfg.blocksize == 0 {
        return Err(Error::invalid(
            op,
            format!("layer `{name}`: blocksize must be at least 1"),
        ));
    }
    if !(cfg.percdamp.is_finite() && cfg.percdamp >= 0.0) {
        return Err(Error::invalid(
            op,
            format!(
                "layer `{name}`: percdamp must be finite and ≥ 0, got {}",
                cfg.percdamp
            ),
        ));
    }
    if let Sparsity::NM { n, m } = cfg.sparsity {
        if !cfg.blocksize.is_multiple_of(m) {
            return Err(Error::invalid(
                op,
                format!(
                    "layer `{name}`: {n}:{m} sparsity needs blocksize ({}) divisible by {m}",
                    cfg.blocksize
                ),
            ));
        }
    }
    Ok(())
}

/// Largest `|x|` accepted: 8192 tokens (one f32 GEMM's depth) of `1e34` stay below `f32::MAX`.
const MAX_ABS: f32 = 1e17;

fn check_magnitude(op: &'static str, name: &str, x: &[f32], cols: usize) -> Result<()> {
    const CHUNK: usize = 1 << 16;
    let bad = x
        .par_chunks(CHUNK)
        .enumerate()
        .find_map_first(|(c, chunk)| {
            chunk
                .iter()
                .position(|v| v.abs() > MAX_ABS)
                .map(|p| c * CHUNK + p)
        });
    match bad {
        None => Ok(()),
        Some(at) => Err(Error::invalid(
            op,
            format!(
                "layer `{name}`: input value {:e} at row {}, column {} is beyond ±{MAX_ABS:e} \
                 (its square would overflow)",
                x[at],
                at / cols,
                at % cols
            ),
        )),
    }
}

fn check_finite_h(op: &'static str, name: &str, h: &[f64], cols: usize) -> Result<()> {
    match h.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(at) => Err(Error::invalid(
            op,
            format!(
                "layer `{name}`: Hessian entry ({}, {}) is {} (inputs too large?)",
                at / cols,
                at % cols,
                h[at]
            ),
        )),
    }
}

/// The column sweep of Algorithm 1 over `wd: [rows, cols]` (f64, updated in place, pruned entries
/// set to 0) with `u: [cols, cols]` (f64) the upper Cholesky factor of `H⁻¹`; fills `mask`,
/// returns the OBS loss.
fn sweep(
    wd: &mut [f64],
    mask: &mut [bool],
    u: &Tensor,
    rows: usize,
    cols: usize,
    cfg: &SparseGptConfig,
) -> Result<f64> {
    if rows == 0 || cols == 0 {
        return Ok(0.0);
    }
    let bs = cfg.blocksize;
    let u32 = u.to_dtype(DType::F32)?;
    let u = u.as_slice::<f64>()?;
    let mut losses = vec![0.0f64; rows];
    let mut err = vec![0.0f64; rows * bs.min(cols)];
    for i1 in (0..cols).step_by(bs) {
        let i2 = (i1 + bs).min(cols);
        let count = i2 - i1;
        let diag: Vec<f64> = (i1..i2).map(|i| u[i * cols + i]).collect();
        if let Sparsity::Unstructured(s) = cfg.sparsity {
            // One threshold for the whole block, as `tmp = W1**2 / diag(Hinv1)**2`.
            let scores: Vec<f64> = wd
                .chunks(cols)
                .flat_map(|row| row[i1..i2].iter().zip(&diag).map(|(w, d)| w * w / (d * d)))
                .collect();
            let mut block_mask = vec![false; rows * count];
            threshold_mask(&scores, s, &mut block_mask);
            for (mrow, brow) in mask.chunks_mut(cols).zip(block_mask.chunks(count)) {
                mrow[i1..i2].copy_from_slice(brow);
            }
        }
        let err = &mut err[..rows * count];
        // Each row's sweep reads only that row (the N:M choice too), so rows run in parallel.
        wd.par_chunks_mut(cols)
            .zip(mask.par_chunks_mut(cols))
            .zip(err.par_chunks_mut(count))
            .zip(losses.par_iter_mut())
            .for_each(|(((wrow, mrow), erow), loss)| {
                let w1 = &mut wrow[i1..i2];
                let m1 = &mut mrow[i1..i2];
                for i in 0..count {
                    if let Sparsity::NM { n, m } = cfg.sparsity {
                        if i % m == 0 {
                            let end = (i + m).min(count);
                            let g: Vec<f64> = (i..end)
                                .map(|j| w1[j] * w1[j] / (diag[j] * diag[j]))
                                .collect();
                            mark_lowest(&g, n, &mut m1[i..end]);
                        }
                    }
                    let wv = w1[i];
                    let q = if m1[i] { 0.0 } else { wv };
                    let d = diag[i];
                    *loss += (wv - q) * (wv - q) / (d * d);
                    let e = (wv - q) / d;
                    erow[i] = e;
                    // W[:, i1:i2] ends up as Q1: column i is final once chosen.
                    w1[i] = q;
                    if e != 0.0 {
                        let urow = &u[(i1 + i) * cols + i1..(i1 + i) * cols + i2];
                        for (wj, &uj) in w1[i + 1..].iter_mut().zip(&urow[i + 1..]) {
                            *wj -= e * uj;
                        }
                    }
                }
            });
        if i2 < cols {
            // Lazy batch update: W[:, i2:] -= Err · U[i1:i2, i2:], the one O(rows·cols²) step, as
            // an f32 product (the reference's precision) of the block's errors with a view of
            // U, added into the f64 weights.
            let rest = cols - i2;
            let err32: Vec<f32> = err.iter().map(|&e| e as f32).collect();
            let err32 = Tensor::from_vec(err32, [rows, count])?;
            let upd = err32.matmul(&u32.narrow(0, i1, count)?.narrow(1, i2, rest)?)?;
            let upd = upd.as_slice::<f32>()?;
            wd.par_chunks_mut(cols)
                .zip(upd.par_chunks(rest))
                .for_each(|(wrow, urow)| {
                    for (wv, &d) in wrow[i2..].iter_mut().zip(urow) {
                        *wv -= d as f64;
                    }
                });
        }
    }
    Ok(losses.iter().sum::<f64>() / 2.0)
}

/// `tr(ΔW·H·ΔWᵀ) / tr(W·H·Wᵀ)` for `ΔW = before − after`, through one f32 product of `[W; ΔW]`
/// with `H`; `None` when the denominator is 0.
fn relative_error(
    before: &[f32],
    after: &[f32],
    h: &[f64],
    rows: usize,
    cols: usize,
) -> Result<Option<f64>> {
    if rows == 0 || cols == 0 {
        return Ok(None);
    }
    let mut stacked = Vec::with_capacity(2 * rows * cols);
    stacked.extend_from_slice(before);
    stacked.extend(before.iter().zip(after).map(|(b, a)| b - a));
    let h32: Vec<f32> = h.iter().map(|&v| v as f32).collect();
    let stacked = Tensor::from_vec(stacked, [2 * rows, cols])?;
    let prod = stacked.matmul(&Tensor::from_vec(h32, [cols, cols])?)?;
    let (prod, stacked) = (prod.as_slice::<f32>()?, stacked.as_slice::<f32>()?);
    let quad = |r0: usize| -> f64 {
        prod[r0 * cols..(r0 + rows) * cols]
            .iter()
            .zip(&stacked[r0 * cols..(r0 + rows) * cols])
            .map(|(&p, &s)| p as f64 * s as f64)
            .sum()
    };
    let (den, num) = (quad(0), quad(rows));
    Ok((den > 0.0).then(|| num / den))
}
