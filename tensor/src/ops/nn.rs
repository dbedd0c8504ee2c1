//! The fused operations a transformer layer runs: `x·Wᵀ` against weights stored as checkpoints
//! store them (`[out, in]`, f32, bf16 or f16), RMSNorm, SiLU-gated products and rotary position
//! embedding, each with the backward helper that autograd's rule calls. Every one equals a
//! composition of primitive ops (tested against it); these are the fast paths. f32 runs the SIMD
//! kernels, f64 (for gradient checks) plain loops.
//!
//! ```
//! use shears_tensor::{DType, RopeLayout, RopeTables, Tensor};
//! let x = Tensor::randn([1, 3, 2, 4], 0.0, 1.0, DType::F32, 0)?; // (batch, seq, heads, head_dim)
//! let rope = RopeTables::new(4, 16, 10000.0, RopeLayout::HalfSplit)?;
//! let y = x.rope(&rope, 5)?; // positions 5, 6, 7
//! let back = y.rope_backward(&rope, 5)?; // the inverse rotation
//! let err = back.sub(&x)?.to_vec_f64().iter().fold(0f64, |m, v| m.max(v.abs()));
//! assert!(err < 1e-5);
//! let w = Tensor::randn([6, 4], 0.0, 1.0, DType::F32, 1)?.to_dtype(DType::BF16)?;
//! assert_eq!(x.matmul_nt(&w)?.dims(), &[1, 3, 2, 6]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::{DType, Error, Result, Tensor, WithDType};
use half::{bf16, f16};
use rayon::prelude::*;
pub use shears_kernels::fused::RopeLayout;
use shears_kernels::gemm::{gemm, MatRef};
use shears_kernels::{fused, gemv};
use std::sync::OnceLock;

/// Rows above which the row-wise f64 loops (and the f32 backward loops) run in parallel.
const PAR_ROWS: usize = 64;

/// `(rows, n)` of a tensor seen as rows of its last dim.
fn rows_of(t: &Tensor) -> (usize, usize) {
    let n = t.dims().last().copied().unwrap_or(1);
    let rows = t.dims()[..t.rank().saturating_sub(1)].iter().product();
    (rows, n)
}

fn f32_or_f64(op: &'static str, t: &Tensor) -> Result<()> {
    match t.dtype() {
        DType::F32 | DType::F64 => Ok(()),
        dtype => Err(Error::UnsupportedDType {
            op,
            dtype,
            expected: "f32 or f64 activations",
        }),
    }
}

fn same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch {
            op,
            lhs: a.dtype(),
            rhs: b.dtype(),
        });
    }
    Ok(())
}

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(Error::shape_msg(op, a.shape(), b.shape(), "shapes differ"));
    }
    Ok(())
}

/// `y[m, rows.len()] = x[m, k] · w[rows]ᵀ` for a contiguous `[n, k]` weight at its storage dtype.
fn nt_f32(w: &Tensor, x: &[f32], m: usize, rows: std::ops::Range<usize>, y: &mut [f32]) {
    let k = w.dims()[1];
    let (nb, r) = (rows.len(), rows.start * k..rows.end * k);
    match w.dtype() {
        DType::F32 => gemv::matmul_nt(m, nb, k, x, &w.values::<f32>()[r], y),
        DType::BF16 => gemv::matmul_nt(m, nb, k, x, &w.values::<bf16>()[r], y),
        DType::F16 => gemv::matmul_nt(m, nb, k, x, &w.values::<f16>()[r], y),
        other => unreachable!("matmul_nt: {other:?} weight (checked by the caller)"),
    }
}

/// Checks `x: (.., k)` against a `[n, k]` weight and returns `(m, n, k)`.
fn check_nt(op: &'static str, x: &Tensor, w: &Tensor) -> Result<(usize, usize, usize)> {
    if w.rank() != 2 || x.rank() == 0 || x.dims()[x.rank() - 1] != w.dims()[1] {
        return Err(Error::shape_msg(
            op,
            x.shape(),
            w.shape(),
            "expected x (.., k) and a weight [n, k]",
        ));
    }
    match (x.dtype(), w.dtype()) {
        (DType::F32, DType::F32 | DType::BF16 | DType::F16) | (DType::F64, DType::F64) => {}
        (DType::F32 | DType::F64, wd) => {
            return Err(Error::UnsupportedDType {
                op,
                dtype: wd,
                expected: "f32, bf16 or f16 weights for f32 x; f64 weights for f64 x",
            })
        }
        (xd, _) => {
            return Err(Error::UnsupportedDType {
                op,
                dtype: xd,
                expected: "f32 or f64 activations",
            })
        }
    }
    let (m, k) = rows_of(x);
    Ok((m, w.dims()[0], k))
}

