//! Packing of GEMM operands into the panel order the micro-kernels stream, zero-padded at the
//! edges, plus a 64-byte-aligned scratch buffer.

use super::MatRef;

/// A zeroed f32 buffer whose start is 64-byte aligned (one cache line, one AVX-512 vector).
pub(crate) struct AlignedBuf {
    raw: Vec<f32>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub(crate) fn new() -> Self {
        AlignedBuf {
            raw: Vec::new(),
            start: 0,
            len: 0,
        }
    }
    /// A slice of `len` elements, 64-byte aligned; contents are unspecified.
    pub(crate) fn get(&mut self, len: usize) -> &mut [f32] {
        if self.raw.len() < len + 16 || self.len < len {
            self.raw = vec![0.0; len + 16];
            let misalign = (self.raw.as_ptr() as usize / 4) % 16;
            self.start = (16 - misalign) % 16;
            self.len = len;
        }
        &mut self.raw[self.start..self.start + len]
    }
}

/// Packs rows `i0..i0+mc`, columns `p0..p0+kc` of `a` into `mr`-row panels:
/// `out[panel·mr·kc + p·mr + i] = a[i0 + panel·mr + i, p0 + p]`, zero beyond `mc`.
pub(crate) fn pack_a(
    a: MatRef<f32>,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    mr: usize,
    out: &mut [f32],
) {
    let panels = mc.div_ceil(mr);
    debug_assert!(out.len() >= panels * mr * kc);
    for panel in 0..panels {
        let dst = &mut out[panel * mr * kc..(panel + 1) * mr * kc];
        let rows = mr.min(mc - panel * mr);
        if rows < mr {
            dst.fill(0.0);
        }
        let mut first = 0;
        #[cfg(target_arch = "x86_64")]
        if a.cs == 1 && crate::cpu::Level::Avx2.is_supported() {
            // Groups of 8 rows through 8 × 8 register transposes.
            while first + 8 <= rows {
                let src = &a.data[(i0 + panel * mr + first) * a.rs + p0..];
                assert!(7 * a.rs + kc <= src.len(), "pack_a: source too short");
                // SAFETY: AVX2 is supported; the 8 source rows hold kc elements at stride a.rs
                // (asserted); dst holds kc·mr elements and first + 8 <= mr.
                unsafe {
                    x86::transpose8_block(src.as_ptr(), a.rs, kc, dst.as_mut_ptr().add(first), mr)
                };
                first += 8;
            }
        }
        if a.rs == 1 && a.cs != 1 {
            // A is a transposed (column-major) view: the panel's rows at one column are
            // contiguous.
            for p in 0..kc {
                let src = (i0 + panel * mr) + (p0 + p) * a.cs;
                dst[p * mr..p * mr + rows].copy_from_slice(&a.data[src..src + rows]);
            }
            continue;
        }
        for i in first..rows {
            let row = i0 + panel * mr + i;
            if a.cs == 1 {
                let src = &a.data[row * a.rs + p0..row * a.rs + p0 + kc];
                for (p, &v) in src.iter().enumerate() {
                    dst[p * mr + i] = v;
                }
            } else {
                for p in 0..kc {
                    dst[p * mr + i] = a.at(row, p0 + p);
                }
            }
        }
    }
}

/// Packs rows `p0..p0+kc`, columns `j0..j0+nc` of `b` into `nr`-column panels:
/// `out[panel·kc·nr + p·nr + j] = b[p0 + p, j0 + panel·nr + j]`, zero beyond `nc`.
pub(crate) fn pack_b_panel(
    b: MatRef<f32>,
    p0: usize,
    kc: usize,
    j0: usize,
    cols: usize,
    nr: usize,
    dst: &mut [f32],
) {
    debug_assert!(dst.len() >= kc * nr);
    if cols < nr {
        dst[..kc * nr].fill(0.0);
    }
    if b.cs == 1 {
        for p in 0..kc {
            let s = (p0 + p) * b.rs + j0;
            dst[p * nr..p * nr + cols].copy_from_slice(&b.data[s..s + cols]);
        }
    } else if b.rs == 1 {
        // B is the transpose of a row-major [N, K] weight: each column is a contiguous row.
        let mut j = 0;
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::Level::Avx2.is_supported() {
            // 8 × 8 register transposes; rows past the last full block go the scalar way.
            while j + 8 <= cols {
                let src = &b.data[(j0 + j) * b.cs + p0..];
                assert!(7 * b.cs + kc <= src.len(), "pack_b_panel: source too short");
                // SAFETY: AVX2 is supported (checked above); the 8 source rows hold kc elements
                // each at stride b.cs (asserted), and dst holds kc·nr elements with j + 8 <= nr.
                unsafe {
                    x86::transpose8_block(src.as_ptr(), b.cs, kc, dst.as_mut_ptr().add(j), nr)
                };
                j += 8;
            }
        }
        // Transpose in k chunks so the destination block being filled stays in L1.
        const PB: usize = 64;
        for pc in (0..kc).step_by(PB) {
            let pl = PB.min(kc - pc);
            for jj in j..cols {
                let s = (j0 + jj) * b.cs + p0 + pc;
                for (p, &v) in b.data[s..s + pl].iter().enumerate() {
                    dst[(pc + p) * nr + jj] = v;
                }
            }
        }
    } else {
        for p in 0..kc {
            for j in 0..cols {
                dst[p * nr + j] = b.at(p0 + p, j0 + j);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Writes `dst[p·ld_dst + r] = src[r·ld_src + p]` for r < 8, p < kc (8 × 8 blocks in
    /// registers, a scalar tail for kc % 8).
    ///
    /// # Safety
    /// AVX2 supported; `src` valid for `7·ld_src + kc` elements, `dst` for `(kc-1)·ld_dst + 8`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose8_block(
        src: *const f32,
        ld_src: usize,
        kc: usize,
        dst: *mut f32,
        ld_dst: usize,
    ) {
        let mut p = 0;
        while p + 8 <= kc {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ld_src + p)));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (i, v) in out.iter().enumerate() {
                _mm256_storeu_ps(dst.add((p + i) * ld_dst), *v);
            }
            p += 8;
        }
        while p < kc {
            for i in 0..8 {
                *dst.add(p * ld_dst + i) = *src.add(i * ld_src + p);
            }
            p += 1;
        }
    }
}
