//! The fast paths equal the element-by-element definitions: the row-wise gather of strided,
//! broadcast and transposed views against `Layout::offsets()`, scalar and one-element binary ops
//! and `affine` against per-element arithmetic (bit for bit, NaN included, in every float dtype),
//! the blocked sums against f64 sums, and the SIMD exp/sigmoid/SiLU and the fused gradients
//! against f64 formulas.

use half::{bf16, f16};
use proptest::prelude::*;
use shears_tensor::{DType, Tensor};

/// `n` values in `[-scale, scale)` from a small LCG, with every 13th a special value.
fn values(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut s = seed | 1;
    let special = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0];
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if i % 13 == 12 {
                special[(s >> 60) as usize % special.len()]
            } else {
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
            }
        })
        .collect()
}

/// A view of a contiguous `[d0, d1, d2]` tensor: permuted, narrowed along one dim and given a
/// broadcast leading dim of 2, as the case asks.
#[derive(Debug, Clone)]
struct ViewCase {
    dims: [usize; 3],
    perm: [usize; 3],
    narrow: Option<(usize, usize)>,
    broadcast: bool,
}

fn view_case() -> impl Strategy<Value = ViewCase> {
    let dim = prop_oneof![1usize..5, Just(0usize), 31usize..36, Just(64usize)];
    (
        [dim.clone(), dim.clone(), dim],
        Just(vec![0usize, 1, 2]).prop_shuffle(),
        any::<Option<(usize, usize)>>(),
        any::<bool>(),
    )
        .prop_map(|(dims, perm, narrow, broadcast)| ViewCase {
            dims,
            perm: [perm[0], perm[1], perm[2]],
            narrow,
            broadcast,
        })
}

impl ViewCase {
    /// The view over `t` (which has shape `dims`).
    fn apply(&self, t: &Tensor) -> Tensor {
        let mut v = t.permute(&self.perm).unwrap();
        if let Some((d, s)) = self.narrow {
            let d = d % 3;
            let n = v.dims()[d];
            if n > 1 {
                let start = s % n;
                v = v.narrow(d, start, (n - start).min(n / 2 + 1)).unwrap();
            }
        }
        if self.broadcast {
            let mut shape = vec![2];
            shape.extend_from_slice(v.dims());
            v = v.broadcast_as(shape).unwrap();
        }
        v
    }
}

/// The logical elements of `v` (a view of a tensor whose storage is `data`), one by one.
fn reference(v: &Tensor, data: &[f64]) -> Vec<f64> {
    v.layout().offsets().map(|o| data[o]).collect()
}

/// `x` stored as `dtype` (rounded), and the stored values read back as f64.
fn stored(x: &[f64], shape: &[usize], dtype: DType) -> (Tensor, Vec<f64>) {
    let t = match dtype {
        DType::F32 => Tensor::from_vec(x.iter().map(|&v| v as f32).collect(), shape),
        DType::F64 => Tensor::from_vec(x.to_vec(), shape),
        DType::F16 => Tensor::from_vec(x.iter().map(|&v| f16::from_f64(v)).collect(), shape),
        DType::BF16 => Tensor::from_vec(x.iter().map(|&v| bf16::from_f64(v)).collect(), shape),
        DType::U32 => Tensor::from_vec(x.iter().map(|&v| v.abs() as u32).collect(), shape),
        _ => unreachable!(),
    }
    .unwrap();
    let back = match dtype {
        DType::F32 => x.iter().map(|&v| v as f32 as f64).collect(),
        DType::F64 => x.to_vec(),
        DType::F16 => x.iter().map(|&v| f16::from_f64(v).to_f64()).collect(),
        DType::BF16 => x.iter().map(|&v| bf16::from_f64(v).to_f64()).collect(),
        DType::U32 => x.iter().map(|&v| v.abs() as u32 as f64).collect(),
        _ => unreachable!(),
    };
    (t, back)
}

/// Equal as stored values: NaN matches NaN, and zeros match only with the same sign.
fn same(got: &[f64], want: &[f64], what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{}: length", what);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok =
            (g.is_nan() && w.is_nan()) || (g == w && g.is_sign_negative() == w.is_sign_negative());
        prop_assert!(ok, "{}: [{}] got {} want {}", what, i, g, w);
    }
    Ok(())
}

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

