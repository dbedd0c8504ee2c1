//! LLaMA (Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models"): pre-norm
//! decoder layers of grouped-query causal attention with rotary embeddings and a SwiGLU MLP, with
//! a KV cache for incremental decoding. Struct fields equal the HF checkpoint keys
//! (`model.layers.N.self_attn.q_proj.weight` is `llama.model.layers[N].self_attn.q_proj`).
//!
//! ```
//! use shears_models::config::LlamaConfig;
//! use shears_models::llama::{KvCache, Llama};
//! let json = r#"{"model_type": "llama", "vocab_size": 50, "hidden_size": 32,
//!   "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
//!   "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
//!   "tie_word_embeddings": true}"#;
//! let config = LlamaConfig::from_json_str(json, "config.json".as_ref())?;
//! let model = Llama::random(&config, 0)?;
//! let mut cache = KvCache::new(&config, 16);
//! let logits = model.forward(&[1, 2, 3], &mut cache)?; // prefill: [3, 50]
//! assert_eq!(logits.dims(), &[3, 50]);
//! let next = model.forward(&[4], &mut cache)?; // one decode step, position 3
//! assert_eq!((next.dims(), cache.len()), (&[1usize, 50][..], 4));
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::config::LlamaConfig;
use crate::layers::{Embedding, Linear, RmsNorm, Rotary};
use half::{bf16, f16};
use rayon::prelude::*;
use shears_kernels::fused::{self, RopeLayout};
use shears_kernels::gemm::{gemm, MatRef};
use shears_kernels::gemv::WeightElem;
use shears_tensor::{DType, Error, Result, Tensor};
use std::borrow::Cow;

/// Causal self-attention with grouped-query heads.
#[derive(Debug, Clone)]
pub struct Attention {
    /// `[heads · head_dim, hidden]`
    pub q_proj: Linear,
    /// `[kv_heads · head_dim, hidden]`
    pub k_proj: Linear,
    /// `[kv_heads · head_dim, hidden]`
    pub v_proj: Linear,
    /// `[hidden, heads · head_dim]`
    pub o_proj: Linear,
}

/// The SwiGLU MLP: `down(silu(gate(x)) ⊙ up(x))` (Shazeer 2020, "GLU Variants Improve
/// Transformer").
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `[intermediate, hidden]`
    pub gate_proj: Linear,
    /// `[intermediate, hidden]`
    pub up_proj: Linear,
    /// `[hidden, intermediate]`
    pub down_proj: Linear,
}

/// One pre-norm decoder layer: `x += attn(norm(x)); x += mlp(norm(x))`.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    /// Attention.
    pub self_attn: Attention,
    /// MLP.
    pub mlp: Mlp,
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
}

/// The decoder stack (HF's `model.` prefix).
#[derive(Debug, Clone)]
pub struct LlamaModel {
    /// Token embeddings.
    pub embed_tokens: Embedding,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
}

/// A LLaMA causal language model.
#[derive(Debug, Clone)]
pub struct Llama {
    /// The configuration.
    pub config: LlamaConfig,
    /// The decoder.
    pub model: LlamaModel,
    /// The output head `[vocab, hidden]`; shares the embedding's storage when tied.
    pub lm_head: Linear,
    /// Rotary tables and the Q/K pair layout of the loaded weights.
    pub rotary: Rotary,
    /// Storage dtype of the KV caches [`new_cache`](Self::new_cache) makes: f32, bf16 or f16.
    /// [`Llama::new`] sets the weights' dtype (as HF transformers does; a half cache reads half
    /// the bytes per decode step).
    pub kv_dtype: DType,
}

/// Keys and values of the positions seen so far, per layer, stored as f32, bf16 or f16 (rounded
/// to nearest even when written; attention widens them back to f32): keys in blocks of 16
/// positions `[kv_heads, ⌈capacity/16⌉, head_dim, 16]` (the layout of [`fused::attend`]: a decode
/// step scores 16 positions per FMA and streams the keys in order), values `[kv_heads, capacity,
/// head_dim]`. Every attention read, prefill included, goes through the stored values, so one
/// prefill and token-by-token decoding see the same keys and values.
#[derive(Debug, Clone)]
pub struct KvCache {
    kt: Vec<KvBuf>,
    v: Vec<KvBuf>,
    len: usize,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
}

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

impl KvCache {
    /// An empty f32 cache for up to `capacity` positions ([`Llama::new_cache`] makes one in the
    /// model's [`kv_dtype`](Llama::kv_dtype)).
    pub fn new(config: &LlamaConfig, capacity: usize) -> KvCache {
        Self::build(config, config.num_hidden_layers, capacity, DType::F32)
    }

