//! Elementwise activations over plain f32 slices: `exp`, the logistic sigmoid `σ(x) = 1/(1+e^−x)`
//! and SiLU `silu(x) = x·σ(x)` (Elfwing et al. 2018, "Sigmoid-Weighted Linear Units", eq. 1), with
//! their fused backward rules `dx = g·σ(x)(1−σ(x))` and `dx = g·σ(x)(1 + x(1−σ(x)))` (ibid. eq. 3).
//!
//! ```
//! use shears_kernels::fused::{sigmoid, silu, silu_grad};
//!
//! let x = [0.0f32, 100.0, -100.0];
//! let mut y = [0f32; 3];
//! sigmoid(&x, &mut y);
//! assert_eq!(y[..2], [0.5, 1.0]);
//! assert!(y[2] > 0.0 && y[2] < 1e-43);
//! silu(&x, &mut y);
//! assert_eq!(y[..2], [0.0, 100.0]);
//! // silu'(0) = σ(0) = 1/2.
//! let mut dx = [0f32; 1];
//! silu_grad(&[0.0], &[3.0], &mut dx);
//! assert_eq!(dx, [1.5]);
//! ```
//!
//! Both `σ(x)` and `1 − σ(x) = σ(−x)` come from one `t = e^(−|x|)` as `1/(1+t)` and `t/(1+t)`:
//! the exponential never overflows, and `1 − σ` keeps its relative precision for large `x`
//! instead of cancelling to 0. Each `op` runs at [`crate::cpu::level`], `op_with` at a given
//! level, and `op_ref` is the scalar reference, computed in f64 and rounded once.

use super::simd::{exp as vexp, load_n, par_rows, simd_entry, store_n, usable, Simd, PAR_EXP};
use crate::cpu::{self, Level};

/// `out[i] = e^x[i]`. x, out: `[n]`, at the detected SIMD level; in parallel when large.
/// Within 2 ulp of the exact value; `x > 88.73 → inf`, `-inf → 0`, NaN → NaN.
pub fn exp(x: &[f32], out: &mut [f32]) {
    exp_with(cpu::level(), x, out)
}

/// [`exp`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn exp_with(level: Level, x: &[f32], out: &mut [f32]) {
    check("exp", x.len(), x.len(), out.len());
    run(level, x, None, out, exp_at)
}

/// Plain reference for [`exp`], in f64 rounded once.
pub fn exp_ref(x: &[f32], out: &mut [f32]) {
    check("exp_ref", x.len(), x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v as f64).exp() as f32;
    }
}

/// `out[i] = σ(x[i]) = 1/(1+e^−x[i])`. x, out: `[n]`, at the detected SIMD level; in parallel
/// when large.
pub fn sigmoid(x: &[f32], out: &mut [f32]) {
    sigmoid_with(cpu::level(), x, out)
}

/// [`sigmoid`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn sigmoid_with(level: Level, x: &[f32], out: &mut [f32]) {
    check("sigmoid", x.len(), x.len(), out.len());
    run(level, x, None, out, sigmoid_at)
}

/// Plain reference for [`sigmoid`], in f64 rounded once.
pub fn sigmoid_ref(x: &[f32], out: &mut [f32]) {
    check("sigmoid_ref", x.len(), x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = sigma_f64(v as f64).0 as f32;
    }
}

/// `out[i] = x[i]·σ(x[i])` (SiLU, a.k.a. swish). x, out: `[n]`, at the detected SIMD level; in
/// parallel when large. `silu(−inf)` is NaN (`−inf · 0`), as in PyTorch.
pub fn silu(x: &[f32], out: &mut [f32]) {
    silu_with(cpu::level(), x, out)
}

/// [`silu`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn silu_with(level: Level, x: &[f32], out: &mut [f32]) {
    check("silu", x.len(), x.len(), out.len());
    run(level, x, None, out, silu_at)
}

/// Plain reference for [`silu`], in f64 rounded once.
pub fn silu_ref(x: &[f32], out: &mut [f32]) {
    check("silu_ref", x.len(), x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        let v = v as f64;
        *o = (v * sigma_f64(v).0) as f32;
    }
}

/// `out[i] = g[i]·σ(x[i])(1 − σ(x[i]))`, the sigmoid's backward rule. x, g, out: `[n]`, at the
/// detected SIMD level; in parallel when large.
pub fn sigmoid_grad(x: &[f32], g: &[f32], out: &mut [f32]) {
    sigmoid_grad_with(cpu::level(), x, g, out)
}

/// [`sigmoid_grad`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn sigmoid_grad_with(level: Level, x: &[f32], g: &[f32], out: &mut [f32]) {
    check("sigmoid_grad", x.len(), g.len(), out.len());
    run(level, x, Some(g), out, sigmoid_grad_at)
}

