//! Elementwise unary ops on float tensors (computed in f32, or f64 for f64 tensors).
//!
//! ```
//! use shears_tensor::Tensor;
//! let x = Tensor::from_vec(vec![-1f32, 0., 2.], [3])?;
//! assert_eq!(x.relu()?.to_vec::<f32>()?, vec![0., 0., 2.]);
//! assert_eq!(x.abs()?.to_vec::<f32>()?, vec![1., 0., 2.]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::tensor::{from_float_data, FloatData, FloatOut};
use crate::{Result, Tensor, WithDType};
use rayon::prelude::*;

/// Floats the ops compute in (f32 and f64).
pub(crate) trait FloatElem: num_traits::Float + WithDType + Send + Sync {
    fn erf(self) -> Self;
}
impl FloatElem for f32 {
    fn erf(self) -> Self {
        libm::erff(self)
    }
}
impl FloatElem for f64 {
    fn erf(self) -> Self {
        libm::erf(self)
    }
}

/// The elementwise unary ops (also the op vocabulary of autograd and the GPU backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `|x|`
    Abs,
    /// `e^x`
    Exp,
    /// natural log
    Log,
    /// square root
    Sqrt,
    /// `1/x`
    Recip,
    /// sine
    Sin,
    /// cosine
    Cos,
    /// hyperbolic tangent
    Tanh,
    /// `max(x, 0)`
    Relu,
    /// exact GELU, `x·Φ(x)` with the error function (PyTorch's default)
    Gelu,
    /// `1/(1+e^-x)`
    Sigmoid,
    /// `x·sigmoid(x)` (a.k.a. swish)
    Silu,
    /// `x²`
    Sqr,
}

impl UnaryOp {
    /// The op's name, as used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Recip => "recip",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Relu => "relu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Silu => "silu",
            UnaryOp::Sqr => "sqr",
        }
    }
    fn apply_slice<F: FloatElem>(self, x: &[F]) -> Vec<F> {
        fn run<F: FloatElem>(x: &[F], f: impl Fn(F) -> F + Sync) -> Vec<F> {
            if x.len() >= 1 << 16 {
                x.par_iter().with_min_len(1 << 14).map(|&v| f(v)).collect()
            } else {
                x.iter().map(|&v| f(v)).collect()
            }
        }
        let half = F::from(0.5).unwrap();
        let one = F::one();
        let inv_sqrt2 = F::from(std::f64::consts::FRAC_1_SQRT_2).unwrap();
        match self {
            UnaryOp::Neg => run(x, |v| -v),
            UnaryOp::Abs => run(x, |v| v.abs()),
            UnaryOp::Exp => run(x, |v| v.exp()),
            UnaryOp::Log => run(x, |v| v.ln()),
            UnaryOp::Sqrt => run(x, |v| v.sqrt()),
            UnaryOp::Recip => run(x, |v| v.recip()),
            UnaryOp::Sin => run(x, |v| v.sin()),
            UnaryOp::Cos => run(x, |v| v.cos()),
            UnaryOp::Tanh => run(x, |v| v.tanh()),
            UnaryOp::Relu => run(x, |v| if v > F::zero() { v } else { F::zero() }),
            UnaryOp::Gelu => run(x, |v| half * v * (one + (v * inv_sqrt2).erf())),
            UnaryOp::Sigmoid => run(x, sigmoid),
            UnaryOp::Silu => run(x, |v| v * sigmoid(v)),
            UnaryOp::Sqr => run(x, |v| v * v),
        }
    }
}

/// Sigmoid that does not overflow for large |x|.
fn sigmoid<F: FloatElem>(v: F) -> F {
    if v >= F::zero() {
        F::one() / (F::one() + (-v).exp())
    } else {
        let e = v.exp();
        e / (F::one() + e)
    }
}

impl Tensor {
    /// Applies a unary op elementwise; float dtypes only. Output has the input's shape and dtype.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        let out = match self.float_values(op.name())? {
            FloatData::F32(v) => FloatOut::F32(op.apply_slice(&v)),
            FloatData::F64(v) => FloatOut::F64(op.apply_slice(&v)),
        };
        Ok(from_float_data(out, self.shape().clone(), self.dtype()))
    }
}

macro_rules! unary_methods {
    ($($name:ident => $op:ident),* $(,)?) => {
        impl Tensor {$(
            #[doc = concat!("Elementwise `", stringify!($name), "` (see [`UnaryOp::", stringify!($op), "`]); same shape and dtype.")]
            pub fn $name(&self) -> Result<Tensor> {
                self.unary(UnaryOp::$op)
            }
        )*}
    };
}
unary_methods!(
    neg => Neg, abs => Abs, exp => Exp, log => Log, sqrt => Sqrt, recip => Recip, sin => Sin,
    cos => Cos, tanh => Tanh, relu => Relu, gelu => Gelu, sigmoid => Sigmoid, silu => Silu,
    sqr => Sqr,
);
