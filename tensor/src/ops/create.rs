//! Creation: zeros, ones, full, arange, rand, randn, eye.
//!
//! ```
//! use shears_tensor::{DType, Tensor};
//! let a = Tensor::arange(0., 6., 1., DType::F32)?.reshape([2, 3])?;
//! assert_eq!(a.to_vec::<f32>()?, vec![0., 1., 2., 3., 4., 5.]);
//! let r1 = Tensor::randn([4], 0.0, 1.0, DType::F32, 42)?;
//! let r2 = Tensor::randn([4], 0.0, 1.0, DType::F32, 42)?;
//! assert_eq!(r1.to_vec::<f32>()?, r2.to_vec::<f32>()?);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::storage::CpuStorage;
use crate::{DType, Error, Result, Rng, Shape, Tensor};
use half::{bf16, f16};

/// A vector of `n` elements of `dtype`, each `f(i)` (computed in f64 and converted).
fn build(dtype: DType, n: usize, mut f: impl FnMut(usize) -> f64) -> CpuStorage {
    match dtype {
        DType::F32 => CpuStorage::F32((0..n).map(|i| f(i) as f32).collect::<Vec<_>>().into()),
        DType::F64 => CpuStorage::F64((0..n).map(f).collect::<Vec<_>>().into()),
        DType::F16 => CpuStorage::F16(
            (0..n)
                .map(|i| f16::from_f64(f(i)))
                .collect::<Vec<_>>()
                .into(),
        ),
        DType::BF16 => CpuStorage::BF16(
            (0..n)
                .map(|i| bf16::from_f64(f(i)))
                .collect::<Vec<_>>()
                .into(),
        ),
        DType::U8 => CpuStorage::U8((0..n).map(|i| f(i) as u8).collect::<Vec<_>>().into()),
        DType::U32 => CpuStorage::U32((0..n).map(|i| f(i) as u32).collect::<Vec<_>>().into()),
        DType::I64 => CpuStorage::I64((0..n).map(|i| f(i) as i64).collect::<Vec<_>>().into()),
    }
}

impl Tensor {
    /// A tensor of `shape` filled with `value` (converted to `dtype`).
    pub fn full(shape: impl Into<Shape>, value: f64, dtype: DType) -> Result<Tensor> {
        let shape = shape.into();
        Ok(Tensor::from_cpu(
            build(dtype, shape.elem_count(), |_| value),
            shape,
        ))
    }
    /// A tensor of `shape` filled with zeros.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        Self::full(shape, 0.0, dtype)
    }
    /// A tensor of `shape` filled with ones.
    pub fn ones(shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        Self::full(shape, 1.0, dtype)
    }
    /// Zeros with this tensor's shape and dtype.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Self::zeros(self.shape(), self.dtype())
    }
    /// Ones with this tensor's shape and dtype.
    pub fn ones_like(&self) -> Result<Tensor> {
        Self::ones(self.shape(), self.dtype())
    }
    /// The 1-D tensor `start, start + step, ...` up to but excluding `end`.
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(Error::invalid(
                "arange",
                format!("bad range {start}..{end} step {step}"),
            ));
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        Ok(Tensor::from_cpu(
            build(dtype, n, |i| start + i as f64 * step),
            Shape::from(n),
        ))
    }
    /// The `n × n` identity matrix.
    pub fn eye(n: usize, dtype: DType) -> Result<Tensor> {
        Ok(Tensor::from_cpu(
            build(dtype, n * n, |i| if i / n == i % n { 1.0 } else { 0.0 }),
            Shape::from([n, n]),
        ))
    }
    /// Uniform samples in `[lo, hi)` from a generator seeded with `seed` (same numbers on every
    /// machine). Float dtypes only.
    pub fn rand(
        shape: impl Into<Shape>,
        lo: f64,
        hi: f64,
        dtype: DType,
        seed: u64,
    ) -> Result<Tensor> {
        Self::rand_with(shape, lo, hi, dtype, &mut Rng::new(seed))
    }
    /// Uniform samples in `[lo, hi)` drawn from `rng`.
    pub fn rand_with(
        shape: impl Into<Shape>,
        lo: f64,
        hi: f64,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if !dtype.is_float() {
            return Err(Error::UnsupportedDType {
                op: "rand",
                dtype,
                expected: "a float dtype",
            });
        }
        Ok(Tensor::from_cpu(
            build(dtype, shape.elem_count(), |_| {
                lo + (hi - lo) * rng.uniform()
            }),
            shape,
        ))
    }
    /// Normal samples with `mean` and `std` from a generator seeded with `seed`.
    pub fn randn(
        shape: impl Into<Shape>,
        mean: f64,
        std: f64,
        dtype: DType,
        seed: u64,
    ) -> Result<Tensor> {
        Self::randn_with(shape, mean, std, dtype, &mut Rng::new(seed))
    }
    /// Normal samples with `mean` and `std` drawn from `rng`.
    pub fn randn_with(
        shape: impl Into<Shape>,
        mean: f64,
        std: f64,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if !dtype.is_float() {
            return Err(Error::UnsupportedDType {
                op: "randn",
                dtype,
                expected: "a float dtype",
            });
        }
        Ok(Tensor::from_cpu(
            build(dtype, shape.elem_count(), |_| mean + std * rng.normal()),
            shape,
        ))
    }
}
