//! The vector operations the fused kernels are written in, one implementation per SIMD level, the
//! polynomial `exp` they share, the macro that compiles a generic body once per level, and the
//! row-block splitter that spreads large buffers over rayon's threads.
//!
//! `exp` is Cephes' `expf` (S. L. Moshier, Cephes Math Library, 1984-2000): Cody–Waite range
//! reduction `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, then `e^r ≈ 1 + r + r²·P(r)` with a degree-5
//! minimax `P`, and `e^x = 2^n · e^r` scaled in one rounding (so subnormal results are right too).

use crate::gemv::{WeightElem, WeightKind};
use rayon::prelude::*;

/// Kernels that evaluate `exp` per element (≈ 0.25 ns each at AVX-512) go parallel above this
/// many elements: from 32K on, one thread needs ≥ 8 µs, well above rayon's fork-join cost.
pub(crate) const PAR_EXP: usize = 1 << 15;
/// Streaming kernels (a few flops per element, ≈ 0.07 ns each) go parallel above this many: a
/// 16×4096 RMSNorm takes 5 µs on one core, and splitting it over two threads made it slower.
pub(crate) const PAR_STREAM: usize = 1 << 18;
/// Fewest elements per parallel task.
const BLOCK: usize = 1 << 13;

/// Runs `f(first_row, block)` over blocks of whole rows (length `n`) of `out`: in parallel when
/// `out` has more than `min_par` elements and the pool more than one thread, else as one block.
pub(crate) fn par_rows<U: Send>(
    out: &mut [U],
    n: usize,
    min_par: usize,
    f: impl Fn(usize, &mut [U]) + Sync,
) {
    if out.is_empty() {
        return;
    }
    let threads = rayon::current_num_threads();
    if out.len() <= min_par || n == 0 || threads == 1 {
        return f(0, out);
    }
    // About four tasks per thread, for balance when threads are shared.
    let rows = ((out.len() / (4 * threads)).max(BLOCK) / n).max(1);
    out.par_chunks_mut(rows * n)
        .enumerate()
        .for_each(|(i, c)| f(i * rows, c));
}

/// Vector operations one SIMD level provides. All are `unsafe`: the caller runs them only where
/// the level is supported, with pointers valid for the lanes they touch.
pub(crate) trait Simd {
    type V: Copy;
    const LANES: usize;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    /// Loads `LANES` bfloat16 values (their bits) widened to f32.
    unsafe fn load_bf16(p: *const u16) -> Self::V;
    /// Loads `LANES` IEEE half values (their bits) widened to f32.
    unsafe fn load_f16(p: *const u16) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Loads `valid < LANES` elements; the other lanes hold `fill`.
    unsafe fn load_part(p: *const f32, valid: usize, fill: f32) -> Self::V;
    /// Stores the first `valid < LANES` lanes.
    unsafe fn store_part(p: *mut f32, v: Self::V, valid: usize);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `a·b + c` (fused where the level has FMA).
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `c − a·b` (fused where the level has FMA).
    unsafe fn fnma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise maximum; which operand a NaN lane yields is unspecified.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// `min(max(x, lo), hi)` with NaN lanes kept NaN.
    unsafe fn clamp(x: Self::V, lo: f32, hi: f32) -> Self::V;
    unsafe fn abs(x: Self::V) -> Self::V;
    /// Lanes of `neg` where `sel`'s sign bit is set, else lanes of `pos`.
    unsafe fn blend_neg(sel: Self::V, neg: Self::V, pos: Self::V) -> Self::V;
    /// Rounds to the nearest integer.
    unsafe fn round(x: Self::V) -> Self::V;
    /// `x · 2^n` for integer-valued `n` in `[-150, 128]`, rounded once.
    unsafe fn ldexp(x: Self::V, n: Self::V) -> Self::V;
    unsafe fn hsum(v: Self::V) -> f32;
    unsafe fn hmax(v: Self::V) -> f32;
    /// Swaps each even lane with the odd lane after it.
    unsafe fn swap_pairs(v: Self::V) -> Self::V;
}

