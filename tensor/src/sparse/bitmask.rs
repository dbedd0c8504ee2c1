//! [`Bitmask`]: the compressed-tensors "sparse-bitmask" layout, one bit per weight plus the kept
//! values.
//!
//! ```
//! use shears_tensor::{sparse::Bitmask, Tensor};
//! // 10 columns: two bytes per row, bits 2..8 of the second byte are padding (zero).
//! let mut d = vec![0f32; 20];
//! d[0] = 1.;
//! d[9] = 2.;
//! d[13] = 3.;
//! let bm = Bitmask::from_dense(&Tensor::from_vec(d, [2, 10])?)?;
//! assert_eq!(bm.bits(), &[0b1, 0b10, 0b1000, 0]);
//! assert_eq!(bm.row_offsets(), &[0, 2]);
//! assert_eq!(bm.values_as::<f32>()?, &[1., 2., 3.]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use super::{
    check_bits, check_dims, check_mask, check_nm_params, check_values, dense_dims, density, elems,
    err, for_each_bit, row_bytes, scatter_bits, values_ok, with_value_type, Csr, NmSparse,
    RowEntries,
};
use crate::{DType, Result, Tensor, WithDType};

/// A `[rows, cols]` matrix as a packed bitmask and its kept values (compressed-tensors
/// "sparse-bitmask"):
/// - `bits`: `rows × ceil(cols/8)` bytes; row `r` starts at byte `r·ceil(cols/8)`, column `c` is
///   byte `c/8`, bit `c%8` (little-endian bit order, numpy `packbits(bitorder="little")`);
///   padding bits past `cols` are zero.
/// - `values`: the kept values in row-major order (`nnz` = number of set bits).
/// - `row_offsets`: `rows` entries, the start of each row in `values` (exclusive prefix sum of the
///   row popcounts).
#[derive(Clone, Debug)]
pub struct Bitmask {
    rows: usize,
    cols: usize,
    bits: Vec<u8>,
    row_offsets: Vec<usize>,
    values: Tensor,
}

/// Checks every invariant but the values tensor; returns nnz.
fn validate(
    rows: usize,
    cols: usize,
    bits: &[u8],
    row_offsets: &[usize],
) -> std::result::Result<usize, String> {
    check_dims(rows, cols)?;
    // First, so that `rows` is backed by memory the caller really holds.
    if row_offsets.len() != rows {
        return Err(format!(
            "row_offsets has {} entries, expected rows = {rows}",
            row_offsets.len()
        ));
    }
    check_bits(rows, cols, bits)?;
    let rb = row_bytes(cols);
    let mut total = 0usize;
    for (r, &off) in row_offsets.iter().enumerate() {
        let count: usize = bits[r * rb..(r + 1) * rb]
            .iter()
            .map(|b| b.count_ones() as usize)
            .sum();
        if off != total {
            return Err(format!(
                "row_offsets[{r}] is {off} but the bitmask rows before it hold {total} values \
                 (offsets inconsistent with the popcounts)"
            ));
        }
        total += count;
    }
    Ok(total)
}

/// `(bits, row_offsets, values)` from per-row kept entries.
fn build<T: WithDType>(
    rows: usize,
    cols: usize,
    mut row: impl FnMut(usize, &mut RowEntries<T>),
) -> (Vec<u8>, Vec<usize>, Vec<T>) {
    let rb = row_bytes(cols);
    let mut bits = vec![0u8; rows * rb];
    let mut row_offsets = Vec::with_capacity(rows);
    let mut vals = Vec::new();
    let mut buf = Vec::new();
    for r in 0..rows {
        buf.clear();
        row(r, &mut buf);
        row_offsets.push(vals.len());
        for &(c, v) in &buf {
            bits[r * rb + c / 8] |= 1 << (c % 8);
            vals.push(v);
        }
    }
    (bits, row_offsets, vals)
}

