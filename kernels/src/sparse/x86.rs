//! AVX-512 kernels for the memory-bound shapes (decode, small batches), where the weight bytes
//! read set the speed and the FMAs are nearly free.
//!
//! Bitmask / N:M: per 16 columns, the row's 16 mask bits say how many values to take
//! (`popcnt`); a load of the next 16 values (full where 16 values are known to exist, masked to
//! `popcnt` of them near the end of the values) and a register-form `vexpandps` spread them to
//! the lanes of their columns (zeros elsewhere); one FMA with x's 16 columns per row of x. Four
//! weight rows at a time for decode, each with its own value pointer advanced by `popcnt`; the
//! next block's values are prefetched as one linear sweep. Half-precision values are widened to
//! 32-bit lanes *before* the expand, so this needs only AVX-512 F/BW (no VBMI2 `vpexpandw`).
//! CSR: a gather of x at 16 indices.

use super::pattern::{Bits, Pattern};
use crate::gemv::{WeightElem, WeightKind};
use std::arch::x86_64::*;

/// Up to this many rows of x, bitmask and N:M products use the expand kernel at AVX-512;
/// above, the kept-entry kernel (whose FMAs skip the zeros) wins.
pub(crate) const EXPAND_M: usize = 8;

/// The next 16 values at `p` widened to f32: all 16 read when `FULL` (the caller knows they
/// exist), else only the first `cnt`, lanes past them zero.
#[inline(always)]
unsafe fn load_vals<W: WeightElem, const FULL: bool>(p: *const W, cnt: u32) -> __m512 {
    let lm = ((1u32 << cnt) - 1) as u16;
    match W::KIND {
        WeightKind::F32 if FULL => _mm512_loadu_ps(p.cast()),
        WeightKind::F32 => _mm512_maskz_loadu_ps(lm, p.cast()),
        _ => {
            let h = if FULL {
                _mm256_loadu_si256(p.cast())
            } else {
                _mm256_maskz_loadu_epi16(lm, p.cast())
            };
            if W::KIND == WeightKind::BF16 {
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            } else {
                _mm512_cvtph_ps(h)
            }
        }
    }
}

/// The 16 columns whose mask bits are `b`, dense: the next `popcnt(b)` values at `p` in the
/// lanes of the set bits. (Full loads: masked ones measured twice as slow on Zen 5. Expanding
/// half-precision values as 16-bit lanes with AVX512_VBMI2 `vpexpandw` before widening measured
/// no faster than widening first, so the kernels do not need VBMI2.)
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,popcnt")]
unsafe fn expand<W: WeightElem, const FULL: bool>(b: u16, p: *const W) -> __m512 {
    let v = load_vals::<W, FULL>(p, b.count_ones());
    let out: __m512;
    // Register form on purpose: LLVM folds `_mm512_maskz_expand_ps(b, load)` into the memory
    // form `vexpandps zmm{k}{z}, [mem]`, which measured several times slower on Zen 5.
    // SAFETY: AVX-512F is enabled in every caller; the asm only reads `v` and the mask register.
    std::arch::asm!(
        "vexpandps {o}{{{k}}}{{z}}, {i}",
        o = lateout(zmm_reg) out,
        k = in(kreg) b,
        i = in(zmm_reg) v,
        options(pure, nomem, nostack, preserves_flags),
    );
    out
}

/// `y[g, r] = Σ_c x[g, c] · W[r, c]` for rows `r0..r1` of a bitmask pattern and all `m ≤
/// EXPAND_M` rows of x (row-major `[m, k]`); `y` is `[m, n]`.
///
/// # Safety
/// AVX-512 F/BW/VL/DQ, FMA, F16C and POPCNT supported; `x` holds `m × k` floats, `y` `m × n`,
/// `k > 0`; [`Pattern::check_row`] passed for rows `r0..r1`, so the values each row's bits
/// select lie inside `vals` (`pat.nnz` of them); only this call writes columns `r0..r1` of y.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,popcnt")]
pub(crate) unsafe fn bits_expand_rows<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    x: *const f32,
    pat: &Bits,
    vals: *const W,
    y: *mut f32,
    r0: usize,
    r1: usize,
) {
    macro_rules! run {
        ($g:literal, $r:literal) => {{
            let mut r = r0;
            while r < r1 {
                let rr = if r + $r <= r1 { $r } else { 1 };
                // Full 16-value loads may run up to 15 values past a row's last one: fine
                // unless that is past the end of the values (the last rows only).
                let full = pat.start(r + rr - 1) + k + 16 <= pat.nnz;
                match (rr == $r, full) {
                    (true, true) => block::<W, $r, $g, true>(n, k, x, pat, vals, y, r),
                    (true, false) => block::<W, $r, $g, false>(n, k, x, pat, vals, y, r),
                    (false, true) => block::<W, 1, $g, true>(n, k, x, pat, vals, y, r),
                    (false, false) => block::<W, 1, $g, false>(n, k, x, pat, vals, y, r),
                }
                r += rr;
            }
        }};
    }
    match m {
        1 => run!(1, 4),
        2 => run!(2, 2),
        3 => run!(3, 2),
        4 => run!(4, 2),
        5 => run!(5, 2),
        6 => run!(6, 2),
        7 => run!(7, 2),
        _ => run!(8, 2),
    }
}

