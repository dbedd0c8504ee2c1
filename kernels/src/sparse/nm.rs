//! The N:M format: the bitmask layout (`bits` of `n × ⌈k/8⌉` bytes, column c of row r is bit
//! c%8 of byte `r·⌈k/8⌉ + c/8`) with the promise that every group of `m_group` consecutive columns
//! (`k.is_multiple_of(m_group)`) keeps exactly `n_keep`; the values are row-major and row r's start at
//! `r · (k / m_group) · n_keep`, so no offsets are stored. 2:4 is the case sparse tensor cores run.
//!
//! A mask that breaks the promise gives wrong sums (each row's values are read from where the
//! promise puts them) but never reads outside `values`.

use super::pattern::{Bits, Starts};
use super::{bits_nt, reference, supported};
use crate::cpu::{self, Level};
use crate::gemv::WeightElem;

/// Checks the N:M parts once at a kernel's entry and returns the values per row.
fn check(
    name: &'static str,
    n: usize,
    k: usize,
    n_keep: usize,
    m_group: usize,
    bits: &[u8],
    nnz: usize,
) -> usize {
    assert!(
        m_group > 0 && n_keep <= m_group && k.is_multiple_of(m_group),
        "{name}: {n_keep}:{m_group} does not fit k = {k}"
    );
    assert_eq!(bits.len(), n * k.div_ceil(8), "{name}: bits length");
    let per_row = k / m_group * n_keep;
    assert_eq!(nnz, n * per_row, "{name}: values length");
    per_row
}

fn pattern<'a>(
    name: &'static str,
    k: usize,
    per_row: usize,
    bits: &'a [u8],
    nnz: usize,
) -> Bits<'a> {
    Bits {
        bits,
        k,
        starts: Starts::Uniform(per_row),
        nnz,
        name,
    }
}

/// `y[m×n] = x[m×k] · Wᵀ` with `W[n×k]` an N:M matrix (overwrites y), at the detected SIMD
/// level, parallel over rayon's pool.
pub fn nm_matmul_nt<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    n_keep: usize,
    m_group: usize,
    bits: &[u8],
    values: &[W],
    y: &mut [f32],
) {
    nm_matmul_nt_with(cpu::level(), m, n, k, x, n_keep, m_group, bits, values, y)
}

/// [`nm_matmul_nt`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn nm_matmul_nt_with<W: WeightElem>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    n_keep: usize,
    m_group: usize,
    bits: &[u8],
    values: &[W],
    y: &mut [f32],
) {
    const NAME: &str = "nm_matmul_nt";
    assert_eq!(x.len(), m * k, "{NAME}: x length");
    assert_eq!(y.len(), m * n, "{NAME}: y length");
    let per_row = check(NAME, n, k, n_keep, m_group, bits, values.len());
    let pat = pattern(NAME, k, per_row, bits, values.len());
    bits_nt(supported(level), m, n, k, x, &pat, values, y);
}

/// Plain reference for [`nm_matmul_nt`] (f64 accumulation).
pub fn nm_matmul_nt_ref<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    n_keep: usize,
    m_group: usize,
    bits: &[u8],
    values: &[W],
    y: &mut [f32],
) {
    assert_eq!(y.len(), m * n, "nm_matmul_nt_ref: y length");
    let e = reference::bit_entries(n, k, bits, |r| r * (k / m_group.max(1) * n_keep));
    reference::nt(m, n, k, x, &e, values, y);
}

/// `dx[m×k] = dy[m×n] · W` with `W[n×k]` an N:M matrix (overwrites dx): the gradient of
/// [`nm_matmul_nt`] with respect to x.
pub fn nm_matmul_nn<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    n_keep: usize,
    m_group: usize,
    bits: &[u8],
    values: &[W],
    dx: &mut [f32],
) {
    nm_matmul_nn_with(cpu::level(), m, n, k, dy, n_keep, m_group, bits, values, dx)
}

/// [`nm_matmul_nn`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn nm_matmul_nn_with<W: WeightElem>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    n_keep: usize,
    m_group: usize,
    bits: &[u8],
    values: &[W],
    dx: &mut [f32],
) {
    const NAME: &str = "nm_matmul_nn";
    assert_eq!(dy.len(), m * n, "{NAME}: dy length");
    assert_eq!(dx.len(), m * k, "{NAME}: dx length");
    let per_row = check(NAME, n, k, n_keep, m_group, bits, values.len());
    let pat = pattern(NAME, k, per_row, bits, values.len());
    super::nn(supported(level), m, n, k, dy, &pat, values, dx);
}

/// Plain reference for [`nm_matmul_nn`] (f64 accumulation).
pub fn nm_matmul_nn_ref<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    n_keep: usize,
    m_group: usize,
    bits: &[u8],
    values: &[W],
    dx: &mut [f32],
) {
    assert_eq!(dx.len(), m * k, "nm_matmul_nn_ref: dx length");
    let e = reference::bit_entries(n, k, bits, |r| r * (k / m_group.max(1) * n_keep));
    reference::nn(m, n, k, dy, &e, values, dx);
}

/// `dvalues[j] = Σ_i dy[i, row(j)] · x[i, col(j)]` for each kept entry j of an N:M matrix,
/// in storage order (overwrites dvalues, whose length is the value count): the gradient of
/// [`nm_matmul_nt`] with respect to the values. `dy: [m, n]`, `x: [m, k]`.
pub fn nm_weight_grad(
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    x: &[f32],
    n_keep: usize,
    m_group: usize,
    bits: &[u8],
    dvalues: &mut [f32],
) {
    nm_weight_grad_with(cpu::level(), m, n, k, dy, x, n_keep, m_group, bits, dvalues)
}

/// [`nm_weight_grad`] at an explicit level (one this CPU lacks falls back to the best it
/// has).
pub fn nm_weight_grad_with(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    x: &[f32],
    n_keep: usize,
    m_group: usize,
    bits: &[u8],
    dvalues: &mut [f32],
) {
    const NAME: &str = "nm_weight_grad";
    assert_eq!(dy.len(), m * n, "{NAME}: dy length");
    assert_eq!(x.len(), m * k, "{NAME}: x length");
    let per_row = check(NAME, n, k, n_keep, m_group, bits, dvalues.len());
    let pat = pattern(NAME, k, per_row, bits, dvalues.len());
    super::weight_grad(supported(level), m, n, k, dy, x, &pat, dvalues);
}

/// Plain reference for [`nm_weight_grad`] (f64 accumulation).
pub fn nm_weight_grad_ref(
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    x: &[f32],
    n_keep: usize,
    m_group: usize,
    bits: &[u8],
    dvalues: &mut [f32],
) {
    let e = reference::bit_entries(n, k, bits, |r| r * (k / m_group.max(1) * n_keep));
    reference::weight_grad(m, n, k, dy, x, &e, dvalues);
}
