//! bf16 products on the CPU's matrix engines: `y[m×n] = x[m×k] · w[n×k]ᵀ` with bf16 inputs and
//! f32 accumulation, for the compute-bound shapes (prefill, evaluation, calibration passes).
//!
//! Two engines, chosen at run time ([`engine`]):
//! - **AMX** (Intel Sapphire Rapids and later): `TDPBF16PS` on 16×16 f32 tiles. Linux hands the
//!   tile registers to a process only after it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//!   XFEATURE_XTILEDATA)`); the request is made once, and a refusal (old kernel, a hypervisor that
//!   hides the state) falls back to the next engine.
//! - **AVX512-BF16** (Zen 4/5, Cooper Lake and later Xeons): `VDPBF16PS` on 512-bit registers.
//!
//! The environment variable `SHEARS_BF16_ENGINE` (`off`, `avx512bf16`, `amx`) caps the choice at
//! start-up and [`force_engine`] overrides it (benchmarks, tests).
//!
//! The weight is read in place (row-major `[n, k]`, the checkpoint layout): it is the engine's
//! first operand, so no per-call packing of the large matrix is needed, and the output is formed
//! transposed in registers (`yᵀ = w · xᵀ`). Only `x` (converted from f32 with round-to-nearest-even)
//! is packed, in the pair-interleaved layout the engines read as their second operand.
//!
//! ```
//! use half::bf16;
//! use shears_kernels::gemm::bf16::{matmul_nt_bf16, matmul_nt_bf16_ref};
//! let (m, n, k) = (40, 24, 70);
//! let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
//! let w: Vec<bf16> = (0..n * k).map(|i| bf16::from_f32((i % 5) as f32 * 0.5)).collect();
//! let (mut y, mut r) = (vec![0f32; m * n], vec![0f32; m * n]);
//! matmul_nt_bf16(m, n, k, &x, &w, &mut y); // any engine, or the portable loop
//! matmul_nt_bf16_ref(m, n, k, &x, &w, &mut r);
//! assert_eq!(y, r); // small integers and halves: exact in bf16 and in f32
//! ```

use crate::send_ptr::SendPtr;
use half::bf16;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// A bf16 matrix engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Engine {
    /// No engine: bf16 weights are widened to f32 and run through the f32 GEMM.
    Off,
    /// `VDPBF16PS` on AVX-512 registers.
    Avx512Bf16,
    /// Intel AMX tiles, `TDPBF16PS`.
    Amx,
}

impl Engine {
    /// Short name for reports (`off`, `avx512bf16`, `amx`).
    pub fn name(self) -> &'static str {
        match self {
            Engine::Off => "off",
            Engine::Avx512Bf16 => "avx512bf16",
            Engine::Amx => "amx",
        }
    }

    /// Parses a [`name`](Self::name).
    pub fn parse(s: &str) -> Option<Engine> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "none" | "f32" => Some(Engine::Off),
            "avx512bf16" | "avx512-bf16" | "avx512_bf16" => Some(Engine::Avx512Bf16),
            "amx" => Some(Engine::Amx),
            _ => None,
        }
    }

    /// True when this CPU (and, for AMX, the operating system) can run the engine.
    pub fn is_supported(self) -> bool {
        match self {
            Engine::Off => true,
            Engine::Avx512Bf16 => avx512bf16_supported(),
            Engine::Amx => amx_supported(),
        }
    }
}

/// The best engine this machine runs.
pub fn detect() -> Engine {
    [Engine::Amx, Engine::Avx512Bf16]
        .into_iter()
        .find(|e| e.is_supported())
        .unwrap_or(Engine::Off)
}

/// Every engine this machine runs, best last (always starts with [`Engine::Off`]).
pub fn available() -> Vec<Engine> {
    [Engine::Off, Engine::Avx512Bf16, Engine::Amx]
        .into_iter()
        .filter(|e| e.is_supported())
        .collect()
}

static FORCED: AtomicU8 = AtomicU8::new(0);

fn encode(e: Engine) -> u8 {
    match e {
        Engine::Off => 1,
        Engine::Avx512Bf16 => 2,
        Engine::Amx => 3,
    }
}

