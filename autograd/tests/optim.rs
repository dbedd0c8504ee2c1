//! Optimizers, clipping, schedules and checkpoints: hand-computed steps, convergence, masks and
//! bit-identical resume.

use shears_autograd::optim::{
    clip_grad_norm, load_state, save_state, AdamW, LrSchedule, Optimizer, Param, Sgd,
};
use shears_autograd::{nn, Grads, Var};
use shears_tensor::{DType, Result, Tensor};

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "entry {i}: got {g}, want {w}");
    }
}

/// Gradients of `loss = Σ c·p` (so `dloss/dp = c`, constant) for one parameter.
fn linear_grads(p: &Param, c: &[f64]) -> Result<Grads> {
    let c = Var::constant(Tensor::from_slice(c, p.tensor().dims())?);
    p.var().mul(&c)?.sum_all()?.backward()
}

fn values(p: &Param) -> Vec<f64> {
    p.tensor().to_vec::<f64>().unwrap()
}

#[test]
fn sgd_momentum_two_steps_by_hand() -> Result<()> {
    // p = [1, -2], dloss/dp = c = [0.5, 3], lr 0.1, μ 0.9, wd 0.01.
    // Step 1: g = c + 0.01·p = [0.51, 2.98]; b = g; p = p − 0.1·b = [0.949, −2.298].
    // Step 2: g = c + 0.01·p = [0.50949, 2.97702]; b = 0.9·[0.51, 2.98] + g = [0.96849, 5.65902];
    //         p = [0.949 − 0.096849, −2.298 − 0.565902] = [0.852151, −2.863902].
    let c = [0.5, 3.0];
    let mut params = vec![Param::new("w", Tensor::from_vec(vec![1.0f64, -2.0], [2])?)?];
    let mut opt = Sgd::new(0.1);
    opt.momentum = 0.9;
    opt.weight_decay = 0.01;
    let g = linear_grads(&params[0], &c)?;
    opt.step(&mut params, &g)?;
    assert_close(&values(&params[0]), &[0.949, -2.298], 1e-12);
    let g = linear_grads(&params[0], &c)?;
    opt.step(&mut params, &g)?;
    assert_close(&values(&params[0]), &[0.852151, -2.863902], 1e-12);
    Ok(())
}

#[test]
fn sgd_nesterov_and_plain_by_hand() -> Result<()> {
    // Nesterov, first step: g = c + 0.01·p = [0.51, 2.98]; b = g; g ← g + 0.9·b = 1.9·g
    // = [0.969, 5.662]; p = [1 − 0.0969, −2 − 0.5662] = [0.9031, −2.5662].
    let c = [0.5, 3.0];
    let mut params = vec![Param::new("w", Tensor::from_vec(vec![1.0f64, -2.0], [2])?)?];
    let mut opt = Sgd::new(0.1);
    opt.momentum = 0.9;
    opt.nesterov = true;
    opt.weight_decay = 0.01;
    let g = linear_grads(&params[0], &c)?;
    opt.step(&mut params, &g)?;
    assert_close(&values(&params[0]), &[0.9031, -2.5662], 1e-12);

    // Plain SGD: p = [1, −2] − 0.1·[0.5, 3] = [0.95, −2.3]; no state kept.
    let mut params = vec![Param::new("w", Tensor::from_vec(vec![1.0f64, -2.0], [2])?)?];
    let mut opt = Sgd::new(0.1);
    let g = linear_grads(&params[0], &c)?;
    opt.step(&mut params, &g)?;
    assert_close(&values(&params[0]), &[0.95, -2.3], 1e-12);
    assert!(opt.state_tensors().is_empty());
    Ok(())
}

