//! The vector operations the generic sparse kernels use, per SIMD level: `wide::f32x8`
//! (portable), AVX2 and AVX-512.

use super::pattern::load_bits;
use crate::gemv::{WeightElem, WeightKind};
use half::f16;
use wide::f32x8;

/// One SIMD level's f32 vector.
pub(crate) trait Simd {
    type V: Copy;
    const LANES: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(v: f32) -> Self::V;
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn hsum(v: Self::V) -> f32;
    /// Hints that the cache line at `p` will be read soon (may be a no-op; never faults).
    #[inline(always)]
    unsafe fn prefetch(_p: *const u8) {}
    /// Writes the columns of the set bits of `row` in `c0..c1` (`c0` a multiple of 8) to `cols`
    /// in order, at most `cols.len()` of them, and returns how many.
    #[inline(always)]
    unsafe fn decode_bits(row: &[u8], c0: usize, c1: usize, cols: &mut [u32]) -> usize {
        let mut cnt = 0;
        let mut c = c0;
        while c < c1 {
            let mut word = load_bits(row, c, (c1 - c).min(64));
            while word != 0 && cnt < cols.len() {
                cols[cnt] = (c + word.trailing_zeros() as usize) as u32;
                word &= word - 1;
                cnt += 1;
            }
            c += 64;
        }
        cnt
    }
    /// Widens one f16 (its bits) to f32.
    #[inline(always)]
    unsafe fn f16_to_f32(bits: u16) -> f32 {
        f16::from_bits(bits).to_f32()
    }
}

/// Reads the value at `p` as f32.
#[inline(always)]
pub(crate) unsafe fn val<S: Simd, W: WeightElem>(p: *const W) -> f32 {
    match W::KIND {
        WeightKind::F32 => *p.cast::<f32>(),
        WeightKind::BF16 => f32::from_bits((*p.cast::<u16>() as u32) << 16),
        WeightKind::F16 => S::f16_to_f32(*p.cast::<u16>()),
    }
}

pub(crate) struct Portable;
impl Simd for Portable {
    type V = f32x8;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> f32x8 {
        f32x8::ZERO
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> f32x8 {
        f32x8::splat(v)
    }
    #[inline(always)]
    unsafe fn fma(a: f32x8, b: f32x8, c: f32x8) -> f32x8 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    unsafe fn add(a: f32x8, b: f32x8) -> f32x8 {
        a + b
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32x8 {
        p.cast::<f32x8>().read_unaligned()
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32x8) {
        p.cast::<f32x8>().write_unaligned(v)
    }
    #[inline(always)]
    unsafe fn hsum(v: f32x8) -> f32 {
        v.reduce_add()
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{load_bits, Simd};
    use std::arch::x86_64::*;

    pub(crate) struct Avx512;
    impl Simd for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m512 {
            _mm512_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m512) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        /// Branch-free: per 16 columns, `vpcompressd` packs the set lanes of `c + 0..16` and
        /// one full store writes them (the tzcnt loop mispredicted its exit once per word).
        #[inline(always)]
        unsafe fn decode_bits(row: &[u8], c0: usize, c1: usize, cols: &mut [u32]) -> usize {
            let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            let mut cnt = 0;
            let mut c = c0;
            while c < c1 {
                let b = load_bits(row, c, (c1 - c).min(16)) as u16;
                if cnt + 16 > cols.len() {
                    break;
                }
                let v = _mm512_maskz_compress_epi32(
                    b,
                    _mm512_add_epi32(iota, _mm512_set1_epi32(c as i32)),
                );
                // SAFETY (of the store): cnt + 16 ≤ cols.len(), checked above.
                _mm512_storeu_si512(cols.as_mut_ptr().add(cnt).cast(), v);
                cnt += b.count_ones() as usize;
                c += 16;
            }
            cnt
        }
        #[inline(always)]
        unsafe fn f16_to_f32(bits: u16) -> f32 {
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const u8) {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        }
    }

    pub(crate) struct Avx2;
    impl Simd for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m256 {
            _mm256_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
        #[inline(always)]
        unsafe fn f16_to_f32(bits: u16) -> f32 {
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const u8) {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        }
    }
}
