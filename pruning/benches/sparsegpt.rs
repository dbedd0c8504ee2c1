//! SparseGPT and Wanda on SmolLM2-135M shapes: `observe` over one layer's calibration inputs
//! (128 windows × 512 tokens = 65,536 tokens) at the two input widths (576: q/k/v, o, gate/up;
//! 1536: down), and `prune` per weight shape at 50 % unstructured and 2:4, both as the first
//! weight on fresh statistics (with the factorisation of `H`) and as a further weight sharing them.
//!
//! `cargo bench -p shears-pruning --bench sparsegpt`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shears_pruning::{SparseGptConfig, SparseGptStats, Sparsity, WandaStats};
use std::hint::black_box;
use std::time::Duration;

/// Deterministic pseudo-random values in [-1, 1), with a per-column scale so `H` is not flat.
fn values(n: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            u * (1.0 + (i % cols) as f32 / cols as f32)
        })
        .collect()
}

fn observe(c: &mut Criterion) {
    let tokens = 128 * 512;
    let mut g = c.benchmark_group("observe_65536_tokens");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    for cols in [576, 1536] {
        let x = values(tokens * cols, cols, 1);
        g.bench_with_input(BenchmarkId::new("sparsegpt", cols), &x, |b, x| {
            b.iter(|| {
                let mut s = SparseGptStats::new("in", cols);
                s.observe(black_box(x), 128).unwrap();
                s
            })
        });
        // One call per 512-token window, as a calibration driver that runs window by window.
        g.bench_with_input(
            BenchmarkId::new("sparsegpt_per_window", cols),
            &x,
            |b, x| {
                b.iter(|| {
                    let mut s = SparseGptStats::new("in", cols);
                    for window in black_box(x).chunks(512 * cols) {
                        s.observe(window, 1).unwrap();
                    }
                    s
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("wanda", cols), &x, |b, x| {
            b.iter(|| {
                let mut s = WandaStats::new("in", cols);
                s.observe(black_box(x), 128).unwrap();
                s
            })
        });
        g.bench_with_input(BenchmarkId::new("wanda_per_window", cols), &x, |b, x| {
            b.iter(|| {
                let mut s = WandaStats::new("in", cols);
                for window in black_box(x).chunks(512 * cols) {
                    s.observe(window, 1).unwrap();
                }
                s
            })
        });
    }
    g.finish();
}

fn prune(c: &mut Criterion) {
    let mut g = c.benchmark_group("sparsegpt_prune");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    // (name, rows, cols) of SmolLM2-135M's linears.
    let shapes = [
        ("q_o_576x576", 576, 576),
        ("k_v_192x576", 192, 576),
        ("gate_up_1536x576", 1536, 576),
        ("down_576x1536", 576, 1536),
    ];
    let mut stats = std::collections::HashMap::new();
    for cols in [576usize, 1536] {
        let mut s = SparseGptStats::new("in", cols);
        s.observe(&values(8192 * cols, cols, 2), 16).unwrap();
        stats.insert(cols, s);
    }
    for (name, rows, cols) in shapes {
        let w0 = values(rows * cols, cols, 3);
        for (tag, sp) in [
            ("50%", Sparsity::Unstructured(0.5)),
            ("2:4", Sparsity::NM { n: 2, m: 4 }),
        ] {
            let cfg = SparseGptConfig::new(sp);
            let stats = &stats[&cols];
            // First weight on fresh statistics: includes the factorisation of H (and a copy of H).
            g.bench_function(BenchmarkId::new(format!("{name}/first"), tag), |b| {
                b.iter(|| {
                    let fresh =
                        SparseGptStats::from_hessian("in", cols, 16, stats.hessian().to_vec())
                            .unwrap();
                    let mut w = w0.clone();
                    fresh
                        .prune("w", black_box(&mut w), rows, cols, &cfg)
                        .unwrap()
                })
            });
            // A further weight on the same statistics (k, v after q; up after gate).
            g.bench_function(BenchmarkId::new(format!("{name}/shared"), tag), |b| {
                b.iter(|| {
                    let mut w = w0.clone();
                    stats
                        .prune("w", black_box(&mut w), rows, cols, &cfg)
                        .unwrap()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, observe, prune);
criterion_main!(benches);