/// Plain reference for [`sigmoid_grad`], in f64 rounded once.
pub fn sigmoid_grad_ref(x: &[f32], g: &[f32], out: &mut [f32]) {
    check("sigmoid_grad_ref", x.len(), g.len(), out.len());
    for ((o, &v), &d) in out.iter_mut().zip(x).zip(g) {
        let (s, c) = sigma_f64(v as f64);
        *o = (d as f64 * s * c) as f32;
    }
}

/// `out[i] = g[i]·σ(x[i])(1 + x[i](1 − σ(x[i])))`, SiLU's backward rule. x, g, out: `[n]`, at the
/// detected SIMD level; in parallel when large. NaN where the product is `0·∞` (`x = ±inf`).
pub fn silu_grad(x: &[f32], g: &[f32], out: &mut [f32]) {
    silu_grad_with(cpu::level(), x, g, out)
}

/// [`silu_grad`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn silu_grad_with(level: Level, x: &[f32], g: &[f32], out: &mut [f32]) {
    check("silu_grad", x.len(), g.len(), out.len());
    run(level, x, Some(g), out, silu_grad_at)
}

/// Plain reference for [`silu_grad`], in f64 rounded once.
pub fn silu_grad_ref(x: &[f32], g: &[f32], out: &mut [f32]) {
    check("silu_grad_ref", x.len(), g.len(), out.len());
    for ((o, &v), &d) in out.iter_mut().zip(x).zip(g) {
        let v = v as f64;
        let (s, c) = sigma_f64(v);
        *o = (d as f64 * (s * (1.0 + v * c))) as f32;
    }
}

/// `(σ(v), 1 − σ(v))` in f64 without overflow or cancellation.
fn sigma_f64(v: f64) -> (f64, f64) {
    let t = (-v.abs()).exp();
    let d = 1.0 / (1.0 + t);
    if v >= 0.0 {
        (d, t * d)
    } else if v < 0.0 {
        (t * d, d)
    } else {
        (v, v)
    }
}

fn check(name: &str, x: usize, g: usize, out: usize) {
    assert_eq!(x, out, "{name}: out length");
    assert_eq!(x, g, "{name}: gradient length");
}

type Entry = unsafe fn(Level, *const f32, *const f32, *mut f32, usize);

/// `out = op(x, g)` block by block (in parallel above [`PAR_EXP`] elements); `g` is `x` for the
/// one-input ops, which ignore it.
fn run(level: Level, x: &[f32], g: Option<&[f32]>, out: &mut [f32], entry: Entry) {
    let level = usable(level);
    let g = g.unwrap_or(x);
    par_rows(out, 1, PAR_EXP, |start, o| {
        let (xs, gs) = (&x[start..start + o.len()], &g[start..start + o.len()]);
        // SAFETY: `level` is supported; `xs`, `gs` and `o` each hold `o.len()` elements.
        unsafe { entry(level, xs.as_ptr(), gs.as_ptr(), o.as_mut_ptr(), o.len()) }
    });
}

/// A lane-wise function of `x` and the incoming gradient `g`.
trait Op {
    unsafe fn apply<S: Simd>(x: S::V, g: S::V) -> S::V;
}

/// `(σ(x), 1 − σ(x))` lane-wise from one `t = e^(−|x|)`; NaN lanes give NaN in both.
#[inline(always)]
unsafe fn sigma<S: Simd>(x: S::V) -> (S::V, S::V) {
    let t = vexp::<S>(S::sub(S::splat(0.0), S::abs(x)));
    let d = S::div(S::splat(1.0), S::add(S::splat(1.0), t));
    let td = S::mul(t, d);
    (S::blend_neg(x, td, d), S::blend_neg(x, d, td))
}

struct Exp;
impl Op for Exp {
    #[inline(always)]
    unsafe fn apply<S: Simd>(x: S::V, _: S::V) -> S::V {
        vexp::<S>(x)
    }
}

struct Sigmoid;
impl Op for Sigmoid {
    #[inline(always)]
    unsafe fn apply<S: Simd>(x: S::V, _: S::V) -> S::V {
        sigma::<S>(x).0
    }
}

struct Silu;
impl Op for Silu {
    #[inline(always)]
    unsafe fn apply<S: Simd>(x: S::V, _: S::V) -> S::V {
        S::mul(x, sigma::<S>(x).0)
    }
}

struct SigmoidGrad;
impl Op for SigmoidGrad {
    #[inline(always)]
    unsafe fn apply<S: Simd>(x: S::V, g: S::V) -> S::V {
        let (s, c) = sigma::<S>(x);
        S::mul(g, S::mul(s, c))
    }
}

