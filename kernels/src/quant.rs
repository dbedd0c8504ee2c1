//! Dequantization of ggml's block formats (as stored in GGUF files) to f32: `Q8_0`, `Q4_0` and
//! `Q4_1`, each a block of 32 weights with an f16 scale (and, for `Q4_1`, an f16 minimum),
//! little-endian, laid out as llama.cpp's `block_q8_0` / `block_q4_0` / `block_q4_1`
//! (ggml/src/ggml-common.h; the math is `dequantize_row_*` in ggml/src/ggml-quants.c):
//!
//! | format | bytes | block                      | value                                        |
//! |--------|-------|----------------------------|----------------------------------------------|
//! | Q8_0   | 34    | `d: f16, qs: [i8; 32]`     | `x[j] = d·qs[j]`                             |
//! | Q4_0   | 18    | `d: f16, qs: [u8; 16]`     | `x[j] = d·(lo(qs[j]) − 8)`, `x[j+16] = d·(hi(qs[j]) − 8)` |
//! | Q4_1   | 20    | `d: f16, m: f16, qs: [u8; 16]` | `x[j] = d·lo(qs[j]) + m`, `x[j+16] = d·hi(qs[j]) + m` |
//!
//! (`lo`/`hi` are the low and high nibbles; the low nibbles give the block's first 16 weights.)
//!
//! ```
//! use shears_kernels::quant::{dequantize_q4_1, Q4_1_BYTES, QK};
//! // One Q4_1 block: d = 0.5, m = -1.0, every byte 0x31 (low nibble 1, high nibble 3).
//! let mut block = Vec::new();
//! block.extend_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
//! block.extend_from_slice(&half::f16::from_f32(-1.0).to_bits().to_le_bytes());
//! block.extend_from_slice(&[0x31; 16]);
//! assert_eq!(block.len(), Q4_1_BYTES);
//! let mut x = [0f32; QK];
//! dequantize_q4_1(&block, &mut x);
//! assert_eq!(x[0], -0.5); // 0.5·1 − 1
//! assert_eq!(x[16], 0.5); // 0.5·3 − 1
//! ```
//!
//! Each kernel runs at [`crate::cpu::level`] (AVX-512 or AVX2 where the CPU has them), splits
//! large inputs over rayon's pool by whole blocks, and equals its `_ref` twin bit for bit: the
//! fast paths multiply then add (no FMA), as the scalar code and gguf-py's numpy code do.

use crate::cpu::{self, Level};
use half::f16;
use rayon::prelude::*;

/// Weights per block in every format here.
pub const QK: usize = 32;
/// Bytes per `Q8_0` block: f16 scale + 32 × i8.
pub const Q8_0_BYTES: usize = 2 + QK;
/// Bytes per `Q4_0` block: f16 scale + 16 bytes of nibbles.
pub const Q4_0_BYTES: usize = 2 + QK / 2;
/// Bytes per `Q4_1` block: f16 scale + f16 minimum + 16 bytes of nibbles.
pub const Q4_1_BYTES: usize = 4 + QK / 2;

/// Inputs of more blocks than this go parallel (≈ 130K weights, tens of µs on one core).
const PAR_BLOCKS: usize = 1 << 12;
/// Fewest blocks per parallel task.
const TASK_BLOCKS: usize = 1 << 11;

/// The three formats, for the shared driver.
#[derive(Clone, Copy)]
enum Format {
    Q8_0,
    Q4_0,
    Q4_1,
}

impl Format {
    fn block_bytes(self) -> usize {
        match self {
            Format::Q8_0 => Q8_0_BYTES,
            Format::Q4_0 => Q4_0_BYTES,
            Format::Q4_1 => Q4_1_BYTES,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Format::Q8_0 => "dequantize_q8_0",
            Format::Q4_0 => "dequantize_q4_0",
            Format::Q4_1 => "dequantize_q4_1",
        }
    }
}

/// Checks the lengths: `src` holds whole blocks and `dst` has 32 weights per block.
fn check(f: Format, src: &[u8], dst: &[f32]) -> usize {
    let bb = f.block_bytes();
    assert!(
        src.len().is_multiple_of(bb),
        "{}: src length {} is not a multiple of the {bb}-byte block",
        f.name(),
        src.len()
    );
    let blocks = src.len() / bb;
    assert_eq!(
        dst.len(),
        blocks * QK,
        "{}: dst length must be 32 per block",
        f.name()
    );
    blocks
}

