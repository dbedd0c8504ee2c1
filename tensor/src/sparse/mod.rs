//! Native sparse weight matrices, so that a pruned layer really stores (and reads) fewer bytes:
//! [`Csr`] (unstructured, any sparsity), [`NmSparse`] (N:M structured, e.g. 2:4) and [`Bitmask`]
//! (the compressed-tensors "sparse-bitmask" layout), plus [`SparseTensor`] / [`SparseRef`] to hold
//! any of them, structure checks on dense tensors ([`is_nm`], [`sparsity_of`]) and safetensors IO
//! in the compressed-tensors naming ([`save_sparse`], [`load_sparse`], [`split_sparse`]).
//!
//! ```
//! use shears_tensor::sparse::{self, Bitmask, NmSparse, SparseTensor};
//! use shears_tensor::Tensor;
//! // A [2, 4] weight (out_features × in_features) pruned 2:4.
//! let w = Tensor::from_vec(vec![1f32, 0., 0., 2., 0., 3., 4., 0.], [2, 4])?;
//! assert!(sparse::is_nm(&w, 2, 4)?);
//!
//! let nm = NmSparse::from_dense(&w, 2, 4)?;
//! assert_eq!(nm.values_as::<f32>()?, &[1., 2., 3., 4.]);
//! let bm = Bitmask::from_dense(&w)?; // column c of a row is byte c/8, bit c%8
//! assert_eq!(bm.bits(), &[0b1001, 0b0110]);
//! assert_eq!(bm.row_offsets(), &[0, 2]);
//! let csr = bm.to_csr();
//! assert_eq!(csr.indptr(), &[0, 2, 4]);
//! assert_eq!(csr.indices(), &[0, 3, 1, 2]);
//! assert_eq!(csr.to_dense()?.to_vec::<f32>()?, w.to_vec::<f32>()?);
//! assert_eq!(nm.sparsity(), 0.5);
//!
//! // One safetensors file with dense and sparse tensors, compressed-tensors names.
//! let path = std::env::temp_dir().join(format!("shears-sparse-doc-{}.safetensors", std::process::id()));
//! let bias = Tensor::zeros([2], shears_tensor::DType::F32)?;
//! sparse::save_sparse(&path, [("proj", (&bm).into())], [("proj.bias", &bias)], None)?;
//! let (sparse_map, dense_map) = sparse::split_sparse(shears_tensor::io::load(&path)?)?;
//! assert!(dense_map.contains_key("proj.bias"));
//! let SparseTensor::Bitmask(back) = &sparse_map["proj"] else { unreachable!() };
//! assert_eq!(back.to_dense()?.to_vec::<f32>()?, w.to_vec::<f32>()?);
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), shears_tensor::Error>(())
//! ```
//!
//! Conventions shared by the three types:
//! - The shape is always 2-D `[rows, cols]` = `[out_features, in_features]`.
//! - Values are a 1-D contiguous [`Tensor`] of dtype f32, f16 or bf16, in row-major order of the
//!   kept positions. [`Csr::values_as`] and friends borrow them as `&[T]`.
//! - "Pruned" means `value == 0.0` (so `-0.0` is pruned too, NaN is kept) for the `from_dense`
//!   constructors; the `from_dense_mask` constructors keep exactly the masked positions, zeros
//!   included. `to_dense` writes pruned positions as `+0.0`.
//! - `nnz` counts stored values (structural nonzeros), which may themselves be zero.
//! - `rows` and `cols` are at most [`MAX_DIM`] (`u32::MAX`).
//! - Every checked constructor (`new`) validates every invariant and returns
//!   [`Error::SparseFormat`] naming the problem; `new_unchecked` is for trusted callers (kernels,
//!   conversions) and only `debug_assert!`s the same checks.

mod any;
mod bitmask;
mod csr;
mod io;
mod matmul;
mod nm;

pub use any::{SparseRef, SparseTensor};
pub use bitmask::Bitmask;
pub use csr::Csr;
pub use io::{load_sparse, module_prefix, save_sparse, split_sparse};
pub use nm::NmSparse;

use crate::{DType, Error, Result, Tensor, WithDType};

/// The value dtypes a sparse type can hold, as error messages name them.
const VALUE_DTYPES: &str = "f32, f16 or bf16";

/// Runs `$body` with `$T` bound to the Rust type of a value dtype (f32, f16, bf16); other
/// dtypes are an [`Error::UnsupportedDType`] naming `$op`. `$body` must be a `Result`.
macro_rules! with_value_type {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            other => Err($crate::sparse::unsupported($op, other)),
        }
    };
}
pub(crate) use with_value_type;

fn err(op: &'static str, msg: impl Into<String>) -> Error {
    Error::SparseFormat {
        op,
        msg: msg.into(),
    }
}

