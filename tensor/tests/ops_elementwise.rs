//! Property tests: unary, binary (broadcasting), scalar, comparison, where/masked_fill and dtype
//! conversion against the plain f64 reference, over edge-case shapes and non-contiguous views.

mod common;
use common::*;
use proptest::prelude::*;
use shears_tensor::{BinaryOp, CmpOp, DType, Tensor, UnaryOp};

fn unary_ref(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Relu => x.max(0.0),
        // Φ(x) through erfc of the series-free libm-independent identity is overkill here: use
        // the textbook definition with f64 erf from the Abramowitz–Stegun-free `libm`-less path:
        UnaryOp::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
        UnaryOp::Sqr => x * x,
        _ => unreachable!(),
    }
}

/// erf by its Maclaurin series (converges quickly for |x| <= 3, our inputs' range) and the
/// asymptotic value beyond; an independent check of the library's erf.
fn erf(x: f64) -> f64 {
    if x.abs() > 4.0 {
        return x.signum();
    }
    let mut term = x;
    let mut sum = x;
    for n in 1..200 {
        term *= -x * x / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

const UNARY: [UnaryOp; 14] = [
    UnaryOp::Neg,
    UnaryOp::Abs,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Recip,
    UnaryOp::Sin,
    UnaryOp::Cos,
    UnaryOp::Tanh,
    UnaryOp::Relu,
    UnaryOp::Gelu,
    UnaryOp::Sigmoid,
    UnaryOp::Silu,
    UnaryOp::Sqr,
];

const BINARY: [BinaryOp; 7] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Pow,
    BinaryOp::Maximum,
    BinaryOp::Minimum,
];

fn binary_ref(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Maximum => a.max(b),
        BinaryOp::Minimum => a.min(b),
        _ => unreachable!(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn unary_matches_reference(s in shape(4), v in view(), seed: u64, dt in float_dtype(), op_i in 0usize..UNARY.len()) {
        let op = UNARY[op_i];
        let (x, r) = make(&s, v, seed, dt);
        // Log/sqrt/recip need positive inputs: shift into (0, 8].
        let (x, r) = if matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Recip) {
            (x.abs().unwrap().add_scalar(0.25).unwrap(), r.map(|v| v.abs() + 0.25))
        } else { (x, r) };
        let y = x.unary(op).unwrap();
        prop_assert_eq!(y.dtype(), dt);
        check(&y, &r.map(|v| unary_ref(op, v)), 1.0)?;
    }

    #[test]
    fn binary_broadcast_matches_reference((sa, sb) in broadcast_pair(4), va in view(), vb in view(), seed: u64, dt in float_dtype(), op_i in 0usize..BINARY.len()) {
        let op = BINARY[op_i];
        let (a, ra) = make(&sa, va, seed, dt);
        let (b, rb) = make(&sb, vb, seed.wrapping_add(1), dt);
        // pow: positive base keeps the reference real.
        let (a, ra) = if op == BinaryOp::Pow { (a.abs().unwrap().add_scalar(0.5).unwrap(), ra.map(|v| v.abs() + 0.5)) } else { (a, ra) };
        let out = broadcast_shape(&sa, &sb).unwrap();
        let expected = RefT::from_fn(&out, |i| binary_ref(op, ra.get_broadcast(i, &out), rb.get_broadcast(i, &out)));
        let y = a.binary(&b, op).unwrap();
        // f16/bf16 inputs round the shifted base once more; pow amplifies that by up to |b|·ln.
        let scale = if op == BinaryOp::Pow && dt != DType::F32 && dt != DType::F64 { 8.0 } else { 1.0 };
        check(&y, &expected, scale)?;
    }

    #[test]
    fn scalar_variants_match_reference(s in shape(3), v in view(), seed: u64, c in -3.0f64..3.0) {
        let c = (c * 4.0).round() / 4.0; // exactly representable
        let (x, r) = make(&s, v, seed, DType::F32);
        check(&x.add_scalar(c).unwrap(), &r.map(|v| v + c), 1.0)?;
        check(&x.sub_scalar(c).unwrap(), &r.map(|v| v - c), 1.0)?;
        check(&x.mul_scalar(c).unwrap(), &r.map(|v| v * c), 1.0)?;
        if c != 0.0 { check(&x.div_scalar(c).unwrap(), &r.map(|v| v / c), 1.0)?; }
        check(&x.maximum_scalar(c).unwrap(), &r.map(|v| v.max(c)), 1.0)?;
        check(&x.minimum_scalar(c).unwrap(), &r.map(|v| v.min(c)), 1.0)?;
        check(&x.affine(c, 1.5).unwrap(), &r.map(|v| v * c + 1.5), 1.0)?;
        check(&x.clamp(-1.0, 1.0).unwrap(), &r.map(|v| v.clamp(-1.0, 1.0)), 1.0)?;
        check(&x.abs().unwrap().pow_scalar(c).unwrap(), &r.map(|v| v.abs().powf(c)), 1.0)?;
    }

    #[test]
    fn comparisons_give_masks((sa, sb) in broadcast_pair(3), va in view(), seed: u64, dt in prop_oneof![Just(DType::F32), Just(DType::BF16), Just(DType::I64), Just(DType::U8)]) {
        let (a, ra) = make(&sa, va, seed, DType::F32);
        let (b, rb) = make(&sb, View::Contiguous, seed / 2, DType::F32);
        // Round to integers so ties occur and integer dtypes are exact.
        let (a, ra) = (a.to_dtype(DType::I64).unwrap().to_dtype(dt).unwrap(), ra.map(|v| if dt == DType::U8 { (v.trunc()).max(0.0) } else { v.trunc() }));
        let (b, rb) = (b.to_dtype(DType::I64).unwrap().to_dtype(dt).unwrap(), rb.map(|v| if dt == DType::U8 { (v.trunc()).max(0.0) } else { v.trunc() }));
        let out = broadcast_shape(&sa, &sb).unwrap();
        for (op, f) in [(CmpOp::Eq, (|x, y| x == y) as fn(f64, f64) -> bool), (CmpOp::Ne, |x, y| x != y), (CmpOp::Lt, |x, y| x < y), (CmpOp::Le, |x, y| x <= y), (CmpOp::Gt, |x, y| x > y), (CmpOp::Ge, |x, y| x >= y)] {
            let m = a.cmp(&b, op).unwrap();
            prop_assert_eq!(m.dtype(), DType::U8);
            let expected = RefT::from_fn(&out, |i| f(ra.get_broadcast(i, &out), rb.get_broadcast(i, &out)) as u8 as f64);
            check(&m, &expected, 0.0)?;
        }
    }

    #[test]
    fn where_and_masked_fill((sm, sx) in broadcast_pair(3), seed: u64, v in view(), dt in float_dtype()) {
        let (mask_src, rm) = make(&sm, View::Contiguous, seed, DType::F32);
        let mask = mask_src.gt_scalar(0.0).unwrap();
        let (x, rx) = make(&sx, v, seed ^ 5, dt);
        let (y, ry) = make(&sx, View::Contiguous, seed ^ 9, dt);
        let out = broadcast_shape(&sm, &sx).unwrap();
        let w = mask.where_cond(&x, &y).unwrap();
        let expected = RefT::from_fn(&out, |i| if rm.get_broadcast(i, &out) > 0.0 { rx.get_broadcast(i, &out) } else { ry.get_broadcast(i, &out) });
        check(&w, &expected, 0.0)?;
        if out == sx {
            let f = x.masked_fill(&mask, -7.0).unwrap();
            let expected = RefT::from_fn(&out, |i| if rm.get_broadcast(i, &out) > 0.0 { -7.0 } else { rx.get(i) });
            check(&f, &expected, 0.0)?;
        }
    }

    #[test]
    fn to_dtype_round_trips(s in shape(3), v in view(), seed: u64, from in float_dtype(), to in float_dtype()) {
        let (x, r) = make(&s, v, seed, from);
        // Test values are multiples of 1/16 in [-4, 4): exact in every float dtype.
        let y = x.to_dtype(to).unwrap();
        prop_assert_eq!(y.dtype(), to);
        check(&y, &r, 0.0)?;
        let z = y.to_dtype(DType::I64).unwrap();
        check(&z, &r.map(f64::trunc), 0.0)?;
        let u = z.to_dtype(DType::U32).unwrap().to_dtype(DType::F32).unwrap();
        check(&u, &r.map(|v| v.trunc().max(0.0)), 0.0)?;
    }
}

#[test]
fn half_types_round_to_nearest_even() {
    // 1 + 2^-9 lies halfway between two bf16 values (1 and 1 + 2^-7? no: spacing at 1 is 2^-7);
    // 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7, and rounds to the even one, 1.
    let x = Tensor::from_vec(vec![1.0f32 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)], [2]).unwrap();
    let b = x
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert_eq!(
        b.to_vec::<f32>().unwrap(),
        vec![1.0, 1.0 + 2.0 * 2f32.powi(-7)]
    );
}

