//! [`NmSparse`]: N:M structured sparsity (2:4, 4:8, any `0 < n < m`), as the sparse kernels take
//! it.
//!
//! ```
//! use shears_tensor::{sparse::NmSparse, Tensor};
//! // Row 1's second group has a single nonzero: a zero-valued position (column 4, the lowest
//! // free one) is kept with it so that every group keeps exactly 2.
//! let w = Tensor::from_vec(vec![1f32, 0., 2., 0., 0., 0., 0., 3., 0., 4., 5., 0., 0., 0., 0., 6.], [2, 8])?;
//! let nm = NmSparse::from_dense(&w, 2, 4)?;
//! assert_eq!(nm.bits(), &[0b1001_0101, 0b1001_0110]);
//! assert_eq!(nm.values_as::<f32>()?, &[1., 2., 0., 3., 4., 5., 0., 6.]);
//! assert_eq!(nm.to_dense()?.to_vec::<f32>()?, w.to_vec::<f32>()?);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use super::{
    bit, check_bits, check_dims, check_mask, check_values, dense_dims, density, elems, err,
    row_bytes, scatter_bits, values_ok, with_value_type, Bitmask, Csr, RowEntries,
};
use crate::{DType, Result, Tensor, WithDType};

/// A `[rows, cols]` matrix with exactly `n` kept positions in every group of `m` consecutive
/// columns of a row (`cols % m == 0`):
/// - `bits`: one bit per column in the [`Bitmask`] layout (`rows × ceil(cols/8)` bytes, column `c`
///   of row `r` at byte `r·ceil(cols/8) + c/8`, bit `c%8`, zero padding bits), exactly `n` set
///   per group. The structure is the bits, not the values: a kept value may be `0.0`.
/// - `values`: the kept values, row-major; row `r`'s `(cols/m)·n` values start at
///   `r·(cols/m)·n`.
#[derive(Clone, Debug)]
pub struct NmSparse {
    rows: usize,
    cols: usize,
    n: usize,
    m: usize,
    bits: Vec<u8>,
    values: Tensor,
}

/// Number of set bits among columns `g·m..(g+1)·m` of a packed row.
#[inline]
pub(super) fn group_count(row: &[u8], g: usize, m: usize) -> usize {
    let start = g * m;
    if 8 % m == 0 {
        let mask = ((1u16 << m) - 1) as u8;
        (row[start / 8] >> (start % 8) & mask).count_ones() as usize
    } else if m.is_multiple_of(8) {
        row[start / 8..(start + m) / 8]
            .iter()
            .map(|b| b.count_ones() as usize)
            .sum()
    } else {
        (start..start + m).filter(|&c| bit(row, c)).count()
    }
}

/// Checks every invariant but the values tensor; returns nnz = `rows·(cols/m)·n`.
fn validate(
    rows: usize,
    cols: usize,
    n: usize,
    m: usize,
    bits: &[u8],
) -> std::result::Result<usize, String> {
    if n == 0 || n >= m {
        return Err(format!("invalid N:M pattern {n}:{m}, need 0 < n < m"));
    }
    if !cols.is_multiple_of(m) {
        return Err(format!(
            "{n}:{m} sparsity needs cols to be a multiple of {m}, got {cols} columns"
        ));
    }
    check_dims(rows, cols)?;
    check_bits(rows, cols, bits)?;
    let rb = row_bytes(cols);
    if rb > 0 {
        for (r, row) in bits.chunks_exact(rb).enumerate() {
            for g in 0..cols / m {
                let k = group_count(row, g, m);
                if k != n {
                    return Err(format!(
                        "row {r}, columns {}..{}: {k} bits set, expected exactly {n} ({n}:{m})",
                        g * m,
                        (g + 1) * m
                    ));
                }
            }
        }
    }
    // n < m, so this is at most rows × cols, which does not overflow.
    Ok(rows * (cols / m) * n)
}

