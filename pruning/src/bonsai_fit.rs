//! Bonsai's regression of sub-model scores on keep masks: which candidate units matter.
//!
//! Dery, Kolawole, Kagy, Smith, Neubig & Talwalkar, "Everybody Prune Now: Structured Pruning of
//! LLMs with only Forward Passes" (arXiv 2402.05406), §3: sample sub-models that each drop some
//! candidate units, score each (−perplexity), and fit a linear model `y ≈ βᵀx + b` where
//! `x ∈ {0,1}^m` is the sub-model's keep mask over the `m` candidates. `β_j` estimates how much
//! keeping unit `j` is worth; the units with the lowest `β` are pruned. [`fit_scores`] does the fit,
//! with the reference's hyper-parameter search; [`kendall_tau`] is its model-selection metric.
//!
//! ```
//! use shears_pruning::bonsai_fit::{fit_scores, kendall_tau, FitSettings};
//! // 4 candidates worth 4, 2, 1 and 0.5; every keep pattern and its complement, 32 sub-models.
//! let worth = [4.0, 2.0, 1.0, 0.5];
//! let (mut keep, mut y) = (Vec::new(), Vec::new());
//! for s in 0..16u32 {
//!     let mask: Vec<bool> = (0..4).map(|j| (s >> j) & 1 == 1).collect();
//!     for mask in [mask.clone(), mask.iter().map(|k| !k).collect()] {
//!         y.push(-20.0 + (0..4).filter(|&j| mask[j]).map(|j| worth[j]).sum::<f64>());
//!         keep.push(mask);
//!     }
//! }
//! let fit = fit_scores(&keep, &y, &FitSettings::default())?;
//! let b = &fit.beta;
//! assert!(b[0] > b[1] && b[1] > b[2] && b[2] > b[3]); // unit 3 is pruned first
//! assert!(fit.heldout_tau > 0.8);
//! // One discordant pair of three: τ = (2 − 1) / 3.
//! assert!((kendall_tau(&[1.0, 2.0, 3.0], &[10.0, 30.0, 20.0]) - 1.0 / 3.0).abs() < 1e-15);
//! # Ok::<(), shears_tensor::Error>(())
//! ```
//!
//! # The method (reference: `ldery/Bonsai`, `lib/scoring_model.py` and `main.py`)
//!
//! - **Model** (`LinearModel`): `pred = xᵀβ + b`, both learned, both starting at 0 (the global
//!   model's `base_mask` is all zeros, so `score_tensor` starts at 0 and the input normalisation
//!   `sqrt(base_mask.sum() + 1)` is 1: `x` is the raw 0/1 mask).
//! - **Target** (`split_train_test`): `y` minus the mean of the training samples' `y`; no scaling.
//! - **Loss** (`ScoreModel.run_epoch`): per minibatch, `mean((pred − y)²) + w·Σ|β_j|` (PyTorch
//!   `MSELoss` plus `LinearModel.regLoss`, `reg_weight / 1`); the bias is not penalised, and the
//!   subgradient of `|β_j|` at 0 is 0 (PyTorch's `abs` backward).
//! - **Optimiser** (`ScoreModel.update_with_info`): Adam with PyTorch's defaults (β₁ 0.9, β₂ 0.999,
//!   ε 1e-8, no weight decay) on `β` and `b`, learning rate `1 / (m' · f)` where `m'` counts the
//!   candidates kept by at least one training sample (`len(mean_score_tensor.nonzero())`).
//!   Each epoch reshuffles the training samples and walks them in minibatches of `batch` (the last
//!   one smaller).
//! - **Epochs**: after each epoch, Kendall's τ between the predictions and `y` on the held-out
//!   fold. `ReduceLROnPlateau(mode='max', factor=0.5, patience=3, min_lr=1e-5)` steps on that τ
//!   (PyTorch's relative threshold 1e-4: a gain means `τ > best·(1 + 1e-4)`); the fit keeps the
//!   epoch with the best τ (`τ ≥ best`, so a later tie wins) and stops once 10 epochs have passed
//!   since it, or after 50 epochs.
//! - **Grid** (`ScoreModelHP.search_best_linear_fit`, `main.py` defaults): `w ∈ {100, 1e-4, 0}`,
//!   `f ∈ {100, 10, 1, 0.1}`, `batch ∈ {32, 64, 128}`, visited as `itertools.product` of the
//!   reference's `hp_dict` (`f` outermost, then `w`, then `batch`). Each point is scored by the mean
//!   of its best held-out τ over 5 contiguous folds (fold `k` holds samples
//!   `k·⌊n/5⌋ .. (k+1)·⌊n/5⌋`; the last `n mod 5` are always trained on; with each sub-model
//!   next to its complement, as the reference stores them, and an even fold size, a pair never
//!   straddles two folds); the first point with the highest mean wins.
//! - **Refit** (`split_train_test(no_split=True)`): the winning point is trained once more on all
//!   samples, and, as in the reference, that run's "held-out" set is the training set itself: its
//!   epoch selection and early stopping follow the in-sample τ ([`ScoreFit::refit_tau`]), and it
//!   returns the β of that epoch ([`ScoreFit::epochs`]).
//!
//! # Where this differs from the reference
//!
//! - f64 on the CPU instead of f32 on the GPU; minibatch shuffles come from
//!   [`shears_tensor::Rng`] seeded with [`FitSettings::seed`], restarted for every training run
//!   (the reference reseeds NumPy with 0 before every run, in `split_train_test`), so the result
//!   is a function of the inputs and the seed only, whatever the thread count. The shuffles differ
//!   from NumPy's, so the numbers are not the reference's to the bit.
//! - A held-out fold whose τ is undefined in every epoch (constant predictions or `y`) scores NaN
//!   and the run keeps its last epoch; a grid point with a NaN fold ranks below every point with a
//!   finite mean (the reference's `-1e5` sentinel ranks it by how many folds failed). If no point
//!   has a finite mean the first one wins.
//! - `m'` is at least 1 (the reference divides by zero when no training sample keeps anything).
//! - Inputs the reference would accept and then crash or misbehave on are rejected (see
//!   [`fit_scores`]).
//!
//! # What to expect
//!
//! The rate `1 / (m'·f)` moves each weight by at most about that much per minibatch, and Adam
//! moves every weight at nearly that speed at first, informative or not. With `w = 100` the L1
//! subgradient dwarfs the squared-error gradient unless `y` varies by tens, so `β` stays within a
//! few learning rates of 0: its predictions can still rank sub-models (held-out τ ≈ 0.3 on the
//! synthetic data below) while its per-unit order is noisy. On synthetic data with 400 candidates,
//! 40 of them worth 1–2: from 200 sub-models (160 per training fold) the held-out τ is about 0.35
//! (plain marginal or minimum-norm regression do no better) and only about half of the 40 rank in
//! the top 40; from 800 sub-models all 40 do and τ ≈ 0.6 (the test `recovers_planted_importances`).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use shears_tensor::{Error, Result, Rng};
use std::cmp::Ordering;