/// The f32 value of the little-endian f16 at `b[0..2]`.
#[inline(always)]
fn half_at(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

// ---------------------------------------------------------------- references

/// Plain reference for [`dequantize_q8_0`]: `x = d·q`, block by block.
pub fn dequantize_q8_0_ref(src: &[u8], dst: &mut [f32]) {
    check(Format::Q8_0, src, dst);
    for (b, y) in src.chunks_exact(Q8_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = half_at(b);
        for (y, &q) in y.iter_mut().zip(&b[2..]) {
            *y = q as i8 as f32 * d;
        }
    }
}

/// Plain reference for [`dequantize_q4_0`]: `x = d·(nibble − 8)`, low nibbles first.
pub fn dequantize_q4_0_ref(src: &[u8], dst: &mut [f32]) {
    check(Format::Q4_0, src, dst);
    for (b, y) in src.chunks_exact(Q4_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = half_at(b);
        for (j, &q) in b[2..].iter().enumerate() {
            y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            y[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Plain reference for [`dequantize_q4_1`]: `x = d·nibble + m`, low nibbles first.
pub fn dequantize_q4_1_ref(src: &[u8], dst: &mut [f32]) {
    check(Format::Q4_1, src, dst);
    for (b, y) in src.chunks_exact(Q4_1_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (half_at(b), half_at(&b[2..]));
        for (j, &q) in b[4..].iter().enumerate() {
            y[j] = (q & 0x0F) as f32 * d + m;
            y[j + QK / 2] = (q >> 4) as f32 * d + m;
        }
    }
}

// ---------------------------------------------------------------- fast paths

/// `Q8_0` blocks → f32. src: `[blocks × 34]` bytes, dst: `[blocks × 32]`; at the detected level.
pub fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    dequantize_q8_0_with(cpu::level(), src, dst)
}

/// [`dequantize_q8_0`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn dequantize_q8_0_with(level: Level, src: &[u8], dst: &mut [f32]) {
    run(Format::Q8_0, level, src, dst)
}

/// `Q4_0` blocks → f32. src: `[blocks × 18]` bytes, dst: `[blocks × 32]`; at the detected level.
pub fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    dequantize_q4_0_with(cpu::level(), src, dst)
}

/// [`dequantize_q4_0`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn dequantize_q4_0_with(level: Level, src: &[u8], dst: &mut [f32]) {
    run(Format::Q4_0, level, src, dst)
}

/// `Q4_1` blocks → f32. src: `[blocks × 20]` bytes, dst: `[blocks × 32]`; at the detected level.
pub fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    dequantize_q4_1_with(cpu::level(), src, dst)
}

/// [`dequantize_q4_1`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn dequantize_q4_1_with(level: Level, src: &[u8], dst: &mut [f32]) {
    run(Format::Q4_1, level, src, dst)
}

/// Checks once, then dequantizes in parallel chunks of whole blocks when the input is large.
fn run(f: Format, level: Level, src: &[u8], dst: &mut [f32]) {
    let blocks = check(f, src, dst);
    let level = if level.is_supported() {
        level
    } else {
        cpu::detect()
    };
    let bb = f.block_bytes();
    let threads = rayon::current_num_threads();
    if blocks <= PAR_BLOCKS || threads == 1 {
        return blocks_at(f, level, src, dst);
    }
    // About four tasks per thread, for balance when threads are shared.
    let per = (blocks / (4 * threads)).max(TASK_BLOCKS);
    src.par_chunks(per * bb)
        .zip(dst.par_chunks_mut(per * QK))
        .for_each(|(s, d)| blocks_at(f, level, s, d));
}