impl NmSparse {
    /// The `[rows, cols]` N:M matrix from its parts, checking every invariant: both dims at most
    /// [`super::MAX_DIM`], `0 < n < m`,
    /// `cols % m == 0`, `bits` has `rows × ceil(cols/8)` bytes with zero padding bits and exactly
    /// `n` set per group, `values` is 1-D f32/f16/bf16 with `rows·(cols/m)·n` elements (made
    /// contiguous if it is a strided view). Errors: [`crate::Error::SparseFormat`] naming the
    /// first broken invariant.
    pub fn new(
        rows: usize,
        cols: usize,
        n: usize,
        m: usize,
        bits: Vec<u8>,
        values: Tensor,
    ) -> Result<Self> {
        const OP: &str = "NmSparse::new";
        let nnz = validate(rows, cols, n, m, &bits).map_err(|e| err(OP, e))?;
        let values = check_values(OP, &values, nnz)?;
        Ok(NmSparse {
            rows,
            cols,
            n,
            m,
            bits,
            values,
        })
    }

    /// The matrix from parts the caller guarantees valid (the contract of [`NmSparse::new`], with
    /// `values` already contiguous). Nothing is checked in release builds; a broken invariant
    /// makes later calls panic or compute garbage (never undefined behaviour). Debug builds
    /// assert the invariants.
    pub fn new_unchecked(
        rows: usize,
        cols: usize,
        n: usize,
        m: usize,
        bits: Vec<u8>,
        values: Tensor,
    ) -> Self {
        debug_assert!(
            matches!(validate(rows, cols, n, m, &bits), Ok(k) if values_ok(&values, k)),
            "NmSparse::new_unchecked: invalid parts ({:?}, values {values:?})",
            validate(rows, cols, n, m, &bits)
        );
        NmSparse {
            rows,
            cols,
            n,
            m,
            bits,
            values,
        }
    }

    /// Builds from per-row kept entries (increasing columns), padding each group that holds
    /// fewer than `n` with zero-valued positions at its lowest free columns. Parameters must have
    /// been checked (`0 < n < m`, `cols % m == 0`).
    pub(super) fn build_from_rows<T: WithDType>(
        op: &'static str,
        rows: usize,
        cols: usize,
        n: usize,
        m: usize,
        mut row: impl FnMut(usize, &mut RowEntries<T>),
    ) -> Result<Self> {
        let rb = row_bytes(cols);
        let groups = cols / m;
        let zero = T::from_f64(0.0);
        let mut bits = vec![0u8; rows * rb];
        let mut vals = Vec::with_capacity(rows * groups * n);
        let mut buf = Vec::new();
        let mut taken = vec![false; m];
        for r in 0..rows {
            buf.clear();
            row(r, &mut buf);
            let row_bits = &mut bits[r * rb..(r + 1) * rb];
            let mut i = 0;
            for g in 0..groups {
                let (lo, hi) = (g * m, (g + 1) * m);
                let start = i;
                while i < buf.len() && buf[i].0 < hi {
                    i += 1;
                }
                let kept = &buf[start..i];
                if kept.len() > n {
                    return Err(err(
                        op,
                        format!(
                            "row {r}, columns {lo}..{hi}: {} positions to keep, more than {n} \
                             ({n}:{m})",
                            kept.len()
                        ),
                    ));
                }
                taken.fill(false);
                for &(c, _) in kept {
                    taken[c - lo] = true;
                }
                let mut pad = n - kept.len();
                for t in taken.iter_mut().filter(|t| !**t) {
                    if pad == 0 {
                        break;
                    }
                    *t = true;
                    pad -= 1;
                }
                let mut next = kept.iter().peekable();
                for (j, _) in taken.iter().enumerate().filter(|(_, &t)| t) {
                    let c = lo + j;
                    row_bits[c / 8] |= 1 << (c % 8);
                    let v = match next.peek() {
                        Some(&&(kc, v)) if kc == c => {
                            next.next();
                            v
                        }
                        _ => zero,
                    };
                    vals.push(v);
                }
            }
        }
        let len = vals.len();
        Ok(NmSparse::new_unchecked(
            rows,
            cols,
            n,
            m,
            bits,
            Tensor::from_vec(vals, len)?,
        ))
    }

    fn from_rows(
        op: &'static str,
        t: &Tensor,
        n: usize,
        m: usize,
        mask: Option<&[bool]>,
    ) -> Result<Self> {
        let (rows, cols) = dense_dims(op, t)?;
        elems(op, rows, cols)?;
        super::check_nm_params(op, cols, n, m)?;
        if let Some(mk) = mask {
            check_mask(op, mk, rows, cols)?;
        }
        with_value_type!(op, t.dtype(), T => {
            let data = t.values::<T>();
            Self::build_from_rows(op, rows, cols, n, m, super::dense_rows(&data, cols, mask))
        })
    }

