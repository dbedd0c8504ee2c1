//! Magnitude, Wanda and SparseGPT: hand-derived small cases, structure, statistics, determinism,
//! errors, and the quality ordering SparseGPT < Wanda < magnitude.

use shears_pruning::{magnitude_prune, SparseGptConfig, SparseGptStats, Sparsity, WandaStats};

struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn normal(&mut self) -> f64 {
        let u1 = ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64).max(1e-300);
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal() as f32).collect()
    }
}

/// Inputs `[tokens, cols]` with correlated columns (a shared low-rank part) and per-column scales
/// spread over a factor ~e^1.5 either way, like the outlier features of LLM activations.
fn correlated(rng: &mut Rng, tokens: usize, cols: usize) -> Vec<f32> {
    let rank = 4;
    let basis: Vec<f64> = (0..rank * cols).map(|_| rng.normal()).collect();
    let scale: Vec<f64> = (0..cols).map(|_| (1.5 * rng.normal()).exp()).collect();
    let mut x = vec![0.0f32; tokens * cols];
    for t in 0..tokens {
        let z: Vec<f64> = (0..rank).map(|_| rng.normal()).collect();
        for j in 0..cols {
            let shared: f64 = (0..rank).map(|k| z[k] * basis[k * cols + j]).sum();
            x[t * cols + j] = ((shared + rng.normal()) * scale[j]) as f32;
        }
    }
    x
}

fn count(mask: &[bool]) -> usize {
    mask.iter().filter(|&&m| m).count()
}

// ---------------------------------------------------------------- magnitude

#[test]
fn magnitude_unstructured_hand_case() {
    // |W| = [0.5 3 1 2 | 0.25 4 1 0.75], numel 8, s = 0.5: int(8·0.5) = 4, the ascending sort is
    // [0.25 0.5 0.75 1 1 2 3 4], so thresh = sorted[4] = 1 and `|W| <= 1` prunes 0.5, 1, 0.25, 1
    // and 0.75: five weights, not four (the reference's `<=` and its ties).
    let mut w = vec![0.5f32, -3.0, 1.0, 2.0, -0.25, 4.0, -1.0, 0.75];
    let p = magnitude_prune("m", &mut w, 2, 4, &Sparsity::Unstructured(0.5)).unwrap();
    assert_eq!(p.mask, [true, false, true, false, true, false, true, true]);
    assert_eq!(w, [0.0, -3.0, 0.0, 2.0, 0.0, 4.0, 0.0, 0.0]);
    assert!(
        w.iter().all(|v| *v != 0.0 || v.to_bits() == 0),
        "zeros are +0.0"
    );
    assert_eq!(p.report.sparsity, 5.0 / 8.0);
    assert_eq!(p.report.method, "magnitude");
    assert!(p.report.rel_error.is_none());
}

#[test]
fn magnitude_nm_hand_case() {
    // 2:4 per row and group. Row 0: groups [1 -5 2 0.5] → drop 0.5, 1 (cols 3, 0);
    // [-7 6 -0.1 3] → drop 0.1, 3 (cols 6, 7). Row 1: [2 2 2 1] → drop 1 (col 3) and, of the
    // three tied 2s, the lowest column (col 0); [0 0 0 0] → cols 4, 5.
    let mut w = vec![
        1.0f32, -5.0, 2.0, 0.5, -7.0, 6.0, -0.1, 3.0, //
        2.0, 2.0, -2.0, 1.0, 0.0, 0.0, 0.0, 0.0,
    ];
    let p = magnitude_prune("m", &mut w, 2, 8, &Sparsity::NM { n: 2, m: 4 }).unwrap();
    let t = true;
    let f = false;
    assert_eq!(p.mask, [t, f, f, t, f, f, t, t, t, f, f, t, t, t, f, f]);
    assert_eq!(&w[..8], [0.0, -5.0, 2.0, 0.0, -7.0, 6.0, 0.0, 0.0]);
}

