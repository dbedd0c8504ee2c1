//! dtype conversion.
//!
//! ```
//! use shears_tensor::{DType, Tensor};
//! let x = Tensor::from_vec(vec![1.5f32, -2.25], [2])?;
//! let h = x.to_dtype(DType::BF16)?;
//! assert_eq!(h.to_dtype(DType::F32)?.to_vec::<f32>()?, vec![1.5, -2.25]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::storage::{map_cpu, CpuStorage};
use crate::{DType, Result, Tensor, WithDType};
use half::{bf16, f16};

fn convert<S: WithDType, D: WithDType>(src: &[S], f: impl Fn(S) -> D) -> CpuStorage {
    D::into_storage(src.iter().map(|&x| f(x)).collect())
}

impl Tensor {
    /// The elements converted to `dtype`: floats round to nearest-even, float→int truncates toward
    /// zero and saturates (NaN → 0), as Rust's `as`. Returns `self` when the dtype already matches.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let x = self.contiguous()?;
        let s = match (x.cpu(), dtype) {
            // Direct paths keep conversions exact and fast for the common float pairs.
            (CpuStorage::F16(_), DType::F32) => convert(&x.values::<f16>(), f16::to_f32),
            (CpuStorage::BF16(_), DType::F32) => convert(&x.values::<bf16>(), bf16::to_f32),
            (CpuStorage::F32(_), DType::F16) => convert(&x.values::<f32>(), f16::from_f32),
            (CpuStorage::F32(_), DType::BF16) => convert(&x.values::<f32>(), bf16::from_f32),
            (CpuStorage::I64(_), DType::U32) => {
                convert(&x.values::<i64>(), |v| v.clamp(0, u32::MAX as i64) as u32)
            }
            (CpuStorage::U32(_), DType::I64) => convert(&x.values::<u32>(), |v| v as i64),
            (src, _) => map_cpu!(src, b => {
                let v = &b[x.layout().contiguous_range().expect("contiguous")];
                match dtype {
                    DType::F32 => convert(v, |e| e.to_f64() as f32),
                    DType::F64 => convert(v, |e| e.to_f64()),
                    DType::F16 => convert(v, |e| f16::from_f64(e.to_f64())),
                    DType::BF16 => convert(v, |e| bf16::from_f64(e.to_f64())),
                    DType::U8 => convert(v, |e| e.to_f64() as u8),
                    DType::U32 => convert(v, |e| e.to_f64() as u32),
                    DType::I64 => convert(v, |e| e.to_f64() as i64),
                }
            }),
        };
        Ok(Tensor::from_cpu(s, self.shape().clone()))
    }
}
