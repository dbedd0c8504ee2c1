//! Elementwise ops of the LLaMA MLP and residual stream: SwiGLU (Shazeer 2020, "GLU Variants
//! Improve Transformer", eq. 6: `FFN = (Swish₁(xW) ⊙ xV) W₂`, where Swish₁ is SiLU,
//! `silu(g) = g·σ(g)`, Elfwing et al. 2018), and add/mul with a row broadcast for biases, scales
//! and residuals.
//!
//! `σ(g)` is evaluated as `1/(1+t)` for `g ≥ 0` and `t/(1+t)` for `g < 0`, `t = e^(−|g|)`: the
//! exponential never overflows, so large negative gates give their tiny (or zero) products
//! instead of `g/inf`.

use super::simd::{exp, load_n, par_rows, simd_entry, store_n, usable, Simd, PAR_EXP, PAR_STREAM};
use crate::cpu::{self, Level};

/// `out = silu(gate) ⊙ up` (SwiGLU). gate, up, out: `[n]` (any shape, same length), at the
/// detected SIMD level; in parallel when large.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_with(cpu::level(), gate, up, out)
}

/// [`silu_mul`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn silu_mul_with(level: Level, gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: gate and up lengths differ");
    assert_eq!(gate.len(), out.len(), "silu_mul: out length");
    run(level, Some(gate), up, out, silu_mul_at, PAR_EXP)
}

/// Plain reference for [`silu_mul`], in f64 rounded once.
pub fn silu_mul_ref(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert_eq!(
        gate.len(),
        up.len(),
        "silu_mul_ref: gate and up lengths differ"
    );
    assert_eq!(gate.len(), out.len(), "silu_mul_ref: out length");
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let g = g as f64;
        *o = (g / (1.0 + (-g).exp()) * u as f64) as f32;
    }
}

/// `out[i] = a[i] + b[i mod b.len()]`. a, out: `[rows, n]`; b: `[rows, n]` or `[n]` (broadcast
/// over rows). At the detected SIMD level; in parallel when large.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    add_with(cpu::level(), a, b, out)
}

/// [`add`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn add_with(level: Level, a: &[f32], b: &[f32], out: &mut [f32]) {
    check("add", a.len(), b.len(), out.len());
    run(level, Some(a), b, out, add_at, PAR_STREAM)
}

/// Plain reference for [`add`].
pub fn add_ref(a: &[f32], b: &[f32], out: &mut [f32]) {
    check("add_ref", a.len(), b.len(), out.len());
    for (i, (o, &x)) in out.iter_mut().zip(a).enumerate() {
        *o = x + b[i % b.len()];
    }
}

/// `out[i] = a[i] · b[i mod b.len()]`. a, out: `[rows, n]`; b: `[rows, n]` or `[n]` (broadcast
/// over rows). At the detected SIMD level; in parallel when large.
pub fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    mul_with(cpu::level(), a, b, out)
}

/// [`mul`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn mul_with(level: Level, a: &[f32], b: &[f32], out: &mut [f32]) {
    check("mul", a.len(), b.len(), out.len());
    run(level, Some(a), b, out, mul_at, PAR_STREAM)
}

/// Plain reference for [`mul`].
pub fn mul_ref(a: &[f32], b: &[f32], out: &mut [f32]) {
    check("mul_ref", a.len(), b.len(), out.len());
    for (i, (o, &x)) in out.iter_mut().zip(a).enumerate() {
        *o = x * b[i % b.len()];
    }
}

/// `a[i] += b[i mod b.len()]` in place (the residual add). a: `[rows, n]`; b: `[rows, n]` or
/// `[n]`. At the detected SIMD level; in parallel when large.
pub fn add_assign(a: &mut [f32], b: &[f32]) {
    add_assign_with(cpu::level(), a, b)
}

/// [`add_assign`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn add_assign_with(level: Level, a: &mut [f32], b: &[f32]) {
    check("add_assign", a.len(), b.len(), a.len());
    run(level, None, b, a, add_at, PAR_STREAM)
}

/// Plain reference for [`add_assign`].
pub fn add_assign_ref(a: &mut [f32], b: &[f32]) {
    check("add_assign_ref", a.len(), b.len(), a.len());
    for (i, x) in a.iter_mut().enumerate() {
        *x += b[i % b.len()];
    }
}

fn check(name: &str, a: usize, b: usize, out: usize) {
    assert_eq!(a, out, "{name}: out length");
    assert!(
        a.is_multiple_of(b),
        "{name}: b length {b} must equal a's length {a} or divide it"
    );
}

