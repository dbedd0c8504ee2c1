//! The KV cache of incremental decoding and the attention that reads it. Keys and values of the
//! positions seen so far are stored per layer as f32, bf16 or f16 (rounded to nearest even when
//! written; attention widens them back to f32): keys in blocks of 16 positions `[kv_heads,
//! ⌈capacity/16⌉, head_dim, 16]` (a decode step scores 16 positions per FMA and streams the keys
//! in order), values `[kv_heads, capacity, head_dim]`. Every attention read, prefill included,
//! goes through the stored values, so one prefill and token-by-token decoding see the same keys
//! and values. Layers may differ in their number of KV heads and head width.
//!
//! ```
//! use shears_tensor::kv::KvCache;
//! use shears_tensor::{DType, Tensor};
//! // Two layers, 2 KV heads of width 8; room for 32 positions.
//! let mut cache = KvCache::new(32, DType::F32, &[(2, 8), (2, 8)])?;
//! let q = Tensor::randn([1, 3, 4, 8], 0.0, 1.0, DType::F32, 0)?; // 3 new positions, 4 heads
//! let k = Tensor::randn([1, 3, 2, 8], 0.0, 1.0, DType::F32, 1)?;
//! let v = Tensor::randn([1, 3, 2, 8], 0.0, 1.0, DType::F32, 2)?;
//! let scale = 8f64.powf(-0.5);
//! let o = q.attend_cached(&k, &v, &mut cache, 0, scale)?;
//! // Without a cache, the same causal attention:
//! let direct = Tensor::causal_attention(&q, &k, &v, scale)?;
//! let err = o.sub(&direct)?.to_vec_f64().iter().fold(0f64, |m, e| m.max(e.abs()));
//! assert!(err < 1e-5);
//! cache.advance(3)?; // every layer has seen positions 0..3
//! assert_eq!(cache.len(), 3);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::{DType, Error, Result, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;
use shears_kernels::fused;
use shears_kernels::gemm::bf16 as bf16_engine;
use shears_kernels::gemm::{gemm, MatRef};
use shears_kernels::gemv::WeightElem;
use std::borrow::Cow;

/// One layer's keys or values in the cache's storage dtype.
#[derive(Debug, Clone)]
enum KvBuf {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

impl KvBuf {
    fn zeros(dtype: DType, len: usize) -> KvBuf {
        match dtype {
            DType::BF16 => KvBuf::Bf16(vec![bf16::ZERO; len]),
            DType::F16 => KvBuf::F16(vec![f16::ZERO; len]),
            _ => KvBuf::F32(vec![0.0; len]),
        }
    }
    fn len(&self) -> usize {
        match self {
            KvBuf::F32(b) => b.len(),
            KvBuf::Bf16(b) => b.len(),
            KvBuf::F16(b) => b.len(),
        }
    }
    fn elem_bytes(&self) -> usize {
        match self {
            KvBuf::F32(_) => 4,
            _ => 2,
        }
    }
    /// `self[at + i] = src[i]` (rounded to the storage dtype).
    fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            KvBuf::F32(b) => b[at..at + src.len()].copy_from_slice(src),
            KvBuf::Bf16(b) => fused::f32_to_bf16(src, &mut b[at..at + src.len()]),
            KvBuf::F16(b) => fused::f32_to_f16(src, &mut b[at..at + src.len()]),
        }
    }
    /// `self[idx(i)] = src[i]` (rounded to the storage dtype).
    fn scatter(&mut self, src: &[f32], idx: impl Fn(usize) -> usize) {
        match self {
            KvBuf::F32(b) => src.iter().enumerate().for_each(|(i, &e)| b[idx(i)] = e),
            KvBuf::Bf16(b) => src
                .iter()
                .enumerate()
                .for_each(|(i, &e)| b[idx(i)] = bf16::from_f32(e)),
            KvBuf::F16(b) => src
                .iter()
                .enumerate()
                .for_each(|(i, &e)| b[idx(i)] = f16::from_f32(e)),
        }
    }
    /// Elements `range` widened to f32 (borrowed when stored as f32).
    fn f32_range(&self, range: std::ops::Range<usize>) -> Cow<'_, [f32]> {
        match self {
            KvBuf::F32(b) => Cow::Borrowed(&b[range]),
            KvBuf::Bf16(b) => Cow::Owned(b[range].iter().map(|e| e.to_f32()).collect()),
            KvBuf::F16(b) => Cow::Owned(b[range].iter().map(|e| e.to_f32()).collect()),
        }
    }
    /// The keys of positions `0..l` of the group whose blocked keys start at `base`, as one
    /// `[hd, l]` f32 matrix.
    fn key_matrix(&self, base: usize, hd: usize, l: usize) -> Vec<f32> {
        fn go<W: WeightElem>(kg: &[W], hd: usize, l: usize) -> Vec<f32> {
            let mut kt = vec![0f32; hd * l];
            for (i, row) in kt.chunks_mut(l.max(1)).enumerate() {
                for (j, e) in row.iter_mut().enumerate() {
                    *e = kg[fused::key_index(j, i, hd)].to_f32();
                }
            }
            kt
        }
        match self {
            KvBuf::F32(b) => go(&b[base..], hd, l),
            KvBuf::Bf16(b) => go(&b[base..], hd, l),
            KvBuf::F16(b) => go(&b[base..], hd, l),
        }
    }
}