fn with_last(t: &Tensor, n: usize) -> Vec<usize> {
    let mut dims = t.dims().to_vec();
    *dims.last_mut().expect("rank ≥ 1") = n;
    dims
}

impl Tensor {
    /// `y = x · Wᵀ` for a weight stored `[out, in]`, the way checkpoints store linear layers:
    /// `x: (.., in)` f32 with `W` in f32, bf16 or f16 (widened in registers), or both f64 →
    /// `(.., out)` in x's dtype. Up to 16 rows stream each weight row once (decode); more go to
    /// the packed GEMM, or, with bf16 weights, to the bf16 matrix engine where the CPU has one
    /// (AMX or AVX512-BF16; `shears_kernels::gemm::bf16`), which rounds `x` to bf16 too.
    pub fn matmul_nt(&self, w: &Tensor) -> Result<Tensor> {
        let n = if w.rank() == 2 { w.dims()[0] } else { 0 };
        self.matmul_nt_rows(w, 0..n)
    }

    /// [`matmul_nt`](Self::matmul_nt) against rows `rows` of `W` only: `(.., in)` → `(..,
    /// rows.len())`, e.g. one block of a vocabulary's logits. The rows are multiplied in place,
    /// without a copy of the weight.
    pub fn matmul_nt_rows(&self, w: &Tensor, rows: std::ops::Range<usize>) -> Result<Tensor> {
        const OP: &str = "matmul_nt";
        let (m, n, k) = check_nt(OP, self, w)?;
        if rows.start > rows.end || rows.end > n {
            return Err(Error::invalid(
                OP,
                format!("rows {rows:?} of a weight with {n} rows"),
            ));
        }
        let nb = rows.len();
        let dims = with_last(self, nb);
        let w = w.contiguous()?;
        match self.dtype() {
            DType::F32 => {
                let x = self.values::<f32>();
                let mut y = vec![0f32; m * nb];
                nt_f32(&w, &x, m, rows, &mut y);
                Tensor::from_vec(y, dims)
            }
            _ => {
                let x = self.values::<f64>();
                let wv = &w.values::<f64>()[rows.start * k..rows.end * k];
                let mut y = vec![0f64; m * nb];
                gemm(
                    m,
                    nb,
                    k,
                    MatRef::new(&x, k, 1),
                    MatRef::new(wv, 1, k),
                    &mut y,
                );
                Tensor::from_vec(y, dims)
            }
        }
    }

    /// Several products with one input, `x · Wᵢᵀ` for each `Wᵢ: [outᵢ, in]` (a layer's Q, K, V
    /// or gate and up projections). When the weights share a dtype and the input has at most 16
    /// rows, they run as one parallel region (one fork/join instead of one per weight).
    pub fn matmul_nt_many(&self, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
        const OP: &str = "matmul_nt_many";
        let mut shapes = Vec::with_capacity(ws.len());
        for w in ws {
            shapes.push(check_nt(OP, self, w)?);
        }
        let Some(&(m, _, k)) = shapes.first() else {
            return Ok(Vec::new());
        };
        let dt = ws[0].dtype();
        let fused = self.dtype() == DType::F32
            && m <= gemv::SMALL_M
            && ws.iter().all(|w| w.dtype() == dt && w.is_contiguous());
        if !fused {
            return ws.iter().map(|w| self.matmul_nt(w)).collect();
        }
        let x = self.values::<f32>();
        let ns: Vec<usize> = shapes.iter().map(|s| s.1).collect();
        let mut ys: Vec<Vec<f32>> = ns.iter().map(|&n| vec![0f32; m * n]).collect();
        {
            let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(|y| &mut y[..]).collect();
            fn many<W: gemv::WeightElem + WithDType>(
                ws: &[&Tensor],
                m: usize,
                k: usize,
                x: &[f32],
                ns: &[usize],
                ys: &mut [&mut [f32]],
            ) {
                let vals: Vec<_> = ws.iter().map(|w| w.values::<W>()).collect();
                let slices: Vec<&[W]> = vals.iter().map(|v| &v[..]).collect();
                gemv::matmul_nt_many(m, k, x, &slices, ns, ys);
            }
            match dt {
                DType::F32 => many::<f32>(ws, m, k, &x, &ns, &mut outs),
                DType::BF16 => many::<bf16>(ws, m, k, &x, &ns, &mut outs),
                _ => many::<f16>(ws, m, k, &x, &ns, &mut outs),
            }
        }
        ys.into_iter()
            .zip(ns)
            .map(|(y, n)| Tensor::from_vec(y, with_last(self, n)))
            .collect()
    }

