//! Run-time choice of the SIMD code path. Kernels are compiled for every level with
//! `#[target_feature]` and the best level the CPU supports is picked when they run, so a program
//! built without `-C target-cpu=native` still gets AVX-512 where the machine has it.
//!
//! ```
//! use shears_kernels::cpu::{self, Level};
//! let best = cpu::detect();
//! assert!(cpu::available().contains(&best));
//! assert!(cpu::available().contains(&Level::Portable));
//! ```

use std::sync::atomic::{AtomicU8, Ordering};

/// A SIMD code path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Portable SIMD through the `wide` crate (SSE2 on x86_64, NEON on aarch64, scalar elsewhere).
    Portable,
    /// AVX2 + FMA (+ F16C) on x86_64.
    Avx2,
    /// AVX-512 F/BW/VL/DQ on x86_64.
    Avx512,
}

impl Level {
    /// Short name for reports (`avx512`, `avx2`, `portable`).
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }
    /// True when this CPU can run the level.
    pub fn is_supported(self) -> bool {
        match self {
            Level::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                Level::Avx2.is_supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The best level this CPU supports.
pub fn detect() -> Level {
    [Level::Avx512, Level::Avx2]
        .into_iter()
        .find(|l| l.is_supported())
        .unwrap_or(Level::Portable)
}

/// Every level this CPU supports, best last.
pub fn available() -> Vec<Level> {
    [Level::Portable, Level::Avx2, Level::Avx512]
        .into_iter()
        .filter(|l| l.is_supported())
        .collect()
}

static FORCED: AtomicU8 = AtomicU8::new(0);

/// The level kernels use: the one set by [`force`] if any, else [`detect`]. The environment
/// variable `SHEARS_SIMD` (`portable`, `avx2`, `avx512`) caps it at start-up.
pub fn level() -> Level {
    match FORCED.load(Ordering::Relaxed) {
        1 => Level::Portable,
        2 => Level::Avx2,
        3 => Level::Avx512,
        _ => {
            let l = from_env()
                .filter(|l| l.is_supported())
                .map_or(detect(), |e| e.min(detect()));
            FORCED.store(encode(l), Ordering::Relaxed);
            l
        }
    }
}

/// Forces a level for the whole process (benchmarks, tests); `None` returns to detection.
/// A level the CPU lacks is refused and returns false.
pub fn force(level: Option<Level>) -> bool {
    match level {
        Some(l) if !l.is_supported() => false,
        Some(l) => {
            FORCED.store(encode(l), Ordering::Relaxed);
            true
        }
        None => {
            FORCED.store(0, Ordering::Relaxed);
            true
        }
    }
}

/// Non-temporal prefetches of the cache lines of `bytes` bytes from `p`: a hint that they will be
/// read once, soon (`PREFETCHNTA`, which also spares the outer caches). Any address will do: a
/// prefetch never faults, so a window may run past the end of a buffer. No-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch_once(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_NTA};
        let mut o = 0;
        while o < bytes {
            // SAFETY: a prefetch only hints the caches and never faults, whatever the address;
            // SSE, which it needs, is part of x86-64.
            unsafe { _mm_prefetch::<_MM_HINT_NTA>(p.wrapping_add(o).cast()) };
            o += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

fn encode(l: Level) -> u8 {
    match l {
        Level::Portable => 1,
        Level::Avx2 => 2,
        Level::Avx512 => 3,
    }
}

fn from_env() -> Option<Level> {
    match std::env::var("SHEARS_SIMD").ok()?.as_str() {
        "portable" => Some(Level::Portable),
        "avx2" => Some(Level::Avx2),
        "avx512" => Some(Level::Avx512),
        _ => None,
    }
}
