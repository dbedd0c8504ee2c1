//! The fused kernels against their scalar references at LLaMA-7B sizes (hidden 4096, 32 heads of
//! 128, MLP 11008), for a 16-token prefill chunk or 32 attention rows.
//!
//! `fast` runs at the detected SIMD level on rayon's pool, `portable` at the portable level, `ref`
//! is the scalar reference. `RAYON_NUM_THREADS=1 cargo bench -p shears-kernels --bench fused`
//! measures one core.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use half::{bf16, f16};
use shears_kernels::cpu::{self, Level};
use shears_kernels::fused::*;
use std::time::Duration;

fn data(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    shears_kernels::testing::lcg_values(n, seed, scale)
}

/// Benchmarks one kernel over `elems` elements: `f(Some(level))` runs the fast kernel at `level`
/// (the detected one, then portable), `f(None)` the reference.
fn trio(c: &mut Criterion, name: &str, elems: usize, mut f: impl FnMut(Option<Level>)) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(elems as u64));
    for (id, level) in [
        ("fast", Some(cpu::level())),
        ("portable", Some(Level::Portable)),
        ("ref", None),
    ] {
        g.bench_function(id, |b| b.iter(|| f(level)));
    }
    g.finish();
}

fn norm(c: &mut Criterion) {
    let (rows, n) = (16, 4096);
    let (x, w) = (data(rows * n, 1, 4.0), data(n, 2, 2.0));
    let mut out = vec![0f32; rows * n];
    trio(c, "rms_norm 16x4096", rows * n, |level| match level {
        Some(l) => rms_norm_with(l, black_box(&x), &w, 1e-6, &mut out),
        None => rms_norm_ref(black_box(&x), &w, 1e-6, &mut out),
    });
}

fn rope_bench(c: &mut Criterion) {
    let (seq, heads, d) = (16, 32, 128);
    let (cos, sin) = rope_tables(d, 4096, 10_000.0);
    let pos: Vec<usize> = (1000..1000 + seq).collect();
    let mut x = data(seq * heads * d, 3, 2.0);
    for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
        let name = format!("rope {layout:?} 16x32x128");
        trio(c, &name, x.len(), |level| match level {
            Some(l) => rope_with(l, &mut x, heads, d, &pos, &cos, &sin, layout),
            None => rope_ref(&mut x, heads, d, &pos, &cos, &sin, layout),
        });
    }
}

fn softmax(c: &mut Criterion) {
    let (rows, n) = (32, 4096);
    let x = data(rows * n, 4, 20.0);
    let mut out = vec![0f32; rows * n];
    trio(c, "softmax_rows 32x4096", rows * n, |level| match level {
        Some(l) => softmax_rows_with(l, black_box(&x), n, &mut out),
        None => softmax_rows_ref(black_box(&x), n, &mut out),
    });
    // For scale: the crate's existing plain f32 softmax (not SIMD) on the same rows.
    c.bench_function("softmax_rows 32x4096/plain f32 (kernels::softmax)", |b| {
        b.iter(|| shears_kernels::softmax::softmax_rows(black_box(&x), n, &mut out))
    });
    // 32 new queries over 4096 keys, 4064 of them cached.
    let off = n - rows;
    trio(c, "softmax_causal 32x4096", rows * n, |level| match level {
        Some(l) => softmax_causal_with(l, black_box(&x), rows, n, off, &mut out),
        None => softmax_causal_ref(black_box(&x), rows, n, off, &mut out),
    });
}

fn act(c: &mut Criterion) {
    let (rows, n) = (16, 11008);
    let (g, u) = (data(rows * n, 5, 8.0), data(rows * n, 6, 2.0));
    let mut out = vec![0f32; rows * n];
    trio(c, "silu_mul 16x11008", rows * n, |level| match level {
        Some(l) => silu_mul_with(l, black_box(&g), &u, &mut out),
        None => silu_mul_ref(black_box(&g), &u, &mut out),
    });
    let bias = data(4096, 7, 1.0);
    let (a, o) = (&g[..16 * 4096], &mut out[..16 * 4096]);
    trio(c, "add bias 16x4096", a.len(), |level| match level {
        Some(l) => add_with(l, black_box(a), &bias, o),
        None => add_ref(black_box(a), &bias, o),
    });
}

fn convert(c: &mut Criterion) {
    let n = 1 << 20;
    let x = data(n, 8, 100.0);
    let (mut b, mut h, mut y) = (vec![bf16::ZERO; n], vec![f16::ZERO; n], vec![0f32; n]);
    trio(c, "f32_to_bf16 1M", n, |level| match level {
        Some(l) => f32_to_bf16_with(l, black_box(&x), &mut b),
        None => f32_to_bf16_ref(black_box(&x), &mut b),
    });
    trio(c, "bf16_to_f32 1M", n, |level| match level {
        Some(l) => bf16_to_f32_with(l, black_box(&b), &mut y),
        None => bf16_to_f32_ref(black_box(&b), &mut y),
    });
    trio(c, "f32_to_f16 1M", n, |level| match level {
        Some(l) => f32_to_f16_with(l, black_box(&x), &mut h),
        None => f32_to_f16_ref(black_box(&x), &mut h),
    });
    trio(c, "f16_to_f32 1M", n, |level| match level {
        Some(l) => f16_to_f32_with(l, black_box(&h), &mut y),
        None => f16_to_f32_ref(black_box(&h), &mut y),
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = norm, rope_bench, softmax, act, convert
}
criterion_main!(benches);
