//! Products with a row-major weight `W[N, K]` (how checkpoints store linear layers):
//! `y[M, N] = x[M, K] · Wᵀ`, with weights in f32, bf16 or f16, converted to f32 in registers and
//! accumulated in f32.
//!
//! For the decode case (M = 1, GEMV) and small batches (M ≤ [`SMALL_M`]) the kernel streams each
//! weight row exactly once from memory and reuses it from registers for every row of `x`: these
//! shapes are bound by weight bandwidth, so half-precision weights (half the bytes) run up to twice
//! as fast. Larger M goes to the packed GEMM; with bf16 weights, to the bf16 matrix engine
//! ([`gemm::bf16`]: AMX or AVX512-BF16, `x` rounded to bf16) where the CPU has one.
//!
//! ```
//! use half::bf16;
//! use shears_kernels::gemv::matmul_nt;
//! let w: Vec<bf16> = [1.0f32, 2., 3., 4., 5., 6.].iter().map(|&v| bf16::from_f32(v)).collect(); // [2, 3]
//! let x = [1.0f32, 0., -1.]; // [1, 3]
//! let mut y = [0f32; 2];
//! matmul_nt(1, 2, 3, &x, &w, &mut y);
//! assert_eq!(y, [-2.0, -2.0]);
//! ```

use crate::cpu::{self, Level};
use crate::gemm::{self, MatRef};
use crate::send_ptr::{SendConstPtr, SendPtr};
use half::{bf16, f16};
use rayon::prelude::*;

/// Up to this many rows of `x`, the row-streaming kernel is used; above, the packed GEMM.
pub const SMALL_M: usize = 16;

/// Storage type of weight elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightKind {
    /// f32
    F32,
    /// bfloat16
    BF16,
    /// IEEE half
    F16,
}

/// A weight element type: f32, bf16 or f16.
pub trait WeightElem: Copy + Send + Sync + 'static {
    /// Which one.
    const KIND: WeightKind;
    /// Widens to f32.
    fn to_f32(self) -> f32;
}
impl WeightElem for f32 {
    const KIND: WeightKind = WeightKind::F32;
    fn to_f32(self) -> f32 {
        self
    }
}
impl WeightElem for bf16 {
    const KIND: WeightKind = WeightKind::BF16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}
impl WeightElem for f16 {
    const KIND: WeightKind = WeightKind::F16;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// `y[m×n] = x[m×k] · w[n×k]ᵀ` at the detected SIMD level, parallel over rayon's pool.
pub fn matmul_nt<W: WeightElem>(m: usize, n: usize, k: usize, x: &[f32], w: &[W], y: &mut [f32]) {
    matmul_nt_with(cpu::level(), m, n, k, x, w, y)
}

/// [`matmul_nt`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn matmul_nt_with<W: WeightElem>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    w: &[W],
    y: &mut [f32],
) {
    assert_eq!(x.len(), m * k, "matmul_nt: x length");
    assert_eq!(w.len(), n * k, "matmul_nt: w length");
    assert_eq!(y.len(), m * n, "matmul_nt: y length");
    let level = if level.is_supported() {
        level
    } else {
        cpu::detect()
    };
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    if m > SMALL_M {
        return large_m(level, m, n, k, x, w, y);
    }
    small_m(level, m, k, x, &[(w, n, SendPtr(y.as_mut_ptr()))]);
}

