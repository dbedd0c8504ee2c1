//! Dense linear algebra for SparseGPT's inverse Hessian on row-major `n×n` slices, f32 or f64:
//! Cholesky factorisation, triangular solves, and the inverse of a matrix from its Cholesky factor.
//!
//! ```
//! use shears_kernels::linalg::{cholesky_inverse, cholesky_lower, tri_solve};
//! // A = [[4, 2], [2, 3]] = L·Lᵀ with L = [[2, 0], [1, √2]].
//! let mut l = [4f64, 2., 2., 3.];
//! cholesky_lower(&mut l, 2).unwrap();
//! assert_eq!(l[..3], [2., 0., 1.]);
//! assert!((l[3] - 2f64.sqrt()).abs() < 1e-15);
//! // A·x = b solved as L·y = b, then Lᵀ·x = y.
//! let mut x = [6f64, 5.];
//! tri_solve(&l, 2, &mut x, 1, false, false).unwrap();
//! tri_solve(&l, 2, &mut x, 1, false, true).unwrap();
//! assert!((x[0] - 1.).abs() < 1e-14 && (x[1] - 1.).abs() < 1e-14);
//! // A⁻¹ = [[3, -2], [-2, 4]] / 8.
//! let inv = cholesky_inverse(&l, 2, false).unwrap();
//! for (got, want) in inv.iter().zip([0.375, -0.25, -0.25, 0.5]) {
//!     assert!((got - want).abs() < 1e-14);
//! }
//! ```
//!
//! Golub & Van Loan, *Matrix Computations* (4th ed.): §4.2, Cholesky `A = L·Lᵀ` with
//! `l_jj = √(a_jj − Σ_{k<j} l_jk²)` and `l_ij = (a_ij − Σ_{k<j} l_ik·l_jk) / l_jj`, here in the
//! blocked right-looking form (factor a diagonal block, solve the panel below it, update the
//! trailing matrix); §3.1, forward and back substitution. SparseGPT (Frantar & Alistarh, 2023,
//! Algorithm 1) uses them for `H⁻¹ = (L·Lᵀ)⁻¹` and the upper Cholesky factor of `H⁻¹`.
//!
//! Each kernel reads only the triangle it is told about, so the other triangle may hold anything.

use crate::Float;
use rayon::prelude::*;

/// Block size of the blocked kernels. Larger blocks mean fewer passes over the trailing matrix,
/// smaller ones a smaller transposed panel (`NB × n`, re-read by every trailing row: 1 MiB at
/// n = 4096 in f32). 32, 64 and 128 time within noise of each other at n = 2048.
const NB: usize = 64;

/// Work (multiply-adds) below which a loop over rows stays on the calling thread.
const PAR_WORK: usize = 1 << 15;

/// A Cholesky pivot `a_jj − Σ_{k<j} l_jk²` that is not positive and finite: the matrix is not
/// (numerically) positive definite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CholeskyError {
    /// Zero-based index of the first failing pivot.
    pub pivot: usize,
    /// The pivot's value before the square root.
    pub value: f64,
}

impl std::fmt::Display for CholeskyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "matrix is not positive definite: pivot {} is {:e}",
            self.pivot, self.value
        )
    }
}

impl std::error::Error for CholeskyError {}

/// A triangular matrix with a zero or non-finite diagonal entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SingularError {
    /// Zero-based index of the first bad diagonal entry.
    pub index: usize,
    /// The value found there.
    pub value: f64,
}

impl std::fmt::Display for SingularError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "singular triangular matrix: diagonal entry {} is {:e}",
            self.index, self.value
        )
    }
}

impl std::error::Error for SingularError {}

/// Lower Cholesky factor in place: `a: [n, n]` symmetric positive definite (only its lower
/// triangle is read) → `L` with `A = L·Lᵀ`, strict upper triangle zeroed. Blocked right-looking,
/// rows of the panel and trailing update in parallel. On error `a` holds partial results.
pub fn cholesky_lower<T: Float>(a: &mut [T], n: usize) -> Result<(), CholeskyError> {
    cholesky_lower_blocked(a, n, NB)
}

/// Plain reference for [`cholesky_lower`]: the textbook column-by-column triple loop.
pub fn cholesky_lower_ref<T: Float>(a: &mut [T], n: usize) -> Result<(), CholeskyError> {
    assert_eq!(a.len(), n * n, "cholesky_ref: a must hold n*n elements");
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d = d - a[j * n + k] * a[j * n + k];
        }
        check_pivot(d, j)?;
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s = s - a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    zero_strict_upper(a, n);
    Ok(())
}

