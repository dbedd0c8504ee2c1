//! Gradient checks: every backward rule against f64 central finite differences, over random
//! shapes (including size-1 and broadcast dims) and values, plus hand-derived cases and the
//! graph's bookkeeping (accumulation, no_grad, constants, detach). The fused ops (`Var::matmul_nt`,
//! `rms_norm`, `rope`, `causal_attention`, ...) are checked in `gradcheck_fused.rs`; the checker
//! and its tolerances are in `common/mod.rs`.

mod common;

use common::{check_grad, pc};
use proptest::prelude::*;
use shears_autograd::{nn, no_grad, Var};
use shears_tensor::{DType, Result, Tensor};

// ---- inputs ----

fn normal(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F64, seed).unwrap()
}
/// Values in [0.5, 2): inside the domain of log, sqrt, recip, pow.
fn positive(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand(shape, 0.5, 2.0, DType::F64, seed).unwrap()
}
/// Normal values pushed at least 0.2 away from 0 (relu, abs are not differentiable at 0).
fn away_from_zero(shape: &[usize], seed: u64) -> Tensor {
    let v: Vec<f64> = normal(shape, seed)
        .to_vec_f64()
        .into_iter()
        .map(|x| x.signum() * (x.abs() + 0.2))
        .collect();
    Tensor::from_vec(v, shape).unwrap()
}
/// Distinct values at least 0.2 apart (max/min have a kink where two entries tie).
fn distinct(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let noise = Tensor::rand([n], 0.0, 0.05, DType::F64, seed)
        .unwrap()
        .to_vec_f64();
    let step = if n > 1 {
        (seed as usize % (n - 1)) + 1
    } else {
        1
    };
    // k ↦ k·step mod n is a permutation when gcd(step, n) = 1; otherwise fall back to identity.
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let step = if gcd(step, n.max(1)) == 1 { step } else { 1 };
    let v: Vec<f64> = (0..n)
        .map(|k| ((k * step) % n.max(1)) as f64 * 0.25 - 1.0 + noise[k])
        .collect();
    Tensor::from_vec(v, shape).unwrap()
}

fn dims(max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..=3, 0..=max_rank)
}
fn dims_min(min_rank: usize, max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..=3, min_rank..=max_rank)
}
/// Two shapes that broadcast together: the second drops leading dims and sets some to 1; the
/// pair is swapped half the time.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (dims(3), any::<u64>()).prop_map(|(s, bits)| {
        let drop = (bits % (s.len() as u64 + 1)) as usize;
        let mut other = s[drop..].to_vec();
        for (i, d) in other.iter_mut().enumerate() {
            if bits >> (8 + i) & 1 == 1 {
                *d = 1;
            }
        }
        if bits >> 7 & 1 == 1 {
            (other, s)
        } else {
            (s, other)
        }
    })
}

