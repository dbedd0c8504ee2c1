//! The LLaMA configuration: read from an HF `config.json` or from GGUF metadata, written back as
//! an HF `config.json`.
//!
//! ```
//! use shears_models::config::LlamaConfig;
//! let json = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
//!   "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
//!   "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
//!   "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": true}"#;
//! let c = LlamaConfig::from_json_str(json, "config.json".as_ref())?;
//! assert_eq!((c.head_dim, c.kv_groups()), (16, 2));
//! let back = LlamaConfig::from_json_str(&c.to_json_string(), "again.json".as_ref())?;
//! assert_eq!(back, c);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use serde_json::{json, Map, Value};
use shears_tensor::io::gguf::Gguf;
use shears_tensor::{Error, Result};
use std::path::{Path, PathBuf};

/// The hyper-parameters of a LLaMA-architecture model (HF `LlamaConfig` names).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Rows of the embedding table and of the output head.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary embedding base θ.
    pub rope_theta: f64,
    /// The context length the model was trained for.
    pub max_position_embeddings: usize,
    /// The output head shares the embedding table.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token id, if the model has one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (generation stops at any of them).
    pub eos_token_ids: Vec<u32>,
    /// Per-layer shapes when the layers differ (structured pruning); empty when every layer has
    /// `num_attention_heads`, `num_key_value_heads` and `intermediate_size`. In `config.json`:
    /// the lists `num_attention_heads_per_layer`, `num_key_value_heads_per_layer` and
    /// `intermediate_size_per_layer`, one entry per layer, written only when the layers differ
    /// (an unpruned model keeps exactly the HF keys).
    pub layer_shapes: Vec<LayerShape>,
}

/// The shape of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerShape {
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (a divisor of the query heads).
    pub num_key_value_heads: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
}

/// The JSON keys of the per-layer shape lists.
const PER_LAYER_KEYS: [&str; 3] = [
    "num_attention_heads_per_layer",
    "num_key_value_heads_per_layer",
    "intermediate_size_per_layer",
];

impl LlamaConfig {
    /// Query heads per key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// The shape of layer `i`: its entry of [`layer_shapes`](Self::layer_shapes), else the
    /// global sizes.
    pub fn layer_shape(&self, i: usize) -> LayerShape {
        self.layer_shapes.get(i).copied().unwrap_or(LayerShape {
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            intermediate_size: self.intermediate_size,
        })
    }

    /// Records the layers' shapes: kept only when some layer differs from the global sizes.
    pub fn set_layer_shapes(&mut self, shapes: Vec<LayerShape>) {
        self.layer_shapes.clear();
        let uniform = (0..self.num_hidden_layers).map(|i| self.layer_shape(i));
        if !shapes.iter().copied().eq(uniform) {
            self.layer_shapes = shapes;
        }
    }

