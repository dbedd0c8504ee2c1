//! Quick GEMM timing at every SIMD level: `cargo run --release -p shears-kernels --example gemm_speed [n]`.
use shears_kernels::{cpu, gemm};
use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; n * n];
    for level in cpu::available() {
        for (name, bm) in [
            ("B[K,N]", gemm::MatRef::new(&b, n, 1)),
            ("B=W^T", gemm::MatRef::new(&b, 1, n)),
        ] {
            let am = gemm::MatRef::new(&a, n, 1);
            gemm::f32::gemm(level, n, n, n, am, bm, &mut c);
            let reps = 3;
            let t = Instant::now();
            for _ in 0..reps {
                gemm::f32::gemm(level, n, n, n, am, bm, &mut c);
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{:>8} {name:>7} {n}^3: {:.3} ms  {:.1} GFLOP/s",
                level.name(),
                s * 1e3,
                2.0 * (n as f64).powi(3) / s / 1e9
            );
        }
    }
}
