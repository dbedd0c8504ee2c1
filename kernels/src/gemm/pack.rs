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
        for i in 0..rows {
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
        // Transpose in k chunks so the destination block being filled stays in L1.
        const PB: usize = 64;
        for pc in (0..kc).step_by(PB) {
            let pl = PB.min(kc - pc);
            for j in 0..cols {
                let s = (j0 + j) * b.cs + p0 + pc;
                for (p, &v) in b.data[s..s + pl].iter().enumerate() {
                    dst[(pc + p) * nr + j] = v;
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
