//! The fused transformer ops against independent references: `matmul_nt*` against
//! `x.matmul(wᵀ)`, `rms_norm` and `silu_mul` against their compositions of primitive ops, `rope`
//! against the rotation written out per element, `causal_attention` against a per-head loop with
//! a `-inf` mask and a primitive softmax. References run in f64 on the inputs' exact values
//! (f32, or bf16/f16 weights, widened). Shapes cross the edge cases (0, 1, primes, the f32 SIMD
//! widths 8 and 16 ± 1, the 16-row GEMV/GEMM switch) plus one large case per op, in f32 and f64,
//! with strided inputs. Also `rope_backward ∘ rope = id`, and every misuse returns `Err` (no
//! panic).

use proptest::prelude::*;
use shears_tensor::test_util::first_mismatch;
use shears_tensor::{DType, RopeLayout, RopeTables, Tensor};

const F32: DType = DType::F32;
const F64: DType = DType::F64;

/// A dim size from the edge cases.
fn edge() -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => Just(0usize),
        2 => Just(1usize),
        3 => 2usize..6,
        4 => prop::sample::select(vec![7usize, 8, 9, 13, 15, 16, 17, 31, 33]),
    ]
}

fn float() -> impl Strategy<Value = DType> {
    prop_oneof![Just(F32), Just(F64)]
}

/// Normal values in `dtype` (rounded from f64) and the same values exactly, widened to f64.
fn randn(shape: &[usize], std: f64, dtype: DType, seed: u64) -> (Tensor, Tensor) {
    let t = Tensor::randn(shape, 0.0, std, F64, seed)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let r = t.to_dtype(F64).unwrap();
    (t, r)
}

/// `t` (shape `[a, b]`) rebuilt as the transposed view of a contiguous `[b, a]` tensor: same
/// values, non-unit last stride.
fn strided(t: &Tensor) -> Tensor {
    let v = t.t().unwrap().contiguous().unwrap().t().unwrap();
    assert!(v.elem_count() < 2 || !v.is_contiguous() || v.dims().contains(&1));
    v
}

/// `|got − want| ≤ atol + rtol·|want|` elementwise, same dims.
fn close(got: &Tensor, want: &Tensor, atol: f64, rtol: f64) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.dims(), want.dims());
    let (g, w) = (got.to_vec_f64(), want.to_vec_f64());
    if let Some((i, a, b)) = first_mismatch(&g, &w, atol, rtol) {
        return Err(TestCaseError::fail(format!(
            "element {i} of {:?} ({:?}): got {a}, want {b}",
            got.dims(),
            got.dtype()
        )));
    }
    Ok(())
}

/// `|got − want| ≤ eps·(1 + mag)` elementwise, `mag` the magnitude of the terms summed into each
/// element (so a long dot product gets a tolerance proportional to what it adds up).
fn close_mag(got: &Tensor, want: &Tensor, mag: &Tensor, eps: f64) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.dims(), want.dims());
    let (g, w, m) = (got.to_vec_f64(), want.to_vec_f64(), mag.to_vec_f64());
    for i in 0..g.len() {
        let ok = (g[i] - w[i]).abs() <= eps * (1.0 + m[i]);
        prop_assert!(
            ok,
            "element {i}: got {}, want {} (mag {})",
            g[i],
            w[i],
            m[i]
        );
    }
    Ok(())
}

// ---- matmul_nt ----

/// `x · Wᵀ` in f64 through the primitive matmul, and `|x| · |W|ᵀ`; `x: (.., k)`, `w: [n, k]`.
fn nt_ref(x: &Tensor, w: &Tensor) -> (Tensor, Tensor) {
    let (k, n) = (w.dims()[1], w.dims()[0]);
    let m: usize = x.dims()[..x.rank() - 1].iter().product();
    let mut out = x.dims().to_vec();
    *out.last_mut().unwrap() = n;
    if m * n == 0 {
        let z = Tensor::zeros(out, F64).unwrap();
        return (z.clone(), z);
    }
    let (x2, w) = (x.reshape([m, k]).unwrap(), w.to_dtype(F64).unwrap());
    let y = x2.matmul(&w.t().unwrap()).unwrap();
    let a = x2
        .abs()
        .unwrap()
        .matmul(&w.abs().unwrap().t().unwrap())
        .unwrap();
    (y.reshape(&out[..]).unwrap(), a.reshape(out).unwrap())
}