/// Cases per property; the shapes are tiny, so 256 cases of every test take well under a second.
const CASES: u32 = 256;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn unary_ops(op in 0usize..14, shape in dims(3), seed in any::<u64>()) {
        let x = match op {
            3..=5 => positive(&shape, seed),   // log, sqrt, recip
            1 | 9 => away_from_zero(&shape, seed), // abs, relu
            _ => normal(&shape, seed),
        };
        pc(check_grad(|v| {
            let x = &v[0];
            match op {
                0 => x.neg(), 1 => x.abs(), 2 => x.exp(), 3 => x.log(), 4 => x.sqrt(),
                5 => x.recip(), 6 => x.sin(), 7 => x.cos(), 8 => x.tanh(), 9 => x.relu(),
                10 => x.gelu(), 11 => x.sigmoid(), 12 => x.silu(), _ => x.sqr(),
            }
        }, &[x]))?;
    }

    #[test]
    fn binary_ops(op in 0usize..7, (sa, sb) in broadcast_pair(), seed in any::<u64>()) {
        let (a, b) = match op {
            3 => (normal(&sa, seed), positive(&sb, seed ^ 1)),   // div: b away from 0
            4 => (positive(&sa, seed), normal(&sb, seed ^ 1)),   // pow: a > 0
            _ => (normal(&sa, seed), normal(&sb, seed ^ 1)),
        };
        pc(check_grad(|v| {
            let (a, b) = (&v[0], &v[1]);
            match op {
                0 => a.add(b), 1 => a.sub(b), 2 => a.mul(b), 3 => a.div(b), 4 => a.pow(b),
                5 => a.maximum(b), _ => a.minimum(b),
            }
        }, &[a, b]))?;
    }

    #[test]
    fn scalar_ops(op in 0usize..9, shape in dims(3), c in -2.0f64..2.0, seed in any::<u64>()) {
        let x = if op == 5 { positive(&shape, seed) } else { normal(&shape, seed) };
        pc(check_grad(|v| {
            let x = &v[0];
            match op {
                0 => x.affine(c, 0.7), 1 => x.add_scalar(c), 2 => x.sub_scalar(c),
                3 => x.mul_scalar(c), 4 => x.div_scalar(c.abs() + 0.5), 5 => x.pow_scalar(c),
                6 => x.maximum_scalar(c), 7 => x.minimum_scalar(c), _ => x.clamp(-0.5, 0.5),
            }
        }, &[x]))?;
    }

    #[test]
    fn reductions(op in 0usize..4, shape in dims_min(1, 3), d in 0usize..3, keepdim in any::<bool>(), seed in any::<u64>()) {
        let d = d % shape.len();
        let x = if op >= 2 { distinct(&shape, seed) } else { normal(&shape, seed) };
        pc(check_grad(|v| match op {
            0 => v[0].sum(d, keepdim), 1 => v[0].mean(d, keepdim),
            2 => v[0].max(d, keepdim), _ => v[0].min(d, keepdim),
        }, &[x]))?;
    }

    #[test]
    fn reductions_all(mean in any::<bool>(), shape in dims(3), seed in any::<u64>()) {
        pc(check_grad(|v| if mean { v[0].mean_all() } else { v[0].sum_all() }, &[normal(&shape, seed)]))?;
    }

    #[test]
    fn softmaxes(log in any::<bool>(), shape in dims_min(1, 3), d in 0usize..3, seed in any::<u64>()) {
        let d = d % shape.len();
        pc(check_grad(|v| if log { v[0].log_softmax(d) } else { v[0].softmax(d) }, &[normal(&shape, seed)]))?;
    }

    #[test]
    fn matmul_batched(
        (ba, bb) in broadcast_pair().prop_filter("batch rank <= 2", |(a, b)| a.len() <= 2 && b.len() <= 2),
        m in 1usize..4, k in 1usize..4, n in 1usize..4,
        ta in any::<bool>(), tb in any::<bool>(), seed in any::<u64>(),
    ) {
        // A transposed operand is a parameter of the swapped shape used through `.t()`.
        let shape = |batch: &[usize], r: usize, c: usize, t: bool| {
            let mut s = batch.to_vec();
            s.extend(if t { [c, r] } else { [r, c] });
            s
        };
        let a = normal(&shape(&ba, m, k, ta), seed);
        let b = normal(&shape(&bb, k, n, tb), seed ^ 1);
        pc(check_grad(|v| {
            let a = if ta { v[0].t()? } else { v[0].clone() };
            let b = if tb { v[1].t()? } else { v[1].clone() };
            a.matmul(&b)
        }, &[a, b]))?;
    }

    #[test]
    fn matmul_vectors(case in 0usize..3, m in 1usize..4, k in 1usize..4, seed in any::<u64>()) {
        let (sa, sb) = match case {
            0 => (vec![k], vec![k, m]),
            1 => (vec![m, k], vec![k]),
            _ => (vec![k], vec![k]),
        };
        pc(check_grad(|v| v[0].matmul(&v[1]), &[normal(&sa, seed), normal(&sb, seed ^ 1)]))?;
    }

    #[test]
    fn views(op in 0usize..6, shape in dims_min(1, 3), a in 0usize..3, b in 0usize..3, seed in any::<u64>()) {
        let r = shape.len();
        let (a, b) = (a % r, b % r);
        let x = normal(&shape, seed);
        pc(check_grad(|v| {
            let x = &v[0];
            match op {
                // reshape to a non-trivial shape, read through a transposed view
                0 => x.reshape([x.elem_count(), 1])?.t()?.reshape(shape.iter().rev().copied().collect::<Vec<_>>()),
                1 => x.transpose(a, b),
                2 => {
                    let mut perm: Vec<usize> = (0..r).collect();
                    perm.rotate_left(a);
                    perm.swap(0, b);
                    x.permute(&perm)
                }
                3 => {
                    let n = shape[a];
                    let start = b.min(n - 1);
                    x.narrow(a, start, n - start)
                }
                4 => {
                    let mut out = vec![2];
                    out.extend(shape.iter().map(|&d| if d == 1 { 3 } else { d }));
                    let mut src = shape.clone();
                    src[a] = 1;
                    x.narrow(a, 0, 1)?.reshape(src)?.broadcast_as(out)
                }
                _ => x.unsqueeze(a)?.mul_scalar(2.0)?.squeeze(a),
            }
        }, &[x]))?;
    }

    #[test]
    fn cat_stack_split(op in 0usize..3, shape in dims_min(1, 3), d in 0usize..3, extra in 1usize..3, seed in any::<u64>()) {
        let d = d % shape.len();
        let mut other = shape.clone();
        other[d] = extra;
        let x = normal(&shape, seed);
        let y = normal(if op == 1 { &shape } else { &other }, seed ^ 1);
        pc(check_grad(|v| match op {
            0 => Var::cat(&[&v[0], &v[1], &v[0]], d),
            1 => Var::stack(&[&v[0], &v[1]], d),
            _ => {
                let parts = Var::cat(&[&v[0], &v[1]], d)?.split(2, d)?;
                // Weight the pieces differently so a misrouted gradient shows.
                let scaled: Vec<Var> = parts.iter().enumerate().map(|(i, p)| p.mul_scalar(i as f64 + 1.0)).collect::<Result<_>>()?;
                let refs: Vec<&Var> = scaled.iter().collect();
                Var::cat(&refs, d)
            }
        }, &[x, y]))?;
    }

    #[test]
    fn index_ops(op in 0usize..3, shape in dims_min(1, 3), d in 0usize..3, picks in proptest::collection::vec(0usize..16, 1..5), seed in any::<u64>()) {
        let d = d % shape.len();
        let x = normal(&shape, seed);
        pc(check_grad(|v| match op {
            0 => {
                // repeated indices must accumulate
                let idx: Vec<i64> = picks.iter().map(|&p| (p % shape[d]) as i64).collect();
                v[0].index_select(&Tensor::from_vec(idx.clone(), [idx.len()])?, d)
            }
            1 => {
                let table = v[0].reshape([shape[0], v[0].elem_count() / shape[0]])?;
                let ids: Vec<u32> = picks.iter().map(|&p| (p % shape[0]) as u32).collect();
                table.embedding(&Tensor::from_vec(ids, [picks.len(), 1])?)
            }
            _ => {
                let mut ishape = shape.clone();
                ishape[d] = picks.len();
                let n: usize = ishape.iter().product();
                let idx: Vec<i64> = (0..n).map(|i| ((picks[i % picks.len()] + i) % shape[d]) as i64).collect();
                v[0].gather(d, &Tensor::from_vec(idx, ishape)?)
            }
        }, &[x]))?;
    }

    #[test]
    fn where_and_masked_fill(fill in any::<bool>(), (sa, sb) in broadcast_pair(), mask_seed in any::<u64>(), seed in any::<u64>()) {
        let out: Vec<usize> = {
            let r = sa.len().max(sb.len());
            let pad = |s: &[usize]| { let mut p = vec![1; r - s.len()]; p.extend_from_slice(s); p };
            pad(&sa).iter().zip(pad(&sb)).map(|(a, b)| *a.max(&b)).collect()
        };
        let mask = Tensor::rand(out.as_slice(), 0.0, 1.0, DType::F64, mask_seed).unwrap().gt_scalar(0.5).unwrap();
        if fill {
            pc(check_grad(|v| v[0].broadcast_as(out.as_slice())?.masked_fill(&mask, 3.0), &[normal(&sa, seed)]))?;
        } else {
            pc(check_grad(|v| Var::where_cond(&mask, &v[0], &v[1]), &[normal(&sa, seed), normal(&sb, seed ^ 1)]))?;
        }
    }

    #[test]
    fn rope_composite(interleaved: bool, batch in 1usize..3, seq in 1usize..4, half in 1usize..4, seed in any::<u64>()) {
        let layout = if interleaved { nn::RopeLayout::Interleaved } else { nn::RopeLayout::HalfSplit };
        let cos = normal(&[seq, half], seed ^ 7);
        let sin = normal(&[seq, half], seed ^ 9);
        pc(check_grad(|v| nn::rope(&v[0], &cos, &sin, layout), &[normal(&[batch, seq, 2 * half], seed)]))?;
    }

    #[test]
    fn composites(op in 0usize..4, rows in 1usize..4, cols in 1usize..5, ignore in any::<bool>(), t in 0.5f64..4.0, seed in any::<u64>()) {
        let x = normal(&[rows, cols], seed);
        let y = normal(&[rows, cols], seed ^ 1);
        match op {
            0 => pc(check_grad(|v| nn::rms_norm(&v[0], &v[1], 1e-5), &[x, normal(&[cols], seed ^ 2)]))?,
            1 => {
                let ids: Vec<i64> = (0..rows).map(|i| if ignore && i == 0 { -100 } else { ((seed as usize + i) % cols) as i64 }).collect();
                let targets = Tensor::from_vec(ids, [rows]).unwrap();
                let ig = ignore.then_some(-100);
                pc(check_grad(|v| nn::cross_entropy(&v[0], &targets, ig), &[x]))?;
            }
            2 => pc(check_grad(|v| nn::mse(&v[0], &v[1]), &[x, y]))?,
            _ => pc(check_grad(|v| nn::kl_div_with_temperature(&v[0], &v[1], t), &[x, y]))?,
        }
    }
}