    /// RMSNorm (Zhang & Sennrich 2019, eq. 4) over the last dim: `y = x / sqrt(mean(x²) + eps) ·
    /// weight`. `x: (.., n)` f32 or f64, `weight: [n]` of the same dtype → same shape as `x`.
    pub fn rms_norm(&self, weight: &Tensor, eps: f64) -> Result<Tensor> {
        const OP: &str = "rms_norm";
        let (rows, n) = check_norm(OP, self, weight)?;
        match self.dtype() {
            DType::F32 => {
                let mut y = vec![0f32; rows * n];
                fused::rms_norm(
                    &self.values::<f32>(),
                    &weight.values::<f32>(),
                    eps as f32,
                    &mut y,
                );
                Tensor::from_vec(y, self.dims())
            }
            _ => {
                let (x, g) = (self.values::<f64>(), weight.values::<f64>());
                let mut y = vec![0f64; rows * n];
                par_row_chunks(&mut y, n, rows, |r, yr| {
                    let xr = &x[r * n..(r + 1) * n];
                    let s = inv_rms(xr, eps);
                    for ((o, &v), &gi) in yr.iter_mut().zip(xr).zip(g.iter()) {
                        *o = v * s * gi;
                    }
                });
                Tensor::from_vec(y, self.dims())
            }
        }
    }

    /// The gradients of [`rms_norm`](Self::rms_norm) for the upstream gradient `dy` (shape of
    /// `x`): `(dx, dweight)`, with `r = 1/sqrt(mean(x²) + eps)`, `dx = r·(g⊙dy) −
    /// x·r³/n·Σ(g⊙dy⊙x)` per row and `dweight = Σ_rows dy⊙x·r`. Sums in f64.
    pub fn rms_norm_backward(
        &self,
        weight: &Tensor,
        eps: f64,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "rms_norm_backward";
        let (rows, n) = check_norm(OP, self, weight)?;
        same_shape(OP, self, dy)?;
        same_dtype(OP, self, dy)?;
        match self.dtype() {
            DType::F32 => rms_norm_grads::<f32>(self, weight, dy, eps, rows, n),
            _ => rms_norm_grads::<f64>(self, weight, dy, eps, rows, n),
        }
    }

    /// `silu(self) ⊙ up` (SwiGLU's gated product, Shazeer 2020), `silu(g) = g·σ(g)`. Both f32 or
    /// both f64, same shape.
    pub fn silu_mul(&self, up: &Tensor) -> Result<Tensor> {
        const OP: &str = "silu_mul";
        f32_or_f64(OP, self)?;
        same_dtype(OP, self, up)?;
        same_shape(OP, self, up)?;
        match self.dtype() {
            DType::F32 => {
                let mut y = vec![0f32; self.elem_count()];
                fused::silu_mul(&self.values::<f32>(), &up.values::<f32>(), &mut y);
                Tensor::from_vec(y, self.dims())
            }
            _ => {
                let (g, u) = (self.values::<f64>(), up.values::<f64>());
                let y = g.iter().zip(u.iter()).map(|(&g, &u)| silu64(g) * u);
                Tensor::from_vec(y.collect::<Vec<f64>>(), self.dims())
            }
        }
    }

    /// The gradients of [`silu_mul`](Self::silu_mul) (`self` is the gate): `(dgate, dup)` with
    /// `dgate = dy·up·σ(g)(1 + g(1 − σ(g)))` and `dup = dy·silu(g)`.
    pub fn silu_mul_backward(&self, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        const OP: &str = "silu_mul_backward";
        f32_or_f64(OP, self)?;
        same_dtype(OP, self, up)?;
        same_dtype(OP, self, dy)?;
        same_shape(OP, self, up)?;
        same_shape(OP, self, dy)?;
        match self.dtype() {
            DType::F32 => silu_mul_grads::<f32>(self, up, dy),
            _ => silu_mul_grads::<f64>(self, up, dy),
        }
    }