/// Relative accuracy expected of `x · Wᵀ` computed with f32 (or f64) accumulation.
fn nt_eps(dtype: DType) -> f64 {
    if dtype == F64 {
        1e-13
    } else {
        2e-6
    }
}

/// The accuracy of `x · Wᵀ` with `w`'s dtype: bf16 weights may run on the bf16 matrix engine
/// (more than 16 rows, on a CPU with AMX or AVX512-BF16), which rounds `x` to bf16 as well: up to
/// 2⁻⁹ of each term's magnitude, so 2⁻⁸ of the sum's.
fn nt_eps_w(dtype: DType, w: DType) -> f64 {
    if w == DType::BF16 {
        1.0 / 256.0
    } else {
        nt_eps(dtype)
    }
}

/// The weight dtypes `matmul_nt` takes for f32 activations.
const WEIGHTS_F32: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn matmul_nt_equals_matmul_of_the_transpose(
        batch in 0usize..3, m in edge(), k in edge(), n in edge(), wd in 0usize..4,
        strided_x: bool, strided_w: bool, seed: u64,
    ) {
        let (xd, wdt) = if wd == 3 { (F64, F64) } else { (F32, WEIGHTS_F32[wd]) };
        let xshape: Vec<usize> = if batch == 0 { vec![m, k] } else { vec![batch, m, k] };
        let (mut x, x64) = randn(&xshape, 1.0, xd, seed);
        let (mut w, w64) = randn(&[n, k], 0.5, wdt, seed ^ 1);
        if strided_x && batch == 0 { x = strided(&x); }
        if strided_w { w = strided(&w); }
        let (want, mag) = nt_ref(&x64, &w64);
        let y = x.matmul_nt(&w).unwrap();
        prop_assert_eq!(y.dtype(), xd);
        close_mag(&y, &want, &mag, nt_eps_w(xd, wdt))?;

        // A block of rows of W is the same block of the full product's columns.
        let (r0, r1) = (n / 3, n - n / 4);
        let block = x.matmul_nt_rows(&w, r0..r1).unwrap();
        let last = xshape.len() - 1;
        close_mag(&block, &want.narrow(last, r0, r1 - r0).unwrap(),
                  &mag.narrow(last, r0, r1 - r0).unwrap(), nt_eps_w(xd, wdt))?;

        // Several weights with one input (the fused region for ≤ 16 rows), each = its own product,
        // also with weights of mixed dtypes (one product each).
        let (w2, w2_64) = randn(&[n + 1, k], 0.5, wdt, seed ^ 2);
        let w3dt = if xd == F32 { DType::BF16 } else { F64 };
        let (w3, w3_64) = randn(&[2, k], 0.5, w3dt, seed ^ 3);
        let ys = x.matmul_nt_many(&[&w, &w2, &w3]).unwrap();
        prop_assert_eq!(ys.len(), 3);
        for ((y, w64), d) in ys.iter().zip([&w64, &w2_64, &w3_64]).zip([wdt, wdt, w3dt]) {
            let (want, mag) = nt_ref(&x64, w64);
            close_mag(y, &want, &mag, nt_eps_w(xd, d))?;
        }
        prop_assert!(x.matmul_nt_many(&[]).unwrap().is_empty());
    }
}

/// One large product per path: the decode GEMV (1 row, a long k) and the packed GEMM (40 rows),
/// with every weight dtype.
#[test]
fn matmul_nt_large() {
    for (m, k, n) in [(1, 1031, 70), (40, 257, 130)] {
        for wdt in WEIGHTS_F32 {
            let (x, x64) = randn(&[m, k], 1.0, F32, 7);
            let (w, w64) = randn(&[n, k], 0.1, wdt, 8);
            let (want, mag) = nt_ref(&x64, &w64);
            let eps = if wdt == DType::BF16 && m > 16 {
                nt_eps_w(F32, wdt)
            } else {
                4e-6
            };
            close_mag(&x.matmul_nt(&w).unwrap(), &want, &mag, eps).unwrap();
            let ys = x.matmul_nt_many(&[&w, &w]).unwrap();
            close_mag(&ys[1], &want, &mag, eps).unwrap();
        }
    }
}