/// The engine bf16 products use: the one set by [`force_engine`] if any, else [`detect`], capped
/// by `SHEARS_BF16_ENGINE` at start-up.
pub fn engine() -> Engine {
    match FORCED.load(Ordering::Relaxed) {
        1 => Engine::Off,
        2 => Engine::Avx512Bf16,
        3 => Engine::Amx,
        _ => {
            let best = detect();
            let e = std::env::var("SHEARS_BF16_ENGINE")
                .ok()
                .and_then(|s| Engine::parse(&s))
                .map_or(best, |e| e.min(best));
            FORCED.store(encode(e), Ordering::Relaxed);
            e
        }
    }
}

/// Forces an engine for the whole process; `None` returns to detection. An engine this machine
/// cannot run is refused and returns false.
pub fn force_engine(e: Option<Engine>) -> bool {
    match e {
        Some(e) if !e.is_supported() => false,
        Some(e) => {
            FORCED.store(encode(e), Ordering::Relaxed);
            true
        }
        None => {
            FORCED.store(0, Ordering::Relaxed);
            true
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512bf16_supported() -> bool {
    crate::cpu::Level::Avx512.is_supported() && is_x86_feature_detected!("avx512bf16")
}
#[cfg(not(target_arch = "x86_64"))]
fn avx512bf16_supported() -> bool {
    false
}

/// CPUID says AMX-TILE and AMX-BF16, and Linux granted the tile data state to this process.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_supported() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        use std::arch::x86_64::__cpuid_count;
        let max = __cpuid_count(0, 0).eax;
        if max < 7 {
            return false;
        }
        let edx = __cpuid_count(7, 0).edx;
        let (amx_bf16, amx_tile) = (edx >> 22 & 1 == 1, edx >> 24 & 1 == 1);
        if !(amx_bf16 && amx_tile) {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        const SYS_ARCH_PRCTL: i64 = 158;
        let ret: i64;
        // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) only changes which extended states the kernel
        // lets this process use; it reads and writes no user memory.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack)
            );
        }
        ret == 0
    })
}
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn amx_supported() -> bool {
    false
}

/// Rounds f32 to bf16, nearest-even, NaN kept a (quiet) NaN: the same bits as
/// [`half::bf16::from_f32`], written so the compiler vectorises it.
#[inline(always)]
fn round_bf16(v: f32) -> u16 {
    let b = v.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        ((b >> 16) | 0x40) as u16
    } else {
        ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// Plain reference: every `x` element rounded to bf16, products and sums in f32, sequential.
pub fn matmul_nt_bf16_ref(m: usize, n: usize, k: usize, x: &[f32], w: &[bf16], y: &mut [f32]) {
    assert_eq!(x.len(), m * k, "matmul_nt_bf16_ref: x length");
    assert_eq!(w.len(), n * k, "matmul_nt_bf16_ref: w length");
    assert_eq!(y.len(), m * n, "matmul_nt_bf16_ref: y length");
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for p in 0..k {
                acc += bf16::from_f32(x[i * k + p]).to_f32() * w[j * k + p].to_f32();
            }
            y[i * n + j] = acc;
        }
    }
}

/// `y[m×n] = x[m×k] · w[n×k]ᵀ` with `x` rounded to bf16 and f32 accumulation, on [`engine`]'s
/// matrix engine; with [`Engine::Off`] a portable loop of the same arithmetic. Parallel over
/// rayon's pool.
pub fn matmul_nt_bf16(m: usize, n: usize, k: usize, x: &[f32], w: &[bf16], y: &mut [f32]) {
    matmul_nt_bf16_with(engine(), m, n, k, x, w, y)
}

/// [`matmul_nt_bf16`] with weight rows `ldw ≥ k` elements apart (`w` holds `(n − 1)·ldw + k`
/// elements or more): a block of columns of a wider matrix, without a copy where the shape
/// allows.
pub fn matmul_nt_bf16_strided(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    w: &[bf16],
    ldw: usize,
    y: &mut [f32],
) {
    assert!(ldw >= k, "matmul_nt_bf16_strided: ldw {ldw} < k {k}");
    assert!(
        n == 0 || w.len() >= (n - 1) * ldw + k,
        "matmul_nt_bf16_strided: w length"
    );
    assert_eq!(x.len(), m * k, "matmul_nt_bf16_strided: x length");
    assert_eq!(y.len(), m * n, "matmul_nt_bf16_strided: y length");
    dispatch(engine(), m, n, k, x, w, ldw, y)
}

