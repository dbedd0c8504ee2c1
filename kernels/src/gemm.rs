//! General matrix multiply `C = A · B` over strided operands, so either operand can be a
//! transposed view without a copy.
//!
//! [`gemm`] packs a panel of B into a contiguous row-major block, then streams rows of A over it
//! in parallel (rows split across rayon tasks), accumulating with contiguous axpy loops the
//! compiler vectorises. [`gemm_ref`] is the plain triple loop it is tested against. The
//! machine-peak kernels (packed micro-kernels, runtime SIMD dispatch) replace [`gemm`] later
//! without changing its signature.

use crate::Float;
use rayon::prelude::*;

/// A read-only strided matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    /// The elements.
    pub data: &'a [T],
    /// Row stride, in elements.
    pub rs: usize,
    /// Column stride, in elements.
    pub cs: usize,
}

impl<'a, T: Copy> MatRef<'a, T> {
    /// A strided view of `data` with row stride `rs` and column stride `cs`.
    pub fn new(data: &'a [T], rs: usize, cs: usize) -> Self {
        MatRef { data, rs, cs }
    }
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.rs + j * self.cs]
    }
    fn check(&self, rows: usize, cols: usize, name: &str) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "gemm: operand {name} too short for {rows}x{cols}"
            );
        }
    }
}

const KC: usize = 256;
const NC: usize = 2048;

/// `c[m×n] = a[m×k] · b[k×n]`, `c` row-major and overwritten.
pub fn gemm<T: Float>(m: usize, n: usize, k: usize, a: MatRef<T>, b: MatRef<T>, c: &mut [T]) {
    assert_eq!(c.len(), m * n, "gemm: output length");
    a.check(m, k, "a");
    b.check(k, n, "b");
    c.fill(T::zero());
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let mut packed = vec![T::zero(); KC.min(k) * NC.min(n)];
    for j0 in (0..n).step_by(NC) {
        let nb = NC.min(n - j0);
        for p0 in (0..k).step_by(KC) {
            let kb = KC.min(k - p0);
            // Pack B[p0..p0+kb, j0..j0+nb] row-major.
            for p in 0..kb {
                let row = &mut packed[p * nb..(p + 1) * nb];
                if b.cs == 1 {
                    let s = (p0 + p) * b.rs + j0;
                    row.copy_from_slice(&b.data[s..s + nb]);
                } else {
                    for (j, r) in row.iter_mut().enumerate() {
                        *r = b.at(p0 + p, j0 + j);
                    }
                }
            }
            let packed = &packed[..kb * nb];
            let work = m * nb * kb;
            let body = |(i, crow): (usize, &mut [T])| {
                let crow = &mut crow[j0..j0 + nb];
                for p in 0..kb {
                    let av = a.at(i, p0 + p);
                    let brow = &packed[p * nb..(p + 1) * nb];
                    for (cv, &bv) in crow.iter_mut().zip(brow) {
                        *cv = *cv + av * bv;
                    }
                }
            };
            if work >= 1 << 18 && m > 1 {
                c.par_chunks_mut(n).enumerate().for_each(body);
            } else {
                c.chunks_mut(n).enumerate().for_each(body);
            }
        }
    }
}

/// Plain triple-loop reference for [`gemm`].
pub fn gemm_ref<T: Float>(m: usize, n: usize, k: usize, a: MatRef<T>, b: MatRef<T>, c: &mut [T]) {
    assert_eq!(c.len(), m * n, "gemm_ref: output length");
    for i in 0..m {
        for j in 0..n {
            let mut acc = T::zero();
            for p in 0..k {
                acc = acc + a.at(i, p) * b.at(p, j);
            }
            c[i * n + j] = acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dims() -> impl Strategy<Value = usize> {
        prop_oneof![
            Just(0usize),
            Just(1),
            Just(15),
            Just(16),
            Just(17),
            Just(31),
            1usize..40
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn gemm_matches_ref(m in dims(), n in dims(), k in dims(), ta: bool, tb: bool, seed: u64) {
            let mut s = seed;
            let mut next = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5 };
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let am = if ta { MatRef::new(&a, 1, m) } else { MatRef::new(&a, k, 1) };
            let bm = if tb { MatRef::new(&b, 1, k) } else { MatRef::new(&b, n, 1) };
            let mut c = vec![0f32; m * n];
            let mut r = vec![0f32; m * n];
            gemm(m, n, k, am, bm, &mut c);
            gemm_ref(m, n, k, am, bm, &mut r);
            for (x, y) in c.iter().zip(&r) {
                prop_assert!((x - y).abs() <= 1e-5 * (k as f32 + 1.0), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn gemm_large_crosses_blocks() {
        // k > KC and n > NC exercise the block loops; compare with the reference in f64.
        let (m, n, k) = (3, NC + 5, KC + 7);
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 7) % 13) as f64 - 6.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 5) % 11) as f64 - 5.0).collect();
        let mut c = vec![0f64; m * n];
        let mut r = vec![0f64; m * n];
        gemm(
            m,
            n,
            k,
            MatRef::new(&a, k, 1),
            MatRef::new(&b, n, 1),
            &mut c,
        );
        gemm_ref(
            m,
            n,
            k,
            MatRef::new(&a, k, 1),
            MatRef::new(&b, n, 1),
            &mut r,
        );
        assert_eq!(c, r); // small integers: exact in f64
    }
}
