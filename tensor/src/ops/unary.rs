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
use crate::{Error, Result, Tensor, WithDType};
use rayon::prelude::*;
use shears_kernels::fused;

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
            map_slice(x, f)
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

/// `f` over every element, on rayon's pool when there are many.
pub(crate) fn map_slice<F: FloatElem>(x: &[F], f: impl Fn(F) -> F + Sync) -> Vec<F> {
    if x.len() >= 1 << 16 {
        x.par_iter().with_min_len(1 << 14).map(|&v| f(v)).collect()
    } else {
        x.iter().map(|&v| f(v)).collect()
    }
}

/// A kernel over plain slices, `x → out`.
type SliceKernel = fn(&[f32], &mut [f32]);

/// The SIMD kernel for `op` over values computed in f32, where there is one (exp, sigmoid and
/// SiLU, within 1e-6 relative of the exact value; see `shears_kernels::fused`).
fn f32_kernel(op: UnaryOp) -> Option<SliceKernel> {
    match op {
        UnaryOp::Exp => Some(fused::exp),
        UnaryOp::Sigmoid => Some(fused::sigmoid),
        UnaryOp::Silu => Some(fused::silu),
        _ => None,
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
    /// exp, sigmoid and SiLU on values computed in f32 (f32, f16, bf16) use the SIMD kernels of
    /// `shears_kernels::fused`; f64 and the other ops evaluate the scalar formula.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        let out = match self.float_values(op.name())? {
            FloatData::F32(v) => FloatOut::F32(match f32_kernel(op) {
                Some(kernel) => {
                    let mut out = vec![0f32; v.len()];
                    kernel(&v, &mut out);
                    out
                }
                None => op.apply_slice(&v),
            }),
            FloatData::F64(v) => FloatOut::F64(op.apply_slice(&v)),
        };
        Ok(from_float_data(out, self.shape().clone(), self.dtype()))
    }

    /// `g ⊙ σ'(self) = g·σ(x)(1 − σ(x))`, the sigmoid's backward rule in one pass. self (the
    /// input x) and g: same shape and float dtype → that shape and dtype.
    pub fn sigmoid_grad(&self, g: &Tensor) -> Result<Tensor> {
        self.unary_grad(g, "sigmoid_grad", fused::sigmoid_grad, |x, d| {
            let s = sigmoid(x);
            d * (s * (1.0 - s))
        })
    }

    /// `g ⊙ silu'(self) = g·σ(x)(1 + x(1 − σ(x)))`, SiLU's backward rule in one pass. self (the
    /// input x) and g: same shape and float dtype → that shape and dtype.
    pub fn silu_grad(&self, g: &Tensor) -> Result<Tensor> {
        self.unary_grad(g, "silu_grad", fused::silu_grad, |x, d| {
            let s = sigmoid(x);
            d * (s * (x * (1.0 - s) + 1.0))
        })
    }

    /// `kernel(x, g)` on values computed in f32, `scalar(x, g)` per element for f64.
    fn unary_grad(
        &self,
        g: &Tensor,
        op: &'static str,
        kernel: fn(&[f32], &[f32], &mut [f32]),
        scalar: fn(f64, f64) -> f64,
    ) -> Result<Tensor> {
        if self.dtype() != g.dtype() {
            return Err(Error::DTypeMismatch {
                op,
                lhs: self.dtype(),
                rhs: g.dtype(),
            });
        }
        if self.shape() != g.shape() {
            return Err(Error::shape_msg(
                op,
                self.shape(),
                g.shape(),
                "the gradient must have the input's shape",
            ));
        }
        let out = match (self.float_values(op)?, g.float_values(op)?) {
            (FloatData::F32(x), FloatData::F32(d)) => {
                let mut out = vec![0f32; x.len()];
                kernel(&x, &d, &mut out);
                FloatOut::F32(out)
            }
            (FloatData::F64(x), FloatData::F64(d)) => FloatOut::F64(
                x.iter()
                    .zip(d.iter())
                    .map(|(&x, &d)| scalar(x, d))
                    .collect(),
            ),
            _ => unreachable!("dtypes checked equal"),
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