/// Keys and values of one layer.
#[derive(Debug, Clone)]
struct KvLayer {
    kt: KvBuf,
    v: KvBuf,
    kv_heads: usize,
    head_dim: usize,
}

/// The keys and values of every layer for up to `capacity` positions (see the module docs).
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<KvLayer>,
    len: usize,
    capacity: usize,
    dtype: DType,
}

impl KvCache {
    /// An empty cache for up to `capacity` positions storing keys and values as `dtype` (f32,
    /// bf16 or f16), one layer per `(kv_heads, head_dim)` of `layers` (both positive).
    pub fn new(capacity: usize, dtype: DType, layers: &[(usize, usize)]) -> Result<KvCache> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::UnsupportedDType {
                op: "KvCache",
                dtype,
                expected: "an f32, bf16 or f16 KV cache",
            });
        }
        // A layer without KV heads or with empty heads cannot be attended (the attention divides
        // by kv_heads and splits rows of head_dim): refuse it here rather than panic there.
        if let Some(&(kv_heads, head_dim)) = layers.iter().find(|&&(k, d)| k == 0 || d == 0) {
            return Err(Error::invalid(
                "KvCache",
                format!(
                    "a layer needs kv_heads > 0 and head_dim > 0, got ({kv_heads}, {head_dim})"
                ),
            ));
        }
        let layers = layers
            .iter()
            .map(|&(kv_heads, head_dim)| KvLayer {
                kt: KvBuf::zeros(dtype, kv_heads * key_group_len(capacity, head_dim)),
                v: KvBuf::zeros(dtype, kv_heads * capacity * head_dim),
                kv_heads,
                head_dim,
            })
            .collect();
        Ok(KvCache {
            layers,
            len: 0,
            capacity,
            dtype,
        })
    }
    /// The storage dtype of keys and values.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Positions stored.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True before the first forward pass.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Positions it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
    /// `(kv_heads, head_dim)` of layer `i`, if it exists.
    pub fn layer_shape(&self, i: usize) -> Option<(usize, usize)> {
        self.layers.get(i).map(|l| (l.kv_heads, l.head_dim))
    }
    /// Forgets every position (keeps the memory).
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Bytes of key/value storage.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [&l.kt, &l.v])
            .map(|b| b.len() * b.elem_bytes())
            .sum()
    }
    /// Commits `t` new positions once every layer has written them with
    /// [`Tensor::attend_cached`].
    pub fn advance(&mut self, t: usize) -> Result<()> {
        // `len ≤ capacity` always, so this cannot underflow (and `len + t` could overflow).
        if t > self.capacity - self.len {
            return Err(Error::invalid(
                "KvCache::advance",
                format!(
                    "{} cached + {t} new positions exceed the capacity {}",
                    self.len, self.capacity
                ),
            ));
        }
        self.len += t;
        Ok(())
    }
}