fn unsupported(op: &'static str, dtype: DType) -> Error {
    Error::UnsupportedDType {
        op,
        dtype,
        expected: "f32, f16 or bf16 values",
    }
}

fn is_value_dtype(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::BF16)
}

/// Bytes per packed bitmask row: one bit per column.
fn row_bytes(cols: usize) -> usize {
    cols.div_ceil(8)
}

/// The largest `rows` or `cols` of a sparse matrix, `u32::MAX`: far beyond any weight matrix,
/// it keeps CSR column indices in u32 and rejects absurd shapes (a `[usize::MAX, 0]` matrix would
/// ask for `usize::MAX` row offsets) before anything is allocated.
pub const MAX_DIM: usize = u32::MAX as usize;

/// Checks both dims against [`MAX_DIM`] (so `rows × cols` cannot overflow either).
fn check_dims(rows: usize, cols: usize) -> std::result::Result<(), String> {
    if rows > MAX_DIM || cols > MAX_DIM || rows.checked_mul(cols).is_none() {
        return Err(format!(
            "shape [{rows}, {cols}] exceeds the largest supported dim ({MAX_DIM})"
        ));
    }
    Ok(())
}

/// [`check_dims`] for a dense input.
fn elems(op: &'static str, rows: usize, cols: usize) -> Result<()> {
    check_dims(rows, cols).map_err(|m| err(op, m))
}

/// The values tensor checked for dtype, rank and length, made contiguous.
fn check_values(op: &'static str, values: &Tensor, len: usize) -> Result<Tensor> {
    if !is_value_dtype(values.dtype()) {
        return Err(err(
            op,
            format!(
                "values dtype {} is not a value dtype ({VALUE_DTYPES})",
                values.dtype()
            ),
        ));
    }
    if values.rank() != 1 {
        return Err(err(
            op,
            format!("values must be 1-D, got shape {}", values.shape()),
        ));
    }
    if values.elem_count() != len {
        return Err(err(
            op,
            format!(
                "values has {} elements, expected nnz = {len}",
                values.elem_count()
            ),
        ));
    }
    values.contiguous()
}

/// The same checks as [`check_values`], as a bool for `debug_assert!`.
fn values_ok(values: &Tensor, len: usize) -> bool {
    is_value_dtype(values.dtype())
        && values.rank() == 1
        && values.elem_count() == len
        && values.is_contiguous()
}

/// `[rows, cols]` of a dense 2-D tensor with a value dtype.
fn dense_dims(op: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    if t.rank() != 2 {
        return Err(Error::invalid(
            op,
            format!(
                "expected a 2-D [out_features, in_features] tensor, got shape {}",
                t.shape()
            ),
        ));
    }
    if !is_value_dtype(t.dtype()) {
        return Err(unsupported(op, t.dtype()));
    }
    Ok((t.dims()[0], t.dims()[1]))
}

/// Checks a `from_dense_mask` mask against the dense shape.
fn check_mask(op: &'static str, mask: &[bool], rows: usize, cols: usize) -> Result<()> {
    if mask.len() != rows * cols {
        return Err(err(
            op,
            format!(
                "mask has {} entries, expected rows × cols = {rows} × {cols} = {}",
                mask.len(),
                rows * cols
            ),
        ));
    }
    Ok(())
}

/// Checks packed bits: `rows × ceil(cols/8)` bytes and zero padding bits.
fn check_bits(rows: usize, cols: usize, bits: &[u8]) -> std::result::Result<(), String> {
    let rb = row_bytes(cols);
    let want = rows
        .checked_mul(rb)
        .ok_or_else(|| format!("bitmask size {rows} × {rb} bytes overflows"))?;
    if bits.len() != want {
        return Err(format!(
            "bitmask has {} bytes, expected rows × ceil(cols/8) = {rows} × {rb} = {want}",
            bits.len()
        ));
    }
    let pad_mask: u8 = match cols % 8 {
        0 => 0,
        k => !((1u8 << k) - 1),
    };
    for (r, row) in bits.chunks_exact(rb.max(1)).enumerate() {
        if let Some(&last) = row.last() {
            if last & pad_mask != 0 {
                return Err(format!(
                    "row {r}: padding bits set in the last bitmask byte ({last:#010b}) beyond \
                     column {cols}"
                ));
            }
        }
    }
    Ok(())
}

/// Calls `f(c)` for each set bit of a packed row, in increasing column order.
#[inline]
fn for_each_bit(row: &[u8], mut f: impl FnMut(usize)) {
    for (j, &byte) in row.iter().enumerate() {
        let mut b = byte;
        while b != 0 {
            f(j * 8 + b.trailing_zeros() as usize);
            b &= b - 1;
        }
    }
}

/// Whether bit `c` of a packed row is set.
#[inline]
fn bit(row: &[u8], c: usize) -> bool {
    row[c / 8] >> (c % 8) & 1 == 1
}