#[test]
fn magnitude_edges_of_unstructured() {
    let w0 = vec![1.0f32, -2.0, 3.0, 0.5];
    let mut w = w0.clone();
    let p = magnitude_prune("m", &mut w, 2, 2, &Sparsity::Unstructured(0.0)).unwrap();
    assert_eq!(count(&p.mask), 0);
    assert_eq!(w, w0);
    let p = magnitude_prune("m", &mut w, 2, 2, &Sparsity::Unstructured(1.0)).unwrap();
    assert_eq!(count(&p.mask), 4);
    assert_eq!(p.report.sparsity, 1.0);
}

// ---------------------------------------------------------------- Wanda

#[test]
fn wanda_hand_case() {
    // One window of one token x = [1 2 0.5 3]: the statistic is x_j² = [1 4 0.25 9] and its root
    // [1 2 0.5 3]. With s = 0.5 every row loses int(4·0.5) = 2 weights.
    // Row 0, W = [1 1 1 1]: S = [1 2 0.5 3] → cols 2, 0.
    // Row 1, W = [4 -1 4 1]: S = [4 2 2 3] → cols 1, 2.
    // Row 2, W = [2 1 4 1]: S = [2 2 2 3] → a three-way tie across the cut; the stable sort keeps
    // column order, so cols 0, 1 go and col 2 stays (magnitude's `<=` would take all three).
    let mut stats = WandaStats::new("in", 4);
    stats.observe(&[1.0, 2.0, 0.5, 3.0], 1).unwrap();
    assert_eq!(stats.scaler_row(), [1.0, 4.0, 0.25, 9.0]);
    let mut w = vec![
        1.0f32, 1.0, 1.0, 1.0, 4.0, -1.0, 4.0, 1.0, 2.0, 1.0, 4.0, 1.0,
    ];
    let p = stats
        .prune("wanda", &mut w, 3, 4, &Sparsity::Unstructured(0.5))
        .unwrap();
    let (t, f) = (true, false);
    assert_eq!(p.mask, [t, f, t, f, f, t, t, f, t, t, f, f]);
    assert_eq!(
        w,
        [0.0, 1.0, 0.0, 1.0, 4.0, 0.0, 0.0, 1.0, 0.0, 0.0, 4.0, 1.0]
    );
    assert_eq!(p.report.method, "wanda");
    assert_eq!(p.report.nsamples, Some(1));
}

#[test]
fn wanda_nm_hand_case() {
    // Statistic root [1 2 0.5 3 | 1 1 1 1] from one token. Row W = [1 1 1 1 | 5 -4 3 2]:
    // S = [1 2 0.5 3 | 5 4 3 2] → 2:4 drops cols 2, 0 and cols 7, 6.
    let mut stats = WandaStats::new("in", 8);
    stats
        .observe(&[1.0, 2.0, 0.5, 3.0, 1.0, -1.0, 1.0, -1.0], 1)
        .unwrap();
    let mut w = vec![1.0f32, 1.0, 1.0, 1.0, 5.0, -4.0, 3.0, 2.0];
    let p = stats
        .prune("wanda", &mut w, 1, 8, &Sparsity::NM { n: 2, m: 4 })
        .unwrap();
    let (t, f) = (true, false);
    assert_eq!(p.mask, [t, f, t, f, f, f, t, t]);
}

#[test]
fn wanda_exact_count_per_row() {
    let mut rng = Rng(7);
    let (rows, cols) = (16, 50);
    let x = correlated(&mut rng, 64, cols);
    let mut stats = WandaStats::new("in", cols);
    stats.observe(&x, 2).unwrap();
    for (s, per_row) in [(0.5, 25), (0.3, 15), (0.7, 35)] {
        assert_eq!((cols as f64 * s).floor() as usize, per_row);
        let mut w = rng.vec(rows * cols);
        let p = stats
            .prune("w", &mut w, rows, cols, &Sparsity::Unstructured(s))
            .unwrap();
        for row in p.mask.chunks(cols) {
            assert_eq!(count(row), per_row, "s = {s}");
        }
    }
}

// ---------------------------------------------------------------- N:M structure, all methods

