//! Causal self-attention with grouped-query heads (Vaswani et al. 2017, eq. 1; Ainslie et al.
//! 2023 for the grouping): `softmax(q·Kᵀ·scale + M)·V` per head, query head `h` reading key/value
//! head `h / (heads / kv_heads)`, `M` the decoder mask (query `s` sees keys `0..=s`). Two GEMMs
//! per head; the backward pass recomputes the probabilities instead of keeping them.
//!
//! ```
//! use shears_tensor::{DType, Tensor};
//! let q = Tensor::randn([2, 5, 4, 8], 0.0, 1.0, DType::F32, 0)?; // (batch, seq, heads, head_dim)
//! let k = Tensor::randn([2, 5, 2, 8], 0.0, 1.0, DType::F32, 1)?; // two KV heads
//! let v = Tensor::randn([2, 5, 2, 8], 0.0, 1.0, DType::F32, 2)?;
//! let o = Tensor::causal_attention(&q, &k, &v, 8f64.powf(-0.5))?;
//! assert_eq!(o.dims(), &[2, 5, 4, 8]);
//! // The first position sees only itself: its output is its own value row.
//! let first = o.narrow(1, 0, 1)?.narrow(2, 0, 1)?.to_vec::<f32>()?;
//! assert_eq!(first, v.narrow(1, 0, 1)?.narrow(2, 0, 1)?.to_vec::<f32>()?);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::{DType, Error, Result, Tensor, WithDType};
use rayon::prelude::*;
use shears_kernels::gemm::{gemm, MatRef};
use shears_kernels::{fused, Float};

/// Shapes of one attention call: batch, positions, query heads, KV heads, head width.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    kvh: usize,
    hd: usize,
}

fn check(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
    for x in [k, v] {
        if x.dtype() != q.dtype() {
            return Err(Error::DTypeMismatch {
                op,
                lhs: q.dtype(),
                rhs: x.dtype(),
            });
        }
    }
    if !matches!(q.dtype(), DType::F32 | DType::F64) {
        return Err(Error::UnsupportedDType {
            op,
            dtype: q.dtype(),
            expected: "f32 or f64",
        });
    }
    let (qd, kd) = (q.dims(), k.dims());
    let ok = qd.len() == 4
        && kd.len() == 4
        && k.dims() == v.dims()
        && qd[0] == kd[0]
        && qd[1] == kd[1]
        && qd[3] == kd[3]
        && kd[2] > 0
        && qd[2].is_multiple_of(kd[2]);
    if !ok {
        return Err(Error::shape_msg(
            op,
            q.shape(),
            k.shape(),
            format!(
                "expected q (batch, seq, heads, head_dim) and k, v (batch, seq, kv_heads, \
                 head_dim) with kv_heads dividing heads; v is {}",
                v.shape()
            ),
        ));
    }
    Ok(Dims {
        b: qd[0],
        t: qd[1],
        h: qd[2],
        kvh: kd[2],
        hd: qd[3],
    })
}

/// `scale · q` of head `hh` of sequence `bi` as a contiguous `[t, hd]` matrix.
fn head_rows<T: Float>(x: &[T], d: Dims, heads: usize, bi: usize, hh: usize, scale: T) -> Vec<T> {
    let mut out = Vec::with_capacity(d.t * d.hd);
    for s in 0..d.t {
        let o = ((bi * d.t + s) * heads + hh) * d.hd;
        out.extend(x[o..o + d.hd].iter().map(|&e| e * scale));
    }
    out
}

/// Causal softmax over the rows of `s: [t, t]` in place (row `i` sees columns `0..=i`): the SIMD
/// kernel for f32, a plain loop for f64. (A `Vec`, not a slice: the f32 case is found by
/// downcasting it.)
#[allow(clippy::ptr_arg)]
fn softmax_causal<T: Float + 'static>(s: &mut Vec<T>, t: usize) {
    if t == 0 {
        return;
    }
    if let Some(s32) = (s as &mut dyn std::any::Any).downcast_mut::<Vec<f32>>() {
        fused::softmax_causal_inplace(s32, t, t, 0);
        return;
    }
    for (i, row) in s.chunks_mut(t).enumerate() {
        let m = row[..=i].iter().copied().fold(T::neg_infinity(), T::max);
        let m = if m.is_finite() { m } else { T::zero() };
        let mut sum = T::zero();
        for e in &mut row[..=i] {
            *e = (*e - m).exp();
            sum = sum + *e;
        }
        for e in &mut row[..=i] {
            *e = *e / sum;
        }
        row[i + 1..].fill(T::zero());
    }
}

