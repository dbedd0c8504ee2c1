//! Tests of the parent module against its reference twins.
use super::*;
use proptest::prelude::*;

/// Deterministic values in [-1, 1) (splitmix64).
fn uniform(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// `M·Mᵀ + n·I` for a seeded `M` with entries in [-1, 1): symmetric positive definite.
fn spd(n: usize, seed: u64) -> Vec<f64> {
    let m = uniform(n * n, seed);
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = dot(&m[i * n..(i + 1) * n], &m[j * n..(j + 1) * n]);
        }
        a[i * n + i] += n as f64;
    }
    a
}

/// A well-conditioned triangular matrix: diagonal in [1, 2) with random sign, off-diagonal
/// entries in [-1, 1) / n; the other triangle filled with garbage that must not be read.
fn triangular(n: usize, upper: bool, seed: u64) -> Vec<f64> {
    let u = uniform(n * n, seed);
    let mut t = vec![f64::NAN; n * n];
    for i in 0..n {
        for j in 0..n {
            let v = u[i * n + j];
            if i == j {
                t[i * n + j] = v.signum() * (1.0 + v.abs());
            } else if (j > i) == upper {
                t[i * n + j] = v / n as f64;
            }
        }
    }
    t
}

fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            for j in 0..n {
                c[i * n + j] += a[i * k + p] * b[p * n + j];
            }
        }
    }
    c
}

fn transposed(a: &[f64], n: usize) -> Vec<f64> {
    let mut t = a.to_vec();
    transpose_in_place(&mut t, n);
    t
}

fn max_abs(x: &[f64]) -> f64 {
    x.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn close(a: &[f64], b: &[f64], tol: f64) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    let scale = 1.0 + max_abs(b);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        prop_assert!(
            (x - y).abs() <= tol * scale,
            "element {}: {} vs {}",
            i,
            x,
            y
        );
    }
    Ok(())
}

fn sizes() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(2),
        Just(15),
        Just(16),
        Just(17),
        Just(31),
        Just(33),
        1usize..64
    ]
}

/// Block sizes for the blocked kernels: 1 (all panel), odd, the tested sizes' boundaries, the
/// default.
fn blocks() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(3), Just(4), Just(16), Just(NB)]
}

fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn cholesky_matches_ref(n in sizes(), nb in blocks(), seed: u64) {
        let a = spd(n, seed);
        let mut r = a.clone();
        cholesky_lower_ref(&mut r, n).unwrap();
        let mut l = a.clone();
        cholesky_lower_blocked(&mut l, n, nb).unwrap();
        close(&l, &r, 1e-13)?;
        let mut l = a.clone();
        cholesky_lower(&mut l, n).unwrap();
        close(&l, &r, 1e-13)?;
        // f32 against the f32 reference and against f64.
        let mut l32 = f32s(&a);
        cholesky_lower_blocked(&mut l32, n, nb).unwrap();
        let mut r32 = f32s(&a);
        cholesky_lower_ref(&mut r32, n).unwrap();
        close(&f64s(&l32), &f64s(&r32), 1e-5)?;
        close(&f64s(&l32), &r, 1e-5)?;
        // Upper is the transpose of lower, reading only the upper triangle.
        let mut u = transposed(&a, n);
        for i in 0..n {
            for j in 0..i {
                u[i * n + j] = f64::NAN;
            }
        }
        cholesky_upper(&mut u, n).unwrap();
        close(&u, &transposed(&r, n), 1e-13)?;
    }

    #[test]
    fn tri_solve_matches_ref(n in sizes(), nrhs in prop_oneof![Just(0usize), Just(1), Just(3), 1usize..20], nb in blocks(), upper: bool, transpose: bool, seed: u64) {
        let t = triangular(n, upper, seed);
        let b = uniform(n * nrhs, !seed);
        let mut r = b.clone();
        tri_solve_ref(&t, n, &mut r, nrhs, upper, transpose).unwrap();
        let mut x = b.clone();
        check_diagonal(&t, n).unwrap();
        solve_blocked(&t, n, &mut x, nrhs, upper, transpose, nb, false);
        close(&x, &r, 1e-12)?;
        let mut x = b.clone();
        tri_solve(&t, n, &mut x, nrhs, upper, transpose).unwrap();
        close(&x, &r, 1e-12)?;
        // Residual: op(T)·X = B, with the unused triangle zeroed for the product.
        let mut tz = t.clone();
        tz.iter_mut().for_each(|v| if v.is_nan() { *v = 0.0 });
        let op = if transpose { transposed(&tz, n) } else { tz };
        close(&matmul(&op, &x, n, n, nrhs), &b, 1e-12)?;
        let mut x32 = f32s(&b);
        tri_solve(&f32s(&t), n, &mut x32, nrhs, upper, transpose).unwrap();
        close(&f64s(&x32), &r, 1e-5)?;
    }

    #[test]
    fn cholesky_inverse_inverts(n in sizes(), upper: bool, seed: u64) {
        let a = spd(n, seed);
        let mut f = a.clone();
        if upper {
            cholesky_upper(&mut f, n).unwrap();
        } else {
            cholesky_lower(&mut f, n).unwrap();
        }
        let inv = cholesky_inverse(&f, n, upper).unwrap();
        for i in 0..n {
            for j in 0..n {
                prop_assert_eq!(inv[i * n + j].to_bits(), inv[j * n + i].to_bits());
            }
        }
        let mut eye = vec![0.0; n * n];
        (0..n).for_each(|i| eye[i * n + i] = 1.0);
        close(&matmul(&inv, &a, n, n, n), &eye, 1e-12)?;
        let inv32 = cholesky_inverse(&f32s(&f), n, upper).unwrap();
        close(&f64s(&inv32), &inv, 1e-5)?;
    }
}