// ---- rms_norm, silu_mul ----

/// RMSNorm from primitives: `x / sqrt(mean(x²) + eps) · g`.
fn rms_norm_ref(x: &Tensor, g: &Tensor, eps: f64) -> Tensor {
    if x.elem_count() == 0 {
        return x.clone();
    }
    let rms = x.sqr().unwrap().mean(-1, true).unwrap();
    let rms = rms.add_scalar(eps).unwrap().sqrt().unwrap();
    x.div(&rms).unwrap().mul(g).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn rms_norm_equals_its_composition(
        lead in 0usize..3, rows in edge(), n in edge(), dtype in float(), scale_pow in -3i32..3,
        view: bool, seed: u64,
    ) {
        // x spans magnitudes 1e-3..1e2 so that eps matters at the small end.
        let std = 10f64.powi(scale_pow);
        let eps = 1e-5;
        let shape: Vec<usize> = if lead == 0 { vec![rows, n] } else { vec![lead, rows, n] };
        let (mut x, x64) = randn(&shape, std, dtype, seed);
        let (g, g64) = randn(&[n], 1.0, dtype, seed ^ 1);
        if view && lead == 0 { x = strided(&x); }
        let want = rms_norm_ref(&x64, &g64, eps);
        let (atol, rtol) = if dtype == F64 { (1e-14, 1e-12) } else { (1e-7, 4e-6) };
        close(&x.rms_norm(&g, eps).unwrap(), &want, atol, rtol)?;
    }

    #[test]
    fn silu_mul_equals_silu_times_up(
        a in edge(), b in edge(), dtype in float(), view: bool, seed: u64,
    ) {
        // Gates reach ±20, where σ saturates.
        let (mut gate, g64) = randn(&[a, b], 6.0, dtype, seed);
        let (up, u64_) = randn(&[a, b], 1.0, dtype, seed ^ 1);
        if view { gate = strided(&gate); }
        let want = g64.silu().unwrap().mul(&u64_).unwrap();
        let (atol, rtol) = if dtype == F64 { (1e-14, 1e-12) } else { (1e-6, 4e-6) };
        close(&gate.silu_mul(&up).unwrap(), &want, atol, rtol)?;
    }
}

#[test]
fn rms_norm_and_silu_mul_large() {
    // 300 rows (the parallel row split) of 4099 (a prime) columns; 100_003 (prime) gates.
    let (x, x64) = randn(&[300, 4099], 1.0, F32, 11);
    let (g, g64) = randn(&[4099], 1.0, F32, 12);
    let y = x.rms_norm(&g, 1e-6).unwrap();
    close(&y, &rms_norm_ref(&x64, &g64, 1e-6), 1e-6, 2e-5).unwrap();
    let (ga, ga64) = randn(&[100_003], 4.0, F32, 13);
    let (u, u64_) = randn(&[100_003], 1.0, F32, 14);
    let want = ga64.silu().unwrap().mul(&u64_).unwrap();
    close(&ga.silu_mul(&u).unwrap(), &want, 1e-6, 4e-6).unwrap();
}

// ---- rope ----

const THETA: f64 = 10000.0;

