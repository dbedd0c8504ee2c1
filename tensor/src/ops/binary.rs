//! Elementwise binary ops with numpy broadcasting, scalar variants, comparisons (giving u8 masks)
//! and `where_cond` / `masked_fill`.
//!
//! ```
//! use shears_tensor::Tensor;
//! let a = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], [2, 3])?;
//! let b = Tensor::from_vec(vec![10f32, 20., 30.], [3])?;
//! assert_eq!(a.add(&b)?.to_vec::<f32>()?, vec![11., 22., 33., 14., 25., 36.]);
//! let m = a.gt_scalar(3.0)?; // u8 mask
//! assert_eq!(a.masked_fill(&m, 0.0)?.to_vec::<f32>()?, vec![1., 2., 3., 0., 0., 0.]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use super::unary::{map_slice, FloatElem};
use crate::layout::Layout;
use crate::storage::{map_cpu, CpuStorage};
use crate::tensor::{from_float_data, FloatData, FloatOut};
use crate::{DType, Error, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// The elementwise binary ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `a ^ b`
    Pow,
    /// `max(a, b)` (NaN propagates)
    Maximum,
    /// `min(a, b)` (NaN propagates)
    Minimum,
}

/// Runs `$body` with `$f` bound to `op`'s scalar function, so each arm inlines its own op.
macro_rules! by_op {
    ($op:expr, $f:ident => $body:expr) => {
        match $op {
            BinaryOp::Add => {
                let $f = |x: F, y: F| x + y;
                $body
            }
            BinaryOp::Sub => {
                let $f = |x: F, y: F| x - y;
                $body
            }
            BinaryOp::Mul => {
                let $f = |x: F, y: F| x * y;
                $body
            }
            BinaryOp::Div => {
                let $f = |x: F, y: F| x / y;
                $body
            }
            BinaryOp::Pow => {
                let $f = |x: F, y: F| x.powf(y);
                $body
            }
            BinaryOp::Maximum => {
                let $f = |x: F, y: F| if x.is_nan() || x > y { x } else { y };
                $body
            }
            BinaryOp::Minimum => {
                let $f = |x: F, y: F| if x.is_nan() || x < y { x } else { y };
                $body
            }
        }
    };
}

impl BinaryOp {
    /// The op's name, as used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
        }
    }
    fn apply<F: FloatElem>(self, a: &[F], b: &[F]) -> Vec<F> {
        fn run<F: FloatElem>(a: &[F], b: &[F], f: impl Fn(F, F) -> F + Sync) -> Vec<F> {
            if a.len() >= 1 << 16 {
                a.par_iter()
                    .zip(b.par_iter())
                    .with_min_len(1 << 14)
                    .map(|(&x, &y)| f(x, y))
                    .collect()
            } else {
                a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
            }
        }
        by_op!(self, f => run(a, b, f))
    }
    /// `op(a[i], c)`, or `op(c, a[i])` when `c_left`: the constant is applied directly instead of
    /// being broadcast and gathered.
    fn apply_const<F: FloatElem>(self, a: &[F], c: F, c_left: bool) -> Vec<F> {
        if c_left {
            by_op!(self, f => map_slice(a, |x| f(c, x)))
        } else {
            by_op!(self, f => map_slice(a, |x| f(x, c)))
        }
    }
}

/// Elementwise comparisons; results are u8 masks (1 where true).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CmpOp {
    /// `a == b`
    Eq,
    /// `a != b`
    Ne,
    /// `a < b`
    Lt,
    /// `a <= b`
    Le,
    /// `a > b`
    Gt,
    /// `a >= b`
    Ge,
}

impl CmpOp {
    fn name(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
        }
    }
    fn test<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }
}

impl Tensor {
    /// Checks dtype and device agree and returns the broadcast shape.
    pub(crate) fn binary_shape(&self, rhs: &Tensor, op: &'static str) -> Result<Shape> {
        if self.dtype() != rhs.dtype() {
            return Err(Error::DTypeMismatch {
                op,
                lhs: self.dtype(),
                rhs: rhs.dtype(),
            });
        }
        if self.device() != rhs.device() {
            return Err(Error::DeviceMismatch {
                op,
                lhs: self.device(),
                rhs: rhs.device(),
            });
        }
        Shape::broadcast(op, self.shape(), rhs.shape())
    }