    /// `ln Σ_j exp(x_j)` over the last dim: `(.., n)` f32 or f64 → `(..)` f64, computed as `m +
    /// ln Σ exp(x − m)` with `m` the row's max (no overflow), the sum in f64 (f32 rows use the
    /// SIMD exp). A row holding NaN gives NaN; a row of `-inf` (or an empty row) gives `-inf`.
    pub fn logsumexp(&self) -> Result<Tensor> {
        const OP: &str = "logsumexp";
        f32_or_f64(OP, self)?;
        if self.rank() == 0 {
            return Err(Error::invalid(OP, "needs rank ≥ 1"));
        }
        let (rows, n) = rows_of(self);
        let mut out = vec![0f64; rows];
        let dims = &self.dims()[..self.rank() - 1];
        if n == 0 {
            out.fill(f64::NEG_INFINITY);
            return Tensor::from_vec(out, dims);
        }
        let per = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
        match self.dtype() {
            DType::F32 => {
                let x = self.values::<f32>();
                out.par_chunks_mut(per).enumerate().for_each(|(c, o)| {
                    let (mut shifted, mut e) = (vec![0f32; n], vec![0f32; n]);
                    for (i, lse) in o.iter_mut().enumerate() {
                        let row = &x[(c * per + i) * n..(c * per + i + 1) * n];
                        // Sixteen running maxima vectorize (a fold that carries NaN through
                        // does not). `f32::max` skips NaN, so a NaN reaches the result through
                        // `exp(NaN − m)` in the sum below, or through the check here.
                        let mut lanes = [f32::NEG_INFINITY; 16];
                        let chunks = row.chunks_exact(16);
                        let tail = chunks.remainder();
                        for c in chunks {
                            for (l, &v) in lanes.iter_mut().zip(c) {
                                *l = l.max(v);
                            }
                        }
                        let m = tail
                            .iter()
                            .chain(&lanes)
                            .copied()
                            .fold(f32::NEG_INFINITY, f32::max);
                        if !m.is_finite() {
                            *lse = if row.iter().any(|v| v.is_nan()) {
                                f64::NAN
                            } else {
                                m as f64
                            };
                            continue;
                        }
                        for (s, &v) in shifted.iter_mut().zip(row) {
                            *s = v - m;
                        }
                        fused::exp(&shifted, &mut e);
                        let sum: f64 = e
                            .chunks(16)
                            .map(|c| c.iter().map(|&e| e as f64).sum::<f64>())
                            .sum();
                        *lse = m as f64 + sum.ln();
                    }
                });
            }
            _ => {
                let x = self.values::<f64>();
                out.par_chunks_mut(per).enumerate().for_each(|(c, o)| {
                    for (i, lse) in o.iter_mut().enumerate() {
                        let row = &x[(c * per + i) * n..(c * per + i + 1) * n];
                        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        *lse = if row.iter().any(|v| v.is_nan()) {
                            f64::NAN
                        } else if !m.is_finite() {
                            m
                        } else {
                            m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
                        };
                    }
                });
            }
        }
        Tensor::from_vec(out, dims)
    }

    /// Rotary position embedding (Su et al. 2021, eq. 34): `x: (batch, seq, heads, head_dim)`
    /// f32 or f64, row `s` of each sequence rotated by position `offset + s` with `tables` (whose
    /// pair layout is the checkpoint's) → same shape.
    pub fn rope(&self, tables: &RopeTables, offset: usize) -> Result<Tensor> {
        self.rotate("rope", tables, offset, false)
    }

    /// The gradient of [`rope`](Self::rope) for the upstream gradient `self`: the inverse
    /// rotation (by `−p·θᵢ`), same shapes.
    pub fn rope_backward(&self, tables: &RopeTables, offset: usize) -> Result<Tensor> {
        self.rotate("rope_backward", tables, offset, true)
    }