/// Several products with one input, `ys[i][m×nᵢ] = x[m×k] · ws[i][nᵢ×k]ᵀ`, as one parallel
/// region: a decoder's Q, K and V projections (or its gate and up projections) cost one fork/join
/// instead of three, and the threads balance over all their rows together. `ns[i]` is the row
/// count of `ws[i]`.
pub fn matmul_nt_many<W: WeightElem>(
    m: usize,
    k: usize,
    x: &[f32],
    ws: &[&[W]],
    ns: &[usize],
    ys: &mut [&mut [f32]],
) {
    let level = cpu::level();
    assert_eq!(x.len(), m * k, "matmul_nt_many: x length");
    assert!(
        ws.len() == ns.len() && ws.len() == ys.len(),
        "matmul_nt_many: {} weights, {} row counts, {} outputs",
        ws.len(),
        ns.len(),
        ys.len()
    );
    for ((w, &n), y) in ws.iter().zip(ns).zip(ys.iter()) {
        assert_eq!(w.len(), n * k, "matmul_nt_many: w length");
        assert_eq!(y.len(), m * n, "matmul_nt_many: y length");
    }
    if m > SMALL_M || k == 0 || m == 0 {
        for ((w, &n), y) in ws.iter().zip(ns).zip(ys.iter_mut()) {
            matmul_nt_with(level, m, n, k, x, w, y);
        }
        return;
    }
    let parts: Vec<(&[W], usize, SendPtr)> = ws
        .iter()
        .zip(ns)
        .zip(ys.iter_mut())
        .map(|((w, &n), y)| (*w, n, SendPtr(y.as_mut_ptr())))
        .collect();
    small_m(level, m, k, x, &parts);
}

/// The row-streaming path for `m ≤ SMALL_M`: `y_i = x · w_iᵀ` for every part `(w_i, n_i, y_i)`,
/// as one parallel region over tasks of whole weight rows. Lengths were checked by the caller.
fn small_m<W: WeightElem>(
    level: Level,
    m: usize,
    k: usize,
    x: &[f32],
    parts: &[(&[W], usize, SendPtr)],
) {
    // Tasks of whole weight rows; enough of them to balance the threads.
    let total: usize = parts.iter().map(|p| p.1).sum();
    let threads = rayon::current_num_threads();
    let rows_per_task = if threads == 1 || total * k < 1 << 16 {
        total.max(1)
    } else {
        (total / (8 * threads)).clamp(8, 256)
    };
    let rows_per_task = rows_per_task.div_ceil(8) * 8;
    // Rows of x a multiple of 4 KiB apart would share L1 sets (and evict each other) when read at
    // the same column; copy them with one cache line of padding between rows.
    let padded;
    let (xp, ldx) = if m > 1 {
        let ldx = k.next_multiple_of(16) + 16;
        let mut v = vec![0f32; m * ldx];
        for (dst, src) in v.chunks_mut(ldx).zip(x.chunks(k)) {
            dst[..k].copy_from_slice(src);
        }
        padded = v;
        (SendConstPtr(padded.as_ptr()), ldx)
    } else {
        (SendConstPtr(x.as_ptr()), k)
    };
    // (part, first row, end row) per task.
    let mut tasks = Vec::new();
    for (i, &(_, n, _)) in parts.iter().enumerate() {
        for n0 in (0..n).step_by(rows_per_task) {
            tasks.push((i, n0, (n0 + rows_per_task).min(n)));
        }
    }
    let run = |&(i, n0, n1): &(usize, usize, usize)| {
        let (w, n, y) = parts[i];
        // SAFETY: the callers checked x, w and y lengths; each task writes only columns n0..n1
        // of its part's y, no two tasks share a (part, column) pair, and the level is supported.
        unsafe { rows_dispatch(level, m, n, k, ldx, xp.get(), w.as_ptr(), y, n0, n1) }
    };
    if tasks.len() > 1 {
        tasks.par_iter().for_each(run);
    } else {
        tasks.iter().for_each(run);
    }
}

/// Plain reference for [`matmul_nt`].
pub fn matmul_nt_ref<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    w: &[W],
    y: &mut [f32],
) {
    assert_eq!(y.len(), m * n, "matmul_nt_ref: y length");
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for p in 0..k {
                acc += x[i * k + p] * w[j * k + p].to_f32();
            }
            y[i * n + j] = acc;
        }
    }
}

