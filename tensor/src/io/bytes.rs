//! The bytes of a whole checkpoint file, behind the readers: memory-mapped (the file loaders;
//! tensors borrow their window of the map) or held in memory (the `*_from_bytes` entry points, which
//! the parser fuzz targets drive; tensors copy their elements out). One reader code path serves
//! both, so the in-memory entry points validate exactly what the file loaders validate.

use crate::storage::Buf;
use std::ops::Deref;
use std::sync::Arc;

/// A checkpoint file's bytes, shared by the reader and every tensor that borrows them.
#[derive(Clone)]
pub(crate) enum FileBytes {
    /// A read-only memory map of the file.
    Map(Arc<memmap2::Mmap>),
    /// A copy of the file in memory.
    Heap(Arc<[u8]>),
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Map(m) => m,
            FileBytes::Heap(b) => b,
        }
    }
}

impl FileBytes {
    /// `len` elements at `offset`: borrowed from a map when aligned, else copied. The caller has
    /// checked the bounds (the header validation).
    pub(crate) fn window<T: bytemuck::Pod>(&self, offset: usize, len: usize) -> Buf<T> {
        if let FileBytes::Map(map) = self {
            if let Some(b) = Buf::mapped(map.clone(), offset, len) {
                return b;
            }
        }
        let bytes = &self[offset..offset + len * std::mem::size_of::<T>()];
        let mut v = vec![T::zeroed(); len];
        bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(bytes);
        v.into()
    }

    /// The memory map, when the bytes are one.
    pub(crate) fn map(&self) -> Option<&memmap2::Mmap> {
        match self {
            FileBytes::Map(m) => Some(m),
            FileBytes::Heap(_) => None,
        }
    }
}
