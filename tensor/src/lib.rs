//! The shears tensor core: [`Tensor`] (shared storage + layout; views never copy), [`DType`],
//! [`Device`], ops grouped by family, native sparse weight types ([`sparse`]: CSR, N:M, bitmask),
//! safetensors IO and the one [`Error`] type.
//!
//! ```
//! use shears_tensor::{DType, Tensor};
//! let x = Tensor::randn([4, 8], 0.0, 1.0, DType::F32, 0)?;
//! let w = Tensor::randn([16, 8], 0.0, 0.1, DType::F32, 1)?;
//! let y = x.matmul(&w.t()?)?.silu()?; // [4, 16], the transpose is a view
//! let p = y.softmax(-1)?;
//! let total: f32 = p.sum(-1, false)?.to_vec::<f32>()?.iter().sum();
//! assert!((total - 4.0).abs() < 1e-4);
//! # Ok::<(), shears_tensor::Error>(())
//! ```
#![warn(missing_docs)]

mod dtype;
mod error;
pub mod io;
pub mod kv;
mod layout;
mod ops;
mod rng;
mod shape;
pub mod sparse;
mod storage;
mod tensor;
pub mod test_util;

pub use dtype::{DType, WithDType};
pub use error::{Error, Result};
pub use layout::{Layout, StridedOffsets};
pub use ops::{AdamWStep, BinaryOp, CmpOp, ReduceOp, RopeLayout, RopeTables, UnaryOp};
pub use rng::Rng;
pub use shape::{Dim, Shape};
pub use storage::{Buf, CpuStorage, Device, Storage};
pub use tensor::Tensor;
