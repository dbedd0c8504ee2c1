//! Products with a sparse weight `W[n, k]` (`[out_features, in_features]`) in three formats:
//! bitmask (compressed-tensors "sparse-bitmask"), N:M (e.g. 2:4) and CSR. Values are f32, bf16
//! or f16 ([`WeightElem`]) and are widened to f32 in registers; sums are f32.
//!
//! ```
//! use shears_kernels::sparse::{bitmask_matmul_nt, bitmask_matmul_nt_ref};
//! // W = [[1, 0, 2],
//! //      [0, 0, 3]]  as a bitmask: row r's bits start at byte r·⌈3/8⌉, column c is bit c.
//! let bits = [0b101u8, 0b100];
//! let values = [1.0f32, 2., 3.];
//! let row_offsets = [0, 2];
//! let x = [1.0f32, 10., 100.]; // [1, 3]
//! let mut y = [0f32; 2];
//! bitmask_matmul_nt(1, 2, 3, &x, &bits, &row_offsets, &values, &mut y);
//! assert_eq!(y, [201.0, 300.0]);
//! let mut r = [0f32; 2];
//! bitmask_matmul_nt_ref(1, 2, 3, &x, &bits, &row_offsets, &values, &mut r);
//! assert_eq!(y, r);
//! ```
//!
//! For each format `F` there are
//! - `F_matmul_nt`: `y[m×n] = x[m×k] · Wᵀ` (the forward of a linear layer),
//! - `F_matmul_nn`: `dx[m×k] = dy[m×n] · W` (its gradient with respect to x),
//! - `F_weight_grad`: `dvalues[j] = Σ_i dy[i, row(j)] · x[i, col(j)]` for each kept entry j in
//!   storage order (its gradient with respect to the kept values),
//!
//! each with a `_with(level, …)` twin at an explicit SIMD level and a plain scalar `_ref` twin.
//! All overwrite their output and run on rayon's pool in tasks of whole rows (or, for
//! `matmul_nn`, whole column blocks).
//!
//! How they are fast:
//! - Decode and small batches (m ≤ 8) are bound by the weight bytes read: 70 % sparse f32 reads
//!   0.3·4 + 1/8 bytes per weight instead of 4. At AVX-512 the bitmask and N:M kernels turn each
//!   16 columns of mask into a dense vector with one `vexpandps` of the next `popcnt` values and
//!   stream like the dense GEMV; CSR gathers x at its indices.
//! - Larger batches are bound by FMAs: x is transposed to `[k, m]` once, and each kept weight
//!   costs `⌈m/16⌉` FMAs (`y[r, 0..m] += v · xT[c, 0..m]`, up to 64 batch rows in registers, x
//!   in column blocks that stay in L1), so the zeros cost nothing. A row's kept columns in a
//!   block are first decoded into a list (`vpcompressd` per 16 mask bits at AVX-512), so the
//!   FMA loop is a plain counted loop.
//! - `matmul_nn` and `weight_grad` use the same transposed, decoded-column scheme (tasks of
//!   column blocks and of rows); they are correct and parallel, not tuned.
//! - AVX2 and the portable level (`wide`) run the kept-entry kernels for every batch size.
//!
//! Kernels check slice lengths and the format's invariants that memory safety rests on once at
//! entry (panicking with the kernel's name); a mask or index list that is wrong in other ways
//! gives wrong sums, never out-of-bounds access.

mod bitmask;
mod csr;
mod engine;
mod nm;
mod pattern;
mod reference;
mod simd;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use bitmask::*;
pub use csr::*;
pub use nm::*;

use crate::cpu::{self, Level};
pub use crate::gemv::WeightElem;
#[cfg(target_arch = "x86_64")]
use crate::send_ptr::{SendConstPtr, SendPtr};
use pattern::{Bits, Csr, Pattern};

/// `level` if this CPU has it, else the best it has.
fn supported(level: Level) -> Level {
    if level.is_supported() {
        level
    } else {
        cpu::detect()
    }
}

/// `y = x · Wᵀ` for a bit pattern (bitmask or N:M); lengths and invariants checked.
fn bits_nt<W: WeightElem>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    pat: &Bits,
    values: &[W],
    y: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 && m <= x86::EXPAND_M {
        // Decode below ~20 % density on VBMI2 CPUs: the compress kernel; else the expand one.
        let compress = m == 1 && x86::compress_pays(pat.nnz, n, k);
        let tasks = engine::row_tasks(n, m * n * k, 8, 256);
        let (xp, yp) = (SendConstPtr(x.as_ptr()), SendPtr(y.as_mut_ptr()));
        engine::run_tasks(&tasks, |&(r0, r1)| {
            for r in r0..r1 {
                pat.check_row(r);
            }
            let (xp, vp, yp) = (xp.get(), values.as_ptr(), yp.get());
            // SAFETY: AVX-512 is supported (level), and VBMI2 when `compress` (compress_pays);
            // x and y hold m·k and m·n floats (checked by the caller), k > 0; `check_row` passed
            // for rows r0..r1; tasks own disjoint rows.
            unsafe {
                if compress {
                    x86::bits_compress_rows_m1(k, xp, pat, vp, yp, r0, r1)
                } else {
                    x86::bits_expand_rows(m, n, k, xp, pat, vp, yp, r0, r1)
                }
            };
        });
        return;
    }
    engine::nt(level, m, n, k, x, pat, values, y);
}

/// `y = x · Wᵀ` for CSR; lengths and invariants checked.
fn csr_nt<W: WeightElem>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    pat: &Csr,
    values: &[W],
    y: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 && m == 1 {
        let tasks = engine::row_tasks(n, n * k, 8, 256);
        let (xp, yp) = (SendConstPtr(x.as_ptr()), SendPtr(y.as_mut_ptr()));
        engine::run_tasks(&tasks, |&(r0, r1)| {
            // SAFETY: AVX-512 is supported; x holds k > 0 floats and y n; indptr is
            // non-decreasing and ends within indices and values (checked at entry); tasks own
            // disjoint rows.
            unsafe {
                x86::csr_gather_rows(
                    k,
                    xp.get(),
                    pat.indptr,
                    pat.indices.as_ptr(),
                    values.as_ptr(),
                    yp.get(),
                    r0,
                    r1,
                )
            };
        });
        return;
    }
    engine::nt(level, m, n, k, x, pat, values, y);
}

/// `dx = dy · W` for any pattern; lengths and invariants checked.
fn nn<W: WeightElem, P: Pattern>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    pat: &P,
    values: &[W],
    dx: &mut [f32],
) {
    if m == 0 || k == 0 {
        return;
    }
    if n == 0 {
        dx.fill(0.0);
        return;
    }
    engine::nn(level, m, n, k, dy, pat, values, dx);
}

/// The gradient with respect to the values for any pattern; lengths and invariants checked.
fn weight_grad<P: Pattern>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    x: &[f32],
    pat: &P,
    dvalues: &mut [f32],
) {
    if n == 0 || k == 0 {
        dvalues.fill(0.0);
        return;
    }
    if m == 0 {
        dvalues.fill(0.0);
        return;
    }
    engine::weight_grad(level, m, n, k, dy, x, pat, dvalues);
}

#[cfg(test)]
mod tests;