const OP: &str = "bonsai_fit";

/// Adam's moment decay rates and denominator guard (PyTorch's defaults, which the reference uses).
const ADAM_BETA1: f64 = 0.9;
const ADAM_BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;
/// `ReduceLROnPlateau`'s relative threshold (PyTorch's default): a gain is `τ > best·(1 + 1e-4)`.
const PLATEAU_THRESHOLD: f64 = 1e-4;
/// `ReduceLROnPlateau`'s `eps`: a reduction smaller than this is skipped.
const PLATEAU_EPS: f64 = 1e-8;

/// The hyper-parameter grid and training limits. [`Default`] gives the reference's values:
/// `l1` {100, 1e-4, 0}, `lr_factor` {100, 10, 1, 0.1}, `batch` {32, 64, 128}, 5 folds, 50 epochs,
/// learning rate halved after 3 epochs without gain (floor 1e-5), stop 10 epochs after the best,
/// seed 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitSettings {
    /// L1 weights `w` on `Σ|β_j|` to try (each finite and ≥ 0).
    pub l1: Vec<f64>,
    /// Learning-rate factors `f` to try: Adam's rate is `1 / (m' · f)`, `m'` the candidates kept
    /// by at least one training sample (each finite and > 0).
    pub lr_factor: Vec<f64>,
    /// Minibatch sizes to try (each ≥ 1).
    pub batch: Vec<usize>,
    /// Contiguous cross-validation folds (≥ 2); the data needs at least `2·folds` samples.
    pub folds: usize,
    /// Most epochs of one training run (≥ 1).
    pub max_epochs: usize,
    /// The learning rate halves once more than this many consecutive epochs pass without a gain
    /// in τ (PyTorch `ReduceLROnPlateau`'s `patience`).
    pub halve_after: usize,
    /// A run stops once this many epochs have passed since its best τ.
    pub stop_after: usize,
    /// The learning rate never halves below this (`ReduceLROnPlateau`'s `min_lr`; a rate that
    /// starts below it stays where it is).
    pub min_lr: f64,
    /// Seeds the minibatch shuffles.
    pub seed: u64,
}

impl Default for FitSettings {
    fn default() -> Self {
        FitSettings {
            l1: vec![100.0, 1e-4, 0.0],
            lr_factor: vec![100.0, 10.0, 1.0, 0.1],
            batch: vec![32, 64, 128],
            folds: 5,
            max_epochs: 50,
            halve_after: 3,
            stop_after: 10,
            min_lr: 1e-5,
            seed: 0,
        }
    }
}

