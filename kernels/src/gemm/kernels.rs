//! Register-tiled f32 micro-kernels: `C[mr×nr] (+)= A_panel · B_panel` over `kc`, with A packed
//! `mr`-wide and B packed `nr`-wide (see `pack`). Each level keeps the whole C tile in vector
//! registers for the length of the k loop.

/// A micro-kernel: `(kc, a, b, c, ldc, rows, cols, accumulate)`. Writes rows `< rows` and columns
/// `< cols` of the tile at `c` (row stride `ldc`), adding to C when `accumulate`.
pub(crate) type MicroKernel =
    unsafe fn(usize, *const f32, *const f32, *mut f32, usize, usize, usize, bool);

/// Tile shape and kernel of one SIMD level.
#[derive(Clone, Copy)]
pub(crate) struct Spec {
    pub mr: usize,
    pub nr: usize,
    pub kernel: MicroKernel,
}

pub(crate) fn spec(level: crate::cpu::Level) -> Spec {
    use crate::cpu::Level;
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => Spec {
            mr: 12,
            nr: 32,
            kernel: x86::kernel_avx512,
        },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => Spec {
            mr: 6,
            nr: 16,
            kernel: x86::kernel_avx2,
        },
        _ => Spec {
            mr: 4,
            nr: 16,
            kernel: kernel_portable,
        },
    }
}

/// Writes a register tile held in `tile` (row-major, `nr` wide) to C, clipped to rows × cols.
///
/// # Safety
/// `c` must be valid for `rows` rows of `cols` elements at row stride `ldc`.
#[inline(always)]
unsafe fn store_clipped(
    tile: &[f32],
    nr: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    acc: bool,
) {
    for i in 0..rows {
        for j in 0..cols {
            let dst = c.add(i * ldc + j);
            let v = tile[i * nr + j];
            *dst = if acc { *dst + v } else { v };
        }
    }
}

/// Portable 4×16 kernel written with `wide::f32x8`.
///
/// # Safety
/// `a` holds `kc·4` and `b` holds `kc·16` floats; `c` as in [`store_clipped`].
unsafe fn kernel_portable(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    acc: bool,
) {
    use wide::f32x8;
    const MR: usize = 4;
    const NR: usize = 16;
    let mut t = [[f32x8::ZERO; 2]; MR];
    for p in 0..kc {
        let bp = b.add(p * NR);
        let b0 = f32x8::from(*(bp as *const [f32; 8]));
        let b1 = f32x8::from(*(bp.add(8) as *const [f32; 8]));
        for (i, row) in t.iter_mut().enumerate() {
            let av = f32x8::splat(*a.add(p * MR + i));
            row[0] = av.mul_add(b0, row[0]);
            row[1] = av.mul_add(b1, row[1]);
        }
    }
    let mut tile = [0f32; MR * NR];
    for i in 0..MR {
        tile[i * NR..i * NR + 8].copy_from_slice(&t[i][0].to_array());
        tile[i * NR + 8..i * NR + 16].copy_from_slice(&t[i][1].to_array());
    }
    store_clipped(&tile, NR, c, ldc, rows, cols, acc);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::store_clipped;
    use std::arch::x86_64::*;

    /// AVX-512 12×32 kernel: 24 accumulators, 2 B vectors, 1 broadcast A.
    ///
    /// # Safety
    /// CPU supports AVX-512F; `a` holds `kc·12` and `b` holds `kc·32` floats; `c` as in
    /// `store_clipped`.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn kernel_avx512(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        acc: bool,
    ) {
        const MR: usize = 12;
        const NR: usize = 32;
        // Pull the C tile toward L1 while the k loop runs: its rows are far apart in memory and
        // would otherwise miss when the tile is stored.
        for i in 0..rows {
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + 16) as *const i8);
        }
        let mut t = [[_mm512_setzero_ps(); 2]; MR];
        let mut ap = a;
        let mut bp = b;
        for _ in 0..kc {
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            for (i, row) in t.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(i));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        let m0: __mmask16 = if cols >= 16 {
            0xFFFF
        } else {
            (1u32 << cols) as u16 - 1
        };
        let m1: __mmask16 = if cols >= 32 {
            0xFFFF
        } else if cols > 16 {
            (1u32 << (cols - 16)) as u16 - 1
        } else {
            0
        };
        for (i, row) in t.iter().enumerate().take(rows) {
            let cp = c.add(i * ldc);
            let (mut v0, mut v1) = (row[0], row[1]);
            if acc {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cp));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cp.add(16)));
            }
            _mm512_mask_storeu_ps(cp, m0, v0);
            _mm512_mask_storeu_ps(cp.add(16), m1, v1);
        }
    }

    /// AVX2+FMA 6×16 kernel: 12 accumulators, 2 B vectors, 1 broadcast A.
    ///
    /// # Safety
    /// CPU supports AVX2 and FMA; `a` holds `kc·6` and `b` holds `kc·16` floats; `c` as in
    /// `store_clipped`.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn kernel_avx2(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        acc: bool,
    ) {
        const MR: usize = 6;
        const NR: usize = 16;
        for i in 0..rows {
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + 8) as *const i8);
        }
        let mut t = [[_mm256_setzero_ps(); 2]; MR];
        let mut ap = a;
        let mut bp = b;
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for (i, row) in t.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(i));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        if rows == MR && cols == NR {
            for (i, row) in t.iter().enumerate() {
                let cp = c.add(i * ldc);
                let (mut v0, mut v1) = (row[0], row[1]);
                if acc {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(cp));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(cp.add(8)));
                }
                _mm256_storeu_ps(cp, v0);
                _mm256_storeu_ps(cp.add(8), v1);
            }
        } else {
            let mut tile = [0f32; MR * NR];
            for (i, row) in t.iter().enumerate() {
                _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR), row[0]);
                _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR + 8), row[1]);
            }
            store_clipped(&tile, NR, c, ldc, rows, cols, acc);
        }
    }
}