impl Tensor {
    /// Attention of `t` new positions over a KV cache: writes `k, v: (1, t, kv_heads, head_dim)`
    /// (f32) into `layer` of `cache` at positions `cache.len()..cache.len() + t`, then attends
    /// `self = q: (1, t, heads, head_dim)` over positions `0..=cache.len() + s` for row `s`,
    /// scores scaled by `scale` → `(1, t, heads, head_dim)`. The cache's length moves only with
    /// [`KvCache::advance`], once every layer has run. Up to 4 new rows read the cache in place
    /// (split over the threads by position); more run as two GEMMs per head.
    pub fn attend_cached(
        &self,
        k: &Tensor,
        v: &Tensor,
        cache: &mut KvCache,
        layer: usize,
        scale: f64,
    ) -> Result<Tensor> {
        const OP: &str = "attend_cached";
        let Some((kvh, hd)) = cache.layer_shape(layer) else {
            return Err(Error::invalid(
                OP,
                format!("layer {layer} of a {}-layer cache", cache.num_layers()),
            ));
        };
        let (qd, kd) = (self.dims(), k.dims());
        let ok = qd.len() == 4
            && qd[0] == 1
            && qd[3] == hd
            && qd[2] > 0
            && qd[2].is_multiple_of(kvh)
            && kd == [1, qd[1], kvh, hd]
            && v.dims() == kd;
        if !ok {
            return Err(Error::shape_msg(
                OP,
                self.shape(),
                k.shape(),
                format!(
                    "expected q (1, t, heads, {hd}) with heads a positive multiple of {kvh}, \
                     and k, v (1, t, {kvh}, {hd}) for this layer's cache; v is {}",
                    v.shape()
                ),
            ));
        }
        for x in [self, k, v] {
            if x.dtype() != DType::F32 {
                return Err(Error::UnsupportedDType {
                    op: OP,
                    dtype: x.dtype(),
                    expected: "f32 q, k and v",
                });
            }
        }
        let (t, h) = (qd[1], qd[2]);
        let p = cache.len;
        if p + t > cache.capacity {
            return Err(Error::invalid(
                OP,
                format!(
                    "{p} cached + {t} new positions exceed the cache capacity {}",
                    cache.capacity
                ),
            ));
        }
        // Fold the score scale into q once.
        let scale = scale as f32;
        let q: Vec<f32> = self.values::<f32>().iter().map(|e| e * scale).collect();
        let (k, v) = (k.values::<f32>(), v.values::<f32>());
        let out = context(&q, &k, &v, cache, layer, h, kvh, hd, p, t);
        Tensor::from_vec(out, [1, t, h, hd])
    }
}

/// The attention context `[t, h·hd]` of the scaled queries `q: [t, h·hd]` after writing `k, v:
/// [t, kvh·hd]` at positions `p..p + t` of layer `layer`.
#[allow(clippy::too_many_arguments)]
fn context(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cache: &mut KvCache,
    layer: usize,
    h: usize,
    kvh: usize,
    hd: usize,
    p: usize,
    t: usize,
) -> Vec<f32> {
    let cap = cache.capacity;
    let gsz = key_group_len(cap, hd);
    let KvLayer { kt: kc, v: vc, .. } = &mut cache.layers[layer];
    for s in 0..t {
        for g in 0..kvh {
            let src = (s * kvh + g) * hd;
            kc.scatter(&k[src..src + hd], |i| {
                g * gsz + fused::key_index(p + s, i, hd)
            });
            vc.write((g * cap + p + s) * hd, &v[src..src + hd]);
        }
    }
    let l = p + t;
    let (kc, vc) = (&cache.layers[layer].kt, &cache.layers[layer].v);
    let groups = h / kvh;
    if t <= DIRECT_MAX_ROWS {
        return match (kc, vc) {
            (KvBuf::F32(kc), KvBuf::F32(vc)) => {
                decode_attention(q, kc, vc, cap, h, groups, hd, p, t)
            }
            (KvBuf::Bf16(kc), KvBuf::Bf16(vc)) => {
                decode_attention(q, kc, vc, cap, h, groups, hd, p, t)
            }
            (KvBuf::F16(kc), KvBuf::F16(vc)) => {
                decode_attention(q, kc, vc, cap, h, groups, hd, p, t)
            }
            _ => unreachable!("keys and values share one dtype"),
        };
    }
    if let (KvBuf::Bf16(kc), KvBuf::Bf16(vc)) = (kc, vc) {
        if bf16_engine::engine() != bf16_engine::Engine::Off {
            return prefill_bf16(q, kc, vc, cap, gsz, h, kvh, hd, p, t);
        }
    }
    // Each group's keys as one `[hd, l]` f32 matrix for the score GEMMs, and its values
    // `[l, hd]`.
    let kts: Vec<Vec<f32>> = (0..kvh).map(|g| kc.key_matrix(g * gsz, hd, l)).collect();
    let vs: Vec<Cow<[f32]>> = (0..kvh)
        .map(|g| vc.f32_range(g * cap * hd..(g * cap + l) * hd))
        .collect();
    // Head hh writes its context rows `[t, hd]` into its own chunk of `per_head: [h, t·hd]`,
    // as two GEMMs per block of CAUSAL_ROWS rows: rows s0..s1 see positions 0..p + s1 only, so
    // the blocks skip most of the masked upper triangle (about half the work of a long prompt).
    let head = |(hh, ctx): (usize, &mut [f32])| {
        let g = hh / groups;
        let ktg = &kts[g];
        let vg = &vs[g][..];
        let mut scores = vec![0f32; CAUSAL_ROWS.min(t) * l];
        for s0 in (0..t).step_by(CAUSAL_ROWS) {
            let s1 = (s0 + CAUSAL_ROWS).min(t);
            let (tc, lc) = (s1 - s0, p + s1);
            let sc = &mut scores[..tc * lc];
            // scores[tc, lc] = q_h[s0..s1, hd] · K_g[.., 0..lc]ᵀ
            gemm(
                tc,
                lc,
                hd,
                MatRef::new(&q[(s0 * h + hh) * hd..], h * hd, 1),
                MatRef::new(ktg, l, 1),
                sc,
            );
            fused::softmax_causal_inplace(sc, tc, lc, p + s0);
            // ctx[s0..s1, hd] = P[tc, lc] · V_g[0..lc, hd]
            gemm(
                tc,
                hd,
                lc,
                MatRef::new(sc, lc, 1),
                MatRef::new(vg, hd, 1),
                &mut ctx[s0 * hd..s1 * hd],
            );
        }
    };
    run_heads(h, t, hd, t * l >= PAR_HEADS_MIN, head)
}