/// Loads `valid ≤ LANES` elements (a full vector when `valid == LANES`); other lanes hold `fill`.
#[inline(always)]
pub(crate) unsafe fn load_n<S: Simd>(p: *const f32, valid: usize, fill: f32) -> S::V {
    if valid == S::LANES {
        S::load(p)
    } else {
        S::load_part(p, valid, fill)
    }
}

/// Loads `valid ≤ LANES` elements of type `W` widened to f32; the other lanes hold `fill`.
#[inline(always)]
pub(crate) unsafe fn load_elem_n<S: Simd, W: WeightElem>(
    p: *const W,
    valid: usize,
    fill: f32,
) -> S::V {
    match W::KIND {
        WeightKind::F32 => load_n::<S>(p.cast(), valid, fill),
        _ if valid < S::LANES => {
            let mut a = [fill; 16];
            for (i, e) in a.iter_mut().enumerate().take(valid) {
                *e = (*p.add(i)).to_f32();
            }
            S::load(a.as_ptr())
        }
        WeightKind::BF16 => S::load_bf16(p.cast()),
        WeightKind::F16 => S::load_f16(p.cast()),
    }
}

/// Stores the first `valid ≤ LANES` lanes.
#[inline(always)]
pub(crate) unsafe fn store_n<S: Simd>(p: *mut f32, v: S::V, valid: usize) {
    if valid == S::LANES {
        S::store(p, v)
    } else {
        S::store_part(p, v, valid)
    }
}

/// `e^x` lane-wise: ≤ 2 ulp over the normal range, correctly scaled into subnormals, `-inf → 0`,
/// `x > 88.73 → inf`, NaN → NaN.
#[inline(always)]
pub(crate) unsafe fn exp<S: Simd>(x: S::V) -> S::V {
    // Below -104 the result rounds to 0, above 89 to inf; clamping keeps n in ldexp's range.
    let x = S::clamp(x, -104.0, 89.0);
    let n = S::round(S::mul(x, S::splat(std::f32::consts::LOG2_E)));
    // ln 2 split so that n·LN2_HI is exact for |n| < 2^15.
    let r = S::fnma(n, S::splat(0.693_359_4), x);
    let r = S::fnma(n, S::splat(-2.121_944_4e-4), r);
    let mut p = S::splat(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = S::fma(p, r, S::splat(c));
    }
    let e = S::add(S::fma(p, S::mul(r, r), r), S::splat(1.0));
    S::ldexp(e, n)
}

