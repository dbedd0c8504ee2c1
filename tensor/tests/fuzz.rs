//! Mutation fuzzing of the checkpoint parsers on stable Rust: the safetensors header (with its
//! offsets against the data) and the GGUF header (every metadata type, tensor infos, alignment,
//! quant block sizes). Each target starts from the committed seed files in `fuzz_corpus/` (made by
//! `fuzz_corpus/make_seeds.py`) and applies random mutations (bit flips, boundary bytes and
//! integers, truncation, deletion, duplication, splices between seeds), then checks that the
//! parser returns (`Ok` or `Err`) without a panic, within 1 s, and without any single allocation
//! larger than 1 MiB + 64 × the input (a counting global allocator records the largest request).
//!
//! CI runs `SHEARS_FUZZ_EXECS` executions per target (default 20 000, a few seconds); a long run:
//! `SHEARS_FUZZ_EXECS=10000000 cargo test --release -p shears-tensor --test fuzz -- --nocapture`.
//! `SHEARS_FUZZ_SEED` picks another random sequence. A crash prints the input's bytes (hex) to
//! add to the corpus as a regression seed.

use shears_tensor::io::{safetensors, Gguf};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The system allocator, recording the largest single request since the last reset.
struct Counting;
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

#[global_allocator]
static ALLOC: Counting = Counting;

/// xorshift64*: a small, seedable generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
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
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
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
                v.insert(i, rng.next() as u8);
            }
        }
    }
    v
}

fn seeds(ext: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no .{ext} seeds in {}", dir.display());
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn execs() -> usize {
    std::env::var("SHEARS_FUZZ_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Runs `target` on `execs()` mutated inputs; fails on a panic, a slow input or a large
/// allocation, and reports the count, the time and how many inputs parsed.
fn fuzz(name: &str, ext: &str, target: impl Fn(&[u8]) -> bool + std::panic::RefUnwindSafe) {
    // One target at a time per process: the allocation record and the timing are global.
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let seeds = seeds(ext);
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
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        match r {
            Ok(ok) => oks += ok as usize,
            Err(_) => panic!("{name}: execution {i} panicked on input {hex}"),
        }
        assert!(
            took < Duration::from_secs(1),
            "{name}: execution {i} took {took:?} on {hex}"
        );
        let bound = (1 << 20) + 64 * input.len();
        assert!(
            largest <= bound,
            "{name}: execution {i} allocated {largest} bytes at once (bound {bound}) on {hex}"
        );
        slowest = slowest.max(took);
    }
    eprintln!(
        "{name}: {n} executions in {:.1?} ({oks} parsed, the rest rejected), slowest {slowest:?}, \
         seed {seed:#x}",
        start.elapsed()
    );
}

#[test]
fn fuzz_safetensors_header() {
    fuzz("safetensors", "safetensors", |b| {
        safetensors::metadata_from_bytes("fuzz.safetensors", b).is_ok()
    });
}

#[test]
fn fuzz_gguf_header() {
    fuzz("gguf", "gguf", |b| {
        Gguf::header_from_bytes("fuzz.gguf", b).is_ok()
    });
}