/// Runs `head(hh, ctx)` for every head, each writing its context rows `[t, hd]` into its own
/// chunk (in parallel when `parallel`), and returns them in the token-major layout `o_proj`
/// reads: row `s` holds heads `0..h`.
fn run_heads(
    h: usize,
    t: usize,
    hd: usize,
    parallel: bool,
    head: impl Fn((usize, &mut [f32])) + Sync + Send,
) -> Vec<f32> {
    let mut per_head = vec![0f32; h * t * hd];
    if parallel {
        per_head.par_chunks_mut(t * hd).enumerate().for_each(head);
    } else {
        per_head.chunks_mut(t * hd).enumerate().for_each(head);
    }
    let mut merged = vec![0f32; t * h * hd];
    for hh in 0..h {
        for s in 0..t {
            merged[(s * h + hh) * hd..(s * h + hh + 1) * hd]
                .copy_from_slice(&per_head[(hh * t + s) * hd..(hh * t + s + 1) * hd]);
        }
    }
    merged
}

/// Prefill attention over a bf16 cache on the bf16 matrix engine: per head and block of
/// [`CAUSAL_ROWS`] query rows, `scores = q · Kᵀ` and `ctx = P · V` with the cached keys and
/// values as the engine's weights (already bf16: no rounding beyond the cache's own) and the
/// queries and probabilities rounded to bf16 by the engine, f32 sums and an f32 softmax.
#[allow(clippy::too_many_arguments)]
fn prefill_bf16(
    q: &[f32],
    kc: &[bf16],
    vc: &[bf16],
    cap: usize,
    gsz: usize,
    h: usize,
    kvh: usize,
    hd: usize,
    p: usize,
    t: usize,
) -> Vec<f32> {
    let l = p + t;
    let groups = h / kvh;
    // Per group: keys `[l, hd]` (the engine's `[n, k]` weight for the scores) and values
    // transposed, `[hd, l]` (the weight for the context; a block reads its first `lc` columns).
    let ks: Vec<Vec<bf16>> = (0..kvh)
        .map(|g| {
            let kg = &kc[g * gsz..];
            (0..l * hd)
                .map(|e| kg[fused::key_index(e / hd, e % hd, hd)])
                .collect()
        })
        .collect();
    let vts: Vec<Vec<bf16>> = (0..kvh)
        .map(|g| {
            let vg = &vc[g * cap * hd..];
            (0..hd * l).map(|e| vg[(e % l) * hd + e / l]).collect()
        })
        .collect();
    let head = |(hh, ctx): (usize, &mut [f32])| {
        let g = hh / groups;
        let mut qh = vec![0f32; CAUSAL_ROWS.min(t) * hd];
        let mut scores = vec![0f32; CAUSAL_ROWS.min(t) * l];
        for s0 in (0..t).step_by(CAUSAL_ROWS) {
            let s1 = (s0 + CAUSAL_ROWS).min(t);
            let (tc, lc) = (s1 - s0, p + s1);
            for (r, dst) in qh[..tc * hd].chunks_exact_mut(hd).enumerate() {
                let src = ((s0 + r) * h + hh) * hd;
                dst.copy_from_slice(&q[src..src + hd]);
            }
            let sc = &mut scores[..tc * lc];
            bf16_engine::matmul_nt_bf16(tc, lc, hd, &qh[..tc * hd], &ks[g][..lc * hd], sc);
            fused::softmax_causal_inplace(sc, tc, lc, p + s0);
            bf16_engine::matmul_nt_bf16_strided(
                tc,
                hd,
                lc,
                sc,
                &vts[g],
                l,
                &mut ctx[s0 * hd..s1 * hd],
            );
        }
    };
    run_heads(h, t, hd, true, head)
}

