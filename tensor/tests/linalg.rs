//! Linear algebra through the public `Tensor` API: Cholesky (both triangles, f32 and f64, any
//! layout) against a plain f64 Cholesky written here, inverses checked by multiplying back,
//! triangular solves by their residual, and the errors for bad input.

use proptest::prelude::*;
use shears_tensor::test_util::assert_close;
use shears_tensor::{DType, Error, Tensor};

/// Deterministic values in [-1, 1) from a 64-bit LCG.
fn uniform(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed ^ 0x5851_f42d_4c95_7f2d;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// `M·Mᵀ + n·I` for a seeded `M`: symmetric positive definite and well conditioned.
fn spd(n: usize, seed: u64) -> Vec<f64> {
    let m = uniform(n * n, seed);
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum::<f64>();
        }
        a[i * n + i] += n as f64;
    }
    a
}

/// The textbook row-by-row Cholesky in f64: `Ok(L)` or `Err(index of the first bad pivot)`.
fn cholesky_plain(a: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            if i == j {
                if s.is_nan() || s <= 0.0 {
                    return Err(i);
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Ok(l)
}

fn transposed(a: &[f64], n: usize) -> Vec<f64> {
    (0..n * n).map(|i| a[(i % n) * n + i / n]).collect()
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

fn eye(n: usize) -> Vec<f64> {
    (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect()
}

/// `a` with the triangle the op must not read (upper when `keep_lower`) set to garbage.
fn spoil(a: &[f64], n: usize, keep_lower: bool) -> Vec<f64> {
    let mut s = a.to_vec();
    for i in 0..n {
        for j in 0..n {
            if (j > i && keep_lower) || (j < i && !keep_lower) {
                s[i * n + j] = 1e6 + (i * n + j) as f64;
            }
        }
    }
    s
}

/// The row-major `n×n` matrix `a` as a `dtype` tensor: contiguous, or (when `view`) the
/// transposed view of its transpose's storage, a non-contiguous layout with the same elements.
fn matrix(a: &[f64], n: usize, dtype: DType, view: bool) -> Tensor {
    let data = if view { transposed(a, n) } else { a.to_vec() };
    let t = Tensor::from_vec(data, [n, n])
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    if view {
        let t = t.t().unwrap();
        assert!(n < 2 || !t.is_contiguous());
        t
    } else {
        t
    }
}

fn dtype(f64_: bool) -> DType {
    if f64_ {
        DType::F64
    } else {
        DType::F32
    }
}

/// `(atol, rtol)` against the f64 reference for values of magnitude up to `scale`.
fn tol(dtype: DType, scale: f64) -> (f64, f64) {
    let eps = if dtype == DType::F64 { 1e-11 } else { 2e-5 };
    (eps * (1.0 + scale), eps)
}

fn max_abs(x: &[f64]) -> f64 {
    x.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn sizes() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), Just(1), Just(2), Just(17), 0usize..=40]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn cholesky_matches_plain_f64(n in sizes(), f64_: bool, upper: bool, view: bool, seed: u64) {
        let a = spd(n, seed);
        let want = cholesky_plain(&a, n).unwrap();
        let want = if upper { transposed(&want, n) } else { want };
        let dt = dtype(f64_);
        let x = matrix(&spoil(&a, n, !upper), n, dt, view);
        let l = x.cholesky(upper).unwrap();
        prop_assert_eq!(l.dims(), &[n, n]);
        prop_assert_eq!(l.dtype(), dt);
        let (atol, rtol) = tol(dt, max_abs(&want));
        assert_close(&l.to_vec_f64(), &want, atol, rtol);
    }

    #[test]
    fn inverses_multiply_back_to_identity(n in sizes(), f64_: bool, upper: bool, view: bool, seed: u64) {
        let a = spd(n, seed);
        let dt = dtype(f64_);
        let inv = matrix(&spoil(&a, n, true), n, dt, view).inverse_spd().unwrap();
        prop_assert_eq!(inv.dtype(), dt);
        let inv = inv.to_vec_f64();
        for i in 0..n {
            for j in 0..i {
                prop_assert_eq!(inv[i * n + j], inv[j * n + i]);
            }
        }
        let (atol, rtol) = tol(dt, 10.0);
        assert_close(&matmul(&inv, &a, n, n, n), &eye(n), atol, rtol);
        // From the factor, in either triangle, the same inverse.
        let f = matrix(&a, n, dt, false).cholesky(upper).unwrap();
        let inv2 = f.cholesky_inverse(upper).unwrap().to_vec_f64();
        assert_close(&matmul(&inv2, &a, n, n, n), &eye(n), atol, rtol);
    }

    #[test]
    fn triangular_solve_has_small_residual(
        n in sizes(),
        k in prop_oneof![Just(None), Just(Some(0usize)), (1usize..6).prop_map(Some)],
        f64_: bool,
        upper: bool,
        transpose: bool,
        view: bool,
        seed: u64,
    ) {
        let l = cholesky_plain(&spd(n, seed), n).unwrap();
        let t = if upper { transposed(&l, n) } else { l };
        let dt = dtype(f64_);
        let cols = k.unwrap_or(1);
        let b = uniform(n * cols, !seed);
        let bt = match k {
            None => Tensor::from_vec(b.clone(), [n]),
            Some(k) => Tensor::from_vec(b.clone(), [n, k]),
        }
        .unwrap()
        .to_dtype(dt)
        .unwrap();
        let x = matrix(&spoil(&t, n, !upper), n, dt, view)
            .triangular_solve(&bt, upper, transpose)
            .unwrap();
        prop_assert_eq!(x.dims(), bt.dims());
        prop_assert_eq!(x.dtype(), dt);
        let op = if transpose { transposed(&t, n) } else { t };
        let (atol, rtol) = tol(dt, 1.0);
        assert_close(&matmul(&op, &x.to_vec_f64(), n, n, cols), &b, atol, rtol);
    }
}

#[test]
fn known_two_by_two() {
    let a = Tensor::from_vec(vec![4f64, 2., 2., 3.], [2, 2]).unwrap();
    let s = 2f64.sqrt();
    assert_close(
        &a.cholesky(false).unwrap().to_vec_f64(),
        &[2., 0., 1., s],
        1e-15,
        0.0,
    );
    assert_close(
        &a.cholesky(true).unwrap().to_vec_f64(),
        &[2., 1., 0., s],
        1e-15,
        0.0,
    );
    assert_close(
        &a.inverse_spd().unwrap().to_vec_f64(),
        &[0.375, -0.25, -0.25, 0.5],
        1e-15,
        0.0,
    );
    let e = Tensor::zeros([0, 0], DType::F32).unwrap();
    assert_eq!(e.cholesky(false).unwrap().dims(), &[0, 0]);
    assert_eq!(e.inverse_spd().unwrap().dims(), &[0, 0]);
}

#[test]
fn non_square_and_non_matrix_inputs_are_shape_errors() {
    for shape in [&[2usize, 3][..], &[4], &[2, 2, 2], &[]] {
        let x = Tensor::zeros(shape, DType::F32).unwrap();
        for (op, r) in [
            ("cholesky", x.cholesky(false)),
            ("cholesky_inverse", x.cholesky_inverse(false)),
            ("inverse_spd", x.inverse_spd()),
            (
                "triangular_solve",
                x.triangular_solve(&Tensor::zeros([2], DType::F32).unwrap(), false, false),
            ),
        ] {
            let err = r.unwrap_err();
            assert!(
                matches!(err, Error::ShapeMismatch { op: o, .. } if o == op),
                "{op} {shape:?}: {err:?}"
            );
            assert!(err.to_string().contains("square"), "{err}");
        }
    }
    // b must have n rows.
    let t = Tensor::eye(3, DType::F64).unwrap();
    for b in [[2usize].as_slice(), &[4, 1], &[3, 1, 1], &[]] {
        let b = Tensor::zeros(b, DType::F64).unwrap();
        let err = t.triangular_solve(&b, false, false).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ShapeMismatch {
                    op: "triangular_solve",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn integer_and_half_dtypes_are_rejected() {
    for dt in [DType::U32, DType::I64, DType::F16, DType::BF16] {
        let x = Tensor::eye(2, dt).unwrap();
        for (op, r) in [
            ("cholesky", x.cholesky(false)),
            ("cholesky_inverse", x.cholesky_inverse(true)),
            ("inverse_spd", x.inverse_spd()),
            ("triangular_solve", x.triangular_solve(&x, false, false)),
        ] {
            let err = r.unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::UnsupportedDType { op: o, dtype, expected: "f32 or f64" }
                        if o == op && dtype == dt
                ),
                "{op} {dt:?}: {err:?}"
            );
        }
    }
    let t = Tensor::eye(2, DType::F32).unwrap();
    let b = Tensor::ones([2], DType::F64).unwrap();
    let err = t.triangular_solve(&b, false, false).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DTypeMismatch {
                op: "triangular_solve",
                lhs: DType::F32,
                rhs: DType::F64
            }
        ),
        "{err:?}"
    );
}

#[test]
fn not_positive_definite_names_the_pivot() {
    // Pivots 4, 5 − 2²/4 = 4, then −1: the third fails.
    let a = [4., 2., 0., 2., 5., 0., 0., 0., -1.];
    assert_eq!(cholesky_plain(&a, 3), Err(2));
    for dt in [DType::F32, DType::F64] {
        for view in [false, true] {
            let x = matrix(&a, 3, dt, view);
            for (op, r) in [
                ("cholesky", x.cholesky(false)),
                ("cholesky", x.cholesky(true)),
                ("inverse_spd", x.inverse_spd()),
            ] {
                let err = r.unwrap_err();
                match err {
                    Error::NotPositiveDefinite {
                        op: o,
                        pivot,
                        value,
                    } => {
                        assert_eq!((o, pivot, value), (op, 2, -1.0));
                    }
                    ref e => panic!("{op}: {e:?}"),
                }
                let msg = err.to_string();
                assert!(msg.contains("pivot 2") && msg.contains(op), "{msg}");
            }
        }
    }
    // Past the kernel's first blocks, and agreeing with the plain reference.
    let n = 150;
    let mut a = spd(n, 3);
    a[97 * n + 97] = -(n as f64);
    assert_eq!(cholesky_plain(&a, n), Err(97));
    for dt in [DType::F32, DType::F64] {
        let err = matrix(&a, n, dt, false).cholesky(false).unwrap_err();
        assert!(
            matches!(err, Error::NotPositiveDefinite { pivot: 97, .. }),
            "{err:?}"
        );
    }
}

#[test]
fn singular_triangles_are_errors() {
    // Lower triangular with a zero at diagonal entry 1.
    let t = Tensor::from_vec(vec![2f32, 0., 0., 1., 0., 0., 1., 1., 3.], [3, 3]).unwrap();
    let b = Tensor::ones([3, 2], DType::F32).unwrap();
    for transpose in [false, true] {
        let err = t.triangular_solve(&b, false, transpose).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Singular {
                    op: "triangular_solve",
                    index: 1,
                    value
                } if value == 0.0
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("entry 1"), "{err}");
    }
    let err = t.cholesky_inverse(false).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Singular {
                op: "cholesky_inverse",
                index: 1,
                ..
            }
        ),
        "{err:?}"
    );
    // Upper: the upper triangle's diagonal is what counts, here entry 0 is NaN.
    let u = Tensor::from_vec(vec![f64::NAN, 1., 0., 1.], [2, 2]).unwrap();
    let err = u
        .triangular_solve(&Tensor::ones([2], DType::F64).unwrap(), true, false)
        .unwrap_err();
    assert!(matches!(err, Error::Singular { index: 0, .. }), "{err:?}");
}
