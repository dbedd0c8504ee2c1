//! f32 ↔ bf16 and f32 ↔ f16 (IEEE 754-2008 binary16) conversion of whole buffers, bit-exact with
//! the `half` crate: round to nearest, ties to even; NaN stays NaN (quiet, payload truncated);
//! overflow goes to ±inf; f16 subnormals are produced and read exactly. Widening is exact except
//! that a signalling NaN comes back quiet, as `half` and the hardware conversions do.
//!
//! AVX-512 and AVX2 round bf16 with integer ops (`x + 0x7FFF + lsb`, then the high half), so no
//! AVX512-BF16 is needed, and use the F16C / AVX-512 `vcvtps2ph` / `vcvtph2ps` for f16.

use super::simd::{par_rows, simd_entry, usable, Portable, PAR_STREAM};
use crate::cpu::{self, Level};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// `dst[i] = bf16(src[i])`, nearest-even. src, dst: `[n]`; at the detected SIMD level.
pub fn f32_to_bf16(src: &[f32], dst: &mut [bf16]) {
    f32_to_bf16_with(cpu::level(), src, dst)
}

/// [`f32_to_bf16`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn f32_to_bf16_with(level: Level, src: &[f32], dst: &mut [bf16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_bf16: dst length");
    let level = usable(level);
    par_rows(dst, 1, PAR_STREAM, |i, d| {
        // SAFETY: `level` is supported; `src[i..]` has at least `d.len()` elements; bf16 is a
        // transparent u16.
        unsafe { to_bf16_at(level, src[i..].as_ptr(), d.as_mut_ptr().cast(), d.len()) }
    });
}

/// Plain reference for [`f32_to_bf16`]: `half::bf16::from_f32` per element.
pub fn f32_to_bf16_ref(src: &[f32], dst: &mut [bf16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_bf16_ref: dst length");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16::from_f32(s);
    }
}

/// `dst[i] = f32(src[i])` (exact). src, dst: `[n]`; at the detected SIMD level.
pub fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
    bf16_to_f32_with(cpu::level(), src, dst)
}

/// [`bf16_to_f32`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn bf16_to_f32_with(level: Level, src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "bf16_to_f32: dst length");
    let level = usable(level);
    par_rows(dst, 1, PAR_STREAM, |i, d| {
        // SAFETY: `level` is supported; `src[i..]` has at least `d.len()` elements; bf16 is a
        // transparent u16.
        unsafe { from_bf16_at(level, src[i..].as_ptr().cast(), d.as_mut_ptr(), d.len()) }
    });
}

/// Plain reference for [`bf16_to_f32`].
pub fn bf16_to_f32_ref(src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "bf16_to_f32_ref: dst length");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// `dst[i] = f16(src[i])`, nearest-even. src, dst: `[n]`; at the detected SIMD level.
pub fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    f32_to_f16_with(cpu::level(), src, dst)
}

/// [`f32_to_f16`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn f32_to_f16_with(level: Level, src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_f16: dst length");
    let level = usable(level);
    par_rows(dst, 1, PAR_STREAM, |i, d| {
        // SAFETY: `level` is supported; `src[i..]` has at least `d.len()` elements; f16 is a
        // transparent u16.
        unsafe { to_f16_at(level, src[i..].as_ptr(), d.as_mut_ptr().cast(), d.len()) }
    });
}

/// Plain reference for [`f32_to_f16`]: `half::f16::from_f32` per element.
pub fn f32_to_f16_ref(src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_f16_ref: dst length");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(s);
    }
}

/// `dst[i] = f32(src[i])` (exact). src, dst: `[n]`; at the detected SIMD level.
pub fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    f16_to_f32_with(cpu::level(), src, dst)
}

/// [`f16_to_f32`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn f16_to_f32_with(level: Level, src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_to_f32: dst length");
    let level = usable(level);
    par_rows(dst, 1, PAR_STREAM, |i, d| {
        // SAFETY: `level` is supported; `src[i..]` has at least `d.len()` elements; f16 is a
        // transparent u16.
        unsafe { from_f16_at(level, src[i..].as_ptr().cast(), d.as_mut_ptr(), d.len()) }
    });
}