/// `v` rounded to `dtype` from f64, as `Tensor::full` stores a scalar.
fn round_to(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F16 => f16::from_f64(v).to_f64(),
        DType::BF16 => bf16::from_f64(v).to_f64(),
        _ => v,
    }
}

/// The binary ops as the crate defines them, in the compute type of `dtype` (f32 unless f64).
fn binary_ref(op: &str, dtype: DType, a: f64, b: f64) -> f64 {
    fn f<F: num_traits::Float>(op: &str, a: F, b: F) -> F {
        match op {
            "add" => a + b,
            "sub" => a - b,
            "mul" => a * b,
            "div" => a / b,
            "pow" => a.powf(b),
            "maximum" if a.is_nan() || a > b => a,
            "minimum" if a.is_nan() || a < b => a,
            "maximum" | "minimum" => b,
            _ => unreachable!(),
        }
    }
    if dtype == DType::F64 {
        f(op, a, b)
    } else {
        let v = f(op, a as f32, b as f32);
        // From f32, as the crate rounds its results (half's `from_f64` rounds bf16 differently).
        match dtype {
            DType::F16 => f16::from_f32(v).to_f64(),
            DType::BF16 => bf16::from_f32(v).to_f64(),
            _ => v as f64,
        }
    }
}

fn binary_scalar(t: &Tensor, op: &str, c: f64) -> Tensor {
    match op {
        "add" => t.add_scalar(c),
        "sub" => t.sub_scalar(c),
        "mul" => t.mul_scalar(c),
        "div" => t.div_scalar(c),
        "pow" => t.pow_scalar(c),
        "maximum" => t.maximum_scalar(c),
        "minimum" => t.minimum_scalar(c),
        _ => unreachable!(),
    }
    .unwrap()
}

