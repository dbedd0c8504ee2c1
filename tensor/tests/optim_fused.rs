//! The fused AdamW step against the composition of elementwise ops it replaces: bit for bit, in
//! f32 and f64, with and without weight decay, over several steps.

use shears_tensor::{AdamWStep, DType, Result, Tensor};

/// One AdamW step composed from elementwise ops (the optimizer's former code).
fn composed(
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    hp: &AdamWStep,
) -> Result<(Tensor, Tensor, Tensor)> {
    let mut w = w.clone();
    if hp.weight_decay != 0.0 {
        w = w.mul_scalar(1.0 - hp.lr * hp.weight_decay)?;
    }
    let m = m
        .mul_scalar(hp.beta1)?
        .add(&g.mul_scalar(1.0 - hp.beta1)?)?;
    let v = v
        .mul_scalar(hp.beta2)?
        .add(&g.sqr()?.mul_scalar(1.0 - hp.beta2)?)?;
    let bc1 = 1.0 - hp.beta1.powi(hp.step as i32);
    let bc2 = 1.0 - hp.beta2.powi(hp.step as i32);
    let denom = v.sqrt()?.div_scalar(bc2.sqrt())?.add_scalar(hp.eps)?;
    let update = m.div(&denom)?.mul_scalar(hp.lr / bc1)?;
    Ok((w.sub(&update)?, m, v))
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_vec_f64().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn fused_adamw_equals_its_composition_bit_for_bit() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        for weight_decay in [0.0, 0.1] {
            // 40 000 elements: several parallel chunks and a ragged last one.
            let n = 40_000;
            let mut w = Tensor::randn([n], 0.0, 1.0, dtype, 1)?;
            let (mut m, mut v) = (w.zeros_like()?, w.zeros_like()?);
            let (mut wc, mut mc, mut vc) = (w.clone(), m.clone(), v.clone());
            for step in 1..=4 {
                let g = Tensor::randn([n], 0.0, 0.3, dtype, 10 + step)?;
                let hp = AdamWStep {
                    lr: 1e-3,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay,
                    step,
                };
                (w, m, v) = w.adamw_step(&g, &m, &v, &hp)?;
                (wc, mc, vc) = composed(&wc, &g, &mc, &vc, &hp)?;
                assert_eq!(
                    bits(&w),
                    bits(&wc),
                    "{dtype:?} wd {weight_decay} step {step}: w"
                );
                assert_eq!(bits(&m), bits(&mc), "m");
                assert_eq!(bits(&v), bits(&vc), "v");
            }
        }
    }
    Ok(())
}

#[test]
fn mismatched_inputs_are_errors() -> Result<()> {
    let w = Tensor::zeros([4], DType::F32)?;
    let hp = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
    };
    let short = Tensor::zeros([3], DType::F32)?;
    assert!(w.adamw_step(&short, &w, &w, &hp).is_err());
    let f64s = Tensor::zeros([4], DType::F64)?;
    assert!(w.adamw_step(&w, &f64s, &w, &hp).is_err());
    let half = Tensor::zeros([4], DType::BF16)?;
    assert!(half.adamw_step(&half, &half, &half, &hp).is_err());
    Ok(())
}
