//! Loading LLaMA checkpoints (an HF directory or a GGUF file) and saving HF directories.
//!
//! An HF directory holds `config.json`, `model.safetensors` (or shards with
//! `model.safetensors.index.json`) in f32, f16 or bf16, and `tokenizer.json`. A GGUF file holds
//! all three; its quantized weights (Q8_0, Q4_0, Q4_1) are dequantized on load, and its Q/K rows
//! are in the interleaved rotary layout, which the model keeps (the rotary layer is told). Saving
//! writes an HF directory with Q/K rows in HF's half-split layout, every file atomically.
//!
//! ```
//! use shears_models::config::LlamaConfig;
//! use shears_models::llama::Llama;
//! use shears_models::load::{load_model, save_hf, LoadOptions};
//! let json = r#"{"model_type": "llama", "vocab_size": 40, "hidden_size": 16,
//!   "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
//!   "rms_norm_eps": 1e-6, "max_position_embeddings": 32, "tie_word_embeddings": true}"#;
//! let model = Llama::random(&LlamaConfig::from_json_str(json, "c.json".as_ref())?, 7)?;
//! let dir = std::env::temp_dir().join(format!("shears-load-doc-{}", std::process::id()));
//! save_hf(&model, None, &dir, None)?;
//! let again = load_model(&dir, &LoadOptions::default())?;
//! let (mut c1, mut c2) = (model.new_cache(8)?, again.new_cache(8)?);
//! assert_eq!(
//!     model.forward(&[1, 2, 3], &mut c1)?.to_vec::<f32>()?,
//!     again.forward(&[1, 2, 3], &mut c2)?.to_vec::<f32>()?
//! );
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::config::LlamaConfig;
use crate::layers::{Embedding, Linear, RmsNorm};
use crate::llama::{rope_tables, Attention, DecoderLayer, Llama, LlamaModel, Mlp};
use crate::tokenizer::Tokenizer;
use shears_tensor::io::{self, gguf::Gguf};
use shears_tensor::sparse::{save_sparse, split_sparse, Bitmask, NmSparse, SparseTensor};
use shears_tensor::{DType, Error, Result, RopeLayout, Tensor};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How to load a checkpoint.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Storage dtype of the projection and embedding weights (f32, bf16 or f16). Norm gains are
    /// always f32; computation is always f32.
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { dtype: DType::F32 }
    }
}

/// The kinds of checkpoint [`load_model`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointKind {
    /// An HF directory (`config.json` + safetensors).
    HfDir(PathBuf),
    /// A GGUF file.
    Gguf(PathBuf),
}

/// Decides what `path` is: a directory is an HF checkpoint, a file starting with `GGUF` a GGUF
/// file, and a `config.json` or `*.safetensors` file stands for its directory.
pub fn checkpoint_kind(path: &Path) -> Result<CheckpointKind> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Ok(CheckpointKind::HfDir(path.to_path_buf()));
    }
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut magic))
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if n == 4 && &magic == b"GGUF" {
        return Ok(CheckpointKind::Gguf(path.to_path_buf()));
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name == "config.json" || name.ends_with(".safetensors") || name.ends_with(".index.json") {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        return Ok(CheckpointKind::HfDir(dir.to_path_buf()));
    }
    Err(Error::format(
        path,
        None,
        "not a checkpoint: expected an HF directory (config.json + safetensors) or a GGUF file",
    ))
}

fn check_dtype(dtype: DType) -> Result<()> {
    if matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        Ok(())
    } else {
        Err(Error::UnsupportedDType {
            op: "load",
            dtype,
            expected: "f32, bf16 or f16 weights",
        })
    }
}

/// Loads the model of an HF directory or a GGUF file (see [`checkpoint_kind`]).
pub fn load_model(path: &Path, opts: &LoadOptions) -> Result<Llama> {
    check_dtype(opts.dtype)?;
    match checkpoint_kind(path)? {
        CheckpointKind::HfDir(dir) => load_hf(&dir, opts),
        CheckpointKind::Gguf(file) => load_gguf(&Gguf::open(&file)?, opts),
    }
}

/// Loads the tokenizer of an HF directory (`tokenizer.json`) or a GGUF file.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    match checkpoint_kind(path)? {
        CheckpointKind::HfDir(dir) => {
            let p = dir.join("tokenizer.json");
            if !p.exists() {
                return Err(Error::format(
                    &dir,
                    None,
                    "no tokenizer.json in the checkpoint directory",
                ));
            }
            Tokenizer::from_file(&p)
        }
        CheckpointKind::Gguf(file) => Tokenizer::from_gguf(&Gguf::open(&file)?),
    }
}

