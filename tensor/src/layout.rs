//! How a tensor's logical elements map onto its storage: shape, strides (in elements) and a start
//! offset. All views (transpose, narrow, broadcast, ...) are layout changes over the same storage.

use crate::{Error, Result, Shape};

/// Shape, strides and offset of a tensor within its storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    /// The row-major layout of `shape` starting at element 0.
    pub fn contiguous(shape: Shape) -> Self {
        let strides = shape.contiguous_strides();
        Layout {
            shape,
            strides,
            offset: 0,
        }
    }
    /// The layout with explicit strides and offset (callers guarantee it stays within storage).
    pub(crate) fn new(shape: Shape, strides: Vec<usize>, offset: usize) -> Self {
        debug_assert_eq!(shape.rank(), strides.len());
        Layout {
            shape,
            strides,
            offset,
        }
    }
    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The dims.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    /// The strides, in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    /// Index of the first element in storage.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// True when the elements are stored row-major and without gaps from `offset` on.
    /// Dims of size 1 may have any stride.
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1usize;
        for (&d, &s) in self.shape.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != acc {
                return false;
            }
            acc *= d;
        }
        true
    }
    /// If contiguous, the storage range holding the elements in order.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous()
            .then(|| self.offset..self.offset + self.shape.elem_count())
    }
    /// Storage index of each logical element, in row-major logical order.
    pub fn offsets(&self) -> StridedOffsets<'_> {
        StridedOffsets::new(self)
    }
    /// The same walk with size-1 dims dropped and neighbouring dims merged where the outer one
    /// steps exactly over the inner one (`stride[d] == stride[d + 1] · dims[d + 1]`), as
    /// `(dims, strides)`: a contiguous layout becomes one dim of stride 1, a broadcast of one
    /// element one dim of stride 0, a transposed matrix stays two dims.
    pub(crate) fn merged(&self) -> (Vec<usize>, Vec<usize>) {
        let mut dims: Vec<usize> = Vec::with_capacity(self.strides.len());
        let mut strides: Vec<usize> = Vec::with_capacity(self.strides.len());
        for (&d, &s) in self.shape.dims().iter().zip(&self.strides) {
            if d == 1 {
                continue;
            }
            match (dims.last_mut(), strides.last_mut()) {
                (Some(ld), Some(ls)) if *ls == s * d => {
                    *ld *= d;
                    *ls = s;
                }
                _ => {
                    dims.push(d);
                    strides.push(s);
                }
            }
        }
        (dims, strides)
    }
    /// The storage index of one logical position.
    pub fn offset_of(&self, index: &[usize]) -> usize {
        self.offset
            + index
                .iter()
                .zip(&self.strides)
                .map(|(i, s)| i * s)
                .sum::<usize>()
    }

    pub(crate) fn transpose(&self, d0: usize, d1: usize) -> Layout {
        let mut dims = self.shape.dims().to_vec();
        let mut strides = self.strides.clone();
        dims.swap(d0, d1);
        strides.swap(d0, d1);
        Layout::new(dims.into(), strides, self.offset)
    }
    pub(crate) fn permute(&self, perm: &[usize]) -> Layout {
        let dims: Vec<usize> = perm.iter().map(|&p| self.shape.dims()[p]).collect();
        let strides = perm.iter().map(|&p| self.strides[p]).collect();
        Layout::new(dims.into(), strides, self.offset)
    }
    pub(crate) fn narrow(&self, dim: usize, start: usize, len: usize) -> Layout {
        let mut dims = self.shape.dims().to_vec();
        dims[dim] = len;
        let offset = if len == 0 {
            self.offset
        } else {
            self.offset + start * self.strides[dim]
        };
        Layout::new(dims.into(), self.strides.clone(), offset)
    }
    /// Broadcast to `target` (numpy rules); new and size-1 dims get stride 0.
    pub(crate) fn broadcast_as(&self, op: &'static str, target: &Shape) -> Result<Layout> {
        let src = self.shape.dims();
        let t = target.dims();
        if t.len() < src.len() {
            return Err(Error::Broadcast {
                op,
                lhs: self.shape.clone(),
                rhs: target.clone(),
            });
        }
        let extra = t.len() - src.len();
        let mut strides = vec![0; t.len()];
        for i in 0..src.len() {
            if src[i] == t[extra + i] {
                strides[extra + i] = self.strides[i];
            } else if src[i] == 1 {
                strides[extra + i] = 0;
            } else {
                return Err(Error::Broadcast {
                    op,
                    lhs: self.shape.clone(),
                    rhs: target.clone(),
                });
            }
        }
        Ok(Layout::new(target.clone(), strides, self.offset))
    }
    /// A layout with the new shape over the same elements without copying, if the strides allow
    /// it (PyTorch's `view` rule); `None` if a copy is needed.
    pub(crate) fn reshape_view(&self, new: &Shape) -> Option<Layout> {
        if self.is_contiguous() {
            return Some(Layout::new(
                new.clone(),
                new.contiguous_strides(),
                self.offset,
            ));
        }
        if new.elem_count() == 0 {
            return Some(Layout::new(
                new.clone(),
                new.contiguous_strides(),
                self.offset,
            ));
        }
        // Split the old dims into chunks that are contiguous among themselves, and require each
        // chunk to map to a run of new dims with the same element count.
        let old_d = self.shape.dims();
        let old_s = &self.strides;
        let new_d = new.dims();
        let mut new_s = vec![0usize; new_d.len()];
        let mut view_d = new_d.len() as isize - 1;
        let mut chunk_base_stride = *old_s.last().unwrap_or(&1);
        let mut tensor_numel = 1usize;
        let mut view_numel = 1usize;
        for tensor_d in (0..old_d.len()).rev() {
            tensor_numel *= old_d[tensor_d];
            let end_of_chunk = tensor_d == 0
                || (old_d[tensor_d - 1] != 1
                    && old_s[tensor_d - 1] != tensor_numel * chunk_base_stride);
            if end_of_chunk {
                while view_d >= 0 && (view_numel < tensor_numel || new_d[view_d as usize] == 1) {
                    new_s[view_d as usize] = view_numel * chunk_base_stride;
                    view_numel *= new_d[view_d as usize];
                    view_d -= 1;
                }
                if view_numel != tensor_numel {
                    return None;
                }
                if tensor_d > 0 {
                    chunk_base_stride = old_s[tensor_d - 1];
                    tensor_numel = 1;
                    view_numel = 1;
                }
            }
        }
        if view_d != -1 {
            return None;
        }
        Some(Layout::new(new.clone(), new_s, self.offset))
    }
}

/// Iterator over the storage indices of a layout's elements in row-major logical order.
pub struct StridedOffsets<'a> {
    layout: &'a Layout,
    index: Vec<usize>,
    next: Option<usize>,
    remaining: usize,
}

impl<'a> StridedOffsets<'a> {
    fn new(layout: &'a Layout) -> Self {
        let n = layout.shape.elem_count();
        StridedOffsets {
            layout,
            index: vec![0; layout.shape.rank()],
            next: (n > 0).then_some(layout.offset),
            remaining: n,
        }
    }
}

impl Iterator for StridedOffsets<'_> {
    type Item = usize;
    #[inline]
    fn next(&mut self) -> Option<usize> {
        let cur = self.next?;
        self.remaining -= 1;
        if self.remaining == 0 {
            self.next = None;
            return Some(cur);
        }
        let dims = self.layout.shape.dims();
        let strides = &self.layout.strides;
        let mut off = cur;
        for d in (0..dims.len()).rev() {
            self.index[d] += 1;
            off += strides[d];
            if self.index[d] < dims[d] {
                break;
            }
            off -= strides[d] * dims[d];
            self.index[d] = 0;
        }
        self.next = Some(off);
        Some(cur)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for StridedOffsets<'_> {}
