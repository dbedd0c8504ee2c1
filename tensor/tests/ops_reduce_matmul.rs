//! Property tests: reductions, softmax and matmul against the plain f64 reference, over edge-case
//! shapes (empty dims, size 1, SIMD width ± 1) and non-contiguous views.

mod common;
use common::*;
use proptest::prelude::*;
use shears_tensor::{DType, Tensor};

/// Reference reduction over `dim`: applies `f` to each fibre along `dim`.
fn reduce_ref(r: &RefT, dim: usize, keepdim: bool, f: impl Fn(&[f64]) -> f64) -> RefT {
    let mut out_shape = r.shape.clone();
    out_shape[dim] = 1;
    let mut red = RefT::from_fn(&out_shape, |idx| {
        let fibre: Vec<f64> = (0..r.shape[dim])
            .map(|j| {
                let mut k = idx.to_vec();
                k[dim] = j;
                r.get(&k)
            })
            .collect();
        f(&fibre)
    });
    if !keepdim {
        red.shape.remove(dim);
    }
    red
}

fn nonempty_rank1(max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
    shape(max_rank).prop_filter("rank >= 1", |s| !s.is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn sum_mean_var_match_reference(s in nonempty_rank1(4), v in view(), seed: u64, dt in float_dtype(), d in 0usize..4, keep: bool) {
        let d = d % s.len();
        let (x, r) = make(&s, v, seed, dt);
        let n = s[d] as f64;
        let scale = 1.0 + n.sqrt();
        check(&x.sum(d, keep).unwrap(), &reduce_ref(&r, d, keep, |f| f.iter().sum()), scale)?;
        check(&x.mean(d, keep).unwrap(), &reduce_ref(&r, d, keep, |f| f.iter().sum::<f64>() / f.len() as f64), scale)?;
        let var = |f: &[f64]| { let m = f.iter().sum::<f64>() / f.len() as f64; f.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (f.len() as f64 - 1.0) };
        check(&x.var(d, keep).unwrap(), &reduce_ref(&r, d, keep, var), scale * 4.0)?;
        // Negative dims count from the back.
        let neg = d as i64 - s.len() as i64;
        check(&x.sum(neg, keep).unwrap(), &reduce_ref(&r, d, keep, |f| f.iter().sum()), scale)?;
    }

    #[test]
    fn max_min_argmax_match_reference(s in nonempty_rank1(4), v in view(), seed: u64, dt in float_dtype(), d in 0usize..4, keep: bool) {
        let d = d % s.len();
        let (x, r) = make(&s, v, seed, dt);
        if s[d] == 0 && s.iter().product::<usize>() == 0 && s.iter().enumerate().any(|(i, &n)| i != d && n == 0) {
            // Nothing to reduce and nothing produced: fine either way.
        }
        if s[d] == 0 {
            let others: usize = s.iter().enumerate().filter(|(i, _)| *i != d).map(|(_, &n)| n).product();
            prop_assert_eq!(x.max(d, keep).is_err(), others > 0);
            return Ok(());
        }
        check(&x.max(d, keep).unwrap(), &reduce_ref(&r, d, keep, |f| f.iter().cloned().fold(f64::NEG_INFINITY, f64::max)), 0.0)?;
        check(&x.min(d, keep).unwrap(), &reduce_ref(&r, d, keep, |f| f.iter().cloned().fold(f64::INFINITY, f64::min)), 0.0)?;
        let first_arg = |f: &[f64], better: fn(f64, f64) -> bool| { let mut b = 0; for j in 1..f.len() { if better(f[j], f[b]) { b = j; } } b as f64 };
        let am = x.argmax(d, keep).unwrap();
        prop_assert_eq!(am.dtype(), DType::I64);
        check(&am, &reduce_ref(&r, d, keep, |f| first_arg(f, |a, b| a > b)), 0.0)?;
        check(&x.argmin(d, keep).unwrap(), &reduce_ref(&r, d, keep, |f| first_arg(f, |a, b| a < b)), 0.0)?;
    }

    #[test]
    fn softmax_matches_reference(s in nonempty_rank1(4), v in view(), seed: u64, dt in float_dtype(), d in 0usize..4, big in prop_oneof![Just(1.0f64), Just(100.0)]) {
        let d = d % s.len();
        let (x, r) = make(&s, v, seed, dt);
        // Scaling by 100 makes logits up to ±400: overflow without the max subtraction.
        let (x, r) = (x.mul_scalar(big).unwrap(), r.map(|v| v * big));
        let sm = |f: &[f64], j: usize| { let m = f.iter().cloned().fold(f64::NEG_INFINITY, f64::max); let z: f64 = f.iter().map(|v| (v - m).exp()).sum(); ((f[j] - m).exp() / z, f[j] - m - z.ln()) };
        let expected = RefT::from_fn(&s, |idx| {
            let fibre: Vec<f64> = (0..s[d]).map(|j| { let mut k = idx.to_vec(); k[d] = j; r.get(&k) }).collect();
            sm(&fibre, idx[d]).0
        });
        let expected_log = RefT::from_fn(&s, |idx| {
            let fibre: Vec<f64> = (0..s[d]).map(|j| { let mut k = idx.to_vec(); k[d] = j; r.get(&k) }).collect();
            sm(&fibre, idx[d]).1
        });
        // Rounding the scaled logits to f16/bf16 shifts them by up to 2^-8 relative (~1.6 at 400).
        let scale = if matches!(dt, DType::F16 | DType::BF16) { big } else { 4.0 };
        let y = x.softmax(d).unwrap();
        check(&y, &expected, scale)?;
        let ly = x.log_softmax(d).unwrap();
        check(&ly, &expected_log, scale * 8.0)?;
    }

    #[test]
    fn matmul_matches_reference(
        batch in proptest::collection::vec(prop_oneof![Just(1usize), Just(2), Just(3)], 0..3),
        bcast_bits: u8,
        m in dim_size(), k in dim_size(), n in dim_size(),
        ta: bool, tb: bool, seed: u64, dt in float_dtype(),
    ) {
        // Batch dims of b: some set to 1 (broadcast) and maybe fewer of them.
        let mut bb: Vec<usize> = batch.iter().enumerate().map(|(i, &d)| if bcast_bits >> i & 1 == 1 { 1 } else { d }).collect();
        if bcast_bits & 0x80 != 0 && !bb.is_empty() { bb.remove(0); }
        let sa: Vec<usize> = batch.iter().cloned().chain([m, k]).collect();
        let sb: Vec<usize> = bb.iter().cloned().chain([k, n]).collect();
        let (a, ra) = make(&sa, if ta { View::Transposed } else { View::Contiguous }, seed, dt);
        let (b, rb) = make(&sb, if tb { View::Transposed } else { View::Contiguous }, seed ^ 3, dt);
        let out_batch = broadcast_shape(&batch, &bb).unwrap();
        let out: Vec<usize> = out_batch.iter().cloned().chain([m, n]).collect();
        let expected = RefT::from_fn(&out, |idx| {
            let r = idx.len();
            (0..k).map(|p| {
                let mut ia = idx[..r - 2].to_vec(); ia.extend([idx[r - 2], p]);
                let mut ib = idx[..r - 2].to_vec(); ib.extend([p, idx[r - 1]]);
                ra.get_broadcast(&ia, &out) * rb.get_broadcast(&ib, &out)
            }).sum()
        });
        let y = a.matmul(&b).unwrap();
        check(&y, &expected, 2.0 + k as f64)?;
    }

    #[test]
    fn matmul_vector_cases(m in dim_size(), k in dim_size(), seed: u64) {
        let (a, ra) = make(&[m, k], View::Contiguous, seed, DType::F32);
        let (v, rv) = make(&[k], View::Contiguous, seed ^ 1, DType::F32);
        let mv = a.matmul(&v).unwrap();
        check(&mv, &RefT::from_fn(&[m], |i| (0..k).map(|p| ra.get(&[i[0], p]) * rv.get(&[p])).sum()), 2.0 + k as f64)?;
        let vm = v.matmul(&a.t().unwrap()).unwrap();
        check(&vm, &RefT::from_fn(&[m], |i| (0..k).map(|p| ra.get(&[i[0], p]) * rv.get(&[p])).sum()), 2.0 + k as f64)?;
        let dot = v.matmul(&v).unwrap();
        prop_assert_eq!(dot.rank(), 0);
        check(&dot, &RefT { shape: vec![], data: vec![rv.data.iter().map(|x| x * x).sum()] }, 2.0 + k as f64)?;
    }
}

#[test]
fn matmul_large_against_reference() {
    // One large case: crosses the kernel's k and n blocks.
    let (m, k, n) = (33, 300, 2100);
    let a = Tensor::randn([m, k], 0.0, 1.0, DType::F32, 1).unwrap();
    let b = Tensor::randn([n, k], 0.0, 1.0, DType::F32, 2).unwrap();
    let y = a.matmul(&b.t().unwrap()).unwrap().to_vec_f64();
    let av = a.to_vec_f64();
    let bv = b.to_vec_f64();
    for &(i, j) in &[(0, 0), (5, 2047), (32, 2099), (17, 1000)] {
        let e: f64 = (0..k).map(|p| av[i * k + p] * bv[j * k + p]).sum();
        assert!(
            (y[i * n + j] - e).abs() < 1e-3,
            "({i},{j}): {} vs {e}",
            y[i * n + j]
        );
    }
}

#[test]
fn softmax_of_masked_row_is_finite() {
    let x = Tensor::from_vec(
        vec![f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY],
        [2, 2],
    )
    .unwrap();
    let y = x.softmax(-1).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(&y[..2], &[0.0, 1.0]);
}

/// `first_non_finite` finds the first NaN / ±inf in row-major order in every float dtype, through
/// strided views, and nothing in finite or integer tensors.
#[test]
fn first_non_finite_finds_the_first_in_logical_order() {
    use shears_tensor::{DType, Tensor};
    for n in [0usize, 1, 15, 16, 17, 1000, 100_003] {
        let clean = Tensor::from_vec((0..n).map(|i| i as f64 * 0.5 - 3.0).collect(), [n]).unwrap();
        for dt in [DType::F32, DType::F64, DType::BF16, DType::F16] {
            assert_eq!(
                clean.to_dtype(dt).unwrap().first_non_finite().unwrap(),
                None
            );
        }
        for at in [0, n / 2, n.saturating_sub(1)]
            .into_iter()
            .filter(|&a| a < n)
        {
            let mut v: Vec<f64> = (0..n).map(|i| (i % 7) as f64).collect();
            v[at] = f64::INFINITY;
            if at + 1 < n {
                v[n - 1] = f64::NAN; // a later one is not reported
            }
            let t = Tensor::from_vec(v, [n]).unwrap();
            for dt in [DType::F32, DType::F64, DType::BF16, DType::F16] {
                let got = t.to_dtype(dt).unwrap().first_non_finite().unwrap();
                assert_eq!(got, Some((at, f64::INFINITY)), "{dt:?} n {n} at {at}");
            }
        }
    }
    // A transposed view: logical order, not storage order.
    let mut v = vec![1f32; 6];
    v[1] = f32::NAN; // storage [0, 1] = logical [1, 0] of the transpose
    v[3] = f32::NEG_INFINITY; // storage [1, 0] = logical [0, 1]
    let t = Tensor::from_vec(v, [2, 3]).unwrap().t().unwrap();
    let (i, x) = t.first_non_finite().unwrap().unwrap();
    assert_eq!(i, 1);
    assert_eq!(x, f64::NEG_INFINITY);
    let ints = Tensor::from_vec(vec![1u32, 2, 3], [3]).unwrap();
    assert_eq!(ints.first_non_finite().unwrap(), None);
}
