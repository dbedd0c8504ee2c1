//! The f32 GEMM driver: BLIS-style loops (N in `NC` blocks → K in `KC` blocks → micro-kernel
//! tiles) with the micro-kernel of the requested SIMD level. Per K block, with many M blocks the
//! B block is packed once and each rayon task packs and sweeps one M block; with few M blocks
//! (small or skinny problems) A is packed once and the B panels are split between tasks, each
//! packing its own panels, so both threads stay busy without a third parallel region.

use super::kernels::{spec, Spec};
use super::pack::{pack_a, pack_b_panel, AlignedBuf};
use super::MatRef;
use crate::cpu::Level;
use crate::send_ptr::SendPtr;
use rayon::prelude::*;
use std::cell::RefCell;

/// Depth of a packed block.
///
/// Deep blocks keep each C tile in registers for long: measured on Zen 5 (one core, 2048³),
/// KC = 256 reached 175 GFLOP/s, 512 → 199, 1024 → 214 (of a 252 GFLOP/s core peak); C tile
/// loads and stores, not the micro-kernel (255 GFLOP/s from L1), were the cost.
const KC: usize = 1024;

thread_local! {
    static A_BUF: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::new());
    static B_BUF: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::new());
}

fn blocking(s: &Spec) -> (usize, usize) {
    // (MC, NC): an A block MC × KC and a B micro-panel KC × NR share L2; a B block KC × NC sits
    // in L3.
    (s.mr * 8, s.nr * 64)
}

/// `c[m×n] = a[m×k] · b[k×n]` (c row-major, overwritten) with the micro-kernel of `level`
/// (a level this CPU lacks falls back to the best one it has). Parallel over rayon's pool.
pub fn gemm(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<f32>,
    b: MatRef<f32>,
    c: &mut [f32],
) {
    assert_eq!(c.len(), m * n, "gemm: output length");
    a.check(m, k, "a");
    b.check(k, n, "b");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let level = if level.is_supported() {
        level
    } else {
        crate::cpu::detect()
    };
    let s = spec(level);
    let (mr, nr) = (s.mr, s.nr);
    let (mc_max, nc_max) = blocking(&s);
    let parallel = rayon::current_num_threads() > 1 && m * n * k >= 1 << 18;
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let c_ptr = SendPtr(c.as_mut_ptr());
    let mut bbuf = AlignedBuf::new();
    let mut abuf = AlignedBuf::new();
    for j0 in (0..n).step_by(nc_max) {
        let nc = nc_max.min(n - j0);
        let panels = nc.div_ceil(nr);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let mblocks = m.div_ceil(mc_max);
            let want = if threads > 1 { 8 * threads } else { 1 };
            let apanels_all = |mc: usize| mc.div_ceil(mr) * mr * kc;
            // One tile column: all M blocks (A packed in `pa`, block stride `block`) against
            // the packed B panel `bpan` at panel index `jp`.
            let tile_column = |pa: &[f32],
                               block: usize,
                               mbs: std::ops::Range<usize>,
                               bpan: *const f32,
                               jp: usize| {
                let cols = nr.min(nc - jp * nr);
                for mb in mbs {
                    let i0 = mb * mc_max;
                    let mc = mc_max.min(m - i0);
                    let pa = &pa[(mb * block).min(pa.len())..];
                    for ip in 0..mc.div_ceil(mr) {
                        let rows = mr.min(mc - ip * mr);
                        // SAFETY: the level is supported (checked above); the packed panels
                        // hold kc·mr and kc·nr floats; the C tile at row i0 + ip·mr, column
                        // j0 + jp·nr spans rows × cols inside c (m × n), and no other task writes
                        // it (each task owns its B panels, or its M block, exclusively).
                        unsafe {
                            (s.kernel)(
                                kc,
                                pa.as_ptr().add(ip * mr * kc),
                                bpan,
                                c_ptr.get().add((i0 + ip * mr) * n + j0 + jp * nr),
                                n,
                                rows,
                                cols,
                                p0 > 0,
                            )
                        }
                    }
                }
            };
            if threads > 1 && mblocks < want {
                // Few M blocks: pack all of A once (shared), then split the B panels between
                // tasks; each task packs its own panels and sweeps every M block with them.
                let block = apanels_all(mc_max);
                let buf = abuf.get(mblocks * block);
                buf.par_chunks_mut(block).enumerate().for_each(|(mb, dst)| {
                    let i0 = mb * mc_max;
                    let mc = mc_max.min(m - i0);
                    pack_a(a, i0, mc, p0, kc, mr, &mut dst[..apanels_all(mc)])
                });
                let pa = &*buf;
                let groups = want.min(panels);
                let per = panels.div_ceil(groups);
                (0..panels.div_ceil(per)).into_par_iter().for_each(|g| {
                    B_BUF.with(|bb| {
                        let mut bb = bb.borrow_mut();
                        let bpan = bb.get(kc * nr);
                        for jp in g * per..((g + 1) * per).min(panels) {
                            pack_b_panel(b, p0, kc, j0 + jp * nr, nr.min(nc - jp * nr), nr, bpan);
                            tile_column(pa, block, 0..mblocks, bpan.as_ptr(), jp);
                        }
                    })
                });
                continue;
            }
            // Many M blocks: pack this K block of B once (shared), then one task per M block,
            // each packing its own A block.
            let packed_b = bbuf.get(panels * kc * nr);
            let pack = |(pi, dst): (usize, &mut [f32])| {
                pack_b_panel(b, p0, kc, j0 + pi * nr, nr.min(nc - pi * nr), nr, dst)
            };
            if parallel && panels > 1 {
                packed_b.par_chunks_mut(kc * nr).enumerate().for_each(pack);
            } else {
                packed_b.chunks_mut(kc * nr).enumerate().for_each(pack);
            }
            let packed_b = &*packed_b;
            let task = |mb: usize| {
                A_BUF.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    let i0 = mb * mc_max;
                    let mc = mc_max.min(m - i0);
                    let pa = buf.get(apanels_all(mc));
                    pack_a(a, i0, mc, p0, kc, mr, pa);
                    for jp in 0..panels {
                        // `pa` holds only this M block: it is block 0 of its own buffer.
                        let bpan = packed_b[jp * kc * nr..].as_ptr();
                        tile_column(pa, 0, mb..mb + 1, bpan, jp);
                    }
                })
            };
            if threads > 1 {
                (0..mblocks).into_par_iter().for_each(task);
            } else {
                (0..mblocks).for_each(task);
            }
        }
    }
}