// ---- hand-derived cases ----

/// d/dx Σ x² = 2x.
#[test]
fn hand_sum_of_squares() {
    let x = Var::param(Tensor::from_vec(vec![1.0f64, -2.0, 0.5], [3]).unwrap());
    let g = x.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec_f64(), vec![2.0, -4.0, 1.0]);
}

/// Cross-entropy L = −(1/N) Σₙ log softmax(zₙ)[yₙ]. With p = softmax(z):
/// ∂L/∂zₙ = (pₙ − onehot(yₙ)) / N.
#[test]
fn hand_cross_entropy() {
    let z = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 0.5, 0.5, -1.0], [2, 3]).unwrap();
    let y = Tensor::from_vec(vec![2i64, 0], [2]).unwrap();
    let zv = Var::param(z.clone());
    let g = nn::cross_entropy(&zv, &y, None)
        .unwrap()
        .backward()
        .unwrap();
    let p = z.softmax(1).unwrap().to_vec_f64();
    let onehot = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
    let expected: Vec<f64> = p.iter().zip(onehot).map(|(p, o)| (p - o) / 2.0).collect();
    shears_tensor::test_util::assert_close(
        &g.get(&zv).unwrap().to_vec_f64(),
        &expected,
        1e-14,
        1e-12,
    );
}

