//! Sweeps the f32 GEMM's cache blocking on this machine and prints GFLOP/s per shape, so the
//! per-vendor constants in `gemm::f32` can be re-tuned where they were not measured.
//!
//! ```text
//! cargo run --release -p shears-kernels --example gemm_blocking            # default sweep
//! cargo run --release -p shears-kernels --example gemm_blocking -- 512,8,64 1024,8,64
//! ```
//! Shapes: 2048³ and the SmolLM2 prefill / training products (512 tokens). Each figure is the best
//! of several timed runs of about 0.3 s, at the rayon pool's thread count.

use shears_kernels::cpu;
use shears_kernels::gemm::f32::{gemm_blocked, Blocking};
use shears_kernels::gemm::MatRef;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let blockings: Vec<Blocking> = if args.is_empty() {
        let mut v = Vec::new();
        for kc in [256, 384, 512, 768, 1024] {
            for mc in [4, 8, 16] {
                for nc in [32, 64] {
                    v.push(Blocking {
                        kc,
                        mc_panels: mc,
                        nc_panels: nc,
                    });
                }
            }
        }
        v
    } else {
        args.iter()
            .map(|a| {
                Blocking::parse(a).unwrap_or_else(|| panic!("bad blocking {a:?}: want kc,mc,nc"))
            })
            .collect()
    };
    // (m, n, k, b transposed): C = A · B, B stored [n, k] when transposed (x · Wᵀ).
    let shapes = [
        (2048, 2048, 2048, false),
        (512, 1536, 576, true),
        (512, 576, 1536, true),
        (2048, 1536, 576, true),
        (1536, 576, 2048, false),
    ];
    let level = cpu::level();
    println!(
        "cpu {:?} ({}), level {}, {} threads",
        cpu::model_name(),
        cpu::vendor(),
        level.name(),
        rayon::current_num_threads()
    );
    print!("{:>16}", "kc,mc,nc");
    for (m, n, k, t) in shapes {
        print!(
            " {:>16}",
            format!("{m}x{n}x{k}{}", if t { "ᵀ" } else { "" })
        );
    }
    println!();
    for bl in blockings {
        print!(
            "{:>16}",
            format!("{},{},{}", bl.kc, bl.mc_panels, bl.nc_panels)
        );
        for (m, n, k, t) in shapes {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i % 89) as f32 - 44.0) / 89.0)
                .collect();
            let bm = if t {
                MatRef::new(&b, 1, k)
            } else {
                MatRef::new(&b, n, 1)
            };
            let mut c = vec![0f32; m * n];
            let flop = 2.0 * (m * n * k) as f64;
            let mut run = || gemm_blocked(level, bl, m, n, k, MatRef::new(&a, k, 1), bm, &mut c);
            run();
            let reps = (9e10 / flop).clamp(1.0, 1000.0) as usize;
            let mut best = 0f64;
            for _ in 0..3 {
                let t0 = Instant::now();
                for _ in 0..reps {
                    run();
                }
                best = best.max(flop * reps as f64 / t0.elapsed().as_secs_f64() / 1e9);
            }
            print!(" {best:>16.1}");
        }
        println!();
    }
}
