//! LLaMA (Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models"): pre-norm
//! decoder layers of grouped-query causal attention with rotary embeddings and a SwiGLU MLP, with
//! a KV cache for incremental decoding. Struct fields equal the HF checkpoint keys
//! (`model.layers.N.self_attn.q_proj.weight` is `llama.model.layers[N].self_attn.q_proj`).
//!
//! The model is written once, on [`Var`] operations: inference, pruning calibration and training
//! run the same [`DecoderLayer::forward`]. With constant weights nothing is recorded (inference
//! pays one branch per op); with parameters (see [`Llama::params`]) the same pass records
//! the graph, batched over sequences, with per-layer hidden states and optional activation
//! checkpointing ([`ForwardOptions`]). Layers may differ in their numbers of heads and MLP width
//! (read from the weights).
//!
//! ```
//! use shears_models::config::LlamaConfig;
//! use shears_models::llama::Llama;
//! let json = r#"{"model_type": "llama", "vocab_size": 50, "hidden_size": 32,
//!   "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
//!   "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
//!   "tie_word_embeddings": true}"#;
//! let config = LlamaConfig::from_json_str(json, "config.json".as_ref())?;
//! let model = Llama::random(&config, 0)?;
//! let mut cache = model.new_cache(16)?;
//! let logits = model.forward(&[1, 2, 3], &mut cache)?; // prefill: [3, 50]
//! assert_eq!(logits.dims(), &[3, 50]);
//! let next = model.forward(&[4], &mut cache)?; // one decode step, position 3
//! assert_eq!((next.dims(), cache.len()), (&[1usize, 50][..], 4));
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::config::{LayerShape, LlamaConfig};
use crate::layers::{Embedding, Linear, RmsNorm};
use shears_autograd::optim::Param;
use shears_autograd::{is_grad_enabled, no_grad, with_grad_enabled, Var};
pub use shears_tensor::kv::KvCache;
use shears_tensor::{DType, Error, Result, RopeLayout, RopeTables, Tensor};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// Causal self-attention with grouped-query heads. The numbers of query and KV heads are those
/// of the weights (`q_proj` rows / `head_dim`, `k_proj` rows / `head_dim`).
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
    /// Rotary tables (shared by every layer) and the Q/K pair layout of the loaded weights.
    pub rope: Arc<RopeTables>,
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
    /// The configuration (its per-layer shapes are those of the weights).
    pub config: LlamaConfig,
    /// The decoder.
    pub model: LlamaModel,
    /// The output head `[vocab, hidden]`; shares the embedding's storage (and, when trained, its
    /// parameter) when tied.
    pub lm_head: Linear,
    /// Storage dtype of the KV caches [`new_cache`](Self::new_cache) makes: f32, bf16 or f16.
    /// [`Llama::new`] sets the weights' dtype (as HF transformers does; a half cache reads half
    /// the bytes per decode step).
    pub kv_dtype: DType,
}

/// What a forward pass returns besides the final hidden states.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions {
    /// Also return every decoder layer's output hidden state (layer-wise distillation).
    pub hidden_states: bool,
    /// Activation checkpointing per decoder layer when recording a graph: keep each layer's
    /// input and recompute the layer in the backward pass.
    pub checkpointing: bool,
}

/// Which weights [`Llama::params`] makes trainable. The default trains the decoder projections
/// and norms and freezes the embeddings and the output head (they are not pruned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainSpec {
    /// The seven projections of every decoder layer.
    pub projections: bool,
    /// Every RMSNorm gain.
    pub norms: bool,
    /// The embedding table (and the output head with it, when tied).
    pub embeddings: bool,
    /// The output head (when not tied).
    pub head: bool,
}

impl Default for TrainSpec {
    fn default() -> Self {
        TrainSpec {
            projections: true,
            norms: true,
            embeddings: false,
            head: false,
        }
    }
}

/// The result of [`Llama::forward_batch`].
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// The final norm's output, `(batch, seq, hidden)`.
    pub hidden: Var,
    /// Each decoder layer's output `(batch, seq, hidden)`, when asked for.
    pub layers: Vec<Var>,
}

