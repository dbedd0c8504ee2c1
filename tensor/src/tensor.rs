//! The [`Tensor`] type: shared immutable storage plus a layout. Cloning a tensor or taking a view
//! is O(1) and never copies elements.
//!
//! ```
//! use shears_tensor::Tensor;
//! let t = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], [2, 3])?;
//! let tt = t.t()?; // a view: same storage, swapped strides
//! assert_eq!(tt.dims(), &[3, 2]);
//! assert_eq!(tt.to_vec2::<f32>()?, vec![vec![1., 4.], vec![2., 5.], vec![3., 6.]]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::layout::Layout;
use crate::storage::{map_cpu, CpuStorage, Storage};
use crate::{DType, Device, Error, Result, Shape, WithDType};
use half::{bf16, f16};
use std::borrow::Cow;
use std::sync::Arc;

/// An n-dimensional array on some device: shared storage plus a layout.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{}; {}", self.shape(), self.dtype())?;
        if self.elem_count() <= 16 {
            write!(f, "; {:?}", self.to_vec_f64())?;
        }
        write!(f, "]")
    }
}

impl Tensor {
    pub(crate) fn from_cpu(storage: CpuStorage, shape: Shape) -> Self {
        debug_assert_eq!(storage.len(), shape.elem_count());
        Tensor {
            storage: Arc::new(Storage::Cpu(storage)),
            layout: Layout::contiguous(shape),
        }
    }
    pub(crate) fn with_layout(&self, layout: Layout) -> Self {
        Tensor {
            storage: self.storage.clone(),
            layout,
        }
    }
    pub(crate) fn cpu(&self) -> &CpuStorage {
        self.storage.cpu()
    }

