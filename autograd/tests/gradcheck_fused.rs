//! Gradient checks of the fused ops on `Var` (`matmul_nt`, `matmul_nt_masked`, `matmul_nt_many`,
//! `rms_norm`, `silu_mul`, `rope`, `causal_attention`, `to_dtype`): each rule against f64 central
//! finite differences (`common::check_grad`), and each fused op's value and gradients against
//! the composition of primitives it replaces (`nn::rms_norm`, `nn::rope`, `silu · up`, `x ·
//! Wᵀ`, attention head by head with a `-inf` mask), plus hand-derived cases.

mod common;

use common::{analytic, check_grad, numeric_grad, pc, RTOL};
use proptest::prelude::*;
use shears_autograd::{nn, no_grad, Var};
use shears_tensor::test_util::{assert_close, first_mismatch};
use shears_tensor::{DType, Result, RopeLayout, RopeTables, Tensor};
use std::sync::Arc;

fn normal(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F64, seed).unwrap()
}

/// The fused op and its composition give the same value and the same gradients of `Σ f ⊙ r`
/// for every input (f64; only rounding differs).
fn same_as_composite(
    fused: impl Fn(&[Var]) -> Result<Var>,
    composite: impl Fn(&[Var]) -> Result<Var>,
    inputs: &[Tensor],
) -> std::result::Result<(), String> {
    let e = |err: shears_tensor::Error| err.to_string();
    let (a, b) = (
        analytic(&fused, inputs).map_err(e)?,
        analytic(&composite, inputs).map_err(e)?,
    );
    let cmp = |what: String, x: Option<&Tensor>, y: Option<&Tensor>| match (x, y) {
        (Some(x), Some(y)) => {
            let (x, y) = (x.to_vec_f64(), y.to_vec_f64());
            match first_mismatch(&x, &y, 1e-12, 1e-10) {
                Some((i, p, q)) => Err(format!("{what}, element {i}: fused {p}, composite {q}")),
                None => Ok(()),
            }
        }
        (None, None) => Ok(()),
        _ => Err(format!("{what}: one side has no gradient")),
    };
    cmp("value".into(), Some(a.out.tensor()), Some(b.out.tensor()))?;
    for i in 0..inputs.len() {
        let (ga, gb) = (a.grads.get(&a.params[i]), b.grads.get(&b.params[i]));
        cmp(format!("gradient of input {i}"), ga, gb)?;
    }
    Ok(())
}

// ---- compositions ----

/// Rotary tables for positions `offset..offset + seq`, `[seq, head_dim/2]` each, with the angles
/// `RopeTables` uses (`θᵢ = θ^(−2i/d)`, the base rounded to f32).
fn angles(head_dim: usize, offset: usize, seq: usize) -> (Tensor, Tensor) {
    let h = head_dim / 2;
    let (mut c, mut s) = (vec![], vec![]);
    for p in offset..offset + seq {
        for i in 0..h {
            let theta = (10000f32 as f64).powf(-2.0 * i as f64 / head_dim as f64);
            let (si, co) = (p as f64 * theta).sin_cos();
            c.push(co);
            s.push(si);
        }
    }
    let t = |v| Tensor::from_vec(v, [seq, h]).unwrap();
    (t(c), t(s))
}

/// `nn::rope` (which rotates `(.., seq, head_dim)`) on `x: (batch, seq, heads, head_dim)`.
fn rope_composite(x: &Var, layout: RopeLayout, offset: usize) -> Result<Var> {
    let (cos, sin) = angles(x.dims()[3], offset, x.dims()[1]);
    let layout = match layout {
        RopeLayout::HalfSplit => nn::RopeLayout::HalfSplit,
        RopeLayout::Interleaved => nn::RopeLayout::Interleaved,
    };
    let xt = x.permute(&[0, 2, 1, 3])?;
    nn::rope(&xt, &cos, &sin, layout)?.permute(&[0, 2, 1, 3])
}

