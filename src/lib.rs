//! shears: make LLaMA-family models sparse and fast, in pure Rust.
pub use shears_autograd as autograd;
pub use shears_kernels as kernels;
pub use shears_models as models;
pub use shears_pruning as pruning;

pub use shears_tensor as tensor;

pub mod fetch;
mod pypi;

/// The README's example, compiled and run as a doc test so the front door stays correct.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