/// Runs a product whose lengths the caller checked on `e` (supported), `w`'s rows `ldw` apart.
fn dispatch(
    e: Engine,
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    w: &[bf16],
    ldw: usize,
    y: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    // SAFETY: bf16 is a transparent u16.
    let wu = unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u16>(), w.len()) };
    match e {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller passes a supported engine.
        Engine::Amx => unsafe { drive::<amx::Amx>(m, n, k, x, wu, ldw, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Engine::Avx512Bf16 => unsafe { drive::<avx512::Avx512Bf16>(m, n, k, x, wu, ldw, y) },
        _ if ldw == k => portable(n, k, x, &w[..n * k], y),
        _ => {
            let wc: Vec<bf16> = (0..n)
                .flat_map(|j| w[j * ldw..j * ldw + k].iter().copied())
                .collect();
            portable(n, k, x, &wc, y)
        }
    }
}

/// [`matmul_nt_bf16`] on an explicit engine (one this machine lacks falls back to the best it
/// has).
pub fn matmul_nt_bf16_with(
    e: Engine,
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    w: &[bf16],
    y: &mut [f32],
) {
    assert_eq!(x.len(), m * k, "matmul_nt_bf16: x length");
    assert_eq!(w.len(), n * k, "matmul_nt_bf16: w length");
    assert_eq!(y.len(), m * n, "matmul_nt_bf16: y length");
    let e = if e.is_supported() { e } else { detect() };
    dispatch(e, m, n, k, x, w, k, y)
}

/// The engine-less path: rows of `x` rounded once, then f32 dot products, parallel over rows.
fn portable(n: usize, k: usize, x: &[f32], w: &[bf16], y: &mut [f32]) {
    let xr: Vec<f32> = x
        .iter()
        .map(|&v| f32::from_bits((round_bf16(v) as u32) << 16))
        .collect();
    y.par_chunks_mut(n).enumerate().for_each(|(i, yr)| {
        let xi = &xr[i * k..(i + 1) * k];
        for (j, out) in yr.iter_mut().enumerate() {
            let wj = &w[j * k..(j + 1) * k];
            *out = xi.iter().zip(wj).map(|(a, b)| a * b.to_f32()).sum();
        }
    });
}

/// `x` rounded to bf16 and laid out as the engines' second operand: for every 16-row block of
/// `x` (zero-padded to `mt` blocks) and every 32-column block of `k` (zero-padded to `kt` blocks)
/// one 16×16 tile of u32 pairs, `tile[p][j] = (x[j][2p], x[j][2p + 1])`, tiles contiguous with
/// the k blocks of a row block adjacent.
fn pack_x(m: usize, k: usize, x: &[f32], mt: usize, kt: usize) -> Vec<u32> {
    let mut out = vec![0u32; mt * kt * 256];
    #[cfg(target_arch = "x86_64")]
    let fast = avx512bf16_supported();
    out.par_chunks_mut(kt * 256)
        .enumerate()
        .for_each(|(mb, blk)| {
            #[cfg(target_arch = "x86_64")]
            if fast && (mb + 1) * 16 <= m {
                // SAFETY: AVX512-BF16 checked; rows mb·16 .. mb·16 + 16 of x exist (length k).
                unsafe { pack_rows16(k, &x[mb * 16 * k..(mb + 1) * 16 * k], blk) };
                return;
            }
            let mut row = vec![0u16; kt * 32];
            for j in 0..16 {
                let i = mb * 16 + j;
                if i >= m {
                    break;
                }
                for (d, &s) in row.iter_mut().zip(&x[i * k..(i + 1) * k]) {
                    *d = round_bf16(s);
                }
                for (kb, tile) in blk.chunks_exact_mut(256).enumerate() {
                    let src = &row[kb * 32..kb * 32 + 32];
                    for p in 0..16 {
                        tile[p * 16 + j] = src[2 * p] as u32 | (src[2 * p + 1] as u32) << 16;
                    }
                }
            }
        });
    out
}

/// [`pack_x`] for one block of 16 full rows `x16` (`16 × k`): every whole 32-column block is
/// converted with `VCVTNE2PS2BF16` (nearest-even, as [`round_bf16`]; denormal inputs become
/// zero, as the engines treat them anyway) and transposed as 32-bit pairs with [`transpose16`];
/// a last partial block goes the scalar way.
///
/// # Safety
/// AVX512-BF16 present; `blk` holds `k.div_ceil(32)` zeroed tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_rows16(k: usize, x16: &[f32], blk: &mut [u32]) {
    use std::arch::x86_64::*;
    let full = k / 32;
    let mut pairs = [0u32; 256];
    for kb in 0..full {
        for j in 0..16 {
            let src = x16.as_ptr().add(j * k + kb * 32);
            let lo = _mm512_loadu_ps(src);
            let hi = _mm512_loadu_ps(src.add(16));
            // Lower 16 bf16 from the second operand, upper 16 from the first.
            let v: __m512i = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(pairs.as_mut_ptr().add(j * 16).cast(), v);
        }
        // pairs[j][p] → tile[p][j]
        transpose16(
            pairs.as_ptr().cast(),
            16,
            blk.as_mut_ptr().add(kb * 256).cast(),
            16,
        );
    }
    if full * 32 < k {
        let tile = &mut blk[full * 256..(full + 1) * 256];
        for j in 0..16 {
            let row = &x16[j * k + full * 32..(j + 1) * k];
            let mut b = [0u16; 32];
            for (d, &v) in b.iter_mut().zip(row) {
                *d = round_bf16(v);
            }
            for p in 0..16 {
                tile[p * 16 + j] = b[2 * p] as u32 | (b[2 * p + 1] as u32) << 16;
            }
        }
    }
}