/// Broadcast rows shorter than this are repeated up to it, so vectors are not spent on tails.
const MIN_ROW: usize = 512;

type Entry = unsafe fn(Level, *const f32, *const f32, *mut f32, usize, usize);

/// `out = op(a, b)` with `b` repeated along `out`; `a` is `out` itself when `None`.
/// `min_par` is [`PAR_EXP`] for kernels that take an `exp` per element, else [`PAR_STREAM`].
fn run(level: Level, a: Option<&[f32]>, b: &[f32], out: &mut [f32], entry: Entry, min_par: usize) {
    let level = usable(level);
    // Without a broadcast, blocks index `b` at their own offset; with one, every block starts on
    // a whole row and reads `b` from its start.
    let whole = b.len() == out.len();
    let repeated;
    let (b, n) = if whole {
        (b, 1)
    } else if b.len() < MIN_ROW {
        repeated = b.repeat(MIN_ROW.div_ceil(b.len()));
        (&repeated[..], repeated.len())
    } else {
        (b, b.len())
    };
    par_rows(out, n, min_par, |r0, o| {
        let (start, p) = (r0 * n, o.as_mut_ptr());
        let ap = a.map_or(p.cast_const(), |a| a[start..start + o.len()].as_ptr());
        let (bp, period) = if whole {
            (b[start..start + o.len()].as_ptr(), o.len())
        } else {
            (b.as_ptr(), n)
        };
        // SAFETY: `level` is supported; `ap` and `p` hold `o.len()` elements and `bp` holds
        // `min(period, o.len())`; blocks start on a multiple of the period, and when `ap`
        // aliases `p` each element is read before it is written.
        unsafe { entry(level, ap, bp, p, o.len(), period) }
    });
}

/// A lane-wise binary op.
trait Op {
    unsafe fn apply<S: Simd>(a: S::V, b: S::V) -> S::V;
}

struct Add;
impl Op for Add {
    #[inline(always)]
    unsafe fn apply<S: Simd>(a: S::V, b: S::V) -> S::V {
        S::add(a, b)
    }
}

struct Mul;
impl Op for Mul {
    #[inline(always)]
    unsafe fn apply<S: Simd>(a: S::V, b: S::V) -> S::V {
        S::mul(a, b)
    }
}

struct SiluMul;
impl Op for SiluMul {
    #[inline(always)]
    unsafe fn apply<S: Simd>(g: S::V, u: S::V) -> S::V {
        let t = exp::<S>(S::sub(S::splat(0.0), S::abs(g)));
        let num = S::blend_neg(g, t, S::splat(1.0));
        S::mul(S::div(S::mul(g, num), S::add(S::splat(1.0), t)), u)
    }
}

/// `out[i] = O(a[i], b[i mod period])` for `len` elements.
#[inline(always)]
unsafe fn binary<S: Simd, O: Op>(
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    len: usize,
    period: usize,
) {
    let mut off = 0;
    while off < len {
        let m = (len - off).min(period);
        let (ap, op) = (a.add(off), out.add(off));
        let mut i = 0;
        while i < m {
            let v = (m - i).min(S::LANES);
            let y = O::apply::<S>(
                load_n::<S>(ap.add(i), v, 0.0),
                load_n::<S>(b.add(i), v, 0.0),
            );
            store_n::<S>(op.add(i), y, v);
            i += v;
        }
        off += m;
    }
}