const OPS: [&str; 7] = ["add", "sub", "mul", "div", "pow", "maximum", "minimum"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// `to_vec`, `to_vec_f64` and `contiguous` of permuted, narrowed and broadcast views, in every
    /// dtype the gather serves.
    #[test]
    fn gather_matches_offsets(case in view_case(), seed: u64) {
        let n: usize = case.dims.iter().product();
        let x = values(n, seed, 100.0);
        for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16, DType::U32] {
            let (t, back) = stored(&x, &case.dims, dtype);
            let v = case.apply(&t);
            let want = reference(&v, &back);
            let what = format!("{dtype:?} {case:?}");
            same(&v.to_vec_f64(), &want, &what)?;
            let c = v.contiguous().unwrap();
            prop_assert!(c.is_contiguous());
            prop_assert_eq!(c.dims(), v.dims());
            same(&c.to_vec_f64(), &want, &format!("contiguous {what}"))?;
            if dtype == DType::F32 {
                let got: Vec<f64> = v.to_vec::<f32>().unwrap().iter().map(|&g| g as f64).collect();
                same(&got, &want, &format!("to_vec {what}"))?;
            }
            if dtype.is_float() {
                // A float op reads through the same gather (float_values), then rounds back.
                let neg = v.neg().unwrap().to_vec_f64();
                let want_neg: Vec<f64> = want.iter().map(|w| -w).collect();
                same(&neg, &want_neg, &format!("neg {what}"))?;
            }
        }
    }

    /// Scalar ops on views, in every float dtype, equal the per-element definition bit for bit.
    #[test]
    fn scalar_ops_match_elementwise(case in view_case(), seed: u64, c in prop_oneof![-3.0f64..3.0, Just(f64::NAN), Just(0.0), Just(-0.0), Just(f64::INFINITY)]) {
        let n: usize = case.dims.iter().product();
        let x = values(n, seed, 4.0);
        for dtype in FLOATS {
            let (t, back) = stored(&x, &case.dims, dtype);
            let v = case.apply(&t);
            let xs = reference(&v, &back);
            // The crate stores the scalar in the tensor's dtype first.
            let cs = round_to(dtype, c);
            for op in OPS {
                let got = binary_scalar(&v, op, c).to_vec_f64();
                let want: Vec<f64> = xs.iter().map(|&a| binary_ref(op, dtype, a, cs)).collect();
                same(&got, &want, &format!("{op}_scalar({c}) {dtype:?} {case:?}"))?;
                // A one-element tensor on the left, as rank 0 and as a broadcast [1, 1].
                let k = Tensor::full((), c, dtype).unwrap();
                let want: Vec<f64> = xs.iter().map(|&b| binary_ref(op, dtype, cs, b)).collect();
                let got = k.binary(&v, op_of(op)).unwrap();
                prop_assert_eq!(got.dims(), v.dims());
                same(&got.to_vec_f64(), &want, &format!("{c} {op} x {dtype:?} {case:?}"))?;
                let k11 = k.reshape([1, 1]).unwrap();
                if v.rank() >= 2 {
                    let got = k11.binary(&v, op_of(op)).unwrap().to_vec_f64();
                    same(&got, &want, &format!("[1,1] {op} x {dtype:?} {case:?}"))?;
                }
            }
            // affine = mul_scalar then add_scalar, each rounded to the dtype.
            let (m, a) = (c, 0.75);
            let got = v.affine(m, a).unwrap().to_vec_f64();
            let want: Vec<f64> = xs
                .iter()
                .map(|&x| {
                    let p = binary_ref("mul", dtype, x, round_to(dtype, m));
                    binary_ref("add", dtype, p, round_to(dtype, a))
                })
                .collect();
            same(&got, &want, &format!("affine({m}, {a}) {dtype:?} {case:?}"))?;
        }
    }

    /// A broadcast of one element (all strides 0) on either side of a full-size operand.
    #[test]
    fn broadcast_of_one_element(rows in 1usize..40, cols in 1usize..40, seed: u64, k in -5.0f64..5.0) {
        let x = values(rows * cols, seed, 3.0);
        for dtype in FLOATS {
            let (t, back) = stored(&x, &[rows, cols], dtype);
            let one = Tensor::full([1], k, dtype).unwrap().broadcast_as([rows, cols]).unwrap();
            let ks = round_to(dtype, k);
            for op in OPS {
                let got = t.binary(&one, op_of(op)).unwrap().to_vec_f64();
                let want: Vec<f64> = back.iter().map(|&a| binary_ref(op, dtype, a, ks)).collect();
                same(&got, &want, &format!("x {op} bcast {dtype:?}"))?;
                let got = one.binary(&t, op_of(op)).unwrap().to_vec_f64();
                let want: Vec<f64> = back.iter().map(|&b| binary_ref(op, dtype, ks, b)).collect();
                same(&got, &want, &format!("bcast {op} x {dtype:?}"))?;
            }
        }
    }

    /// Sums and means over the last dim and over everything, and max/min over the last dim,
    /// against f64 sums (finite values; NaN rows separately).
    #[test]
    fn reductions_match_f64(rows in prop_oneof![1usize..4, 60usize..70], n in prop_oneof![1usize..40, 4000usize..4100, Just(20_000usize)], seed: u64) {
        let x: Vec<f64> = values(rows * n, seed, 10.0).into_iter().map(|v| if v.is_finite() { v } else { 1.5 }).collect();
        for dtype in [DType::F32, DType::F64] {
            let (t, back) = stored(&x, &[rows, n], dtype);
            let sums: Vec<f64> = back.chunks(n).map(|r| r.iter().sum()).collect();
            let abs: Vec<f64> = back.chunks(n).map(|r| r.iter().map(|v| v.abs()).sum()).collect();
            // Blocked f32 sums err by at most ~(n/16 + log n)·ε·Σ|x|; allow n/8·ε.
            let eps = if dtype == DType::F32 { f32::EPSILON as f64 } else { f64::EPSILON };
            let tol = |a: f64, len: usize| a * eps * (len as f64 / 8.0 + 16.0);
            let got = t.sum(1, false).unwrap().to_vec_f64();
            for r in 0..rows {
                prop_assert!((got[r] - sums[r]).abs() <= tol(abs[r], n), "{dtype:?} row {r}: {} vs {}", got[r], sums[r]);
            }
            let got = t.mean(-1, true).unwrap();
            prop_assert_eq!(got.dims(), &[rows, 1]);
            for (r, g) in got.to_vec_f64().iter().enumerate() {
                prop_assert!((g - sums[r] / n as f64).abs() <= tol(abs[r], n) / n as f64 + eps, "{dtype:?} mean row {r}");
            }
            let all: f64 = sums.iter().sum();
            let all_abs: f64 = abs.iter().sum();
            let got = t.sum_all().unwrap().to_vec_f64()[0];
            prop_assert!((got - all).abs() <= tol(all_abs, rows * n), "{dtype:?} sum_all {got} vs {all}");
            let got = t.mean_all().unwrap().to_vec_f64()[0];
            prop_assert!((got - all / (rows * n) as f64).abs() <= tol(all_abs, rows * n) / (rows * n) as f64 + eps, "{dtype:?} mean_all");
            let mx = t.max(1, false).unwrap().to_vec_f64();
            let mn = t.min(1, false).unwrap().to_vec_f64();
            for (r, row) in back.chunks(n).enumerate() {
                prop_assert_eq!(mx[r], row.iter().cloned().fold(f64::MIN, f64::max));
                prop_assert_eq!(mn[r], row.iter().cloned().fold(f64::MAX, f64::min));
            }
        }
    }

    /// exp, sigmoid and SiLU on f32 (SIMD) stay within 1e-6 relative of f64, on strided views
    /// too; f64 keeps the exact scalar formulas.
    #[test]
    fn unary_kernels_match_f64(case in view_case(), seed: u64) {
        let n: usize = case.dims.iter().product();
        let x = values(n, seed, 30.0);
        type Case = (&'static str, fn(&Tensor) -> Tensor, fn(f64) -> f64);
        let fs: [Case; 3] = [
            ("exp", |t| t.exp().unwrap(), f64::exp),
            ("sigmoid", |t| t.sigmoid().unwrap(), |v| 1.0 / (1.0 + (-v).exp())),
            ("silu", |t| t.silu().unwrap(), |v| v / (1.0 + (-v).exp())),
        ];
        for (name, op, exact) in fs {
            let (t, back) = stored(&x, &case.dims, DType::F32);
            let v = case.apply(&t);
            let got = op(&v).to_vec_f64();
            for (i, (&a, g)) in reference(&v, &back).iter().zip(got).enumerate() {
                let w = exact(a);
                let ok = if w.is_nan() {
                    g.is_nan()
                } else if w.is_infinite() || w.abs() > f32::MAX as f64 {
                    g == w.signum() * f64::INFINITY
                } else {
                    (g - w).abs() <= 1e-6 * w.abs() + 1e-40
                };
                prop_assert!(ok, "{name} f32 [{i}] x={a} got {g} want {w}");
            }
            let (t, back) = stored(&x, &case.dims, DType::F64);
            let got = op(&case.apply(&t)).to_vec_f64();
            for (&a, g) in reference(&case.apply(&t), &back).iter().zip(got) {
                let w = exact(a);
                prop_assert!((w.is_nan() && g.is_nan()) || g == w || (g - w).abs() <= 1e-15 * w.abs(), "{name} f64 x={a} got {g} want {w}");
            }
        }
    }

    /// The fused gradients: f64 equals the composition of tensor ops autograd used before, bit
    /// for bit; f32 is within tolerance of it; g may be a broadcast view.
    #[test]
    fn fused_grads_match_composition(rows in 1usize..50, cols in 1usize..50, seed: u64, bcast: bool) {
        let x = values(rows * cols, seed, 12.0);
        let gv = values(rows * cols, !seed, 3.0);
        let x64 = Tensor::from_vec(x.clone(), [rows, cols]).unwrap();
        let g64 = if bcast {
            Tensor::from_vec(gv[..cols].to_vec(), [cols]).unwrap().broadcast_as([rows, cols]).unwrap()
        } else {
            Tensor::from_vec(gv.clone(), [rows, cols]).unwrap()
        };
        let s = x64.sigmoid().unwrap();
        let one_minus = s.affine(-1.0, 1.0).unwrap();
        let want_sig = g64.mul(&s.mul(&one_minus).unwrap()).unwrap();
        let want_silu = g64
            .mul(&s.mul(&x64.mul(&one_minus).unwrap().add_scalar(1.0).unwrap()).unwrap())
            .unwrap();
        same(&x64.sigmoid_grad(&g64).unwrap().to_vec_f64(), &want_sig.to_vec_f64(), "sigmoid_grad f64")?;
        same(&x64.silu_grad(&g64).unwrap().to_vec_f64(), &want_silu.to_vec_f64(), "silu_grad f64")?;
        let (x32, g32) = (x64.to_dtype(DType::F32).unwrap(), g64.to_dtype(DType::F32).unwrap());
        let gs = g64.to_vec_f64();
        for (name, got, want) in [
            ("sigmoid_grad", x32.sigmoid_grad(&g32).unwrap(), &want_sig),
            ("silu_grad", x32.silu_grad(&g32).unwrap(), &want_silu),
        ] {
            prop_assert_eq!(got.dtype(), DType::F32);
            for (i, (g, w)) in got.to_vec_f64().iter().zip(want.to_vec_f64()).enumerate() {
                // f32 inputs round x and g by 6e-8 relative; the kernel adds ≤ 1e-6 (see kernels).
                let ok = (g.is_nan() && w.is_nan()) || *g == w || (g - w).abs() <= 4e-6 * (w.abs() + gs[i].abs() * (1.0 + x[i].abs()));
                prop_assert!(ok, "{name} f32 [{i}] x={} got {g} want {w}", x[i]);
            }
        }
    }
}

