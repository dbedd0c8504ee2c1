//! The sparse linear map `x · Wᵀ` with trainable kept values: its gradients against f64 central
//! finite differences (the exact dense path), the f32 kernel path against the f64 path, and a
//! training step that keeps the pruned entries pruned.

use proptest::prelude::*;
use shears_autograd::{no_grad, Var};
use shears_tensor::sparse::{Bitmask, Csr, NmSparse, SparseTensor};
use shears_tensor::{DType, Result, Tensor};

/// A `[rows, cols]` matrix with about `sparsity` of its entries zero (and 2 of every 4 for N:M),
/// in every format that can hold it.
fn structures(rows: usize, cols: usize, sparsity: f64, seed: u64) -> Vec<SparseTensor> {
    let w = Tensor::randn([rows, cols], 0.0, 1.0, DType::F32, seed).unwrap();
    let mut rng = shears_tensor::Rng::new(seed);
    let mask: Vec<bool> = (0..rows * cols)
        .map(|_| rng.uniform() >= sparsity)
        .collect();
    let mut out = vec![
        SparseTensor::Bitmask(Bitmask::from_dense_mask(&w, &mask).unwrap()),
        SparseTensor::Csr(Csr::from_dense_mask(&w, &mask).unwrap()),
    ];
    if cols.is_multiple_of(4) {
        let nm: Vec<bool> = (0..rows * cols)
            .map(|i| (i * 7 + i / cols) % 4 < 2)
            .collect();
        out.push(SparseTensor::Nm(
            NmSparse::from_dense_mask(&w, &nm, 2, 4).unwrap(),
        ));
    }
    out
}