impl Attention {
    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.rope.head_dim
    }
    /// Query heads (from `q_proj`'s rows).
    pub fn num_heads(&self) -> usize {
        self.q_proj.out_features() / self.head_dim()
    }
    /// Key/value heads (from `k_proj`'s rows).
    pub fn num_kv_heads(&self) -> usize {
        self.k_proj.out_features() / self.head_dim()
    }

    /// The attention context before `o_proj`: `xn: (batch, seq, hidden)` (normed) → `(batch,
    /// seq, heads · head_dim)`, each position attending causally over the sequence, or, with
    /// `cache = Some((cache, layer))` (batch 1, inference), over the cached positions too; the
    /// new keys and values are written to the cache's `layer`.
    pub fn context(&self, xn: &Var, cache: Option<(&mut KvCache, usize)>) -> Result<Var> {
        let (b, t) = (xn.dims()[0], xn.dims()[1]);
        let (h, kvh, hd) = (self.num_heads(), self.num_kv_heads(), self.head_dim());
        let qkv = Linear::forward_many(&[&self.q_proj, &self.k_proj, &self.v_proj], xn)?;
        let offset = cache.as_ref().map_or(0, |(c, _)| c.len());
        let q = qkv[0].reshape([b, t, h, hd])?.rope(&self.rope, offset)?;
        let k = qkv[1].reshape([b, t, kvh, hd])?.rope(&self.rope, offset)?;
        let v = qkv[2].reshape([b, t, kvh, hd])?;
        let scale = 1.0 / (hd as f64).sqrt();
        let ctx = match cache {
            Some((c, layer)) => q.attend_cached(&k, &v, c, layer, scale)?,
            None => Var::causal_attention(&q, &k, &v, scale)?,
        };
        ctx.reshape([b, t, h * hd])
    }
}

impl Mlp {
    /// The input of `down_proj`: `silu(gate(x)) ⊙ up(x)`, `(.., hidden)` → `(.., intermediate)`.
    pub fn activation(&self, xn: &Var) -> Result<Var> {
        let gu = Linear::forward_many(&[&self.gate_proj, &self.up_proj], xn)?;
        gu[0].silu_mul(&gu[1])
    }
    /// `down(silu(gate(x)) ⊙ up(x))`.
    pub fn forward(&self, xn: &Var) -> Result<Var> {
        self.down_proj.forward(&self.activation(xn)?)
    }
}

/// The stages of a decoder layer, which [`forward`](Self::forward) composes and layer-wise
/// calibration calls one at a time (pruning observes the input of each projection group, prunes
/// it, then runs the next stage with the pruned weights).
impl DecoderLayer {
    /// The input of `q_proj`, `k_proj` and `v_proj`: `input_layernorm(x)`.
    pub fn attention_input(&self, x: &Var) -> Result<Var> {
        self.input_layernorm.forward(x)
    }
    /// The input of `o_proj`: see [`Attention::context`].
    pub fn attention_context(&self, xn: &Var, cache: Option<(&mut KvCache, usize)>) -> Result<Var> {
        self.self_attn.context(xn, cache)
    }
    /// `x + o_proj(ctx)`: the residual stream after attention.
    pub fn attention_residual(&self, x: &Var, ctx: &Var) -> Result<Var> {
        x.add(&self.self_attn.o_proj.forward(ctx)?)
    }
    /// The input of `gate_proj` and `up_proj`: `post_attention_layernorm(h)`.
    pub fn mlp_input(&self, h: &Var) -> Result<Var> {
        self.post_attention_layernorm.forward(h)
    }
    /// `h + down_proj(act)`: the layer's output (`act` from [`Mlp::activation`]).
    pub fn mlp_residual(&self, h: &Var, act: &Var) -> Result<Var> {
        h.add(&self.mlp.down_proj.forward(act)?)
    }
    /// The whole layer: `x: (batch, seq, hidden)` → same shape (see
    /// [`Attention::context`] for `cache`).
    pub fn forward(&self, x: &Var, cache: Option<(&mut KvCache, usize)>) -> Result<Var> {
        let ctx = self.attention_context(&self.attention_input(x)?, cache)?;
        let h = self.attention_residual(x, &ctx)?;
        let act = self.mlp.activation(&self.mlp_input(&h)?)?;
        self.mlp_residual(&h, &act)
    }
    /// This layer's shape: query heads, KV heads, MLP width.
    pub fn shape(&self) -> LayerShape {
        LayerShape {
            num_attention_heads: self.self_attn.num_heads(),
            num_key_value_heads: self.self_attn.num_kv_heads(),
            intermediate_size: self.mlp.gate_proj.out_features(),
        }
    }
}