#[test]
fn float_to_int_saturates_and_nan_is_zero() {
    let x = Tensor::from_vec(vec![f32::NAN, -1.5, 300.0, 2.9], [4]).unwrap();
    assert_eq!(
        x.to_dtype(DType::U8).unwrap().to_vec::<u8>().unwrap(),
        vec![0, 0, 255, 2]
    );
    assert_eq!(
        x.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap(),
        vec![0, -1, 300, 2]
    );
}

#[test]
fn sigmoid_and_silu_are_stable_at_extremes() {
    let x = Tensor::from_vec(vec![-1000f32, 1000.0], [2]).unwrap();
    assert_eq!(
        x.sigmoid().unwrap().to_vec::<f32>().unwrap(),
        vec![0.0, 1.0]
    );
    let s = x.silu().unwrap().to_vec::<f32>().unwrap();
    assert_eq!(s[0], 0.0);
    assert_eq!(s[1], 1000.0);
}

#[test]
fn maximum_propagates_nan() {
    let a = Tensor::from_vec(vec![f32::NAN, 1.0], [2]).unwrap();
    let b = Tensor::from_vec(vec![0.0f32, f32::NAN], [2]).unwrap();
    let m = a.maximum(&b).unwrap().to_vec::<f32>().unwrap();
    assert!(m[0].is_nan() && m[1].is_nan());
}
