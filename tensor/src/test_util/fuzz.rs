//! A mutation fuzzer for parsers on stable Rust (no nightly, no libFuzzer): seeds from files,
//! random stacked mutations (bit flips, boundary bytes and integers, truncation, deletion,
//! duplication, splices between seeds, JSON digits), and three checks per input: no panic, under
//! 1 s, no single allocation above 1 MiB + 64 × the input (when the test binary installs
//! [`Counting`] as its global allocator; otherwise nothing is recorded and the bound holds
//! trivially). Used by `tensor/tests/fuzz.rs` and `models/tests/fuzz.rs`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The system allocator, recording the largest single request since the last reset. A fuzz
/// test binary installs it with
/// `#[global_allocator] static A: Counting = Counting;` so that [`run`] can bound allocations.
pub struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every call to `System`; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

/// xorshift64*: a small, seedable generator.
pub struct Rng(pub u64);
impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

const INTERESTING_U64: [u64; 12] = [
    0,
    1,
    2,
    7,
    8,
    255,
    1 << 16,
    1 << 31,
    1 << 32,
    (1 << 63) - 1,
    1 << 63,
    u64::MAX,
];

/// One random mutation of `seed` (a few stacked edits), possibly spliced with `other`.
pub fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0u8, 1, 0x7f, 0x80, 0xff, b'"', b'[', b'-', b'9'][rng.below(9)];
            }
            2 if len >= 8 => {
                // A boundary integer over 1, 2, 4 or 8 bytes (counts, lengths, offsets, dims).
                let w = [1usize, 2, 4, 8][rng.below(4)];
                let i = rng.below(len - w + 1);
                let x = INTERESTING_U64[rng.below(INTERESTING_U64.len())]
                    .wrapping_add(rng.below(3) as u64)
                    .wrapping_sub(1);
                v[i..i + w].copy_from_slice(&x.to_le_bytes()[..w]);
            }
            3 => v.truncate(rng.below(len + 1)),
            4 if len > 0 => {
                let (a, b) = (rng.below(len), rng.below(len));
                let (a, b) = (a.min(b), a.max(b));
                v.drain(a..b.min(a + 64));
            }
            5 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(32)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, chunk);
            }
            6 if !other.is_empty() => {
                // Splice: our head with the other seed's tail.
                let a = rng.below(v.len() + 1);
                let b = rng.below(other.len());
                v.truncate(a);
                v.extend_from_slice(&other[b..]);
            }
            7 if len > 0 => {
                // A digit in JSON (safetensors headers): change a number.
                if let Some(i) = (0..len)
                    .map(|k| (k + rng.below(len)) % len)
                    .find(|&k| v[k].is_ascii_digit())
                {
                    v[i] = b'0' + rng.below(10) as u8;
                }
            }
            _ => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next_u64() as u8);
            }
        }
    }
    v
}

/// The files ending in `.ext` under `dir`, sorted by name (the seeds of a target).
pub fn seeds(dir: &Path, ext: &str) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no .{ext} seeds in {}", dir.display());
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Executions per target: `SHEARS_FUZZ_EXECS`, default 20 000.
pub fn execs() -> usize {
    std::env::var("SHEARS_FUZZ_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Runs `target` (true: parsed, false: rejected) on [`execs`] mutated inputs; fails on a panic, a slow input or a large
/// allocation, and reports the count, the time and how many inputs parsed.
pub fn run(
    name: &str,
    seeds: &[Vec<u8>],
    target: impl Fn(&[u8]) -> bool + std::panic::RefUnwindSafe,
) {
    // One target at a time per process: the allocation record and the timing are global.
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    // The seeds themselves must parse: otherwise the mutations start from the error paths.
    for (i, s) in seeds.iter().enumerate() {
        assert!(target(s), "{name}: seed {i} does not parse");
    }
    let seed = std::env::var("SHEARS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_u64);
    let mut rng = Rng(seed | 1);
    let n = execs();
    let (mut oks, mut slowest) = (0usize, Duration::ZERO);
    let start = Instant::now();
    for i in 0..n {
        let a = rng.below(seeds.len());
        let b = rng.below(seeds.len());
        let input = mutate(&mut rng, &seeds[a], &seeds[b]);
        LARGEST.store(0, Ordering::Relaxed);
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(|| target(&input));
        let took = t0.elapsed();
        let largest = LARGEST.load(Ordering::Relaxed);
        // Only for a failure: formatting every input would cost more than most targets.
        let hex = || -> String { input.iter().map(|b| format!("{b:02x}")).collect() };
        match r {
            Ok(ok) => oks += ok as usize,
            Err(_) => panic!("{name}: execution {i} panicked on input {}", hex()),
        }
        assert!(
            took < Duration::from_secs(1),
            "{name}: execution {i} took {took:?} on {}",
            hex()
        );
        let bound = (1 << 20) + 64 * input.len();
        assert!(
            largest <= bound,
            "{name}: execution {i} allocated {largest} bytes at once (bound {bound}) on {}",
            hex()
        );
        slowest = slowest.max(took);
    }
    eprintln!(
        "{name}: {n} executions in {:.1?} ({oks} parsed, the rest rejected), slowest {slowest:?}, \
         seed {seed:#x}",
        start.elapsed()
    );
}