    /// An empty cache for up to `capacity` positions storing keys and values as `dtype` (f32,
    /// bf16 or f16; any other dtype is an error).
    pub fn with_dtype(config: &LlamaConfig, capacity: usize, dtype: DType) -> Result<KvCache> {
        match dtype {
            DType::F32 | DType::BF16 | DType::F16 => Ok(Self::build(
                config,
                config.num_hidden_layers,
                capacity,
                dtype,
            )),
            dtype => Err(Error::UnsupportedDType {
                op: "KvCache",
                dtype,
                expected: "an f32, bf16 or f16 KV cache",
            }),
        }
    }

    /// A cache of `layers` layers (the model's, or one for a single layer's calibration pass).
    fn build(config: &LlamaConfig, layers: usize, capacity: usize, dtype: DType) -> KvCache {
        let per_layer = config.num_key_value_heads * capacity * config.head_dim;
        let keys = config.num_key_value_heads * key_group_len(capacity, config.head_dim);
        KvCache {
            kt: (0..layers).map(|_| KvBuf::zeros(dtype, keys)).collect(),
            v: (0..layers)
                .map(|_| KvBuf::zeros(dtype, per_layer))
                .collect(),
            len: 0,
            capacity,
            kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
        }
    }

    /// The storage dtype of keys and values.
    pub fn dtype(&self) -> DType {
        match self.v.first() {
            Some(KvBuf::Bf16(_)) => DType::BF16,
            Some(KvBuf::F16(_)) => DType::F16,
            _ => DType::F32,
        }
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
    /// Forgets every position (keeps the memory).
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Bytes of key/value storage.
    pub fn bytes(&self) -> usize {
        self.kt
            .iter()
            .chain(&self.v)
            .map(|b| b.len() * b.elem_bytes())
            .sum()
    }
}

/// Floats of one KV head's keys in the blocked layout.
fn key_group_len(capacity: usize, head_dim: usize) -> usize {
    capacity.next_multiple_of(fused::KEY_BLOCK) * head_dim
}

/// Below this many score entries per head, heads run one after another (rayon's fork/join costs
/// more than the work).
const PAR_HEADS_MIN: usize = 256;

impl Attention {
    /// `x: [t, hidden]` (already normed) at positions `offset..offset + t` → `out: [t, hidden]`;
    /// appends this step's keys and values to `layer`'s cache.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        c: &LlamaConfig,
        rotary: &Rotary,
        x: &[f32],
        t: usize,
        cache: &mut KvCache,
        layer: usize,
        out: &mut [f32],
    ) {
        let merged = self.context(c, rotary, x, t, cache, layer);
        self.o_proj.forward_slice(&merged, t, out);
    }