    /// The N:M form of a dense `[rows, cols]` tensor (f32/f16/bf16): the kept positions are the
    /// nonzeros (`-0.0` counts as zero); a group with fewer than `n` nonzeros also keeps
    /// zero-valued positions at its lowest free columns. Errors
    /// ([`crate::Error::SparseFormat`]): not `0 < n < m`, `cols % m != 0`, or a group with more
    /// than `n` nonzeros (see [`super::is_nm`]).
    pub fn from_dense(t: &Tensor, n: usize, m: usize) -> Result<Self> {
        Self::from_rows("NmSparse::from_dense", t, n, m, None)
    }

    /// Keeps the positions where `mask` is true (row-major, `rows × cols` entries), zero values
    /// included; a group with fewer than `n` masked positions is padded with zero-valued kept
    /// positions at its lowest free columns (storing `0.0` there, so the dense matrix is the
    /// masked one). A group with more than `n` masked positions is an error.
    pub fn from_dense_mask(t: &Tensor, mask: &[bool], n: usize, m: usize) -> Result<Self> {
        Self::from_rows("NmSparse::from_dense_mask", t, n, m, Some(mask))
    }

    /// The dense `[rows, cols]` tensor, dtype of the values, `+0.0` at pruned positions.
    pub fn to_dense(&self) -> Result<Tensor> {
        with_value_type!("NmSparse::to_dense", self.dtype(), T => {
            let vals = self.values.as_slice::<T>()?;
            let out = scatter_bits(self.rows, self.cols, &self.bits, vals);
            Tensor::from_vec(out, [self.rows, self.cols])
        })
    }

    /// The same structure with the values converted to `dtype` (f32, f16 or bf16; rounding to
    /// nearest-even). A value that rounds to zero stays stored.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if !super::is_value_dtype(dtype) {
            return Err(super::unsupported("NmSparse::to_dtype", dtype));
        }
        Ok(NmSparse {
            values: self.values.to_dtype(dtype)?,
            ..self.clone()
        })
    }

    /// The same matrix as a [`Bitmask`] (same bits, explicit row offsets); the values tensor is
    /// shared, not copied.
    pub fn to_bitmask(&self) -> Bitmask {
        let per_row = self.row_nnz();
        let row_offsets = (0..self.rows).map(|r| r * per_row).collect();
        Bitmask::new_unchecked(
            self.rows,
            self.cols,
            self.bits.clone(),
            row_offsets,
            self.values.clone(),
        )
    }

    /// The same matrix as [`Csr`] (every kept position, zero-valued ones included).
    pub fn to_csr(&self) -> Csr {
        self.to_bitmask().to_csr()
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
    /// Kept positions per group.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Group size (consecutive columns).
    pub fn m(&self) -> usize {
        self.m
    }
    /// The dtype of the values.
    pub fn dtype(&self) -> DType {
        self.values.dtype()
    }
    /// Number of stored values, `rows·(cols/m)·n`.
    pub fn nnz(&self) -> usize {
        self.values.elem_count()
    }
    /// Stored values per row, `(cols/m)·n`.
    pub fn row_nnz(&self) -> usize {
        self.cols / self.m * self.n
    }
    /// `nnz / (rows × cols)` = `n/m` (1 for an empty matrix).
    pub fn density(&self) -> f64 {
        density(self.nnz(), self.rows, self.cols)
    }
    /// `1 - density`.
    pub fn sparsity(&self) -> f64 {
        1.0 - self.density()
    }
    /// The packed bits, in the [`Bitmask`] layout.
    pub fn bits(&self) -> &[u8] {
        &self.bits
    }
    /// Bytes per packed row, `ceil(cols/8)`.
    pub fn row_bytes(&self) -> usize {
        row_bytes(self.cols)
    }
    /// The values: a 1-D contiguous tensor of `nnz` elements, row-major.
    pub fn values(&self) -> &Tensor {
        &self.values
    }
    /// The values as a slice of `T`, which must be the dtype (`f32`, `half::f16`, `half::bf16`).
    pub fn values_as<T: WithDType>(&self) -> Result<&[T]> {
        self.values.as_slice::<T>()
    }
    /// Bytes a product reads: the bits and the values.
    pub fn weight_bytes(&self) -> usize {
        self.bits.len() + self.nnz() * self.dtype().size_in_bytes()
    }
}
