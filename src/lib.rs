//! shears: make LLaMA-family models sparse and fast, in pure Rust.
pub use shears_autograd as autograd;
pub use shears_kernels as kernels;
pub use shears_models as models;
pub use shears_pruning as pruning;

pub use shears_tensor as tensor;

pub mod fetch;
mod pypi;

/// Keeps freed tensor buffers in the process instead of handing them back to the kernel.
///
/// Every `Tensor` op returns a fresh buffer, and a LLaMA forward frees and reallocates the same
/// few sizes (activations of a few MiB) layer after layer. glibc's defaults serve buffers above
/// its dynamic `mmap` threshold with fresh `mmap`s and trim the heap top after each `free`, so the
/// kernel zero-fills new pages on every layer: on the 2-vCPU Xeon the page faults cost 5 % of a
/// bf16 prefill. This raises the `mmap` threshold to its maximum (32 MiB; logits and other larger
/// buffers still come from `mmap`) and stops trimming, so the heap reaches the forward's working
/// set once and is reused. Peak RSS (the high-water mark) does not grow; the resident set simply
/// stays at it until the process exits.
///
/// The `shears` binary calls this first thing; a program embedding the crates may call it once at
/// start-up for the same effect. It does nothing on targets other than Linux with glibc. Returns
/// true when both settings took.
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only adjusts allocator parameters; both values are within glibc's
        // documented ranges (M_MMAP_THRESHOLD ≤ 32 MiB on 64-bit targets).
        unsafe {
            let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            mmap == 1 && trim == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The README's example, compiled and run as a doc test so the front door stays correct.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