/// Floats of one KV head's keys in the blocked layout.
fn key_group_len(capacity: usize, head_dim: usize) -> usize {
    capacity.next_multiple_of(fused::KEY_BLOCK) * head_dim
}

/// Prefill attention runs in blocks of this many query rows, each over the positions its last
/// row sees (the causal mask's upper triangle is skipped block by block).
const CAUSAL_ROWS: usize = 64;

/// Below this many score entries per head, heads run one after another (rayon's fork/join costs
/// more than the work).
const PAR_HEADS_MIN: usize = 256;

/// Up to this many new positions, attention runs row by row on the cache (decode); above, as
/// GEMMs per head (prefill).
const DIRECT_MAX_ROWS: usize = 4;

/// Decode attention splits the cached positions into parts of at least this many, one per thread
/// (flash-decoding): each part's keys and values are read by one thread only, and the threads
/// balance whatever the number of heads.
const SPLIT_MIN: usize = 128;

/// Attention of `t ≤ DIRECT_MAX_ROWS` new rows (positions `p..p + t`, already in the cache) over
/// the cache: `q: [t, h·hd]` (rotated, scaled), `kc: [kv_heads, hd, cap]`, `vc: [kv_heads, cap,
/// hd]` → `[t, h·hd]`. The positions are split into parts computed in parallel, each over every
/// head, then merged.
#[allow(clippy::too_many_arguments)]
fn decode_attention<W: WeightElem>(
    q: &[f32],
    kc: &[W],
    vc: &[W],
    cap: usize,
    h: usize,
    groups: usize,
    hd: usize,
    p: usize,
    t: usize,
) -> Vec<f32> {
    let l = p + t;
    let parts = (l / SPLIT_MIN).clamp(1, rayon::current_num_threads().max(1));
    // Parts start on key blocks.
    let chunk = l.div_ceil(parts).next_multiple_of(fused::KEY_BLOCK);
    // Part c's unnormalised outputs `[t·h, hd]` and statistics `[t·h]`.
    let mut outs = vec![0f32; parts * t * h * hd];
    let mut stats = vec![(f32::NEG_INFINITY, 0f32); parts * t * h];
    let gsz = key_group_len(cap, hd);
    let part = |c: usize, out: &mut [f32], st: &mut [(f32, f32)]| {
        let mut scores = vec![0f32; groups * fused::scores_len(chunk)];
        for g in 0..h / groups {
            let kg = &kc[g * gsz..(g + 1) * gsz];
            let vg = &vc[g * cap * hd..(g + 1) * cap * hd];
            for s in 0..t {
                let end = (p + s + 1).min((c + 1) * chunk);
                let range = (c * chunk).min(end)..end;
                // The group's heads of row s are consecutive in q, out and st.
                let (i0, i1) = (s * h + g * groups, s * h + (g + 1) * groups);
                fused::attend_part_many(
                    &q[i0 * hd..i1 * hd],
                    kg,
                    vg,
                    range,
                    &mut scores,
                    &mut out[i0 * hd..i1 * hd],
                    &mut st[i0..i1],
                );
            }
        }
    };
    let per_out = t * h * hd;
    if parts > 1 {
        outs.par_chunks_mut(per_out)
            .zip(stats.par_chunks_mut(t * h))
            .enumerate()
            .for_each(|(c, (out, st))| part(c, out, st));
    } else {
        part(0, &mut outs, &mut stats);
    }
    let mut merged = vec![0f32; t * h * hd];
    let mut ps = vec![(0f32, 0f32); parts];
    let mut os = vec![0f32; parts * hd];
    for (i, dst) in merged.chunks_mut(hd).enumerate() {
        for c in 0..parts {
            ps[c] = stats[c * t * h + i];
            os[c * hd..(c + 1) * hd]
                .copy_from_slice(&outs[c * per_out + i * hd..c * per_out + (i + 1) * hd]);
        }
        fused::attend_merge(&ps, &os, dst);
    }
    merged
}