#[test]
fn nm_structure_all_methods() {
    let mut rng = Rng(11);
    let (rows, cols) = (24, 256);
    let x = correlated(&mut rng, 300, cols);
    let mut wanda = WandaStats::new("in", cols);
    wanda.observe(&x, 1).unwrap();
    let mut sgpt = SparseGptStats::new("in", cols);
    sgpt.observe(&x, 1).unwrap();
    let w0 = rng.vec(rows * cols);
    for (n, m) in [(2, 4), (4, 8), (1, 4)] {
        let sp = Sparsity::NM { n, m };
        let mut results = Vec::new();
        let mut w = w0.clone();
        results.push(magnitude_prune("w", &mut w, rows, cols, &sp).unwrap());
        let mut w = w0.clone();
        results.push(wanda.prune("w", &mut w, rows, cols, &sp).unwrap());
        let mut w = w0.clone();
        results.push(
            sgpt.prune("w", &mut w, rows, cols, &SparseGptConfig::new(sp))
                .unwrap(),
        );
        for p in results {
            for g in p.mask.chunks(m) {
                assert_eq!(count(g), n, "{} {n}:{m}", p.report.method);
            }
            assert_eq!(
                p.report.sparsity,
                n as f64 / m as f64,
                "{}",
                p.report.method
            );
        }
    }
}

// ---------------------------------------------------------------- statistics

/// The references' `add_batch`, one window at a time (`tmp = 1`), in f64.
fn reference_hessian(windows: &[&[f32]], cols: usize) -> Vec<f64> {
    let mut h = vec![0.0f64; cols * cols];
    let mut n = 0usize;
    for x in windows {
        h.iter_mut().for_each(|v| *v *= n as f64 / (n + 1) as f64);
        n += 1;
        let c = (2.0 / n as f64).sqrt();
        for t in x.chunks(cols) {
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += (c * t[i] as f64) * (c * t[j] as f64);
                }
            }
        }
    }
    h
}

fn reference_scaler(windows: &[&[f32]], cols: usize) -> Vec<f64> {
    let mut s = vec![0.0f64; cols];
    let mut n = 0usize;
    for x in windows {
        s.iter_mut().for_each(|v| *v *= n as f64 / (n + 1) as f64);
        n += 1;
        for j in 0..cols {
            let norm2: f64 = x.chunks(cols).map(|t| (t[j] as f64).powi(2)).sum();
            s[j] += norm2 / n as f64;
        }
    }
    s
}

#[test]
fn batched_observe_equals_per_window_running_mean() {
    let mut rng = Rng(3);
    let (cols, seq) = (40, 33);
    let x = correlated(&mut rng, 5 * seq, cols);
    let windows: Vec<&[f32]> = x.chunks(seq * cols).collect();
    let want_h = reference_hessian(&windows, cols);
    let want_s = reference_scaler(&windows, cols);

    // All five windows at once; then 2 + 3 in two calls; then one call per window.
    let splits: [&[usize]; 3] = [&[5], &[2, 3], &[1, 1, 1, 1, 1]];
    for split in splits {
        let mut h = SparseGptStats::new("in", cols);
        let mut s = WandaStats::new("in", cols);
        let mut start = 0;
        for &b in split {
            let part = &x[start * seq * cols..(start + b) * seq * cols];
            h.observe(part, b).unwrap();
            s.observe(part, b).unwrap();
            start += b;
        }
        assert_eq!(h.nsamples(), 5);
        assert_eq!(s.nsamples(), 5);
        let got_h = h.hessian();
        for i in 0..cols {
            for j in 0..cols {
                let (got, want) = (got_h[i * cols + j], want_h[i * cols + j]);
                let bound = (want_h[i * cols + i] * want_h[j * cols + j]).sqrt();
                assert!(
                    (got - want).abs() <= 1e-6 * bound,
                    "{split:?} H[{i},{j}] {got} vs {want}"
                );
            }
        }
        for (got, want) in s.scaler_row().iter().zip(&want_s) {
            assert!(
                (got - want).abs() <= 1e-12 * want,
                "{split:?}: {got} vs {want}"
            );
        }
    }
}