/// Upper Cholesky factor in place: `a: [n, n]` symmetric positive definite (only its upper
/// triangle is read) → `U` with `A = Uᵀ·U`, strict lower triangle zeroed; `U` is the transpose
/// of [`cholesky_lower`]'s `L`.
pub fn cholesky_upper<T: Float>(a: &mut [T], n: usize) -> Result<(), CholeskyError> {
    assert_eq!(a.len(), n * n, "cholesky: a must hold n*n elements");
    transpose_in_place(a, n);
    let r = cholesky_lower(a, n);
    transpose_in_place(a, n);
    r
}

/// Solves `op(T)·X = B` in place: `t: [n, n]` triangular (lower, or upper when `upper`; only that
/// triangle is read), `op(T)` is `T` or `Tᵀ` (when `transpose`), `b: [n, nrhs]` row-major is
/// overwritten by `X`. Errors, leaving `b` untouched, on the first zero or non-finite diagonal.
pub fn tri_solve<T: Float>(
    t: &[T],
    n: usize,
    b: &mut [T],
    nrhs: usize,
    upper: bool,
    transpose: bool,
) -> Result<(), SingularError> {
    assert_eq!(t.len(), n * n, "tri_solve: t must hold n*n elements");
    assert_eq!(b.len(), n * nrhs, "tri_solve: b must hold n*nrhs elements");
    check_diagonal(t, n)?;
    solve_blocked(t, n, b, nrhs, upper, transpose, NB, false);
    Ok(())
}

/// Plain reference for [`tri_solve`]: substitution one element at a time.
pub fn tri_solve_ref<T: Float>(
    t: &[T],
    n: usize,
    b: &mut [T],
    nrhs: usize,
    upper: bool,
    transpose: bool,
) -> Result<(), SingularError> {
    assert_eq!(t.len(), n * n, "tri_solve_ref: t must hold n*n elements");
    assert_eq!(
        b.len(),
        n * nrhs,
        "tri_solve_ref: b must hold n*nrhs elements"
    );
    check_diagonal(t, n)?;
    let get = |i: usize, k: usize| {
        if transpose {
            t[k * n + i]
        } else {
            t[i * n + k]
        }
    };
    // op(T) is lower triangular (solve top-down) for L or Uᵀ, upper (bottom-up) for U or Lᵀ.
    let forward = upper == transpose;
    for step in 0..n {
        let i = if forward { step } else { n - 1 - step };
        let ks = if forward { 0..i } else { i + 1..n };
        for c in 0..nrhs {
            let mut s = b[i * nrhs + c];
            for k in ks.clone() {
                s = s - get(i, k) * b[k * nrhs + c];
            }
            b[i * nrhs + c] = s / get(i, i);
        }
    }
    Ok(())
}

/// Inverse from a Cholesky factor: `l: [n, n]`, lower `L` with `A = L·Lᵀ` (or upper `U` with
/// `A = Uᵀ·U` when `upper`; only that triangle is read) → `A⁻¹: [n, n]` row-major, exactly
/// symmetric. Computes `X = L⁻¹` then `A⁻¹ = Xᵀ·X`, both exploiting the triangular structure
/// (`n³/3` multiply-adds in all). Errors on a zero or non-finite diagonal of the factor.
pub fn cholesky_inverse<T: Float>(l: &[T], n: usize, upper: bool) -> Result<Vec<T>, SingularError> {
    assert_eq!(l.len(), n * n, "cholesky_inverse: l must hold n*n elements");
    check_diagonal(l, n)?;
    let lower = if upper {
        let mut t = l.to_vec();
        transpose_in_place(&mut t, n);
        std::borrow::Cow::Owned(t)
    } else {
        std::borrow::Cow::Borrowed(l)
    };
    let mut x = vec![T::zero(); n * n];
    for i in 0..n {
        x[i * n + i] = T::one();
    }
    solve_blocked(&lower, n, &mut x, n, false, false, NB, true);
    let mut inv = vec![T::zero(); n * n];
    xtx_lower(&x, n, &mut inv, 16);
    for i in 0..n {
        for j in 0..i {
            inv[j * n + i] = inv[i * n + j];
        }
    }
    Ok(inv)
}

fn to_f64<T: Float>(v: T) -> f64 {
    v.to_f64().unwrap_or(f64::NAN)
}

fn check_pivot<T: Float>(d: T, pivot: usize) -> Result<(), CholeskyError> {
    if d > T::zero() && d.is_finite() {
        Ok(())
    } else {
        Err(CholeskyError {
            pivot,
            value: to_f64(d),
        })
    }
}

fn check_diagonal<T: Float>(t: &[T], n: usize) -> Result<(), SingularError> {
    match (0..n).find(|&i| {
        let d = t[i * n + i];
        d == T::zero() || !d.is_finite()
    }) {
        Some(index) => Err(SingularError {
            index,
            value: to_f64(t[index * n + index]),
        }),
        None => Ok(()),
    }
}