#[inline(always)]
unsafe fn add_body<S: Simd>(a: *const f32, b: *const f32, out: *mut f32, len: usize, p: usize) {
    binary::<S, Add>(a, b, out, len, p)
}
#[inline(always)]
unsafe fn mul_body<S: Simd>(a: *const f32, b: *const f32, out: *mut f32, len: usize, p: usize) {
    binary::<S, Mul>(a, b, out, len, p)
}
#[inline(always)]
unsafe fn silu_body<S: Simd>(a: *const f32, b: *const f32, out: *mut f32, len: usize, p: usize) {
    binary::<S, SiluMul>(a, b, out, len, p)
}
simd_entry!(fn add_at => add_body(a: *const f32, b: *const f32, out: *mut f32, len: usize, p: usize));
simd_entry!(fn mul_at => mul_body(a: *const f32, b: *const f32, out: *mut f32, len: usize, p: usize));
simd_entry!(fn silu_mul_at => silu_body(a: *const f32, b: *const f32, out: *mut f32, len: usize, p: usize));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{assert_close, dim, fill, pool};
    use proptest::prelude::*;

    /// silu_mul rtol 1e-6: the reference is exact to f32 rounding; the fast path's e^(−|g|) is
    /// within 2 ulp (2.4e-7) and four roundings follow (1 + t, g·num, the division, ·up), ≤ 5e-7
    /// in all. atol 1e-40: for g < −87 the factor t is subnormal and only absolutely precise
    /// (≈ 1e-45 · |g·up|). add and mul round once, exactly as the reference: they must match bit
    /// for bit.
    const SILU_RTOL: f32 = 1e-6;
    const SILU_ATOL: f32 = 1e-40;

    fn check_all(rows: usize, n: usize, broadcast: bool, seed: u64) -> Result<(), TestCaseError> {
        let a = fill(rows * n, seed, 8.0);
        let b = fill(if broadcast { n } else { rows * n }, !seed, 8.0);
        let gate = fill(rows * n, seed ^ 7, 250.0);
        let mut want = vec![0f32; a.len()];
        for level in cpu::available() {
            for t in [1, 2] {
                let what = format!("{level:?} t{t} {rows}x{n} broadcast {broadcast}");
                let mut got = vec![f32::NAN; a.len()];
                add_ref(&a, &b, &mut want);
                pool(t).install(|| add_with(level, &a, &b, &mut got));
                assert_close(&got, &want, 0.0, 0.0, &format!("add {what}"))?;
                let mut acc = a.clone();
                pool(t).install(|| add_assign_with(level, &mut acc, &b));
                assert_close(&acc, &want, 0.0, 0.0, &format!("add_assign {what}"))?;
                mul_ref(&a, &b, &mut want);
                pool(t).install(|| mul_with(level, &a, &b, &mut got));
                assert_close(&got, &want, 0.0, 0.0, &format!("mul {what}"))?;
                if !broadcast {
                    silu_mul_ref(&gate, &b, &mut want);
                    pool(t).install(|| silu_mul_with(level, &gate, &b, &mut got));
                    assert_close(
                        &got,
                        &want,
                        SILU_ATOL,
                        SILU_RTOL,
                        &format!("silu_mul {what}"),
                    )?;
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn ops_match_ref(rows in prop_oneof![0usize..6, 200usize..300], n in dim(), broadcast: bool, seed: u64) {
            check_all(rows, n, broadcast, seed)?;
        }
    }

    #[test]
    fn large_every_level() {
        // 70 × 4096 is past PAR_STREAM, so two threads split add and mul too.
        check_all(11, 4096, false, 1).unwrap();
        check_all(70, 4096, false, 1).unwrap();
        check_all(70, 4096, true, 2).unwrap();
        // Scalar and short-row broadcasts over parallel-sized buffers.
        check_all(300_000, 1, true, 3).unwrap();
        check_all(20_011, 13, true, 4).unwrap();
    }

    #[test]
    fn silu_known_values() {
        let inf = f32::INFINITY;
        let g = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            20.0,
            1000.0,
            -1000.0,
            -100.0,
            inf,
            -inf,
            f32::NAN,
        ];
        let up = [3.0; 11];
        let s1 = 1.0 / (1.0 + (-1f64).exp());
        for level in cpu::available() {
            let mut y = [0f32; 11];
            silu_mul_with(level, &g, &up, &mut y);
            assert_eq!(&y[..2], &[0.0, 0.0], "{level:?}");
            assert!((y[2] as f64 - 3.0 * s1).abs() < 1e-6, "{level:?} {}", y[2]);
            assert!(
                (y[3] as f64 + 3.0 * (1.0 - s1)).abs() < 1e-6,
                "{level:?} {}",
                y[3]
            );
            // silu(20) = 20·(1 − 2e-9) rounds to 20; large negative gates vanish without NaN.
            assert_eq!(&y[4..6], &[60.0, 3000.0], "{level:?}");
            assert_eq!(y[6], 0.0, "{level:?}");
            assert!(y[7] <= 0.0 && y[7] > -1e-40, "{level:?} {}", y[7]);
            assert_eq!(y[8], inf, "{level:?}");
            // silu(-inf) = -inf · σ(-inf) = -inf · 0 is NaN, as in PyTorch; NaN stays NaN.
            assert!(y[9].is_nan() && y[10].is_nan(), "{level:?}");
        }
    }

    #[test]
    #[should_panic(expected = "add: b length 3 must equal a's length 8 or divide it")]
    fn bad_broadcast_panics() {
        add(&[0.0; 8], &[0.0; 3], &mut [0.0; 8]);
    }
}