#[test]
fn adamw_two_steps_by_hand() -> Result<()> {
    // p = [1, −2], g = [0.5, 3] both steps, lr 0.1, β = (0.9, 0.999), ε = 1e-8, wd 0.1.
    // Step 1: p ← 0.99·p = [0.99, −1.98]; m = 0.1·g; v = 0.001·g²; m̂ = g, v̂ = g²,
    //         so the update is lr·g/(|g| + ε) ≈ 0.1 (g > 0): p = [0.89, −2.08] (to ~1e-9).
    // Step 2: m = 0.9·0.1·g + 0.1·g = 0.19·g, m̂ = 0.19·g / (1 − 0.81) = g;
    //         v = 0.999·0.001·g² + 0.001·g² = 0.001999·g², v̂ = g² / … = g² (1 − 0.999² = 0.001999);
    //         p = 0.99·[0.89, −2.08] − 0.1 = [0.7811, −2.1592].
    let c = [0.5, 3.0];
    let mut params = vec![Param::new("w", Tensor::from_vec(vec![1.0f64, -2.0], [2])?)?];
    let mut opt = AdamW::new(0.1);
    opt.weight_decay = 0.1;
    let g = linear_grads(&params[0], &c)?;
    opt.step(&mut params, &g)?;
    assert_close(&values(&params[0]), &[0.89, -2.08], 1e-7);
    let g = linear_grads(&params[0], &c)?;
    opt.step(&mut params, &g)?;
    assert_close(&values(&params[0]), &[0.7811, -2.1592], 1e-7);

    // f32 parameters compute in f32.
    let mut params = vec![Param::new("w", Tensor::from_vec(vec![1.0f32, -2.0], [2])?)?];
    let g = {
        let c = Var::constant(Tensor::from_vec(vec![0.5f32, 3.0], [2])?);
        params[0].var().mul(&c)?.sum_all()?.backward()?
    };
    let mut opt = AdamW::new(0.1);
    opt.weight_decay = 0.1;
    opt.step(&mut params, &g)?;
    assert_eq!(params[0].tensor().dtype(), DType::F32);
    let got = params[0].tensor().to_vec::<f32>()?;
    assert!(
        (got[0] - 0.89).abs() < 1e-6 && (got[1] + 2.08).abs() < 1e-6,
        "{got:?}"
    );
    Ok(())
}

/// `loss = mse(x·w + b, y)` for a fixed random least-squares problem.
fn lsq_loss(x: &Var, y: &Var, params: &[Param]) -> Result<Var> {
    nn::mse(&x.matmul(params[0].var())?.add(params[1].var())?, y)
}

fn lsq_problem() -> Result<(Var, Var)> {
    let x = Tensor::randn([32, 4], 0.0, 1.0, DType::F64, 7)?;
    let w = Tensor::from_vec(vec![1.5f64, -2.0, 0.5, 3.0], [4, 1])?;
    let y = x.matmul(&w)?.add_scalar(-0.7)?;
    Ok((Var::constant(x), Var::constant(y)))
}

#[test]
fn adamw_converges_on_least_squares() -> Result<()> {
    let (x, y) = lsq_problem()?;
    let mut params = vec![
        Param::new("w", Tensor::zeros([4, 1], DType::F64)?)?,
        Param::new("b", Tensor::zeros([1], DType::F64)?)?,
    ];
    let mut opt = AdamW::new(0.05);
    opt.weight_decay = 0.0;
    let first = lsq_loss(&x, &y, &params)?.tensor().to_scalar::<f64>()?;
    for _ in 0..500 {
        let g = lsq_loss(&x, &y, &params)?.backward()?;
        opt.step(&mut params, &g)?;
    }
    let last = lsq_loss(&x, &y, &params)?.tensor().to_scalar::<f64>()?;
    assert!(first > 1.0, "initial loss {first}");
    assert!(last < 1e-4, "loss {first} → {last}");
    Ok(())
}

