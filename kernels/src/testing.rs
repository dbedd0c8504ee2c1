//! Deterministic inputs for tests and benchmarks (not part of the stable API).

/// `n` values uniform in `[-scale/2, scale/2)` from a 64-bit LCG (Knuth's MMIX constants, top 24
/// bits), the same on every machine.
pub fn lcg_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}