/// The probabilities `P = causal_softmax(scale·q_h · K_gᵀ)` of one head, `[t, t]`, and its
/// scaled queries `[t, hd]`.
fn probs<T: Float + 'static>(
    q: &[T],
    k: &[T],
    d: Dims,
    bi: usize,
    hh: usize,
    scale: T,
) -> (Vec<T>, Vec<T>) {
    let g = hh / (d.h / d.kvh);
    let qs = head_rows(q, d, d.h, bi, hh, scale);
    let kbase = (bi * d.t * d.kvh + g) * d.hd;
    let ld = d.kvh * d.hd;
    let mut p = vec![T::zero(); d.t * d.t];
    if d.t > 0 {
        gemm(
            d.t,
            d.t,
            d.hd,
            MatRef::new(&qs, d.hd, 1),
            MatRef::new(&k[kbase..], 1, ld),
            &mut p,
        );
    }
    softmax_causal(&mut p, d.t);
    (p, qs)
}

fn forward<T: Float + WithDType + 'static>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    d: Dims,
    scale: f64,
) -> Result<Tensor> {
    let (qv, kv, vv) = (q.values::<T>(), k.values::<T>(), v.values::<T>());
    let scale = T::from(scale).expect("a finite scale");
    let ld = d.kvh * d.hd;
    let mut per_head = vec![T::zero(); d.b * d.h * d.t * d.hd];
    let run = |(i, ctx): (usize, &mut [T])| {
        let (bi, hh) = (i / d.h, i % d.h);
        let g = hh / (d.h / d.kvh);
        let (p, _) = probs(&qv, &kv, d, bi, hh, scale);
        let vbase = (bi * d.t * d.kvh + g) * d.hd;
        gemm(
            d.t,
            d.hd,
            d.t,
            MatRef::new(&p, d.t, 1),
            MatRef::new(&vv[vbase..], ld, 1),
            ctx,
        );
    };
    let chunk = (d.t * d.hd).max(1);
    if d.t * d.t * d.b * d.h >= 4096 {
        per_head.par_chunks_mut(chunk).enumerate().for_each(run);
    } else {
        per_head.chunks_mut(chunk).enumerate().for_each(run);
    }
    // (b, h, t, hd) → (b, t, h, hd).
    let mut out = vec![T::zero(); per_head.len()];
    for bi in 0..d.b {
        for hh in 0..d.h {
            for s in 0..d.t {
                let src = ((bi * d.h + hh) * d.t + s) * d.hd;
                let dst = ((bi * d.t + s) * d.h + hh) * d.hd;
                out[dst..dst + d.hd].copy_from_slice(&per_head[src..src + d.hd]);
            }
        }
    }
    Tensor::from_vec(out, [d.b, d.t, d.h, d.hd])
}

/// `c += a·b` through a scratch product.
#[allow(clippy::too_many_arguments)]
fn gemm_acc<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<T>,
    b: MatRef<T>,
    tmp: &mut [T],
    c: &mut [T],
) {
    gemm(m, n, k, a, b, tmp);
    c.iter_mut().zip(tmp.iter()).for_each(|(c, &t)| *c = *c + t);
}

type Grads3<T> = (Vec<T>, Vec<T>, Vec<T>);