    /// Applies a binary op with numpy broadcasting. Both operands must be floats of one dtype.
    pub fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        let shape = self.binary_shape(rhs, op.name())?;
        let name = op.name();
        // A side that holds one element (a scalar, or a broadcast of one) is applied as a
        // constant: no broadcast view of it is gathered element by element.
        let (c_left, single) = match (rhs.single_element(), self.single_element()) {
            (Some(c), _) => (false, Some(c)),
            (None, Some(c)) => (true, Some(c)),
            (None, None) => (false, None),
        };
        let out = if let Some(c) = single {
            let other = if c_left { rhs } else { self };
            let a = other.broadcast_as(&shape)?;
            match (a.float_values(name)?, c.float_values(name)?) {
                (FloatData::F32(x), FloatData::F32(y)) => {
                    FloatOut::F32(op.apply_const(&x, y[0], c_left))
                }
                (FloatData::F64(x), FloatData::F64(y)) => {
                    FloatOut::F64(op.apply_const(&x, y[0], c_left))
                }
                _ => unreachable!("dtypes checked equal"),
            }
        } else {
            let a = self.broadcast_as(&shape)?;
            let b = rhs.broadcast_as(&shape)?;
            match (a.float_values(name)?, b.float_values(name)?) {
                (FloatData::F32(x), FloatData::F32(y)) => FloatOut::F32(op.apply(&x, &y)),
                (FloatData::F64(x), FloatData::F64(y)) => FloatOut::F64(op.apply(&x, &y)),
                _ => unreachable!("dtypes checked equal"),
            }
        };
        Ok(from_float_data(out, shape, self.dtype()))
    }

    /// A rank-0 view of the one storage element every logical element of `self` reads (a
    /// one-element tensor, or a broadcast of one); `None` when empty or when elements differ.
    fn single_element(&self) -> Option<Tensor> {
        let one = self
            .dims()
            .iter()
            .zip(self.stride())
            .all(|(&d, &s)| d == 1 || s == 0);
        (one && self.elem_count() > 0)
            .then(|| self.with_layout(Layout::new(().into(), Vec::new(), self.layout().offset())))
    }

    /// A rank-0 tensor of this tensor's dtype holding `v`.
    fn scalar_like(&self, v: f64) -> Result<Tensor> {
        Tensor::full((), v, self.dtype())
    }

    /// Elementwise comparison with broadcasting; any dtype (both the same); returns a u8 mask.
    pub fn cmp(&self, rhs: &Tensor, op: CmpOp) -> Result<Tensor> {
        let shape = self.binary_shape(rhs, op.name())?;
        let a = self.broadcast_as(&shape)?;
        let b = rhs.broadcast_as(&shape)?;
        let out: Vec<u8> = map_cpu!(a.cpu(), sa => {
            fn typed<T: WithDType>(_: &[T], a: &Tensor, b: &Tensor, op: CmpOp) -> Vec<u8> {
                let x = a.values::<T>();
                let y = b.values::<T>();
                x.iter().zip(y.iter()).map(|(&p, &q)| op.test(p, q) as u8).collect()
            }
            typed(sa, &a, &b, op)
        });
        Ok(Tensor::from_cpu(CpuStorage::U8(out.into()), shape))
    }
    /// Elementwise comparison with a scalar (converted to this dtype); returns a u8 mask.
    pub fn cmp_scalar(&self, v: f64, op: CmpOp) -> Result<Tensor> {
        self.cmp(&self.scalar_like(v)?, op)
    }

    /// Picks `on_true` where `self` (a mask of any integer dtype) is non-zero, else `on_false`;
    /// all three broadcast together. `on_true` and `on_false` share a dtype.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        if !self.dtype().is_int() {
            return Err(Error::UnsupportedDType {
                op: "where_cond",
                dtype: self.dtype(),
                expected: "an integer mask (u8, u32, i64)",
            });
        }
        let vshape = on_true.binary_shape(on_false, "where_cond")?;
        let shape = Shape::broadcast("where_cond", self.shape(), &vshape)?;
        let mask = self
            .broadcast_as(&shape)?
            .index_values("where_cond")?
            .into_owned();
        let t = on_true.broadcast_as(&shape)?;
        let f = on_false.broadcast_as(&shape)?;
        let s = map_cpu!(t.cpu(), st => {
            fn typed<T: WithDType>(_: &[T], m: &[i64], t: &Tensor, f: &Tensor) -> CpuStorage {
                let x = t.values::<T>();
                let y = f.values::<T>();
                T::into_storage(m.iter().zip(x.iter().zip(y.iter())).map(|(&c, (&p, &q))| if c != 0 { p } else { q }).collect())
            }
            typed(st, &mask, &t, &f)
        });
        Ok(Tensor::from_cpu(s, shape))
    }
    /// `value` where `mask` is non-zero, else `self` (mask broadcasts to this tensor's shape).
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        let out = mask.where_cond(&self.scalar_like(value)?, self)?;
        if out.shape() != self.shape() {
            return Err(Error::Broadcast {
                op: "masked_fill",
                lhs: mask.shape().clone(),
                rhs: self.shape().clone(),
            });
        }
        Ok(out)
    }
    /// A u8 mask that is 1 where the element is non-zero, any dtype.
    pub fn ne_zero(&self) -> Result<Tensor> {
        self.cmp_scalar(0.0, CmpOp::Ne)
    }
    /// Fraction of elements that are exactly zero (0 for an empty tensor).
    pub fn zero_fraction(&self) -> f64 {
        let v = self.to_vec_f64();
        if v.is_empty() {
            return 0.0;
        }
        v.iter().filter(|x| **x == 0.0).count() as f64 / v.len() as f64
    }
    /// `self * mul + add`, elementwise (float dtypes). f32 and f64 take one pass, rounding the
    /// product and then the sum (no fused multiply-add), exactly as `mul_scalar` then
    /// `add_scalar` would; f16 and bf16 run those two steps, rounding in between.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        if !matches!(self.dtype(), DType::F32 | DType::F64) {
            return self.mul_scalar(mul)?.add_scalar(add);
        }
        let out = match self.float_values("affine")? {
            FloatData::F32(x) => {
                let (m, a) = (f32::from_f64(mul), f32::from_f64(add));
                FloatOut::F32(map_slice(&x, |v| v * m + a))
            }
            FloatData::F64(x) => FloatOut::F64(map_slice(&x, |v| v * mul + add)),
        };
        Ok(from_float_data(out, self.shape().clone(), self.dtype()))
    }
    /// Clamps every element into `[lo, hi]`.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor> {
        self.maximum_scalar(lo)?.minimum_scalar(hi)
    }
}