/// `R` weight rows from `r` against `G` rows of x; `FULL`: see [`load_vals`].
#[inline(always)]
unsafe fn block<W: WeightElem, const R: usize, const G: usize, const FULL: bool>(
    n: usize,
    k: usize,
    x: *const f32,
    pat: &Bits,
    vals: *const W,
    y: *mut f32,
    r: usize,
) {
    let mut bp = [std::ptr::null::<u8>(); R];
    let mut vp = [vals; R];
    for i in 0..R {
        bp[i] = pat.row(r + i).as_ptr();
        vp[i] = vals.add(pat.start(r + i));
    }
    // The next block's values (from where this block's last row starts, a slight over-reach)
    // are fetched toward L2 as one linear sweep spread over this block's chunks, so the
    // next block does not start with a burst of misses whose addresses hang on popcounts.
    let next = r + R;
    let rows = pat.bits.len() / pat.rb();
    let (pf, pf_lines) = if next < rows {
        let (a, b) = (
            pat.start(next),
            if next + R < rows {
                pat.start(next + R)
            } else {
                pat.nnz
            },
        );
        let lines = (b.saturating_sub(a) * std::mem::size_of::<W>()).div_ceil(64) + 1;
        (
            vals.wrapping_add(a) as usize & !63,
            lines.div_ceil((k / 16).max(1)).min(4),
        )
    } else {
        (0, 0)
    };
    let mut acc = [[_mm512_setzero_ps(); R]; G];
    let mut c = 0;
    // 64 columns per step: the four value offsets inside the step come from popcounts of
    // prefixes of one 64-bit mask word, independent of each other, so a row's value pointer
    // advances once per 64 columns instead of once per 16 (a serial popcnt-add chain per 16
    // columns measured 25-30 % slower on Zen 5).
    while c + 64 <= k {
        if pf_lines > 0 {
            for q in 0..4 {
                let base = pf + ((c / 16) + q) * pf_lines * 64;
                for j in 0..pf_lines {
                    _mm_prefetch::<_MM_HINT_T1>((base + j * 64) as *const i8);
                }
            }
        }
        let mut e = [[_mm512_setzero_ps(); R]; 4];
        for i in 0..R {
            // Columns c..c + 64 are bytes c/8..c/8 + 8 of the row (c + 64 ≤ k).
            let w = bp[i].add(c / 8).cast::<u64>().read_unaligned();
            let o1 = (w & 0xffff).count_ones() as usize;
            let o2 = (w & 0xffff_ffff).count_ones() as usize;
            let o3 = (w & 0xffff_ffff_ffff).count_ones() as usize;
            let p = vp[i];
            e[0][i] = expand::<W, FULL>(w as u16, p);
            e[1][i] = expand::<W, FULL>((w >> 16) as u16, p.add(o1));
            e[2][i] = expand::<W, FULL>((w >> 32) as u16, p.add(o2));
            e[3][i] = expand::<W, FULL>((w >> 48) as u16, p.add(o3));
            vp[i] = p.add(w.count_ones() as usize);
        }
        for (g, ag) in acc.iter_mut().enumerate() {
            for (q, eq) in e.iter().enumerate() {
                let xv = _mm512_loadu_ps(x.add(g * k + c + 16 * q));
                for i in 0..R {
                    ag[i] = _mm512_fmadd_ps(eq[i], xv, ag[i]);
                }
            }
        }
        c += 64;
    }
    while c + 16 <= k {
        if pf_lines > 0 {
            let base = pf + (c / 16) * pf_lines * 64;
            for j in 0..pf_lines {
                _mm_prefetch::<_MM_HINT_T1>((base + j * 64) as *const i8);
            }
        }
        let mut e = [_mm512_setzero_ps(); R];
        for i in 0..R {
            // Columns c..c + 16 are bytes c/8 and c/8 + 1 of the row (c + 16 ≤ k).
            let b = bp[i].add(c / 8).cast::<u16>().read_unaligned();
            e[i] = expand::<W, FULL>(b, vp[i]);
            vp[i] = vp[i].add(b.count_ones() as usize);
        }
        for (g, ag) in acc.iter_mut().enumerate() {
            let xv = _mm512_loadu_ps(x.add(g * k + c));
            for i in 0..R {
                ag[i] = _mm512_fmadd_ps(e[i], xv, ag[i]);
            }
        }
        c += 16;
    }
    if c < k {
        let valid = k - c;
        let vm = ((1u32 << valid) - 1) as u16;
        let mut e = [_mm512_setzero_ps(); R];
        for i in 0..R {
            // The row has ⌈valid/8⌉ bytes left; padding bits past k are masked off.
            let p = bp[i].add(c / 8);
            let b = if valid > 8 {
                p.cast::<u16>().read_unaligned()
            } else {
                *p as u16
            } & vm;
            e[i] = expand::<W, FULL>(b, vp[i]);
        }
        for (g, ag) in acc.iter_mut().enumerate() {
            let xv = _mm512_maskz_loadu_ps(vm, x.add(g * k + c));
            for i in 0..R {
                ag[i] = _mm512_fmadd_ps(e[i], xv, ag[i]);
            }
        }
    }
    for (g, ag) in acc.iter().enumerate() {
        for (i, &a) in ag.iter().enumerate() {
            *y.add(g * n + r + i) = _mm512_reduce_add_ps(a);
        }
    }
}