impl Llama {
    /// Checks the weights' shapes against the configuration (the hidden size, vocabulary and
    /// head width; heads and MLP width may differ per layer and are read from the weights, and
    /// recorded in `config`) and that every layer's rotary tables fit it (build them once with
    /// [`rope_tables`]).
    pub fn new(mut config: LlamaConfig, model: LlamaModel, lm_head: Linear) -> Result<Llama> {
        let shapes = check_shapes(&config, &model, &lm_head)?;
        config.set_layer_shapes(shapes);
        let mut llama = Llama {
            config,
            model,
            lm_head,
            kv_dtype: DType::F32,
        };
        if let d @ (DType::BF16 | DType::F16) = llama.dtype() {
            llama.kv_dtype = d;
        }
        Ok(llama)
    }

    /// Re-reads the per-layer shapes from the weights into `config` after projections were
    /// replaced (structured pruning), checking that they still fit together. The shapes recorded
    /// before are not held against the weights: they are what this replaces.
    pub fn refresh_shapes(&mut self) -> Result<()> {
        let mut config = self.config.clone();
        config.layer_shapes.clear();
        let shapes = check_shapes(&config, &self.model, &self.lm_head)?;
        self.config.set_layer_shapes(shapes);
        Ok(())
    }

    /// The rotary tables and pair layout.
    pub fn rope(&self) -> &Arc<RopeTables> {
        &self.model.layers[0].self_attn.rope
    }