/// One point of the grid and how it did in cross-validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridPoint {
    /// L1 weight `w`.
    pub l1: f64,
    /// Learning-rate factor `f`.
    pub lr_factor: f64,
    /// Minibatch size.
    pub batch: usize,
    /// Mean of `fold_taus` (NaN if any fold's τ is NaN).
    pub heldout_tau: f64,
    /// Per fold, the best held-out τ over its epochs, `[folds]`.
    pub fold_taus: Vec<f64>,
}

/// The chosen fit: the winning grid point's refit on all samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreFit {
    /// `[m]`: the estimated worth of keeping each candidate; prune the lowest.
    pub beta: Vec<f64>,
    /// The intercept, relative to the mean of `y` (the fit predicts `βᵀx + bias + mean(y)`).
    pub bias: f64,
    /// Mean held-out Kendall τ of the winning grid point over the folds.
    pub heldout_tau: f64,
    /// The winning grid point's held-out τ per fold, `[folds]`.
    pub fold_taus: Vec<f64>,
    /// The winning L1 weight.
    pub l1: f64,
    /// The winning learning-rate factor.
    pub lr_factor: f64,
    /// The winning minibatch size.
    pub batch: usize,
    /// The epoch of the final refit whose β is returned (1-based): the one with the best
    /// in-sample τ.
    pub epochs: usize,
    /// The in-sample Kendall τ of that epoch (NaN if undefined).
    pub refit_tau: f64,
    /// Every grid point in the order visited (`lr_factor` outermost, then `l1`, then `batch`).
    pub grid: Vec<GridPoint>,
}

/// Fits Bonsai's linear score model and picks its hyper-parameters by cross-validated Kendall τ
/// (see the [module docs](self)).
///
/// `keep: [n][m]`, `keep[i][j]` true when sample `i` keeps candidate `j`; `y: [n]`, sample `i`'s
/// score, higher is better (e.g. −perplexity). Returns `β: [m]` and the chosen grid point.
/// Deterministic for a given `settings.seed`, whatever the thread count.
///
/// Errors when `keep` and `y` differ in length, rows differ in width or are empty, there are fewer
/// than `2·folds` samples or fewer than 2 folds, a score is NaN or infinite, a grid axis is empty,
/// a batch is 0, an L1 weight is negative or not finite, a learning-rate factor is not a positive
/// finite number, `max_epochs` is 0, or `min_lr` is negative or not finite.
pub fn fit_scores(keep: &[Vec<bool>], y: &[f64], settings: &FitSettings) -> Result<ScoreFit> {
    let data = Data::new(keep, y, settings)?;
    let n = data.n;
    let folds = settings.folds;

    // Visit order of the reference's itertools.product over hp_dict: lr_factor, reg_weight, bsz.
    let mut points = Vec::new();
    for &lr_factor in &settings.lr_factor {
        for &l1 in &settings.l1 {
            for &batch in &settings.batch {
                points.push(Hp {
                    l1,
                    lr_factor,
                    batch,
                });
            }
        }
    }

    let fold_size = n / folds;
    let all: Vec<usize> = (0..n).collect();
    let splits: Vec<(Vec<usize>, Vec<usize>)> = (0..folds)
        .map(|k| {
            let test = k * fold_size..(k + 1) * fold_size;
            let train = all.iter().copied().filter(|i| !test.contains(i)).collect();
            (train, test.collect())
        })
        .collect();

    // Every (point, fold) run is sequential and independent; collect keeps their order.
    let taus: Vec<f64> = (0..points.len() * folds)
        .into_par_iter()
        .map(|t| {
            let (train, test) = &splits[t % folds];
            train_run(&data, train, test, &points[t / folds], settings).tau
        })
        .collect();

    let grid: Vec<GridPoint> = points
        .iter()
        .zip(taus.chunks_exact(folds))
        .map(|(hp, fold_taus)| GridPoint {
            l1: hp.l1,
            lr_factor: hp.lr_factor,
            batch: hp.batch,
            heldout_tau: fold_taus.iter().sum::<f64>() / folds as f64,
            fold_taus: fold_taus.to_vec(),
        })
        .collect();

    // First point with the highest finite mean (strict `>`, as the reference); else the first.
    let mut best = 0;
    let mut best_tau = f64::NEG_INFINITY;
    for (i, g) in grid.iter().enumerate() {
        if g.heldout_tau > best_tau {
            best = i;
            best_tau = g.heldout_tau;
        }
    }

    let refit = train_run(&data, &all, &all, &points[best], settings);
    let win = &grid[best];
    Ok(ScoreFit {
        beta: refit.beta,
        bias: refit.bias,
        heldout_tau: win.heldout_tau,
        fold_taus: win.fold_taus.clone(),
        l1: win.l1,
        lr_factor: win.lr_factor,
        batch: win.batch,
        epochs: refit.epoch,
        refit_tau: refit.tau,
        grid,
    })
}