    fn rotate(
        &self,
        op: &'static str,
        tables: &RopeTables,
        offset: usize,
        inverse: bool,
    ) -> Result<Tensor> {
        f32_or_f64(op, self)?;
        let d = self.dims();
        if d.len() != 4 || d[3] != tables.head_dim {
            return Err(Error::invalid(
                op,
                format!(
                    "expected x (batch, seq, heads, {}), got {}",
                    tables.head_dim,
                    self.shape()
                ),
            ));
        }
        let (b, t, heads, hd) = (d[0], d[1], d[2], d[3]);
        // Checked: an offset near usize::MAX must be an error, not an overflow.
        if offset.checked_add(t).is_none_or(|end| end > tables.max_pos) {
            return Err(Error::invalid(
                op,
                format!(
                    "{t} positions from {offset} are beyond the rotary tables' {} positions",
                    tables.max_pos
                ),
            ));
        }
        let positions: Vec<usize> = (0..b).flat_map(|_| offset..offset + t).collect();
        match self.dtype() {
            DType::F32 => {
                let mut y = self.values::<f32>().into_owned();
                let sin = if inverse {
                    &tables.neg_sin
                } else {
                    &tables.sin
                };
                fused::rope(
                    &mut y,
                    heads,
                    hd,
                    &positions,
                    &tables.cos,
                    sin,
                    tables.layout,
                );
                Tensor::from_vec(y, d)
            }
            _ => {
                let (cos, sin) = tables.f64_tables();
                let mut y = self.values::<f64>().into_owned();
                let h = hd / 2;
                let sign = if inverse { -1.0 } else { 1.0 };
                // `max(1)`: with no heads there are no elements, and chunks_mut(0) panics.
                for (row, &p) in y.chunks_mut((heads * hd).max(1)).zip(&positions) {
                    for head in row.chunks_mut(hd) {
                        for i in 0..h {
                            let (ia, ib) = tables.pair(i);
                            let (a, bb) = (head[ia], head[ib]);
                            let (c, s) = (cos[p * h + i], sign * sin[p * h + i]);
                            head[ia] = a * c - bb * s;
                            head[ib] = bb * c + a * s;
                        }
                    }
                }
                Tensor::from_vec(y, d)
            }
        }
    }
}

/// `(rows, n)` after checking `x: (.., n)` f32/f64 against a gain `[n]` of its dtype.
fn check_norm(op: &'static str, x: &Tensor, weight: &Tensor) -> Result<(usize, usize)> {
    f32_or_f64(op, x)?;
    same_dtype(op, x, weight)?;
    let (rows, n) = rows_of(x);
    if x.rank() == 0 || weight.dims() != [n] {
        return Err(Error::shape_msg(
            op,
            x.shape(),
            weight.shape(),
            "expected x (.., n) and a gain [n]",
        ));
    }
    Ok((rows, n))
}

/// An f32 or f64 element, read and written through f64.
trait Elem: WithDType + Default {}
impl Elem for f32 {}
impl Elem for f64 {}