macro_rules! binary_methods {
    ($($name:ident, $sname:ident => $op:ident),* $(,)?) => {
        impl Tensor {$(
            #[doc = concat!("Elementwise `", stringify!($name), "` with numpy broadcasting; same float dtype on both sides.")]
            pub fn $name(&self, rhs: &Tensor) -> Result<Tensor> {
                self.binary(rhs, BinaryOp::$op)
            }
            #[doc = concat!("Elementwise `", stringify!($name), "` with a scalar (converted to this dtype).")]
            pub fn $sname(&self, v: f64) -> Result<Tensor> {
                self.binary(&self.scalar_like(v)?, BinaryOp::$op)
            }
        )*}
    };
}
binary_methods!(
    add, add_scalar => Add, sub, sub_scalar => Sub, mul, mul_scalar => Mul, div, div_scalar => Div,
    pow, pow_scalar => Pow, maximum, maximum_scalar => Maximum, minimum, minimum_scalar => Minimum,
);

macro_rules! cmp_methods {
    ($($name:ident, $sname:ident => $op:ident),* $(,)?) => {
        impl Tensor {$(
            #[doc = concat!("Elementwise `", stringify!($name), "` with broadcasting; returns a u8 mask.")]
            pub fn $name(&self, rhs: &Tensor) -> Result<Tensor> {
                self.cmp(rhs, CmpOp::$op)
            }
            #[doc = concat!("Elementwise `", stringify!($name), "` against a scalar; returns a u8 mask.")]
            pub fn $sname(&self, v: f64) -> Result<Tensor> {
                self.cmp_scalar(v, CmpOp::$op)
            }
        )*}
    };
}
cmp_methods!(
    eq, eq_scalar => Eq, ne, ne_scalar => Ne, lt, lt_scalar => Lt, le, le_scalar => Le,
    gt, gt_scalar => Gt, ge, ge_scalar => Ge,
);
