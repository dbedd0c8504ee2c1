//! Where tensor elements live. A [`Storage`] is shared (behind an `Arc`) by every view of it and
//! never mutated once built; ops make new storage. CPU buffers are either owned vectors or
//! read-only windows into a memory-mapped checkpoint, so loading does not copy.
//!
//! A new device (wgpu) adds a [`Storage`] variant and a backend module; op call sites on
//! [`crate::Tensor`] do not change.

use crate::DType;
use half::{bf16, f16};
use std::ops::Deref;
use std::sync::Arc;

/// The device a tensor lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Device {
    /// Host memory, computed by the CPU kernels.
    Cpu,
}

/// A read-only buffer of `T`: owned, or a window into a memory map.
pub struct Buf<T> {
    inner: BufInner<T>,
}

enum BufInner<T> {
    Owned(Vec<T>),
    Mapped {
        map: Arc<memmap2::Mmap>,
        byte_offset: usize,
        len: usize,
    },
}

impl<T: bytemuck::Pod> Buf<T> {
    /// A window of `len` elements starting at `byte_offset` of `map`, or `None` when the window
    /// is out of bounds or not aligned for `T` (the caller then copies).
    pub(crate) fn mapped(map: Arc<memmap2::Mmap>, byte_offset: usize, len: usize) -> Option<Self> {
        let bytes = len.checked_mul(std::mem::size_of::<T>())?;
        let end = byte_offset.checked_add(bytes)?;
        if end > map.len() {
            return None;
        }
        let ptr = map[byte_offset..].as_ptr();
        if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return None;
        }
        Some(Buf {
            inner: BufInner::Mapped {
                map,
                byte_offset,
                len,
            },
        })
    }
    /// True when the buffer borrows a memory map instead of owning its elements.
    pub fn is_mapped(&self) -> bool {
        matches!(self.inner, BufInner::Mapped { .. })
    }
}

impl<T: bytemuck::Pod> Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.inner {
            BufInner::Owned(v) => v,
            BufInner::Mapped {
                map,
                byte_offset,
                len,
            } => {
                let bytes = &map[*byte_offset..*byte_offset + len * std::mem::size_of::<T>()];
                // Alignment and bounds were checked in `Buf::mapped`.
                bytemuck::cast_slice(bytes)
            }
        }
    }
}

impl<T> From<Vec<T>> for Buf<T> {
    fn from(v: Vec<T>) -> Self {
        Buf {
            inner: BufInner::Owned(v),
        }
    }
}

/// Elements in host memory, one variant per dtype.
#[non_exhaustive]
pub enum CpuStorage {
    /// f32 elements.
    F32(Buf<f32>),
    /// f64 elements.
    F64(Buf<f64>),
    /// f16 elements.
    F16(Buf<f16>),
    /// bf16 elements.
    BF16(Buf<bf16>),
    /// u8 elements.
    U8(Buf<u8>),
    /// u32 elements.
    U32(Buf<u32>),
    /// i64 elements.
    I64(Buf<i64>),
}

/// Applies `$body` with `$b` bound to the typed `Buf` of a `CpuStorage`.
macro_rules! map_cpu {
    ($s:expr, $b:ident => $body:expr) => {
        match $s {
            $crate::storage::CpuStorage::F32($b) => $body,
            $crate::storage::CpuStorage::F64($b) => $body,
            $crate::storage::CpuStorage::F16($b) => $body,
            $crate::storage::CpuStorage::BF16($b) => $body,
            $crate::storage::CpuStorage::U8($b) => $body,
            $crate::storage::CpuStorage::U32($b) => $body,
            $crate::storage::CpuStorage::I64($b) => $body,
        }
    };
}
pub(crate) use map_cpu;

impl CpuStorage {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::U8(_) => DType::U8,
            CpuStorage::U32(_) => DType::U32,
            CpuStorage::I64(_) => DType::I64,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        map_cpu!(self, b => b.len())
    }
    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The elements as raw little-endian bytes (x86_64 and aarch64 are little-endian).
    pub fn as_bytes(&self) -> &[u8] {
        map_cpu!(self, b => bytemuck::cast_slice(&b[..]))
    }
    /// True when the elements borrow a memory-mapped file.
    pub fn is_mapped(&self) -> bool {
        map_cpu!(self, b => b.is_mapped())
    }
}

/// The storage behind a tensor, on some device.
#[non_exhaustive]
pub enum Storage {
    /// Host memory.
    Cpu(CpuStorage),
}

impl Storage {
    /// The device the storage lives on.
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
        }
    }
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
        }
    }
    /// The CPU storage.
    pub fn cpu(&self) -> &CpuStorage {
        match self {
            Storage::Cpu(s) => s,
        }
    }
}