/// One chunk of whole blocks (lengths already checked) at a supported `level`.
fn blocks_at(f: Format, level: Level, src: &[u8], dst: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Avx2 => {
            let n = src.len() / f.block_bytes();
            // SAFETY: `level` is supported by this CPU (checked in `run`), and `src`/`dst` hold
            // exactly `n` blocks / `n × 32` weights (checked by `check` and kept by the chunking,
            // whose chunk sizes are whole blocks on both sides).
            unsafe {
                match (level, f) {
                    (Level::Avx512, Format::Q8_0) => {
                        x86::q8_0_avx512(src.as_ptr(), dst.as_mut_ptr(), n)
                    }
                    (Level::Avx512, Format::Q4_0) => {
                        x86::q4_avx512::<false>(src.as_ptr(), dst.as_mut_ptr(), n)
                    }
                    (Level::Avx512, Format::Q4_1) => {
                        x86::q4_avx512::<true>(src.as_ptr(), dst.as_mut_ptr(), n)
                    }
                    (_, Format::Q8_0) => x86::q8_0_avx2(src.as_ptr(), dst.as_mut_ptr(), n),
                    (_, Format::Q4_0) => x86::q4_avx2::<false>(src.as_ptr(), dst.as_mut_ptr(), n),
                    (_, Format::Q4_1) => x86::q4_avx2::<true>(src.as_ptr(), dst.as_mut_ptr(), n),
                }
            }
        }
        // The scalar loops vectorise well enough for the baseline target.
        _ => match f {
            Format::Q8_0 => dequantize_q8_0_ref(src, dst),
            Format::Q4_0 => dequantize_q4_0_ref(src, dst),
            Format::Q4_1 => dequantize_q4_1_ref(src, dst),
        },
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Q4_0_BYTES, Q4_1_BYTES, Q8_0_BYTES, QK};
    use std::arch::x86_64::*;

    /// The f32 value of the little-endian f16 at `p` (F16C).
    #[inline(always)]
    unsafe fn half(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// # Safety
    /// AVX-512 F/BW/VL/DQ must be available; `src` readable for `n` Q8_0 blocks, `dst` writable for
    /// `n × 32` f32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub(super) unsafe fn q8_0_avx512(src: *const u8, dst: *mut f32, n: usize) {
        for i in 0..n {
            let b = src.add(i * Q8_0_BYTES);
            let y = dst.add(i * QK);
            let d = _mm512_set1_ps(half(b));
            let q = _mm256_loadu_si256(b.add(2).cast());
            let lo = _mm512_cvtepi8_epi32(_mm256_castsi256_si128(q));
            let hi = _mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(q));
            _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d));
            _mm512_storeu_ps(y.add(16), _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d));
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available; `src` readable for `n` Q8_0 blocks, `dst` writable
    /// for `n × 32` f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q8_0_avx2(src: *const u8, dst: *mut f32, n: usize) {
        for i in 0..n {
            let b = src.add(i * Q8_0_BYTES);
            let y = dst.add(i * QK);
            let d = _mm256_set1_ps(half(b));
            for k in 0..4 {
                let q = _mm_loadl_epi64(b.add(2 + 8 * k).cast());
                let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                _mm256_storeu_ps(y.add(8 * k), _mm256_mul_ps(v, d));
            }
        }
    }

    /// Q4_1 when `MIN` (`d·q + m`), else Q4_0 (`d·(q − 8)`).
    ///
    /// # Safety
    /// AVX-512 F/BW/VL/DQ must be available; `src` readable for `n` blocks of the format, `dst`
    /// writable for `n × 32` f32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub(super) unsafe fn q4_avx512<const MIN: bool>(src: *const u8, dst: *mut f32, n: usize) {
        let (bytes, head) = if MIN {
            (Q4_1_BYTES, 4)
        } else {
            (Q4_0_BYTES, 2)
        };
        let mask = _mm_set1_epi8(0x0F);
        let eight = _mm512_set1_epi32(8);
        for i in 0..n {
            let b = src.add(i * bytes);
            let y = dst.add(i * QK);
            let d = _mm512_set1_ps(half(b));
            let q = _mm_loadu_si128(b.add(head).cast());
            let lo = _mm512_cvtepu8_epi32(_mm_and_si128(q, mask));
            let hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16::<4>(q), mask));
            let m = _mm512_set1_ps(if MIN { half(b.add(2)) } else { 0.0 });
            for (k, v) in [lo, hi].into_iter().enumerate() {
                let out = if MIN {
                    _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v), d), m)
                } else {
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(v, eight)), d)
                };
                _mm512_storeu_ps(y.add(16 * k), out);
            }
        }
    }

    /// Q4_1 when `MIN` (`d·q + m`), else Q4_0 (`d·(q − 8)`).
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `src` readable for `n` blocks of the format, `dst`
    /// writable for `n × 32` f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4_avx2<const MIN: bool>(src: *const u8, dst: *mut f32, n: usize) {
        let (bytes, head) = if MIN {
            (Q4_1_BYTES, 4)
        } else {
            (Q4_0_BYTES, 2)
        };
        let mask = _mm_set1_epi8(0x0F);
        let eight = _mm256_set1_epi32(8);
        for i in 0..n {
            let b = src.add(i * bytes);
            let y = dst.add(i * QK);
            let d = _mm256_set1_ps(half(b));
            let m = if MIN { half(b.add(2)) } else { 0.0 };
            let m = _mm256_set1_ps(m);
            let q = _mm_loadu_si128(b.add(head).cast());
            let lo = _mm_and_si128(q, mask);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
            // Bytes 0..8 and 8..16 of the low nibbles, then of the high ones: weights 0..32.
            let parts = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
            for (k, p) in parts.into_iter().enumerate() {
                let v = _mm256_cvtepu8_epi32(p);
                let out = if MIN {
                    _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(v), d), m)
                } else {
                    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(v, eight)), d)
                };
                _mm256_storeu_ps(y.add(8 * k), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Kernel = fn(Level, &[u8], &mut [f32]);
    type Reference = fn(&[u8], &mut [f32]);

    /// The three formats: block bytes, scale halves at the block's start, fast and reference.
    fn kernels() -> [(&'static str, usize, usize, Kernel, Reference); 3] {
        [
            (
                "q8_0",
                Q8_0_BYTES,
                1,
                dequantize_q8_0_with,
                dequantize_q8_0_ref,
            ),
            (
                "q4_0",
                Q4_0_BYTES,
                1,
                dequantize_q4_0_with,
                dequantize_q4_0_ref,
            ),
            (
                "q4_1",
                Q4_1_BYTES,
                2,
                dequantize_q4_1_with,
                dequantize_q4_1_ref,
            ),
        ]
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// `blocks` blocks of `bytes` random bytes whose first `halves` f16 are random finite values.
    fn blocks(n: usize, bytes: usize, halves: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut v: Vec<u8> = (0..n * bytes).map(|_| next() as u8).collect();
        for b in v.chunks_exact_mut(bytes) {
            for h in 0..halves {
                // Exponent 0x1F is inf/NaN; redraw it as a finite exponent.
                let mut bits = next() as u16;
                if bits & 0x7C00 == 0x7C00 {
                    bits &= !0x4000;
                }
                b[2 * h..2 * h + 2].copy_from_slice(&bits.to_le_bytes());
            }
        }
        v
    }

    /// Every level and thread count gives the reference's bits.
    fn check_all(n: usize, seed: u64) {
        for (name, bytes, halves, fast, reference) in kernels() {
            let src = blocks(n, bytes, halves, seed);
            let mut want = vec![0f32; n * QK];
            reference(&src, &mut want);
            for level in cpu::available() {
                for t in [1, 2] {
                    let mut got = vec![f32::NAN; n * QK];
                    pool(t).install(|| fast(level, &src, &mut got));
                    for i in 0..got.len() {
                        assert_eq!(
                            got[i].to_bits(),
                            want[i].to_bits(),
                            "{name} {level:?} t{t} blocks {n} weight {i}: {} vs {}",
                            got[i],
                            want[i]
                        );
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn fast_equals_ref(
            n in prop::sample::select(vec![0usize, 1, 2, 15, 16, 17, 31, 97, 1000]),
            seed in any::<u64>(),
        ) {
            check_all(n, seed);
        }
    }

    #[test]
    fn parallel_split_equals_ref() {
        // Past PAR_BLOCKS, with a count that leaves a ragged last task.
        check_all(3 * PAR_BLOCKS + 17, 7);
    }

    #[test]
    fn hand_computed_blocks() {
        // Q8_0: d = 2, q = -128, 127, 0, ...
        let mut b = half::f16::from_f32(2.0).to_bits().to_le_bytes().to_vec();
        b.extend((0..32).map(|j| match j {
            0 => 0x80u8,
            1 => 0x7F,
            _ => j as u8,
        }));
        let mut y = [0f32; 32];
        dequantize_q8_0(&b, &mut y);
        assert_eq!(y[..3], [-256.0, 254.0, 4.0]);
        // Q4_0: d = -0.25; byte 0x0F → low 15 − 8 = 7, high 0 − 8 = −8.
        let mut b = half::f16::from_f32(-0.25).to_bits().to_le_bytes().to_vec();
        b.extend([0x0Fu8; 16]);
        dequantize_q4_0(&b, &mut y);
        assert!(y[..16].iter().all(|&v| v == -1.75));
        assert!(y[16..].iter().all(|&v| v == 2.0));
    }

    #[test]
    #[should_panic(expected = "not a multiple")]
    fn partial_block_is_refused() {
        dequantize_q4_1(&[0u8; 21], &mut [0f32; 32]);
    }
}