    /// The number of parameters (embedding and head counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let (d, v) = (self.hidden_size, self.vocab_size);
        let layers: usize = (0..self.num_hidden_layers)
            .map(|i| {
                let s = self.layer_shape(i);
                let q = s.num_attention_heads * self.head_dim;
                let kv = s.num_key_value_heads * self.head_dim;
                d * q + 2 * d * kv + q * d + 3 * d * s.intermediate_size + 2 * d
            })
            .sum();
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + layers + d + head
    }

    /// Reads an HF `config.json`.
    pub fn from_json_file(path: &Path) -> Result<LlamaConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of an HF `config.json`; `path` names it in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<LlamaConfig> {
        let err = |msg: String| Error::Config {
            path: path.to_path_buf(),
            msg,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| err("expected a JSON object".into()))?;
        let cfg = JsonFields { obj, path };
        let model_type = cfg.opt_str("model_type")?;
        let arch = obj
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str);
        let is_llama = model_type == Some("llama") || arch == Some("LlamaForCausalLM");
        if !is_llama {
            return Err(Error::Unsupported {
                what: format!(
                    "architecture {} in {} (supported: llama / LlamaForCausalLM)",
                    model_type.or(arch).unwrap_or("(none given)"),
                    path.display()
                ),
            });
        }
        if let Some(act) = cfg.opt_str("hidden_act")? {
            if act != "silu" {
                return Err(err(format!(
                    "hidden_act {act:?} is not supported (only silu)"
                )));
            }
        }
        for flag in ["attention_bias", "mlp_bias"] {
            if obj.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(err(format!("{flag} = true is not supported")));
            }
        }
        if let Some(s) = obj.get("rope_scaling") {
            if !s.is_null() {
                return Err(Error::Unsupported {
                    what: format!("rope_scaling {s} in {} (only plain RoPE)", path.display()),
                });
            }
        }
        let hidden_size = cfg.usize("hidden_size")?;
        let num_attention_heads = cfg.usize("num_attention_heads")?;
        let num_key_value_heads = cfg
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        let head_dim = match cfg.opt_usize("head_dim")? {
            Some(h) => h,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => 0,
        };
        let eos_token_ids =
            match obj.get("eos_token_id") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        json_u32(x)
                            .ok_or_else(|| err(format!("eos_token_id entry {x} is not a token id")))
                    })
                    .collect::<Result<_>>()?,
                Some(x) => vec![json_u32(x)
                    .ok_or_else(|| err(format!("eos_token_id {x} is not a token id")))?],
            };
        let c = LlamaConfig {
            vocab_size: cfg.usize("vocab_size")?,
            hidden_size,
            intermediate_size: cfg.usize("intermediate_size")?,
            num_hidden_layers: cfg.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: cfg.f64("rms_norm_eps")?,
            rope_theta: cfg.opt_f64("rope_theta")?.unwrap_or(10000.0),
            max_position_embeddings: cfg.usize("max_position_embeddings")?,
            tie_word_embeddings: obj
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id: match obj.get("bos_token_id") {
                None | Some(Value::Null) => None,
                Some(x) => Some(
                    json_u32(x)
                        .ok_or_else(|| err(format!("bos_token_id {x} is not a token id")))?,
                ),
            },
            eos_token_ids,
            layer_shapes: Vec::new(),
        };
        let lists: Vec<Option<Vec<usize>>> = PER_LAYER_KEYS
            .iter()
            .map(|k| cfg.opt_usize_list(k))
            .collect::<Result<_>>()?;
        let mut c = c;
        match lists.as_slice() {
            [None, None, None] => {}
            [Some(h), Some(kv), Some(f)] => {
                let n = c.num_hidden_layers;
                if h.len() != n || kv.len() != n || f.len() != n {
                    return Err(err(format!(
                        "the per-layer lists {PER_LAYER_KEYS:?} must have num_hidden_layers = \
                         {n} entries each"
                    )));
                }
                let shapes = (0..n)
                    .map(|i| LayerShape {
                        num_attention_heads: h[i],
                        num_key_value_heads: kv[i],
                        intermediate_size: f[i],
                    })
                    .collect();
                c.set_layer_shapes(shapes);
            }
            _ => {
                return Err(err(format!(
                    "give all of {PER_LAYER_KEYS:?} or none of them"
                )))
            }
        }
        c.validate(path)?;
        Ok(c)
    }

    /// Reads the configuration of a GGUF file whose `general.architecture` is `llama`.
    pub fn from_gguf(g: &Gguf) -> Result<LlamaConfig> {
        let arch = g.architecture()?;
        if arch != "llama" {
            return Err(Error::Unsupported {
                what: format!(
                    "architecture `{arch}` in {} (supported: llama)",
                    g.path.display()
                ),
            });
        }
        let key = |k: &str| format!("llama.{k}");
        let usize_of = |k: &str| -> Result<usize> { Ok(g.get_u64(&key(k))? as usize) };
        let hidden_size = usize_of("embedding_length")?;
        let num_attention_heads = usize_of("attention.head_count")?;
        let num_key_value_heads = match g.get(&key("attention.head_count_kv")) {
            Some(_) => usize_of("attention.head_count_kv")?,
            None => num_attention_heads,
        };
        let head_dim = match g.get(&key("rope.dimension_count")) {
            Some(_) => usize_of("rope.dimension_count")?,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => 0,
        };
        let vocab_size = match g.get(&key("vocab_size")) {
            Some(_) => usize_of("vocab_size")?,
            None => g
                .tensor_info("token_embd.weight")
                .map(|t| t.dims[0])
                .ok_or_else(|| Error::Config {
                    path: g.path.clone(),
                    msg: "no llama.vocab_size and no token_embd.weight".into(),
                })?,
        };
        let id = |k: &str| -> Result<Option<u32>> {
            match g.get(k) {
                None => Ok(None),
                Some(_) => Ok(Some(g.get_u64(k)? as u32)),
            }
        };
        if let Some(t) = g.get("llama.rope.scaling.type") {
            if t.as_str() != Some("none") {
                return Err(Error::Unsupported {
                    what: format!("rope scaling {t:?} in {}", g.path.display()),
                });
            }
        }
        let c = LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: usize_of("feed_forward_length")?,
            num_hidden_layers: usize_of("block_count")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: match g.get(&key("rope.freq_base")) {
                Some(_) => g.get_f64(&key("rope.freq_base"))?,
                None => 10000.0,
            },
            max_position_embeddings: usize_of("context_length")?,
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
            bos_token_id: id("tokenizer.ggml.bos_token_id")?,
            eos_token_ids: id("tokenizer.ggml.eos_token_id")?.into_iter().collect(),
            layer_shapes: Vec::new(),
        };
        c.validate(&g.path)?;
        Ok(c)
    }

    /// Checks the sizes are positive and consistent.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let err = |msg: String| {
            Err(Error::Config {
                path: path.to_path_buf(),
                msg,
            })
        };
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return err(format!("{name} must be positive"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        for (i, s) in self.layer_shapes.iter().enumerate() {
            if s.num_attention_heads == 0
                || s.num_key_value_heads == 0
                || s.intermediate_size == 0
                || !s.num_attention_heads.is_multiple_of(s.num_key_value_heads)
            {
                return err(format!(
                    "layer {i}: {} query heads, {} KV heads and MLP width {}: each must be \
                     positive and the KV heads must divide the query heads",
                    s.num_attention_heads, s.num_key_value_heads, s.intermediate_size
                ));
            }
        }
        if !self.head_dim.is_multiple_of(2) {
            return err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return err(format!(
                "rms_norm_eps {} is not a finite non-negative number",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return err(format!(
                "rope_theta {} is not a finite positive number",
                self.rope_theta
            ));
        }
        let ids = self.bos_token_id.iter().chain(&self.eos_token_ids);
        for &id in ids {
            if id as usize >= self.vocab_size {
                return err(format!(
                    "special token id {id} ≥ vocab_size {}",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// The HF `config.json` text for this configuration (`torch_dtype` names the saved weights).
    pub fn to_json_string_with_dtype(&self, torch_dtype: &str) -> String {
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let mut v = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": torch_dtype,
        });
        if !self.layer_shapes.is_empty() {
            let field = |f: fn(&LayerShape) -> usize| {
                json!(self.layer_shapes.iter().map(f).collect::<Vec<_>>())
            };
            v[PER_LAYER_KEYS[0]] = field(|s| s.num_attention_heads);
            v[PER_LAYER_KEYS[1]] = field(|s| s.num_key_value_heads);
            v[PER_LAYER_KEYS[2]] = field(|s| s.intermediate_size);
        }
        serde_json::to_string_pretty(&v).expect("a JSON value always serializes")
    }

    /// [`LlamaConfig::to_json_string_with_dtype`] with `torch_dtype` "float32".
    pub fn to_json_string(&self) -> String {
        self.to_json_string_with_dtype("float32")
    }
}

fn json_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|x| u32::try_from(x).ok())
}

/// Typed field access with errors that name the file and the field.
struct JsonFields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl JsonFields<'_> {
    fn err(&self, msg: String) -> Error {
        Error::Config {
            path: PathBuf::from(self.path),
            msg,
        }
    }
    fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        match self.obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                self.err(format!("field `{k}` = {v} is not a non-negative integer"))
            }),
        }
    }
    fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?
            .ok_or_else(|| self.err(format!("missing field `{k}`")))
    }
    fn opt_f64(&self, k: &str) -> Result<Option<f64>> {
        match self.obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("field `{k}` = {v} is not a number"))),
        }
    }
    fn f64(&self, k: &str) -> Result<f64> {
        self.opt_f64(k)?
            .ok_or_else(|| self.err(format!("missing field `{k}`")))
    }
    fn opt_usize_list(&self, k: &str) -> Result<Option<Vec<usize>>> {
        match self.obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64().map(|x| x as usize).ok_or_else(|| {
                        self.err(format!(
                            "field `{k}` has entry {x}, not a non-negative integer"
                        ))
                    })
                })
                .collect::<Result<_>>()
                .map(Some),
            Some(v) => Err(self.err(format!("field `{k}` = {v} is not a list"))),
        }
    }
    fn opt_str(&self, k: &str) -> Result<Option<&str>> {
        match self.obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(format!("field `{k}` = {v} is not a string"))),
        }
    }
}