/// RoPE written out per element (Su et al. 2021, eq. 34): in head `h` of row `(b, s)`, pair
/// `(ia, ib)` with index `i` becomes `(a·cos − b·sin, b·cos + a·sin)` at angle
/// `(offset + s)·θ^(−2i/d)`; pairs `(i, i + d/2)` (HalfSplit) or `(2i, 2i + 1)` (Interleaved).
fn rope_ref(x: &Tensor, layout: RopeLayout, offset: usize) -> Tensor {
    let d = x.dims().to_vec();
    let (hd, half) = (d[3], d[3] / 2);
    let v = x.to_vec_f64();
    let mut out = v.clone();
    for (row, pos) in (0..d[0] * d[1]).map(|r| (r, offset + r % d[1])) {
        for h in 0..d[2] {
            let base = (row * d[2] + h) * hd;
            for i in 0..half {
                let (ia, ib) = match layout {
                    RopeLayout::HalfSplit => (i, i + half),
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                };
                let theta = (THETA as f32 as f64).powf(-2.0 * i as f64 / hd as f64);
                let (s, c) = (pos as f64 * theta).sin_cos();
                let (a, b) = (v[base + ia], v[base + ib]);
                out[base + ia] = a * c - b * s;
                out[base + ib] = b * c + a * s;
            }
        }
    }
    Tensor::from_vec(out, d).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn rope_equals_the_rotation_formula(
        b in 0usize..3, t in edge(), heads in 0usize..4,
        half in prop::sample::select(vec![1usize, 2, 3, 4, 7, 8, 9, 16, 17]),
        interleaved: bool, offset in prop::sample::select(vec![0usize, 3, 100]),
        spare in 0usize..3, dtype in float(), view: bool, seed: u64,
    ) {
        let layout = if interleaved { RopeLayout::Interleaved } else { RopeLayout::HalfSplit };
        let hd = 2 * half;
        // The last position may be the tables' last (spare = 0).
        let tables = RopeTables::new(hd, offset + t + spare, THETA, layout).unwrap();
        let (x, x64) = randn(&[b, heads, t, hd], 1.0, dtype, seed);
        // (batch, heads, seq, hd) → (batch, seq, heads, hd): a strided view, or a copy.
        let (x, x64) = (x.permute(&[0, 2, 1, 3]).unwrap(), x64.permute(&[0, 2, 1, 3]).unwrap());
        let x = if view { x } else { x.contiguous().unwrap() };
        let want = rope_ref(&x64, layout, offset);
        let (atol, rtol) = if dtype == F64 { (1e-13, 1e-12) } else { (1e-6, 2e-6) };
        let y = x.rope(&tables, offset).unwrap();
        close(&y, &want, atol, rtol)?;
        // The gradient helper is the inverse rotation.
        close(&y.rope_backward(&tables, offset).unwrap(), &x64, 2.0 * atol, 2.0 * rtol)?;
    }
}

#[test]
fn rope_large() {
    // 2 × 300 positions from offset 1000 (the parallel split), 8 heads of 128.
    for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
        let tables = RopeTables::new(128, 2048, THETA, layout).unwrap();
        let (x, x64) = randn(&[2, 300, 8, 128], 1.0, F32, 21);
        let y = x.rope(&tables, 1000).unwrap();
        close(&y, &rope_ref(&x64, layout, 1000), 2e-6, 2e-6).unwrap();
        close(&y.rope_backward(&tables, 1000).unwrap(), &x64, 4e-6, 4e-6).unwrap();
    }
}

// ---- causal_attention ----

/// Causal GQA attention head by head from primitives: for query head `h` and its KV head
/// `g = h / (heads / kv_heads)`, `softmax(q_h·K_gᵀ·scale` with `-inf` above the diagonal`)·V_g`.
/// All f64.
fn attention_ref(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
    let (d, kvh) = (q.dims().to_vec(), k.dims()[2]);
    let (b, t, h, hd) = (d[0], d[1], d[2], d[3]);
    let mut out = vec![0f64; b * t * h * hd];
    if out.is_empty() {
        return Tensor::from_vec(out, d).unwrap();
    }
    let above: Vec<u8> = (0..t * t).map(|i| u8::from(i % t > i / t)).collect();
    let mask = Tensor::from_vec(above, [t, t]).unwrap();
    let head = |x: &Tensor, bi: usize, hh: usize| {
        let x = x.narrow(0, bi, 1).unwrap().narrow(2, hh, 1).unwrap();
        x.contiguous().unwrap().reshape([t, hd]).unwrap()
    };
    for bi in 0..b {
        for hh in 0..h {
            let g = hh / (h / kvh);
            let scores = head(q, bi, hh)
                .matmul(&head(k, bi, g).t().unwrap())
                .unwrap();
            let scores = scores.mul_scalar(scale).unwrap();
            let p = scores.masked_fill(&mask, f64::NEG_INFINITY).unwrap();
            let o = p.softmax(1).unwrap().matmul(&head(v, bi, g)).unwrap();
            for (s, row) in o.to_vec_f64().chunks(hd).enumerate() {
                let at = ((bi * t + s) * h + hh) * hd;
                out[at..at + hd].copy_from_slice(row);
            }
        }
    }
    Tensor::from_vec(out, d).unwrap()
}