/// Loads model and tokenizer, opening a GGUF file once.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<(Llama, Tokenizer)> {
    check_dtype(opts.dtype)?;
    match checkpoint_kind(path)? {
        CheckpointKind::HfDir(dir) => Ok((load_hf(&dir, opts)?, load_tokenizer(&dir)?)),
        CheckpointKind::Gguf(file) => {
            let g = Gguf::open(&file)?;
            Ok((load_gguf(&g, opts)?, Tokenizer::from_gguf(&g)?))
        }
    }
}

/// Builds a model from a source of named tensors in HF naming; `get` errors on a missing name.
fn assemble(
    config: LlamaConfig,
    layout: RopeLayout,
    dtype: DType,
    get: &mut dyn FnMut(&str, DType) -> Result<Option<Tensor>>,
    sparse: &mut BTreeMap<String, SparseTensor>,
    origin: &Path,
) -> Result<Llama> {
    let mut need = |name: &str, dt: DType| -> Result<Tensor> {
        get(name, dt)?.ok_or_else(|| Error::format(origin, Some(name), "missing tensor"))
    };
    let eps = config.rms_norm_eps;
    let rope = rope_tables(&config, layout)?;
    let embed = Embedding::new(need("model.embed_tokens.weight", dtype)?)?;
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let mut lin = |s: &str| -> Result<Linear> {
            let module = format!("model.layers.{i}.{s}");
            if let Some(w) = sparse.remove(&module) {
                let w = if w.dtype() == dtype {
                    w
                } else {
                    w.to_dtype(dtype)?
                };
                return Linear::new_sparse(w);
            }
            Linear::new(need(&format!("{module}.weight"), dtype)?)
        };
        let self_attn = Attention {
            q_proj: lin("self_attn.q_proj")?,
            k_proj: lin("self_attn.k_proj")?,
            v_proj: lin("self_attn.v_proj")?,
            o_proj: lin("self_attn.o_proj")?,
            rope: rope.clone(),
        };
        let mlp = Mlp {
            gate_proj: lin("mlp.gate_proj")?,
            up_proj: lin("mlp.up_proj")?,
            down_proj: lin("mlp.down_proj")?,
        };
        let mut norm = |s: &str| -> Result<RmsNorm> {
            RmsNorm::new(
                need(&format!("model.layers.{i}.{s}.weight"), DType::F32)?,
                eps,
            )
        };
        layers.push(DecoderLayer {
            self_attn,
            mlp,
            input_layernorm: norm("input_layernorm")?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
        });
    }
    let norm = RmsNorm::new(need("model.norm.weight", DType::F32)?, eps)?;
    let lm_head = if config.tie_word_embeddings {
        Linear::from_var(embed.weight.clone())?
    } else {
        Linear::new(need("lm_head.weight", dtype)?)?
    };
    if let Some(name) = sparse.keys().next() {
        return Err(Error::format(
            origin,
            Some(name),
            "a sparse tensor that is not a decoder projection (only those may be stored sparse)",
        ));
    }
    let model = LlamaModel {
        embed_tokens: embed,
        layers,
        norm,
    };
    Llama::new(config, model, lm_head)
}

fn load_hf(dir: &Path, opts: &LoadOptions) -> Result<Llama> {
    let config = LlamaConfig::from_json_file(&dir.join("config.json"))?;
    // compressed-tensors sparse projections (`<module>.compressed`, `.bitmask`, ...) come apart
    // from the dense tensors here and load straight into sparse `Linear`s.
    let (mut sparse, mut tensors) = split_sparse(io::load_any(dir)?)?;
    let mut get = |name: &str, dt: DType| -> Result<Option<Tensor>> {
        match tensors.remove(name) {
            None => Ok(None),
            Some(t) => {
                if !t.dtype().is_float() {
                    return Err(Error::format(
                        dir,
                        Some(name),
                        format!("dtype {:?} is not a float type", t.dtype()),
                    ));
                }
                Ok(Some(if t.dtype() == dt { t } else { t.to_dtype(dt)? }))
            }
        }
    };
    assemble(
        config,
        RopeLayout::HalfSplit,
        opts.dtype,
        &mut get,
        &mut sparse,
        dir,
    )
}

/// The GGUF tensor name of an HF key (llama.cpp's names).
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (i, rest) = rest.split_once('.')?;
    i.parse::<usize>().ok()?;
    let g = match rest {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        _ => return None,
    };
    Some(format!("blk.{i}.{g}"))
}