impl Bitmask {
    /// The matrix `[rows, cols]` from its parts, checking every invariant: both dims at most
    /// [`super::MAX_DIM`], `bits` has
    /// `rows × ceil(cols/8)` bytes with zero padding bits, `row_offsets` has `rows` entries equal
    /// to the running popcount, `values` is 1-D f32/f16/bf16 with one element per set bit (made
    /// contiguous if it is a strided view). Errors: [`crate::Error::SparseFormat`] naming the first
    /// broken invariant.
    pub fn new(
        rows: usize,
        cols: usize,
        bits: Vec<u8>,
        row_offsets: Vec<usize>,
        values: Tensor,
    ) -> Result<Self> {
        const OP: &str = "Bitmask::new";
        let nnz = validate(rows, cols, &bits, &row_offsets).map_err(|m| err(OP, m))?;
        let values = check_values(OP, &values, nnz)?;
        Ok(Bitmask {
            rows,
            cols,
            bits,
            row_offsets,
            values,
        })
    }

    /// The matrix from parts the caller guarantees valid (the contract of [`Bitmask::new`], with
    /// `values` already contiguous). Nothing is checked in release builds; a broken invariant
    /// makes later calls panic or compute garbage (never undefined behaviour). Debug builds
    /// assert the invariants.
    pub fn new_unchecked(
        rows: usize,
        cols: usize,
        bits: Vec<u8>,
        row_offsets: Vec<usize>,
        values: Tensor,
    ) -> Self {
        debug_assert!(
            matches!(validate(rows, cols, &bits, &row_offsets), Ok(n) if values_ok(&values, n)),
            "Bitmask::new_unchecked: invalid parts ({:?}, values {values:?})",
            validate(rows, cols, &bits, &row_offsets)
        );
        Bitmask {
            rows,
            cols,
            bits,
            row_offsets,
            values,
        }
    }

    fn from_rows(op: &'static str, t: &Tensor, mask: Option<&[bool]>) -> Result<Self> {
        let (rows, cols) = dense_dims(op, t)?;
        elems(op, rows, cols)?;
        if let Some(m) = mask {
            check_mask(op, m, rows, cols)?;
        }
        with_value_type!(op, t.dtype(), T => {
            let data = t.values::<T>();
            let (bits, offs, vals) = build(rows, cols, super::dense_rows(&data, cols, mask));
            let n = vals.len();
            Ok(Bitmask::new_unchecked(rows, cols, bits, offs, Tensor::from_vec(vals, n)?))
        })
    }

    /// The nonzeros of a dense `[rows, cols]` tensor (f32/f16/bf16); zeros, `-0.0` included, are
    /// dropped, as compressed-tensors' `tensor != 0` does. The values keep the tensor's dtype.
    pub fn from_dense(t: &Tensor) -> Result<Self> {
        Self::from_rows("Bitmask::from_dense", t, None)
    }

    /// Exactly the positions where `mask` is true (row-major, `rows × cols` entries), zero values
    /// included, of a dense `[rows, cols]` tensor.
    pub fn from_dense_mask(t: &Tensor, mask: &[bool]) -> Result<Self> {
        Self::from_rows("Bitmask::from_dense_mask", t, Some(mask))
    }

    /// The dense `[rows, cols]` tensor, dtype of the values, `+0.0` at pruned positions.
    pub fn to_dense(&self) -> Result<Tensor> {
        with_value_type!("Bitmask::to_dense", self.dtype(), T => {
            let vals = self.values.as_slice::<T>()?;
            let out = scatter_bits(self.rows, self.cols, &self.bits, vals);
            Tensor::from_vec(out, [self.rows, self.cols])
        })
    }

