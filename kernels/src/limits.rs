//! What this machine can do at best: the f32 FMA peak and the memory read bandwidth, so kernel
//! speeds can be quoted as a fraction of them.
//!
//! ```
//! use shears_kernels::limits;
//! // `measure(threads)` sums a 1 GiB array; a small one keeps this example quick.
//! let l = limits::measure_with(1, 1 << 20);
//! assert!(l.fma_gflops > 0.0 && l.read_gbps > 0.0);
//! println!("{}: {:.0} GFLOP/s, {:.1} GB/s", l.level.name(), l.fma_gflops, l.read_gbps);
//! ```
//!
//! The probes mirror the C tool `shared/tools/limits` (`peak.c`, `stream.c`) so the numbers are
//! comparable: the FMA peak runs 16 independent chains of `acc = acc · y + x` per thread (the
//! vector width of the SIMD level the kernels use), counts 2 flops per lane per FMA and keeps the
//! best of a few repetitions; the bandwidth probe sums one large f32 array split evenly over the
//! threads, with enough accumulators to be bound by memory rather than by add latency, and keeps
//! the median of 5 repetitions (bytes read ÷ seconds, 1 GB = 1e9 B).

use crate::cpu::{self, Level};
use std::hint::black_box;
use std::time::Instant;

/// Measured limits of this machine for a number of threads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// f32 fused multiply-add peak, in GFLOP/s (1e9 flop/s), all threads together.
    pub fma_gflops: f64,
    /// Memory read bandwidth, in GB/s (1e9 B/s), all threads together.
    pub read_gbps: f64,
    /// Threads the probes ran on.
    pub threads: usize,
    /// SIMD level of the FMA probe (the level the kernels run at, [`cpu::level`]).
    pub level: Level,
}

/// Size of the array [`measure`] reads: 1 GiB, or 512 MiB when less than 4 GiB of memory is free.
pub fn default_read_bytes() -> usize {
    match available_memory() {
        Some(avail) if avail < 4 << 30 => 512 << 20,
        _ => 1 << 30,
    }
}

/// Probes the FMA peak (about 0.3 s) and the read bandwidth over [`default_read_bytes`] on
/// `threads` threads (0 counts as 1), at the SIMD level the kernels use.
///
/// # Panics
/// If the thread pool cannot be created.
pub fn measure(threads: usize) -> Limits {
    measure_with(threads, default_read_bytes())
}

/// [`measure`] with the bandwidth probe reading `bytes` bytes (rounded down to whole f32s, at
/// least one per thread). Arrays that fit in cache measure the cache, not memory.
///
/// # Panics
/// If the thread pool cannot be created.
pub fn measure_with(threads: usize, bytes: usize) -> Limits {
    let threads = threads.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("limits: cannot build a thread pool");
    let level = cpu::level();
    Limits {
        fma_gflops: fma_peak(&pool, level),
        read_gbps: read_bandwidth(&pool, bytes),
        threads,
        level,
    }
}

/// Seconds of one timed FMA repetition; 5 of them make the ~0.3 s of the probe.
const FMA_REP_SECONDS: f64 = 0.06;
const FMA_REPS: usize = 5;
const READ_REPS: usize = 5;

fn fma_peak(pool: &rayon::ThreadPool, level: Level) -> f64 {
    let threads = pool.current_num_threads();
    let run = |iters: u64| {
        let t = Instant::now();
        let sums = pool.broadcast(|ctx| fma_loop(level, iters, ctx.index() as f32));
        let dt = t.elapsed().as_secs_f64();
        black_box(sums);
        dt
    };
    // Grow the loop until one run is long enough to time; this also wakes the threads and lets
    // the clock settle before the timed runs.
    let mut iters = 1u64 << 12;
    let mut dt = run(iters);
    while dt < 0.02 {
        iters *= 4;
        dt = run(iters);
    }
    let iters = ((iters as f64 * FMA_REP_SECONDS / dt) as u64).max(1);
    let best = (0..FMA_REPS)
        .map(|_| run(iters))
        .fold(f64::INFINITY, f64::min);
    let (chains, lanes) = shape(level);
    let flops = 2.0 * (lanes * chains) as f64 * iters as f64 * threads as f64;
    flops / best / 1e9
}

/// (independent chains, f32 lanes per vector) of the FMA loop at `level`.
fn shape(level: Level) -> (usize, usize) {
    match level {
        Level::Avx512 => (16, 16),
        // 16 ymm registers: 14 accumulators plus the two operands fit without spilling.
        Level::Avx2 => (14, 8),
        // Two SSE registers per `f32x8` on x86_64: 6 accumulators plus the operands fit in 16.
        Level::Portable => (6, 8),
    }
}