/// Max |analytic − numeric| over both inputs of `Σ sparse_linear(x, v) ⊙ r`, relative.
fn check(s: &SparseTensor, batch: &[usize]) -> std::result::Result<(), String> {
    let e = |err: shears_tensor::Error| err.to_string();
    let [rows, cols] = s.shape();
    let mut xd = batch.to_vec();
    xd.push(cols);
    let x = Tensor::randn(xd.as_slice(), 0.0, 1.0, DType::F64, 3).map_err(e)?;
    let v = s.values().to_dtype(DType::F64).map_err(e)?;
    let (px, pv) = (Var::param(x.clone()), Var::param(v.clone()));
    let y = px.sparse_linear(&pv, s).map_err(e)?;
    let mut yd = batch.to_vec();
    yd.push(rows);
    assert_eq!(y.dims(), yd.as_slice());
    let r = Tensor::randn(y.shape(), 0.0, 1.0, DType::F64, 9).map_err(e)?;
    let grads = y
        .mul(&Var::constant(r.clone()))
        .and_then(|l| l.sum_all())
        .and_then(|l| l.backward())
        .map_err(e)?;
    let loss = |x: &Tensor, v: &Tensor| -> Result<f64> {
        no_grad(|| {
            let y = Var::constant(x.clone()).sparse_linear(&Var::constant(v.clone()), s)?;
            Ok(y.tensor().mul(&r)?.to_vec_f64().iter().sum())
        })
    };
    let h = 1e-6;
    for (which, base, g) in [("x", &x, grads.get(&px)), ("values", &v, grads.get(&pv))] {
        let g = g
            .map(|g| g.to_vec_f64())
            .unwrap_or(vec![0.0; base.elem_count()]);
        assert_eq!(
            g.len(),
            base.elem_count(),
            "{which}: one gradient per element"
        );
        let b = base.to_vec_f64();
        for j in 0..b.len() {
            let at = |d: f64| -> Result<f64> {
                let mut t = b.clone();
                t[j] += d;
                let t = Tensor::from_vec(t, base.shape())?;
                if which == "x" {
                    loss(&t, &v)
                } else {
                    loss(&x, &t)
                }
            };
            let numeric = (at(h).map_err(e)? - at(-h).map_err(e)?) / (2.0 * h);
            if (g[j] - numeric).abs() > 1e-7 + 1e-6 * numeric.abs() {
                return Err(format!(
                    "{which}[{j}]: analytic {}, numeric {numeric}",
                    g[j]
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn sparse_linear_gradients_match_finite_differences(
        rows in 1usize..7, cols4 in 1usize..4, sparsity in prop::sample::select(vec![0.0, 0.5, 0.7, 0.9, 1.0]),
        batch in prop::sample::select(vec![vec![1usize], vec![3], vec![2, 2]]), seed in 0u64..1000,
    ) {
        for s in structures(rows, cols4 * 4 + 1 - (seed as usize % 2), sparsity, seed) {
            prop_assert!(check(&s, &batch).is_ok(), "{:?}", check(&s, &batch));
        }
    }
}

#[test]
fn the_f32_kernel_path_equals_the_exact_path() {
    for s in structures(37, 52, 0.7, 5) {
        let [rows, cols] = s.shape();
        let x32 = Tensor::randn([5, cols], 0.0, 1.0, DType::F32, 1).unwrap();
        let x64 = x32.to_dtype(DType::F64).unwrap();
        let (v32, v64) = (s.values().clone(), s.values().to_dtype(DType::F64).unwrap());
        let r = Tensor::randn([5, rows], 0.0, 1.0, DType::F64, 2).unwrap();
        let run = |x: &Tensor, v: &Tensor| {
            let (px, pv) = (Var::param(x.clone()), Var::param(v.clone()));
            let y = px.sparse_linear(&pv, &s).unwrap();
            let g = y
                .mul(&Var::constant(r.to_dtype(x.dtype()).unwrap()))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (
                y.tensor().to_vec_f64(),
                g.get(&px).unwrap().to_vec_f64(),
                g.get(&pv).unwrap().to_vec_f64(),
            )
        };
        let (a, b) = (run(&x32, &v32), run(&x64, &v64));
        for (name, p, q) in [
            ("y", &a.0, &b.0),
            ("dx", &a.1, &b.1),
            ("dvalues", &a.2, &b.2),
        ] {
            let scale = q.iter().map(|v| v.abs()).fold(1.0, f64::max);
            for (u, w) in p.iter().zip(q.iter()) {
                assert!((u - w).abs() <= 1e-5 * scale, "{name}: {u} vs {w}");
            }
        }
    }
}

#[test]
fn training_the_kept_values_never_revives_a_pruned_weight() {
    // Fit y = x · W*ᵀ for a dense W*, with W restricted to a 50 % bitmask: the loss falls, and the
    // dense form of the trained matrix is still zero wherever the mask is.
    let s = &structures(8, 16, 0.5, 4)[0];
    let target = Tensor::randn([8, 16], 0.0, 1.0, DType::F32, 8).unwrap();
    let x = Var::constant(Tensor::randn([64, 16], 0.0, 1.0, DType::F32, 6).unwrap());
    let y = Var::constant(x.tensor().matmul(&target.t().unwrap()).unwrap());
    let mut v = Var::param(s.values().clone());
    let loss_of = |v: &Var| {
        let d = x.sparse_linear(v, s).unwrap().sub(&y).unwrap();
        d.sqr().unwrap().mean_all().unwrap()
    };
    let first = loss_of(&v).tensor().to_scalar::<f32>().unwrap();
    for _ in 0..50 {
        let l = loss_of(&v);
        let g = l.backward().unwrap();
        let step = g.get(&v).unwrap().mul_scalar(0.05).unwrap();
        v = Var::param(v.tensor().sub(&step).unwrap());
    }
    let last = loss_of(&v).tensor().to_scalar::<f32>().unwrap();
    assert!(last < 0.8 * first, "loss {first} → {last}");
    let trained = s
        .with_values(v.tensor().clone())
        .unwrap()
        .to_dense()
        .unwrap();
    let before = s.to_dense().unwrap().to_vec::<f32>().unwrap();
    for (a, b) in trained.to_vec::<f32>().unwrap().iter().zip(&before) {
        if *b == 0.0 {
            assert_eq!(*a, 0.0);
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let s = &structures(4, 8, 0.5, 1)[0];
    let v = Var::param(s.values().clone());
    let x = Var::constant(Tensor::zeros([2, 7], DType::F32).unwrap());
    assert!(x.sparse_linear(&v, s).is_err());
    let x = Var::constant(Tensor::zeros([2, 8], DType::F64).unwrap());
    assert!(x.sparse_linear(&v, s).is_err(), "dtype mismatch");
    let short = Var::param(Tensor::zeros([1], DType::F32).unwrap());
    let x = Var::constant(Tensor::zeros([2, 8], DType::F32).unwrap());
    assert!(x.sparse_linear(&short, s).is_err());
}
