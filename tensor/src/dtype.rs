//! Element types. Floats compute in f32 (f64 stays f64); f16 and bf16 are storage formats that are
//! widened to f32 for arithmetic and rounded back to nearest-even on the way out. u8, u32 and i64
//! hold masks and indices.
//!
//! ```
//! use shears_tensor::DType;
//! assert_eq!(DType::BF16.size_in_bytes(), 2);
//! assert!(DType::F16.is_float() && !DType::I64.is_float());
//! ```

use half::{bf16, f16};

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// 32-bit IEEE float, the compute type.
    F32,
    /// 64-bit IEEE float, for gradient checks and precise linear algebra.
    F64,
    /// 16-bit IEEE float (storage; computes in f32).
    F16,
    /// bfloat16 (storage; computes in f32).
    BF16,
    /// Unsigned byte: masks (0/1) and raw quantized bytes.
    U8,
    /// Unsigned 32-bit integer: token ids and indices.
    U32,
    /// Signed 64-bit integer: indices (PyTorch's default index type).
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }
    /// True for the floating-point dtypes.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }
    /// True for the integer dtypes usable as indices (u8, u32, i64).
    pub fn is_int(self) -> bool {
        !self.is_float()
    }
    /// The short lower-case name (`f32`, `bf16`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U8 => "u8",
            DType::U32 => "u32",
            DType::I64 => "i64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Rust type that can be the element of a tensor.
pub trait WithDType:
    Copy + Send + Sync + PartialOrd + bytemuck::Pod + std::fmt::Debug + 'static
{
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Converts to f64 (exactly, for every type but i64 beyond 2^53).
    fn to_f64(self) -> f64;
    /// Converts from f64: rounds to nearest for floats, saturates and truncates toward zero for
    /// integers (NaN becomes 0), as Rust's `as` does.
    fn from_f64(v: f64) -> Self;
    /// Wraps a vector as CPU storage.
    fn into_storage(v: Vec<Self>) -> crate::storage::CpuStorage;
    /// Borrows CPU storage as a slice of this type, if the dtype matches.
    fn slice(s: &crate::storage::CpuStorage) -> Option<&[Self]>;
}

macro_rules! with_dtype {
    ($t:ty, $d:ident, $to:expr, $from:expr) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$d;
            #[inline]
            fn to_f64(self) -> f64 {
                $to(self)
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            fn into_storage(v: Vec<Self>) -> crate::storage::CpuStorage {
                crate::storage::CpuStorage::$d(v.into())
            }
            fn slice(s: &crate::storage::CpuStorage) -> Option<&[Self]> {
                match s {
                    crate::storage::CpuStorage::$d(b) => Some(b),
                    _ => None,
                }
            }
        }
    };
}
with_dtype!(f32, F32, |x: f32| x as f64, |v: f64| v as f32);
with_dtype!(f64, F64, |x: f64| x, |v: f64| v);
with_dtype!(f16, F16, |x: f16| x.to_f64(), f16::from_f64);
with_dtype!(bf16, BF16, |x: bf16| x.to_f64(), bf16::from_f64);
with_dtype!(u8, U8, |x: u8| x as f64, |v: f64| v as u8);
with_dtype!(u32, U32, |x: u32| x as f64, |v: f64| v as u32);
with_dtype!(i64, I64, |x: i64| x as f64, |v: f64| v as i64);
