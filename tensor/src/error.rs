//! The one error type of shears, grouped by kind, each variant naming the op and the offending
//! shapes, dtypes or file so that a message alone tells the user what went wrong.
//!
//! ```
//! use shears_tensor::{Error, Tensor};
//! let a = Tensor::zeros([2, 3], shears_tensor::DType::F32)?;
//! let b = Tensor::zeros([4, 5], shears_tensor::DType::F32)?;
//! let err = a.matmul(&b).unwrap_err();
//! assert!(matches!(err, Error::ShapeMismatch { op: "matmul", .. }));
//! assert!(err.to_string().contains("[2, 3]"));
//! # Ok::<(), Error>(())
//! ```

use crate::{DType, Device, Shape};
use std::path::PathBuf;

/// Everything that can go wrong in shears.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- shape ----
    /// Two operands whose shapes do not fit together.
    #[error("{op}: shape mismatch, {lhs} vs {rhs}{}", detail_suffix(detail))]
    ShapeMismatch {
        /// The op that failed.
        op: &'static str,
        /// Left (or first) operand shape.
        lhs: Shape,
        /// Right (or second) operand shape.
        rhs: Shape,
        /// What was expected, when more can be said.
        detail: String,
    },
    /// Shapes that cannot be broadcast to one another (numpy rules).
    #[error("{op}: cannot broadcast {lhs} with {rhs}")]
    Broadcast {
        /// The op that failed.
        op: &'static str,
        /// Left operand shape.
        lhs: Shape,
        /// Right operand (or target) shape.
        rhs: Shape,
    },
    /// A dimension index outside `-rank..rank`.
    #[error("{op}: dim {dim} out of range for a tensor of rank {rank} (shape {shape})")]
    DimOutOfRange {
        /// The op that failed.
        op: &'static str,
        /// The requested dim, as given.
        dim: i64,
        /// Rank of the tensor.
        rank: usize,
        /// Shape of the tensor.
        shape: Shape,
    },
    /// An index outside `0..size` along some dim.
    #[error("{op}: index {index} out of range for dim {dim} of size {size}")]
    IndexOutOfRange {
        /// The op that failed.
        op: &'static str,
        /// The offending index.
        index: i64,
        /// The dim that was indexed.
        dim: usize,
        /// The size of that dim.
        size: usize,
    },
    /// The number of elements does not match a shape.
    #[error("{op}: {got} elements cannot have shape {shape} ({expected} elements)")]
    ElementCount {
        /// The op that failed.
        op: &'static str,
        /// Requested shape.
        shape: Shape,
        /// Elements the shape holds.
        expected: usize,
        /// Elements provided.
        got: usize,
    },
    /// An argument that is invalid for reasons other than shape (k > n, empty list, ...).
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// The op that failed.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },

    // ---- dtype ----
    /// Operands with different dtypes where one dtype is required.
    #[error("{op}: dtype mismatch, {lhs:?} vs {rhs:?}")]
    DTypeMismatch {
        /// The op that failed.
        op: &'static str,
        /// Left operand dtype.
        lhs: DType,
        /// Right operand dtype.
        rhs: DType,
    },
    /// A dtype the op does not accept.
    #[error("{op}: unsupported dtype {dtype:?}, expected {expected}")]
    UnsupportedDType {
        /// The op that failed.
        op: &'static str,
        /// The dtype given.
        dtype: DType,
        /// What the op accepts.
        expected: &'static str,
    },

    // ---- device ----
    /// Operands on different devices.
    #[error("{op}: device mismatch, {lhs:?} vs {rhs:?}")]
    DeviceMismatch {
        /// The op that failed.
        op: &'static str,
        /// Left operand device.
        lhs: Device,
        /// Right operand device.
        rhs: Device,
    },

    // ---- linear algebra ----
    /// Cholesky found a non-positive pivot.
    #[error(
        "{op}: matrix is not positive definite: pivot {pivot} is {value:e} \
         (add damping to the diagonal, e.g. 1% of its mean)"
    )]
    NotPositiveDefinite {
        /// The op that failed.
        op: &'static str,
        /// Zero-based index of the failing pivot.
        pivot: usize,
        /// The value found at that pivot before the square root.
        value: f64,
    },
    /// A triangular system with a zero (or non-finite) diagonal entry.
    #[error("{op}: singular triangular matrix, diagonal entry {index} is {value:e}")]
    Singular {
        /// The op that failed.
        op: &'static str,
        /// Zero-based index of the zero diagonal entry.
        index: usize,
        /// The value found.
        value: f64,
    },

    // ---- sparse formats ----
    /// A sparse tensor whose parts do not agree (reserved for the sparse types).
    #[error("{op}: invalid sparse format: {msg}")]
    SparseFormat {
        /// The op that failed.
        op: &'static str,
        /// What is inconsistent.
        msg: String,
    },

    // ---- io / file formats ----
    /// An operating-system error while reading or writing a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file that is truncated, corrupt or holds something shears cannot read.
    #[error("{}{}: {msg}", path.display(), tensor_suffix(tensor))]
    Format {
        /// The file involved.
        path: PathBuf,
        /// The tensor involved, when the problem is with one tensor.
        tensor: Option<String>,
        /// What is wrong.
        msg: String,
    },

    /// A model configuration (`config.json`, GGUF metadata) that is missing a field, holds a bad
    /// value, or asks for something shears does not implement.
    #[error("{}: {msg}", path.display())]
    Config {
        /// The file the configuration came from.
        path: PathBuf,
        /// What is missing or wrong.
        msg: String,
    },
    /// A feature of a checkpoint or request that shears does not support (an architecture, a
    /// quantization type, a tokenizer model), named so the user knows what to change.
    #[error("unsupported {what}")]
    Unsupported {
        /// What is not supported, e.g. "architecture `falcon` (supported: llama)".
        what: String,
    },
    /// The tokenizer could not be built, or failed to encode or decode.
    #[error("tokenizer: {msg}")]
    Tokenizer {
        /// What went wrong.
        msg: String,
    },
    /// Downloading an asset failed (network error, unexpected HTTP status, checksum mismatch).
    #[error("fetch {url}: {msg}")]
    Fetch {
        /// The URL, or the asset's name.
        url: String,
        /// What went wrong.
        msg: String,
    },

    // ---- gpu ----
    /// An error from the GPU backend (reserved for the wgpu device).
    #[error("gpu: {0}")]
    Gpu(String),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

fn tensor_suffix(tensor: &Option<String>) -> String {
    match tensor {
        Some(t) => format!(", tensor `{t}`"),
        None => String::new(),
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::ShapeMismatch`] without extra detail.
    pub fn shape(op: &'static str, lhs: &Shape, rhs: &Shape) -> Self {
        Error::ShapeMismatch {
            op,
            lhs: lhs.clone(),
            rhs: rhs.clone(),
            detail: String::new(),
        }
    }
    /// Shorthand for [`Error::ShapeMismatch`] with a detail.
    pub fn shape_msg(
        op: &'static str,
        lhs: &Shape,
        rhs: &Shape,
        detail: impl Into<String>,
    ) -> Self {
        Error::ShapeMismatch {
            op,
            lhs: lhs.clone(),
            rhs: rhs.clone(),
            detail: detail.into(),
        }
    }
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }
    /// Shorthand for [`Error::Format`].
    pub fn format(path: impl Into<PathBuf>, tensor: Option<&str>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            tensor: tensor.map(str::to_string),
            msg: msg.into(),
        }
    }
}
