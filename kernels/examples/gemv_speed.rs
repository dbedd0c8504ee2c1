//! Quick GEMV timing: `cargo run --release -p shears-kernels --example gemv_speed`.
use half::bf16;
use shears_kernels::gemv::matmul_nt;
use std::time::Instant;

fn time(f: &mut dyn FnMut()) -> f64 {
    f();
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    let (n, k) = (11008, 4096);
    let w: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32 * 0.01).collect();
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    for m in [1usize, 16] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut y = vec![0f32; m * n];
        let s = time(&mut || matmul_nt(m, n, k, &x, &w, &mut y));
        println!(
            "f32  m={m}: {:.3} ms {:.1} GB/s {:.1} GFLOP/s",
            s * 1e3,
            (n * k * 4) as f64 / s / 1e9,
            2.0 * (m * n * k) as f64 / s / 1e9
        );
        let s = time(&mut || matmul_nt(m, n, k, &x, &wb, &mut y));
        println!(
            "bf16 m={m}: {:.3} ms {:.1} GB/s {:.1} GFLOP/s",
            s * 1e3,
            (n * k * 2) as f64 / s / 1e9,
            2.0 * (m * n * k) as f64 / s / 1e9
        );
    }
}