fn backward<T: Float + WithDType + 'static>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dout: &Tensor,
    d: Dims,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (qv, kv, vv, dov) = (
        q.values::<T>(),
        k.values::<T>(),
        v.values::<T>(),
        dout.values::<T>(),
    );
    let sc = T::from(scale).expect("a finite scale");
    let groups = d.h / d.kvh;
    let ld = d.kvh * d.hd;
    let (t, hd) = (d.t, d.hd);
    // One task per (sequence, KV head): its query heads' dq, and the group's dk, dv.
    let group = |i: usize| -> Grads3<T> {
        let (bi, g) = (i / d.kvh, i % d.kvh);
        let base = (bi * t * d.kvh + g) * hd;
        let mut dq = vec![T::zero(); groups * t * hd];
        let mut dk = vec![T::zero(); t * hd];
        let mut dv = vec![T::zero(); t * hd];
        let mut dp = vec![T::zero(); t * t];
        let mut tmp = vec![T::zero(); t * hd];
        if t == 0 {
            return (dq, dk, dv);
        }
        for j in 0..groups {
            let hh = g * groups + j;
            let (p, qs) = probs(&qv, &kv, d, bi, hh, sc);
            let dh = head_rows(&dov, d, d.h, bi, hh, T::one());
            // dV_g += Pᵀ · dO_h
            gemm_acc(
                t,
                hd,
                t,
                MatRef::new(&p, 1, t),
                MatRef::new(&dh, hd, 1),
                &mut tmp,
                &mut dv,
            );
            // dP = dO_h · V_gᵀ
            gemm(
                t,
                t,
                hd,
                MatRef::new(&dh, hd, 1),
                MatRef::new(&vv[base..], 1, ld),
                &mut dp,
            );
            // dS = P ⊙ (dP − Σ_j P·dP) row by row (zero above the diagonal, where P is).
            for r in 0..t {
                let (pr, dr) = (&p[r * t..(r + 1) * t], &mut dp[r * t..(r + 1) * t]);
                let dot = pr[..=r]
                    .iter()
                    .zip(&dr[..=r])
                    .fold(T::zero(), |a, (&x, &y)| a + x * y);
                for c in 0..t {
                    dr[c] = pr[c] * (dr[c] - dot);
                }
            }
            // dq_h = scale · dS · K_g
            let dqh = &mut dq[j * t * hd..(j + 1) * t * hd];
            gemm(
                t,
                hd,
                t,
                MatRef::new(&dp, t, 1),
                MatRef::new(&kv[base..], ld, 1),
                dqh,
            );
            dqh.iter_mut().for_each(|e| *e = *e * sc);
            // dK_g += dSᵀ · (scale · q_h)
            gemm_acc(
                t,
                hd,
                t,
                MatRef::new(&dp, 1, t),
                MatRef::new(&qs, hd, 1),
                &mut tmp,
                &mut dk,
            );
        }
        (dq, dk, dv)
    };
    let tasks = d.b * d.kvh;
    let parts: Vec<Grads3<T>> = if t * t * d.b * d.h >= 4096 {
        (0..tasks).into_par_iter().map(group).collect()
    } else {
        (0..tasks).map(group).collect()
    };
    let mut dq = vec![T::zero(); d.b * t * d.h * hd];
    let mut dk = vec![T::zero(); d.b * t * d.kvh * hd];
    let mut dv = vec![T::zero(); dk.len()];
    for (i, (pq, pk, pv)) in parts.into_iter().enumerate() {
        let (bi, g) = (i / d.kvh, i % d.kvh);
        for s in 0..t {
            for j in 0..groups {
                let dst = ((bi * t + s) * d.h + g * groups + j) * hd;
                let src = (j * t + s) * hd;
                dq[dst..dst + hd].copy_from_slice(&pq[src..src + hd]);
            }
            let dst = ((bi * t + s) * d.kvh + g) * hd;
            dk[dst..dst + hd].copy_from_slice(&pk[s * hd..(s + 1) * hd]);
            dv[dst..dst + hd].copy_from_slice(&pv[s * hd..(s + 1) * hd]);
        }
    }
    Ok((
        Tensor::from_vec(dq, q.dims())?,
        Tensor::from_vec(dk, k.dims())?,
        Tensor::from_vec(dv, v.dims())?,
    ))
}

impl Tensor {
    /// Causal grouped-query attention: `q: (batch, seq, heads, head_dim)`, `k, v: (batch, seq,
    /// kv_heads, head_dim)` with `kv_heads` dividing `heads`, all f32 or all f64 →
    /// `(batch, seq, heads, head_dim)`; query head `h` attends over key/value head
    /// `h / (heads / kv_heads)`, query `s` over positions `0..=s`, scores scaled by `scale`
    /// (usually `1/√head_dim`).
    pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        let d = check("causal_attention", q, k, v)?;
        match q.dtype() {
            DType::F32 => forward::<f32>(q, k, v, d, scale),
            _ => forward::<f64>(q, k, v, d, scale),
        }
    }

    /// The gradients `(dq, dk, dv)` of [`causal_attention`](Self::causal_attention) for the
    /// upstream gradient `dout` (shape of q), recomputing each head's probabilities: with `P`
    /// the probabilities and `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, `dq = scale·dS·K`,
    /// `dK = Σ_heads dSᵀ·(scale·q)`, `dV = Σ_heads Pᵀ·dO`.
    pub fn causal_attention_backward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        dout: &Tensor,
        scale: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "causal_attention_backward";
        let d = check(OP, q, k, v)?;
        if dout.dims() != q.dims() || dout.dtype() != q.dtype() {
            return Err(Error::shape_msg(
                OP,
                dout.shape(),
                q.shape(),
                "dout must have q's shape and dtype",
            ));
        }
        match q.dtype() {
            DType::F32 => backward::<f32>(q, k, v, dout, d, scale),
            _ => backward::<f64>(q, k, v, dout, d, scale),
        }
    }
}
