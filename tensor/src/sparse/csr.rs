//! [`Csr`]: compressed sparse rows, for unstructured sparsity.
//!
//! ```
//! use shears_tensor::{sparse::Csr, Tensor};
//! let w = Tensor::from_vec(vec![0f32, 5., 0., 0., 0., 0., 7., 8., 0.], [3, 3])?;
//! let csr = Csr::from_dense(&w)?;
//! assert_eq!(csr.indptr(), &[0, 1, 1, 3]); // row 1 is empty
//! assert_eq!(csr.indices(), &[1, 0, 1]);
//! assert_eq!(csr.values_as::<f32>()?, &[5., 7., 8.]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use super::{
    check_dims, check_mask, check_values, dense_dims, density, elems, err, values_ok,
    with_value_type, Bitmask, NmSparse, RowEntries,
};
use crate::{DType, Result, Tensor, WithDType};

/// A `[rows, cols]` matrix in compressed sparse row form: row `r` keeps the columns
/// `indices[indptr[r]..indptr[r + 1]]` (strictly increasing, `< cols`) with the values at the same
/// positions of `values`.
#[derive(Clone, Debug)]
pub struct Csr {
    rows: usize,
    cols: usize,
    indptr: Vec<usize>,
    indices: Vec<u32>,
    values: Tensor,
}

/// Checks every CSR invariant but the values tensor; the message names the first problem.
fn validate(
    rows: usize,
    cols: usize,
    indptr: &[usize],
    indices: &[u32],
) -> std::result::Result<(), String> {
    check_dims(rows, cols)?;
    if indptr.len() != rows.saturating_add(1) {
        return Err(format!(
            "indptr has {} entries, expected rows + 1 = {}",
            indptr.len(),
            rows.saturating_add(1)
        ));
    }
    if indptr[0] != 0 {
        return Err(format!("indptr[0] is {}, expected 0", indptr[0]));
    }
    for (r, w) in indptr.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(format!(
                "indptr decreases at row {r} ({} then {})",
                w[0], w[1]
            ));
        }
    }
    if indptr[rows] != indices.len() {
        return Err(format!(
            "indptr ends at {} but there are {} indices",
            indptr[rows],
            indices.len()
        ));
    }
    for (r, w) in indptr.windows(2).enumerate() {
        let row = &indices[w[0]..w[1]];
        if let Some(&c) = row.iter().find(|&&c| c as usize >= cols) {
            return Err(format!(
                "row {r}: column index {c} is out of range for {cols} columns"
            ));
        }
        if let Some(p) = row.windows(2).find(|p| p[1] <= p[0]) {
            return Err(format!(
                "row {r}: column indices are not strictly increasing ({} then {})",
                p[0], p[1]
            ));
        }
    }
    Ok(())
}

/// `(indptr, indices, values)` from per-row kept entries.
fn build<T: WithDType>(
    rows: usize,
    mut row: impl FnMut(usize, &mut RowEntries<T>),
) -> (Vec<usize>, Vec<u32>, Vec<T>) {
    let mut indptr = Vec::with_capacity(rows + 1);
    indptr.push(0);
    let (mut indices, mut vals) = (Vec::new(), Vec::new());
    let mut buf = Vec::new();
    for r in 0..rows {
        buf.clear();
        row(r, &mut buf);
        for &(c, v) in &buf {
            // cols <= MAX_DIM = u32::MAX, checked by the callers.
            indices.push(c as u32);
            vals.push(v);
        }
        indptr.push(indices.len());
    }
    (indptr, indices, vals)
}

impl Csr {
    /// The matrix `[rows, cols]` from its parts, checking every invariant: both dims at most
    /// [`super::MAX_DIM`], `indptr` has
    /// `rows + 1` non-decreasing entries from 0 to `indices.len()`, each row's `indices` are
    /// strictly increasing and `< cols`, `values` is 1-D f32/f16/bf16 with one element per index
    /// (made contiguous if it is a strided view). Errors: [`crate::Error::SparseFormat`] naming
    /// the first broken invariant.
    pub fn new(
        rows: usize,
        cols: usize,
        indptr: Vec<usize>,
        indices: Vec<u32>,
        values: Tensor,
    ) -> Result<Self> {
        const OP: &str = "Csr::new";
        validate(rows, cols, &indptr, &indices).map_err(|m| err(OP, m))?;
        let values = check_values(OP, &values, indices.len())?;
        Ok(Csr {
            rows,
            cols,
            indptr,
            indices,
            values,
        })
    }