fn large_m<W: WeightElem>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    w: &[W],
    y: &mut [f32],
) {
    let xm = MatRef::new(x, k, 1);
    if W::KIND == WeightKind::F32 {
        // SAFETY: W is f32 (KIND says so), identical layout.
        let w32 = unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<f32>(), w.len()) };
        return gemm::f32::gemm(level, m, n, k, xm, MatRef::new(w32, 1, k), y);
    }
    if W::KIND == WeightKind::BF16 && gemm::bf16::engine() != gemm::bf16::Engine::Off {
        // SAFETY: W is bf16 (KIND says so), identical layout.
        let wb = unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<bf16>(), w.len()) };
        return gemm::bf16::matmul_nt_bf16(m, n, k, x, wb, y);
    }
    // Half weights: widen a block of rows at a time, multiply, scatter into y's columns.
    const NB: usize = 512;
    let mut wf = Vec::new();
    let mut tmp = Vec::new();
    for n0 in (0..n).step_by(NB) {
        let nb = NB.min(n - n0);
        wf.clear();
        wf.par_extend(w[n0 * k..(n0 + nb) * k].par_iter().map(|v| v.to_f32()));
        tmp.resize(m * nb, 0.0);
        gemm::f32::gemm(level, m, nb, k, xm, MatRef::new(&wf, 1, k), &mut tmp);
        for i in 0..m {
            y[i * n + n0..i * n + n0 + nb].copy_from_slice(&tmp[i * nb..(i + 1) * nb]);
        }
    }
}

/// # Safety
/// Pointers valid for the checked lengths; `level` supported; columns `n0..n1` owned by caller.
#[allow(clippy::too_many_arguments)]
unsafe fn rows_dispatch<W: WeightElem>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    ldx: usize,
    x: *const f32,
    w: *const W,
    y: SendPtr,
    n0: usize,
    n1: usize,
) {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => x86::rows_avx512(m, n, k, ldx, x, w, y.get(), n0, n1),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => x86::rows_avx2(m, n, k, ldx, x, w, y.get(), n0, n1),
        _ => rows::<portable::Portable, W>(m, n, k, ldx, x, w, y.get(), n0, n1),
    }
}

/// Vector operations one SIMD level provides to the row-streaming kernel.
pub(crate) trait Simd {
    type V: Copy;
    const LANES: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn hsum(v: Self::V) -> f32;
    /// Loads `valid ≤ LANES` elements, zero-filling the rest.
    unsafe fn load_f32(p: *const f32, valid: usize) -> Self::V;
    unsafe fn load_bf16(p: *const u16, valid: usize) -> Self::V;
    unsafe fn load_f16(p: *const u16, valid: usize) -> Self::V;
    /// Hints that the cache line at `p` will be read soon (may be a no-op).
    #[inline(always)]
    unsafe fn prefetch(_p: *const u8) {}
}

#[inline(always)]
unsafe fn load_w<S: Simd, W: WeightElem>(p: *const W, valid: usize) -> S::V {
    match W::KIND {
        WeightKind::F32 => S::load_f32(p.cast(), valid),
        WeightKind::BF16 => S::load_bf16(p.cast(), valid),
        WeightKind::F16 => S::load_f16(p.cast(), valid),
    }
}

/// Adds `Σ_{p<len} x[g, p]·w[r, p]` into the vector accumulators `acc[g][r]` for `G` rows of x
/// (row stride `ld`) and `R` weight rows (row stride `ld`).
#[inline(always)]
unsafe fn tile_acc<S: Simd, W: WeightElem, const R: usize, const G: usize>(
    len: usize,
    ld: usize,
    ldx: usize,
    x: *const f32,
    w: *const W,
    acc: &mut [[S::V; R]; 4],
    prefetch: Option<*const u8>,
) {
    let mut a: [[S::V; R]; G] = [[S::zero(); R]; G];
    a.copy_from_slice(&acc[..G]);
    let mut kk = 0;
    // The next R weight rows (contiguous in memory) are fetched toward L2 as one linear sweep,
    // spread over this block's steps, so the next block does not start with a burst of misses.
    let lines = (R * std::mem::size_of::<W>() * S::LANES).div_ceil(64);
    while kk + S::LANES <= len {
        if let Some(pf) = prefetch {
            let base = pf.add((kk / S::LANES) * lines * 64);
            for j in 0..lines {
                S::prefetch(base.add(j * 64));
            }
        }
        let mut wv = [S::zero(); R];
        for (r, v) in wv.iter_mut().enumerate() {
            *v = load_w::<S, W>(w.add(r * ld + kk), S::LANES);
        }
        for (g, ag) in a.iter_mut().enumerate() {
            let xv = S::load_f32(x.add(g * ldx + kk), S::LANES);
            for r in 0..R {
                ag[r] = S::fma(wv[r], xv, ag[r]);
            }
        }
        kk += S::LANES;
    }
    if kk < len {
        let valid = len - kk;
        let mut wv = [S::zero(); R];
        for (r, v) in wv.iter_mut().enumerate() {
            *v = load_w::<S, W>(w.add(r * ld + kk), valid);
        }
        for (g, ag) in a.iter_mut().enumerate() {
            let xv = S::load_f32(x.add(g * ldx + kk), valid);
            for r in 0..R {
                ag[r] = S::fma(wv[r], xv, ag[r]);
            }
        }
    }
    acc[..G].copy_from_slice(&a);
}