/// `w` zero-padded to `np` rows and `kp` columns (for shapes the tile loads cannot read in
/// place).
fn pad_w(n: usize, k: usize, w: &[u16], ldw: usize, np: usize, kp: usize) -> Vec<u16> {
    let mut out = vec![0u16; np * kp];
    for (j, d) in out.chunks_exact_mut(kp).take(n).enumerate() {
        d[..k].copy_from_slice(&w[j * ldw..j * ldw + k]);
    }
    out
}

/// Rows of `x` per cache block: the packed block (`MC × k` bf16) is reused from L2 across every
/// weight panel of a task.
const MC_BYTES: usize = 1 << 20;

/// Splits the 32-row weight panels into tasks and runs `body(first panel, end panel)` on rayon's
/// pool.
fn for_panels(panels: usize, body: impl Fn(usize, usize) + Sync) {
    let threads = rayon::current_num_threads();
    let per = panels.div_ceil(4 * threads).max(1);
    let tasks: Vec<(usize, usize)> = (0..panels)
        .step_by(per)
        .map(|p0| (p0, (p0 + per).min(panels)))
        .collect();
    if tasks.len() > 1 {
        tasks.par_iter().for_each(|&(a, b)| body(a, b));
    } else {
        tasks.iter().for_each(|&(a, b)| body(a, b));
    }
}

/// Stores the transposed 32×32 block `t` (`t[i][j]` = output row `m0 + j`, column `n0 + i`)
/// into `y`, clipped to `m` rows and `n` columns.
///
/// # Safety
/// `y` valid for `m × n` floats; the caller owns columns `n0..n0 + 32` of it.
#[inline(always)]
unsafe fn store_transposed(t: &[f32; 1024], y: *mut f32, m: usize, n: usize, m0: usize, n0: usize) {
    let rows = 32.min(m - m0);
    let cols = 32.min(n - n0);
    #[cfg(target_arch = "x86_64")]
    if rows == 32 && cols == 32 {
        // Both engines run only where AVX-512 F is present.
        for (qi, qj) in [(0, 0), (0, 16), (16, 0), (16, 16)] {
            transpose16(
                t.as_ptr().add(qi * 32 + qj),
                32,
                y.add((m0 + qj) * n + n0 + qi),
                n,
            );
        }
        return;
    }
    for j in 0..rows {
        let dst = y.add((m0 + j) * n + n0);
        for i in 0..cols {
            *dst.add(i) = t[i * 32 + j];
        }
    }
}

