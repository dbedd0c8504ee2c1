//! Sorting along a dim: sort, topk and kth-value, each returning values and i64 indices. NaN
//! sorts as larger than every number (last when ascending), as in PyTorch. Sorting is stable.
//!
//! ```
//! use shears_tensor::Tensor;
//! let x = Tensor::from_vec(vec![3f32, 1., 2., 9., 7., 8.], [2, 3])?;
//! let (v, i) = x.sort(-1, false)?;
//! assert_eq!(v.to_vec::<f32>()?, vec![1., 2., 3., 7., 8., 9.]);
//! assert_eq!(i.to_vec::<i64>()?, vec![1, 2, 0, 1, 2, 0]);
//! let (top, _) = x.topk(1, -1, true)?;
//! assert_eq!(top.to_vec::<f32>()?, vec![3., 9.]);
//! let (kth, _) = x.kthvalue(2, -1, false)?; // 2nd smallest per row
//! assert_eq!(kth.to_vec::<f32>()?, vec![2., 8.]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::storage::{map_cpu, CpuStorage};
use crate::{Dim, Error, Result, Tensor, WithDType};
use std::cmp::Ordering;

/// Total order with NaN greater than everything (NaNs equal among themselves).
#[inline]
fn nan_last<T: PartialOrd>(a: &T, b: &T) -> Ordering {
    match a.partial_cmp(b) {
        Some(o) => o,
        #[allow(clippy::eq_op)]
        None => {
            let a_nan = a != a;
            let b_nan = b != b;
            a_nan.cmp(&b_nan)
        }
    }
}

/// A comparison of (value, index) pairs.
type PairCmp<T> = dyn Fn(&(T, usize), &(T, usize)) -> Ordering;

/// What to keep of each sorted row.
#[derive(Clone, Copy)]
enum Select {
    /// All, ascending or descending.
    Sort { descending: bool },
    /// The `k` largest (descending) or smallest (ascending).
    TopK { k: usize, largest: bool },
    /// The `k`-th smallest (1-based).
    Kth { k: usize },
}

impl Tensor {
    /// Sorts along `dim`; returns `(values, indices)` with indices into the original dim.
    pub fn sort(&self, dim: impl Dim, descending: bool) -> Result<(Tensor, Tensor)> {
        self.select_rows("sort", dim, Select::Sort { descending }, true)
    }
    /// The `k` largest (or smallest) entries along `dim`, in sorted order, with their indices.
    pub fn topk(&self, k: usize, dim: impl Dim, largest: bool) -> Result<(Tensor, Tensor)> {
        self.select_rows("topk", dim, Select::TopK { k, largest }, true)
    }
    /// The `k`-th smallest entry along `dim` (1-based, as `torch.kthvalue`) and its index.
    pub fn kthvalue(&self, k: usize, dim: impl Dim, keepdim: bool) -> Result<(Tensor, Tensor)> {
        self.select_rows("kthvalue", dim, Select::Kth { k }, keepdim)
    }

    fn select_rows(
        &self,
        op: &'static str,
        dim: impl Dim,
        sel: Select,
        keepdim: bool,
    ) -> Result<(Tensor, Tensor)> {
        let d = dim.to_index(op, self.shape())?;
        let n = self.dims()[d];
        let out_n = match sel {
            Select::Sort { .. } => n,
            Select::TopK { k, .. } => {
                if k > n {
                    return Err(Error::invalid(
                        op,
                        format!("k = {k} exceeds dim {d} of size {n}"),
                    ));
                }
                k
            }
            Select::Kth { k } => {
                if k == 0 || k > n {
                    return Err(Error::invalid(
                        op,
                        format!("k = {k} is not in 1..={n} (dim {d})"),
                    ));
                }
                1
            }
        };
        let last = self.rank() - 1;
        let x = if d == last {
            self.clone()
        } else {
            self.transpose(d, last)?
        };
        let rows = x.elem_count() / n.max(1);
        let (vals, idx) = map_cpu!(x.cpu(), b => {
            fn typed<T: WithDType>(_: &[T], x: &Tensor, n: usize, rows: usize, out_n: usize, sel: Select) -> (CpuStorage, Vec<i64>) {
                let v = x.values::<T>();
                let mut vals = Vec::with_capacity(rows * out_n);
                let mut idx = Vec::with_capacity(rows * out_n);
                let mut pairs: Vec<(T, usize)> = Vec::with_capacity(n);
                for r in 0..rows {
                    pairs.clear();
                    pairs.extend(v[r * n..(r + 1) * n].iter().copied().zip(0..n));
                    let by = |a: &(T, usize), b: &(T, usize)| nan_last(&a.0, &b.0).then(a.1.cmp(&b.1));
                    let desc = |a: &(T, usize), b: &(T, usize)| nan_last(&b.0, &a.0).then(a.1.cmp(&b.1));
                    let kept: &[(T, usize)] = match sel {
                        Select::Sort { descending: false } => { pairs.sort_by(by); &pairs }
                        Select::Sort { descending: true } => { pairs.sort_by(desc); &pairs }
                        Select::TopK { k, largest } => {
                            let cmp: &PairCmp<T> = if largest { &desc } else { &by };
                            if k > 0 && k < n {
                                pairs.select_nth_unstable_by(k - 1, cmp);
                            }
                            pairs[..k].sort_by(cmp);
                            &pairs[..k]
                        }
                        Select::Kth { k } => {
                            pairs.select_nth_unstable_by(k - 1, by);
                            &pairs[k - 1..k]
                        }
                    };
                    for &(val, i) in kept {
                        vals.push(val);
                        idx.push(i as i64);
                    }
                }
                (T::into_storage(vals), idx)
            }
            typed(b, &x, n, rows, out_n, sel)
        });
        let mut dims = x.dims().to_vec();
        dims[last] = out_n;
        let vals = Tensor::from_cpu(vals, dims.clone().into());
        let idx = Tensor::from_cpu(CpuStorage::I64(idx.into()), dims.into());
        let (mut vals, mut idx) = if d == last {
            (vals, idx)
        } else {
            (
                vals.transpose(d, last)?.contiguous()?,
                idx.transpose(d, last)?.contiguous()?,
            )
        };
        if let Select::Kth { .. } = sel {
            if !keepdim {
                vals = vals.squeeze(d)?;
                idx = idx.squeeze(d)?;
            }
        }
        Ok((vals, idx))
    }
}