// ---------------------------------------------------------------- determinism

#[test]
fn deterministic() {
    let mut rng = Rng(5);
    let (rows, cols) = (96, 320);
    let x = correlated(&mut rng, 1000, cols);
    let w0 = rng.vec(rows * cols);
    let run = || {
        let mut sg = SparseGptStats::new("in", cols);
        sg.observe(&x, 2).unwrap();
        let mut wa = WandaStats::new("in", cols);
        wa.observe(&x, 2).unwrap();
        let mut w1 = w0.clone();
        let p1 = sg
            .prune(
                "w",
                &mut w1,
                rows,
                cols,
                &SparseGptConfig::new(Sparsity::Unstructured(0.6)),
            )
            .unwrap();
        let mut w2 = w0.clone();
        let p2 = wa
            .prune("w", &mut w2, rows, cols, &Sparsity::Unstructured(0.6))
            .unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // Again on the same statistics: the cached factorisation gives the same result.
        let mut w3 = w0.clone();
        let p3 = sg
            .prune(
                "w",
                &mut w3,
                rows,
                cols,
                &SparseGptConfig::new(Sparsity::Unstructured(0.6)),
            )
            .unwrap();
        assert!(
            bits(&w3) == bits(&w1) && p3.mask == p1.mask,
            "cached factor differs"
        );
        let hbits: Vec<u64> = sg.hessian().iter().map(|v| v.to_bits()).collect();
        (hbits, bits(&w1), p1.mask, bits(&w2), p2.mask)
    };
    let a = run();
    let b = run();
    assert!(a == b, "two runs differ");
}

// ---------------------------------------------------------------- errors

#[test]
fn non_finite_inputs_are_rejected_naming_the_layer() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = vec![1.0f32; 6 * 4];
        x[13] = bad;
        let mut sg = SparseGptStats::new("model.layers.3.mlp.down_proj", 4);
        let err = sg.observe(&x, 2).unwrap_err().to_string();
        assert!(err.contains("model.layers.3.mlp.down_proj"), "{err}");
        assert!(err.contains("row 3, column 1"), "{err}");
        assert_eq!(sg.nsamples(), 0, "statistics unchanged");
        let mut wa = WandaStats::new("model.layers.3.mlp.down_proj", 4);
        let err = wa.observe(&x, 2).unwrap_err().to_string();
        assert!(err.contains("model.layers.3.mlp.down_proj"), "{err}");
        assert_eq!(wa.nsamples(), 0);
    }
    // Finite inputs whose squares could overflow the f32 products.
    let mut sg = SparseGptStats::new("big", 2);
    let err = sg
        .observe(&[1.0, 1.0, 3e30, 1.0], 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("big") && err.contains("row 1, column 0"),
        "{err}"
    );
    assert_eq!(sg.nsamples(), 0);
    // A non-finite weight.
    let mut w = vec![1.0f32, f32::NAN, 0.5, 2.0];
    let err = magnitude_prune("q_proj", &mut w, 2, 2, &Sparsity::Unstructured(0.5))
        .unwrap_err()
        .to_string();
    assert!(err.contains("q_proj") && err.contains("weight"), "{err}");
}

