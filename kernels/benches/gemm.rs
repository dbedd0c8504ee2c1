//! Dense products side by side: the packed SIMD `gemm` against `gemm_generic` (the simple blocked
//! loop) and `gemm_ref` (the triple loop, only at 128³: it is slow), with B given as [K, N]
//! (`b_kn`) or as the transposed view of an [N, K] buffer (`b_nk`); and `gemv::matmul_nt` at
//! LLaMA-7B's 4096 × 4096 projection for decode (M = 1) and a 16-row batch, with f32 and bf16
//! weights.
//!
//! Throughput is in flops for GEMM (criterion's "elem/s" are flop/s) and in weight bytes (GB/s,
//! 1e9 B/s) for `matmul_nt`. M = 1 reads the same W every iteration, so up to the last-level
//! cache's size of it is served from cache: these numbers compare kernel variants; for
//! memory-bound decode speed use `shears bench kernels`, which cycles through copies of W.
//! The whole file runs in about a minute:
//! `cargo bench -p shears-kernels --bench gemm`; `RAYON_NUM_THREADS=1` measures one core,
//! `SHEARS_SIMD=avx2` caps the SIMD level.

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode,
    Throughput,
};
use half::bf16;
use shears_kernels::gemm::{gemm, gemm_generic, gemm_ref, MatRef};
use shears_kernels::gemv::{matmul_nt, WeightElem};
use std::hint::black_box;
use std::time::Duration;

fn data(n: usize, seed: u64) -> Vec<f32> {
    shears_kernels::testing::lcg_values(n, seed, 1.0)
}

type GemmFn = fn(usize, usize, usize, MatRef<f32>, MatRef<f32>, &mut [f32]);

/// `gemm`, `gemm_generic` (and `gemm_ref` when `with_ref`) at s³, for both layouts of B.
fn cube(c: &mut Criterion, s: usize, layouts: &[&str], with_ref: bool) {
    let a = data(s * s, 1);
    let b = data(s * s, 2);
    let mut out = vec![0f32; s * s];
    let mut g = c.benchmark_group(format!("gemm {s}x{s}x{s}"));
    g.throughput(Throughput::Elements(2 * (s * s * s) as u64));
    if s >= 1024 {
        // Slow iterations: equal-sized samples instead of criterion's growing ones.
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .measurement_time(Duration::from_secs(3));
    }
    let mut fns: Vec<(&str, GemmFn)> = vec![("gemm", gemm), ("generic", gemm_generic)];
    if with_ref {
        fns.push(("ref", gemm_ref));
    }
    for &layout in layouts {
        // b_kn: row-major [K, N]; b_nk: an [N, K] buffer read through its transpose's strides.
        let bm = if layout == "b_kn" {
            MatRef::new(&b, s, 1)
        } else {
            MatRef::new(&b, 1, s)
        };
        for &(name, f) in &fns {
            g.bench_function(BenchmarkId::new(name, layout), |bench| {
                bench.iter(|| f(s, s, s, MatRef::new(black_box(&a), s, 1), bm, &mut out))
            });
        }
    }
    g.finish();
}

fn gemm_cubes(c: &mut Criterion) {
    cube(c, 128, &["b_kn"], true);
    cube(c, 256, &["b_kn", "b_nk"], false);
    cube(c, 1024, &["b_kn", "b_nk"], false);
}

/// Adds `matmul_nt` at m × 4096 × 4096 with weights of type `W` to the group.
fn nt<W: WeightElem>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    m: usize,
    dtype: &str,
    conv: fn(f32) -> W,
) {
    let (k, n) = (4096, 4096);
    let x = data(m * k, 3);
    let w: Vec<W> = data(n * k, 4).into_iter().map(conv).collect();
    let mut y = vec![0f32; m * n];
    g.throughput(Throughput::BytesDecimal(
        (n * k * std::mem::size_of::<W>()) as u64,
    ));
    g.bench_function(dtype, |bench| {
        bench.iter(|| matmul_nt(m, n, k, black_box(&x), &w, &mut y))
    });
}

fn matmul_nt_llm(c: &mut Criterion) {
    for m in [1, 16] {
        let mut g = c.benchmark_group(format!("matmul_nt {m}x4096x4096"));
        g.sample_size(10);
        nt(&mut g, m, "f32", |v| v);
        nt(&mut g, m, "bf16", bf16::from_f32);
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(20);
    targets = gemm_cubes, matmul_nt_llm
}
criterion_main!(benches);
