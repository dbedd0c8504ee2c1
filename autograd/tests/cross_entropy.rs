//! The fused cross-entropy (`Var::cross_entropy`) against f64 finite differences and against
//! `nn::cross_entropy`, the composition of primitives it replaces: value and gradient, with and
//! without an ignored id, in f64 and f32.

mod common;

use common::check_grad;
use shears_autograd::{nn, Var};
use shears_tensor::{DType, Result, Tensor};

fn targets(ids: &[i64]) -> Tensor {
    Tensor::from_vec(ids.to_vec(), [ids.len()]).unwrap()
}

#[test]
fn gradient_matches_finite_differences() {
    let logits = Tensor::randn([5, 7], 0.0, 2.0, DType::F64, 3).unwrap();
    for ignore in [None, Some(2i64)] {
        let t = targets(&[0, 2, 6, 2, 3]);
        check_grad(
            |v: &[Var]| v[0].cross_entropy(&t, ignore)?.reshape([1]),
            std::slice::from_ref(&logits),
        )
        .unwrap_or_else(|e| panic!("ignore {ignore:?}: {e}"));
    }
}

#[test]
fn equals_the_composition_of_primitives() -> Result<()> {
    for dtype in [DType::F64, DType::F32] {
        for ignore in [None, Some(-100i64)] {
            // Large logits and a row with a -inf (masked) class stay finite.
            let mut x = Tensor::randn([6, 40], 0.0, 30.0, DType::F64, 9)?.to_vec::<f64>()?;
            x[7] = f64::NEG_INFINITY;
            let x = Tensor::from_vec(x, [6, 40])?.to_dtype(dtype)?;
            let t = match ignore {
                Some(_) => targets(&[3, 39, 0, -100, 17, 5]),
                None => targets(&[3, 39, 0, 100 % 40, 17, 5]),
            };
            let a = Var::param(x.clone());
            let b = Var::param(x.clone());
            let fused = a.cross_entropy(&t, ignore)?;
            let composed = nn::cross_entropy(&b, &t, ignore)?;
            let (f, c) = (
                fused.tensor().to_vec_f64()[0],
                composed.tensor().to_vec_f64()[0],
            );
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            assert!(
                (f - c).abs() <= tol * c.abs().max(1.0),
                "{dtype:?}: {f} vs {c}"
            );
            let ga = fused.backward()?.get(&a).unwrap().to_vec_f64();
            let gb = composed.backward()?.get(&b).unwrap().to_vec_f64();
            for (i, (p, q)) in ga.iter().zip(&gb).enumerate() {
                assert!(
                    (p - q).abs() <= tol,
                    "{dtype:?} {ignore:?} [{i}]: {p} vs {q}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn every_row_ignored_gives_zero_and_zero_gradient() -> Result<()> {
    let x = Var::param(Tensor::randn([3, 4], 0.0, 1.0, DType::F32, 1)?);
    let loss = x.cross_entropy(&targets(&[-1, -1, -1]), Some(-1))?;
    assert_eq!(loss.tensor().to_vec_f64(), vec![0.0]);
    let g = loss.backward()?.get(&x).unwrap().to_vec_f64();
    assert!(g.iter().all(|&v| v == 0.0));
    Ok(())
}

#[test]
fn bad_targets_and_shapes_are_errors() {
    let x = Var::constant(Tensor::zeros([2, 3], DType::F32).unwrap());
    assert!(
        x.cross_entropy(&targets(&[0, 3]), None).is_err(),
        "id 3 of 3"
    );
    assert!(
        x.cross_entropy(&targets(&[0, -1]), None).is_err(),
        "negative id"
    );
    assert!(
        x.cross_entropy(&targets(&[0]), None).is_err(),
        "one target for two rows"
    );
    let f = Tensor::from_vec(vec![0f32, 1.0], [2]).unwrap();
    assert!(x.cross_entropy(&f, None).is_err(), "float targets");
    let nan = Var::constant(Tensor::from_vec(vec![0f32, f32::NAN, 1.0], [1, 3]).unwrap());
    assert!(nan
        .cross_entropy(&targets(&[0]), None)
        .unwrap()
        .tensor()
        .to_vec_f64()[0]
        .is_nan());
}