/// q `(b, t, kvh·groups, hd)`, k, v `(b, t, kvh, hd)` in `dtype` and in f64; given as strided
/// views of `(b, heads, t, hd)` tensors when `view`.
#[allow(clippy::type_complexity)]
fn qkv(
    [b, t, kvh, groups, hd]: [usize; 5],
    dtype: DType,
    view: bool,
    seed: u64,
) -> ([Tensor; 3], [Tensor; 3]) {
    let mk = |heads: usize, s: u64| {
        let (x, x64) = randn(&[b, heads, t, hd], 1.0, dtype, s);
        let p = |x: Tensor| x.permute(&[0, 2, 1, 3]).unwrap();
        let x = if view {
            p(x)
        } else {
            p(x).contiguous().unwrap()
        };
        (x, p(x64))
    };
    let ((q, q64), (k, k64), (v, v64)) =
        (mk(kvh * groups, seed), mk(kvh, seed ^ 1), mk(kvh, seed ^ 2));
    ([q, k, v], [q64, k64, v64])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn causal_attention_equals_a_per_head_loop(
        b in 0usize..3, t in prop::sample::select(vec![0usize, 1, 2, 3, 5, 7, 16, 17]),
        kvh in 1usize..4, groups in prop::sample::select(vec![1usize, 2, 3]),
        hd in prop::sample::select(vec![0usize, 1, 2, 7, 8, 16, 17]),
        dtype in float(), view: bool, seed: u64,
    ) {
        let ([q, k, v], [q64, k64, v64]) = qkv([b, t, kvh, groups, hd], dtype, view, seed);
        let scale = 1.0 / (hd.max(1) as f64).sqrt();
        let want = attention_ref(&q64, &k64, &v64, scale);
        let got = Tensor::causal_attention(&q, &k, &v, scale).unwrap();
        prop_assert_eq!(got.dtype(), dtype);
        let (atol, rtol) = if dtype == F64 { (1e-13, 1e-12) } else { (5e-6, 1e-5) };
        close(&got, &want, atol, rtol)?;
    }
}

/// GQA with 3 and 1 query heads per KV head, and one large case (the parallel path).
#[test]
fn causal_attention_gqa_and_large() {
    for (dims, dtype) in [
        ([2, 6, 2, 3, 8], F64),
        ([2, 6, 2, 3, 8], F32),
        ([1, 9, 3, 1, 4], F32),
        ([1, 65, 2, 4, 64], F32),
    ] {
        let ([q, k, v], [q64, k64, v64]) = qkv(dims, dtype, false, 31);
        let scale = 1.0 / (dims[4] as f64).sqrt();
        let want = attention_ref(&q64, &k64, &v64, scale);
        let got = Tensor::causal_attention(&q, &k, &v, scale).unwrap();
        let (atol, rtol) = if dtype == F64 {
            (1e-13, 1e-12)
        } else {
            (1e-5, 1e-5)
        };
        close(&got, &want, atol, rtol).unwrap();
    }
}

// ---- errors ----

