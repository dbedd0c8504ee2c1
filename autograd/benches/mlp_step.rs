//! One matmul-heavy MLP step: `x [512, 576]` (constant) → `x·W1ᵀ` (`W1 [1536, 576]`) → SiLU →
//! `·W2ᵀ` (`W2 [576, 1536]`), loss = mean of squares of the output, f32. Weights use the
//! checkpoint layout `[out, in]`, so both products read a transposed view.
//!
//! Benches "forward" inside `no_grad`, "forward (graph)" recording the graph without backward,
//! and "forward+backward". The FLOP ratio of fwd+bwd to fwd is 3; the target is ≤ 3.2×.
//! Before criterion runs, prints (stderr) the median-of-20 ratio from a manual loop and the peak
//! heap bytes of one fwd+bwd step above the step's starting point (a counting global allocator).
//! `cargo bench -p shears-autograd --bench mlp_step`

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use shears_autograd::{no_grad, Var};
use shears_tensor::{DType, Tensor};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `System` plus a count of live heap bytes and their high-water mark.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call forwards to `System` with the caller's arguments; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const N: usize = 512;
const D: usize = 576;
const H: usize = 1536;

struct Mlp {
    x: Var,
    w1: Var,
    w2: Var,
}

impl Mlp {
    fn new() -> Mlp {
        let t = |shape: [usize; 2], std: f64, seed: u64| {
            Tensor::randn(shape, 0.0, std, DType::F32, seed).expect("randn")
        };
        Mlp {
            x: Var::constant(t([N, D], 1.0, 0)),
            w1: Var::param(t([H, D], (1.0 / D as f64).sqrt(), 1)),
            w2: Var::param(t([D, H], (1.0 / H as f64).sqrt(), 2)),
        }
    }

    fn loss(&self) -> Var {
        let h = self
            .x
            .matmul(&self.w1.t().unwrap())
            .unwrap()
            .silu()
            .unwrap();
        let y = h.matmul(&self.w2.t().unwrap()).unwrap();
        y.sqr().unwrap().mean_all().unwrap()
    }

    fn forward_no_grad(&self) -> Var {
        no_grad(|| self.loss())
    }

    fn step(&self) -> usize {
        let grads = self.loss().backward().unwrap();
        assert!(grads.get(&self.w1).is_some() && grads.get(&self.w2).is_some());
        grads.len()
    }
}

fn median_secs(mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..20)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[9] + t[10]) / 2.0
}

fn report(m: &Mlp) {
    let fwd = median_secs(|| {
        black_box(m.forward_no_grad());
    });
    let fwd_graph = median_secs(|| {
        black_box(m.loss());
    });
    let step = median_secs(|| {
        black_box(m.step());
    });
    // Peak of one fwd+bwd step relative to the live bytes at its start.
    let start = CURRENT.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    black_box(m.step());
    let peak = PEAK.load(Ordering::Relaxed) - start;
    let mb = |b: usize| b as f64 / (1024.0 * 1024.0);
    let tensor_mb = |n: usize| mb(n * 4);
    eprintln!(
        "mlp_step manual (median of 20): forward no_grad {:.3} ms, forward with graph {:.3} ms, \
         forward+backward {:.3} ms",
        fwd * 1e3,
        fwd_graph * 1e3,
        step * 1e3
    );
    eprintln!(
        "mlp_step ratio (fwd+bwd)/(fwd no_grad) = {:.2}, (fwd+bwd)/(fwd graph) = {:.2} \
         (target <= 3.2; FLOP ratio 3)",
        step / fwd,
        step / fwd_graph
    );
    eprintln!(
        "mlp_step peak heap during one fwd+bwd step: {:.2} MiB above start \
         (x {:.2}, W1 {:.2}, W2 {:.2}, hidden {:.2}, out {:.2} MiB per f32 tensor)",
        mb(peak),
        tensor_mb(N * D),
        tensor_mb(H * D),
        tensor_mb(D * H),
        tensor_mb(N * H),
        tensor_mb(N * D)
    );
}

fn bench(c: &mut Criterion) {
    let m = Mlp::new();
    report(&m);
    let mut g = c.benchmark_group("mlp_step 512x576x1536");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    g.bench_function("forward", |b| b.iter(|| black_box(m.forward_no_grad())));
    g.bench_function("forward (graph)", |b| b.iter(|| black_box(m.loss())));
    g.bench_function("forward+backward", |b| b.iter(|| black_box(m.step())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