#[test]
fn factor_reconstructs_a() {
    let n = 100;
    let a = spd(n, 7);
    let mut l = a.clone();
    cholesky_lower(&mut l, n).unwrap();
    for i in 0..n {
        assert!(l[i * n + i] > 0.0);
        assert!(l[i * n + i + 1..(i + 1) * n].iter().all(|&v| v == 0.0));
    }
    let llt = matmul(&l, &transposed(&l, n), n, n, n);
    close(&llt, &a, 1e-13).unwrap();
}

#[test]
fn large_matrices_match_ref() {
    // Several default-size blocks, a ragged last one, and the parallel paths.
    let n = 203;
    let a = spd(n, 11);
    let (mut l, mut r) = (a.clone(), a.clone());
    cholesky_lower(&mut l, n).unwrap();
    cholesky_lower_ref(&mut r, n).unwrap();
    close(&l, &r, 1e-13).unwrap();
    for (upper, transpose) in [(false, false), (false, true), (true, false), (true, true)] {
        let t = if upper { transposed(&l, n) } else { l.clone() };
        let b = uniform(n * 70, 3);
        let (mut x, mut y) = (b.clone(), b.clone());
        tri_solve(&t, n, &mut x, 70, upper, transpose).unwrap();
        tri_solve_ref(&t, n, &mut y, 70, upper, transpose).unwrap();
        close(&x, &y, 1e-12).unwrap();
    }
    let inv = cholesky_inverse(&l, n, false).unwrap();
    let mut eye = vec![0.0; n * n];
    (0..n).for_each(|i| eye[i * n + i] = 1.0);
    close(&matmul(&inv, &a, n, n, n), &eye, 1e-12).unwrap();
}

#[test]
fn not_positive_definite_names_the_pivot() {
    // Pivots: 4, 5 − 1 = 4, then −1 − 0 = −1.
    let a = [4f64, 2., 0., 2., 5., 0., 0., 0., -1.];
    let want = CholeskyError {
        pivot: 2,
        value: -1.0,
    };
    for nb in [1, 2, 3, NB] {
        let mut l = a;
        assert_eq!(cholesky_lower_blocked(&mut l, 3, nb), Err(want));
    }
    let mut l = a;
    assert_eq!(cholesky_lower_ref(&mut l, 3), Err(want));
    let mut u = a;
    assert_eq!(cholesky_upper(&mut u, 3), Err(want));
    assert!(want.to_string().contains("pivot 2"));

    // Deep inside a large matrix, past the first blocks.
    let n = 150;
    let mut a = spd(n, 5);
    a[100 * n + 100] = -1.0;
    let mut l = a.clone();
    assert_eq!(cholesky_lower(&mut l, n).unwrap_err().pivot, 100);
    let mut l32 = f32s(&a);
    assert_eq!(cholesky_lower(&mut l32, n).unwrap_err().pivot, 100);
    assert_eq!(cholesky_lower_ref(&mut a, n).unwrap_err().pivot, 100);
}

#[test]
fn zero_nan_and_semidefinite_pivots_fail() {
    let mut z = [0f32];
    assert_eq!(
        cholesky_lower(&mut z, 1),
        Err(CholeskyError {
            pivot: 0,
            value: 0.0
        })
    );
    let mut nan = [1f64, 0., 0., f64::NAN];
    let e = cholesky_lower(&mut nan, 2).unwrap_err();
    assert_eq!(e.pivot, 1);
    assert!(e.value.is_nan());
    let mut inf = [f64::INFINITY];
    assert_eq!(cholesky_lower(&mut inf, 1).unwrap_err().pivot, 0);
    // [[1, 1], [1, 1]] is singular: the second pivot is exactly 0.
    let mut psd = [1f64, 1., 1., 1.];
    assert_eq!(cholesky_lower(&mut psd, 2).unwrap_err().pivot, 1);
}

#[test]
fn singular_triangle_is_an_error_and_leaves_b_alone() {
    let mut t = triangular(5, false, 1);
    t[2 * 5 + 2] = 0.0;
    t[4 * 5 + 4] = 0.0;
    for transpose in [false, true] {
        let mut b = vec![1.0; 10];
        let want = SingularError {
            index: 2,
            value: 0.0,
        };
        assert_eq!(tri_solve(&t, 5, &mut b, 2, false, transpose), Err(want));
        assert_eq!(tri_solve_ref(&t, 5, &mut b, 2, false, transpose), Err(want));
        assert!(b.iter().all(|&v| v == 1.0));
    }
    assert_eq!(
        cholesky_inverse(&t, 5, false).unwrap_err(),
        SingularError {
            index: 2,
            value: 0.0
        }
    );
    let mut t = triangular(3, true, 2);
    t[0] = f64::NAN;
    assert_eq!(
        tri_solve(&t, 3, &mut [1.0; 3], 1, true, false)
            .unwrap_err()
            .index,
        0
    );
}