/// Plain reference for [`f16_to_f32`].
pub fn f16_to_f32_ref(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_to_f32_ref: dst length");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// Conversions of up to `LANES` elements; `valid ≤ LANES` of them are read and written.
trait Convert {
    const LANES: usize;
    unsafe fn to_bf16(src: *const f32, dst: *mut u16, valid: usize);
    unsafe fn from_bf16(src: *const u16, dst: *mut f32, valid: usize);
    unsafe fn to_f16(src: *const f32, dst: *mut u16, valid: usize);
    unsafe fn from_f16(src: *const u16, dst: *mut f32, valid: usize);
}

macro_rules! body {
    ($name:ident, $op:ident, $s:ty, $d:ty) => {
        #[inline(always)]
        unsafe fn $name<C: Convert>(src: *const $s, dst: *mut $d, len: usize) {
            let mut i = 0;
            while i < len {
                let v = (len - i).min(C::LANES);
                C::$op(src.add(i), dst.add(i), v);
                i += v;
            }
        }
    };
}
body!(to_bf16_body, to_bf16, f32, u16);
body!(from_bf16_body, from_bf16, u16, f32);
body!(to_f16_body, to_f16, f32, u16);
body!(from_f16_body, from_f16, u16, f32);
simd_entry!(fn to_bf16_at => to_bf16_body(src: *const f32, dst: *mut u16, len: usize));
simd_entry!(fn from_bf16_at => from_bf16_body(src: *const u16, dst: *mut f32, len: usize));
simd_entry!(fn to_f16_at => to_f16_body(src: *const f32, dst: *mut u16, len: usize));
simd_entry!(fn from_f16_at => from_f16_body(src: *const u16, dst: *mut f32, len: usize));

/// bf16 bits of f32 bits `x`, exactly as `half::bf16::from_f32`.
#[inline(always)]
fn bf16_bits(x: u32) -> u16 {
    // Adding 0x7FFF plus the kept lsb carries into bit 16 exactly when nearest-even rounds up.
    let rounded = x.wrapping_add(0x7FFF + ((x >> 16) & 1)) >> 16;
    // NaN: keep the high payload bits and set the quiet bit (a select, so the loop vectorises).
    let nan = ((x >> 16) | 0x40) as u16;
    if x & 0x7FFF_FFFF > 0x7F80_0000 {
        nan
    } else {
        rounded as u16
    }
}

/// f32 bits of bf16 bits `h`, exactly as `half::bf16::to_f32`: a signalling NaN is quietened.
#[inline(always)]
fn widen_bf16(h: u32) -> u32 {
    let x = h << 16;
    if x & 0x7FFF_FFFF > 0x7F80_0000 {
        x | 0x0040_0000
    } else {
        x
    }
}

/// Long branch-free slice loops the compiler vectorises for the target's baseline; f16 goes through
/// `half`'s slice conversion, which checks once per call for F16C (x86) or FP16 (aarch64).
impl Convert for Portable {
    const LANES: usize = 1024;
    #[inline(always)]
    unsafe fn to_bf16(src: *const f32, dst: *mut u16, valid: usize) {
        let (s, d) = (slice(src, valid), slice_mut(dst, valid));
        for (d, s) in d.iter_mut().zip(s) {
            *d = bf16_bits(s.to_bits());
        }
    }
    #[inline(always)]
    unsafe fn from_bf16(src: *const u16, dst: *mut f32, valid: usize) {
        let (s, d) = (slice(src, valid), slice_mut(dst, valid));
        for (d, &s) in d.iter_mut().zip(s) {
            *d = f32::from_bits(widen_bf16(s as u32));
        }
    }
    #[inline(always)]
    unsafe fn to_f16(src: *const f32, dst: *mut u16, valid: usize) {
        slice_mut(dst.cast::<f16>(), valid).convert_from_f32_slice(slice(src, valid))
    }
    #[inline(always)]
    unsafe fn from_f16(src: *const u16, dst: *mut f32, valid: usize) {
        slice(src.cast::<f16>(), valid).convert_to_f32_slice(slice_mut(dst, valid))
    }
}

/// # Safety
/// `p` valid for reading `n` elements, not written while the slice lives.
unsafe fn slice<'a, T>(p: *const T, n: usize) -> &'a [T] {
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(p, n) }
}