struct SiluGrad;
impl Op for SiluGrad {
    #[inline(always)]
    unsafe fn apply<S: Simd>(x: S::V, g: S::V) -> S::V {
        let (s, c) = sigma::<S>(x);
        S::mul(g, S::mul(s, S::fma(x, c, S::splat(1.0))))
    }
}

/// `out[i] = O(x[i], g[i])` for `len` elements.
#[inline(always)]
unsafe fn each<S: Simd, O: Op>(x: *const f32, g: *const f32, out: *mut f32, len: usize) {
    let mut i = 0;
    while i < len {
        let v = (len - i).min(S::LANES);
        let y = O::apply::<S>(load_n::<S>(x.add(i), v, 0.0), load_n::<S>(g.add(i), v, 0.0));
        store_n::<S>(out.add(i), y, v);
        i += v;
    }
}

#[inline(always)]
unsafe fn exp_body<S: Simd>(x: *const f32, g: *const f32, out: *mut f32, len: usize) {
    each::<S, Exp>(x, g, out, len)
}
#[inline(always)]
unsafe fn sigmoid_body<S: Simd>(x: *const f32, g: *const f32, out: *mut f32, len: usize) {
    each::<S, Sigmoid>(x, g, out, len)
}
#[inline(always)]
unsafe fn silu_body<S: Simd>(x: *const f32, g: *const f32, out: *mut f32, len: usize) {
    each::<S, Silu>(x, g, out, len)
}
#[inline(always)]
unsafe fn sigmoid_grad_body<S: Simd>(x: *const f32, g: *const f32, out: *mut f32, len: usize) {
    each::<S, SigmoidGrad>(x, g, out, len)
}
#[inline(always)]
unsafe fn silu_grad_body<S: Simd>(x: *const f32, g: *const f32, out: *mut f32, len: usize) {
    each::<S, SiluGrad>(x, g, out, len)
}
simd_entry!(fn exp_at => exp_body(x: *const f32, g: *const f32, out: *mut f32, len: usize));
simd_entry!(fn sigmoid_at => sigmoid_body(x: *const f32, g: *const f32, out: *mut f32, len: usize));
simd_entry!(fn silu_at => silu_body(x: *const f32, g: *const f32, out: *mut f32, len: usize));
simd_entry!(fn sigmoid_grad_at => sigmoid_grad_body(x: *const f32, g: *const f32, out: *mut f32, len: usize));
simd_entry!(fn silu_grad_at => silu_grad_body(x: *const f32, g: *const f32, out: *mut f32, len: usize));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{assert_close, fill, pool};
    use proptest::prelude::*;

    /// exp rtol 3e-7: `exp` is within 2 ulp (2.4e-7) of the exact value, and the reference is the
    /// exact value rounded once. sigmoid and silu: that e^(−|x|), then 1 + t, the division and at
    /// most two products, each rounding by 6e-8: ≤ 6e-7 in all, so rtol 1e-6. atol 1e-40: for
    /// x < −87, t is subnormal and only absolutely precise (≈ 1e-45 · |x|).
    const EXP_RTOL: f32 = 3e-7;
    const RTOL: f32 = 1e-6;
    const ATOL: f32 = 1e-40;

    /// The gradients take `1 + x(1 − σ)`, which cancels near x ≈ −1.28: its absolute error is a
    /// few ulp of |x(1 − σ)| (≈ 1e-6 for |x| < 2, where the cancellation happens), times σ·g.
    /// So they are compared with rtol 2e-6 plus atol 2e-6·|g|, checked per element.
    const GRAD_TOL: f32 = 2e-6;

    /// Edge lengths around the lane widths, and lengths past the parallel threshold.
    fn len() -> impl Strategy<Value = usize> {
        prop_oneof![
            3 => prop::sample::select(vec![0usize, 1, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 1000, 1031]),
            1 => 0usize..3000,
            1 => prop::sample::select(vec![(1usize << 15) + 17, 70_000]),
        ]
    }

    fn unary_cases(x: &[f32], what: &str) -> Result<(), TestCaseError> {
        type F = fn(Level, &[f32], &mut [f32]);
        type R = fn(&[f32], &mut [f32]);
        let ops: [(&str, F, R, f32); 3] = [
            ("exp", exp_with, exp_ref, EXP_RTOL),
            ("sigmoid", sigmoid_with, sigmoid_ref, RTOL),
            ("silu", silu_with, silu_ref, RTOL),
        ];
        for (name, op, op_ref, rtol) in ops {
            let mut want = vec![0f32; x.len()];
            op_ref(x, &mut want);
            for level in cpu::available() {
                for t in [1, 2] {
                    let mut got = vec![f32::NAN; x.len()];
                    pool(t).install(|| op(level, x, &mut got));
                    let w = format!("{name} {level:?} t{t} {what}");
                    assert_close(&got, &want, ATOL, rtol, &w)?;
                }
            }
        }
        Ok(())
    }

    fn grad_cases(x: &[f32], g: &[f32], what: &str) -> Result<(), TestCaseError> {
        type F = fn(Level, &[f32], &[f32], &mut [f32]);
        type R = fn(&[f32], &[f32], &mut [f32]);
        let ops: [(&str, F, R); 2] = [
            ("sigmoid_grad", sigmoid_grad_with, sigmoid_grad_ref),
            ("silu_grad", silu_grad_with, silu_grad_ref),
        ];
        for (name, op, op_ref) in ops {
            let mut want = vec![0f32; x.len()];
            op_ref(x, g, &mut want);
            for level in cpu::available() {
                for t in [1, 2] {
                    let mut got = vec![f32::NAN; x.len()];
                    pool(t).install(|| op(level, x, g, &mut got));
                    for i in 0..x.len() {
                        let atol = GRAD_TOL * g[i].abs() + ATOL;
                        let w = format!("{name} {level:?} t{t} {what} x={} g={}", x[i], g[i]);
                        assert_close(&got[i..=i], &want[i..=i], atol, GRAD_TOL, &w)?;
                    }
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn ops_match_ref(n in len(), scale in prop::sample::select(vec![4.0f32, 40.0, 250.0]), seed: u64) {
            let x = fill(n, seed, scale);
            let g = fill(n, !seed, 6.0);
            let what = format!("n {n} scale {scale}");
            unary_cases(&x, &what)?;
            grad_cases(&x, &g, &what)?;
        }
    }

    /// Large |x|, infinities, signed zeros, NaN and the subnormal range, each at every lane
    /// position of a vector and in the tail.
    #[test]
    fn edge_values_match_ref() {
        let special = [
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            1.0,
            -1.0,
            -1.278_464_5,
            20.0,
            -20.0,
            87.0,
            88.7,
            88.8,
            -87.5,
            -103.0,
            -104.5,
            -150.0,
            1000.0,
            -1000.0,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let x: Vec<f32> = special
            .iter()
            .cycle()
            .take(special.len() * 17)
            .copied()
            .collect();
        let g: Vec<f32> = (0..x.len()).map(|i| [1.0, -2.5, 0.0, 3.0][i % 4]).collect();
        unary_cases(&x, "edge values").unwrap();
        grad_cases(&x, &g, "edge values").unwrap();
    }

    /// Values worked out by hand: σ(0) = 1/2, σ'(0) = 1/4, silu'(0) = 1/2, and the limits.
    #[test]
    fn known_values() {
        let inf = f32::INFINITY;
        for level in cpu::available() {
            let x = [0.0, 50.0, -50.0, inf, -inf, f32::NAN];
            let mut y = [0f32; 6];
            sigmoid_with(level, &x, &mut y);
            assert_eq!(&y[..2], &[0.5, 1.0], "{level:?}");
            // σ(−50) = e^−50 / (1 + e^−50) ≈ 1.93e-22, kept instead of cancelling to 0.
            assert!(
                (y[2] / 1.928_749_8e-22 - 1.0).abs() < 1e-6,
                "{level:?} {}",
                y[2]
            );
            assert_eq!(&y[3..5], &[1.0, 0.0], "{level:?}");
            assert!(y[5].is_nan(), "{level:?}");
            silu_with(level, &x, &mut y);
            assert_eq!(&y[..2], &[0.0, 50.0], "{level:?}");
            assert_eq!(y[3], inf, "{level:?}");
            assert!(y[4].is_nan() && y[5].is_nan(), "{level:?}");
            exp_with(level, &x[..3], &mut y[..3]);
            assert_eq!(y[0], 1.0, "{level:?}");
            let g = [4.0; 6];
            sigmoid_grad_with(level, &x, &g, &mut y);
            assert_eq!(y[0], 1.0, "{level:?}");
            silu_grad_with(level, &x, &g, &mut y);
            assert_eq!(y[0], 2.0, "{level:?}");
            // silu'(50) = σ(1 + 50·(1 − σ)) = 1 to f32 precision; silu'(−50) ≈ −49·e^−50 ≈ 0.
            assert_eq!(y[1], 4.0, "{level:?}");
            assert!(y[2] < 0.0 && y[2] > -1e-18, "{level:?} {}", y[2]);
        }
    }

    #[test]
    #[should_panic(expected = "silu_grad: gradient length")]
    fn bad_gradient_length_panics() {
        silu_grad(&[0.0; 4], &[0.0; 3], &mut [0.0; 4]);
    }
}