/// Causal GQA attention from primitives, head by head: `softmax(q_h·K_gᵀ·scale` with `-inf`
/// above the diagonal`)·V_g`, `g = h / (heads / kv_heads)`.
fn attention_composite(q: &Var, k: &Var, v: &Var, scale: f64) -> Result<Var> {
    let (b, t, h, hd) = (q.dims()[0], q.dims()[1], q.dims()[2], q.dims()[3]);
    let groups = h / k.dims()[2];
    let above: Vec<u8> = (0..t * t).map(|i| u8::from(i % t > i / t)).collect();
    let mask = Tensor::from_vec(above, [t, t])?;
    let mut seqs = vec![];
    for bi in 0..b {
        let head = |x: &Var, i: usize| x.narrow(0, bi, 1)?.narrow(2, i, 1)?.reshape([t, hd]);
        let mut heads = vec![];
        for hh in 0..h {
            let scores = head(q, hh)?.matmul(&head(k, hh / groups)?.t()?)?;
            let p = scores
                .mul_scalar(scale)?
                .masked_fill(&mask, f64::NEG_INFINITY)?;
            heads.push(p.softmax(1)?.matmul(&head(v, hh / groups)?)?);
        }
        seqs.push(Var::stack(&heads.iter().collect::<Vec<_>>(), 1)?);
    }
    Var::stack(&seqs.iter().collect::<Vec<_>>(), 0)
}

