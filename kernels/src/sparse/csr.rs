//! CSR: `indptr` (length n + 1, non-decreasing), `indices` (u32 column ids, increasing within a
//! row) and `values`; row r's entries are `indptr[r]..indptr[r + 1]`.
//!
//! Slower than the bitmask by construction at useful sparsities (4 index bytes per kept entry
//! against 1/8 byte per column), kept for interchange and for very sparse matrices. An index that
//! is not below `k` or out of order gives wrong sums, never a read outside x.

use super::pattern::Csr;
use super::{reference, supported};
use crate::cpu::{self, Level};
use crate::gemv::WeightElem;

/// Checks the CSR parts once at a kernel's entry.
fn check(name: &'static str, n: usize, indptr: &[usize], indices: &[u32], nnz: usize) {
    assert_eq!(indptr.len(), n + 1, "{name}: indptr length");
    assert_eq!(
        indices.len(),
        nnz,
        "{name}: indices and values lengths differ"
    );
    assert!(
        indptr.windows(2).all(|w| w[0] <= w[1]) && indptr[n] <= nnz,
        "{name}: indptr must be non-decreasing and end at most at the value count {nnz}"
    );
}

/// `y[m×n] = x[m×k] · Wᵀ` with `W[n×k]` a CSR matrix (overwrites y), at the detected SIMD
/// level, parallel over rayon's pool.
pub fn csr_matmul_nt<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    indptr: &[usize],
    indices: &[u32],
    values: &[W],
    y: &mut [f32],
) {
    csr_matmul_nt_with(cpu::level(), m, n, k, x, indptr, indices, values, y)
}

/// [`csr_matmul_nt`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn csr_matmul_nt_with<W: WeightElem>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    indptr: &[usize],
    indices: &[u32],
    values: &[W],
    y: &mut [f32],
) {
    const NAME: &str = "csr_matmul_nt";
    assert_eq!(x.len(), m * k, "{NAME}: x length");
    assert_eq!(y.len(), m * n, "{NAME}: y length");
    check(NAME, n, indptr, indices, values.len());
    let pat = Csr { indptr, indices };
    super::csr_nt(supported(level), m, n, k, x, &pat, values, y);
}

/// Plain reference for [`csr_matmul_nt`] (f64 accumulation).
pub fn csr_matmul_nt_ref<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    indptr: &[usize],
    indices: &[u32],
    values: &[W],
    y: &mut [f32],
) {
    assert_eq!(y.len(), m * n, "csr_matmul_nt_ref: y length");
    let e = reference::csr_entries(n, indptr, indices);
    reference::nt(m, n, k, x, &e, values, y);
}

/// `dx[m×k] = dy[m×n] · W` with `W[n×k]` a CSR matrix (overwrites dx): the gradient of
/// [`csr_matmul_nt`] with respect to x.
pub fn csr_matmul_nn<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    indptr: &[usize],
    indices: &[u32],
    values: &[W],
    dx: &mut [f32],
) {
    csr_matmul_nn_with(cpu::level(), m, n, k, dy, indptr, indices, values, dx)
}

/// [`csr_matmul_nn`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn csr_matmul_nn_with<W: WeightElem>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    indptr: &[usize],
    indices: &[u32],
    values: &[W],
    dx: &mut [f32],
) {
    const NAME: &str = "csr_matmul_nn";
    assert_eq!(dy.len(), m * n, "{NAME}: dy length");
    assert_eq!(dx.len(), m * k, "{NAME}: dx length");
    check(NAME, n, indptr, indices, values.len());
    let pat = Csr { indptr, indices };
    super::nn(supported(level), m, n, k, dy, &pat, values, dx);
}

/// Plain reference for [`csr_matmul_nn`] (f64 accumulation).
pub fn csr_matmul_nn_ref<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    indptr: &[usize],
    indices: &[u32],
    values: &[W],
    dx: &mut [f32],
) {
    assert_eq!(dx.len(), m * k, "csr_matmul_nn_ref: dx length");
    let e = reference::csr_entries(n, indptr, indices);
    reference::nn(m, n, k, dy, &e, values, dx);
}

/// `dvalues[j] = Σ_i dy[i, row(j)] · x[i, col(j)]` for each kept entry j of a CSR matrix,
/// in storage order (overwrites dvalues, whose length is the value count): the gradient of
/// [`csr_matmul_nt`] with respect to the values. `dy: [m, n]`, `x: [m, k]`.
pub fn csr_weight_grad(
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    x: &[f32],
    indptr: &[usize],
    indices: &[u32],
    dvalues: &mut [f32],
) {
    csr_weight_grad_with(cpu::level(), m, n, k, dy, x, indptr, indices, dvalues)
}

/// [`csr_weight_grad`] at an explicit level (one this CPU lacks falls back to the best it
/// has).
pub fn csr_weight_grad_with(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    x: &[f32],
    indptr: &[usize],
    indices: &[u32],
    dvalues: &mut [f32],
) {
    const NAME: &str = "csr_weight_grad";
    assert_eq!(dy.len(), m * n, "{NAME}: dy length");
    assert_eq!(x.len(), m * k, "{NAME}: x length");
    check(NAME, n, indptr, indices, dvalues.len());
    let pat = Csr { indptr, indices };
    super::weight_grad(supported(level), m, n, k, dy, x, &pat, dvalues);
}

/// Plain reference for [`csr_weight_grad`] (f64 accumulation).
pub fn csr_weight_grad_ref(
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    x: &[f32],
    indptr: &[usize],
    indices: &[u32],
    dvalues: &mut [f32],
) {
    let e = reference::csr_entries(n, indptr, indices);
    reference::weight_grad(m, n, k, dy, x, &e, dvalues);
}