    /// The attention context before `o_proj`: `x: [t, hidden]` (normed) → `[t, heads · head_dim]`,
    /// row `s` holding heads `0..heads`; appends the keys and values to `layer`'s cache.
    fn context(
        &self,
        c: &LlamaConfig,
        rotary: &Rotary,
        x: &[f32],
        t: usize,
        cache: &mut KvCache,
        layer: usize,
    ) -> Vec<f32> {
        let (h, kvh, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let p = cache.len;
        let positions: Vec<usize> = (p..p + t).collect();
        let mut q = vec![0f32; t * h * hd];
        let mut k = vec![0f32; t * kvh * hd];
        let mut v = vec![0f32; t * kvh * hd];
        Linear::forward_many(
            &[&self.q_proj, &self.k_proj, &self.v_proj],
            x,
            t,
            &mut [&mut q, &mut k, &mut v],
        );
        rotary.apply(&mut q, h, &positions);
        rotary.apply(&mut k, kvh, &positions);
        // Fold the 1/√d score scale into q once.
        let scale = 1.0 / (hd as f32).sqrt();
        q.iter_mut().for_each(|e| *e *= scale);
        let cap = cache.capacity;
        let gsz = key_group_len(cap, hd);
        let (kc, vc) = (&mut cache.kt[layer], &mut cache.v[layer]);
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
        let (kc, vc) = (&cache.kt[layer], &cache.v[layer]);
        let groups = h / kvh;
        if t <= DIRECT_MAX_ROWS {
            return match (kc, vc) {
                (KvBuf::F32(kc), KvBuf::F32(vc)) => {
                    decode_attention(&q, kc, vc, cap, h, groups, hd, p, t)
                }
                (KvBuf::Bf16(kc), KvBuf::Bf16(vc)) => {
                    decode_attention(&q, kc, vc, cap, h, groups, hd, p, t)
                }
                (KvBuf::F16(kc), KvBuf::F16(vc)) => {
                    decode_attention(&q, kc, vc, cap, h, groups, hd, p, t)
                }
                _ => unreachable!("keys and values share one dtype"),
            };
        }
        // Each group's keys as one `[hd, l]` f32 matrix for the score GEMMs, and its values
        // `[l, hd]`.
        let kts: Vec<Vec<f32>> = (0..kvh).map(|g| kc.key_matrix(g * gsz, hd, l)).collect();
        let vs: Vec<Cow<[f32]>> = (0..kvh)
            .map(|g| vc.f32_range(g * cap * hd..(g * cap + l) * hd))
            .collect();
        // Head hh writes its context rows `[t, hd]` into its own chunk of `per_head: [h, t·hd]`,
        // as two GEMMs.
        let head = |(hh, ctx): (usize, &mut [f32])| {
            let g = hh / groups;
            let ktg = &kts[g];
            let vg = &vs[g][..];
            let mut scores = vec![0f32; t * l];
            // scores[t, l] = q_h[t, hd] · K_gᵀ
            gemm(
                t,
                l,
                hd,
                MatRef::new(&q[hh * hd..], h * hd, 1),
                MatRef::new(ktg, l, 1),
                &mut scores,
            );
            fused::softmax_causal_inplace(&mut scores, t, l, p);
            // ctx[t, hd] = P[t, l] · V_g[l, hd]
            gemm(
                t,
                hd,
                l,
                MatRef::new(&scores, l, 1),
                MatRef::new(vg, hd, 1),
                ctx,
            );
        };
        let mut per_head = vec![0f32; h * t * hd];
        if t * l >= PAR_HEADS_MIN {
            per_head.par_chunks_mut(t * hd).enumerate().for_each(head);
        } else {
            per_head.chunks_mut(t * hd).enumerate().for_each(head);
        }
        // Back to the token-major layout o_proj reads: row s holds heads 0..h.
        let mut merged = vec![0f32; t * h * hd];
        for hh in 0..h {
            for s in 0..t {
                merged[(s * h + hh) * hd..(s * h + hh + 1) * hd]
                    .copy_from_slice(&per_head[(hh * t + s) * hd..(hh * t + s + 1) * hd]);
            }
        }
        merged
    }
}

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

impl Mlp {
    /// `x: [t, hidden]` (already normed) → `out: [t, hidden]`.
    fn forward(&self, x: &[f32], t: usize, out: &mut [f32]) {
        let act = self.activation(x, t);
        self.down_proj.forward_slice(&act, t, out);
    }

    /// The input of `down_proj`: `silu(gate(x)) ⊙ up(x)`, `x: [t, hidden]` → `[t, intermediate]`.
    pub fn activation(&self, x: &[f32], t: usize) -> Vec<f32> {
        let f = self.gate_proj.out_features();
        let mut gate = vec![0f32; t * f];
        let mut up = vec![0f32; t * f];
        in_pool(|| {
            Linear::forward_many(
                &[&self.gate_proj, &self.up_proj],
                x,
                t,
                &mut [&mut gate, &mut up],
            )
        });
        let mut act = vec![0f32; t * f];
        fused::silu_mul(&gate, &up, &mut act);
        act
    }
}

/// Stage by stage access to one decoder layer on one window at positions `0..t` with no cache,
/// for layer-wise calibration (pruning observes the input of each projection group, prunes it,
/// then runs the next stage with the pruned weights).
impl DecoderLayer {
    /// The input of `q_proj`, `k_proj` and `v_proj`: `input_layernorm(x)`, `x: [t, hidden]`.
    pub fn attention_input(&self, x: &[f32]) -> Vec<f32> {
        let mut xn = vec![0f32; x.len()];
        self.input_layernorm.forward_slice(x, &mut xn);
        xn
    }

    /// The input of `o_proj`: causal attention over positions `0..t` of the normed window
    /// `xn: [t, hidden]` → `[t, heads · head_dim]`.
    pub fn attention_context(
        &self,
        c: &LlamaConfig,
        rotary: &Rotary,
        xn: &[f32],
        t: usize,
    ) -> Vec<f32> {
        let mut cache = KvCache::build(c, 1, t, DType::F32);
        in_pool(|| self.self_attn.context(c, rotary, xn, t, &mut cache, 0))
    }

