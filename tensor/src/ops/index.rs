//! Indexing: index_select, gather, scatter_add and embedding lookup. Indices may be i64, u32 or
//! u8 tensors; every index is checked and an out-of-range one is an error naming it.
//!
//! ```
//! use shears_tensor::Tensor;
//! let w = Tensor::from_vec(vec![0f32, 0., 1., 1., 2., 2.], [3, 2])?; // 3 tokens, hidden 2
//! let ids = Tensor::from_vec(vec![2u32, 0], [2])?;
//! assert_eq!(w.embedding(&ids)?.to_vec::<f32>()?, vec![2., 2., 0., 0.]);
//! assert!(w.embedding(&Tensor::from_vec(vec![3u32], [1])?).is_err());
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::storage::map_cpu;
use crate::tensor::{from_float_data, FloatData, FloatOut};
use crate::{Dim, Error, Result, Shape, Tensor, WithDType};

fn check_index(op: &'static str, i: i64, dim: usize, size: usize) -> Result<usize> {
    if i < 0 || i as u64 >= size as u64 {
        return Err(Error::IndexOutOfRange {
            op,
            index: i,
            dim,
            size,
        });
    }
    Ok(i as usize)
}

impl Tensor {
    /// Picks entries `indices` (1-D) along `dim`; output has `dim` resized to `indices.len()`.
    pub fn index_select(&self, indices: &Tensor, dim: impl Dim) -> Result<Tensor> {
        const OP: &str = "index_select";
        let d = dim.to_index(OP, self.shape())?;
        if indices.rank() != 1 {
            return Err(Error::invalid(
                OP,
                format!("indices must be 1-D, got shape {}", indices.shape()),
            ));
        }
        let n = self.dims()[d];
        let idx: Vec<usize> = indices
            .index_values(OP)?
            .iter()
            .map(|&i| check_index(OP, i, d, n))
            .collect::<Result<_>>()?;
        let outer: usize = self.dims()[..d].iter().product();
        let inner: usize = self.dims()[d + 1..].iter().product();
        let x = self.contiguous()?;
        let s = map_cpu!(x.cpu(), b => {
            let v = &b[x.layout().contiguous_range().expect("contiguous")];
            let mut out = Vec::with_capacity(outer * idx.len() * inner);
            for o in 0..outer {
                for &i in &idx {
                    let s = (o * n + i) * inner;
                    out.extend_from_slice(&v[s..s + inner]);
                }
            }
            WithDType::into_storage(out)
        });
        let mut dims = self.dims().to_vec();
        dims[d] = idx.len();
        Ok(Tensor::from_cpu(s, dims.into()))
    }

    /// Embedding lookup: `self` is a `[vocab, hidden]` table, `ids` any shape of token ids;
    /// returns `ids.shape + [hidden]`.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(Error::invalid(
                "embedding",
                format!("table must be 2-D, got shape {}", self.shape()),
            ));
        }
        let rows = self.index_select(&ids.flatten_all()?, 0)?;
        let mut dims = ids.dims().to_vec();
        dims.push(self.dims()[1]);
        rows.reshape(dims)
    }

    /// Checks `index` against `self` for gather/scatter: same rank, every dim but `d` no larger.
    fn check_gather_shape(
        &self,
        op: &'static str,
        index: &Tensor,
        d: usize,
        other: &Shape,
    ) -> Result<()> {
        if index.rank() != self.rank()
            || index
                .dims()
                .iter()
                .zip(other.dims())
                .enumerate()
                .any(|(i, (&a, &b))| i != d && a > b)
        {
            return Err(Error::shape_msg(
                op,
                self.shape(),
                index.shape(),
                format!(
                    "index must have rank {} and no dim (but {d}) larger than {other}",
                    self.rank()
                ),
            ));
        }
        Ok(())
    }

    /// `out[i][j][k] = self[i][index[i][j][k]][k]` (for `dim = 1`); output has `index`'s shape.
    pub fn gather(&self, dim: impl Dim, index: &Tensor) -> Result<Tensor> {
        const OP: &str = "gather";
        let d = dim.to_index(OP, self.shape())?;
        self.check_gather_shape(OP, index, d, self.shape())?;
        let idx = index.index_values(OP)?;
        let size = self.dims()[d];
        let layout = self.layout();
        let mut pos = vec![0usize; index.rank()];
        let mut offs = Vec::with_capacity(idx.len());
        for &i in idx.iter() {
            let mut p = pos.clone();
            p[d] = check_index(OP, i, d, size)?;
            offs.push(layout.offset_of(&p));
            advance(&mut pos, index.dims());
        }
        let s = map_cpu!(self.cpu(), b => WithDType::into_storage(offs.iter().map(|&o| b[o]).collect()));
        Ok(Tensor::from_cpu(s, index.shape().clone()))
    }

    /// A copy of `self` with `src` added in at positions given by `index` along `dim`:
    /// `out[i][index[i][j][k]][k] += src[i][j][k]` (for `dim = 1`). Float dtypes.
    pub fn scatter_add(&self, dim: impl Dim, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        const OP: &str = "scatter_add";
        let d = dim.to_index(OP, self.shape())?;
        if src.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch {
                op: OP,
                lhs: self.dtype(),
                rhs: src.dtype(),
            });
        }
        self.check_gather_shape(OP, index, d, self.shape())?;
        if index.dims().iter().zip(src.dims()).any(|(a, b)| a > b) || src.rank() != index.rank() {
            return Err(Error::shape_msg(
                OP,
                src.shape(),
                index.shape(),
                "index must fit inside src",
            ));
        }
        let idx = index.index_values(OP)?;
        let size = self.dims()[d];
        let strides = self.shape().contiguous_strides();
        let src_strides = src.shape().contiguous_strides();
        let dot = |p: &[usize], s: &[usize]| p.iter().zip(s).map(|(a, b)| a * b).sum::<usize>();
        // (target offset in the row-major output, source offset in row-major src) per entry.
        let mut pos = vec![0usize; index.rank()];
        let mut pairs = Vec::with_capacity(idx.len());
        for &i in idx.iter() {
            let so = dot(&pos, &src_strides);
            let mut p = pos.clone();
            p[d] = check_index(OP, i, d, size)?;
            pairs.push((dot(&p, &strides), so));
            advance(&mut pos, index.dims());
        }
        let src_all = src.float_values(OP)?;
        let out = match (self.float_values(OP)?, src_all) {
            (FloatData::F32(a), FloatData::F32(s)) => {
                let mut a = a.into_owned();
                for &(t, o) in &pairs {
                    a[t] += s[o];
                }
                FloatOut::F32(a)
            }
            (FloatData::F64(a), FloatData::F64(s)) => {
                let mut a = a.into_owned();
                for &(t, o) in &pairs {
                    a[t] += s[o];
                }
                FloatOut::F64(a)
            }
            _ => unreachable!("dtypes checked equal"),
        };
        Ok(from_float_data(out, self.shape().clone(), self.dtype()))
    }
}

/// Row-major increment of a multi-index.
fn advance(pos: &mut [usize], dims: &[usize]) {
    for d in (0..dims.len()).rev() {
        pos[d] += 1;
        if pos[d] < dims[d] {
            return;
        }
        pos[d] = 0;
    }
}
