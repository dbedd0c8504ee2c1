//! Shapes, dimension arguments and numpy broadcasting.
//!
//! ```
//! use shears_tensor::Shape;
//! let s = Shape::from([2, 1, 4]);
//! assert_eq!(s.elem_count(), 8);
//! let b = Shape::broadcast("add", &s, &Shape::from([3, 1]))?;
//! assert_eq!(b.dims(), &[2, 3, 4]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::{Error, Result};
use std::fmt;

/// The extent of each dimension of a tensor, outermost first.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// The dims as a slice.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    /// Number of dims.
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    /// Product of the dims (1 for a scalar).
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }
    /// Row-major (C order) strides for this shape, in elements.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.0.len()];
        let mut acc = 1usize;
        for (s, &d) in strides.iter_mut().zip(&self.0).rev() {
            *s = acc;
            acc *= d;
        }
        strides
    }
    /// The numpy broadcast of two shapes: dims are aligned from the right; each pair must be equal
    /// or contain a 1.
    pub fn broadcast(op: &'static str, a: &Shape, b: &Shape) -> Result<Shape> {
        let rank = a.rank().max(b.rank());
        let mut out = vec![0; rank];
        for (i, o) in out.iter_mut().enumerate() {
            let da = if i + a.rank() >= rank {
                a.0[i + a.rank() - rank]
            } else {
                1
            };
            let db = if i + b.rank() >= rank {
                b.0[i + b.rank() - rank]
            } else {
                1
            };
            *o = if da == db || db == 1 {
                da
            } else if da == 1 {
                db
            } else {
                return Err(Error::Broadcast {
                    op,
                    lhs: a.clone(),
                    rhs: b.clone(),
                });
            };
        }
        Ok(Shape(out))
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}
impl From<&Vec<usize>> for Shape {
    fn from(v: &Vec<usize>) -> Self {
        Shape(v.clone())
    }
}
impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<&[usize; N]> for Shape {
    fn from(v: &[usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(vec![])
    }
}
impl From<usize> for Shape {
    fn from(n: usize) -> Self {
        Shape(vec![n])
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}

/// A dimension argument: a `usize` counts from the front, a negative `i32`/`i64`/`isize` counts
/// from the back (`-1` is the last dim), as in PyTorch.
pub trait Dim: Copy {
    /// Resolves against a rank, or [`Error::DimOutOfRange`] naming `op`.
    fn to_index(self, op: &'static str, shape: &Shape) -> Result<usize>;
    /// Like [`Dim::to_index`] for ops that may address one past the last dim (`unsqueeze`, `stack`).
    fn to_index_plus_one(self, op: &'static str, shape: &Shape) -> Result<usize>;
}

fn resolve(op: &'static str, dim: i64, shape: &Shape, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let d = if dim < 0 { dim + r } else { dim };
    if d < 0 || d >= r {
        return Err(Error::DimOutOfRange {
            op,
            dim,
            rank: shape.rank(),
            shape: shape.clone(),
        });
    }
    Ok(d as usize)
}

macro_rules! impl_dim {
    ($($t:ty),*) => {$(
        impl Dim for $t {
            fn to_index(self, op: &'static str, shape: &Shape) -> Result<usize> {
                resolve(op, self as i64, shape, shape.rank())
            }
            fn to_index_plus_one(self, op: &'static str, shape: &Shape) -> Result<usize> {
                resolve(op, self as i64, shape, shape.rank() + 1)
            }
        }
    )*};
}
impl_dim!(usize, i32, i64, isize);