/// Dense `[rows, cols]` elements with the values scattered to the set bits (row-major), zeros
/// elsewhere.
fn scatter_bits<T: WithDType>(rows: usize, cols: usize, bits: &[u8], vals: &[T]) -> Vec<T> {
    let rb = row_bytes(cols);
    let mut out = vec![T::from_f64(0.0); rows * cols];
    let mut k = 0;
    if rb == 0 {
        return out;
    }
    for (r, row) in bits.chunks_exact(rb).enumerate() {
        let o = &mut out[r * cols..(r + 1) * cols];
        for_each_bit(row, |c| {
            o[c] = vals[k];
            k += 1;
        });
    }
    out
}

/// The kept entries of one row, `(column, value)` in increasing column order.
type RowEntries<T> = Vec<(usize, T)>;

/// Row source over a dense row-major matrix: the nonzeros, or the masked positions.
fn dense_rows<'a, T: WithDType>(
    data: &'a [T],
    cols: usize,
    mask: Option<&'a [bool]>,
) -> impl FnMut(usize, &mut RowEntries<T>) + 'a {
    move |r, out| {
        let row = &data[r * cols..(r + 1) * cols];
        match mask {
            None => out.extend(
                row.iter()
                    .enumerate()
                    .filter(|(_, v)| v.to_f64() != 0.0)
                    .map(|(c, &v)| (c, v)),
            ),
            Some(m) => out.extend(
                row.iter()
                    .zip(&m[r * cols..(r + 1) * cols])
                    .enumerate()
                    .filter(|(_, (_, &k))| k)
                    .map(|(c, (&v, _))| (c, v)),
            ),
        }
    }
}

/// Checks the N:M parameters against a column count.
fn check_nm_params(op: &'static str, cols: usize, n: usize, m: usize) -> Result<()> {
    if n == 0 || n >= m {
        return Err(err(
            op,
            format!("invalid N:M pattern {n}:{m}, need 0 < n < m"),
        ));
    }
    if !cols.is_multiple_of(m) {
        return Err(err(
            op,
            format!("{n}:{m} sparsity needs cols to be a multiple of {m}, got {cols} columns"),
        ));
    }
    Ok(())
}

/// True when every group of `m` consecutive columns (within a row, starting at column 0) of the
/// 2-D tensor `t` holds at most `n` nonzeros (`value != 0.0`; NaN counts as nonzero). That is
/// what N:M pruning produces: a group with fewer nonzeros is still N:M, and
/// [`NmSparse::from_dense`] accepts exactly the matrices for which this is true.
///
/// `t`: `[rows, cols]`, any dtype. `false` when `cols` is not a multiple of `m` (such a matrix
/// cannot be stored as [`NmSparse`]). Errors: `t` not 2-D ([`Error::InvalidArgument`]), or not
/// `0 < n < m` ([`Error::SparseFormat`]).
pub fn is_nm(t: &Tensor, n: usize, m: usize) -> Result<bool> {
    const OP: &str = "is_nm";
    if t.rank() != 2 {
        return Err(Error::invalid(
            OP,
            format!("expected a 2-D tensor, got shape {}", t.shape()),
        ));
    }
    let cols = t.dims()[1];
    if n == 0 || n >= m {
        return Err(err(
            OP,
            format!("invalid N:M pattern {n}:{m}, need 0 < n < m"),
        ));
    }
    if !cols.is_multiple_of(m) {
        return Ok(false);
    }
    fn check<T: WithDType>(t: &Tensor, n: usize, m: usize) -> bool {
        t.values::<T>()
            .chunks_exact(m)
            .all(|g| g.iter().filter(|v| v.to_f64() != 0.0).count() <= n)
    }
    Ok(match t.dtype() {
        DType::F32 => check::<f32>(t, n, m),
        DType::F16 => check::<half::f16>(t, n, m),
        DType::BF16 => check::<half::bf16>(t, n, m),
        DType::F64 => check::<f64>(t, n, m),
        DType::U8 => check::<u8>(t, n, m),
        DType::U32 => check::<u32>(t, n, m),
        DType::I64 => check::<i64>(t, n, m),
    })
}

/// Fraction of the elements of `t` that are exactly zero (`-0.0` included), any shape and dtype;
/// 0 for an empty tensor. The same number [`Csr::sparsity`] reports after
/// [`Csr::from_dense`].
pub fn sparsity_of(t: &Tensor) -> f64 {
    t.zero_fraction()
}

/// Density `nnz / (rows × cols)`; 1 for an empty matrix (nothing was pruned).
fn density(nnz: usize, rows: usize, cols: usize) -> f64 {
    let total = rows as f64 * cols as f64;
    if total == 0.0 {
        1.0
    } else {
        nnz as f64 / total
    }
}