/// What an engine provides to [`drive`]: per-thread set-up and tear-down, and one 32×32 output
/// block over the whole of `k`, transposed (`t[i][j]`: weight row `i`, `x` row `j`).
trait Engine32 {
    /// Before a task's first block on its thread.
    ///
    /// # Safety
    /// The engine is supported.
    unsafe fn begin() {}
    /// # Safety
    /// The engine is supported and [`begin`](Self::begin) ran on this thread; `w0` valid for 32
    /// rows of stride `ldw` and `kt × 32` columns; `x0` valid for `2 × kt` packed tiles.
    unsafe fn block(kt: usize, w0: *const u16, ldw: usize, x0: *const u32, t: &mut [f32; 1024]);
    /// After a task's last block.
    ///
    /// # Safety
    /// The engine is supported.
    unsafe fn end() {}
}

/// The loops both engines share: `x` packed once ([`pack_x`]), `w` read in place (or padded when
/// its shape is not a multiple of 32), tasks of 32-row weight panels on rayon's pool; in a task,
/// blocks of [`MC_BYTES`] of packed `x` rows (reused from L2 across the task's panels), and per
/// panel every 32 rows of the block.
///
/// # Safety
/// `E` is supported on this machine; lengths checked by the caller; `m, n, k > 0`.
unsafe fn drive<E: Engine32>(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    w: &[u16],
    ldw_in: usize,
    y: &mut [f32],
) {
    let kt = k.div_ceil(32);
    let mt = m.div_ceil(32) * 2;
    let xp = pack_x(m, k, x, mt, kt);
    let np = n.next_multiple_of(32);
    let padded;
    let (wp, ldw) = if n.is_multiple_of(32) && k.is_multiple_of(32) {
        (w, ldw_in)
    } else {
        padded = pad_w(n, k, w, ldw_in, np, kt * 32);
        (&padded[..], kt * 32)
    };
    let mc = (MC_BYTES / (kt * 64 * 32)).max(1) * 32; // rows of x per block
    let yp = SendPtr(y.as_mut_ptr());
    let xp = &xp[..];
    for_panels(np / 32, |p0, p1| {
        let mut t = [0f32; 1024];
        // SAFETY: the engine is supported (caller); every block reads inside `wp` (np × ldw)
        // and `xp` (mt × kt tiles); each task stores only its own panels' columns of y.
        unsafe {
            E::begin();
            for m0 in (0..m).step_by(mc) {
                let m1 = (m0 + mc).min(m);
                for p in p0..p1 {
                    let w0 = wp.as_ptr().add(p * 32 * ldw);
                    for mm in (m0..m1).step_by(32) {
                        let x0 = xp.as_ptr().add((mm / 16) * kt * 256);
                        E::block(kt, w0, ldw, x0, &mut t);
                        store_transposed(&t, yp.get(), m, n, mm, p * 32);
                    }
                }
            }
            E::end();
        }
    });
}

