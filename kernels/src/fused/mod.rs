//! Fused kernels for the LLM hot path: RMSNorm, rotary embeddings, softmax (plain and causal),
//! decode attention over a key/value cache,
//! SwiGLU and broadcast add/mul, and f32 ↔ bf16/f16 conversion. Plain slices in and out.
//!
//! ```
//! use shears_kernels::fused::{rms_norm, rope, rope_tables, silu_mul, softmax_causal, RopeLayout};
//!
//! // RMSNorm over rows of 4: [3, 4, 0, 0] has mean square 6.25, so it is divided by 2.5.
//! let x = [3.0f32, 4.0, 0.0, 0.0];
//! let mut h = [0f32; 4];
//! rms_norm(&x, &[1.0; 4], 0.0, &mut h);
//! assert_eq!(h, [1.2, 1.6, 0.0, 0.0]);
//!
//! // RoPE on one head of dim 4 at position 0 is the identity.
//! let (cos, sin) = rope_tables(4, 16, 10_000.0);
//! rope(&mut h, 1, 4, &[0], &cos, &sin, RopeLayout::HalfSplit);
//! assert_eq!(h, [1.2, 1.6, 0.0, 0.0]);
//!
//! // Causal softmax of 2 query rows over 3 keys, one of them cached: row 0 sees keys 0..=1.
//! let scores = [0.0f32, 0.0, 5.0, 1.0, 1.0, 1.0];
//! let mut p = [0f32; 6];
//! softmax_causal(&scores, 2, 3, 1, &mut p);
//! assert_eq!(p[..3], [0.5, 0.5, 0.0]);
//!
//! // SwiGLU: silu(0) = 0.
//! let mut y = [1f32; 2];
//! silu_mul(&[0.0, 0.0], &[1.0, 2.0], &mut y);
//! assert_eq!(y, [0.0, 0.0]);
//! ```
//!
//! Each kernel `op` runs at [`crate::cpu::level`]; `op_with` takes the level explicitly (tests run
//! every level the CPU has) and `op_ref` is the plain scalar reference the property tests compare
//! against. Each is written once over a small vector trait and compiled per level with
//! `#[target_feature]`, so a portable build still uses AVX-512 where the CPU has it. Buffers above
//! 32K elements are split by whole rows over rayon's pool.

mod act;
mod activation;
mod attend;
mod convert;
mod norm;
mod rope;
mod simd;
mod softmax;

pub use act::{
    add, add_assign, add_assign_ref, add_assign_with, add_ref, add_with, mul, mul_ref, mul_with,
    silu_mul, silu_mul_ref, silu_mul_with,
};
pub use activation::{
    exp, exp_ref, exp_with, sigmoid, sigmoid_grad, sigmoid_grad_ref, sigmoid_grad_with,
    sigmoid_ref, sigmoid_with, silu, silu_grad, silu_grad_ref, silu_grad_with, silu_ref, silu_with,
};
pub use attend::{
    attend, attend_merge, attend_part, attend_part_many, attend_part_many_with, attend_part_with,
    attend_ref, attend_with, key_index, scores_len, KEY_BLOCK,
};
pub use convert::{
    bf16_to_f32, bf16_to_f32_ref, bf16_to_f32_with, f16_to_f32, f16_to_f32_ref, f16_to_f32_with,
    f32_to_bf16, f32_to_bf16_ref, f32_to_bf16_with, f32_to_f16, f32_to_f16_ref, f32_to_f16_with,
};
pub use norm::{rms_norm, rms_norm_ref, rms_norm_with};
pub use rope::{rope, rope_ref, rope_tables, rope_with, RopeLayout};
pub use softmax::{
    softmax_causal, softmax_causal_inplace, softmax_causal_ref, softmax_causal_with, softmax_rows,
    softmax_rows_inplace, softmax_rows_ref, softmax_rows_with,
};

#[cfg(test)]
pub(crate) mod test_util {
    use proptest::prelude::*;

    /// `n` deterministic values uniform in `[-scale/2, scale/2)`.
    pub(crate) fn fill(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        crate::testing::lcg_values(n, seed, scale)
    }

    /// A rayon pool of `threads` threads.
    pub(crate) fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// Edge lengths around vector widths (8, 16 lanes; 4-vector unrolls), primes, and any below 300.
    pub(crate) fn dim() -> impl Strategy<Value = usize> {
        prop_oneof![
            2 => prop::sample::select(vec![0usize, 1, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 127, 257]),
            1 => 0usize..300,
        ]
    }

    /// `|got − want| ≤ atol + rtol·|want|` elementwise; NaN must meet NaN, infinities must match.
    pub(crate) fn assert_close(
        got: &[f32],
        want: &[f32],
        atol: f32,
        rtol: f32,
        what: &str,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(got.len(), want.len(), "{}: length", what);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let ok = if w.is_nan() || g.is_nan() {
                w.is_nan() && g.is_nan()
            } else if w.is_infinite() || g.is_infinite() {
                g == w
            } else {
                (g - w).abs() <= atol + rtol * w.abs()
            };
            prop_assert!(ok, "{}: [{}] got {} want {}", what, i, g, w);
        }
        Ok(())
    }
}