/// # Safety
/// `p` valid for writing `n` elements, not otherwise accessed while the slice lives.
unsafe fn slice_mut<'a, T>(p: *mut T, n: usize) -> &'a mut [T] {
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts_mut(p, n) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::simd::x86::{mask16, mask8, Avx2, Avx512};
    use super::Convert;
    use std::arch::x86_64::*;

    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

    impl Convert for Avx512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn to_bf16(src: *const f32, dst: *mut u16, valid: usize) {
            let m = mask16(valid);
            let x = _mm512_castps_si512(_mm512_maskz_loadu_ps(m, src));
            let hi = _mm512_srli_epi32::<16>(x);
            let lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
            let r = _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7FFF)), lsb);
            let r = _mm512_srli_epi32::<16>(r);
            let abs = _mm512_and_si512(x, _mm512_set1_epi32(0x7FFF_FFFF));
            let nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7F80_0000));
            let q = _mm512_or_si512(hi, _mm512_set1_epi32(0x40));
            let h = _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, r, q));
            _mm256_mask_storeu_epi16(dst.cast(), m, h)
        }
        #[inline(always)]
        unsafe fn from_bf16(src: *const u16, dst: *mut f32, valid: usize) {
            let m = mask16(valid);
            let h = _mm256_maskz_loadu_epi16(m, src.cast());
            let x = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h));
            let abs = _mm512_and_si512(x, _mm512_set1_epi32(0x7FFF_FFFF));
            let nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7F80_0000));
            let x = _mm512_mask_or_epi32(x, nan, x, _mm512_set1_epi32(0x0040_0000));
            _mm512_mask_storeu_ps(dst, m, _mm512_castsi512_ps(x))
        }
        #[inline(always)]
        unsafe fn to_f16(src: *const f32, dst: *mut u16, valid: usize) {
            let m = mask16(valid);
            let h = _mm512_cvtps_ph::<NEAREST>(_mm512_maskz_loadu_ps(m, src));
            _mm256_mask_storeu_epi16(dst.cast(), m, h)
        }
        #[inline(always)]
        unsafe fn from_f16(src: *const u16, dst: *mut f32, valid: usize) {
            let m = mask16(valid);
            let h = _mm256_maskz_loadu_epi16(m, src.cast());
            _mm512_mask_storeu_ps(dst, m, _mm512_cvtph_ps(h))
        }
    }

    /// Eight f32 from `src` (zeros past `valid`).
    #[inline(always)]
    unsafe fn load8(src: *const f32, valid: usize) -> __m256 {
        if valid == 8 {
            _mm256_loadu_ps(src)
        } else {
            let mut a = [0f32; 8];
            std::ptr::copy_nonoverlapping(src, a.as_mut_ptr(), valid);
            _mm256_loadu_ps(a.as_ptr())
        }
    }

    /// Eight u16 from `src` (zeros past `valid`).
    #[inline(always)]
    unsafe fn load8_u16(src: *const u16, valid: usize) -> __m128i {
        if valid == 8 {
            _mm_loadu_si128(src.cast())
        } else {
            let mut a = [0u16; 8];
            std::ptr::copy_nonoverlapping(src, a.as_mut_ptr(), valid);
            _mm_loadu_si128(a.as_ptr().cast())
        }
    }

    /// The first `valid` of eight u16 to `dst`.
    #[inline(always)]
    unsafe fn store8_u16(dst: *mut u16, h: __m128i, valid: usize) {
        if valid == 8 {
            _mm_storeu_si128(dst.cast(), h)
        } else {
            let mut a = [0u16; 8];
            _mm_storeu_si128(a.as_mut_ptr().cast(), h);
            std::ptr::copy_nonoverlapping(a.as_ptr(), dst, valid);
        }
    }

    impl Convert for Avx2 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn to_bf16(src: *const f32, dst: *mut u16, valid: usize) {
            let x = _mm256_castps_si256(load8(src, valid));
            let hi = _mm256_srli_epi32::<16>(x);
            let lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
            let r = _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7FFF)), lsb);
            let r = _mm256_srli_epi32::<16>(r);
            let abs = _mm256_and_si256(x, _mm256_set1_epi32(0x7FFF_FFFF));
            let nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F80_0000));
            let q = _mm256_or_si256(hi, _mm256_set1_epi32(0x40));
            let r = _mm256_blendv_epi8(r, q, nan);
            // Values fit 16 bits, so the saturating pack is exact; it works per 128-bit lane, and
            // the permute brings the two halves' results together.
            let p = _mm256_permute4x64_epi64::<0b10_00>(_mm256_packus_epi32(r, r));
            store8_u16(dst, _mm256_castsi256_si128(p), valid)
        }
        #[inline(always)]
        unsafe fn from_bf16(src: *const u16, dst: *mut f32, valid: usize) {
            let x = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(load8_u16(src, valid)));
            let abs = _mm256_and_si256(x, _mm256_set1_epi32(0x7FFF_FFFF));
            let nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F80_0000));
            let x = _mm256_or_si256(x, _mm256_and_si256(nan, _mm256_set1_epi32(0x0040_0000)));
            _mm256_maskstore_ps(dst, mask8(valid), _mm256_castsi256_ps(x))
        }
        #[inline(always)]
        unsafe fn to_f16(src: *const f32, dst: *mut u16, valid: usize) {
            store8_u16(
                dst,
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(load8(src, valid)),
                valid,
            )
        }
        #[inline(always)]
        unsafe fn from_f16(src: *const u16, dst: *mut f32, valid: usize) {
            let x = _mm256_cvtph_ps(load8_u16(src, valid));
            _mm256_maskstore_ps(dst, mask8(valid), x)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::pool;
    use proptest::prelude::*;

    /// Converts `bits` (as f32) at every level and thread count, comparing bits with `half`.
    fn check_f32_to_half(bits: &[u32]) {
        let src: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let mut want_b = vec![bf16::ZERO; src.len()];
        let mut want_h = vec![f16::ZERO; src.len()];
        f32_to_bf16_ref(&src, &mut want_b);
        f32_to_f16_ref(&src, &mut want_h);
        for level in cpu::available() {
            for t in [1, 2] {
                let mut b = vec![bf16::ZERO; src.len()];
                let mut h = vec![f16::ZERO; src.len()];
                pool(t).install(|| f32_to_bf16_with(level, &src, &mut b));
                pool(t).install(|| f32_to_f16_with(level, &src, &mut h));
                for i in 0..src.len() {
                    let x = bits[i];
                    assert_eq!(
                        b[i].to_bits(),
                        want_b[i].to_bits(),
                        "{level:?} t{t} bf16 of {x:#010x}"
                    );
                    assert_eq!(
                        h[i].to_bits(),
                        want_h[i].to_bits(),
                        "{level:?} t{t} f16 of {x:#010x}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_half_widens_exactly() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let b: Vec<bf16> = all.iter().map(|&v| bf16::from_bits(v)).collect();
        let h: Vec<f16> = all.iter().map(|&v| f16::from_bits(v)).collect();
        let (mut wb, mut wh) = (vec![0f32; all.len()], vec![0f32; all.len()]);
        bf16_to_f32_ref(&b, &mut wb);
        f16_to_f32_ref(&h, &mut wh);
        for level in cpu::available() {
            for t in [1, 2] {
                let mut got = vec![0f32; all.len()];
                pool(t).install(|| bf16_to_f32_with(level, &b, &mut got));
                for i in 0..all.len() {
                    assert_eq!(got[i].to_bits(), wb[i].to_bits(), "{level:?} bf16 {i:#06x}");
                }
                pool(t).install(|| f16_to_f32_with(level, &h, &mut got));
                for i in 0..all.len() {
                    assert_eq!(got[i].to_bits(), wh[i].to_bits(), "{level:?} f16 {i:#06x}");
                }
            }
        }
    }

    #[test]
    fn special_values_narrow_like_half() {
        let mut bits: Vec<u32> = [
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            f32::EPSILON,
            f32::INFINITY,
            f32::NEG_INFINITY,
            65504.0,
            65519.99,
            65520.0,
            -65520.0,
            6.1e-5,
            5.96e-8,
            2.98e-8,
            2.99e-8,
            1e-10,
            3.0e38,
            3.4e38,
        ]
        .iter()
        .map(|v| v.to_bits())
        .collect();
        // NaNs: quiet, signalling, payloads in the kept and the dropped bits, both signs.
        bits.extend([
            0x7FC0_0000,
            0x7F80_0001,
            0x7F80_8000,
            0x7FBF_FFFF,
            0xFFC0_0001,
            0xFF81_2345,
        ]);
        // Smallest and largest subnormals, and bf16/f16 overflow edges.
        bits.extend([
            1,
            0x007F_FFFF,
            0x7F7F_8000,
            0x7F7F_7FFF,
            0x477F_F000,
            0x477F_EFFF,
        ]);
        check_f32_to_half(&bits);
    }

    #[test]
    fn every_rounding_boundary_narrows_like_half() {
        // Every high half (all bf16 values) with the low halves that decide bf16 rounding…
        let mut bits = Vec::new();
        for hi in 0..=0xFFFFu32 {
            for lo in [
                0u32, 1, 0x0FFF, 0x1000, 0x1001, 0x7FFF, 0x8000, 0x8001, 0xFFFF,
            ] {
                bits.push(hi << 16 | lo);
            }
        }
        // …and every f16 value, its neighbours and the ties between it and the next one.
        for h in 0..0x7C00u16 {
            let v = f16::from_bits(h).to_f32();
            let tie = ((v as f64 + f16::from_bits(h + 1).to_f32() as f64) / 2.0) as f32;
            for x in [v, tie] {
                for d in [-1i32, 0, 1] {
                    let b = (x.to_bits() as i32 + d) as u32;
                    bits.extend([b, b | 0x8000_0000]);
                }
            }
        }
        check_f32_to_half(&bits);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_bits_narrow_like_half(bits in prop::collection::vec(any::<u32>(), 0..300)) {
            check_f32_to_half(&bits);
        }
    }

    #[test]
    fn large_random_sweep() {
        // 4096 × 70 values over every exponent (and NaN/inf), past PAR_STREAM so two threads
        // split it.
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let bits: Vec<u32> = (0..4096 * 70)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 32) as u32
            })
            .collect();
        check_f32_to_half(&bits);
    }
}