/// Every misuse is an `Err`, never a panic.
#[test]
fn misuse_returns_errors() {
    let t = |shape: &[usize], dtype: DType| Tensor::zeros(shape, dtype).unwrap();
    let x = t(&[2, 3], F32);
    // matmul_nt: in-features, weight rank, rank-0 x, dtypes, row ranges.
    assert!(x.matmul_nt(&t(&[4, 5], F32)).is_err());
    assert!(x.matmul_nt(&t(&[3], F32)).is_err());
    assert!(t(&[], F32).matmul_nt(&t(&[4, 1], F32)).is_err());
    assert!(x.matmul_nt(&t(&[4, 3], F64)).is_err());
    assert!(t(&[2, 3], F64).matmul_nt(&t(&[4, 3], F32)).is_err());
    assert!(t(&[2, 3], DType::BF16)
        .matmul_nt(&t(&[4, 3], DType::BF16))
        .is_err());
    assert!(t(&[2, 3], DType::I64).matmul_nt(&t(&[4, 3], F32)).is_err());
    assert!(x.matmul_nt_rows(&t(&[4, 3], F32), 2..5).is_err());
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = 3..2;
    assert!(x.matmul_nt_rows(&t(&[4, 3], F32), backwards).is_err());
    assert!(x
        .matmul_nt_many(&[&t(&[4, 3], F32), &t(&[4, 2], F32)])
        .is_err());
    // rms_norm and its backward: gain shape and dtype, activation dtype, upstream shape.
    assert!(x.rms_norm(&t(&[4], F32), 1e-5).is_err());
    assert!(x.rms_norm(&t(&[3], F64), 1e-5).is_err());
    assert!(t(&[], F32).rms_norm(&t(&[1], F32), 1e-5).is_err());
    assert!(t(&[2, 3], DType::F16)
        .rms_norm(&t(&[3], DType::F16), 1e-5)
        .is_err());
    assert!(x
        .rms_norm_backward(&t(&[3], F32), 1e-5, &t(&[3, 2], F32))
        .is_err());
    assert!(x
        .rms_norm_backward(&t(&[3], F32), 1e-5, &t(&[2, 3], F64))
        .is_err());
    // silu_mul and its backward.
    assert!(x.silu_mul(&t(&[3, 2], F32)).is_err());
    assert!(x.silu_mul(&t(&[2, 3], F64)).is_err());
    assert!(t(&[2], DType::BF16)
        .silu_mul(&t(&[2], DType::BF16))
        .is_err());
    assert!(x.silu_mul_backward(&x, &t(&[2, 2], F32)).is_err());
    // rope: tables, rank, head width, positions beyond the tables (also where offset + seq
    // overflows).
    assert!(RopeTables::new(7, 8, THETA, RopeLayout::HalfSplit).is_err());
    assert!(RopeTables::new(0, 8, THETA, RopeLayout::HalfSplit).is_err());
    let tables = RopeTables::new(4, 8, THETA, RopeLayout::HalfSplit).unwrap();
    let xr = t(&[1, 3, 2, 4], F32);
    assert!(xr.rope(&tables, 5).is_ok());
    assert!(xr.rope(&tables, 6).is_err());
    assert!(xr.rope_backward(&tables, 6).is_err());
    assert!(xr.rope(&tables, usize::MAX).is_err());
    assert!(t(&[1, 9, 1, 4], F64).rope(&tables, 0).is_err());
    assert!(t(&[3, 2, 4], F32).rope(&tables, 0).is_err());
    assert!(t(&[1, 3, 2, 6], F32).rope(&tables, 0).is_err());
    assert!(t(&[1, 3, 2, 4], DType::F16).rope(&tables, 0).is_err());
    // causal_attention and its backward.
    let att = |q: &[usize], k: &[usize], v: &[usize], dt: [DType; 3]| {
        Tensor::causal_attention(&t(q, dt[0]), &t(k, dt[1]), &t(v, dt[2]), 0.5)
    };
    let f = [F32; 3];
    assert!(att(&[1, 2, 4, 8], &[1, 2, 2, 8], &[1, 2, 2, 8], f).is_ok());
    assert!(att(&[1, 2, 4, 8], &[1, 2, 3, 8], &[1, 2, 3, 8], f).is_err()); // 3 ∤ 4
    assert!(att(&[1, 2, 4, 8], &[1, 2, 0, 8], &[1, 2, 0, 8], f).is_err());
    assert!(att(&[1, 2, 4, 8], &[1, 3, 2, 8], &[1, 3, 2, 8], f).is_err()); // seq
    assert!(att(&[1, 2, 4, 8], &[1, 2, 2, 4], &[1, 2, 2, 4], f).is_err()); // head_dim
    assert!(att(&[1, 2, 4, 8], &[1, 2, 2, 8], &[1, 2, 1, 8], f).is_err()); // k ≠ v
    assert!(att(&[2, 2, 4, 8], &[1, 2, 2, 8], &[1, 2, 2, 8], f).is_err()); // batch
    assert!(att(&[2, 4, 8], &[2, 2, 8], &[2, 2, 8], f).is_err()); // rank
    assert!(att(&[1, 2, 4, 8], &[1, 2, 2, 8], &[1, 2, 2, 8], [F32, F64, F32]).is_err());
    assert!(att(&[1, 2, 2, 8], &[1, 2, 2, 8], &[1, 2, 2, 8], [DType::F16; 3]).is_err());
    let (q, k) = (t(&[1, 2, 4, 8], F32), t(&[1, 2, 2, 8], F32));
    assert!(Tensor::causal_attention_backward(&q, &k, &k, &t(&[1, 2, 2, 8], F32), 0.5).is_err());
    assert!(Tensor::causal_attention_backward(&q, &k, &k, &t(&[1, 2, 4, 8], F64), 0.5).is_err());
    assert!(Tensor::causal_attention_backward(&q, &k, &k, &q, 0.5).is_ok());
}