/// Kendall's τ-b of `a` and `b`, ties in either handled as `scipy.stats.kendalltau` does:
/// `(C − D) / sqrt((P − T_a)(P − T_b))` with `P = n(n−1)/2` pairs, `C`/`D` the concordant and
/// discordant ones and `T_a`/`T_b` those tied in `a`/`b`. O(n log n) (Knight's algorithm).
///
/// NaN when undefined: fewer than 2 points, a constant argument, a NaN in either, or lengths that
/// differ.
pub fn kendall_tau(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len();
    if n != b.len() || n < 2 || a.iter().chain(b).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let cmp = |x: f64, y: f64| x.partial_cmp(&y).unwrap_or(Ordering::Equal);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_unstable_by(|&i, &j| cmp(a[i], a[j]).then(cmp(b[i], b[j])));

    let pairs = |c: i64| c * (c - 1) / 2;
    // Pairs tied in a, and tied in both (runs of equal a, and of equal (a, b), in that order).
    let (mut a_ties, mut joint_ties) = (0i64, 0i64);
    let (mut run_a, mut run_ab) = (1i64, 1i64);
    for w in idx.windows(2) {
        let (i, j) = (w[0], w[1]);
        if a[i] == a[j] {
            run_a += 1;
            if b[i] == b[j] {
                run_ab += 1;
            } else {
                joint_ties += pairs(run_ab);
                run_ab = 1;
            }
        } else {
            a_ties += pairs(run_a);
            joint_ties += pairs(run_ab);
            run_a = 1;
            run_ab = 1;
        }
    }
    a_ties += pairs(run_a);
    joint_ties += pairs(run_ab);

    // In (a, b) order, a discordant pair is exactly a strict inversion of b.
    let mut seq: Vec<f64> = idx.iter().map(|&i| b[i]).collect();
    let mut buf = vec![0.0; n];
    let discordant = sort_count_inversions(&mut seq, &mut buf);
    let mut b_ties = 0i64;
    let mut run_b = 1i64;
    for w in seq.windows(2) {
        if w[0] == w[1] {
            run_b += 1;
        } else {
            b_ties += pairs(run_b);
            run_b = 1;
        }
    }
    b_ties += pairs(run_b);

    let total = pairs(n as i64);
    if a_ties == total || b_ties == total {
        return f64::NAN;
    }
    // con + dis + (a_ties − joint) + (b_ties − joint) + joint = total (scipy's arithmetic).
    let con_minus_dis = total - a_ties - b_ties + joint_ties - 2 * discordant;
    let tau =
        con_minus_dis as f64 / ((total - a_ties) as f64).sqrt() / ((total - b_ties) as f64).sqrt();
    tau.clamp(-1.0, 1.0)
}

/// Sorts `v` ascending (merge sort, `buf` as scratch of the same length) and returns the number of
/// pairs `i < j` with `v[i] > v[j]` strictly.
fn sort_count_inversions(v: &mut [f64], buf: &mut [f64]) -> i64 {
    let n = v.len();
    if n < 2 {
        return 0;
    }
    let mid = n / 2;
    let mut count = {
        let (lo, hi) = v.split_at_mut(mid);
        let (blo, bhi) = buf.split_at_mut(mid);
        sort_count_inversions(lo, blo) + sort_count_inversions(hi, bhi)
    };
    let (mut i, mut j, mut k) = (0, mid, 0);
    while i < mid && j < n {
        if v[i] <= v[j] {
            buf[k] = v[i];
            i += 1;
        } else {
            buf[k] = v[j];
            j += 1;
            count += (mid - i) as i64;
        }
        k += 1;
    }
    buf[k..k + mid - i].copy_from_slice(&v[i..mid]);
    k += mid - i;
    buf[k..].copy_from_slice(&v[j..]);
    v.copy_from_slice(buf);
    count
}

/// One grid point.
#[derive(Debug, Clone, Copy)]
struct Hp {
    l1: f64,
    lr_factor: f64,
    batch: usize,
}

/// Validated inputs: the masks as a dense row-major 0/1 copy.
struct Data<'a> {
    /// `[n, m]` row-major, 1.0 where the sample keeps the candidate.
    x: Vec<f64>,
    y: &'a [f64],
    n: usize,
    m: usize,
}