    /// `x += o_proj(ctx)`: the residual stream after attention, in place (`ctx` from
    /// [`attention_context`](Self::attention_context)).
    pub fn attention_residual(&self, x: &mut [f32], ctx: &[f32], t: usize) {
        let mut y = vec![0f32; x.len()];
        in_pool(|| self.self_attn.o_proj.forward_slice(ctx, t, &mut y));
        fused::add_assign(x, &y);
    }

    /// The input of `gate_proj` and `up_proj`: `post_attention_layernorm(h)`.
    pub fn mlp_input(&self, h: &[f32]) -> Vec<f32> {
        let mut xn = vec![0f32; h.len()];
        self.post_attention_layernorm.forward_slice(h, &mut xn);
        xn
    }

    /// `h += down_proj(act)`: the layer's output, in place (`act` from [`Mlp::activation`]).
    pub fn mlp_residual(&self, h: &mut [f32], act: &[f32], t: usize) {
        let mut y = vec![0f32; h.len()];
        in_pool(|| self.mlp.down_proj.forward_slice(act, t, &mut y));
        fused::add_assign(h, &y);
    }

    /// The whole layer on one window at positions `0..t`, in place: `x: [t, hidden]`.
    pub fn forward_window(&self, c: &LlamaConfig, rotary: &Rotary, x: &mut [f32], t: usize) {
        let xn = self.attention_input(x);
        let ctx = self.attention_context(c, rotary, &xn, t);
        self.attention_residual(x, &ctx, t);
        let xn = self.mlp_input(x);
        let act = self.mlp.activation(&xn, t);
        self.mlp_residual(x, &act, t);
    }
}

impl Llama {
    /// Checks the weights' shapes against the configuration and builds rotary tables for the
    /// configuration's context length in `layout`.
    pub fn new(
        config: LlamaConfig,
        model: LlamaModel,
        lm_head: Linear,
        layout: RopeLayout,
    ) -> Result<Llama> {
        let c = &config;
        let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (qd, kvd) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let check = |name: String, got: &[usize], want: [usize; 2]| {
            if got != want {
                return Err(Error::invalid(
                    "Llama::new",
                    format!("{name} has shape {got:?}, the config implies {want:?}"),
                ));
            }
            Ok(())
        };
        check(
            "model.embed_tokens.weight".into(),
            model.embed_tokens.weight.dims(),
            [v, d],
        )?;
        check("lm_head.weight".into(), &lm_head.shape(), [v, d])?;
        if model.layers.len() != c.num_hidden_layers {
            return Err(Error::invalid(
                "Llama::new",
                format!(
                    "{} layers, the config says {}",
                    model.layers.len(),
                    c.num_hidden_layers
                ),
            ));
        }
        for (i, l) in model.layers.iter().enumerate() {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            let a = &l.self_attn;
            check(p("self_attn.q_proj"), &a.q_proj.shape(), [qd, d])?;
            check(p("self_attn.k_proj"), &a.k_proj.shape(), [kvd, d])?;
            check(p("self_attn.v_proj"), &a.v_proj.shape(), [kvd, d])?;
            check(p("self_attn.o_proj"), &a.o_proj.shape(), [d, qd])?;
            check(p("mlp.gate_proj"), &l.mlp.gate_proj.shape(), [f, d])?;
            check(p("mlp.up_proj"), &l.mlp.up_proj.shape(), [f, d])?;
            check(p("mlp.down_proj"), &l.mlp.down_proj.shape(), [d, f])?;
            for (n, w) in [
                ("input_layernorm", &l.input_layernorm),
                ("post_attention_layernorm", &l.post_attention_layernorm),
            ] {
                if w.weight.dims() != [d] {
                    return Err(Error::invalid(
                        "Llama::new",
                        format!("{} has shape {:?}, expected [{d}]", p(n), w.weight.dims()),
                    ));
                }
            }
        }
        if model.norm.weight.dims() != [d] {
            return Err(Error::invalid(
                "Llama::new",
                format!(
                    "model.norm.weight has shape {:?}, expected [{d}]",
                    model.norm.weight.dims()
                ),
            ));
        }
        let rotary = Rotary::new(c.head_dim, c.max_position_embeddings, c.rope_theta, layout);
        let mut llama = Llama {
            config,
            model,
            lm_head,
            rotary,
            kv_dtype: DType::F32,
        };
        if let d @ (DType::BF16 | DType::F16) = llama.dtype() {
            llama.kv_dtype = d;
        }
        Ok(llama)
    }