    /// A tensor of `shape` holding `data` in row-major order; errors if the counts differ.
    pub fn from_vec<T: WithDType>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::ElementCount {
                op: "from_vec",
                expected: shape.elem_count(),
                got: data.len(),
                shape,
            });
        }
        Ok(Self::from_cpu(T::into_storage(data), shape))
    }
    /// A tensor of `shape` copied from `data`.
    pub fn from_slice<T: WithDType>(data: &[T], shape: impl Into<Shape>) -> Result<Self> {
        Self::from_vec(data.to_vec(), shape)
    }
    /// A rank-0 tensor holding `v`.
    pub fn scalar<T: WithDType>(v: T) -> Self {
        Self::from_cpu(T::into_storage(vec![v]), Shape::from(()))
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        self.layout.shape()
    }
    /// The dims.
    pub fn dims(&self) -> &[usize] {
        self.layout.dims()
    }
    /// The size of one dim (negative counts from the back).
    pub fn dim(&self, dim: impl crate::Dim) -> Result<usize> {
        let d = dim.to_index("dim", self.shape())?;
        Ok(self.dims()[d])
    }
    /// Number of dims.
    pub fn rank(&self) -> usize {
        self.shape().rank()
    }
    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape().elem_count()
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }
    /// The device.
    pub fn device(&self) -> Device {
        self.storage.device()
    }
    /// The layout (shape, strides, offset).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    /// The strides, in elements.
    pub fn stride(&self) -> &[usize] {
        self.layout.strides()
    }
    /// True when the elements are row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }
    /// True when both tensors view the same storage.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }
    /// True when the storage borrows a memory-mapped file (checkpoint loaded without copying).
    pub fn is_mapped(&self) -> bool {
        self.cpu().is_mapped()
    }

    /// The same elements in a fresh row-major storage; returns `self` (no copy) when already
    /// contiguous.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let s = map_cpu!(self.cpu(), b => gather_storage(b, &self.layout));
        Ok(Self::from_cpu(s, self.shape().clone()))
    }

    /// The elements in row-major order, borrowed when contiguous. `T` must match the dtype.
    pub(crate) fn values<T: WithDType>(&self) -> Cow<'_, [T]> {
        let s = T::slice(self.cpu()).expect("values: dtype checked by caller");
        match self.layout.contiguous_range() {
            Some(r) => Cow::Borrowed(&s[r]),
            None => Cow::Owned(gather(s, &self.layout, |v| v)),
        }
    }
    /// The elements in row-major order as `T`, which must be the tensor's dtype.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DTypeMismatch {
                op: "to_vec",
                lhs: self.dtype(),
                rhs: T::DTYPE,
            });
        }
        Ok(self.values::<T>().into_owned())
    }
    /// Rows of a rank-2 tensor.
    pub fn to_vec2<T: WithDType>(&self) -> Result<Vec<Vec<T>>> {
        if self.rank() != 2 {
            return Err(Error::invalid(
                "to_vec2",
                format!("expected rank 2, got shape {}", self.shape()),
            ));
        }
        let v = self.to_vec::<T>()?;
        let cols = self.dims()[1];
        if cols == 0 {
            return Ok(vec![vec![]; self.dims()[0]]);
        }
        Ok(v.chunks(cols).map(<[T]>::to_vec).collect())
    }
    /// The single element of a one-element tensor, as `T` (must be the dtype).
    pub fn to_scalar<T: WithDType>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::invalid(
                "to_scalar",
                format!("expected one element, got shape {}", self.shape()),
            ));
        }
        Ok(self.to_vec::<T>()?[0])
    }
    /// The elements in row-major order converted to f64, whatever the dtype.
    pub fn to_vec_f64(&self) -> Vec<f64> {
        map_cpu!(self.cpu(), b => gather(b, &self.layout, |v| v.to_f64()))
    }

    /// The elements as floats in their compute type: f32 for f32/f16/bf16, f64 for f64.
    /// Errors naming `op` for integer dtypes.
    pub(crate) fn float_values(&self, op: &'static str) -> Result<FloatData<'_>> {
        Ok(match self.cpu() {
            CpuStorage::F32(_) => FloatData::F32(self.values::<f32>()),
            CpuStorage::F64(_) => FloatData::F64(self.values::<f64>()),
            CpuStorage::F16(b) => FloatData::F32(Cow::Owned(gather(b, &self.layout, f16::to_f32))),
            CpuStorage::BF16(b) => {
                FloatData::F32(Cow::Owned(gather(b, &self.layout, bf16::to_f32)))
            }
            _ => {
                return Err(Error::UnsupportedDType {
                    op,
                    dtype: self.dtype(),
                    expected: "a float dtype (f32, f64, f16, bf16)",
                })
            }
        })
    }
    /// The elements converted to i64 (integer dtypes only; used for indices).
    pub(crate) fn index_values(&self, op: &'static str) -> Result<Cow<'_, [i64]>> {
        Ok(match self.cpu() {
            CpuStorage::I64(_) => self.values::<i64>(),
            CpuStorage::U32(b) => Cow::Owned(gather(b, &self.layout, i64::from)),
            CpuStorage::U8(b) => Cow::Owned(gather(b, &self.layout, i64::from)),
            _ => {
                return Err(Error::UnsupportedDType {
                    op,
                    dtype: self.dtype(),
                    expected: "an integer index dtype (i64, u32, u8)",
                })
            }
        })
    }
}

/// Float elements in their compute type.
pub(crate) enum FloatData<'a> {
    F32(Cow<'a, [f32]>),
    F64(Cow<'a, [f64]>),
}

/// Builds a tensor of `dtype` from values computed in f32 (rounding to f16/bf16 if needed).
pub(crate) fn from_f32_as(v: Vec<f32>, shape: Shape, dtype: DType) -> Tensor {
    let s = match dtype {
        DType::F16 => CpuStorage::F16(v.into_iter().map(f16::from_f32).collect::<Vec<_>>().into()),
        DType::BF16 => {
            CpuStorage::BF16(v.into_iter().map(bf16::from_f32).collect::<Vec<_>>().into())
        }
        DType::F64 => CpuStorage::F64(v.into_iter().map(f64::from).collect::<Vec<_>>().into()),
        DType::F32 => CpuStorage::F32(v.into()),
        DType::U8 => CpuStorage::U8(v.into_iter().map(|x| x as u8).collect::<Vec<_>>().into()),
        DType::U32 => CpuStorage::U32(v.into_iter().map(|x| x as u32).collect::<Vec<_>>().into()),
        DType::I64 => CpuStorage::I64(v.into_iter().map(|x| x as i64).collect::<Vec<_>>().into()),
    };
    Tensor::from_cpu(s, shape)
}

/// Builds a tensor from float compute results, converting back to `dtype`.
pub(crate) fn from_float_data(v: FloatOut, shape: Shape, dtype: DType) -> Tensor {
    match v {
        FloatOut::F32(v) => from_f32_as(v, shape, dtype),
        FloatOut::F64(v) => Tensor::from_cpu(CpuStorage::F64(v.into()), shape),
    }
}

/// Owned float compute results.
pub(crate) enum FloatOut {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

fn gather_storage<T: WithDType>(b: &[T], layout: &Layout) -> CpuStorage {
    T::into_storage(gather(b, layout, |v| v))
}

/// Side of the square tiles a transposed gather copies through, so that both the reads (down a
/// column of the source) and the writes (along a row of the output) stay within a few cache lines.
const TILE: usize = 32;

/// The elements of `layout` over `src` in row-major logical order, each mapped by `f`: the
/// semantics of `layout.offsets().map(|o| f(src[o]))`, walked a row at a time. Rows of stride 1
/// are copied as runs, rows of stride 0 filled, other rows stepped through; when the last two
/// (merged) dims are a transpose (the inner one strided, the outer one of stride 1) the copy goes
/// through square tiles instead.
pub(crate) fn gather<T: Copy, U: Copy>(src: &[T], layout: &Layout, f: impl Fn(T) -> U) -> Vec<U> {
    let n = layout.shape().elem_count();
    if n == 0 {
        return Vec::new();
    }
    let (dims, strides) = layout.merged();
    let start = layout.offset();
    let Some((&len, &step)) = dims.last().zip(strides.last()) else {
        return vec![f(src[start])];
    };
    let r = dims.len();
    // Offsets of the first element of each row (or of each matrix, for the tiled transpose).
    let outer = |k: usize| Layout::new(dims[..k].to_vec().into(), strides[..k].to_vec(), start);
    if r >= 2 && strides[r - 2] == 1 && step > 1 && len >= TILE && dims[r - 2] >= TILE {
        // out[i, j] = src[base + i + j·step] for an [rows, len] matrix per base.
        let rows = dims[r - 2];
        let mut out = vec![f(src[start]); n];
        for (o, base) in out.chunks_exact_mut(rows * len).zip(outer(r - 2).offsets()) {
            for i0 in (0..rows).step_by(TILE) {
                let i1 = (i0 + TILE).min(rows);
                for j0 in (0..len).step_by(TILE) {
                    for j in j0..(j0 + TILE).min(len) {
                        let col = &src[base + j * step + i0..base + j * step + i1];
                        for (i, &v) in (i0..i1).zip(col) {
                            o[i * len + j] = f(v);
                        }
                    }
                }
            }
        }
        return out;
    }
    let mut out = Vec::with_capacity(n);
    for base in outer(r - 1).offsets() {
        match step {
            1 => out.extend(src[base..base + len].iter().map(|&v| f(v))),
            0 => out.resize(out.len() + len, f(src[base])),
            _ => out.extend(src[base..].iter().step_by(step).take(len).map(|&v| f(v))),
        }
    }
    out
}