/// Builds the model of an open GGUF file (architecture `llama`).
pub fn load_gguf(g: &Gguf, opts: &LoadOptions) -> Result<Llama> {
    check_dtype(opts.dtype)?;
    let config = LlamaConfig::from_gguf(g)?;
    let mut get = |name: &str, dt: DType| -> Result<Option<Tensor>> {
        let gname = gguf_name(name).expect("assemble asks only for LLaMA keys");
        if g.tensor_info(&gname).is_none() {
            return Ok(None);
        }
        Ok(Some(g.tensor_as(&gname, dt)?))
    };
    assemble(
        config,
        RopeLayout::Interleaved,
        opts.dtype,
        &mut get,
        &mut BTreeMap::new(),
        &g.path,
    )
}

/// Reorders the rows of a Q or K projection `[heads · head_dim, in]` from the interleaved rotary
/// layout (pairs `(2i, 2i+1)`, GGUF) to HF's half-split layout (pairs `(i, i + d/2)`): the inverse
/// of llama.cpp's `permute` in convert_hf_to_gguf.py.
pub fn interleaved_to_half_split(w: &Tensor, heads: usize) -> Result<Tensor> {
    let rows = w.dims()[0];
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(Error::invalid(
            "interleaved_to_half_split",
            format!("{rows} rows do not split into {heads} heads of even width"),
        ));
    }
    let hd = rows / heads;
    let mut idx = Vec::with_capacity(rows);
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..hd / 2 {
                idx.push((h * hd + 2 * i + j) as i64);
            }
        }
    }
    w.index_select(&Tensor::from_vec(idx, [rows])?, 0)
}

/// Saves `model` (and `tokenizer`, if given) as an HF directory: `config.json`,
/// `model.safetensors` (weights in `dtype`, default: as held) and `tokenizer.json`. Q/K rows are
/// written in HF's half-split layout; sparse projections are written dense, pruned entries as
/// +0.0. Each file is written atomically.
pub fn save_hf(
    model: &Llama,
    tokenizer: Option<&Tokenizer>,
    dir: &Path,
    dtype: Option<DType>,
) -> Result<()> {
    let target = dtype.unwrap_or(model.dtype());
    check_dtype(target)?;
    create_dir(dir)?;
    let owned = hf_tensors(model, target, |_| true)?;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    io::save(
        owned.iter().map(|(n, t)| (n.as_str(), t)),
        dir.join(io::SINGLE_FILE),
        Some(&meta),
    )?;
    let config = model.config.to_json_string_with_dtype(torch_dtype(target));
    io::write_atomic(&dir.join("config.json"), |w| w.write_all(config.as_bytes()))?;
    if let Some(tok) = tokenizer {
        tok.save(&dir.join("tokenizer.json"))?;
    }
    Ok(())
}

/// How [`save_compressed`] stores the decoder projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseLayout {
    /// compressed-tensors `sparse-bitmask`: any sparsity.
    Bitmask,
    /// N of every M consecutive inputs kept; 2:4 is compressed-tensors `sparse-24-bitmask`,
    /// other N:M the shears-only `shears-nm-bitmask`.
    Nm {
        /// Kept per group.
        n: usize,
        /// Group size.
        m: usize,
    },
}