/// Writes the transpose of the 16×16 block at `src` (row stride `lds`) to `dst` (row stride
/// `ldd`): four rounds of in-register shuffles instead of 256 scalar moves.
///
/// # Safety
/// AVX-512 F present; both blocks valid for 16 rows of 16 floats at their strides.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    use std::arch::x86_64::*;
    let mut r: [__m512; 16] = [_mm512_setzero_ps(); 16];
    for (i, v) in r.iter_mut().enumerate() {
        *v = _mm512_loadu_ps(src.add(i * lds));
    }
    // Interleave 32-bit elements of row pairs.
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // Interleave 64-bit pairs of the results four rows apart.
    let pd = _mm512_castps_pd;
    let ps = _mm512_castpd_ps;
    for b in 0..4 {
        let (a0, a1, a2, a3) = (t[4 * b], t[4 * b + 1], t[4 * b + 2], t[4 * b + 3]);
        r[4 * b] = ps(_mm512_unpacklo_pd(pd(a0), pd(a2)));
        r[4 * b + 1] = ps(_mm512_unpackhi_pd(pd(a0), pd(a2)));
        r[4 * b + 2] = ps(_mm512_unpacklo_pd(pd(a1), pd(a3)));
        r[4 * b + 3] = ps(_mm512_unpackhi_pd(pd(a1), pd(a3)));
    }
    // 128-bit lanes: even and odd lanes of row groups 4 apart, then 8 apart.
    for h in 0..2 {
        for i in 0..4 {
            let (a, b) = (r[8 * h + i], r[8 * h + 4 + i]);
            t[8 * h + i] = _mm512_shuffle_f32x4::<0x88>(a, b);
            t[8 * h + 4 + i] = _mm512_shuffle_f32x4::<0xdd>(a, b);
        }
    }
    for i in 0..8 {
        r[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[8 + i]);
        r[8 + i] = _mm512_shuffle_f32x4::<0xdd>(t[i], t[8 + i]);
    }
    for (i, v) in r.iter().enumerate() {
        _mm512_storeu_ps(dst.add(i * ldd), *v);
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use super::*;
    use std::arch::asm;

    /// Tile configuration: palette 1, eight tiles of 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    fn config() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
            c[48 + t] = 16; // rows
        }
        TileConfig(c)
    }

    pub(super) struct Amx;
    impl Engine32 for Amx {
        unsafe fn begin() {
            let cfg = config();
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack));
        }
        unsafe fn block(
            kt: usize,
            w0: *const u16,
            ldw: usize,
            x0: *const u32,
            t: &mut [f32; 1024],
        ) {
            block(kt, w0, ldw, x0, t)
        }
        unsafe fn end() {
            asm!("tilerelease", options(nostack));
        }
    }

    /// One 32×32 output block over the whole of `k`: tiles 0-3 accumulate, 4-5 hold two
    /// 16-row weight tiles, 6-7 two packed `x` tiles; the result, transposed, lands in `t`.
    ///
    /// # Safety
    /// AMX granted and the tile configuration loaded; `w0` valid for 32 rows of stride `ldw`
    /// and `kt × 32` columns; `x0` valid for `2 × kt` packed tiles.
    #[inline(always)]
    unsafe fn block(kt: usize, w0: *const u16, ldw: usize, x0: *const u32, t: &mut [f32; 1024]) {
        let sw = ldw * 2;
        let w1 = w0.add(16 * ldw);
        let x1 = x0.add(kt * 256);
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack)
        );
        for kb in 0..kt {
            asm!(
                "tileloadd tmm4, [{w0} + {sw}*1]",
                "tileloadd tmm5, [{w1} + {sw}*1]",
                "tileloadd tmm6, [{x0} + {s64}*1]",
                "tileloadd tmm7, [{x1} + {s64}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                w0 = in(reg) w0.add(kb * 32),
                w1 = in(reg) w1.add(kb * 32),
                x0 = in(reg) x0.add(kb * 256),
                x1 = in(reg) x1.add(kb * 256),
                sw = in(reg) sw,
                s64 = in(reg) 64usize,
                options(nostack, readonly)
            );
        }
        let tp = t.as_mut_ptr();
        // t[i][j]: i = weight row (output column), j = x row; row stride 32 floats.
        asm!(
            "tilestored [{a} + {s}*1], tmm0",
            "tilestored [{b} + {s}*1], tmm1",
            "tilestored [{c} + {s}*1], tmm2",
            "tilestored [{d} + {s}*1], tmm3",
            a = in(reg) tp,
            b = in(reg) tp.add(16),
            c = in(reg) tp.add(16 * 32),
            d = in(reg) tp.add(16 * 32 + 16),
            s = in(reg) 128usize,
            options(nostack)
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    pub(super) struct Avx512Bf16;
    impl Engine32 for Avx512Bf16 {
        unsafe fn block(
            kt: usize,
            w0: *const u16,
            ldw: usize,
            x0: *const u32,
            t: &mut [f32; 1024],
        ) {
            for half in 0..2 {
                block16(kt, w0.add(half * 16 * ldw), ldw, x0, t, half);
            }
        }
    }

    /// The 32 bf16 lanes of an integer vector (same bits).
    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 512 bits of plain data.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// Rows `16·half .. 16·half + 16` of the transposed 32×32 block: for each weight row, a
    /// broadcast pair times the 16 pairs of a packed `x` tile row, `VDPBF16PS` into 16 lanes
    /// (one per `x` row); two `x` tiles give the 32 `x` rows.
    ///
    /// # Safety
    /// AVX512-BF16 supported; `w0` valid for 16 rows of stride `ldw` and `kt × 32` columns; `x0`
    /// valid for `2 × kt` packed tiles.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn block16(
        kt: usize,
        w0: *const u16,
        ldw: usize,
        x0: *const u32,
        t: &mut [f32; 1024],
        half: usize,
    ) {
        let x1 = x0.add(kt * 256);
        // 8 weight rows × 2 x tiles = 16 accumulators per pass (enough independent chains to
        // cover the dot-product latency), 2 passes.
        for r0 in (0..16).step_by(8) {
            let mut acc = [[_mm512_setzero_ps(); 2]; 8];
            for kb in 0..kt {
                let xa = x0.add(kb * 256);
                let xb = x1.add(kb * 256);
                for p in 0..16 {
                    let va = bh(_mm512_loadu_si512(xa.add(p * 16).cast()));
                    let vb = bh(_mm512_loadu_si512(xb.add(p * 16).cast()));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let pair = w0.add((r0 + r) * ldw + kb * 32 + 2 * p).cast::<i32>();
                        let wv = bh(_mm512_set1_epi32(pair.read_unaligned()));
                        a[0] = _mm512_dpbf16_ps(a[0], wv, va);
                        a[1] = _mm512_dpbf16_ps(a[1], wv, vb);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                let row = t.as_mut_ptr().add((half * 16 + r0 + r) * 32);
                _mm512_storeu_ps(row, a[0]);
                _mm512_storeu_ps(row.add(16), a[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transpose16_transposes() {
        if !crate::cpu::Level::Avx512.is_supported() {
            return;
        }
        let src: Vec<f32> = (0..16 * 20).map(|v| v as f32).collect();
        let mut dst = vec![-1f32; 16 * 24];
        // SAFETY: AVX-512 checked; 16 rows of 20 and of 24 floats.
        unsafe { transpose16(src.as_ptr(), 20, dst.as_mut_ptr(), 24) };
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(dst[i * 24 + j], src[j * 20 + i], "[{i},{j}]");
            }
            assert!(dst[i * 24 + 16..i * 24 + 24].iter().all(|&v| v == -1.0));
        }
    }

    /// The packed layout, for blocks the vector path takes (16 full rows, whole 32-column
    /// blocks) and the scalar rest: element (i, p) of x lands, rounded as `half` rounds it, at
    /// tile (i / 16, p / 32), row (p % 32) / 2, column i % 16, half p % 2.
    #[test]
    fn packed_x_holds_every_element_rounded() {
        let (m, k) = (37, 70);
        let special = [
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f80_8001),
            f32::from_bits(0x3f81_8000),
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3.4e38,
        ];
        let mut x = crate::testing::lcg_values(m * k, 4, 3.0);
        for (i, v) in special.iter().enumerate() {
            x[i * 11] = *v;
        }
        x[5] = f32::NAN;
        let kt = k.div_ceil(32);
        let mt = m.div_ceil(32) * 2;
        let packed = pack_x(m, k, &x, mt, kt);
        assert_eq!(packed.len(), mt * kt * 256);
        for i in 0..mt * 16 {
            for p in 0..kt * 32 {
                let word = packed[((i / 16) * kt + p / 32) * 256 + ((p % 32) / 2) * 16 + i % 16];
                let got = (word >> (16 * (p % 2))) as u16;
                if i >= m || p >= k {
                    assert_eq!(got, 0, "padding ({i}, {p})");
                } else if x[i * k + p].is_nan() {
                    assert!(bf16::from_bits(got).is_nan());
                } else {
                    assert_eq!(got, bf16::from_f32(x[i * k + p]).to_bits(), "({i}, {p})");
                }
            }
        }
    }

    #[test]
    fn rounding_matches_half() {
        for v in [
            0.0f32,
            -0.0,
            1.0,
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f80_8001),
            3.3e38,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-40,
            -2.5e-39,
        ] {
            let ours = round_bf16(v);
            let theirs = bf16::from_f32(v).to_bits();
            if v.is_nan() {
                assert!(bf16::from_bits(ours).is_nan());
            } else {
                assert_eq!(ours, theirs, "{v:e}");
            }
        }
    }

    use proptest::prelude::*;

    /// Runs `e` on `threads` threads against the reference; the tolerance is relative to
    /// `Σ|x||w|`, since the engines sum in another order (and AMX flushes denormals).
    fn check(
        e: Engine,
        threads: usize,
        m: usize,
        n: usize,
        k: usize,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let x = crate::testing::lcg_values(m * k, seed, 1.0);
        let w: Vec<bf16> = crate::testing::lcg_values(n * k, !seed, 1.0)
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        let mut y = vec![f32::NAN; m * n];
        let mut r = vec![0f32; m * n];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| matmul_nt_bf16_with(e, m, n, k, &x, &w, &mut y));
        matmul_nt_bf16_ref(m, n, k, &x, &w, &mut r);
        for i in 0..m {
            for j in 0..n {
                let mag: f32 = (0..k)
                    .map(|p| (x[i * k + p] * w[j * k + p].to_f32()).abs())
                    .sum();
                let (a, b) = (y[i * n + j], r[i * n + j]);
                prop_assert!(
                    (a - b).abs() <= 1e-5 * mag + 1e-30,
                    "{e:?} t{threads} m{m} n{n} k{k} [{i},{j}] {a} vs {b}"
                );
            }
        }
        Ok(())
    }

    fn dims() -> impl Strategy<Value = usize> {
        prop_oneof![
            Just(0usize),
            Just(1),
            Just(15),
            Just(16),
            Just(17),
            Just(31),
            Just(32),
            Just(33),
            Just(47),
            Just(64),
            1usize..100
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_engine_matches_ref(m in dims(), n in dims(), k in dims(), seed: u64, two: bool) {
            for e in available() {
                check(e, if two { 2 } else { 1 }, m, n, k, seed)?;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// A block of columns of a wider weight equals the product with that block copied out.
        #[test]
        fn strided_weights_equal_the_copied_block(m in dims(), n in dims(), k in dims(), extra in prop_oneof![Just(0usize), Just(1), Just(31), 0usize..70], seed: u64) {
            let ldw = k + extra;
            let x = crate::testing::lcg_values(m * k, seed, 1.0);
            let wide: Vec<bf16> = crate::testing::lcg_values(n * ldw, !seed, 1.0)
                .iter()
                .map(|&v| bf16::from_f32(v))
                .collect();
            let block: Vec<bf16> = (0..n).flat_map(|j| wide[j * ldw..j * ldw + k].iter().copied()).collect();
            let (mut a, mut b) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
            matmul_nt_bf16_strided(m, n, k, &x, &wide, ldw, &mut a);
            matmul_nt_bf16(m, n, k, &x, &block, &mut b);
            prop_assert_eq!(a, b);
        }
    }

    /// Past the row block (`MC_BYTES`), several panels per task, a prime k.
    #[test]
    fn large_shapes_every_engine() {
        for e in available() {
            check(e, 2, 300, 200, 2053, 9).unwrap();
            check(e, 2, 96, 1024, 4096, 10).unwrap();
        }
    }

    /// A NaN in x reaches exactly the outputs of its row; an Inf weight its column.
    #[test]
    fn non_finite_values_propagate_to_their_row_and_column() {
        let (m, n, k) = (40, 48, 64);
        let mut x = vec![0.5f32; m * k];
        let mut w = vec![bf16::from_f32(0.25); n * k];
        x[3 * k + 7] = f32::NAN;
        w[5 * k + 60] = bf16::INFINITY;
        for e in available() {
            let mut y = vec![0f32; m * n];
            matmul_nt_bf16_with(e, m, n, k, &x, &w, &mut y);
            for i in 0..m {
                for j in 0..n {
                    let v = y[i * n + j];
                    if i == 3 {
                        assert!(v.is_nan(), "{e:?} [{i},{j}] {v}");
                    } else if j == 5 {
                        assert_eq!(v, f32::INFINITY, "{e:?} [{i},{j}]");
                    } else {
                        assert_eq!(v, 0.5 * 0.25 * k as f32, "{e:?} [{i},{j}]");
                    }
                }
            }
        }
    }

    #[test]
    fn engine_names_round_trip_and_forcing_refuses_what_is_missing() {
        for e in [Engine::Off, Engine::Avx512Bf16, Engine::Amx] {
            assert_eq!(Engine::parse(e.name()), Some(e));
        }
        assert_eq!(Engine::parse("tpu"), None);
        assert!(available().contains(&Engine::Off));
        assert_eq!(*available().last().unwrap(), detect());
        // Other tests run beside this one: force only what changes nothing (the engine in use)
        // or what is refused.
        for e in [Engine::Avx512Bf16, Engine::Amx] {
            if !e.is_supported() {
                assert!(!force_engine(Some(e)));
            }
        }
        let now = engine();
        assert!(force_engine(Some(now)));
        assert_eq!(engine(), now);
    }
}