#[test]
fn masked_adamw_keeps_pruned_entries_exactly_zero() -> Result<()> {
    // loss = Σ (w − t)² with t non-zero everywhere: every entry, masked or not, has a non-zero
    // gradient at every step, and weight decay is on.
    let t = Tensor::randn([6, 5], 1.0, 2.0, DType::F32, 3)?.add_scalar(0.25)?;
    let target = Var::constant(t.clone());
    let mask_bits: Vec<u8> = (0..30).map(|i| u8::from(i % 3 != 0)).collect();
    let mask = Tensor::from_vec(mask_bits.clone(), [6, 5])?;
    let init = Tensor::randn([6, 5], 0.0, 1.0, DType::F32, 4)?;
    let init_v = init.to_vec::<f32>()?;
    let mut params = vec![Param::new("w", init)?.with_mask(mask)?];
    let mut opt = AdamW::new(0.05);
    opt.weight_decay = 0.1;
    for _ in 0..200 {
        let g = params[0].var().sub(&target)?.sqr()?.sum_all()?.backward()?;
        let dw = g.get(params[0].var()).unwrap().to_vec::<f32>()?;
        assert!(
            dw.iter().all(|d| *d != 0.0),
            "gradient must be non-zero everywhere"
        );
        opt.step(&mut params, &g)?;
    }
    let w = params[0].tensor().to_vec::<f32>()?;
    let tv = t.to_vec::<f32>()?;
    for (i, keep) in mask_bits.iter().enumerate() {
        if *keep == 0 {
            assert!(
                w[i] == 0.0 && w[i].is_sign_positive(),
                "masked entry {i} = {}",
                w[i]
            );
        } else {
            // Decay pulls trained entries towards 0, so they approach the target only partly.
            assert!(
                (w[i] - tv[i]).abs() < 0.5 * (init_v[i] - tv[i]).abs(),
                "entry {i}: {} → {} vs target {}",
                init_v[i],
                w[i],
                tv[i]
            );
        }
    }
    // The moments of masked entries stay exactly 0 too.
    for (name, s) in opt.state_tensors() {
        if name.ends_with("exp_avg") || name.ends_with("exp_avg_sq") {
            let s = s.to_vec::<f32>()?;
            for (i, keep) in mask_bits.iter().enumerate() {
                if *keep == 0 {
                    assert_eq!(s[i], 0.0, "{name}[{i}]");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn masked_sgd_momentum_keeps_pruned_entries_exactly_zero() -> Result<()> {
    let target = Var::constant(Tensor::full([8], 2.0, DType::F64)?);
    let mask = Tensor::from_vec(vec![1.0f64, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0], [8])?;
    let mut params = vec![Param::new("w", Tensor::full([8], -1.0, DType::F64)?)?.with_mask(mask)?];
    let mut opt = Sgd::new(0.05);
    opt.momentum = 0.9;
    opt.nesterov = true;
    opt.weight_decay = 0.01;
    for _ in 0..100 {
        let g = params[0].var().sub(&target)?.sqr()?.sum_all()?.backward()?;
        opt.step(&mut params, &g)?;
    }
    let w = values(&params[0]);
    for i in [1, 3, 6] {
        assert_eq!(w[i], 0.0);
    }
    assert!((w[0] - 2.0).abs() < 0.1, "{w:?}");
    Ok(())
}

/// Runs `steps` AdamW (or SGD) steps with a warm-up schedule on the least-squares problem,
/// starting at `start` and with clipping, exactly as a training loop would.
fn train(
    x: &Var,
    y: &Var,
    params: &mut [Param],
    opt: &mut dyn Optimizer,
    start: u64,
    steps: u64,
) -> Result<()> {
    let schedule = LrSchedule::WarmupCosine {
        warmup: 3,
        total: 40,
        min_ratio: 0.1,
    };
    for step in start..start + steps {
        opt.set_lr(schedule.lr_at(step, 0.05));
        let mut g = lsq_loss(x, y, params)?.backward()?;
        clip_grad_norm(&mut g, params, 5.0)?;
        opt.step(params, &g)?;
    }
    Ok(())
}

fn fresh_params(dtype: DType) -> Result<Vec<Param>> {
    let mask = Tensor::from_vec(vec![1u8, 1, 0, 1], [4, 1])?;
    Ok(vec![
        Param::new("w", Tensor::randn([4, 1], 0.0, 1.0, dtype, 11)?)?.with_mask(mask)?,
        Param::new("b", Tensor::zeros([1], dtype)?)?,
    ])
}

fn resume_is_bit_identical(make_opt: fn() -> Box<dyn Optimizer>, dtype: DType) -> Result<()> {
    let (x, y) = lsq_problem()?;
    let (x, y) = (
        Var::constant(x.tensor().to_dtype(dtype)?),
        Var::constant(y.tensor().to_dtype(dtype)?),
    );
    let n = 30;

    let mut ref_params = fresh_params(dtype)?;
    let mut ref_opt = make_opt();
    train(&x, &y, &mut ref_params, ref_opt.as_mut(), 0, n)?;

    let dir = std::env::temp_dir().join(format!(
        "shears-optim-resume-{}-{}-{dtype}",
        std::process::id(),
        ref_opt.kind()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ckpt.safetensors");
    {
        let mut params = fresh_params(dtype)?;
        let mut opt = make_opt();
        train(&x, &y, &mut params, opt.as_mut(), 0, n / 2)?;
        save_state(&path, &params, opt.as_ref(), n / 2)?;
    }
    // Fresh objects, initialised differently, so every value must come from the file.
    let mut params = vec![
        Param::new("w", Tensor::zeros([4, 1], dtype)?)?
            .with_mask(Tensor::from_vec(vec![1u8, 1, 0, 1], [4, 1])?)?,
        Param::new("b", Tensor::ones([1], dtype)?)?,
    ];
    let mut opt = make_opt();
    let step = load_state(&path, &mut params, opt.as_mut())?;
    assert_eq!(step, n / 2);
    train(&x, &y, &mut params, opt.as_mut(), step, n - step)?;
    std::fs::remove_dir_all(&dir).ok();

    for (a, b) in ref_params.iter().zip(&params) {
        let (va, vb) = (a.tensor().to_vec_f64(), b.tensor().to_vec_f64());
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&va), bits(&vb), "parameter {} differs", a.name());
    }
    let (sa, sb) = (ref_opt.state_tensors(), opt.state_tensors());
    assert_eq!(sa.len(), sb.len());
    for ((ka, ta), (kb, tb)) in sa.iter().zip(&sb) {
        assert_eq!(ka, kb);
        assert_eq!(ta.to_vec_f64(), tb.to_vec_f64(), "state {ka} differs");
    }
    assert_eq!(ref_params[0].tensor().to_vec_f64()[2], 0.0);
    Ok(())
}

#[test]
fn adamw_resume_from_checkpoint_is_bit_identical() -> Result<()> {
    let make = || -> Box<dyn Optimizer> {
        let mut o = AdamW::new(0.05);
        o.weight_decay = 0.05;
        Box::new(o)
    };
    resume_is_bit_identical(make, DType::F32)?;
    resume_is_bit_identical(make, DType::F64)
}

#[test]
fn sgd_resume_from_checkpoint_is_bit_identical() -> Result<()> {
    let make = || -> Box<dyn Optimizer> {
        let mut o = Sgd::new(0.05);
        o.momentum = 0.9;
        o.weight_decay = 0.01;
        Box::new(o)
    };
    resume_is_bit_identical(make, DType::F64)
}

#[test]
fn load_state_rejects_wrong_optimizer_and_missing_param() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("shears-optim-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ckpt.safetensors");
    let params = vec![Param::new("w", Tensor::ones([2], DType::F64)?)?];
    save_state(&path, &params, &AdamW::new(0.1), 3)?;

    let mut same = params.clone();
    let err = load_state(&path, &mut same, &mut Sgd::new(0.1)).unwrap_err();
    assert!(err.to_string().contains("adamw"), "{err}");
    let mut other = vec![Param::new("v", Tensor::ones([2], DType::F64)?)?];
    let err = load_state(&path, &mut other, &mut AdamW::new(0.1)).unwrap_err();
    assert!(err.to_string().contains('v'), "{err}");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[test]
fn missing_gradient_skips_the_parameter() -> Result<()> {
    let mut params = vec![
        Param::new("a", Tensor::ones([2], DType::F64)?)?,
        Param::new("b", Tensor::ones([2], DType::F64)?)?,
    ];
    let g = linear_grads(&params[0], &[1.0, 1.0])?;
    let mut opt = AdamW::new(0.1);
    opt.step(&mut params, &g)?;
    assert_eq!(values(&params[1]), vec![1.0, 1.0]);
    assert!(values(&params[0])[0] < 1.0);
    assert!(opt.state_tensors().iter().all(|(k, _)| k.starts_with("a.")));
    Ok(())
}

#[test]
fn clip_grad_norm_values() -> Result<()> {
    // Gradients [3, 4] and [12]: global norm √(9 + 16 + 144) = 13.
    let params = vec![
        Param::new("a", Tensor::zeros([2], DType::F64)?)?,
        Param::new("b", Tensor::zeros([1], DType::F64)?)?,
    ];
    let grads = || -> Result<Grads> {
        let ca = Var::constant(Tensor::from_vec(vec![3.0f64, 4.0], [2])?);
        let cb = Var::constant(Tensor::from_vec(vec![12.0f64], [1])?);
        params[0]
            .var()
            .mul(&ca)?
            .sum_all()?
            .add(&params[1].var().mul(&cb)?.sum_all()?)?
            .backward()
    };
    // max_norm 6.5: factor 6.5 / (13 + 1e-6) ≈ 0.5.
    let mut g = grads()?;
    let norm = clip_grad_norm(&mut g, &params, 6.5)?;
    assert!((norm - 13.0).abs() < 1e-12);
    let f = 6.5 / (13.0 + 1e-6);
    assert_close(
        &g.get(params[0].var()).unwrap().to_vec::<f64>()?,
        &[3.0 * f, 4.0 * f],
        1e-12,
    );
    assert_close(
        &g.get(params[1].var()).unwrap().to_vec::<f64>()?,
        &[12.0 * f],
        1e-12,
    );

    // Below the limit nothing changes.
    let mut g = grads()?;
    assert!((clip_grad_norm(&mut g, &params, 100.0)? - 13.0).abs() < 1e-12);
    assert_eq!(
        g.get(params[0].var()).unwrap().to_vec::<f64>()?,
        vec![3.0, 4.0]
    );

    // Masked entries do not count: masking the 4 leaves √(9 + 144).
    let masked = vec![
        params[0]
            .clone()
            .with_mask(Tensor::from_vec(vec![1u8, 0], [2])?)?,
        params[1].clone(),
    ];
    let mut g = {
        let ca = Var::constant(Tensor::from_vec(vec![3.0f64, 4.0], [2])?);
        let cb = Var::constant(Tensor::from_vec(vec![12.0f64], [1])?);
        masked[0]
            .var()
            .mul(&ca)?
            .sum_all()?
            .add(&masked[1].var().mul(&cb)?.sum_all()?)?
            .backward()?
    };
    assert!((clip_grad_norm(&mut g, &masked, 100.0)? - 153f64.sqrt()).abs() < 1e-12);
    assert_eq!(
        g.get(masked[0].var()).unwrap().to_vec::<f64>()?,
        vec![3.0, 0.0]
    );

    // A NaN gradient is an error naming the parameter.
    let mut g = grads()?;
    g.insert(params[1].var(), Tensor::from_vec(vec![f64::NAN], [1])?);
    let err = clip_grad_norm(&mut g, &params, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("NaN") && err.contains("'b'"), "{err}");
    let mut g = grads()?;
    g.insert(
        params[0].var(),
        Tensor::from_vec(vec![f64::INFINITY, 0.0], [2])?,
    );
    let err = clip_grad_norm(&mut g, &params, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("infinite") && err.contains("'a'"), "{err}");
    Ok(())
}

#[test]
fn schedule_values_at_key_steps() {
    let base = 0.2;
    assert_eq!(LrSchedule::Constant.lr_at(0, base), base);
    assert_eq!(LrSchedule::Constant.lr_at(1000, base), base);

    // Warm-up 10, total 110: 0 → 0, 5 → half, 10 → base, 60 (mid-decay) → half, 110 → 0.
    let lin = LrSchedule::WarmupLinear {
        warmup: 10,
        total: 110,
    };
    let want = [
        (0, 0.0),
        (5, 0.1),
        (10, 0.2),
        (60, 0.1),
        (110, 0.0),
        (500, 0.0),
    ];
    for (step, lr) in want {
        assert!(
            (lin.lr_at(step, base) - lr).abs() < 1e-15,
            "linear step {step}"
        );
    }

    // Cosine to 0.1 × base: mid-decay is 0.1 + 0.9·½ = 0.55 of base.
    let cos = LrSchedule::WarmupCosine {
        warmup: 10,
        total: 110,
        min_ratio: 0.1,
    };
    let want = [
        (0, 0.0),
        (5, 0.1),
        (10, 0.2),
        (60, 0.11),
        (110, 0.02),
        (500, 0.02),
    ];
    for (step, lr) in want {
        assert!(
            (cos.lr_at(step, base) - lr).abs() < 1e-15,
            "cosine step {step}"
        );
    }

    // No warm-up and no decay phase: no division by zero.
    let flat = LrSchedule::WarmupLinear {
        warmup: 0,
        total: 0,
    };
    assert_eq!(flat.lr_at(0, base), 0.0);
}

#[test]
fn mismatched_state_is_an_error() -> Result<()> {
    let mut params = vec![Param::new("w", Tensor::ones([4, 1], DType::F64)?)?];
    let g = linear_grads(&params[0], &[1.0; 4])?;
    let mut opt = Sgd::new(0.1);
    opt.momentum = 0.9;
    // A [1] buffer would broadcast against the [4, 1] gradient if it were not checked.
    let state = std::collections::BTreeMap::from([(
        "w.momentum_buffer".to_string(),
        Tensor::ones([1], DType::F64)?,
    )]);
    opt.load_state_tensors(&state)?;
    let err = opt.step(&mut params, &g).unwrap_err().to_string();
    assert!(err.contains("'w'"), "{err}");
    // Duplicate names would share state.
    let mut dup = vec![params[0].clone(), params[0].clone()];
    assert!(AdamW::new(0.1).step(&mut dup, &g).is_err());
    Ok(())
}

/// A pruned weight trained densely through `matmul_nt_masked` (no mask on the `Param`): the mask
/// zeroes the pruned entries of dW, so AdamW's moments stay 0 there and its decoupled decay
/// scales 0; SGD's coupled decay adds `wd · 0`. Pruned entries stay exactly 0.0 while the kept
/// ones train.
#[test]
fn matmul_nt_masked_keeps_pruned_weights_at_zero() -> Result<()> {
    let keep: Vec<u8> = (0..4 * 6).map(|i| u8::from(i % 3 != 1)).collect();
    let mask = Tensor::from_vec(keep.clone(), [4, 6])?;
    let x = Var::constant(Tensor::randn([5, 6], 0.0, 1.0, DType::F64, 1)?);
    let y = Var::constant(Tensor::randn([5, 4], 0.0, 1.0, DType::F64, 2)?);
    for (dtype, adam) in [(DType::F64, true), (DType::F32, false)] {
        // Pruned with a select: multiplying by the mask would leave −0.0 where w < 0.
        let w0 = Tensor::randn([4, 6], 0.0, 1.0, dtype, 3)?;
        let w0 = mask.where_cond(&w0, &w0.zeros_like()?)?;
        let mut params = vec![Param::new("w", w0.clone())?];
        let mut adamw = AdamW::new(0.05);
        adamw.weight_decay = 0.1;
        let mut sgd = Sgd::new(0.05);
        (sgd.momentum, sgd.weight_decay) = (0.9, 0.1);
        let (x, y) = (x.to_dtype(dtype)?, y.to_dtype(dtype)?);
        for _ in 0..5 {
            let pred = x.matmul_nt_masked(params[0].var(), &mask)?;
            let grads = nn::mse(&pred, &y)?.backward()?;
            if adam {
                adamw.step(&mut params, &grads)?;
            } else {
                sgd.step(&mut params, &grads)?;
            }
            let (w, init) = (params[0].tensor().to_vec_f64(), w0.to_vec_f64());
            for i in 0..w.len() {
                if keep[i] == 0 {
                    assert_eq!(w[i].to_bits(), 0, "{dtype} pruned entry {i} is {}", w[i]);
                } else {
                    assert_ne!(w[i], init[i], "{dtype} kept entry {i} did not train");
                }
            }
        }
    }
    Ok(())
}
