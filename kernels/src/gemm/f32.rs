//! The f32 GEMM driver: BLIS-style loops (N in `NC` blocks → K in `KC` blocks → micro-kernel
//! tiles) with the micro-kernel of the requested SIMD level. Per K block, with many M blocks the
//! B block is packed once and each rayon task packs and sweeps one M block; with few M blocks
//! (small or skinny problems) A is packed once and the B panels are split between tasks, each
//! packing its own panels, so both threads stay busy without a third parallel region.

use super::kernels::spec;
use super::pack::{pack_a, pack_b_panel, AlignedBuf};
use super::MatRef;
use crate::cpu::Level;
use crate::send_ptr::SendPtr;
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Cache blocking of the f32 GEMM: the depth of a packed block (`kc`), and an M block of
/// `mc_panels` A panels (`mr` rows each) and an N block of `nc_panels` B panels (`nr` columns each)
/// of the micro-kernel in use.
///
/// An A block (`mc × kc`) and a B micro-panel (`kc × nr`) share L2, a B block (`kc × nc`) sits in
/// L3. Chosen at run time by [`blocking`] from the CPU vendor; `SHEARS_GEMM_BLOCKING=kc,mc,nc`
/// (panel counts for `mc` and `nc`) overrides it at start-up, and [`force_blocking`] at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Blocking {
    /// Depth of a packed block, in elements of K.
    pub kc: usize,
    /// A panels per M block.
    pub mc_panels: usize,
    /// B panels per N block.
    pub nc_panels: usize,
}

impl Blocking {
    /// The blocking for this CPU.
    ///
    /// AMD (Zen 5): deep blocks keep each C tile in registers for long. Measured on one core,
    /// 2048³: KC = 256 reached 175 GFLOP/s, 512 → 199, 1024 → 214 (of a 252 GFLOP/s core peak);
    /// C tile loads and stores, not the micro-kernel (255 GFLOP/s from L1), were the cost.
    ///
    /// Intel: see [`INTEL`].
    pub fn for_cpu() -> Blocking {
        if crate::cpu::vendor() == "GenuineIntel" {
            INTEL
        } else {
            AMD
        }
    }
    fn encode(self) -> u64 {
        (self.kc as u64) << 32 | (self.mc_panels as u64) << 16 | self.nc_panels as u64
    }
    fn decode(v: u64) -> Blocking {
        Blocking {
            kc: (v >> 32) as usize,
            mc_panels: (v >> 16 & 0xffff) as usize,
            nc_panels: (v & 0xffff) as usize,
        }
    }
    /// Parses `kc,mc_panels,nc_panels`; `None` unless all three are in 1..=65535.
    pub fn parse(s: &str) -> Option<Blocking> {
        let v: Vec<usize> = s
            .split(',')
            .map(|x| x.trim().parse().ok())
            .collect::<Option<_>>()?;
        match v[..] {
            [kc, mc_panels, nc_panels] => Some(Blocking {
                kc,
                mc_panels,
                nc_panels,
            })
            .filter(Blocking::is_valid),
            _ => None,
        }
    }
    /// Every field in 1..=65535 (what [`force_blocking`] can store and the driver can run).
    pub fn is_valid(&self) -> bool {
        [self.kc, self.mc_panels, self.nc_panels]
            .iter()
            .all(|&x| (1..=0xffff).contains(&x))
    }
}

/// The blocking measured best on AMD Zen 5 (see [`Blocking::for_cpu`]).
pub const AMD: Blocking = Blocking {
    kc: 1024,
    mc_panels: 8,
    nc_panels: 64,
};

/// The blocking for Intel: the same as [`AMD`]. On the Xeon (family 6 model 207, 2 vCPUs, no AMX
/// exposed) a sweep of kc ∈ {256, 384, 512, 768, 1024} × mc ∈ {4, 8, 16} × nc ∈ {32, 64} panels
/// (`cargo run --release -p shears-kernels --example gemm_blocking`) found no blocking ahead of
/// this one beyond the run-to-run spread (±5 %): 2048³ reached 271-280 GFLOP/s at kc ≥ 512 with
/// 4 or 8 panels, against 218-264 at kc = 256 and 221-265 with 16 panels (2 threads, FMA peak
/// 332-351 GFLOP/s).
pub const INTEL: Blocking = Blocking {
    kc: 1024,
    mc_panels: 8,
    nc_panels: 64,
};

static BLOCKING: AtomicU64 = AtomicU64::new(0);

/// The blocking in force: the one set by [`force_blocking`] if any, else
/// `SHEARS_GEMM_BLOCKING` if set and valid, else [`Blocking::for_cpu`].
pub fn blocking() -> Blocking {
    match BLOCKING.load(Ordering::Relaxed) {
        0 => {
            let b = std::env::var("SHEARS_GEMM_BLOCKING")
                .ok()
                .and_then(|s| Blocking::parse(&s))
                .unwrap_or_else(Blocking::for_cpu);
            BLOCKING.store(b.encode(), Ordering::Relaxed);
            b
        }
        v => Blocking::decode(v),
    }
}

/// Forces a blocking for the whole process (benchmarks, tests); `None` returns to the default.
/// Panics on a zero field (a programming error, not input).
pub fn force_blocking(b: Option<Blocking>) {
    if let Some(b) = b {
        assert!(
            b.is_valid(),
            "force_blocking: every field must be in 1..=65535, got {b:?}"
        );
    }
    BLOCKING.store(b.map_or(0, Blocking::encode), Ordering::Relaxed);
}

thread_local! {
    static A_BUF: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::new());
    static B_BUF: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::new());
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
    gemm_blocked(level, blocking(), m, n, k, a, b, c)
}

/// [`gemm`] with an explicit cache blocking (benchmarks and tests; any blocking gives the same
/// result up to rounding). Panics on a zero field of `bl`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_blocked(
    level: Level,
    bl: Blocking,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<f32>,
    b: MatRef<f32>,
    c: &mut [f32],
) {
    assert!(
        bl.kc > 0 && bl.mc_panels > 0 && bl.nc_panels > 0,
        "gemm: blocking {bl:?} has a zero field"
    );
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
    let (mc_max, nc_max, kc_max) = (mr * bl.mc_panels, nr * bl.nc_panels, bl.kc);
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
        for p0 in (0..k).step_by(kc_max) {
            let kc = kc_max.min(k - p0);
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