    /// An empty KV cache for up to `capacity` positions in [`kv_dtype`](Self::kv_dtype), sized
    /// per layer (an error if the dtype is not f32, bf16 or f16).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        self.new_cache_with_dtype(capacity, self.kv_dtype)
    }

    /// [`new_cache`](Self::new_cache) storing keys and values as `dtype`.
    pub fn new_cache_with_dtype(&self, capacity: usize, dtype: DType) -> Result<KvCache> {
        let hd = self.config.head_dim;
        let layers: Vec<(usize, usize)> = self
            .model
            .layers
            .iter()
            .map(|l| (l.self_attn.num_kv_heads(), hd))
            .collect();
        KvCache::new(capacity, dtype, &layers)
    }

    /// A model with random weights (normal, std 0.02; norm gains 1) in f32, for tests and
    /// examples.
    pub fn random(config: &LlamaConfig, seed: u64) -> Result<Llama> {
        Self::random_with_dtype(config, seed, DType::F32)
    }

    /// [`random`](Self::random) in `dtype` (f32, or f64 for gradient checks), with every layer
    /// shaped as `config` says (its per-layer shapes, if any).
    pub fn random_with_dtype(config: &LlamaConfig, seed: u64, dtype: DType) -> Result<Llama> {
        let c = config;
        let mut s = seed;
        let mut w = |r: usize, k: usize| {
            s = s.wrapping_add(1);
            Tensor::randn([r, k], 0.0, 0.02, dtype, s)
        };
        let d = c.hidden_size;
        let hd = c.head_dim;
        let ones = || RmsNorm::new(Tensor::ones([d], dtype)?, c.rms_norm_eps);
        let embed = Embedding::new(w(c.vocab_size, d)?)?;
        let rope = rope_tables(c, RopeLayout::HalfSplit)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let ls = c.layer_shape(i);
            let (qd, kvd, f) = (
                ls.num_attention_heads * hd,
                ls.num_key_value_heads * hd,
                ls.intermediate_size,
            );
            layers.push(DecoderLayer {
                self_attn: Attention {
                    q_proj: Linear::new(w(qd, d)?)?,
                    k_proj: Linear::new(w(kvd, d)?)?,
                    v_proj: Linear::new(w(kvd, d)?)?,
                    o_proj: Linear::new(w(d, qd)?)?,
                    rope: rope.clone(),
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
            Linear::from_var(embed.weight.clone())?
        } else {
            Linear::new(w(c.vocab_size, d)?)?
        };
        let model = LlamaModel {
            embed_tokens: embed,
            layers,
            norm: ones()?,
        };
        Llama::new(c.clone(), model, lm_head)
    }

    /// Every weight under its HF checkpoint key (the tied head is left out, as HF saves it);
    /// sparse projections are expanded to dense tensors with +0.0 at the pruned entries.
    pub fn named_weights(&self) -> Vec<(String, Cow<'_, Tensor>)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            Cow::Borrowed(self.model.embed_tokens.weight.tensor()),
        )];
        for (i, l) in self.model.layers.iter().enumerate() {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            for (name, lin) in Self::layer_linears(l) {
                out.push((p(name), lin.weight_tensor()));
            }
            out.push((
                p("input_layernorm"),
                Cow::Borrowed(l.input_layernorm.weight.tensor()),
            ));
            out.push((
                p("post_attention_layernorm"),
                Cow::Borrowed(l.post_attention_layernorm.weight.tensor()),
            ));
        }
        out.push((
            "model.norm.weight".to_string(),
            Cow::Borrowed(self.model.norm.weight.tensor()),
        ));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.weight_tensor()));
        }
        out
    }

    /// Errors naming the first weight that holds a NaN or an infinity, with the element's
    /// position (`[row, column]` for a matrix), before it can spread through every logit.
    /// A sparse projection is expanded to check it, one at a time (never the whole model).
    pub fn check_finite(&self) -> Result<()> {
        let check = |name: &str, w: &Tensor| -> Result<()> {
            match w.first_non_finite()? {
                None => Ok(()),
                Some((i, v)) => {
                    let at = match w.dims() {
                        [_, cols] => format!("[{}, {}]", i / cols, i % cols),
                        _ => format!("element {i}"),
                    };
                    Err(Error::invalid(
                        "Llama::check_finite",
                        format!("weight `{name}` holds {v} at {at}"),
                    ))
                }
            }
        };
        check(
            "model.embed_tokens.weight",
            self.model.embed_tokens.weight.tensor(),
        )?;
        for (i, l) in self.model.layers.iter().enumerate() {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            for (name, lin) in Self::layer_linears(l) {
                check(&p(name), &lin.weight_tensor())?;
            }
            check(&p("input_layernorm"), l.input_layernorm.weight.tensor())?;
            check(
                &p("post_attention_layernorm"),
                l.post_attention_layernorm.weight.tensor(),
            )?;
        }
        check("model.norm.weight", self.model.norm.weight.tensor())?;
        if !self.config.tie_word_embeddings {
            check("lm_head.weight", &self.lm_head.weight_tensor())?;
        }
        Ok(())
    }

    /// Makes the tensors `spec` selects trainable and returns them as optimizer parameters named
    /// by their checkpoint keys: a dense projection's weight, a masked one's weight with its mask
    /// (pruned entries stay exactly 0), a sparse one's kept values `[nnz]` (the structure is
    /// fixed). They are put in place at once, so the next forward pass records gradients for
    /// them; after every optimizer step (which replaces each parameter's leaf) call
    /// [`set_params`](Self::set_params) again. f32 or f64 weights only (convert a
    /// half-precision model first).
    ///
    /// A few training steps of a small random LLaMA on one repeated sequence (next-token
    /// cross-entropy, AdamW); the loss falls:
    ///
    /// ```
    /// use shears_autograd::optim::{AdamW, Optimizer};
    /// use shears_models::config::LlamaConfig;
    /// use shears_models::llama::{ForwardOptions, Llama, TrainSpec};
    /// use shears_tensor::Tensor;
    ///
    /// # fn main() -> shears_tensor::Result<()> {
    /// let config = LlamaConfig {
    ///     vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2,
    ///     num_attention_heads: 4, num_key_value_heads: 2, head_dim: 8, rms_norm_eps: 1e-5,
    ///     rope_theta: 10_000.0, max_position_embeddings: 64, tie_word_embeddings: true,
    ///     bos_token_id: None, eos_token_ids: vec![], layer_shapes: vec![],
    /// };
    /// let mut model = Llama::random(&config, 7)?;
    /// let seq: Vec<u32> = (0..17).map(|i| (i * 5 % 64) as u32).collect();
    /// let input = Tensor::from_vec(seq[..16].to_vec(), [1, 16])?;
    /// let target = Tensor::from_vec(seq[1..].iter().map(|&i| i as i64).collect::<Vec<_>>(), [16])?;
    /// // Projections and norms (the default), and here the embedding table too (tied to the head).
    /// let spec = TrainSpec { embeddings: true, ..TrainSpec::default() };
    /// let mut params = model.params(spec)?;
    /// let mut opt = AdamW::new(1e-2);
    /// let mut losses = Vec::new();
    /// for _ in 0..20 {
    ///     let opts = ForwardOptions { hidden_states: false, checkpointing: true };
    ///     let (logits, _) = model.forward_train(&input, opts)?; // (1, 16, 64)
    ///     let loss = logits.reshape([16, 64])?.cross_entropy(&target, None)?;
    ///     let grads = loss.backward()?;
    ///     opt.step(&mut params, &grads)?;
    ///     model.set_params(&params)?; // the step made new leaves: put them in the model
    ///     losses.push(loss.tensor().to_scalar::<f32>()?);
    /// }
    /// assert!(losses[19] < 0.7 * losses[0], "{losses:?}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn params(&mut self, spec: TrainSpec) -> Result<Vec<Param>> {
        let params = self.new_params(spec)?;
        self.set_params(&params)?;
        Ok(params)
    }

    fn new_params(&self, spec: TrainSpec) -> Result<Vec<Param>> {
        let mut out = Vec::new();
        let value = |name: &str, v: &Var| Param::new(name, v.tensor().clone());
        if spec.embeddings {
            out.push(value(
                "model.embed_tokens.weight",
                &self.model.embed_tokens.weight,
            )?);
        }
        for (i, l) in self.model.layers.iter().enumerate() {
            if spec.projections {
                for (name, lin) in Self::layer_linears(l) {
                    let p = value(&format!("model.layers.{i}.{name}.weight"), lin.var())?;
                    out.push(match lin.mask() {
                        Some(m) => p.with_mask(m.clone())?,
                        None => p,
                    });
                }
            }
            if spec.norms {
                for (name, n) in [
                    ("input_layernorm", &l.input_layernorm),
                    ("post_attention_layernorm", &l.post_attention_layernorm),
                ] {
                    out.push(value(
                        &format!("model.layers.{i}.{name}.weight"),
                        &n.weight,
                    )?);
                }
            }
        }
        if spec.norms {
            out.push(value("model.norm.weight", &self.model.norm.weight)?);
        }
        if spec.head && !self.config.tie_word_embeddings {
            out.push(value("lm_head.weight", self.lm_head.var())?);
        }
        Ok(out)
    }

    /// Puts each parameter's current value (see [`params`](Self::params)) in its place, by
    /// name, so the next forward pass records gradients for it. A tied embedding also becomes
    /// the output head. Unknown names and wrong shapes are errors.
    pub fn set_params(&mut self, params: &[Param]) -> Result<()> {
        let mut by_name: HashMap<&str, &Param> = params.iter().map(|p| (p.name(), p)).collect();
        let mut take = |name: &str| by_name.remove(name).map(|p| p.var().clone());
        let check = |name: &str, old: &Var, new: &Var| {
            if old.dims() != new.dims() {
                return Err(Error::shape_msg(
                    "Llama::set_params",
                    new.shape(),
                    old.shape(),
                    format!("{name} has another shape"),
                ));
            }
            Ok(())
        };
        if let Some(v) = take("model.embed_tokens.weight") {
            check(
                "model.embed_tokens.weight",
                &self.model.embed_tokens.weight,
                &v,
            )?;
            if self.config.tie_word_embeddings {
                self.lm_head.set_var(v.clone())?;
            }
            self.model.embed_tokens.weight = v;
        }
        for (i, l) in self.model.layers.iter_mut().enumerate() {
            for (name, lin) in Self::layer_linears_mut(l) {
                if let Some(v) = take(&format!("model.layers.{i}.{name}.weight")) {
                    lin.set_var(v)?;
                }
            }
            for (name, n) in [
                ("input_layernorm", &mut l.input_layernorm),
                ("post_attention_layernorm", &mut l.post_attention_layernorm),
            ] {
                let key = format!("model.layers.{i}.{name}.weight");
                if let Some(v) = take(&key) {
                    check(&key, &n.weight, &v)?;
                    n.weight = v;
                }
            }
        }
        if let Some(v) = take("model.norm.weight") {
            check("model.norm.weight", &self.model.norm.weight, &v)?;
            self.model.norm.weight = v;
        }
        if let Some(v) = take("lm_head.weight") {
            self.lm_head.set_var(v)?;
        }
        if let Some(name) = by_name.keys().next() {
            return Err(Error::invalid(
                "Llama::set_params",
                format!("no weight named {name}"),
            ));
        }
        Ok(())
    }

    /// Turns every dense decoder projection that holds exact zeros into a masked one (see
    /// [`Linear::masked`]): trained densely, its zeros stay zeros. Returns how many changed.
    pub fn mask_pruned_projections(&mut self) -> Result<usize> {
        let mut changed = 0;
        for l in &mut self.model.layers {
            for (_, lin) in Self::layer_linears_mut(l) {
                if let crate::layers::Weight::Dense(w) = &lin.weight {
                    let mask = w.tensor().ne_zero()?;
                    if mask.zero_fraction() > 0.0 {
                        *lin = Linear::masked(w.clone(), &mask)?;
                        changed += 1;
                    }
                }
            }
        }
        Ok(changed)
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
        let e = self.model.embed_tokens.weight.tensor();
        b + self.config.hidden_size * 4 + e.dims()[1] * e.dtype().size_in_bytes()
    }

    /// Bytes of all weights held in memory (the tied table counted once; sparse projections
    /// by their stored parts).
    pub fn weight_bytes(&self) -> usize {
        let t = |v: &Var| v.elem_count() * v.dtype().size_in_bytes();
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

    /// The dtype of activations: f64 for an f64 model (gradient checks), f32 otherwise.
    pub fn compute_dtype(&self) -> DType {
        if self.model.norm.weight.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }

    /// The one forward pass: token ids `ids: (batch, seq)` (u32) through the embedding, the
    /// decoder layers and the final norm → [`ForwardOutput`]. Without a cache every sequence
    /// attends causally over itself from position 0 (training, calibration, evaluation of whole
    /// windows); with one (batch 1, inference) the sequence continues at position `cache.len()`
    /// and is appended to it. Records a graph when a weight is a parameter and recording is on
    /// (see [`shears_autograd::no_grad`]).
    pub fn forward_batch(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        opts: ForwardOptions,
    ) -> Result<ForwardOutput> {
        in_pool(move || self.forward_impl(ids, cache, opts))
    }

    fn forward_impl(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        opts: ForwardOptions,
    ) -> Result<ForwardOutput> {
        const OP: &str = "Llama::forward";
        if ids.rank() != 2 {
            return Err(Error::invalid(
                OP,
                format!("expected token ids (batch, seq), got shape {}", ids.shape()),
            ));
        }
        let (b, t) = (ids.dims()[0], ids.dims()[1]);
        let start = cache.as_ref().map_or(0, |c| c.len());
        if let Some(c) = cache.as_deref() {
            let fits = c.num_layers() == self.model.layers.len()
                && self.model.layers.iter().enumerate().all(|(i, l)| {
                    c.layer_shape(i) == Some((l.self_attn.num_kv_heads(), self.config.head_dim))
                });
            if !fits {
                return Err(Error::invalid(
                    OP,
                    "the KV cache was built for another model",
                ));
            }
            if b != 1 {
                return Err(Error::invalid(
                    OP,
                    format!("a KV cache holds one sequence, got a batch of {b}"),
                ));
            }
            if c.len() + t > c.capacity() {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "{} cached + {t} new positions exceed the cache capacity {}",
                        c.len(),
                        c.capacity()
                    ),
                ));
            }
        }
        if start + t > self.config.max_position_embeddings {
            return Err(Error::invalid(
                OP,
                format!(
                    "position {} is beyond the context length {}",
                    start + t - 1,
                    self.config.max_position_embeddings
                ),
            ));
        }
        let mut x = self.model.embed_tokens.forward(ids, self.compute_dtype())?;
        let mut layers = Vec::new();
        for (i, l) in self.model.layers.iter().enumerate() {
            x = match cache.as_deref_mut() {
                Some(c) => l.forward(&x, Some((c, i)))?,
                None if opts.checkpointing && is_grad_enabled() => {
                    let layer = l.clone();
                    Var::checkpoint(&[&x], move |xs| layer.forward(&xs[0], None))?
                }
                None => l.forward(&x, None)?,
            };
            if opts.hidden_states {
                layers.push(x.clone());
            }
        }
        if let Some(c) = cache {
            c.advance(t)?;
        }
        let hidden = self.model.norm.forward(&x)?;
        Ok(ForwardOutput { hidden, layers })
    }

    /// Logits `(.., vocab)` of normed hidden states `(.., hidden)` (recorded like any op).
    pub fn logits(&self, hidden: &Var) -> Result<Var> {
        in_pool(move || self.lm_head.forward(hidden))
    }

    /// The training forward: logits `(batch, seq, vocab)` of `ids: (batch, seq)` and, if asked,
    /// every decoder layer's output (see [`forward_batch`](Self::forward_batch)).
    pub fn forward_train(&self, ids: &Tensor, opts: ForwardOptions) -> Result<(Var, Vec<Var>)> {
        let out = self.forward_batch(ids, None, opts)?;
        Ok((self.logits(&out.hidden)?, out.layers))
    }

    /// Runs `ids` at positions `cache.len()..` through the decoder and the final norm, appending
    /// to the cache; returns the normed hidden states `[ids.len(), hidden]` (inference: nothing
    /// is recorded).
    pub fn forward_hidden(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let ids = Tensor::from_slice(ids, [1, ids.len()])?;
        let out = no_grad(|| self.forward_batch(&ids, Some(cache), ForwardOptions::default()))?;
        let d = self.config.hidden_size;
        out.hidden.into_tensor().reshape([ids.dims()[1], d])
    }

    /// The logits of vocabulary entries `vocab` only: `[rows, vocab.len()]` of normed hidden
    /// states `hidden: [rows, hidden]` (one block of a large vocabulary at a time).
    pub fn logits_block(&self, hidden: &Tensor, vocab: std::ops::Range<usize>) -> Result<Tensor> {
        in_pool(|| self.lm_head.forward_rows(hidden, vocab))
    }

    /// Logits `[ids.len(), vocab]` for every position of `ids` (positions `cache.len()..`).
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let h = self.forward_hidden(ids, cache)?;
        no_grad(|| self.logits(&Var::constant(h))).map(Var::into_tensor)
    }

    /// Logits `[vocab]` of the last position only (generation: the head runs on one row).
    pub fn forward_last(&self, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::invalid("Llama::forward_last", "no tokens given"));
        }
        let h = self.forward_hidden(ids, cache)?;
        let last = h.narrow(0, ids.len() - 1, 1)?;
        let logits = no_grad(|| self.logits(&Var::constant(last)))?;
        logits.tensor().to_dtype(DType::F32)?.to_vec::<f32>()
    }
}