/// `y[r] = Σ_j values[j] · x[indices[j]]` over rows `r0..r1` of a CSR matrix (decode, m = 1).
/// Indices are clamped to `k - 1` before the gather, so a bad index reads a wrong x, never
/// outside it.
///
/// # Safety
/// AVX-512 F/BW/VL/DQ, FMA and F16C supported; `x` holds `k > 0` floats, `y` `n`;
/// `indptr` is non-decreasing, and `indptr[n]` ≤ the lengths of `indices` and `vals`; only this
/// call writes `y[r0..r1]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
pub(crate) unsafe fn csr_gather_rows<W: WeightElem>(
    k: usize,
    x: *const f32,
    indptr: &[usize],
    indices: *const u32,
    vals: *const W,
    y: *mut f32,
    r0: usize,
    r1: usize,
) {
    let kmax = _mm512_set1_epi32((k - 1).min(i32::MAX as usize) as i32);
    for r in r0..r1 {
        let (s, e) = (indptr[r], indptr[r + 1]);
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut j = s;
        while j + 32 <= e {
            let i0 = _mm512_min_epu32(_mm512_loadu_si512(indices.add(j).cast()), kmax);
            let i1 = _mm512_min_epu32(_mm512_loadu_si512(indices.add(j + 16).cast()), kmax);
            let x0 = _mm512_i32gather_ps::<4>(i0, x);
            let x1 = _mm512_i32gather_ps::<4>(i1, x);
            a0 = _mm512_fmadd_ps(load_vals::<W, true>(vals.add(j), 16), x0, a0);
            a1 = _mm512_fmadd_ps(load_vals::<W, true>(vals.add(j + 16), 16), x1, a1);
            j += 32;
        }
        while j < e {
            let cnt = (e - j).min(16) as u32;
            let lm = ((1u32 << cnt) - 1) as u16;
            let i0 = _mm512_min_epu32(_mm512_maskz_loadu_epi32(lm, indices.add(j).cast()), kmax);
            let x0 = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), lm, i0, x);
            a0 = _mm512_fmadd_ps(load_vals::<W, false>(vals.add(j), cnt), x0, a0);
            j += cnt as usize;
        }
        *y.add(r) = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
}

/// Below this density the decode kernel for very sparse rows ([`bits_compress_rows_m1`]) is
/// used (when the CPU has AVX512-VBMI2): most 64-column mask words then hold at most 16 kept
/// columns.
pub(crate) const COMPRESS_MAX_DENSITY: f64 = 0.2;

/// True when [`bits_compress_rows_m1`] should run: a sparse enough matrix on a CPU with
/// AVX512-VBMI2.
pub(crate) fn compress_pays(nnz: usize, n: usize, k: usize) -> bool {
    (nnz as f64) < COMPRESS_MAX_DENSITY * (n as f64) * (k as f64)
        && std::arch::is_x86_feature_detected!("avx512vbmi2")
}

/// Column offsets `0..64` as bytes, for [`row_compress`].
static IOTA64: [u8; 64] = {
    let mut a = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        a[i] = i as u8;
        i += 1;
    }
    a
};