fn zero_strict_upper<T: Float>(a: &mut [T], n: usize) {
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n].fill(T::zero());
    }
}

fn transpose_in_place<T: Float>(a: &mut [T], n: usize) {
    for i in 0..n {
        for j in 0..i {
            a.swap(i * n + j, j * n + i);
        }
    }
}

fn dot<T: Float>(x: &[T], y: &[T]) -> T {
    x.iter().zip(y).fold(T::zero(), |s, (&a, &b)| s + a * b)
}

/// `c[j] -= Σ_p coef[p] · rows[p·stride + j]` for `j < c.len()`. Four rows at a time, so each
/// pass over `c` does four multiply-adds per load and store; the inner loop has no reduction and
/// vectorises.
#[inline]
fn sub_lincomb<T: Float>(c: &mut [T], coef: &[T], rows: &[T], stride: usize) {
    let len = c.len();
    let mut p = 0;
    while p + 4 <= coef.len() {
        let (s0, s1, s2, s3) = (coef[p], coef[p + 1], coef[p + 2], coef[p + 3]);
        let r0 = &rows[p * stride..][..len];
        let r1 = &rows[(p + 1) * stride..][..len];
        let r2 = &rows[(p + 2) * stride..][..len];
        let r3 = &rows[(p + 3) * stride..][..len];
        for j in 0..len {
            c[j] = c[j] - (s0 * r0[j] + s1 * r1[j] + s2 * r2[j] + s3 * r3[j]);
        }
        p += 4;
    }
    for (q, &s) in coef.iter().enumerate().skip(p) {
        let r = &rows[q * stride..][..len];
        for (cv, &rv) in c.iter_mut().zip(r) {
            *cv = *cv - s * rv;
        }
    }
}

/// Runs `f(row_index, row)` over the `width`-long rows of `x`, on rayon's pool when `par`.
fn for_rows<T: Float>(x: &mut [T], width: usize, par: bool, f: impl Fn(usize, &mut [T]) + Sync) {
    if par {
        x.par_chunks_mut(width)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    } else {
        x.chunks_mut(width)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    }
}

fn cholesky_lower_blocked<T: Float>(a: &mut [T], n: usize, nb: usize) -> Result<(), CholeskyError> {
    assert_eq!(a.len(), n * n, "cholesky: a must hold n*n elements");
    assert!(nb > 0);
    let mut pt = Vec::new();
    for k0 in (0..n).step_by(nb) {
        let k1 = (k0 + nb).min(n);
        let b = k1 - k0;
        factor_diag_block(a, n, k0, k1)?;
        let m = n - k1;
        if m == 0 {
            break;
        }
        let par = m * m * b >= 2 * PAR_WORK;
        let (top, bottom) = a.split_at_mut(k1 * n);
        let lkk = &top[k0 * n..];
        // Panel: row i of L[k1.., k0..k1] solves x·L_kkᵀ = a[i, k0..k1] by forward substitution.
        for_rows(bottom, n, par, |_, row| {
            let x = &mut row[k0..k1];
            for j in 0..b {
                let lj = &lkk[j * n + k0..j * n + k0 + j];
                x[j] = (x[j] - dot(&x[..j], lj)) / lkk[j * n + k0 + j];
            }
        });
        // The panel transposed, so that the update reads contiguous rows of it.
        pt.clear();
        pt.resize(b * m, T::zero());
        for r in 0..m {
            for p in 0..b {
                pt[p * m + r] = bottom[r * n + k0 + p];
            }
        }
        // Trailing update, lower triangle only: A[i, k1..=i] -= L[i, k0..k1] · L[k1..=i, k0..k1]ᵀ.
        for_rows(bottom, n, par, |r, row| {
            let (left, right) = row.split_at_mut(k1);
            sub_lincomb(&mut right[..=r], &left[k0..k1], &pt, m);
        });
    }
    zero_strict_upper(a, n);
    Ok(())
}

/// Unblocked Cholesky of the diagonal block `a[k0..k1, k0..k1]`, whose trailing updates from
/// earlier blocks are already applied.
fn factor_diag_block<T: Float>(
    a: &mut [T],
    n: usize,
    k0: usize,
    k1: usize,
) -> Result<(), CholeskyError> {
    for i in k0..k1 {
        for j in k0..=i {
            let s = a[i * n + j] - dot(&a[i * n + k0..i * n + j], &a[j * n + k0..j * n + j]);
            if i == j {
                check_pivot(s, i)?;
                a[i * n + i] = s.sqrt();
            } else {
                a[i * n + j] = s / a[j * n + j];
            }
        }
    }
    Ok(())
}

