//! The bitmask format (compressed-tensors "sparse-bitmask"): `bits` of `n × ⌈k/8⌉` bytes (row r
//! from byte `r·⌈k/8⌉`, column c is byte c/8, bit c%8), the kept values row-major, and
//! `row_offsets[r]`, the index of row r's first value.

use super::pattern::{Bits, Starts};
use super::{bits_nt, reference, supported};
use crate::cpu::{self, Level};
use crate::gemv::WeightElem;

/// Checks the bitmask parts once at a kernel's entry.
fn check(name: &'static str, n: usize, k: usize, bits: &[u8], row_offsets: &[usize], nnz: usize) {
    assert_eq!(bits.len(), n * k.div_ceil(8), "{name}: bits length");
    assert_eq!(row_offsets.len(), n, "{name}: row_offsets length");
    assert!(
        row_offsets.windows(2).all(|w| w[0] <= w[1])
            && row_offsets.last().is_none_or(|&o| o <= nnz),
        "{name}: row_offsets must be non-decreasing and at most the value count {nnz}"
    );
}

fn pattern<'a>(
    name: &'static str,
    k: usize,
    bits: &'a [u8],
    row_offsets: &'a [usize],
    nnz: usize,
) -> Bits<'a> {
    Bits {
        bits,
        k,
        starts: Starts::Offsets(row_offsets),
        nnz,
        name,
    }
}

/// `y[m×n] = x[m×k] · Wᵀ` with `W[n×k]` a bitmask matrix (overwrites y), at the detected SIMD
/// level, parallel over rayon's pool.
pub fn bitmask_matmul_nt<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    bits: &[u8],
    row_offsets: &[usize],
    values: &[W],
    y: &mut [f32],
) {
    bitmask_matmul_nt_with(cpu::level(), m, n, k, x, bits, row_offsets, values, y)
}

/// [`bitmask_matmul_nt`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn bitmask_matmul_nt_with<W: WeightElem>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    bits: &[u8],
    row_offsets: &[usize],
    values: &[W],
    y: &mut [f32],
) {
    const NAME: &str = "bitmask_matmul_nt";
    assert_eq!(x.len(), m * k, "{NAME}: x length");
    assert_eq!(y.len(), m * n, "{NAME}: y length");
    check(NAME, n, k, bits, row_offsets, values.len());
    let pat = pattern(NAME, k, bits, row_offsets, values.len());
    bits_nt(supported(level), m, n, k, x, &pat, values, y);
}

/// Plain reference for [`bitmask_matmul_nt`] (f64 accumulation).
pub fn bitmask_matmul_nt_ref<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    bits: &[u8],
    row_offsets: &[usize],
    values: &[W],
    y: &mut [f32],
) {
    assert_eq!(y.len(), m * n, "bitmask_matmul_nt_ref: y length");
    let e = reference::bit_entries(n, k, bits, |r| row_offsets[r]);
    reference::nt(m, n, k, x, &e, values, y);
}

/// `dx[m×k] = dy[m×n] · W` with `W[n×k]` a bitmask matrix (overwrites dx): the gradient of
/// [`bitmask_matmul_nt`] with respect to x.
pub fn bitmask_matmul_nn<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    bits: &[u8],
    row_offsets: &[usize],
    values: &[W],
    dx: &mut [f32],
) {
    bitmask_matmul_nn_with(cpu::level(), m, n, k, dy, bits, row_offsets, values, dx)
}

/// [`bitmask_matmul_nn`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn bitmask_matmul_nn_with<W: WeightElem>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    bits: &[u8],
    row_offsets: &[usize],
    values: &[W],
    dx: &mut [f32],
) {
    const NAME: &str = "bitmask_matmul_nn";
    assert_eq!(dy.len(), m * n, "{NAME}: dy length");
    assert_eq!(dx.len(), m * k, "{NAME}: dx length");
    check(NAME, n, k, bits, row_offsets, values.len());
    let pat = pattern(NAME, k, bits, row_offsets, values.len());
    super::nn(supported(level), m, n, k, dy, &pat, values, dx);
}

/// Plain reference for [`bitmask_matmul_nn`] (f64 accumulation).
pub fn bitmask_matmul_nn_ref<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    bits: &[u8],
    row_offsets: &[usize],
    values: &[W],
    dx: &mut [f32],
) {
    assert_eq!(dx.len(), m * k, "bitmask_matmul_nn_ref: dx length");
    let e = reference::bit_entries(n, k, bits, |r| row_offsets[r]);
    reference::nn(m, n, k, dy, &e, values, dx);
}

/// `dvalues[j] = Σ_i dy[i, row(j)] · x[i, col(j)]` for each kept entry j of a bitmask matrix,
/// in storage order (overwrites dvalues, whose length is the value count): the gradient of
/// [`bitmask_matmul_nt`] with respect to the values. `dy: [m, n]`, `x: [m, k]`.
pub fn bitmask_weight_grad(
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    x: &[f32],
    bits: &[u8],
    row_offsets: &[usize],
    dvalues: &mut [f32],
) {
    bitmask_weight_grad_with(cpu::level(), m, n, k, dy, x, bits, row_offsets, dvalues)
}

/// [`bitmask_weight_grad`] at an explicit level (one this CPU lacks falls back to the best it
/// has).
pub fn bitmask_weight_grad_with(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    x: &[f32],
    bits: &[u8],
    row_offsets: &[usize],
    dvalues: &mut [f32],
) {
    const NAME: &str = "bitmask_weight_grad";
    assert_eq!(dy.len(), m * n, "{NAME}: dy length");
    assert_eq!(x.len(), m * k, "{NAME}: x length");
    check(NAME, n, k, bits, row_offsets, dvalues.len());
    let pat = pattern(NAME, k, bits, row_offsets, dvalues.len());
    super::weight_grad(supported(level), m, n, k, dy, x, &pat, dvalues);
}

/// Plain reference for [`bitmask_weight_grad`] (f64 accumulation).
pub fn bitmask_weight_grad_ref(
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    x: &[f32],
    bits: &[u8],
    row_offsets: &[usize],
    dvalues: &mut [f32],
) {
    let e = reference::bit_entries(n, k, bits, |r| row_offsets[r]);
    reference::weight_grad(m, n, k, dy, x, &e, dvalues);
}