impl<'a> Data<'a> {
    fn new(keep: &[Vec<bool>], y: &'a [f64], s: &FitSettings) -> Result<Self> {
        let n = keep.len();
        if n != y.len() {
            return Err(Error::invalid(
                OP,
                format!("{n} keep masks but {} scores", y.len()),
            ));
        }
        let m = keep.first().map_or(0, Vec::len);
        if let Some((i, row)) = keep.iter().enumerate().find(|(_, r)| r.len() != m) {
            return Err(Error::invalid(
                OP,
                format!("keep mask {i} has {} candidates, mask 0 has {m}", row.len()),
            ));
        }
        if n > 0 && m == 0 {
            return Err(Error::invalid(OP, "the keep masks have no candidates"));
        }
        if s.folds < 2 {
            return Err(Error::invalid(
                OP,
                format!("{} folds, at least 2 needed", s.folds),
            ));
        }
        if n < 2 * s.folds {
            return Err(Error::invalid(
                OP,
                format!(
                    "{n} samples, at least 2·folds = {} needed (2 per held-out fold)",
                    2 * s.folds
                ),
            ));
        }
        if let Some(i) = y.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                OP,
                format!("score {i} is {}, scores must be finite", y[i]),
            ));
        }
        for (axis, len) in [
            ("l1", s.l1.len()),
            ("lr_factor", s.lr_factor.len()),
            ("batch", s.batch.len()),
        ] {
            if len == 0 {
                return Err(Error::invalid(OP, format!("empty grid: no {axis} values")));
            }
        }
        if s.batch.contains(&0) {
            return Err(Error::invalid(OP, "a batch size of 0"));
        }
        if let Some(w) = s.l1.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
            return Err(Error::invalid(
                OP,
                format!("L1 weight {w}, must be finite and >= 0"),
            ));
        }
        if let Some(f) = s.lr_factor.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
            return Err(Error::invalid(
                OP,
                format!("learning-rate factor {f}, must be finite and > 0"),
            ));
        }
        if s.max_epochs == 0 {
            return Err(Error::invalid(OP, "max_epochs is 0"));
        }
        if !(s.min_lr.is_finite() && s.min_lr >= 0.0) {
            return Err(Error::invalid(
                OP,
                format!("min_lr {}, must be finite and >= 0", s.min_lr),
            ));
        }
        let x = keep
            .iter()
            .flat_map(|row| row.iter().map(|&k| if k { 1.0 } else { 0.0 }))
            .collect();
        Ok(Data { x, y, n, m })
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.m..(i + 1) * self.m]
    }
}

/// What one training run keeps: its best epoch.
struct Run {
    beta: Vec<f64>,
    bias: f64,
    /// The best held-out τ (NaN if none was defined).
    tau: f64,
    /// 1-based epoch of `beta`.
    epoch: usize,
}

/// One run of the reference's `ScoreModel.update_with_info`: Adam on `train`, τ on `test` after
/// every epoch, learning rate on a plateau schedule, the best epoch kept.
fn train_run(data: &Data, train: &[usize], test: &[usize], hp: &Hp, s: &FitSettings) -> Run {
    let m = data.m;
    let mean_y = train.iter().map(|&i| data.y[i]).sum::<f64>() / train.len() as f64;
    let kept = (0..m)
        .filter(|&j| train.iter().any(|&i| data.x[i * m + j] != 0.0))
        .count()
        .max(1);
    let mut lr = 1.0 / (kept as f64 * hp.lr_factor);

    let mut beta = vec![0.0f64; m];
    let mut bias = 0.0f64;
    let (mut m_beta, mut v_beta) = (vec![0.0f64; m], vec![0.0f64; m]);
    let (mut m_bias, mut v_bias) = (0.0f64, 0.0f64);
    let mut grad = vec![0.0f64; m];
    let mut step = 0i32;

    let mut rng = Rng::new(s.seed);
    let mut order = train.to_vec();
    let test_y: Vec<f64> = test.iter().map(|&i| data.y[i]).collect();
    let mut preds = vec![0.0f64; test.len()];

    let mut best: Option<Run> = None;
    let mut best_tau = f64::NEG_INFINITY;
    let mut since_best = 0usize;
    let mut plateau_best = f64::NEG_INFINITY;
    let mut bad_epochs = 0usize;
    let mut epoch = 0;
    while epoch < s.max_epochs {
        epoch += 1;
        shuffle(&mut order, &mut rng);
        for chunk in order.chunks(hp.batch) {
            grad.iter_mut().for_each(|g| *g = 0.0);
            let mut grad_bias = 0.0;
            for &i in chunk {
                let x = data.row(i);
                let r = dot(x, &beta) + bias - (data.y[i] - mean_y);
                grad_bias += r;
                axpy(r, x, &mut grad);
            }
            // d/dpred of mean((pred − y)²) over the batch.
            let scale = 2.0 / chunk.len() as f64;
            grad_bias *= scale;

            step += 1;
            let bc1 = 1.0 - ADAM_BETA1.powi(step);
            let bc2_sqrt = (1.0 - ADAM_BETA2.powi(step)).sqrt();
            let step_size = lr / bc1;
            let inv_bc2_sqrt = 1.0 / bc2_sqrt;
            let l1 = hp.l1;
            for (((b, mb), vb), &g) in beta
                .iter_mut()
                .zip(m_beta.iter_mut())
                .zip(v_beta.iter_mut())
                .zip(grad.iter())
            {
                let sign = if *b > 0.0 {
                    1.0
                } else if *b < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                let g = scale * g + l1 * sign;
                *mb = ADAM_BETA1 * *mb + (1.0 - ADAM_BETA1) * g;
                *vb = ADAM_BETA2 * *vb + (1.0 - ADAM_BETA2) * g * g;
                *b -= step_size * *mb / (vb.sqrt() * inv_bc2_sqrt + ADAM_EPS);
            }
            m_bias = ADAM_BETA1 * m_bias + (1.0 - ADAM_BETA1) * grad_bias;
            v_bias = ADAM_BETA2 * v_bias + (1.0 - ADAM_BETA2) * grad_bias * grad_bias;
            bias -= step_size * m_bias / (v_bias.sqrt() * inv_bc2_sqrt + ADAM_EPS);
        }

        for (p, &i) in preds.iter_mut().zip(test) {
            *p = dot(data.row(i), &beta) + bias;
        }
        let tau = kendall_tau(&preds, &test_y);

        if tau >= best_tau {
            best_tau = tau;
            since_best = 0;
            match &mut best {
                Some(run) => {
                    run.beta.copy_from_slice(&beta);
                    run.bias = bias;
                    run.tau = tau;
                    run.epoch = epoch;
                }
                None => {
                    best = Some(Run {
                        beta: beta.clone(),
                        bias,
                        tau,
                        epoch,
                    })
                }
            }
        }

        // ReduceLROnPlateau(mode='max', factor=0.5, patience=halve_after, min_lr).
        if tau > plateau_best * (1.0 + PLATEAU_THRESHOLD) {
            plateau_best = tau;
            bad_epochs = 0;
        } else {
            bad_epochs += 1;
        }
        if bad_epochs > s.halve_after {
            let halved = (lr * 0.5).max(s.min_lr);
            if lr - halved > PLATEAU_EPS {
                lr = halved;
            }
            bad_epochs = 0;
        }

        since_best += 1;
        if since_best > s.stop_after {
            break;
        }
    }
    best.unwrap_or(Run {
        beta,
        bias,
        tau: f64::NAN,
        epoch,
    })
}