/// Blocked substitution for [`tri_solve`]: solve a block of `nb` rows, then subtract their
/// contribution from all rows still to be solved (rows independent, so in parallel). With
/// `lower_rhs`, `b` is lower triangular (forward solves only) and so is `X`: row `k` of `X` is
/// zero past column `k`, and the updates skip those columns.
#[allow(clippy::too_many_arguments)]
fn solve_blocked<T: Float>(
    t: &[T],
    n: usize,
    b: &mut [T],
    nrhs: usize,
    upper: bool,
    transpose: bool,
    nb: usize,
    lower_rhs: bool,
) {
    assert!(nb > 0 && nb <= NB);
    if n == 0 || nrhs == 0 {
        return;
    }
    let get = |i: usize, k: usize| {
        if transpose {
            t[k * n + i]
        } else {
            t[i * n + k]
        }
    };
    // Row `i` of op(T) at columns `ks` (at most one block), as multipliers for `sub_lincomb`.
    let gather = |i: usize, ks: std::ops::Range<usize>| {
        let mut coef = [T::zero(); NB];
        for (c, k) in coef.iter_mut().zip(ks) {
            *c = get(i, k);
        }
        coef
    };
    let forward = upper == transpose;
    debug_assert!(forward || !lower_rhs);
    let width = |rows_end: usize| if lower_rhs { nrhs.min(rows_end) } else { nrhs };
    let nblocks = n.div_ceil(nb);
    for bi in 0..nblocks {
        let i0 = if forward { bi } else { nblocks - 1 - bi } * nb;
        let i1 = (i0 + nb).min(n);
        let bs = i1 - i0;
        if forward {
            for i in i0..i1 {
                let w = width(i + 1);
                let (done, rest) = b.split_at_mut(i * nrhs);
                let xi = &mut rest[..w];
                let coef = gather(i, i0..i);
                sub_lincomb(xi, &coef[..i - i0], &done[i0 * nrhs..], nrhs);
                let d = get(i, i);
                xi.iter_mut().for_each(|v| *v = *v / d);
            }
            let w = width(i1);
            let (top, bottom) = b.split_at_mut(i1 * nrhs);
            let blk = &top[i0 * nrhs..];
            let par = (n - i1) * bs * w >= PAR_WORK;
            for_rows(bottom, nrhs, par, |ri, xr| {
                let coef = gather(i1 + ri, i0..i1);
                sub_lincomb(&mut xr[..w], &coef[..bs], blk, nrhs);
            });
        } else {
            for i in (i0..i1).rev() {
                let (head, tail) = b.split_at_mut((i + 1) * nrhs);
                let xi = &mut head[i * nrhs..];
                let coef = gather(i, i + 1..i1);
                sub_lincomb(xi, &coef[..i1 - i - 1], tail, nrhs);
                let d = get(i, i);
                xi.iter_mut().for_each(|v| *v = *v / d);
            }
            let (top, rest) = b.split_at_mut(i0 * nrhs);
            let blk = &rest[..bs * nrhs];
            let par = i0 * bs * nrhs >= PAR_WORK;
            for_rows(top, nrhs, par, |r, xr| {
                let coef = gather(r, i0..i1);
                sub_lincomb(xr, &coef[..bs], blk, nrhs);
            });
        }
    }
}

/// Lower triangle (with the diagonal) of `Xᵀ·X` for lower-triangular `x: [n, n]`:
/// `out[i, j] = Σ_{k ≥ i} x[k, i]·x[k, j]` for `j ≤ i`. Blocks of `ob` output rows run in
/// parallel; within a block, four rows of `x` at a time update every output row of the block, so
/// each row of `x` is read once per block.
fn xtx_lower<T: Float>(x: &[T], n: usize, out: &mut [T], ob: usize) {
    if n == 0 {
        return;
    }
    let body = |bi: usize, oblk: &mut [T]| {
        let i0 = bi * ob;
        let i1 = i0 + oblk.len() / n;
        let mut k = i0;
        while k < n {
            let kb = 4.min(n - k);
            // x[k', i] = 0 for i > k', so rows i ≥ k + kb get nothing from x[k..k+kb].
            for i in i0..i1.min(k + kb) {
                let mut coef = [T::zero(); 4];
                for q in 0..kb {
                    coef[q] = -x[(k + q) * n + i];
                }
                let o = (i - i0) * n;
                sub_lincomb(&mut oblk[o..=o + i], &coef[..kb], &x[k * n..], n);
            }
            k += kb;
        }
    };
    if n * n * n >= 6 * PAR_WORK {
        out.par_chunks_mut(ob * n)
            .enumerate()
            .for_each(|(bi, o)| body(bi, o));
    } else {
        out.chunks_mut(ob * n)
            .enumerate()
            .for_each(|(bi, o)| body(bi, o));
    }
}

#[cfg(test)]
mod tests;
