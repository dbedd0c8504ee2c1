//! General matrix multiply `C = A · B` over strided operands, so either operand can be a
//! transposed view without a copy.
//!
//! For f32, [`gemm`] runs the packed, cache-blocked, register-tiled kernels of the
//! [`f32` module](self::f32) at the SIMD level chosen at run time ([`crate::cpu::level`]), split
//! over rayon's threads. Other float types use [`gemm_generic`], a simpler blocked loop the
//! compiler vectorises.
//! [`gemm_ref`] is the plain triple loop both are tested against.

pub mod bf16;
pub mod f32;
mod kernels;
mod pack;

use crate::Float;
use rayon::prelude::*;
use std::any::TypeId;

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
    pub(crate) fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.rs + j * self.cs]
    }
    pub(crate) fn check(&self, rows: usize, cols: usize, name: &str) {
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

/// `c[m×n] = a[m×k] · b[k×n]`, `c` row-major and overwritten. f32 takes the SIMD path.
pub fn gemm<T: Float>(m: usize, n: usize, k: usize, a: MatRef<T>, b: MatRef<T>, c: &mut [T]) {
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        // SAFETY: T is f32 (checked above), so the slices have the same layout.
        let (a, b, c) = unsafe {
            (
                MatRef::new(
                    std::slice::from_raw_parts(a.data.as_ptr().cast::<f32>(), a.data.len()),
                    a.rs,
                    a.cs,
                ),
                MatRef::new(
                    std::slice::from_raw_parts(b.data.as_ptr().cast::<f32>(), b.data.len()),
                    b.rs,
                    b.cs,
                ),
                std::slice::from_raw_parts_mut(c.as_mut_ptr().cast::<f32>(), c.len()),
            )
        };
        let level = crate::cpu::level();
        // A few rows times the transpose of a row-major [N, K] weight (`x · Wᵀ`, the decode
        // shape): the row-streaming kernel reads the weight once, without packing it.
        if m <= crate::gemv::SMALL_M
            && k > 0
            && a.cs == 1
            && (m == 1 || a.rs == k)
            && b.rs == 1
            && b.cs == k
        {
            return crate::gemv::matmul_nt_with(
                level,
                m,
                n,
                k,
                &a.data[..m * k],
                &b.data[..n * k],
                c,
            );
        }
        return self::f32::gemm(level, m, n, k, a, b, c);
    }
    gemm_generic(m, n, k, a, b, c)
}

