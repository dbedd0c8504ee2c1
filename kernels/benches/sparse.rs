//! Sparse products against the dense `gemv::matmul_nt` they replace, side by side in one group
//! per (shape, batch, value type): `y[m×n] = x[m×k] · Wᵀ` with W `[n, k]` dense, bitmask at 50,
//! 70 and 90 % sparsity (random masks), and 2:4. Shapes are a small model's (576 × 1536,
//! 1536 × 576) and LLaMA-7B's projections (4096 × 4096, 11008 × 4096, 4096 × 11008); batches 1
//! (decode), 8 and 64 (prefill, calibration).
//!
//! The same W is read every iteration, so a sparse W that fits the last-level cache while its
//! dense twin does not is served from cache: compare at 11008 × 4096 for memory-bound speed.
//! `cargo bench -p shears-kernels --bench sparse` runs everything (a few minutes); a filter
//! picks groups (a substring of the group name), e.g. `-- "m1 "` (decode only) or `-- "4096x4096 m64"`; `RAYON_NUM_THREADS`
//! and `SHEARS_SIMD` as for the other benches.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode};
use half::bf16;
use shears_kernels::gemv::{matmul_nt, WeightElem};
use shears_kernels::sparse::{bitmask_matmul_nt, nm_matmul_nt};
use shears_kernels::testing::lcg_values;
use std::hint::black_box;
use std::time::Duration;

/// A bitmask encoding: bits, row offsets, kept values (as f32).
struct Bitmask {
    bits: Vec<u8>,
    offsets: Vec<usize>,
    values: Vec<f32>,
}

/// Keeps each weight with probability `1 - sparsity` (`nm = Some((n, m))`: the `n` largest of
/// every `m` by magnitude instead).
fn encode(w: &[f32], n: usize, k: usize, sparsity: f32, nm: Option<(usize, usize)>) -> Bitmask {
    let rb = k.div_ceil(8);
    let u = lcg_values(n * k, 77, 1.0);
    let mut out = Bitmask {
        bits: vec![0; n * rb],
        offsets: Vec::with_capacity(n),
        values: Vec::new(),
    };
    for r in 0..n {
        out.offsets.push(out.values.len());
        let row = &w[r * k..(r + 1) * k];
        let kept: Vec<bool> = match nm {
            None => (0..k).map(|c| u[r * k + c] + 0.5 >= sparsity).collect(),
            Some((keep, group)) => {
                let mut kept = vec![false; k];
                for g in (0..k).step_by(group) {
                    let mut idx: Vec<usize> = (g..g + group).collect();
                    idx.sort_by(|&a, &b| row[b].abs().total_cmp(&row[a].abs()));
                    for &c in &idx[..keep] {
                        kept[c] = true;
                    }
                }
                kept
            }
        };
        for (c, &kp) in kept.iter().enumerate() {
            if kp {
                out.bits[r * rb + c / 8] |= 1 << (c % 8);
                out.values.push(row[c]);
            }
        }
    }
    out
}

/// Whether a group's name contains one of the filters given on the command line (or there are
/// none): building the large matrices of groups criterion would skip anyway takes seconds.
fn wanted(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

fn group<W: WeightElem>(
    c: &mut Criterion,
    n: usize,
    k: usize,
    m: usize,
    dtype: &str,
    conv: fn(f32) -> W,
) {
    let name = format!("sparse {n}x{k} m{m} {dtype}");
    if !wanted(&name) {
        return;
    }
    let wf = lcg_values(n * k, 4, 1.0);
    let x = lcg_values(m * k, 3, 1.0);
    let mut y = vec![0f32; m * n];
    let mut g: BenchmarkGroup<'_, WallTime> = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat);
    let w: Vec<W> = wf.iter().map(|&v| conv(v)).collect();
    g.bench_function("dense", |b| {
        b.iter(|| matmul_nt(m, n, k, black_box(&x), &w, &mut y))
    });
    drop(w);
    for s in [50u32, 70, 90] {
        let e = encode(&wf, n, k, s as f32 / 100.0, None);
        let v: Vec<W> = e.values.iter().map(|&v| conv(v)).collect();
        g.bench_function(format!("bitmask{s}"), |b| {
            b.iter(|| bitmask_matmul_nt(m, n, k, black_box(&x), &e.bits, &e.offsets, &v, &mut y))
        });
    }
    let e = encode(&wf, n, k, 0.5, Some((2, 4)));
    let v: Vec<W> = e.values.iter().map(|&v| conv(v)).collect();
    g.bench_function("nm2:4", |b| {
        b.iter(|| nm_matmul_nt(m, n, k, black_box(&x), 2, 4, &e.bits, &v, &mut y))
    });
    g.finish();
}

fn sparse(c: &mut Criterion) {
    let shapes = [
        (576, 1536),
        (1536, 576),
        (4096, 4096),
        (11008, 4096),
        (4096, 11008),
    ];
    for m in [1, 8, 64] {
        for &(n, k) in &shapes {
            group(c, n, k, m, "f32", |v| v);
            group(c, n, k, m, "bf16", bf16::from_f32);
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
        .sample_size(10);
    targets = sparse
}
criterion_main!(benches);
