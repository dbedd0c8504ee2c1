//! [`SparseTensor`] and [`SparseRef`]: any of the three sparse formats, owned or borrowed, with
//! the questions every format answers (shape, dtype, nnz, bytes, dense form).
//!
//! ```
//! use shears_tensor::sparse::{Csr, SparseRef, SparseTensor};
//! use shears_tensor::Tensor;
//! let w = Tensor::from_vec(vec![0f32, 1., 0., 0.], [2, 2])?;
//! let s: SparseTensor = Csr::from_dense(&w)?.into();
//! assert_eq!((s.shape(), s.nnz(), s.sparsity()), ([2, 2], 1, 0.75));
//! let r: SparseRef<'_> = s.view();
//! assert_eq!(r.format_name(), "shears-csr");
//! assert_eq!(r.to_dense()?.to_vec::<f32>()?, w.to_vec::<f32>()?);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use super::{Bitmask, Csr, NmSparse};
use crate::{DType, Result, Tensor};

/// A sparse matrix of any of the three formats, owned.
#[derive(Clone, Debug)]
pub enum SparseTensor {
    /// Compressed sparse rows.
    Csr(Csr),
    /// N:M structured.
    Nm(NmSparse),
    /// compressed-tensors sparse-bitmask.
    Bitmask(Bitmask),
}

/// A borrowed sparse matrix of any of the three formats (what [`super::save_sparse`] takes).
#[derive(Clone, Copy, Debug)]
pub enum SparseRef<'a> {
    /// Compressed sparse rows.
    Csr(&'a Csr),
    /// N:M structured.
    Nm(&'a NmSparse),
    /// compressed-tensors sparse-bitmask.
    Bitmask(&'a Bitmask),
}

impl<'a> From<&'a Csr> for SparseRef<'a> {
    fn from(s: &'a Csr) -> Self {
        SparseRef::Csr(s)
    }
}
impl<'a> From<&'a NmSparse> for SparseRef<'a> {
    fn from(s: &'a NmSparse) -> Self {
        SparseRef::Nm(s)
    }
}
impl<'a> From<&'a Bitmask> for SparseRef<'a> {
    fn from(s: &'a Bitmask) -> Self {
        SparseRef::Bitmask(s)
    }
}
impl<'a> From<&'a SparseTensor> for SparseRef<'a> {
    fn from(s: &'a SparseTensor) -> Self {
        s.view()
    }
}
impl From<SparseRef<'_>> for SparseTensor {
    /// An owned copy; the values tensor is shared, not copied.
    fn from(s: SparseRef<'_>) -> Self {
        match s {
            SparseRef::Csr(s) => SparseTensor::Csr(s.clone()),
            SparseRef::Nm(s) => SparseTensor::Nm(s.clone()),
            SparseRef::Bitmask(s) => SparseTensor::Bitmask(s.clone()),
        }
    }
}
impl From<Csr> for SparseTensor {
    fn from(s: Csr) -> Self {
        SparseTensor::Csr(s)
    }
}
impl From<NmSparse> for SparseTensor {
    fn from(s: NmSparse) -> Self {
        SparseTensor::Nm(s)
    }
}
impl From<Bitmask> for SparseTensor {
    fn from(s: Bitmask) -> Self {
        SparseTensor::Bitmask(s)
    }
}

/// Applies `$body` to the inner type of a [`SparseRef`].
macro_rules! each {
    ($s:expr, $x:ident => $body:expr) => {
        match $s {
            SparseRef::Csr($x) => $body,
            SparseRef::Nm($x) => $body,
            SparseRef::Bitmask($x) => $body,
        }
    };
}

impl SparseRef<'_> {
    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        each!(self, s => s.shape())
    }
    /// The dtype of the values.
    pub fn dtype(&self) -> DType {
        each!(self, s => s.dtype())
    }
    /// Number of stored values.
    pub fn nnz(&self) -> usize {
        each!(self, s => s.nnz())
    }
    /// `nnz / (rows × cols)`; 1 for an empty matrix.
    pub fn density(&self) -> f64 {
        each!(self, s => s.density())
    }
    /// `1 - density`.
    pub fn sparsity(&self) -> f64 {
        each!(self, s => s.sparsity())
    }
    /// Bytes a product reads (see each type's `weight_bytes`).
    pub fn weight_bytes(&self) -> usize {
        each!(self, s => s.weight_bytes())
    }
    /// The dense `[rows, cols]` tensor.
    pub fn to_dense(&self) -> Result<Tensor> {
        each!(self, s => s.to_dense())
    }
    /// The format name for a checkpoint's `sparsity_config.format`: `sparse-bitmask`,
    /// `sparse-24-bitmask` (N:M with n = 2, m = 4), or the shears-only `shears-nm-bitmask` and
    /// `shears-csr`.
    pub fn format_name(&self) -> &'static str {
        match self {
            SparseRef::Bitmask(_) => "sparse-bitmask",
            SparseRef::Nm(s) if (s.n(), s.m()) == (2, 4) => "sparse-24-bitmask",
            SparseRef::Nm(_) => "shears-nm-bitmask",
            SparseRef::Csr(_) => "shears-csr",
        }
    }
}

impl SparseTensor {
    /// A borrowed view.
    pub fn view(&self) -> SparseRef<'_> {
        match self {
            SparseTensor::Csr(s) => SparseRef::Csr(s),
            SparseTensor::Nm(s) => SparseRef::Nm(s),
            SparseTensor::Bitmask(s) => SparseRef::Bitmask(s),
        }
    }
    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        self.view().shape()
    }
    /// The dtype of the values.
    pub fn dtype(&self) -> DType {
        self.view().dtype()
    }
    /// Number of stored values.
    pub fn nnz(&self) -> usize {
        self.view().nnz()
    }
    /// `nnz / (rows × cols)`; 1 for an empty matrix.
    pub fn density(&self) -> f64 {
        self.view().density()
    }
    /// `1 - density`.
    pub fn sparsity(&self) -> f64 {
        self.view().sparsity()
    }
    /// Bytes a product reads (see each type's `weight_bytes`).
    pub fn weight_bytes(&self) -> usize {
        self.view().weight_bytes()
    }
    /// The dense `[rows, cols]` tensor.
    pub fn to_dense(&self) -> Result<Tensor> {
        self.view().to_dense()
    }
    /// See [`SparseRef::format_name`].
    pub fn format_name(&self) -> &'static str {
        self.view().format_name()
    }
}