fn op_of(op: &str) -> shears_tensor::BinaryOp {
    use shears_tensor::BinaryOp::*;
    match op {
        "add" => Add,
        "sub" => Sub,
        "mul" => Mul,
        "div" => Div,
        "pow" => Pow,
        "maximum" => Maximum,
        "minimum" => Minimum,
        _ => unreachable!(),
    }
}

/// A sum does not depend on how many threads computed it.
#[test]
fn sums_are_deterministic_across_thread_counts() {
    let x: Vec<f32> = values(300_000, 7, 1.0)
        .into_iter()
        .map(|v| if v.is_finite() { v as f32 } else { 0.25 })
        .collect();
    let t = Tensor::from_vec(x, [3, 100_000]).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            (
                t.sum_all().unwrap().to_vec::<f32>().unwrap(),
                t.sum(1, false).unwrap().to_vec::<f32>().unwrap(),
                t.sum(0, false).unwrap().to_vec::<f32>().unwrap(),
            )
        })
    };
    let one = run(1);
    for threads in [2, 3, 5] {
        assert_eq!(run(threads), one, "{threads} threads");
    }
}

/// Large transposes go through the tiled copy: check one of them in full, with a batch dim and an
/// offset (a narrowed start), against index arithmetic.
#[test]
fn tiled_transpose_matches_index_math() {
    let (b, r, c) = (3, 70, 45);
    let data: Vec<f32> = (0..b * r * c).map(|i| i as f32).collect();
    let t = Tensor::from_vec(data, [b, r, c]).unwrap();
    let v = t.narrow(1, 3, 66).unwrap().transpose(1, 2).unwrap();
    assert_eq!(v.dims(), &[3, 45, 66]);
    let got = v.contiguous().unwrap().to_vec::<f32>().unwrap();
    for bi in 0..b {
        for j in 0..c {
            for i in 0..66 {
                let want = (bi * r * c + (i + 3) * c + j) as f32;
                assert_eq!(got[(bi * c + j) * 66 + i], want, "[{bi}, {j}, {i}]");
            }
        }
    }
}

/// The fused gradients reject a gradient of another shape or dtype.
#[test]
fn fused_grad_errors() {
    let x = Tensor::zeros([2, 3], DType::F32).unwrap();
    assert!(x
        .silu_grad(&Tensor::zeros([3, 2], DType::F32).unwrap())
        .is_err());
    assert!(x
        .sigmoid_grad(&Tensor::zeros([2, 3], DType::F64).unwrap())
        .is_err());
    assert!(Tensor::zeros([2], DType::U8)
        .unwrap()
        .silu_grad(&Tensor::zeros([2], DType::U8).unwrap())
        .is_err());
}
