//! The AVX-512 and AVX2 levels of the row-streaming kernel and their entry points.

use super::{rows, Simd, WeightElem};
use std::arch::x86_64::*;

pub(crate) struct Avx512;
impl Simd for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T1>(p.cast());
    }
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
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
    unsafe fn hsum(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32, valid: usize) -> __m512 {
        if valid == 16 {
            _mm512_loadu_ps(p)
        } else {
            _mm512_maskz_loadu_ps(((1u32 << valid) - 1) as u16, p)
        }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16, valid: usize) -> __m512 {
        let h = if valid == 16 {
            _mm256_loadu_si256(p.cast())
        } else {
            _mm256_maskz_loadu_epi16(((1u32 << valid) - 1) as u16, p.cast())
        };
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16, valid: usize) -> __m512 {
        let h = if valid == 16 {
            _mm256_loadu_si256(p.cast())
        } else {
            _mm256_maskz_loadu_epi16(((1u32 << valid) - 1) as u16, p.cast())
        };
        _mm512_cvtph_ps(h)
    }
}

pub(crate) struct Avx2;
impl Simd for Avx2 {
    type V = __m256;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T1>(p.cast());
    }
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
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
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32, valid: usize) -> __m256 {
        if valid == 8 {
            _mm256_loadu_ps(p)
        } else {
            let mut a = [0f32; 8];
            std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), valid);
            _mm256_loadu_ps(a.as_ptr())
        }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16, valid: usize) -> __m256 {
        let h = if valid == 8 {
            _mm_loadu_si128(p.cast())
        } else {
            let mut a = [0u16; 8];
            std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), valid);
            _mm_loadu_si128(a.as_ptr().cast())
        };
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16, valid: usize) -> __m256 {
        let h = if valid == 8 {
            _mm_loadu_si128(p.cast())
        } else {
            let mut a = [0u16; 8];
            std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), valid);
            _mm_loadu_si128(a.as_ptr().cast())
        };
        _mm256_cvtph_ps(h)
    }
}

/// # Safety
/// AVX-512 F/BW/VL/DQ supported; see `rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn rows_avx512<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    ldx: usize,
    x: *const f32,
    w: *const W,
    y: *mut f32,
    n0: usize,
    n1: usize,
) {
    rows::<Avx512, W>(m, n, k, ldx, x, w, y, n0, n1)
}

/// # Safety
/// AVX2, FMA and F16C supported; see `rows`.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn rows_avx2<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    ldx: usize,
    x: *const f32,
    w: *const W,
    y: *mut f32,
    n0: usize,
    n1: usize,
) {
    rows::<Avx2, W>(m, n, k, ldx, x, w, y, n0, n1)
}