    /// An empty KV cache for up to `capacity` positions in [`kv_dtype`](Self::kv_dtype) (an
    /// error if that is not f32, bf16 or f16).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        KvCache::with_dtype(&self.config, capacity, self.kv_dtype)
    }

    /// A model with random weights (normal, std 0.02; norm gains 1) in f32, for tests and
    /// examples.
    pub fn random(config: &LlamaConfig, seed: u64) -> Result<Llama> {
        let c = config;
        let mut s = seed;
        let mut w = |r: usize, k: usize| {
            s = s.wrapping_add(1);
            Tensor::randn([r, k], 0.0, 0.02, DType::F32, s)
        };
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let (qd, kvd) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let ones = || RmsNorm::new(Tensor::ones([d], DType::F32)?, c.rms_norm_eps);
        let embed = Embedding::new(w(c.vocab_size, d)?)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for _ in 0..c.num_hidden_layers {
            layers.push(DecoderLayer {
                self_attn: Attention {
                    q_proj: Linear::new(w(qd, d)?)?,
                    k_proj: Linear::new(w(kvd, d)?)?,
                    v_proj: Linear::new(w(kvd, d)?)?,
                    o_proj: Linear::new(w(d, qd)?)?,
                },
                mlp: Mlp {
                    gate_proj: Linear::new(w(f, d)?)?,
                    up_proj: Linear::new(w(f, d)?)?,
                    down_proj: Linear::new(w(d, f)?)?,
                },
                input_layernorm: ones()?,
                post_attention_layernorm: ones()?,
            });
        }
        let lm_head = if c.tie_word_embeddings {
            Linear::new(embed.weight.clone())?
        } else {
            Linear::new(w(c.vocab_size, d)?)?
        };
        let model = LlamaModel {
            embed_tokens: embed,
            layers,
            norm: ones()?,
        };
        Llama::new(c.clone(), model, lm_head, RopeLayout::HalfSplit)
    }