/// C = A·B with upstream gradient G: dA = G·Bᵀ, dB = Aᵀ·G. Seeding with G checks both exactly.
#[test]
fn hand_matmul() {
    let a = Tensor::from_vec(vec![1.0f64, 2., 3., 4., 5., 6.], [2, 3]).unwrap();
    let b = Tensor::from_vec(vec![1.0f64, 0., -1., 2., 0.5, 1.], [3, 2]).unwrap();
    let gseed = Tensor::from_vec(vec![1.0f64, -1., 2., 0.], [2, 2]).unwrap();
    let (av, bv) = (Var::param(a.clone()), Var::param(b.clone()));
    let g = av
        .matmul(&bv)
        .unwrap()
        .backward_with(gseed.clone())
        .unwrap();
    // G·Bᵀ: row 0 = [1·1 + −1·0, 1·−1 + −1·2, 1·0.5 + −1·1] = [1, −3, −0.5]; row 1 = 2·B[:,0]ᵀ.
    assert_eq!(
        g.get(&av).unwrap().to_vec_f64(),
        vec![1.0, -3.0, -0.5, 2.0, -2.0, 1.0]
    );
    let db = a.t().unwrap().matmul(&gseed).unwrap().to_vec_f64();
    assert_eq!(g.get(&bv).unwrap().to_vec_f64(), db);
}

// ---- graph bookkeeping ----

/// y = x·x + x uses x three times: dy/dx = 2x + 1.
#[test]
fn gradients_accumulate_over_uses() {
    let x = Var::param(Tensor::from_vec(vec![3.0f64, -1.0], [2]).unwrap());
    let y = x.mul(&x).unwrap().add(&x).unwrap().sum_all().unwrap();
    let g = y.backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec_f64(), vec![7.0, -1.0]);
    assert_eq!(g.len(), 1, "only parameters keep a gradient");
}