/// `ln Σ exp` of one row, in f64 by definition (shifted by the row's max).
fn logsumexp_def(row: &[f64]) -> f64 {
    if row.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + row.iter().map(|&v| (v - m).exp()).sum::<f64>().ln()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `logsumexp` over rows of the edge-case lengths (and one long, vocabulary-sized row), f32
    /// and f64, against the definition; the row maximum may sit anywhere, including the tail past
    /// the last full group of 16.
    #[test]
    fn logsumexp_matches_definition(
        rows in edge(),
        n in prop_oneof![4 => edge(), 1 => Just(49_153usize)],
        dtype in float(),
        peak in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let (mut x, _) = randn(&[rows, n], 3.0, F64, seed);
        if rows * n > 0 {
            // A large value somewhere, so the max is not near the others.
            let mut v = x.to_vec::<f64>().unwrap();
            let at = peak.index(v.len());
            v[at] = 40.0;
            x = Tensor::from_vec(v, [rows, n]).unwrap();
        }
        let x = x.to_dtype(dtype).unwrap();
        let exact = x.to_dtype(F64).unwrap().to_vec::<f64>().unwrap();
        let got = x.logsumexp().unwrap();
        prop_assert_eq!(got.dims(), &[rows][..]);
        let got = got.to_vec::<f64>().unwrap();
        for r in 0..rows {
            let want = logsumexp_def(&exact[r * n..(r + 1) * n]);
            let g = got[r];
            if want.is_finite() {
                prop_assert!((g - want).abs() <= 1e-5 * want.abs().max(1.0), "row {}: {} vs {}", r, g, want);
            } else {
                prop_assert_eq!(g, want);
            }
        }
    }
}

/// Non-finite rows: a NaN anywhere (head, a full group of 16, the tail) gives NaN; a row of
/// `-inf` gives `-inf`; `+inf` without NaN gives `+inf`.
#[test]
fn logsumexp_non_finite_rows() {
    for dtype in [F32, F64] {
        for n in [1usize, 15, 16, 17, 40] {
            for at in [0, n / 2, n - 1] {
                let mut v = vec![0.5f64; n];
                v[at] = f64::NAN;
                let t = Tensor::from_vec(v, [1, n])
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                assert!(
                    t.logsumexp().unwrap().to_vec::<f64>().unwrap()[0].is_nan(),
                    "n {n} at {at}"
                );
                let mut v = vec![f64::NEG_INFINITY; n];
                let t = Tensor::from_vec(v.clone(), [1, n])
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                assert_eq!(
                    t.logsumexp().unwrap().to_vec::<f64>().unwrap()[0],
                    f64::NEG_INFINITY
                );
                v[at] = f64::INFINITY;
                let t = Tensor::from_vec(v, [1, n])
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                assert_eq!(
                    t.logsumexp().unwrap().to_vec::<f64>().unwrap()[0],
                    f64::INFINITY
                );
            }
        }
    }
}