    /// Every weight under its HF checkpoint key (the tied head is left out, as HF saves it);
    /// sparse projections are expanded to dense tensors with +0.0 at the pruned entries.
    pub fn named_weights(&self) -> Vec<(String, Cow<'_, Tensor>)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            Cow::Borrowed(&self.model.embed_tokens.weight),
        )];
        for (i, l) in self.model.layers.iter().enumerate() {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            for (name, lin) in Self::layer_linears(l) {
                out.push((p(name), lin.weight_tensor()));
            }
            out.push((
                p("input_layernorm"),
                Cow::Borrowed(&l.input_layernorm.weight),
            ));
            out.push((
                p("post_attention_layernorm"),
                Cow::Borrowed(&l.post_attention_layernorm.weight),
            ));
        }
        out.push((
            "model.norm.weight".to_string(),
            Cow::Borrowed(&self.model.norm.weight),
        ));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.weight_tensor()));
        }
        out
    }

    /// [`layer_linears`](Self::layer_linears), mutable (pruning and sparsifying replace them).
    pub fn layer_linears_mut(l: &mut DecoderLayer) -> [(&'static str, &mut Linear); 7] {
        let a = &mut l.self_attn;
        [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.o_proj", &mut a.o_proj),
            ("mlp.gate_proj", &mut l.mlp.gate_proj),
            ("mlp.up_proj", &mut l.mlp.up_proj),
            ("mlp.down_proj", &mut l.mlp.down_proj),
        ]
    }

    /// The seven projections of a decoder layer with their names relative to the layer
    /// (`self_attn.q_proj`, ..., `mlp.down_proj`), in checkpoint order.
    pub fn layer_linears(l: &DecoderLayer) -> [(&'static str, &Linear); 7] {
        let a = &l.self_attn;
        [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &l.mlp.gate_proj),
            ("mlp.up_proj", &l.mlp.up_proj),
            ("mlp.down_proj", &l.mlp.down_proj),
        ]
    }

    /// Bytes of weights one decode step reads: every projection, the output head, the norms and
    /// one embedding row.
    pub fn weight_bytes_per_token(&self) -> usize {
        let mut b = self.lm_head.weight_bytes();
        for l in &self.model.layers {
            for (_, lin) in Self::layer_linears(l) {
                b += lin.weight_bytes();
            }
            b += 2 * self.config.hidden_size * 4;
        }
        let e = &self.model.embed_tokens.weight;
        b + self.config.hidden_size * 4 + e.dims()[1] * e.dtype().size_in_bytes()
    }

    /// Bytes of all weights held in memory (the tied table counted once; sparse projections
    /// by their stored parts).
    pub fn weight_bytes(&self) -> usize {
        let t = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let mut b = t(&self.model.embed_tokens.weight) + t(&self.model.norm.weight);
        for l in &self.model.layers {
            b += Self::layer_linears(l)
                .iter()
                .map(|(_, lin)| lin.weight_bytes())
                .sum::<usize>();
            b += t(&l.input_layernorm.weight) + t(&l.post_attention_layernorm.weight);
        }
        if !self.config.tie_word_embeddings {
            b += self.lm_head.weight_bytes();
        }
        b
    }

    /// The weights' storage dtype (that of the first projection).
    pub fn dtype(&self) -> DType {
        self.model
            .layers
            .first()
            .map(|l| l.self_attn.q_proj.dtype())
            .unwrap_or(self.lm_head.dtype())
    }

    /// Runs `ids` at positions `cache.len()..` through the decoder and the final norm, appending
    /// to the cache; returns the normed hidden states `[ids.len(), hidden]`.
    pub fn forward_hidden(&self, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        in_pool(|| self.forward_hidden_impl(ids, cache))
    }

    fn forward_hidden_impl(&self, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let c = &self.config;
        let t = ids.len();
        if cache.kt.len() != c.num_hidden_layers
            || cache.kv_heads != c.num_key_value_heads
            || cache.head_dim != c.head_dim
        {
            return Err(Error::invalid(
                "Llama::forward",
                "the KV cache was built for another configuration",
            ));
        }
        if cache.len + t > cache.capacity {
            return Err(Error::invalid(
                "Llama::forward",
                format!(
                    "{} cached + {t} new positions exceed the cache capacity {}",
                    cache.len, cache.capacity
                ),
            ));
        }
        if cache.len + t > self.rotary.max_pos {
            return Err(Error::invalid(
                "Llama::forward",
                format!(
                    "position {} is beyond the context length {}",
                    cache.len + t - 1,
                    self.rotary.max_pos
                ),
            ));
        }
        let d = c.hidden_size;
        let mut x = vec![0f32; t * d];
        self.model.embed_tokens.forward_slice(ids, &mut x)?;
        let mut xn = vec![0f32; t * d];
        let mut y = vec![0f32; t * d];
        for (i, l) in self.model.layers.iter().enumerate() {
            l.input_layernorm.forward_slice(&x, &mut xn);
            l.self_attn
                .forward(c, &self.rotary, &xn, t, cache, i, &mut y);
            fused::add_assign(&mut x, &y);
            l.post_attention_layernorm.forward_slice(&x, &mut xn);
            l.mlp.forward(&xn, t, &mut y);
            fused::add_assign(&mut x, &y);
        }
        cache.len += t;
        self.model.norm.forward_slice(&x, &mut xn);
        Ok(xn)
    }

    /// Logits `[rows, vocab]` of normed hidden states `[rows, hidden]`.
    pub fn logits_slice(&self, hidden: &[f32], rows: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * self.config.vocab_size];
        in_pool(|| self.lm_head.forward_slice(hidden, rows, &mut out));
        out
    }

    /// The logits of vocabulary entries `vocab` only: `out[rows, vocab.len()]` of normed hidden
    /// states `[rows, hidden]`. Panics on wrong lengths.
    pub fn logits_block(
        &self,
        hidden: &[f32],
        rows: usize,
        vocab: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        in_pool(|| self.lm_head.forward_outputs_slice(hidden, rows, vocab, out));
    }

    /// Logits `[ids.len(), vocab]` for every position of `ids` (positions `cache.len()..`).
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let h = self.forward_hidden(ids, cache)?;
        let logits = self.logits_slice(&h, ids.len());
        Tensor::from_vec(logits, [ids.len(), self.config.vocab_size])
    }

    /// Logits `[vocab]` of the last position only (generation: the head runs on one row).
    pub fn forward_last(&self, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::invalid("Llama::forward_last", "no tokens given"));
        }
        let h = self.forward_hidden(ids, cache)?;
        let d = self.config.hidden_size;
        Ok(self.logits_slice(&h[(ids.len() - 1) * d..], 1))
    }
}

/// Runs `f` on a thread of rayon's pool. Each parallel kernel call made from outside the pool
/// pays a cross-thread wake-up (about 20 µs on a 2-vCPU VM, measured), while one made from a
/// worker is a cheap local push; a decode step makes hundreds of them.
fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.expect("the scope ran the closure")
}
