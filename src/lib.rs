//! shears: make LLaMA-family models sparse and fast, in pure Rust.
pub use shears_kernels as kernels;
pub use shears_tensor as tensor;