/// The rotary tables of `config` (its head width, context length and base) for checkpoints whose
/// Q/K rows pair dims as `layout` says; every layer of a model shares one.
pub fn rope_tables(config: &LlamaConfig, layout: RopeLayout) -> Result<Arc<RopeTables>> {
    Ok(Arc::new(RopeTables::new(
        config.head_dim,
        config.max_position_embeddings,
        config.rope_theta,
        layout,
    )?))
}

/// Checks every weight's shape against the configuration and the others in its layer; returns
/// the per-layer shapes the weights define.
fn check_shapes(c: &LlamaConfig, model: &LlamaModel, lm_head: &Linear) -> Result<Vec<LayerShape>> {
    let (d, v, hd) = (c.hidden_size, c.vocab_size, c.head_dim);
    let check = |name: String, got: &[usize], want: [usize; 2]| {
        if got != want {
            return Err(Error::invalid(
                "Llama::new",
                format!("{name} has shape {got:?}, expected {want:?}"),
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
    let mut shapes = Vec::with_capacity(model.layers.len());
    for (i, l) in model.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        let a = &l.self_attn;
        let (qr, kr, f) = (
            a.q_proj.out_features(),
            a.k_proj.out_features(),
            l.mlp.gate_proj.out_features(),
        );
        let r = &a.rope;
        if r.head_dim != hd || r.max_pos < c.max_position_embeddings {
            return Err(Error::invalid(
                "Llama::new",
                format!(
                    "model.layers.{i} has rotary tables for head_dim {} and {} positions, the \
                     config says {hd} and {}",
                    r.head_dim, r.max_pos, c.max_position_embeddings
                ),
            ));
        }
        if r.layout != model.layers[0].self_attn.rope.layout {
            return Err(Error::invalid(
                "Llama::new",
                format!("model.layers.{i} pairs rotary dims unlike model.layers.0"),
            ));
        }
        if qr % hd != 0 || kr % hd != 0 || kr == 0 || qr % kr != 0 {
            return Err(Error::invalid(
                "Llama::new",
                format!(
                    "model.layers.{i}: q_proj has {qr} rows and k_proj {kr}; both must be \
                     multiples of head_dim {hd}, and the KV heads must divide the query heads"
                ),
            ));
        }
        if let Some(want) = c.layer_shapes.get(i) {
            let got = (qr / hd, kr / hd, f);
            let want3 = (
                want.num_attention_heads,
                want.num_key_value_heads,
                want.intermediate_size,
            );
            if got != want3 {
                return Err(Error::invalid(
                    "Llama::new",
                    format!(
                        "model.layers.{i} has (heads, kv_heads, intermediate) = {got:?}, the \
                         config says {want3:?}"
                    ),
                ));
            }
        }
        check(p("self_attn.q_proj"), &a.q_proj.shape(), [qr, d])?;
        check(p("self_attn.k_proj"), &a.k_proj.shape(), [kr, d])?;
        check(p("self_attn.v_proj"), &a.v_proj.shape(), [kr, d])?;
        check(p("self_attn.o_proj"), &a.o_proj.shape(), [d, qr])?;
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
        shapes.push(l.shape());
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
    Ok(shapes)
}

/// Runs `f` on a thread of rayon's pool. Each parallel kernel call made from outside the pool
/// pays a cross-thread wake-up (about 20 µs on a 2-vCPU VM, measured), while one made from a
/// worker is a cheap local push; a decode step makes hundreds of them.
///
/// `f` runs with this thread's graph-recording mode ([`is_grad_enabled`]): recording is a
/// per-thread flag, and the worker that picks `f` up may be waiting inside another caller's
/// `no_grad` scope (found as a test that lost gradients only when run beside others).
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let grad = is_grad_enabled();
    let mut out = None;
    rayon::scope(|_| out = Some(with_grad_enabled(grad, f)));
    out.expect("the scope ran the closure")
}