#[test]
fn no_graph_for_constants_or_under_no_grad() {
    let w = Var::param(Tensor::ones([2, 2], DType::F64).unwrap());
    let c = Var::constant(Tensor::ones([2, 2], DType::F64).unwrap());
    assert!(w.requires_grad() && !w.has_graph());
    let y = c.exp().unwrap().matmul(&c).unwrap();
    assert!(!y.requires_grad() && !y.has_graph());
    let z = no_grad(|| w.matmul(&c).unwrap().relu().unwrap());
    assert!(!z.requires_grad() && !z.has_graph());
    assert!(shears_autograd::is_grad_enabled());
    let r = w.matmul(&c).unwrap();
    assert!(r.requires_grad() && r.has_graph());
    // A constant has nothing to propagate.
    assert!(c.sum_all().unwrap().backward().unwrap().is_empty());
}

#[test]
fn detach_stops_gradients() {
    let x = Var::param(Tensor::from_vec(vec![2.0f64], [1]).unwrap());
    // y = x·detach(x): dy/dx = detach(x) = 2, not 2x = 4.
    let y = x.mul(&x.detach()).unwrap().sum_all().unwrap();
    assert_eq!(
        y.backward().unwrap().get(&x).unwrap().to_vec_f64(),
        vec![2.0]
    );
    assert!(!x.detach().requires_grad());
}

#[test]
fn backward_needs_a_scalar_or_a_matching_seed() {
    let x = Var::param(Tensor::ones([2], DType::F64).unwrap());
    let y = x.exp().unwrap();
    assert!(y.backward().is_err());
    assert!(y
        .backward_with(Tensor::ones([3], DType::F64).unwrap())
        .is_err());
    assert!(y
        .backward_with(Tensor::ones([2], DType::F64).unwrap())
        .is_ok());
}

#[test]
fn var_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Var>();
    assert_send_sync::<shears_autograd::Grads>();
}

/// Large logits and a -inf mask on a non-target class stay finite in value and gradient.
#[test]
fn losses_are_stable() {
    let z = Tensor::from_vec(vec![1000.0f64, f64::NEG_INFINITY, 999.0], [1, 3]).unwrap();
    let zv = Var::param(z.clone());
    let y = Tensor::from_vec(vec![0u32], [1]).unwrap();
    let loss = nn::cross_entropy(&zv, &y, None).unwrap();
    assert!(loss.tensor().to_scalar::<f64>().unwrap().is_finite());
    let g = loss.backward().unwrap();
    assert!(g
        .get(&zv)
        .unwrap()
        .to_vec_f64()
        .iter()
        .all(|v| v.is_finite()));
    let kl = nn::kl_div_with_temperature(&zv, &Var::constant(z), 2.0).unwrap();
    assert!(kl.tensor().to_scalar::<f64>().unwrap().abs() < 1e-12);
    assert!(kl
        .backward()
        .unwrap()
        .get(&zv)
        .unwrap()
        .to_vec_f64()
        .iter()
        .all(|v| v.is_finite()));
}

#[test]
fn cross_entropy_ignores_rows() {
    let z = Var::param(Tensor::randn([3, 4], 0.0, 1.0, DType::F64, 3).unwrap());
    let all_ignored = Tensor::from_vec(vec![-1i64, -1, -1], [3]).unwrap();
    let loss = nn::cross_entropy(&z, &all_ignored, Some(-1)).unwrap();
    assert_eq!(loss.tensor().to_scalar::<f64>().unwrap(), 0.0);
    let g = loss.backward().unwrap();
    assert!(g.get(&z).unwrap().to_vec_f64().iter().all(|v| *v == 0.0));
}

/// A 200k-op chain: backward is iterative and dropping the graph does not recurse, so neither
/// overflows the stack of a test thread.
#[test]
fn deep_graphs_do_not_overflow_the_stack() {
    let x = Var::param(Tensor::ones([1], DType::F64).unwrap());
    let mut y = x.clone();
    for _ in 0..200_000 {
        y = y.mul_scalar(1.0).unwrap();
    }
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec_f64(), vec![1.0]);
    drop(y);
}

