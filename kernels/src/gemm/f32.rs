//! The f32 GEMM driver: BLIS-style loops (N in `NC` blocks → K in `KC` blocks → pack B → M in
//! `MC` blocks × groups of B panels, in parallel → micro-kernel tiles), with the micro-kernel of
//! the requested SIMD level.

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
            // Tasks: M blocks × groups of B panels. When there are few M blocks, B panels are
            // split too, finely enough to balance the threads (a task is a fraction of a
            // millisecond), and A is packed once up front and shared instead of per task.
            let mblocks = m.div_ceil(mc_max);
            let want = if threads > 1 { 8 * threads } else { 1 };
            let nsplit = if mblocks >= want {
                1
            } else {
                want.div_ceil(mblocks).min(panels)
            };
            let per = panels.div_ceil(nsplit);
            let nsplit = panels.div_ceil(per);
            let apanels_all = |mc: usize| mc.div_ceil(mr) * mr * kc;
            let shared_a = (nsplit > 1).then(|| {
                let block = apanels_all(mc_max);
                let buf = abuf.get(mblocks * block);
                let pack = |(mb, dst): (usize, &mut [f32])| {
                    let i0 = mb * mc_max;
                    let mc = mc_max.min(m - i0);
                    pack_a(a, i0, mc, p0, kc, mr, &mut dst[..apanels_all(mc)])
                };
                if threads > 1 {
                    buf.par_chunks_mut(block).enumerate().for_each(pack);
                } else {
                    buf.chunks_mut(block).enumerate().for_each(pack);
                }
                (&*buf, block)
            });
            let task = |t: usize| {
                let (mb, sp) = (t / nsplit, t % nsplit);
                let i0 = mb * mc_max;
                let mc = mc_max.min(m - i0);
                let (jp0, jp1) = (sp * per, ((sp + 1) * per).min(panels));
                let apanels = mc.div_ceil(mr);
                let run = |pa: &[f32]| {
                    for jp in jp0..jp1 {
                        let bpan = packed_b[jp * kc * nr..].as_ptr();
                        let cols = nr.min(nc - jp * nr);
                        for ip in 0..apanels {
                            let rows = mr.min(mc - ip * mr);
                            // SAFETY: the level is supported (checked above); the packed panels
                            // hold kc·mr and kc·nr floats; the C tile at row i0 + ip·mr, column
                            // j0 + jp·nr spans rows × cols inside c (m × n), and no other task
                            // writes it (tasks own disjoint (M block, panel group) pairs).
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
                match shared_a {
                    Some((buf, block)) => run(&buf[mb * block..mb * block + apanels_all(mc)]),
                    None => A_BUF.with(|buf| {
                        let mut buf = buf.borrow_mut();
                        let pa = buf.get(apanels_all(mc));
                        pack_a(a, i0, mc, p0, kc, mr, pa);
                        run(pa)
                    }),
                }
            };
            if threads > 1 {
                (0..mblocks * nsplit).into_par_iter().for_each(task);
            } else {
                (0..mblocks * nsplit).for_each(task);
            }
        }
    }
}