    /// The matrix from parts the caller guarantees valid (the contract of [`Csr::new`], with
    /// `values` already contiguous). Nothing is checked in release builds; a broken invariant
    /// makes later calls panic or compute garbage (never undefined behaviour). Debug builds
    /// assert the invariants.
    pub fn new_unchecked(
        rows: usize,
        cols: usize,
        indptr: Vec<usize>,
        indices: Vec<u32>,
        values: Tensor,
    ) -> Self {
        debug_assert_eq!(validate(rows, cols, &indptr, &indices), Ok(()));
        debug_assert!(values_ok(&values, indices.len()), "Csr values: {values:?}");
        Csr {
            rows,
            cols,
            indptr,
            indices,
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
            let (indptr, indices, vals) = build(rows, super::dense_rows(&data, cols, mask));
            let n = vals.len();
            Ok(Csr::new_unchecked(rows, cols, indptr, indices, Tensor::from_vec(vals, n)?))
        })
    }

    /// The nonzeros of a dense `[rows, cols]` tensor (f32/f16/bf16); zeros, `-0.0` included, are
    /// dropped. The values keep the tensor's dtype.
    pub fn from_dense(t: &Tensor) -> Result<Self> {
        Self::from_rows("Csr::from_dense", t, None)
    }

    /// Exactly the positions where `mask` is true (row-major, `rows × cols` entries), zero values
    /// included, of a dense `[rows, cols]` tensor.
    pub fn from_dense_mask(t: &Tensor, mask: &[bool]) -> Result<Self> {
        Self::from_rows("Csr::from_dense_mask", t, Some(mask))
    }

    /// The dense `[rows, cols]` tensor, dtype of the values, `+0.0` at pruned positions.
    pub fn to_dense(&self) -> Result<Tensor> {
        with_value_type!("Csr::to_dense", self.dtype(), T => {
            let vals = self.values.as_slice::<T>()?;
            let mut out = vec![T::from_f64(0.0); self.rows * self.cols];
            for (r, w) in self.indptr.windows(2).enumerate() {
                let o = &mut out[r * self.cols..(r + 1) * self.cols];
                for k in w[0]..w[1] {
                    o[self.indices[k] as usize] = vals[k];
                }
            }
            Tensor::from_vec(out, [self.rows, self.cols])
        })
    }

    /// The same structure with the values converted to `dtype` (f32, f16 or bf16; rounding to
    /// nearest-even). A value that rounds to zero stays stored.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if !super::is_value_dtype(dtype) {
            return Err(super::unsupported("Csr::to_dtype", dtype));
        }
        Ok(Csr {
            values: self.values.to_dtype(dtype)?,
            ..self.clone()
        })
    }

    /// The same matrix as a [`Bitmask`]; the values tensor is shared, not copied.
    pub fn to_bitmask(&self) -> Bitmask {
        let rb = super::row_bytes(self.cols);
        let mut bits = vec![0u8; self.rows * rb];
        for (r, w) in self.indptr.windows(2).enumerate() {
            for &c in &self.indices[w[0]..w[1]] {
                let c = c as usize;
                bits[r * rb + c / 8] |= 1 << (c % 8);
            }
        }
        let row_offsets = self.indptr[..self.rows].to_vec();
        Bitmask::new_unchecked(self.rows, self.cols, bits, row_offsets, self.values.clone())
    }

    /// The same matrix as N:M; see [`Bitmask::to_nm`] (errors when a group of `m` columns holds
    /// more than `n` entries).
    pub fn to_nm(&self, n: usize, m: usize) -> Result<NmSparse> {
        self.to_bitmask().to_nm(n, m)
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
    /// Number of stored values.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }
    /// `nnz / (rows × cols)`; 1 for an empty matrix.
    pub fn density(&self) -> f64 {
        density(self.nnz(), self.rows, self.cols)
    }
    /// `1 - density`.
    pub fn sparsity(&self) -> f64 {
        1.0 - self.density()
    }
    /// Row pointers: `rows + 1` entries, row `r` is `indptr[r]..indptr[r + 1]`.
    pub fn indptr(&self) -> &[usize] {
        &self.indptr
    }
    /// Column index of each stored value (`nnz` entries).
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }
    /// The values: a 1-D contiguous tensor of `nnz` elements.
    pub fn values(&self) -> &Tensor {
        &self.values
    }
    /// The values as a slice of `T`, which must be the dtype (`f32`, `half::f16`, `half::bf16`).
    pub fn values_as<T: WithDType>(&self) -> Result<&[T]> {
        self.values.as_slice::<T>()
    }
    /// Bytes a product reads: `indptr` (usize), `indices` (u32) and the values.
    pub fn weight_bytes(&self) -> usize {
        self.indptr.len() * std::mem::size_of::<usize>()
            + self.indices.len() * 4
            + self.nnz() * self.dtype().size_in_bytes()
    }
}