fn tables(head_dim: usize, layout: RopeLayout) -> Arc<RopeTables> {
    Arc::new(RopeTables::new(head_dim, 64, 10000.0, layout).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn matmul_nt(batch in 0usize..3, m in 0usize..4, k in 0usize..4, n in 0usize..4, seed: u64) {
        let xs: Vec<usize> = if batch == 0 { vec![m, k] } else { vec![batch, m, k] };
        let inputs = [normal(&xs, seed), normal(&[n, k], seed ^ 1)];
        pc(check_grad(|v| v[0].matmul_nt(&v[1]), &inputs))?;
        if m * n * k > 0 {
            pc(same_as_composite(|v| v[0].matmul_nt(&v[1]), |v| v[0].matmul(&v[1].t()?), &inputs))?;
        }
    }

    #[test]
    fn matmul_nt_many(m in 1usize..4, k in 1usize..4, n in 1usize..4, seed: u64) {
        let inputs = [normal(&[m, k], seed), normal(&[n, k], seed ^ 1), normal(&[2, k], seed ^ 2)];
        let many = |v: &[Var]| {
            let ys = v[0].matmul_nt_many(&[&v[1], &v[2]])?;
            Var::cat(&[&ys[0], &ys[1]], -1)
        };
        pc(check_grad(many, &inputs))?;
        let each = |v: &[Var]| Var::cat(&[&v[0].matmul_nt(&v[1])?, &v[0].matmul_nt(&v[2])?], -1);
        pc(same_as_composite(many, each, &inputs))?;
    }

    /// Pruned entries of dW are exactly 0; kept ones and dx match finite differences.
    #[test]
    fn matmul_nt_masked(m in 1usize..4, k in 1usize..5, n in 1usize..5, bits: u64, seed: u64) {
        let mask: Vec<u8> = (0..n * k).map(|i| (bits >> (i % 64) & 1) as u8).collect();
        let mask = Tensor::from_vec(mask, [n, k]).unwrap();
        // The forward uses W as it is: prune it first, as a pruner would.
        let w = normal(&[n, k], seed ^ 1).mul(&mask.to_dtype(DType::F64).unwrap()).unwrap();
        let inputs = [normal(&[m, k], seed), w];
        let f = |v: &[Var]| v[0].matmul_nt_masked(&v[1], &mask);
        let a = analytic(&f, &inputs).unwrap();
        let keep = mask.to_vec::<u8>().unwrap();
        for i in 0..2 {
            let got = a.grads.get(&a.params[i]).unwrap().to_vec_f64();
            let fd = numeric_grad(&f, &inputs, &a.r, i).unwrap();
            for (j, (g, d)) in got.iter().zip(&fd).enumerate() {
                if i == 1 && keep[j] == 0 {
                    prop_assert!(*g == 0.0, "pruned dW[{j}] = {g}");
                } else {
                    prop_assert!((g - d).abs() <= a.atol + RTOL * d.abs(), "input {i} [{j}]: {g} vs {d}");
                }
            }
        }
    }

    #[test]
    fn rms_norm(lead in 0usize..3, rows in 1usize..4, n in 1usize..6, seed: u64) {
        let xs: Vec<usize> = if lead == 0 { vec![rows, n] } else { vec![lead, rows, n] };
        let inputs = [normal(&xs, seed), normal(&[n], seed ^ 1)];
        pc(check_grad(|v| v[0].rms_norm(&v[1], 1e-5), &inputs))?;
        pc(same_as_composite(|v| v[0].rms_norm(&v[1], 1e-5), |v| nn::rms_norm(&v[0], &v[1], 1e-5), &inputs))?;
    }

    #[test]
    fn silu_mul(rows in 1usize..4, cols in 1usize..6, seed: u64) {
        let gate = normal(&[rows, cols], seed).mul_scalar(3.0).unwrap();
        let inputs = [gate, normal(&[rows, cols], seed ^ 1)];
        pc(check_grad(|v| v[0].silu_mul(&v[1]), &inputs))?;
        pc(same_as_composite(|v| v[0].silu_mul(&v[1]), |v| nn::silu(&v[0])?.mul(&v[1]), &inputs))?;
    }

    #[test]
    fn rope(interleaved: bool, b in 1usize..3, t in 1usize..4, heads in 1usize..3, half in 1usize..4, offset in 0usize..6, seed: u64) {
        let layout = if interleaved { RopeLayout::Interleaved } else { RopeLayout::HalfSplit };
        let tb = tables(2 * half, layout);
        let inputs = [normal(&[b, t, heads, 2 * half], seed)];
        pc(check_grad(|v| v[0].rope(&tb, offset), &inputs))?;
        pc(same_as_composite(|v| v[0].rope(&tb, offset), |v| rope_composite(&v[0], layout, offset), &inputs))?;
    }

    #[test]
    fn causal_attention(
        b in 1usize..3, t in prop::sample::select(vec![1usize, 2, 3, 5]), kvh in 1usize..3,
        groups in 1usize..4, hd in 1usize..4, seed: u64,
    ) {
        let h = kvh * groups;
        let inputs = [normal(&[b, t, h, hd], seed), normal(&[b, t, kvh, hd], seed ^ 1), normal(&[b, t, kvh, hd], seed ^ 2)];
        let scale = 1.0 / (hd as f64).sqrt();
        let fused = |v: &[Var]| Var::causal_attention(&v[0], &v[1], &v[2], scale);
        pc(check_grad(fused, &inputs))?;
        pc(same_as_composite(fused, |v| attention_composite(&v[0], &v[1], &v[2], scale), &inputs))?;
    }
}

/// The cases the layers use: 4 query heads over 2 KV heads, one position and five.
#[test]
fn causal_attention_gqa_4_over_2() {
    for t in [1, 5] {
        let inputs = [
            normal(&[2, t, 4, 3], 1),
            normal(&[2, t, 2, 3], 2),
            normal(&[2, t, 2, 3], 3),
        ];
        let fused = |v: &[Var]| Var::causal_attention(&v[0], &v[1], &v[2], 0.6);
        check_grad(fused, &inputs).unwrap();
        same_as_composite(
            fused,
            |v| attention_composite(&v[0], &v[1], &v[2], 0.6),
            &inputs,
        )
        .unwrap();
    }
}

/// f64 → f32 → f64: the value and the gradient pass through f32 rounding and come back in f64
/// (finite differences of a rounding step are meaningless, so this is a smoke case).
#[test]
fn to_dtype_round_trip() {
    let x = Var::param(normal(&[3, 4], 5));
    let r = normal(&[3, 4], 6);
    let y = x.to_dtype(DType::F32).unwrap();
    assert_eq!(y.dtype(), DType::F32);
    let back = y.to_dtype(DType::F64).unwrap();
    let g = back
        .mul(&Var::constant(r.clone()))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gx = g.get(&x).unwrap();
    assert_eq!(gx.dtype(), DType::F64);
    // d/dx Σ r·round(x) = r, rounded to f32 on the way back.
    let want = r
        .to_dtype(DType::F32)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    assert_eq!(gx.to_vec_f64(), want.to_vec_f64());
    let rounded = x
        .tensor()
        .to_dtype(DType::F32)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    assert_eq!(back.tensor().to_vec_f64(), rounded.to_vec_f64());
    // The same dtype is the same value, with no new node.
    assert_eq!(x.to_dtype(DType::F64).unwrap().id(), x.id());
}

/// An f32 input against a bf16 weight: dx in f32, dW in bf16, both the f32 products rounded.
#[test]
fn matmul_nt_bf16_weight() {
    let x = Var::constant(normal(&[3, 5], 7).to_dtype(DType::F32).unwrap());
    let w16 = normal(&[4, 5], 8).to_dtype(DType::BF16).unwrap();
    let (xp, w) = (Var::param(x.tensor().clone()), Var::param(w16.clone()));
    let g = normal(&[3, 4], 9).to_dtype(DType::F32).unwrap();
    let grads = xp.matmul_nt(&w).unwrap().backward_with(g.clone()).unwrap();
    let (dx, dw) = (grads.get(&xp).unwrap(), grads.get(&w).unwrap());
    assert_eq!((dx.dtype(), dw.dtype()), (DType::F32, DType::BF16));
    let w32 = w16.to_dtype(DType::F32).unwrap();
    assert_close(
        &dx.to_vec_f64(),
        &g.matmul(&w32).unwrap().to_vec_f64(),
        1e-5,
        1e-5,
    );
    let dw_want = g.t().unwrap().matmul(x.tensor()).unwrap().to_vec_f64();
    assert_close(&dw.to_vec_f64(), &dw_want, 1e-2, 8e-3);
}

// ---- hand-derived ----

/// RMSNorm of x = [3, 4] with gain g = [1, 2], eps = 0, upstream dy = [1, 0]. Then
/// mean(x²) = 12.5, r = 1/√12.5 = √2/5, y = x·r·g = [3√2/5, 8√2/5].
/// dx = r·(g⊙dy) − x·r³/n·Σ(g⊙dy⊙x), with r³ = 2√2/125, Σ(g⊙dy⊙x) = 3, n = 2, so the second
/// term is x·3√2/125: dx = [√2/5 − 9√2/125, −12√2/125] = [16√2/125, −12√2/125].
/// dg = dy⊙x·r = [3√2/5, 0].
#[test]
fn hand_rms_norm() {
    let s2 = 2f64.sqrt();
    let x = Var::param(Tensor::from_vec(vec![3.0f64, 4.0], [1, 2]).unwrap());
    let g = Var::param(Tensor::from_vec(vec![1.0f64, 2.0], [2]).unwrap());
    let y = x.rms_norm(&g, 0.0).unwrap();
    assert_close(
        &y.tensor().to_vec_f64(),
        &[3.0 * s2 / 5.0, 8.0 * s2 / 5.0],
        1e-15,
        1e-15,
    );
    let dy = Tensor::from_vec(vec![1.0f64, 0.0], [1, 2]).unwrap();
    let grads = y.backward_with(dy).unwrap();
    let dx = [16.0 * s2 / 125.0, -12.0 * s2 / 125.0];
    assert_close(&grads.get(&x).unwrap().to_vec_f64(), &dx, 1e-15, 1e-14);
    assert_close(
        &grads.get(&g).unwrap().to_vec_f64(),
        &[3.0 * s2 / 5.0, 0.0],
        1e-15,
        1e-14,
    );
}

/// With one position, each head's softmax is over one key, so P = 1: o_h = v_g exactly.
/// dS = P ⊙ (dP − rowsum(P ⊙ dP)) = 1·(dP − dP) = 0, hence dq = 0 and dk = 0, and
/// dv_g = Σ_{h in group g} do_h (4 heads over 2 KV heads: heads 0, 1 → g 0; 2, 3 → g 1).
#[test]
fn hand_attention_one_position() {
    let (q, k, v) = (
        Var::param(normal(&[1, 1, 4, 2], 1)),
        Var::param(normal(&[1, 1, 2, 2], 2)),
        Var::param(normal(&[1, 1, 2, 2], 3)),
    );
    let o = Var::causal_attention(&q, &k, &v, 0.7).unwrap();
    let vv = v.tensor().to_vec_f64();
    let want: Vec<f64> = [0, 0, 1, 1]
        .iter()
        .flat_map(|&g| vv[2 * g..2 * g + 2].to_vec())
        .collect();
    assert_eq!(o.tensor().to_vec_f64(), want);
    let d: Vec<f64> = (1..=8).map(f64::from).collect();
    let grads = o
        .backward_with(Tensor::from_vec(d, [1, 1, 4, 2]).unwrap())
        .unwrap();
    assert!(grads
        .get(&q)
        .unwrap()
        .to_vec_f64()
        .iter()
        .all(|&e| e == 0.0));
    assert!(grads
        .get(&k)
        .unwrap()
        .to_vec_f64()
        .iter()
        .all(|&e| e == 0.0));
    // do = [[1, 2], [3, 4], [5, 6], [7, 8]]: dv = [[1 + 3, 2 + 4], [5 + 7, 6 + 8]].
    assert_eq!(
        grads.get(&v).unwrap().to_vec_f64(),
        vec![4.0, 6.0, 12.0, 14.0]
    );
}

/// `matmul_nt_many` without gradients runs the fused region and equals the recorded products.
#[test]
fn matmul_nt_many_without_gradients() {
    let x = Var::constant(normal(&[3, 4], 1));
    let ws = [
        Var::param(normal(&[2, 4], 2)),
        Var::param(normal(&[5, 4], 3)),
    ];
    let recorded = x.matmul_nt_many(&[&ws[0], &ws[1]]).unwrap();
    let plain = no_grad(|| x.matmul_nt_many(&[&ws[0], &ws[1]])).unwrap();
    for (a, b) in recorded.iter().zip(&plain) {
        assert!(a.requires_grad() && !b.requires_grad());
        assert_eq!(a.tensor().to_vec_f64(), b.tensor().to_vec_f64());
    }
}

/// The rules in f32 (the SIMD forward kernels, f32 attention backward) agree with f64: an
/// attention block's gradients for every input and parameter.
#[test]
fn f32_gradients_match_f64() {
    let grads_in = |dt: DType| {
        // The same (f32) values in both runs: only the arithmetic differs.
        let t = |shape: &[usize], seed: u64| {
            let v = normal(shape, seed).mul_scalar(0.5).unwrap();
            v.to_dtype(DType::F32).unwrap().to_dtype(dt).unwrap()
        };
        let x = Var::param(t(&[2, 5, 16], 1));
        let g = Var::param(t(&[16], 2).affine(0.2, 1.0).unwrap());
        let (wq, wkv) = (Var::param(t(&[16, 16], 3)), Var::param(t(&[16, 16], 4)));
        let (wg, wu) = (Var::param(t(&[8, 16], 5)), Var::param(t(&[8, 16], 6)));
        let rope = tables(4, RopeLayout::HalfSplit);
        let f = || -> Result<Var> {
            let h = x.rms_norm(&g, 1e-5)?;
            let q = h.matmul_nt(&wq)?.reshape([2, 5, 4, 4])?.rope(&rope, 3)?;
            let kv = h.matmul_nt(&wkv)?.reshape([2, 5, 4, 4])?;
            let (k, v) = (kv.narrow(2, 0, 2)?.rope(&rope, 3)?, kv.narrow(2, 2, 2)?);
            let a = Var::causal_attention(&q, &k, &v, 0.5)?.reshape([2, 5, 16])?;
            let y = a.matmul_nt(&wg)?.silu_mul(&a.matmul_nt(&wu)?)?;
            y.mul(&Var::constant(t(&[2, 5, 8], 7)))?.sum_all()
        };
        let grads = f().unwrap().backward().unwrap();
        [&x, &g, &wq, &wkv, &wg, &wu].map(|p| grads.get(p).unwrap().to_vec_f64())
    };
    let (lo, hi) = (grads_in(DType::F32), grads_in(DType::F64));
    for (a, b) in lo.iter().zip(&hi) {
        assert_close(a, b, 1e-5, 1e-4);
    }
}