/// Depth of a k block for M > 1, in weight elements: x's block (16 rows) and the weight rows stay
/// in L1 together. Smaller for f32 weights, whose rows are twice as many bytes (measured: f32 at
/// 128 ran 248 GFLOP/s against 206 at 512; bf16 was best at 256).
const fn kb(kind: WeightKind) -> usize {
    match kind {
        WeightKind::F32 => 128,
        _ => 256,
    }
}

/// All rows of x against `R` weight rows at `w`, writing `y[g, r]` (row stride `n`).
#[inline(always)]
unsafe fn weight_block<S: Simd, W: WeightElem, const R: usize>(
    m: usize,
    n: usize,
    k: usize,
    ldx: usize,
    x: *const f32,
    w: *const W,
    y: *mut f32,
) {
    let mut acc = [[[S::zero(); R]; 4]; SMALL_M.div_ceil(4)];
    let groups = m.div_ceil(4);
    let mut k0 = 0;
    while k0 < k {
        let len = (k - k0).min(if m == 1 { k } else { kb(W::KIND) });
        for (grp, a) in acc.iter_mut().enumerate().take(groups) {
            let xg = x.add(grp * 4 * ldx + k0);
            // Where this chunk's share of the linear prefetch sweep of the next block starts.
            let lines = (R * std::mem::size_of::<W>() * S::LANES).div_ceil(64);
            let pf = Some(w.add(R * k).cast::<u8>().add(k0 / S::LANES * lines * 64));
            let wk = w.add(k0);
            match (m - grp * 4).min(4) {
                4 => tile_acc::<S, W, R, 4>(len, k, ldx, xg, wk, a, pf.filter(|_| grp == 0)),
                3 => tile_acc::<S, W, R, 3>(len, k, ldx, xg, wk, a, pf.filter(|_| grp == 0)),
                2 => tile_acc::<S, W, R, 2>(len, k, ldx, xg, wk, a, pf.filter(|_| grp == 0)),
                _ => tile_acc::<S, W, R, 1>(len, k, ldx, xg, wk, a, pf.filter(|_| grp == 0)),
            }
        }
        k0 += len;
    }
    for i in 0..m {
        for (r, &v) in acc[i / 4][i % 4].iter().enumerate() {
            *y.add(i * n + r) = S::hsum(v);
        }
    }
}