/// `(dx, dweight)` of RMSNorm, every sum in f64, without f64 copies of the buffers.
fn rms_norm_grads<T: Elem>(
    x: &Tensor,
    weight: &Tensor,
    dy: &Tensor,
    eps: f64,
    rows: usize,
    n: usize,
) -> Result<(Tensor, Tensor)> {
    let (xv, gv, dv) = (x.values::<T>(), weight.values::<T>(), dy.values::<T>());
    let g: Vec<f64> = gv.iter().map(|v| v.to_f64()).collect();
    let mut dx = vec![T::default(); rows * n];
    // Per task: its rows' dx and its partial dweight.
    let per = if rows >= PAR_ROWS {
        rows.div_ceil(4 * rayon::current_num_threads().max(1))
    } else {
        rows.max(1)
    };
    let partial: Vec<Vec<f64>> = dx
        .par_chunks_mut((per * n).max(1))
        .enumerate()
        .map(|(task, out)| {
            let mut dg = vec![0f64; n];
            for (i, o) in out.chunks_mut(n.max(1)).enumerate() {
                let r = task * per + i;
                let (xr, dr) = (&xv[r * n..(r + 1) * n], &dv[r * n..(r + 1) * n]);
                let ss: f64 = xr.iter().map(|v| v.to_f64() * v.to_f64()).sum();
                let s = 1.0 / (ss / n as f64 + eps).sqrt();
                let dot: f64 = (0..n).map(|j| xr[j].to_f64() * dr[j].to_f64() * g[j]).sum();
                let c = s * s * s * dot / n as f64;
                for j in 0..n {
                    let (xj, dj) = (xr[j].to_f64(), dr[j].to_f64());
                    o[j] = T::from_f64(s * g[j] * dj - xj * c);
                    dg[j] += dj * xj * s;
                }
            }
            dg
        })
        .collect();
    let mut dg = vec![0f64; n];
    for p in partial {
        dg.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    Ok((
        Tensor::from_vec(dx, x.dims())?,
        from_f64_as(dg, weight.dims(), weight.dtype())?,
    ))
}

/// `(dgate, dup)` of `silu(gate) ⊙ up`, each element computed in f64.
fn silu_mul_grads<T: Elem>(gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let (g, u, d) = (gate.values::<T>(), up.values::<T>(), dy.values::<T>());
    let n = g.len();
    let mut dg = vec![T::default(); n];
    let mut du = vec![T::default(); n];
    dg.par_iter_mut()
        .zip(du.par_iter_mut())
        .enumerate()
        .with_min_len(4096)
        .for_each(|(i, (a, b))| {
            let (gi, ui, di) = (g[i].to_f64(), u[i].to_f64(), d[i].to_f64());
            let s = 1.0 / (1.0 + (-gi).exp());
            *a = T::from_f64(di * ui * s * (1.0 + gi * (1.0 - s)));
            *b = T::from_f64(di * gi * s);
        });
    Ok((
        Tensor::from_vec(dg, gate.dims())?,
        Tensor::from_vec(du, gate.dims())?,
    ))
}

fn inv_rms(x: &[f64], eps: f64) -> f64 {
    let ss: f64 = x.iter().map(|v| v * v).sum();
    1.0 / (ss / x.len().max(1) as f64 + eps).sqrt()
}

fn silu64(g: f64) -> f64 {
    g / (1.0 + (-g).exp())
}

/// Calls `f(row, out_row)` for each row of `n` elements of `out`, in parallel when there are many.
fn par_row_chunks(out: &mut [f64], n: usize, rows: usize, f: impl Fn(usize, &mut [f64]) + Sync) {
    if n == 0 {
        return;
    }
    if rows >= PAR_ROWS {
        out.par_chunks_mut(n).enumerate().for_each(|(r, o)| f(r, o));
    } else {
        out.chunks_mut(n).enumerate().for_each(|(r, o)| f(r, o));
    }
}

/// An f64 buffer as a tensor of `dtype` (f32 rounds once).
pub(crate) fn from_f64_as(v: Vec<f64>, dims: &[usize], dtype: DType) -> Result<Tensor> {
    match dtype {
        DType::F64 => Tensor::from_vec(v, dims),
        DType::F32 => Tensor::from_vec(v.into_iter().map(|x| x as f32).collect::<Vec<_>>(), dims),
        other => Tensor::from_vec(v, dims)?.to_dtype(other),
    }
}

/// Rotary tables: `cos(p·θᵢ)` and `sin(p·θᵢ)` for positions `0..max_pos` and `θᵢ =
/// theta^(−2i/head_dim)`, each `[max_pos, head_dim/2]`, and the checkpoint's pair layout (HF
/// checkpoints pair `(i, i + d/2)`, GGUF files `(2i, 2i + 1)`).
#[derive(Debug)]
pub struct RopeTables {
    cos: Vec<f32>,
    sin: Vec<f32>,
    neg_sin: Vec<f32>,
    f64_tables: OnceLock<(Vec<f64>, Vec<f64>)>,
    theta: f64,
    /// Width of one head.
    pub head_dim: usize,
    /// Positions the tables cover.
    pub max_pos: usize,
    /// Which dims form the rotated pairs.
    pub layout: RopeLayout,
}

impl RopeTables {
    /// Tables for `max_pos` positions of heads `head_dim` wide (even) with base `theta`.
    pub fn new(head_dim: usize, max_pos: usize, theta: f64, layout: RopeLayout) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::invalid(
                "RopeTables::new",
                format!("head_dim {head_dim} must be even and positive"),
            ));
        }
        let (cos, sin) = fused::rope_tables(head_dim, max_pos, theta as f32);
        let neg_sin = sin.iter().map(|s| -s).collect();
        Ok(RopeTables {
            cos,
            sin,
            neg_sin,
            f64_tables: OnceLock::new(),
            theta,
            head_dim,
            max_pos,
            layout,
        })
    }

    /// The two dims of pair `i` within a head.
    fn pair(&self, i: usize) -> (usize, usize) {
        match self.layout {
            RopeLayout::HalfSplit => (i, i + self.head_dim / 2),
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
        }
    }

    /// The tables in f64 (computed on first use, for f64 inputs), with the same angles as the
    /// f32 tables: `θᵢ` from the base rounded to f32, as [`fused::rope_tables`] does.
    fn f64_tables(&self) -> &(Vec<f64>, Vec<f64>) {
        self.f64_tables.get_or_init(|| {
            let h = self.head_dim / 2;
            let base = self.theta as f32 as f64;
            let (mut c, mut s) = (Vec::new(), Vec::new());
            for p in 0..self.max_pos {
                for i in 0..h {
                    let f = base.powf(-2.0 * i as f64 / self.head_dim as f64);
                    let (si, co) = (p as f64 * f).sin_cos();
                    c.push(co);
                    s.push(si);
                }
            }
            (c, s)
        })
    }
}