/// Decode (m = 1) for very sparse bitmask / N:M rows: `y[r] = Σ_c x[c] · W[r, c]` for rows
/// `r0..r1`. The expand kernel pays one `vexpandps` per 16 columns whatever the density; here a
/// 64-column mask word with at most 16 set bits costs one AVX512-VBMI2 `vpcompressb` of the
/// column offsets, two `vpermt2ps` that fetch the kept columns' x from four registers, and one
/// FMA with the next values, so the work follows the kept count. Denser words fall back to four
/// expands.
///
/// # Safety
/// AVX-512 F/BW/VL/DQ, AVX512-VBMI2, FMA, F16C and POPCNT supported; `x` holds `k > 0` floats and
/// `y` `n`; [`Pattern::check_row`] passed for rows `r0..r1`; only this call writes `y[r0..r1]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi2,avx2,fma,f16c,popcnt")]
pub(crate) unsafe fn bits_compress_rows_m1<W: WeightElem>(
    k: usize,
    x: *const f32,
    pat: &Bits,
    vals: *const W,
    y: *mut f32,
    r0: usize,
    r1: usize,
) {
    for r in r0..r1 {
        let (bp, vp) = (pat.row(r).as_ptr(), vals.add(pat.start(r)));
        // Full 16-value loads may run up to 15 values past the row's last one.
        *y.add(r) = if pat.start(r) + k + 16 <= pat.nnz {
            row_compress::<W, true>(k, x, bp, vp)
        } else {
            row_compress::<W, false>(k, x, bp, vp)
        };
    }
}

/// One row of [`bits_compress_rows_m1`]; `FULL`: see [`load_vals`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi2,avx2,fma,f16c,popcnt")]
unsafe fn row_compress<W: WeightElem, const FULL: bool>(
    k: usize,
    x: *const f32,
    bp: *const u8,
    mut vp: *const W,
) -> f32 {
    let iota = _mm512_loadu_si512(IOTA64.as_ptr().cast());
    let thirty_two = _mm512_set1_epi32(32);
    let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut c = 0;
    while c + 64 <= k {
        let w = bp.add(c / 8).cast::<u64>().read_unaligned();
        let cnt = w.count_ones();
        let x0 = _mm512_loadu_ps(x.add(c));
        let x1 = _mm512_loadu_ps(x.add(c + 16));
        let x2 = _mm512_loadu_ps(x.add(c + 32));
        let x3 = _mm512_loadu_ps(x.add(c + 48));
        if cnt <= 16 {
            // The offsets of the set bits, in order, in the low `cnt` bytes.
            let ib = _mm512_maskz_compress_epi8(w, iota);
            let idx = _mm512_cvtepu8_epi32(_mm512_castsi512_si128(ib));
            let lo = _mm512_permutex2var_ps(x0, idx, x1);
            let hi = _mm512_permutex2var_ps(x2, idx, x3);
            let xg = _mm512_mask_blend_ps(_mm512_cmpge_epu32_mask(idx, thirty_two), lo, hi);
            // Lanes past `cnt` would pair x[c] with the next word's values: zero them.
            let xg = _mm512_maskz_mov_ps(((1u32 << cnt) - 1) as u16, xg);
            a0 = _mm512_fmadd_ps(load_vals::<W, FULL>(vp, cnt), xg, a0);
        } else {
            let o1 = (w & 0xffff).count_ones() as usize;
            let o2 = (w & 0xffff_ffff).count_ones() as usize;
            let o3 = (w & 0xffff_ffff_ffff).count_ones() as usize;
            a0 = _mm512_fmadd_ps(expand::<W, FULL>(w as u16, vp), x0, a0);
            a1 = _mm512_fmadd_ps(expand::<W, FULL>((w >> 16) as u16, vp.add(o1)), x1, a1);
            a0 = _mm512_fmadd_ps(expand::<W, FULL>((w >> 32) as u16, vp.add(o2)), x2, a0);
            a1 = _mm512_fmadd_ps(expand::<W, FULL>((w >> 48) as u16, vp.add(o3)), x3, a1);
        }
        vp = vp.add(cnt as usize);
        c += 64;
    }
    while c + 16 <= k {
        let b = bp.add(c / 8).cast::<u16>().read_unaligned();
        a0 = _mm512_fmadd_ps(expand::<W, FULL>(b, vp), _mm512_loadu_ps(x.add(c)), a0);
        vp = vp.add(b.count_ones() as usize);
        c += 16;
    }
    if c < k {
        let valid = k - c;
        let vm = ((1u32 << valid) - 1) as u16;
        // The row has ⌈valid/8⌉ bytes left; padding bits past k are masked off.
        let p = bp.add(c / 8);
        let b = if valid > 8 {
            p.cast::<u16>().read_unaligned()
        } else {
            *p as u16
        } & vm;
        let xv = _mm512_maskz_loadu_ps(vm, x.add(c));
        a0 = _mm512_fmadd_ps(expand::<W, FULL>(b, vp), xv, a0);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
}