/// `x · w` for one weight row of `k` elements: the M = 1 (decode) case. The row is read front to
/// back, so each thread's rows form one sequential stream (x stays in L1), with four accumulators
/// to hide the FMA latency. Each row first asks for the lines [`GEMV_AHEAD`] bytes further on
/// with a non-temporal prefetch, so the stream keeps more misses in flight than the hardware
/// prefetchers alone. (Blocks of 8 rows, read as 8 interleaved streams with a T1 prefetch sweep
/// of the next block, measured slower in decode on Zen 5, time-matched against the read probe:
/// the model's GEMVs ran at 0.80-0.86 of the probe against 0.94-1.03 one row at a time.)
#[inline(always)]
unsafe fn gemv_row<S: Simd, W: WeightElem>(k: usize, x: *const f32, w: *const W) -> f32 {
    let l = S::LANES;
    cpu::prefetch_once(
        w.cast::<u8>().wrapping_add(gemv_ahead()),
        k * std::mem::size_of::<W>(),
    );
    let mut a = [S::zero(); 4];
    let mut kk = 0;
    while kk + 4 * l <= k {
        for (u, au) in a.iter_mut().enumerate() {
            let o = kk + u * l;
            *au = S::fma(load_w::<S, W>(w.add(o), l), S::load_f32(x.add(o), l), *au);
        }
        kk += 4 * l;
    }
    while kk < k {
        let valid = (k - kk).min(l);
        let xv = S::load_f32(x.add(kk), valid);
        a[0] = S::fma(load_w::<S, W>(w.add(kk), valid), xv, a[0]);
        kk += valid;
    }
    S::hsum(S::add(S::add(a[0], a[1]), S::add(a[2], a[3])))
}

/// How far ahead of the row being read, in bytes, [`gemv_row`] prefetches. Measured on Zen 5 in
/// SmolLM2-135M decode, each setting interleaved step by step with the others and a 256 MiB read
/// probe: against no software prefetch, 2048 / 3072 / 4096 bytes ahead with the non-temporal
/// hint gave +5.5 / +5.6 / +3 % tokens/s in f32, and +3-4 % in bf16 (2048 and 3072) while the
/// host read about 40 GB/s; when it read 53 GB/s, bf16 decode stayed near 38 GB/s with or
/// without. The T0 hint gave about two thirds of the gain. Against this setting, 20 further
/// rounds of the same interleaving (128 steps each, f32 and bf16) measured 6144 / 12288 bytes
/// ahead (NTA) at −2.7 / −4.6 % in f32 and −1.3 / −2.8 % in bf16, T0 at 6144 bytes −5.8 / −2.8 %,
/// T1 at 8192 bytes −10.6 / −6.8 %, and no better in the rounds where the host read over 50 GB/s.
const GEMV_AHEAD: usize = 3072;

/// [`GEMV_AHEAD`], or `SHEARS_GEMV_AHEAD` (bytes, 0..=65536) read once at start-up, for tuning
/// on a machine where the default was not measured.
#[inline(always)]
fn gemv_ahead() -> usize {
    use std::sync::OnceLock;
    static AHEAD: OnceLock<usize> = OnceLock::new();
    *AHEAD.get_or_init(|| {
        std::env::var("SHEARS_GEMV_AHEAD")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v: &usize| v <= 65536)
            .unwrap_or(GEMV_AHEAD)
    })
}

/// Weight rows `n0..n1` against all `m ≤ SMALL_M` rows of x: one row at a time for GEMV (M = 1,
/// pure streaming), 6 weight rows × groups of 4 x rows otherwise.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows<S: Simd, W: WeightElem>(
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
    if m == 1 {
        // The task's first rows, which the previous rows' prefetches did not cover.
        cpu::prefetch_once(w.add(n0 * k).cast(), gemv_ahead());
        for j in n0..n1 {
            *y.add(j) = gemv_row::<S, W>(k, x, w.add(j * k));
        }
        return;
    }
    let max = 6;
    let mut j = n0;
    while j < n1 {
        let (wj, yj) = (w.add(j * k), y.add(j));
        let r = (n1 - j).min(max);
        match r {
            8 => weight_block::<S, W, 8>(m, n, k, ldx, x, wj, yj),
            7 => weight_block::<S, W, 7>(m, n, k, ldx, x, wj, yj),
            6 => weight_block::<S, W, 6>(m, n, k, ldx, x, wj, yj),
            5 => weight_block::<S, W, 5>(m, n, k, ldx, x, wj, yj),
            4 => weight_block::<S, W, 4>(m, n, k, ldx, x, wj, yj),
            3 => weight_block::<S, W, 3>(m, n, k, ldx, x, wj, yj),
            2 => weight_block::<S, W, 2>(m, n, k, ldx, x, wj, yj),
            _ => weight_block::<S, W, 1>(m, n, k, ldx, x, wj, yj),
        }
        j += r;
    }
}

mod portable;

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;