/// Defines `unsafe fn $name(level, args…)` that runs `$body::<S>(args…)` compiled for `level`'s
/// target features, so the generic body and every `Simd` method inline into one function built
/// with the right instructions. Levels this target lacks run the portable body. An optional
/// generic parameter (`fn name<W: Bound> => body(...)`) is passed on as the body's second one
/// (`$body::<S, W>`), e.g. the element type of a KV cache.
macro_rules! simd_entry {
    ($(#[$m:meta])* $vis:vis fn $name:ident $(<$g:ident: $bound:path>)? => $body:ident ($($arg:ident : $ty:ty),* $(,)?)) => {
        $(#[$m])*
        /// # Safety
        /// `level` must be supported by this CPU; the body's own contract holds.
        $vis unsafe fn $name $(<$g: $bound>)? (level: $crate::cpu::Level, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn avx512 $(<$g: $bound>)? ($($arg: $ty),*) {
                $body::<$crate::fused::simd::x86::Avx512 $(, $g)?>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn avx2 $(<$g: $bound>)? ($($arg: $ty),*) {
                $body::<$crate::fused::simd::x86::Avx2 $(, $g)?>($($arg),*)
            }
            match level {
                #[cfg(target_arch = "x86_64")]
                $crate::cpu::Level::Avx512 => avx512($($arg),*),
                #[cfg(target_arch = "x86_64")]
                $crate::cpu::Level::Avx2 => avx2($($arg),*),
                _ => $body::<$crate::fused::simd::Portable $(, $g)?>($($arg),*),
            }
        }
    };
}
pub(crate) use simd_entry;

/// `level` when this CPU runs it, else the best level it has.
pub(crate) fn usable(level: crate::cpu::Level) -> crate::cpu::Level {
    if level.is_supported() {
        level
    } else {
        crate::cpu::detect()
    }
}

pub(crate) use portable::Portable;

mod portable {
    use super::Simd;
    use wide::{f32x8, i32x8};

    /// SSE2/NEON through `wide`.
    pub(crate) struct Portable;
    impl Simd for Portable {
        type V = f32x8;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn splat(x: f32) -> f32x8 {
            f32x8::splat(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> f32x8 {
            f32x8::from(p.cast::<[f32; 8]>().read_unaligned())
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u16) -> f32x8 {
            let b = p.cast::<[u16; 8]>().read_unaligned();
            f32x8::from(b.map(|h| f32::from_bits((h as u32) << 16)))
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const u16) -> f32x8 {
            let b = p.cast::<[u16; 8]>().read_unaligned();
            f32x8::from(b.map(|h| half::f16::from_bits(h).to_f32()))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: f32x8) {
            p.cast::<[f32; 8]>().write_unaligned(v.to_array())
        }
        #[inline(always)]
        unsafe fn load_part(p: *const f32, valid: usize, fill: f32) -> f32x8 {
            let mut a = [fill; 8];
            std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), valid);
            f32x8::from(a)
        }
        #[inline(always)]
        unsafe fn store_part(p: *mut f32, v: f32x8, valid: usize) {
            std::ptr::copy_nonoverlapping(v.to_array().as_ptr(), p, valid)
        }
        #[inline(always)]
        unsafe fn add(a: f32x8, b: f32x8) -> f32x8 {
            a + b
        }
        #[inline(always)]
        unsafe fn sub(a: f32x8, b: f32x8) -> f32x8 {
            a - b
        }
        #[inline(always)]
        unsafe fn mul(a: f32x8, b: f32x8) -> f32x8 {
            a * b
        }
        #[inline(always)]
        unsafe fn div(a: f32x8, b: f32x8) -> f32x8 {
            a / b
        }
        #[inline(always)]
        unsafe fn fma(a: f32x8, b: f32x8, c: f32x8) -> f32x8 {
            a.mul_add(b, c)
        }
        #[inline(always)]
        unsafe fn fnma(a: f32x8, b: f32x8, c: f32x8) -> f32x8 {
            a.mul_neg_add(b, c)
        }
        #[inline(always)]
        unsafe fn max(a: f32x8, b: f32x8) -> f32x8 {
            a.fast_max(b)
        }
        #[inline(always)]
        unsafe fn clamp(x: f32x8, lo: f32, hi: f32) -> f32x8 {
            let c = x.fast_max(f32x8::splat(lo)).fast_min(f32x8::splat(hi));
            x.is_nan().blend(x, c)
        }
        #[inline(always)]
        unsafe fn abs(x: f32x8) -> f32x8 {
            x.abs()
        }
        #[inline(always)]
        unsafe fn blend_neg(sel: f32x8, neg: f32x8, pos: f32x8) -> f32x8 {
            sel.sign_bit().blend(neg, pos)
        }
        #[inline(always)]
        unsafe fn round(x: f32x8) -> f32x8 {
            x.round()
        }
        #[inline(always)]
        unsafe fn ldexp(x: f32x8, n: f32x8) -> f32x8 {
            // Two factors 2^(n/2) keep each one a normal float; the second product rounds once.
            let k = n.fast_round_int();
            let k1 = k >> 1;
            let k2 = k - k1;
            let bias = i32x8::splat(127);
            // SAFETY: i32x8 and f32x8 are both 32 plain bytes; this reinterprets the bits.
            let p1: f32x8 = std::mem::transmute((k1 + bias) << 23);
            // SAFETY: as above.
            let p2: f32x8 = std::mem::transmute((k2 + bias) << 23);
            x * p1 * p2
        }
        #[inline(always)]
        unsafe fn hsum(v: f32x8) -> f32 {
            v.reduce_add()
        }
        #[inline(always)]
        unsafe fn hmax(v: f32x8) -> f32 {
            v.to_array().into_iter().fold(f32::NEG_INFINITY, f32::max)
        }
        #[inline(always)]
        unsafe fn swap_pairs(v: f32x8) -> f32x8 {
            let a = v.to_array();
            f32x8::from([a[1], a[0], a[3], a[2], a[5], a[4], a[7], a[6]])
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// AVX-512 F/BW/VL/DQ, 16 lanes.
    pub(crate) struct Avx512;
    impl Simd for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u16) -> __m512 {
            let h = _mm256_loadu_si256(p.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const u16) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn load_part(p: *const f32, valid: usize, fill: f32) -> __m512 {
            _mm512_mask_loadu_ps(_mm512_set1_ps(fill), mask16(valid), p)
        }
        #[inline(always)]
        unsafe fn store_part(p: *mut f32, v: __m512, valid: usize) {
            _mm512_mask_storeu_ps(p, mask16(valid), v)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            _mm512_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            _mm512_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn fnma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fnmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn clamp(x: __m512, lo: f32, hi: f32) -> __m512 {
            // vmaxps/vminps return the second operand when either is NaN: put x second.
            _mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), x))
        }
        #[inline(always)]
        unsafe fn abs(x: __m512) -> __m512 {
            _mm512_abs_ps(x)
        }
        #[inline(always)]
        unsafe fn blend_neg(sel: __m512, neg: __m512, pos: __m512) -> __m512 {
            _mm512_mask_blend_ps(_mm512_movepi32_mask(_mm512_castps_si512(sel)), pos, neg)
        }
        #[inline(always)]
        unsafe fn round(x: __m512) -> __m512 {
            _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x)
        }
        #[inline(always)]
        unsafe fn ldexp(x: __m512, n: __m512) -> __m512 {
            _mm512_scalef_ps(x, n)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m512) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        #[inline(always)]
        unsafe fn hmax(v: __m512) -> f32 {
            _mm512_reduce_max_ps(v)
        }
        #[inline(always)]
        unsafe fn swap_pairs(v: __m512) -> __m512 {
            _mm512_permute_ps::<0b10_11_00_01>(v)
        }
    }

    /// The first `valid` of 16 lanes.
    #[inline(always)]
    pub(crate) fn mask16(valid: usize) -> u16 {
        debug_assert!(valid <= 16);
        ((1u32 << valid) - 1) as u16
    }

    /// AVX2 + FMA, 8 lanes.
    pub(crate) struct Avx2;

    /// All-ones in the first `valid` of 8 lanes.
    #[inline(always)]
    pub(crate) unsafe fn mask8(valid: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(valid as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    impl Simd for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u16) -> __m256 {
            let h = _mm_loadu_si128(p.cast());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const u16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn load_part(p: *const f32, valid: usize, fill: f32) -> __m256 {
            let m = mask8(valid);
            let v = _mm256_maskload_ps(p, m);
            _mm256_blendv_ps(_mm256_set1_ps(fill), v, _mm256_castsi256_ps(m))
        }
        #[inline(always)]
        unsafe fn store_part(p: *mut f32, v: __m256, valid: usize) {
            _mm256_maskstore_ps(p, mask8(valid), v)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            _mm256_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            _mm256_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn fnma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fnmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn clamp(x: __m256, lo: f32, hi: f32) -> __m256 {
            // vmaxps/vminps return the second operand when either is NaN: put x second.
            _mm256_min_ps(_mm256_set1_ps(hi), _mm256_max_ps(_mm256_set1_ps(lo), x))
        }
        #[inline(always)]
        unsafe fn abs(x: __m256) -> __m256 {
            _mm256_andnot_ps(_mm256_set1_ps(-0.0), x)
        }
        #[inline(always)]
        unsafe fn blend_neg(sel: __m256, neg: __m256, pos: __m256) -> __m256 {
            _mm256_blendv_ps(pos, neg, sel)
        }
        #[inline(always)]
        unsafe fn round(x: __m256) -> __m256 {
            _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x)
        }
        #[inline(always)]
        unsafe fn ldexp(x: __m256, n: __m256) -> __m256 {
            // Two factors 2^(n/2) keep each one a normal float; the second product rounds once.
            let k = _mm256_cvtps_epi32(n);
            let k1 = _mm256_srai_epi32::<1>(k);
            let k2 = _mm256_sub_epi32(k, k1);
            let bias = _mm256_set1_epi32(127);
            let p1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(k1, bias)));
            let p2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(k2, bias)));
            _mm256_mul_ps(_mm256_mul_ps(x, p1), p2)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
        #[inline(always)]
        unsafe fn hmax(v: __m256) -> f32 {
            let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
        #[inline(always)]
        unsafe fn swap_pairs(v: __m256) -> __m256 {
            _mm256_permute_ps::<0b10_11_00_01>(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{self, Level};

    /// Writes `e^x` for every `x` through the level's vector `exp`, tails included.
    unsafe fn exp_body<S: Simd>(x: &[f32], out: &mut [f32]) {
        let mut i = 0;
        while i < x.len() {
            let v = (x.len() - i).min(S::LANES);
            let e = exp::<S>(S::load_part(x.as_ptr().add(i), v, 0.0));
            S::store_part(out.as_mut_ptr().add(i), e, v);
            i += v;
        }
    }
    simd_entry!(fn exp_at => exp_body(x: &[f32], out: &mut [f32]));

    fn exp_slice(level: Level, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        // SAFETY: tests pass only levels from `cpu::available()`.
        unsafe { exp_at(level, x, &mut out) };
        out
    }

    #[test]
    fn exp_relative_error_over_the_whole_range() {
        // A dense sweep of [-88, 88] (step 2^-12, 720K points) plus exact powers of two.
        let x: Vec<f32> = (-(88 << 12)..=(88 << 12))
            .map(|i| i as f32 / 4096.0)
            .collect();
        for level in cpu::available() {
            let e = exp_slice(level, &x);
            let (mut worst, mut worst_ulp) = ((0f64, 0f32), (0f64, 0f32));
            for (&xi, &ei) in x.iter().zip(&e) {
                let want = (xi as f64).exp();
                let rel = ((ei as f64 - want) / want).abs();
                if rel > worst.0 {
                    worst = (rel, xi);
                }
                if want >= f32::MIN_POSITIVE as f64 {
                    // One ulp of the true result: the gap above the f32 just below it.
                    let lo = (want as f32).min(f32::from_bits((want as f32).to_bits() - 1));
                    let ulp = (f32::from_bits(lo.to_bits() + 1) - lo) as f64;
                    let u = (ei as f64 - want).abs() / ulp;
                    if u > worst_ulp.0 {
                        worst_ulp = (u, xi);
                    }
                }
            }
            let w = worst_ulp;
            assert!(w.0 <= 2.0, "{level:?}: {} ulp at {}", w.0, w.1);
            assert!(
                worst.0 < 4e-7,
                "{level:?}: rel error {} at {}",
                worst.0,
                worst.1
            );
        }
    }

    #[test]
    fn exp_special_values() {
        let x = [
            f32::NEG_INFINITY,
            -1000.0,
            -104.0,
            -103.0,
            0.0,
            -0.0,
            1.0,
            88.72,
            88.73,
            89.0,
            1000.0,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        for level in cpu::available() {
            let e = exp_slice(level, &x);
            assert_eq!(&e[..3], &[0.0, 0.0, 0.0], "{level:?}");
            // exp(-103) = 1.5e-45 rounds to the smallest subnormal, 2^-149.
            assert_eq!(e[3], f32::from_bits(1), "{level:?}");
            assert_eq!((e[4], e[5]), (1.0, 1.0), "{level:?}");
            assert!(
                (e[6] - std::f32::consts::E).abs() <= f32::EPSILON * 3.0,
                "{level:?}"
            );
            assert!(e[7].is_finite() && e[7] > 3.39e38, "{level:?} {}", e[7]);
            assert_eq!(&e[8..12], &[f32::INFINITY; 4], "{level:?}");
            assert!(e[12].is_nan() && e[13].is_nan(), "{level:?}");
        }
    }
}