/// Saves `model` as an HF directory whose decoder projections are stored sparse in the
/// compressed-tensors layout (`<module>.compressed`, `.bitmask`, `.shape`, `.row_offsets` for
/// `sparse-bitmask`), everything else dense, and `config.json` carrying
/// `quantization_config.sparsity_config` (format, global_sparsity, sparsity_structure, targets,
/// ignore). Dense projections are compressed by dropping their exact zeros; with
/// [`SparseLayout::Nm`] a projection with more than N nonzeros in a group is an error. Values are
/// written in `dtype` (default: as held). Q/K rows are written in HF's half-split layout. Each
/// file is written atomically; [`load_model`] reads the directory back into sparse `Linear`s.
pub fn save_compressed(
    model: &Llama,
    tokenizer: Option<&Tokenizer>,
    dir: &Path,
    layout: SparseLayout,
    dtype: Option<DType>,
) -> Result<()> {
    let target = dtype.unwrap_or(model.dtype());
    check_dtype(target)?;
    if let SparseLayout::Nm { n, m } = layout {
        if n == 0 || n >= m {
            return Err(Error::invalid(
                "save_compressed",
                format!("N:M needs 0 < N < M, got {n}:{m}"),
            ));
        }
    }
    create_dir(dir)?;
    let is_projection = |name: &str| {
        name.starts_with("model.layers.")
            && (name.contains(".self_attn.") || name.contains(".mlp."))
    };
    let dense = hf_tensors(model, target, |n| !is_projection(n))?;
    let mut sparse: Vec<(String, SparseTensor)> = Vec::new();
    let (mut zeros, mut total) = (0usize, 0usize);
    for (name, t) in hf_tensors(model, target, is_projection)? {
        let module = name.strip_suffix(".weight").unwrap_or(&name).to_string();
        let s = match layout {
            SparseLayout::Bitmask => SparseTensor::Bitmask(Bitmask::from_dense(&t)?),
            SparseLayout::Nm { n, m } => {
                SparseTensor::Nm(NmSparse::from_dense(&t, n, m).map_err(|e| {
                    Error::invalid(
                        "save_compressed",
                        format!("{name} is not {n}:{m} sparse: {e}"),
                    )
                })?)
            }
        };
        zeros += t.elem_count() - count_nonzero(&s)?;
        total += t.elem_count();
        sparse.push((module, s));
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    save_sparse(
        dir.join(io::SINGLE_FILE),
        sparse.iter().map(|(n, s)| (n.as_str(), s.view())),
        dense.iter().map(|(n, t)| (n.as_str(), t)),
        Some(&meta),
    )?;
    let (format, structure) = match layout {
        SparseLayout::Bitmask => ("sparse-bitmask".to_string(), "unstructured".to_string()),
        // The name `SparseRef::format_name` gives an N:M tensor.
        SparseLayout::Nm { n: 2, m: 4 } => ("sparse-24-bitmask".to_string(), "2:4".to_string()),
        SparseLayout::Nm { n, m } => ("shears-nm-bitmask".to_string(), format!("{n}:{m}")),
    };
    let mut config: serde_json::Value =
        serde_json::from_str(&model.config.to_json_string_with_dtype(torch_dtype(target)))
            .map_err(|e| Error::invalid("save_compressed", format!("config to JSON: {e}")))?;
    config["quantization_config"] = serde_json::json!({
        "quant_method": "compressed-tensors",
        "format": format,
        "sparsity_config": {
            "format": format,
            "global_sparsity": if total > 0 { zeros as f64 / total as f64 } else { 0.0 },
            "sparsity_structure": structure,
            "targets": ["Linear"],
            "ignore": ["lm_head"],
            "registry_requires_subclass": false,
        },
    });
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::invalid("save_compressed", format!("config to JSON: {e}")))?;
    io::write_atomic(&dir.join("config.json"), |w| w.write_all(text.as_bytes()))?;
    if let Some(tok) = tokenizer {
        tok.save(&dir.join("tokenizer.json"))?;
    }
    Ok(())
}

/// Replaces every decoder projection of `model` by a sparse one holding its nonzeros, in memory
/// (the model computes the same function; its forward pass then reads only the kept weights).
/// With [`SparseLayout::Nm`] a projection with more than N nonzeros in a group is an error.
pub fn sparsify(model: &mut Llama, layout: SparseLayout) -> Result<()> {
    for (i, l) in model.model.layers.iter_mut().enumerate() {
        for (name, lin) in Llama::layer_linears_mut(l) {
            let w = lin.weight_tensor().into_owned();
            let s = match layout {
                SparseLayout::Bitmask => SparseTensor::Bitmask(Bitmask::from_dense(&w)?),
                SparseLayout::Nm { n, m } => {
                    SparseTensor::Nm(NmSparse::from_dense(&w, n, m).map_err(|e| {
                        Error::invalid(
                            "sparsify",
                            format!("model.layers.{i}.{name} is not {n}:{m} sparse: {e}"),
                        )
                    })?)
                }
            };
            *lin = Linear::new_sparse(s)?;
        }
    }
    Ok(())
}

/// Nonzero kept values (N:M may keep explicit zeros, which are pruned weights all the same).
fn count_nonzero(s: &SparseTensor) -> Result<usize> {
    Ok(s.values()
        .to_dtype(DType::F32)?
        .to_vec::<f32>()?
        .iter()
        .filter(|x| **x != 0.0)
        .count())
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn torch_dtype(dt: DType) -> &'static str {
    match dt {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

/// The model's weights under their HF names, in `dtype`, Q/K rows in HF's half-split layout,
/// for the names `keep` accepts.
fn hf_tensors(
    model: &Llama,
    dtype: DType,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Tensor)>> {
    let c = &model.config;
    let mut owned: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in model.named_weights() {
        if !keep(&name) {
            continue;
        }
        let mut t = t.into_owned();
        let rotated =
            name.ends_with("self_attn.q_proj.weight") || name.ends_with("self_attn.k_proj.weight");
        if model.rope().layout == RopeLayout::Interleaved && rotated {
            let heads = t.dims()[0] / c.head_dim;
            t = interleaved_to_half_split(&t, heads)?;
        }
        // Norm gains are held in f32; they follow the file's dtype like everything else.
        if t.dtype() != dtype {
            t = t.to_dtype(dtype)?;
        }
        owned.push((name, t));
    }
    Ok(owned)
}