/// Blocked, row-parallel `c = a · b` for any float type (the compiler vectorises the inner loop).
pub fn gemm_generic<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<T>,
    b: MatRef<T>,
    c: &mut [T],
) {
    assert_eq!(c.len(), m * n, "gemm_generic: output length");
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
    use crate::cpu;
    use proptest::prelude::*;

    /// Sizes that cross every blocking boundary of every level: 0, 1, SIMD widths ± 1,
    /// micro-tile sizes ± 1 (4, 6, 12 rows; 16, 32 columns), primes.
    fn dims() -> impl Strategy<Value = usize> {
        prop_oneof![
            Just(0usize),
            Just(1),
            Just(5),
            Just(6),
            Just(7),
            Just(11),
            Just(12),
            Just(13),
            Just(15),
            Just(16),
            Just(17),
            Just(31),
            Just(32),
            Just(33),
            Just(37),
            1usize..80
        ]
    }

    fn fill(n: usize, seed: u64) -> Vec<f32> {
        crate::testing::lcg_values(n, seed, 1.0)
    }

    /// `f32::gemm_blocked` at `level` with `bl` on `threads` threads against `gemm_ref`.
    #[allow(clippy::too_many_arguments)]
    fn check_level(
        level: cpu::Level,
        bl: f32::Blocking,
        threads: usize,
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        tb: bool,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let a = fill(m * k, seed);
        let b = fill(k * n, seed ^ 0xABCD);
        let am = if ta {
            MatRef::new(&a, 1, m)
        } else {
            MatRef::new(&a, k, 1)
        };
        let bm = if tb {
            MatRef::new(&b, 1, k)
        } else {
            MatRef::new(&b, n, 1)
        };
        let mut c = vec![f32::NAN; m * n];
        let mut r = vec![0f32; m * n];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| f32::gemm_blocked(level, bl, m, n, k, am, bm, &mut c));
        gemm_ref(m, n, k, am, bm, &mut r);
        for (i, (x, y)) in c.iter().zip(&r).enumerate() {
            prop_assert!(
                (x - y).abs() <= 1e-5 * (k as f32 + 1.0),
                "{level:?} {bl:?} t{threads} [{i}] {x} vs {y}"
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn f32_gemm_matches_ref_at_every_level(m in dims(), n in dims(), k in dims(), ta: bool, tb: bool, seed: u64, two: bool) {
            for level in cpu::available() {
                check_level(level, f32::blocking(), if two { 2 } else { 1 }, m, n, k, ta, tb, seed)?;
            }
        }

        #[test]
        fn dispatched_f32_gemm_matches_ref(m in 0usize..20, n in dims(), k in dims(), ta: bool, tb: bool, seed: u64) {
            // Through `gemm`, which sends few rows times a transposed weight to `gemv`.
            let a = fill(m * k, seed);
            let b = fill(k * n, seed ^ 0x5A5A);
            let am = if ta { MatRef::new(&a, 1, m) } else { MatRef::new(&a, k, 1) };
            let bm = if tb { MatRef::new(&b, 1, k) } else { MatRef::new(&b, n, 1) };
            let mut c = vec![f32::NAN; m * n];
            let mut r = vec![0f32; m * n];
            gemm(m, n, k, am, bm, &mut c);
            gemm_ref(m, n, k, am, bm, &mut r);
            for (x, y) in c.iter().zip(&r) {
                prop_assert!((x - y).abs() <= 1e-5 * (k as f32 + 1.0), "{x} vs {y}");
            }
        }

        #[test]
        fn generic_gemm_matches_ref(m in dims(), n in dims(), k in dims(), ta: bool, tb: bool, seed: u64) {
            let a: Vec<f64> = fill(m * k, seed).into_iter().map(f64::from).collect();
            let b: Vec<f64> = fill(k * n, !seed).into_iter().map(f64::from).collect();
            let am = if ta { MatRef::new(&a, 1, m) } else { MatRef::new(&a, k, 1) };
            let bm = if tb { MatRef::new(&b, 1, k) } else { MatRef::new(&b, n, 1) };
            let mut c = vec![0f64; m * n];
            let mut r = vec![0f64; m * n];
            gemm(m, n, k, am, bm, &mut c);
            gemm_ref(m, n, k, am, bm, &mut r);
            for (x, y) in c.iter().zip(&r) {
                prop_assert!((x - y).abs() <= 1e-12 * (k as f64 + 1.0));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Small blocks, so that every loop of the driver runs several times on small problems:
        /// K blocks that accumulate into C, M and N blocks with ragged last blocks.
        #[test]
        fn f32_gemm_any_blocking_matches_ref(m in dims(), n in dims(), k in dims(), kc in 1usize..40, mcp in 1usize..4, ncp in 1usize..4, tb: bool, seed: u64) {
            let bl = f32::Blocking { kc, mc_panels: mcp, nc_panels: ncp };
            for level in cpu::available() {
                check_level(level, bl, 2, m, n, k, false, tb, seed)?;
            }
        }
    }

    #[test]
    fn blocking_parses_and_rejects() {
        let b = f32::Blocking::parse("512, 16,32").unwrap();
        assert_eq!((b.kc, b.mc_panels, b.nc_panels), (512, 16, 32));
        for bad in [
            "",
            "1,2",
            "1,2,3,4",
            "0,8,64",
            "512,x,64",
            "70000,8,64",
            "-1,8,64",
        ] {
            assert_eq!(f32::Blocking::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn f32_gemm_production_blockings_cross_every_block() {
        // Each vendor's blocking on a problem larger than one block in every dimension.
        for bl in [f32::AMD, f32::INTEL] {
            let shape = (bl.mc_panels * 12 + 5, bl.nc_panels * 32 + 33, bl.kc + 37);
            for level in cpu::available() {
                let (m, n, k) = shape;
                check_level(level, bl, 2, m, n, k, false, true, 11).unwrap();
            }
        }
    }

    #[test]
    fn f32_gemm_large_crosses_every_block() {
        // k > KC (1024), n > NC (2048 at AVX-512), m > MC (96): one large case per level, both
        // layouts.
        for level in cpu::available() {
            for tb in [false, true] {
                check_level(level, f32::AMD, 2, 101, 2048 + 33, 1024 + 37, false, tb, 7).unwrap();
            }
        }
    }

    #[test]
    fn generic_gemm_large_crosses_blocks() {
        let (m, n, k) = (3, 2048 + 5, 256 + 7);
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 7) % 13) as f64 - 6.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 5) % 11) as f64 - 5.0).collect();
        let mut c = vec![0f64; m * n];
        let mut r = vec![0f64; m * n];
        gemm_generic(
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