/// The composites compute the formulas they document (gradient checks only test consistency).
#[test]
fn composite_values_match_their_formulas() {
    let x = Tensor::randn([2, 3], 0.0, 1.0, DType::F64, 7).unwrap();
    let y = Tensor::randn([2, 3], 0.0, 1.0, DType::F64, 8).unwrap();
    let w = Tensor::from_vec(vec![0.5f64, 1.0, 2.0], [3]).unwrap();
    let (xv, yv) = (x.to_vec2::<f64>().unwrap(), y.to_vec2::<f64>().unwrap());
    let (cx, cy) = (Var::constant(x.clone()), Var::constant(y.clone()));

    // rms_norm: x / sqrt(mean(x²) + eps) · w
    let got = nn::rms_norm(&cx, &Var::constant(w), 1e-5).unwrap();
    let mut expected = vec![];
    for row in &xv {
        let rms = (row.iter().map(|v| v * v).sum::<f64>() / 3.0 + 1e-5).sqrt();
        expected.extend(row.iter().zip([0.5, 1.0, 2.0]).map(|(v, w)| v / rms * w));
    }
    shears_tensor::test_util::assert_close(&got.tensor().to_vec_f64(), &expected, 1e-12, 1e-12);

    // mse: mean((x − y)²)
    let got = nn::mse(&cx, &cy)
        .unwrap()
        .tensor()
        .to_scalar::<f64>()
        .unwrap();
    let d2: f64 = x
        .to_vec_f64()
        .iter()
        .zip(y.to_vec_f64())
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    assert!((got - d2 / 6.0).abs() < 1e-12);

    // KL with temperature: T² / rows · Σ p (log p − log q)
    let t = 2.0;
    let softmax = |row: &[f64]| {
        let e: Vec<f64> = row.iter().map(|v| (v / t).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect::<Vec<_>>()
    };
    let mut kl = 0.0;
    for (s_row, t_row) in xv.iter().zip(&yv) {
        let (q, p) = (softmax(s_row), softmax(t_row));
        kl += p
            .iter()
            .zip(&q)
            .map(|(p, q)| p * (p.ln() - q.ln()))
            .sum::<f64>();
    }
    let got = nn::kl_div_with_temperature(&cx, &cy, t).unwrap();
    assert!((got.tensor().to_scalar::<f64>().unwrap() - t * t * kl / 2.0).abs() < 1e-12);
}

/// The rules work in f32 too: a small MLP's f32 gradients match its f64 gradients.
#[test]
fn f32_gradients_match_f64() {
    let grads_in = |dt: DType| {
        let x = Var::constant(
            Tensor::randn([4, 3], 0.0, 1.0, DType::F64, 1)
                .unwrap()
                .to_dtype(dt)
                .unwrap(),
        );
        let w1 = Var::param(
            Tensor::randn([3, 5], 0.0, 1.0, DType::F64, 2)
                .unwrap()
                .to_dtype(dt)
                .unwrap(),
        );
        let w2 = Var::param(
            Tensor::randn([5, 2], 0.0, 1.0, DType::F64, 3)
                .unwrap()
                .to_dtype(dt)
                .unwrap(),
        );
        let targets = Tensor::from_vec(vec![0u32, 1, 1, 0], [4]).unwrap();
        let h = x.matmul(&w1).unwrap().gelu().unwrap();
        let loss = nn::cross_entropy(&h.matmul(&w2).unwrap(), &targets, None).unwrap();
        let g = loss.backward().unwrap();
        [
            g.get(&w1).unwrap().to_vec_f64(),
            g.get(&w2).unwrap().to_vec_f64(),
        ]
    };
    let (lo, hi) = (grads_in(DType::F32), grads_in(DType::F64));
    for (a, b) in lo.iter().zip(&hi) {
        shears_tensor::test_util::assert_close(a, b, 1e-5, 1e-4);
    }
}

/// The rope composite equals the fused kernel's reference (`shears_kernels::fused::rope_ref`)
/// for both layouts, with real angle tables.
#[test]
fn rope_matches_the_kernel_reference() {
    use shears_kernels::fused::{rope_ref, rope_tables, RopeLayout as K};
    let (seq, d) = (5, 8);
    let (cos, sin) = rope_tables(d, seq, 10000.0);
    let x = Tensor::randn([seq, d], 0.0, 1.0, DType::F32, 3).unwrap();
    for (layout, k) in [
        (nn::RopeLayout::HalfSplit, K::HalfSplit),
        (nn::RopeLayout::Interleaved, K::Interleaved),
    ] {
        let c = Tensor::from_vec(cos.clone(), [seq, d / 2]).unwrap();
        let s = Tensor::from_vec(sin.clone(), [seq, d / 2]).unwrap();
        let got = nn::rope(&Var::constant(x.clone()), &c, &s, layout)
            .unwrap()
            .tensor()
            .to_vec::<f32>()
            .unwrap();
        let mut want = x.to_vec::<f32>().unwrap();
        let positions: Vec<usize> = (0..seq).collect();
        rope_ref(&mut want, 1, d, &positions, &cos, &sin, k);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6, "{layout:?}: {a} vs {b}");
        }
    }
}
