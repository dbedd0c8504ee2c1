//! Views and movement: reshape, transpose, permute, narrow, broadcast, squeeze/unsqueeze (all
//! without copying), plus cat, stack and split.
//!
//! ```
//! use shears_tensor::{DType, Tensor};
//! let x = Tensor::arange(0., 12., 1., DType::F32)?.reshape([3, 4])?;
//! let v = x.narrow(1, 1, 2)?.t()?; // [2, 3] view of columns 1..3
//! assert!(v.same_storage(&x));
//! let y = Tensor::cat(&[&x, &x], 0)?;
//! assert_eq!(y.dims(), &[6, 4]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::layout::Layout;
use crate::storage::{map_cpu, CpuStorage};
use crate::{Dim, Error, Result, Shape, Tensor, WithDType};

impl Tensor {
    /// The same elements with a new shape: a view when the strides allow it, else a copy (use
    /// [`Tensor::reshape_infer`] to give one dim as `-1`).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ElementCount {
                op: "reshape",
                expected: shape.elem_count(),
                got: self.elem_count(),
                shape,
            });
        }
        match self.layout().reshape_view(&shape) {
            Some(l) => Ok(self.with_layout(l)),
            None => self.contiguous()?.reshape(shape),
        }
    }
    /// Reshape where one entry may be `-1` (inferred from the element count).
    pub fn reshape_infer(&self, dims: &[i64]) -> Result<Tensor> {
        let bad = || {
            Error::invalid(
                "reshape",
                format!("cannot reshape {} to {dims:?}", self.shape()),
            )
        };
        let mut infer = None;
        let mut known = 1usize;
        for (i, &d) in dims.iter().enumerate() {
            if d == -1 {
                if infer.replace(i).is_some() {
                    return Err(bad());
                }
            } else if d < 0 {
                return Err(bad());
            } else {
                known *= d as usize;
            }
        }
        let mut out: Vec<usize> = dims.iter().map(|&d| d.max(0) as usize).collect();
        if let Some(i) = infer {
            if known == 0 || !self.elem_count().is_multiple_of(known) {
                return Err(bad());
            }
            out[i] = self.elem_count() / known;
        }
        self.reshape(out)
    }
    /// All dims merged into one (a view when contiguous).
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(self.elem_count())
    }
    /// Swaps two dims (a view).
    pub fn transpose(&self, d0: impl Dim, d1: impl Dim) -> Result<Tensor> {
        let a = d0.to_index("transpose", self.shape())?;
        let b = d1.to_index("transpose", self.shape())?;
        Ok(self.with_layout(self.layout().transpose(a, b)))
    }
    /// Transpose of the last two dims (a view); rank must be at least 2.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::invalid(
                "t",
                format!("needs rank >= 2, got shape {}", self.shape()),
            ));
        }
        self.transpose(self.rank() - 2, self.rank() - 1)
    }
    /// Reorders the dims: output dim `i` is input dim `perm[i]` (a view).
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let mut seen = vec![false; self.rank()];
        if perm.len() != self.rank()
            || perm
                .iter()
                .any(|&p| p >= self.rank() || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::invalid(
                "permute",
                format!(
                    "{perm:?} is not a permutation of the dims of {}",
                    self.shape()
                ),
            ));
        }
        Ok(self.with_layout(self.layout().permute(perm)))
    }
    /// `len` entries of `dim` starting at `start` (a view).
    pub fn narrow(&self, dim: impl Dim, start: usize, len: usize) -> Result<Tensor> {
        let d = dim.to_index("narrow", self.shape())?;
        let size = self.dims()[d];
        if start.checked_add(len).is_none_or(|e| e > size) {
            return Err(Error::IndexOutOfRange {
                op: "narrow",
                index: start.saturating_add(len) as i64,
                dim: d,
                size,
            });
        }
        Ok(self.with_layout(self.layout().narrow(d, start, len)))
    }
    /// A view broadcast to `shape` (numpy rules: size-1 and missing leading dims repeat).
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let l = self.layout().broadcast_as("broadcast_as", &shape.into())?;
        Ok(self.with_layout(l))
    }
    /// Removes a dim of size 1 (a view); errors if its size is not 1.
    pub fn squeeze(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.to_index("squeeze", self.shape())?;
        if self.dims()[d] != 1 {
            return Err(Error::invalid(
                "squeeze",
                format!("dim {d} of {} is not 1", self.shape()),
            ));
        }
        let mut dims = self.dims().to_vec();
        let mut strides = self.stride().to_vec();
        dims.remove(d);
        strides.remove(d);
        Ok(self.with_layout(Layout::new(dims.into(), strides, self.layout().offset())))
    }
    /// Inserts a dim of size 1 at `dim` (`0..=rank`; a view).
    pub fn unsqueeze(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.to_index_plus_one("unsqueeze", self.shape())?;
        let mut dims = self.dims().to_vec();
        let mut strides = self.stride().to_vec();
        let s = if d < dims.len() {
            strides[d] * dims[d]
        } else {
            1
        };
        dims.insert(d, 1);
        strides.insert(d, s);
        Ok(self.with_layout(Layout::new(dims.into(), strides, self.layout().offset())))
    }

    /// Concatenates tensors along `dim`; all other dims and the dtype must agree.
    pub fn cat(tensors: &[&Tensor], dim: impl Dim) -> Result<Tensor> {
        let first = *tensors
            .first()
            .ok_or_else(|| Error::invalid("cat", "empty list of tensors"))?;
        let d = dim.to_index("cat", first.shape())?;
        let mut total = 0;
        for t in tensors {
            if t.dtype() != first.dtype() {
                return Err(Error::DTypeMismatch {
                    op: "cat",
                    lhs: first.dtype(),
                    rhs: t.dtype(),
                });
            }
            let same_rank = t.rank() == first.rank();
            if !same_rank
                || t.dims()
                    .iter()
                    .zip(first.dims())
                    .enumerate()
                    .any(|(i, (a, b))| i != d && a != b)
            {
                return Err(Error::shape_msg(
                    "cat",
                    first.shape(),
                    t.shape(),
                    format!("all dims but {d} must match"),
                ));
            }
            total += t.dims()[d];
        }
        let mut out_dims = first.dims().to_vec();
        out_dims[d] = total;
        let outer: usize = out_dims[..d].iter().product();
        let parts: Vec<Tensor> = tensors
            .iter()
            .map(|t| t.contiguous())
            .collect::<Result<_>>()?;
        fn cat_typed<T: WithDType>(
            parts: &[Tensor],
            outer: usize,
            d: usize,
            n: usize,
        ) -> CpuStorage {
            let mut out = Vec::with_capacity(n);
            let blocks: Vec<(std::borrow::Cow<'_, [T]>, usize)> = parts
                .iter()
                .map(|p| (p.values::<T>(), p.dims()[d..].iter().product::<usize>()))
                .collect();
            for o in 0..outer {
                for (v, block) in &blocks {
                    out.extend_from_slice(&v[o * block..(o + 1) * block]);
                }
            }
            T::into_storage(out)
        }
        let n: usize = out_dims.iter().product();
        let s = map_cpu!(first.cpu(), b => {
            fn pick<T: WithDType>(_: &[T]) -> fn(&[Tensor], usize, usize, usize) -> CpuStorage { cat_typed::<T> }
            pick(b)(&parts, outer, d, n)
        });
        Ok(Tensor::from_cpu(s, out_dims.into()))
    }
    /// Stacks equal-shaped tensors along a new dim `dim` (`0..=rank`).
    pub fn stack(tensors: &[&Tensor], dim: impl Dim) -> Result<Tensor> {
        let first = *tensors
            .first()
            .ok_or_else(|| Error::invalid("stack", "empty list of tensors"))?;
        let d = dim.to_index_plus_one("stack", first.shape())?;
        for t in tensors {
            if t.shape() != first.shape() {
                return Err(Error::shape_msg(
                    "stack",
                    first.shape(),
                    t.shape(),
                    "all shapes must match",
                ));
            }
        }
        let parts: Vec<Tensor> = tensors
            .iter()
            .map(|t| t.unsqueeze(d))
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = parts.iter().collect();
        Tensor::cat(&refs, d)
    }
    /// Splits `dim` into pieces of `size` (the last may be smaller); each piece is a view.
    pub fn split(&self, size: usize, dim: impl Dim) -> Result<Vec<Tensor>> {
        let d = dim.to_index("split", self.shape())?;
        if size == 0 {
            return Err(Error::invalid("split", "split size must be positive"));
        }
        let n = self.dims()[d];
        (0..n)
            .step_by(size)
            .map(|s| self.narrow(d, s, size.min(n - s)))
            .collect()
    }
    /// Splits `dim` into pieces of the given sizes, which must sum to its size (views).
    pub fn split_sizes(&self, sizes: &[usize], dim: impl Dim) -> Result<Vec<Tensor>> {
        let d = dim.to_index("split", self.shape())?;
        if sizes.iter().sum::<usize>() != self.dims()[d] {
            return Err(Error::invalid(
                "split",
                format!("sizes {sizes:?} do not sum to dim {d} of {}", self.shape()),
            ));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&s| {
                let t = self.narrow(d, start, s);
                start += s;
                t
            })
            .collect()
    }
    /// Splits `dim` into `chunks` nearly equal views (PyTorch's `chunk`).
    pub fn chunk(&self, chunks: usize, dim: impl Dim) -> Result<Vec<Tensor>> {
        let d = dim.to_index("chunk", self.shape())?;
        if chunks == 0 {
            return Err(Error::invalid("chunk", "number of chunks must be positive"));
        }
        let size = self.dims()[d].div_ceil(chunks).max(1);
        self.split(size, d)
    }
}