/// Fisher–Yates.
fn shuffle(v: &mut [usize], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// `Σ x_j·w_j` with eight independent partial sums, so the compiler can vectorise it.
fn dot(x: &[f64], w: &[f64]) -> f64 {
    debug_assert_eq!(x.len(), w.len());
    let mut acc = [0.0f64; 8];
    let (xc, wc) = (x.chunks_exact(8), w.chunks_exact(8));
    let tail: f64 = xc
        .remainder()
        .iter()
        .zip(wc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (xs, ws) in xc.zip(wc) {
        for ((s, a), b) in acc.iter_mut().zip(xs).zip(ws) {
            *s += a * b;
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y += a·x`.
fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    debug_assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// τ-b straight from its definition, over all pairs.
    fn tau_b_brute(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len();
        let (mut con, mut dis, mut tie_a, mut tie_b) = (0i64, 0i64, 0i64, 0i64);
        for i in 0..n {
            for j in i + 1..n {
                let da = a[i] - a[j];
                let db = b[i] - b[j];
                if da == 0.0 {
                    tie_a += 1;
                }
                if db == 0.0 {
                    tie_b += 1;
                }
                if da * db > 0.0 {
                    con += 1;
                } else if da * db < 0.0 {
                    dis += 1;
                }
            }
        }
        let total = (n * (n - 1) / 2) as i64;
        (con - dis) as f64 / (((total - tie_a) * (total - tie_b)) as f64).sqrt()
    }

    #[test]
    fn kendall_tau_matches_scipy_example() {
        // scipy.stats.kendalltau documentation example (τ-b, ties in both arguments).
        let x = [12.0, 2.0, 1.0, 12.0, 2.0];
        let y = [1.0, 4.0, 7.0, 1.0, 0.0];
        let tau = kendall_tau(&x, &y);
        assert!((tau - -0.47140452079103173).abs() < 1e-15, "{tau}");
    }

    #[test]
    fn kendall_tau_extremes_and_undefined() {
        let up: Vec<f64> = (0..37).map(|i| i as f64 * 0.5).collect();
        let down: Vec<f64> = up.iter().map(|v| 100.0 - v * v).collect();
        assert_eq!(kendall_tau(&up, &up), 1.0);
        assert_eq!(kendall_tau(&up, &down), -1.0);
        assert!(kendall_tau(&up, &vec![3.0; 37]).is_nan());
        assert!(kendall_tau(&[1.0], &[2.0]).is_nan());
        assert!(kendall_tau(&[], &[]).is_nan());
        assert!(kendall_tau(&[1.0, f64::NAN, 3.0], &[1.0, 2.0, 3.0]).is_nan());
        assert!(kendall_tau(&[1.0, 2.0, 3.0], &[1.0, 2.0]).is_nan());
        // -0.0 and 0.0 are a tie, as in NumPy: 2 concordant pairs of 3, one tied in a, so
        // τ-b = 2 / sqrt((3 − 1)·3).
        let tau = kendall_tau(&[-0.0, 0.0, 1.0], &[1.0, 2.0, 3.0]);
        assert!((tau - 2.0 / 6f64.sqrt()).abs() < 1e-15, "{tau}");
    }

    #[test]
    fn kendall_tau_matches_brute_force_with_ties() {
        let mut rng = Rng::new(11);
        for &n in &[2usize, 3, 5, 8, 31, 64, 257] {
            for levels in [2u64, 3, 7, 1000] {
                let a: Vec<f64> = (0..n).map(|_| (rng.next_u64() % levels) as f64).collect();
                let b: Vec<f64> = (0..n)
                    .map(|i| ((rng.next_u64() % levels) as f64 + a[i]).floor())
                    .collect();
                let fast = kendall_tau(&a, &b);
                let slow = tau_b_brute(&a, &b);
                if slow.is_nan() {
                    assert!(fast.is_nan(), "n {n} levels {levels}: {fast}");
                } else {
                    assert!(
                        (fast - slow).abs() < 1e-12,
                        "n {n} levels {levels}: {fast} vs {slow}"
                    );
                }
            }
        }
    }

    /// Bonsai-style samples: `pairs` random halves of `m` candidates, each with its complement.
    fn paired_masks(m: usize, pairs: usize, rng: &mut Rng) -> Vec<Vec<bool>> {
        let mut keep = Vec::with_capacity(2 * pairs);
        let mut idx: Vec<usize> = (0..m).collect();
        for _ in 0..pairs {
            shuffle(&mut idx, rng);
            let mut row = vec![false; m];
            for &j in &idx[..m / 2] {
                row[j] = true;
            }
            keep.push(row.iter().map(|k| !k).collect());
            keep.insert(keep.len() - 1, row);
        }
        keep
    }

    #[test]
    fn recovers_planted_importances() {
        // 400 candidates, 40 of them worth 1–2 each, the rest nothing; 400 pairs of sub-models.
        // With only 100 pairs (160 training samples for 400 weights) about half of the 40 reach
        // the top 40, and neither marginal nor minimum-norm regression does better (module docs).
        let (m, pairs, important) = (400, 400, 40);
        let mut rng = Rng::new(3);
        let keep = paired_masks(m, pairs, &mut rng);
        let mut units: Vec<usize> = (0..m).collect();
        shuffle(&mut units, &mut rng);
        let mut truth = vec![0.0; m];
        for &j in &units[..important] {
            truth[j] = 1.0 + rng.uniform();
        }
        // −perplexity-like scores: a large negative offset plus the kept worth plus noise.
        let y: Vec<f64> = keep
            .iter()
            .map(|row| {
                let worth: f64 = (0..m).filter(|&j| row[j]).map(|j| truth[j]).sum();
                -50.0 + worth + rng.normal()
            })
            .collect();

        let fit = fit_scores(&keep, &y, &FitSettings::default()).unwrap();
        let mut by_beta: Vec<usize> = (0..m).collect();
        by_beta.sort_by(|&i, &j| fit.beta[j].total_cmp(&fit.beta[i]));
        let top = by_beta[..important]
            .iter()
            .filter(|&&j| truth[j] > 0.0)
            .count();
        assert!(
            top >= 36,
            "{top} of {important} important units in the top {important}"
        );
        let bottom = by_beta[m - important..]
            .iter()
            .filter(|&&j| truth[j] > 0.0)
            .count();
        assert_eq!(bottom, 0, "important units among the lowest β");
        // The true β reaches τ ≈ 0.85–0.9 on held-out samples (signal sd ≈ 4.8, noise sd 1).
        assert!(fit.heldout_tau > 0.5, "held-out τ {}", fit.heldout_tau);
        assert_eq!(fit.fold_taus.len(), 5);
        assert_eq!(fit.grid.len(), 36);
        assert!((1..=50).contains(&fit.epochs));
        let best = fit
            .grid
            .iter()
            .map(|g| g.heldout_tau)
            .fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(fit.heldout_tau, best);
    }

    #[test]
    fn first_adam_step_moves_each_weight_by_the_learning_rate() {
        // Adam's first step is lr·g/(|g| + ε): the sign of the gradient times the rate. Column 2
        // is never kept, so lr = 1/(2 kept columns · f = 1) = 0.5. Centred y = [2, −1, 1, −2];
        // −∂loss/∂β_j ∝ Σ_i y_i x_ij: column 0 gets 2 + 1 > 0, column 1 gets −1 + 1 = 0. The L1
        // term does nothing yet: its subgradient at β = 0 is 0.
        let keep = vec![
            vec![true, false, false],
            vec![false, true, false],
            vec![true, true, false],
            vec![false, false, false],
        ];
        let y = [4.0, 1.0, 3.0, 0.0];
        let s = FitSettings {
            folds: 2,
            max_epochs: 1,
            ..FitSettings::default()
        };
        let data = Data::new(&keep, &y, &s).unwrap();
        let hp = Hp {
            l1: 100.0,
            lr_factor: 1.0,
            batch: 4,
        };
        let all = [0, 1, 2, 3];
        let run = train_run(&data, &all, &all, &hp, &s);
        assert!((run.beta[0] - 0.5).abs() < 1e-7, "{:?}", run.beta);
        assert_eq!(run.beta[1], 0.0);
        assert_eq!(run.beta[2], 0.0);
        assert_eq!(run.bias, 0.0); // centred targets: the bias gradient is 0
        assert_eq!(run.epoch, 1);
    }

    fn small_problem(seed: u64) -> (Vec<Vec<bool>>, Vec<f64>) {
        let mut rng = Rng::new(seed);
        let keep = paired_masks(60, 20, &mut rng);
        let y = keep
            .iter()
            .map(|row| {
                let worth: f64 = (0..10).filter(|&j| row[j]).map(|j| j as f64).sum();
                worth + 3.0 * rng.normal()
            })
            .collect();
        (keep, y)
    }

    #[test]
    fn deterministic_for_a_seed_whatever_the_thread_count() {
        let (keep, y) = small_problem(5);
        let s = FitSettings::default();
        let a = fit_scores(&keep, &y, &s).unwrap();
        let b = fit_scores(&keep, &y, &s).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let c = pool.install(|| fit_scores(&keep, &y, &s)).unwrap();
        let bits = |f: &ScoreFit| f.beta.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        assert_eq!(bits(&a), bits(&c));
        // Debug prints floats exactly (shortest round trip), NaNs included.
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(format!("{a:?}"), format!("{c:?}"));
        // The seed drives the shuffles: another seed gives other weights.
        let d = fit_scores(&keep, &y, &FitSettings { seed: 1, ..s }).unwrap();
        assert_ne!(bits(&a), bits(&d));
    }

    #[test]
    fn rejects_bad_inputs() {
        let (keep, y) = small_problem(7);
        let s = FitSettings::default();
        let msg = |keep: &[Vec<bool>], y: &[f64], s: &FitSettings| {
            fit_scores(keep, y, s).unwrap_err().to_string()
        };
        assert!(msg(&keep, &y[1..], &s).contains("40 keep masks but 39 scores"));
        let mut ragged = keep.clone();
        ragged[3].pop();
        assert!(msg(&ragged, &y, &s).contains("keep mask 3 has 59 candidates"));
        let empty_rows = vec![Vec::new(); 40];
        assert!(msg(&empty_rows, &y, &s).contains("no candidates"));
        assert!(msg(&keep[..9], &y[..9], &s).contains("9 samples, at least 2·folds = 10"));
        assert!(msg(&[], &[], &s).contains("0 samples"));
        let one_fold = FitSettings {
            folds: 1,
            ..s.clone()
        };
        assert!(msg(&keep, &y, &one_fold).contains("1 folds"));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut y2 = y.clone();
            y2[5] = bad;
            assert!(msg(&keep, &y2, &s).contains("score 5 is"), "{bad}");
        }
        let no_l1 = FitSettings {
            l1: vec![],
            ..s.clone()
        };
        assert!(msg(&keep, &y, &no_l1).contains("empty grid: no l1"));
        let no_lr = FitSettings {
            lr_factor: vec![],
            ..s.clone()
        };
        assert!(msg(&keep, &y, &no_lr).contains("empty grid: no lr_factor"));
        let no_batch = FitSettings {
            batch: vec![],
            ..s.clone()
        };
        assert!(msg(&keep, &y, &no_batch).contains("empty grid: no batch"));
        let zero_batch = FitSettings {
            batch: vec![32, 0],
            ..s.clone()
        };
        assert!(msg(&keep, &y, &zero_batch).contains("batch size of 0"));
        let neg_l1 = FitSettings {
            l1: vec![-1.0],
            ..s.clone()
        };
        assert!(msg(&keep, &y, &neg_l1).contains("L1 weight -1"));
        let zero_lr = FitSettings {
            lr_factor: vec![0.0],
            ..s.clone()
        };
        assert!(msg(&keep, &y, &zero_lr).contains("learning-rate factor 0"));
        let no_epochs = FitSettings {
            max_epochs: 0,
            ..s.clone()
        };
        assert!(msg(&keep, &y, &no_epochs).contains("max_epochs is 0"));
        let bad_min_lr = FitSettings {
            min_lr: f64::NAN,
            ..s
        };
        assert!(msg(&keep, &y, &bad_min_lr).contains("min_lr NaN"));
    }
}