    /// The same structure with the values converted to `dtype` (f32, f16 or bf16; rounding to
    /// nearest-even). A value that rounds to zero stays stored.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if !super::is_value_dtype(dtype) {
            return Err(super::unsupported("Bitmask::to_dtype", dtype));
        }
        Ok(Bitmask {
            values: self.values.to_dtype(dtype)?,
            ..self.clone()
        })
    }

    /// The same matrix as [`Csr`]; the values tensor is shared, not copied.
    pub fn to_csr(&self) -> Csr {
        let rb = row_bytes(self.cols);
        let mut indptr = Vec::with_capacity(self.rows + 1);
        let mut indices = Vec::with_capacity(self.nnz());
        indptr.push(0);
        for r in 0..self.rows {
            for_each_bit(&self.bits[r * rb..(r + 1) * rb], |c| indices.push(c as u32));
            indptr.push(indices.len());
        }
        Csr::new_unchecked(self.rows, self.cols, indptr, indices, self.values.clone())
    }

    /// The same matrix as [`NmSparse`] with `n` kept positions in every group of `m` columns. A
    /// group with fewer than `n` set bits gets zero-valued kept positions at its lowest free
    /// columns (the dense matrix is unchanged); when no group needs padding the values tensor is
    /// shared, not copied. Errors ([`crate::Error::SparseFormat`]): not `0 < n < m`, `cols` not a
    /// multiple of `m`, or a group with more than `n` set bits.
    pub fn to_nm(&self, n: usize, m: usize) -> Result<NmSparse> {
        const OP: &str = "Bitmask::to_nm";
        check_nm_params(OP, self.cols, n, m)?;
        let rb = row_bytes(self.cols);
        let mut exact = true;
        if rb > 0 {
            for (r, row) in self.bits.chunks_exact(rb).enumerate() {
                for g in 0..self.cols / m {
                    let k = super::nm::group_count(row, g, m);
                    if k > n {
                        return Err(err(
                            OP,
                            format!(
                                "row {r}, columns {}..{}: {k} kept positions, more than {n} \
                                 ({n}:{m})",
                                g * m,
                                (g + 1) * m
                            ),
                        ));
                    }
                    exact &= k == n;
                }
            }
        }
        if exact {
            return Ok(NmSparse::new_unchecked(
                self.rows,
                self.cols,
                n,
                m,
                self.bits.clone(),
                self.values.clone(),
            ));
        }
        with_value_type!(OP, self.dtype(), T => {
            let vals = self.values.as_slice::<T>()?;
            let bits = &self.bits;
            let offs = &self.row_offsets;
            let rows = move |r: usize, out: &mut RowEntries<T>| {
                let mut k = offs[r];
                for_each_bit(&bits[r * rb..(r + 1) * rb], |c| {
                    out.push((c, vals[k]));
                    k += 1;
                });
            };
            NmSparse::build_from_rows(OP, self.rows, self.cols, n, m, rows)
        })
    }

    /// Number of rows (out_features).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns (in_features).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }
    /// The dtype of the values.
    pub fn dtype(&self) -> DType {
        self.values.dtype()
    }
    /// Number of stored values (set bits).
    pub fn nnz(&self) -> usize {
        self.values.elem_count()
    }
    /// `nnz / (rows × cols)`; 1 for an empty matrix.
    pub fn density(&self) -> f64 {
        density(self.nnz(), self.rows, self.cols)
    }
    /// `1 - density`.
    pub fn sparsity(&self) -> f64 {
        1.0 - self.density()
    }
    /// The packed bits: `rows × ceil(cols/8)` bytes, row-major, little-endian bit order.
    pub fn bits(&self) -> &[u8] {
        &self.bits
    }
    /// Bytes per packed row, `ceil(cols/8)`.
    pub fn row_bytes(&self) -> usize {
        row_bytes(self.cols)
    }
    /// Start of each row in the values (`rows` entries; row `r` ends where row `r + 1` starts,
    /// the last row at `nnz`).
    pub fn row_offsets(&self) -> &[usize] {
        &self.row_offsets
    }
    /// The values: a 1-D contiguous tensor of `nnz` elements, row-major.
    pub fn values(&self) -> &Tensor {
        &self.values
    }
    /// The values as a slice of `T`, which must be the dtype (`f32`, `half::f16`, `half::bf16`).
    pub fn values_as<T: WithDType>(&self) -> Result<&[T]> {
        self.values.as_slice::<T>()
    }
    /// Bytes a product reads: the bits, `row_offsets` (usize) and the values.
    pub fn weight_bytes(&self) -> usize {
        self.bits.len()
            + self.row_offsets.len() * std::mem::size_of::<usize>()
            + self.nnz() * self.dtype().size_in_bytes()
    }
}