#[test]
fn invalid_sparsity_and_shapes_are_rejected() {
    let mut wa = WandaStats::new("in", 8);
    wa.observe(&[1.0; 16], 1).unwrap();
    let mut sg = SparseGptStats::new("in", 8);
    sg.observe(&[1.0; 16], 1).unwrap();
    let bad = [
        Sparsity::Unstructured(-0.1),
        Sparsity::Unstructured(1.1),
        Sparsity::Unstructured(f64::NAN),
        Sparsity::NM { n: 0, m: 4 },
        Sparsity::NM { n: 4, m: 4 },
        Sparsity::NM { n: 5, m: 4 },
        Sparsity::NM { n: 2, m: 3 }, // 3 does not divide 8 columns
    ];
    for sp in bad {
        let mut w = vec![1.0f32; 16];
        assert!(magnitude_prune("w", &mut w, 2, 8, &sp).is_err(), "{sp:?}");
        assert!(wa.prune("w", &mut w, 2, 8, &sp).is_err(), "{sp:?}");
        assert!(
            sg.prune("w", &mut w, 2, 8, &SparseGptConfig::new(sp))
                .is_err(),
            "{sp:?}"
        );
        assert_eq!(w, [1.0; 16], "untouched on error");
    }
    let mut w = vec![1.0f32; 16];
    // Shape mismatches: rows·cols vs the slice, cols vs the statistics.
    assert!(magnitude_prune("w", &mut w, 3, 8, &Sparsity::Unstructured(0.5)).is_err());
    assert!(wa
        .prune("w", &mut w, 4, 4, &Sparsity::Unstructured(0.5))
        .is_err());
    // N:M groups must not straddle SparseGPT blocks.
    let cfg = SparseGptConfig {
        blocksize: 6,
        ..SparseGptConfig::new(Sparsity::NM { n: 2, m: 4 })
    };
    assert!(sg.prune("w", &mut w, 2, 8, &cfg).is_err());
    // Pruning before any sample, observing zero samples or a ragged input.
    let fresh = SparseGptStats::new("in", 8);
    let err = fresh
        .prune(
            "w",
            &mut w,
            2,
            8,
            &SparseGptConfig::new(Sparsity::Unstructured(0.5)),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("no calibration samples"), "{err}");
    assert!(sg.observe(&[1.0; 16], 0).is_err());
    assert!(sg.observe(&[1.0; 15], 1).is_err());
}

#[test]
fn non_positive_definite_hessian_is_retried() {
    // H = [[1, 3], [3, 1]] has eigenvalues 4 and −2. mean(diag) = 1, so λ goes 0.01, 0.1, 1, 10:
    // H + λI is not positive definite until λ > 2 (second pivot 1 + λ − 9/(1 + λ)), hence three
    // retries and λ ≈ 10.
    let h = vec![1.0, 3.0, 3.0, 1.0];
    let sg = SparseGptStats::from_hessian("attn.in", 2, 1, h).unwrap();
    let mut w = vec![1.0f32, -0.5];
    let p = sg
        .prune(
            "attn.q_proj",
            &mut w,
            1,
            2,
            &SparseGptConfig::new(Sparsity::Unstructured(0.5)),
        )
        .unwrap();
    assert_eq!(p.report.retries, 3);
    let damp = p.report.damping.unwrap();
    assert!((damp - 10.0).abs() < 1e-9, "{damp}");
    assert!(w.iter().all(|v| v.is_finite()));
    // With fewer retries allowed, an error that names the layer.
    let cfg = SparseGptConfig {
        max_retries: 2,
        ..SparseGptConfig::new(Sparsity::Unstructured(0.5))
    };
    let mut w = vec![1.0f32, -0.5];
    let err = sg
        .prune("attn.q_proj", &mut w, 1, 2, &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("attn.q_proj") && err.contains("positive definite"),
        "{err}"
    );
    assert_eq!(w, [1.0, -0.5]);
    // A positive definite H needs no retry and keeps the reference damping.
    let sg = SparseGptStats::from_hessian("in", 2, 1, vec![2.0, 1.0, 1.0, 4.0]).unwrap();
    let mut w = vec![1.0f32, -0.5];
    let p = sg
        .prune(
            "w",
            &mut w,
            1,
            2,
            &SparseGptConfig::new(Sparsity::Unstructured(0.5)),
        )
        .unwrap();
    assert_eq!(p.report.retries, 0);
    assert!((p.report.damping.unwrap() - 0.03).abs() < 1e-15);
}

// ---------------------------------------------------------------- dead columns

