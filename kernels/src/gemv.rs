//! Products with a row-major weight `W[N, K]` (how checkpoints store linear layers):
//! `y[M, N] = x[M, K] · Wᵀ`, with weights in f32, bf16 or f16, converted to f32 in registers and
//! accumulated in f32.
//!
//! For the decode case (M = 1, GEMV) and small batches (M ≤ [`SMALL_M`]) the kernel streams each
//! weight row exactly once from memory and reuses it from registers for every row of `x`: these
//! shapes are bound by weight bandwidth, so half-precision weights (half the bytes) run up to twice
//! as fast. Larger M goes to the packed GEMM.
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
    // Tasks of whole weight rows; enough of them to balance the threads.
    let threads = rayon::current_num_threads();
    let rows_per_task = if threads == 1 || n * k < 1 << 16 {
        n
    } else {
        (n / (8 * threads)).clamp(8, 256)
    };
    let rows_per_task = rows_per_task.div_ceil(8) * 8;
    let yp = SendPtr(y.as_mut_ptr());
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
    let task = |t: usize| {
        let xp = xp.get();
        let n0 = t * rows_per_task;
        let n1 = (n0 + rows_per_task).min(n);
        // SAFETY: x, w and y lengths were checked; the task writes only columns n0..n1 of y, and
        // the level is supported.
        unsafe { rows_dispatch(level, m, n, k, ldx, xp, w.as_ptr(), yp, n0, n1) }
    };
    let tasks = n.div_ceil(rows_per_task);
    if tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        task(0);
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

/// Weight rows `n0..n1` against all `m ≤ SMALL_M` rows of x: blocks of 8 weight rows for GEMV
/// (M = 1, pure streaming), 4 rows × groups of 4 x rows otherwise.
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
    let max = if m == 1 { 8 } else { 6 };
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

mod portable {
    use super::Simd;
    use half::{bf16, f16};
    use wide::f32x8;

    pub(crate) struct Portable;
    impl Simd for Portable {
        type V = f32x8;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> f32x8 {
            f32x8::ZERO
        }
        #[inline(always)]
        unsafe fn fma(a: f32x8, b: f32x8, c: f32x8) -> f32x8 {
            a.mul_add(b, c)
        }
        #[inline(always)]
        unsafe fn hsum(v: f32x8) -> f32 {
            v.reduce_add()
        }
        #[inline(always)]
        unsafe fn load_f32(p: *const f32, valid: usize) -> f32x8 {
            let mut a = [0f32; 8];
            std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), valid);
            f32x8::from(a)
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u16, valid: usize) -> f32x8 {
            let mut a = [0f32; 8];
            for (i, v) in a.iter_mut().enumerate().take(valid) {
                *v = bf16::from_bits(*p.add(i)).to_f32();
            }
            f32x8::from(a)
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const u16, valid: usize) -> f32x8 {
            let mut a = [0f32; 8];
            for (i, v) in a.iter_mut().enumerate().take(valid) {
                *v = f16::from_bits(*p.add(i)).to_f32();
            }
            f32x8::from(a)
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fill(n: usize, seed: u64) -> Vec<f32> {
        crate::testing::lcg_values(n, seed, 1.0)
    }

    fn check<W: WeightElem>(
        level: Level,
        threads: usize,
        m: usize,
        n: usize,
        k: usize,
        w: &[W],
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let x = fill(m * k, seed);
        let mut y = vec![f32::NAN; m * n];
        let mut r = vec![0f32; m * n];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| matmul_nt_with(level, m, n, k, &x, w, &mut y));
        matmul_nt_ref(m, n, k, &x, w, &mut r);
        for (i, (a, b)) in y.iter().zip(&r).enumerate() {
            prop_assert!(
                (a - b).abs() <= 1e-5 * (k as f32 + 1.0),
                "{level:?} {:?} t{threads} m{m} n{n} k{k} [{i}] {a} vs {b}",
                W::KIND
            );
        }
        Ok(())
    }

    fn dims() -> impl Strategy<Value = usize> {
        prop_oneof![
            Just(0usize),
            Just(1),
            Just(7),
            Just(8),
            Just(9),
            Just(15),
            Just(16),
            Just(17),
            Just(31),
            Just(33),
            1usize..70
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn matmul_nt_matches_ref(m in prop_oneof![Just(1usize), Just(2), Just(3), Just(4), Just(5), Just(16), Just(17), 0usize..20], n in dims(), k in dims(), seed: u64, two: bool) {
            let w = fill(n * k, !seed);
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            for level in cpu::available() {
                let t = if two { 2 } else { 1 };
                check(level, t, m, n, k, &w, seed)?;
                check(level, t, m, n, k, &wb, seed)?;
                check(level, t, m, n, k, &wh, seed)?;
            }
        }
    }

    #[test]
    fn large_gemv_every_level() {
        let (n, k) = (1000, 4099);
        let w = fill(n * k, 3);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        for level in cpu::available() {
            for m in [1, 16, 40] {
                check(level, 2, m, n, k, &w, 5).unwrap();
                check(level, 2, m, n, k, &wb, 5).unwrap();
            }
        }
    }
}
