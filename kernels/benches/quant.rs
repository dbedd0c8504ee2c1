//! Dequantization of GGUF blocks (Q8_0, Q4_0, Q4_1) at a LLaMA-7B weight size (4096 × 4096):
//! `fast` at the detected SIMD level on rayon's pool, `portable` at the portable level, `ref` the
//! scalar reference. `RAYON_NUM_THREADS=1 cargo bench -p shears-kernels --bench quant` measures
//! one core.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use shears_kernels::cpu::{self, Level};
use shears_kernels::quant::*;
use std::time::Duration;

type Fast = fn(Level, &[u8], &mut [f32]);
type Reference = fn(&[u8], &mut [f32]);

fn dequant(c: &mut Criterion) {
    let blocks = 4096 * 4096 / QK;
    let cases: [(&str, usize, Fast, Reference); 3] = [
        (
            "q8_0",
            Q8_0_BYTES,
            dequantize_q8_0_with,
            dequantize_q8_0_ref,
        ),
        (
            "q4_0",
            Q4_0_BYTES,
            dequantize_q4_0_with,
            dequantize_q4_0_ref,
        ),
        (
            "q4_1",
            Q4_1_BYTES,
            dequantize_q4_1_with,
            dequantize_q4_1_ref,
        ),
    ];
    let mut dst = vec![0f32; blocks * QK];
    for (name, bytes, fast, reference) in cases {
        // Random bytes with small finite f16 scales (exponent bits cleared).
        let mut src: Vec<u8> = shears_kernels::testing::lcg_values(blocks * bytes, 5, 512.0)
            .into_iter()
            .map(|v| v as i32 as u8)
            .collect();
        for b in src.chunks_exact_mut(bytes) {
            b[1] &= 0x3B;
            if name == "q4_1" {
                b[3] &= 0x3B;
            }
        }
        let mut g = c.benchmark_group(format!("dequantize_{name} 4096x4096"));
        g.throughput(Throughput::Elements((blocks * QK) as u64));
        g.bench_function("fast", |b| {
            b.iter(|| fast(cpu::level(), black_box(&src), &mut dst))
        });
        g.bench_function("portable", |b| {
            b.iter(|| fast(Level::Portable, black_box(&src), &mut dst))
        });
        g.bench_function("ref", |b| b.iter(|| reference(black_box(&src), &mut dst)));
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = dequant
}
criterion_main!(benches);