#[test]
fn dead_column_is_handled() {
    let mut rng = Rng(9);
    let (rows, cols) = (8, 16);
    let mut x = correlated(&mut rng, 64, cols);
    for t in 0..64 {
        x[t * cols + 5] = 0.0;
    }
    let w0 = rng.vec(rows * cols);
    let mut sg = SparseGptStats::new("in", cols);
    sg.observe(&x, 1).unwrap();
    let mut w = w0.clone();
    let p = sg
        .prune(
            "w",
            &mut w,
            rows,
            cols,
            &SparseGptConfig::new(Sparsity::Unstructured(0.5)),
        )
        .unwrap();
    assert_eq!(p.report.dead_columns, 1);
    assert_eq!(p.report.retries, 0);
    assert!(w.iter().all(|v| v.is_finite()));
    assert!(
        (0..rows).all(|r| w[r * cols + 5] == 0.0),
        "dead column zeroed"
    );
    // Wanda scores a dead input 0, so its weights are the first to go.
    let mut wa = WandaStats::new("in", cols);
    wa.observe(&x, 1).unwrap();
    let mut w = w0.clone();
    let p = wa
        .prune("w", &mut w, rows, cols, &Sparsity::Unstructured(0.25))
        .unwrap();
    assert_eq!(p.report.dead_columns, 1);
    assert!((0..rows).all(|r| p.mask[r * cols + 5]));
}

// ---------------------------------------------------------------- quality ordering

/// `tr(ΔW·H·ΔWᵀ) / tr(W·H·Wᵀ)` in f64.
fn rel_error(w0: &[f32], w: &[f32], h: &[f64], rows: usize, cols: usize) -> f64 {
    let quad = |d: &dyn Fn(usize) -> f64| -> f64 {
        let mut s = 0.0;
        for r in 0..rows {
            for i in 0..cols {
                let di = d(r * cols + i);
                s += di
                    * (0..cols)
                        .map(|j| h[i * cols + j] * d(r * cols + j))
                        .sum::<f64>();
            }
        }
        s
    };
    quad(&|k| w0[k] as f64 - w[k] as f64) / quad(&|k| w0[k] as f64)
}

#[test]
fn sparsegpt_beats_wanda_beats_magnitude() {
    let mut rng = Rng(21);
    let (rows, cols) = (64, 128);
    let x = correlated(&mut rng, 512, cols);
    let w0 = rng.vec(rows * cols);
    let mut sg = SparseGptStats::new("in", cols);
    sg.observe(&x, 4).unwrap();
    let mut wa = WandaStats::new("in", cols);
    wa.observe(&x, 4).unwrap();
    let h = sg.hessian();
    for sp in [Sparsity::Unstructured(0.5), Sparsity::NM { n: 2, m: 4 }] {
        let mut w = w0.clone();
        magnitude_prune("w", &mut w, rows, cols, &sp).unwrap();
        let mag = rel_error(&w0, &w, &h, rows, cols);
        let mut w = w0.clone();
        wa.prune("w", &mut w, rows, cols, &sp).unwrap();
        let wanda = rel_error(&w0, &w, &h, rows, cols);
        let mut w = w0.clone();
        let p = sg
            .prune("w", &mut w, rows, cols, &SparseGptConfig::new(sp))
            .unwrap();
        let sgpt = rel_error(&w0, &w, &h, rows, cols);
        let reported = p.report.rel_error.unwrap();
        assert!(
            (reported - sgpt).abs() <= 1e-3 * sgpt,
            "{reported} vs {sgpt}"
        );
        assert!(
            sgpt < wanda && wanda < mag,
            "{sp:?}: sparsegpt {sgpt}, wanda {wanda}, magnitude {mag}"
        );
    }
}

#[test]
fn report_serialises() {
    let mut w = vec![1.0f32, -2.0, 3.0, 0.5];
    let p = magnitude_prune("q_proj", &mut w, 2, 2, &Sparsity::NM { n: 1, m: 2 }).unwrap();
    let json = serde_json::to_string(&p.report).unwrap();
    assert!(json.contains("\"name\":\"q_proj\""), "{json}");
    assert!(json.contains("\"NM\":{\"n\":1,\"m\":2}"), "{json}");
}
