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

/// How the streaming kernels (GEMV, decode attention) prefetch ahead of what they read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prefetch {
    /// No software prefetch: the hardware prefetchers alone.
    Off,
    /// `PREFETCHNTA`: the lines will be read once, soon; spares the outer caches.
    Nta,
    /// `PREFETCHT0`: into every cache level.
    T0,
}

impl Prefetch {
    /// Short name for reports (`off`, `nta`, `t0`).
    pub fn name(self) -> &'static str {
        match self {
            Prefetch::Off => "off",
            Prefetch::Nta => "nta",
            Prefetch::T0 => "t0",
        }
    }
    fn encode(self) -> u8 {
        match self {
            Prefetch::Off => 1,
            Prefetch::Nta => 2,
            Prefetch::T0 => 3,
        }
    }
}

/// The CPU's vendor string from CPUID leaf 0 (`GenuineIntel`, `AuthenticAMD`, ...); empty off
/// x86-64.
pub fn vendor() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let r = std::arch::x86_64::__cpuid(0);
        let bytes: Vec<u8> = [r.ebx, r.edx, r.ecx]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    #[cfg(not(target_arch = "x86_64"))]
    String::new()
}

/// The CPU's brand string from CPUID leaves 0x80000002-4 (`Intel(R) Xeon(R) Processor`, `AMD EPYC
/// ...`), trimmed; empty where the CPU has none or off x86-64.
pub fn model_name() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        if __cpuid(0x8000_0000).eax < 0x8000_0004 {
            return String::new();
        }
        let bytes: Vec<u8> = (0x8000_0002u32..=0x8000_0004)
            .flat_map(|leaf| {
                let r = __cpuid(leaf);
                [r.eax, r.ebx, r.ecx, r.edx]
            })
            .flat_map(|w| w.to_le_bytes())
            .take_while(|&b| b != 0)
            .collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
    #[cfg(not(target_arch = "x86_64"))]
    String::new()
}

/// The prefetch policy this CPU streams best with, chosen from its vendor.
///
/// AMD (Zen 5, measured in SmolLM2-135M decode interleaved with a read probe): NTA ahead of the
/// stream, +3-6 % tokens/s over none; T0 gave about two thirds of that gain.
///
/// Intel (Xeon, family 6 model 207, 2 vCPUs, no AMX exposed): NTA halves the stream. A C
/// microbenchmark of one f32 row at a time (1×4096×11008 over 1.4 GB of weight copies, 2 threads)
/// read 9.9-12.1 GB/s with NTA 3 KiB ahead, 24.6-29.6 GB/s with no software prefetch and 21-24
/// GB/s with T0; but in SmolLM2-135M decode (rows of 576 and 1536 elements, where the hardware
/// prefetchers restart at every short task) `shears bench --prefill 64` gave 43.2-47.3 tokens/s
/// with T0 against 39.7-41.2 with none (three alternations) and 22.3 with NTA, and `bench
/// kernels` f32 GEMV 85-101 % of the read bandwidth with T0 against 89 % with none, bf16 80-88 %
/// against 66-68 %. So T0.
pub fn default_prefetch() -> Prefetch {
    if vendor() == "GenuineIntel" {
        Prefetch::T0
    } else {
        Prefetch::Nta
    }
}

static PREFETCH: AtomicU8 = AtomicU8::new(0);

/// The prefetch policy in force: the one set by [`force_prefetch`] if any, else
/// [`default_prefetch`]; the environment variable `SHEARS_PREFETCH` (`off`, `nta`, `t0`)
/// overrides the default at start-up.
pub fn prefetch() -> Prefetch {
    match PREFETCH.load(Ordering::Relaxed) {
        1 => Prefetch::Off,
        2 => Prefetch::Nta,
        3 => Prefetch::T0,
        _ => {
            let p = match std::env::var("SHEARS_PREFETCH").ok().as_deref() {
                Some("off") => Prefetch::Off,
                Some("nta") => Prefetch::Nta,
                Some("t0") => Prefetch::T0,
                _ => default_prefetch(),
            };
            PREFETCH.store(p.encode(), Ordering::Relaxed);
            p
        }
    }
}

/// Forces a prefetch policy for the whole process (benchmarks, A/B runs); `None` returns to the
/// default.
pub fn force_prefetch(p: Option<Prefetch>) {
    PREFETCH.store(p.map_or(0, Prefetch::encode), Ordering::Relaxed);
}

/// Prefetches of the cache lines of `bytes` bytes from `p` that a streaming kernel will read once,
/// soon, with the hint of [`prefetch`] (nothing when it is [`Prefetch::Off`]). Any address will
/// do: a prefetch never faults, so a window may run past the end of a buffer. No-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch_once(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_NTA, _MM_HINT_T0};
        let hint = prefetch();
        let mut o = 0;
        while o < bytes {
            let q = p.wrapping_add(o).cast();
            // SAFETY: a prefetch only hints the caches and never faults, whatever the address;
            // SSE, which it needs, is part of x86-64.
            match hint {
                Prefetch::Off => return,
                Prefetch::Nta => unsafe { _mm_prefetch::<_MM_HINT_NTA>(q) },
                Prefetch::T0 => unsafe { _mm_prefetch::<_MM_HINT_T0>(q) },
            }
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