fn fma_loop(level: Level, iters: u64, seed: f32) -> f32 {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level` came from `cpu::level`, which only returns levels the CPU supports.
        Level::Avx512 => unsafe { x86::fma_avx512(iters, seed) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 => unsafe { x86::fma_avx2(iters, seed) },
        _ => fma_portable(iters, seed),
    }
}

fn fma_portable(iters: u64, seed: f32) -> f32 {
    use wide::f32x8;
    let x = f32x8::splat(black_box(seed));
    let y = f32x8::splat(black_box(0.999_999));
    let mut acc = [f32x8::ZERO; 6];
    for (j, a) in acc.iter_mut().enumerate() {
        *a = f32x8::splat(j as f32);
    }
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(y, x);
        }
    }
    acc.iter().fold(f32x8::ZERO, |s, &a| s + a).reduce_add()
}

/// Sums `data` with 64 independent f32 lanes, so a vector unit keeps several accumulators in
/// flight and the loop is bound by memory, not by the latency of one add chain.
#[inline(always)]
fn sum_lanes(data: &[f32]) -> f32 {
    let mut acc = [0f32; 64];
    let mut chunks = data.chunks_exact(64);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

fn sum(level: Level, data: &[f32]) -> f32 {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level` came from `cpu::level`, which only returns levels the CPU supports.
        Level::Avx512 => unsafe { x86::sum_avx512(data) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 => unsafe { x86::sum_avx2(data) },
        _ => sum_lanes(data),
    }
}

fn read_bandwidth(pool: &rayon::ThreadPool, bytes: usize) -> f64 {
    pool.install(|| {
        let probe = ReadProbe::new(bytes);
        probe.run(); // warm-up
        let mut times: Vec<f64> = (0..READ_REPS).map(|_| probe.run().1).collect();
        times.sort_by(f64::total_cmp);
        (probe.data.len() * 4) as f64 / times[READ_REPS / 2] / 1e9
    })
}

/// A read-bandwidth probe to run between steps of other work, so a speed can be compared with
/// the bandwidth of the same moments (shared hosts vary within seconds): one array, filled once,
/// that each [`run`](ReadProbe::run) sums once on the threads of the current rayon pool, as
/// [`measure`]'s probe does.
///
/// ```
/// use shears_kernels::limits::ReadProbe;
/// let probe = ReadProbe::new(1 << 20);
/// let (bytes, secs) = probe.run();
/// assert!(bytes == 1 << 20 && secs > 0.0);
/// ```
pub struct ReadProbe {
    data: Vec<f32>,
    per: usize,
    level: Level,
}

impl ReadProbe {
    /// An array of `bytes` bytes (whole f32s, at least one per thread of the current pool),
    /// touched from the threads that will read it (zeroed pages are mapped lazily, so each page
    /// is first touched by its reader). Use more than the last-level cache.
    pub fn new(bytes: usize) -> ReadProbe {
        let threads = rayon::current_num_threads().max(1);
        let n = (bytes / 4).max(threads);
        let per = n.div_ceil(threads);
        let mut data = vec![0f32; n];
        {
            use rayon::prelude::*;
            data.par_chunks_mut(per).for_each(|c| c.fill(1.0));
        }
        ReadProbe {
            data,
            per,
            level: cpu::level(),
        }
    }

    /// Sums the array once, split over the current pool's threads: `(bytes read, seconds)`.
    pub fn run(&self) -> (usize, f64) {
        let (data, per, level) = (&self.data[..], self.per, self.level);
        let t = Instant::now();
        let sums = rayon::broadcast(|ctx| {
            let i0 = (ctx.index() * per).min(data.len());
            sum(level, &data[i0..(i0 + per).min(data.len())])
        });
        let dt = t.elapsed().as_secs_f64();
        black_box(sums);
        (data.len() * 4, dt)
    }
}

/// Bytes of memory free for new allocations (Linux's `MemAvailable`); `None` elsewhere.
fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) fn fma_avx512(iters: u64, seed: f32) -> f32 {
        let x = _mm512_set1_ps(seed);
        let y = _mm512_set1_ps(0.999_999);
        let mut acc = [_mm512_setzero_ps(); 16];
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm512_set1_ps(j as f32);
        }
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, y, x);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a));
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn fma_avx2(iters: u64, seed: f32) -> f32 {
        let x = _mm256_set1_ps(seed);
        let y = _mm256_set1_ps(0.999_999);
        let mut acc = [_mm256_setzero_ps(); 14];
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm256_set1_ps(j as f32);
        }
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, y, x);
            }
        }
        let s = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
        // Summing every lane keeps every lane of the loop live.
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats, the width of the unaligned store.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
        lanes.iter().sum()
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn sum_avx512(data: &[f32]) -> f32 {
        super::sum_lanes(data)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn sum_avx2(data: &[f32]) -> f32 {
        super::sum_lanes(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measure_returns_finite_positive_numbers() {
        for threads in [1, 2] {
            let l = measure_with(threads, 4 << 20);
            assert_eq!(l.threads, threads);
            assert_eq!(l.level, cpu::level());
            assert!(l.fma_gflops.is_finite() && l.fma_gflops > 0.0, "{l:?}");
            assert!(l.read_gbps.is_finite() && l.read_gbps > 0.0, "{l:?}");
        }
    }

    #[test]
    fn every_level_sums_and_multiplies_alike() {
        let data: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
        let want: f32 = data.iter().sum();
        for level in cpu::available() {
            assert_eq!(sum(level, &data), want, "{level:?}");
            // acc_j after one step: j · 0.999999 + 2, summed over the lanes and chains.
            let (chains, lanes) = shape(level);
            let one = fma_loop(level, 1, 2.0);
            let expect: f32 = (0..chains)
                .map(|j| (j as f32 * 0.999_999 + 2.0) * lanes as f32)
                .sum();
            assert!(
                (one - expect).abs() <= 1e-3 * expect,
                "{level:?}: {one} vs {expect}"
            );
        }
    }
}
