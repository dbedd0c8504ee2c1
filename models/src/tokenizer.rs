//! The tokenizer: byte-level BPE built from a GGUF file's `tokenizer.ggml.*` metadata (or any HF
//! `tokenizer.json`), on the HF `tokenizers` crate, with incremental decoding for generation.
//!
//! ```
//! use shears_models::tokenizer::{BpeSpec, Tokenizer};
//! // A toy byte-level vocabulary: "h", "i", "hi" and a control token, as a GGUF file lists them.
//! let tokens = ["<|end|>", "h", "i", "hi", "Ġ", "Ġhi"];
//! let spec = BpeSpec {
//!     tokens: tokens.to_vec(),
//!     token_types: Some(vec![3, 1, 1, 1, 1, 1]), // 3 = control → a special added token
//!     merges: Some(vec!["h i", "Ġ hi"]),
//!     pre: Some("smollm"),
//!     eos: Some(0),
//!     ..BpeSpec::default()
//! };
//! let tok = Tokenizer::from_bpe_parts(&spec)?;
//! let ids = tok.encode("hi hi<|end|>", false)?;
//! assert_eq!(ids, vec![3, 5, 0]);
//! assert_eq!(tok.decode(&ids, true)?, "hi hi");
//!
//! // Streaming: text comes out as soon as it is complete.
//! let mut stream = tok.stream();
//! let mut out = String::new();
//! for &id in &ids {
//!     out += &stream.push(id)?.unwrap_or_default();
//! }
//! out += &stream.finish()?.unwrap_or_default();
//! assert_eq!(out, "hi hi<|end|>");
//! # Ok::<(), shears_tensor::Error>(())
//! ```
//!
//! # Which configuration, and why
//! A GGUF file does not store the HF pre-tokenizer; it stores a name (`tokenizer.ggml.pre`) that
//! llama.cpp maps to split regexes. Each supported name is rebuilt here as the HF pipeline whose
//! splits those regexes reproduce:
//! - `smollm` (SmolLM, SmolLM2): llama.cpp `src/llama-vocab.cpp`, case
//!   `LLAMA_VOCAB_PRE_TYPE_SMOLLM` (added in ggml-org/llama.cpp PR #8609, "Added support for SmolLm
//!   pre-tokenizer"), splits with `\p{N}` first, then the GPT-2 regex
//!   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`, with GPT-2 byte
//!   encoding; that is HF `Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=
//!   false, trim_offsets=true, use_regex=true)]` (the ByteLevel regex is the GPT-2 one), as in
//!   SmolLM2's `tokenizer.json`; its `tokenizer_config.json` (e.g. the copy in
//!   huggingface.co/viktoroo/SmolLM2-360M-Tools) has `add_prefix_space: false` and tokens 0-16
//!   (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<repo_name>` … `<empty_output>`) as special,
//!   unnormalized added tokens, which the GGUF marks as token_type 3 (control). No normalizer, a
//!   ByteLevel decoder, no BOS (`tokenizer.ggml.add_bos_token = false` in the shipped GGUF).
//!   The fixture `models/tests/fixtures/smollm2_tokens.json` checks this against llama.cpp's own
//!   tokenizer and the Python `tokenizers` library.
//! - `gpt-2`: `LLAMA_VOCAB_PRE_TYPE_GPT2`, the GPT-2 regex alone = HF `ByteLevel(use_regex=true)`.
//! - `llama-bpe` / `llama3` / `llama-v3`: `LLAMA_VOCAB_PRE_TYPE_LLAMA3`, the Llama-3 regex; HF
//!   `Sequence[Split(Regex(<llama-3 pattern>), Isolated), ByteLevel(use_regex=false)]` with
//!   `ignore_merges=true` and a BOS added (llama.cpp sets `ignore_merges` and `add_bos` for it).
//!
//! llama.cpp's `default` pre-tokenizer (also used when the key is missing) runs four regexes in a
//! row that no HF pipeline reproduces, so it and every other name are [`Error::Unsupported`].

use shears_tensor::io::gguf::{Gguf, GgufValue};
use shears_tensor::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// The Llama-3 split regex, as in Meta-Llama-3's `tokenizer.json` (and the comment above
/// `LLAMA_VOCAB_PRE_TYPE_LLAMA3` in llama.cpp's `src/llama-vocab.cpp`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The pre-tokenizer names [`Tokenizer::from_gguf`] rebuilds.
const SUPPORTED_PRE: &str = "smollm, gpt-2, llama-bpe (llama3, llama-v3)";

fn tok_err(msg: impl Into<String>) -> Error {
    Error::Tokenizer { msg: msg.into() }
}

/// The parts of a byte-level BPE tokenizer as a GGUF file stores them (`tokenizer.ggml.*`), for
/// [`Tokenizer::from_bpe_parts`]. Each field names the metadata key it mirrors.
#[derive(Debug, Clone)]
pub struct BpeSpec<'a> {
    /// `tokenizer.ggml.model`: only `"gpt2"` (byte-level BPE) is supported.
    pub model: &'a str,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name (see the module docs); `None` when absent.
    pub pre: Option<&'a str>,
    /// `tokenizer.ggml.tokens`: token strings in the byte-level alphabet, indexed by id.
    pub tokens: Vec<&'a str>,
    /// `tokenizer.ggml.token_type`: one per token (1 normal, 3 control, 4 user-defined, ...);
    /// control tokens become special added tokens, user-defined ones plain added tokens.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: `"left right"` pairs in priority order; `None` when absent.
    pub merges: Option<Vec<&'a str>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; `None` means the pre-tokenizer's default (llama.cpp's).
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`; `None` means false.
    pub add_eos: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<&'a str>,
}

impl Default for BpeSpec<'_> {
    fn default() -> Self {
        BpeSpec {
            model: "gpt2",
            pre: None,
            tokens: Vec::new(),
            token_types: None,
            merges: None,
            bos: None,
            eos: None,
            add_bos: None,
            add_eos: None,
            chat_template: None,
        }
    }
}

/// A tokenizer: the HF pipeline plus the special ids and chat template the model declares.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Cached: `tokenizers` rebuilds the whole vocabulary map to count it.
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads an HF `tokenizer.json`. BOS and EOS are looked up by the usual names
    /// (`<|begin_of_text|>`, `<s>`, `<|endoftext|>`, ...) since the file does not mark them; a
    /// sibling `tokenizer_config.json` naming `bos_token`/`eos_token`/`chat_template` wins.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config = path
            .parent()
            .map(|d| d.join("tokenizer_config.json"))
            .filter(|p| p.is_file())
            .and_then(|p| std::fs::read(p).ok());
        Tokenizer::from_json_bytes(path, &bytes, config.as_deref())
    }

    /// [`Tokenizer::from_file`] of files already in memory: `json` is the `tokenizer.json`,
    /// `config` the sibling `tokenizer_config.json` if there is one (ignored when it is not a
    /// JSON object); `path` only names the tokenizer in errors. The tokenizer fuzz target
    /// (`models/tests/fuzz.rs`) drives it. Errors: [`Error::Format`] naming `path` when `json`
    /// is not a valid `tokenizer.json`.
    pub fn from_json_bytes(path: &Path, json: &[u8], config: Option<&[u8]>) -> Result<Tokenizer> {
        let bad = |e: &dyn std::fmt::Display| {
            Error::format(path, None, format!("not a valid tokenizer.json: {e}"))
        };
        // Parsed to a JSON value first: `tokenizers` panics (`expect("Helper")` in its decoder
        // deserializer) instead of returning an error when the JSON inside `decoder` is broken or
        // nests deeper than serde_json's recursion limit; a value that parsed cannot fail there.
        let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(&e))?;
        check_normalizers(&value).map_err(|e| bad(&e))?;
        // From `&Value`, strings deserialize borrowed, as from the bytes.
        let inner = <tokenizers::Tokenizer as serde::Deserialize>::deserialize(&value)
            .map_err(|e| bad(&e))?;
        drop(value);
        if let Some(p) = inner.get_post_processor() {
            check_post_processor(p).map_err(|e| bad(&e))?;
        }
        let config = config.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
        let named = |key: &str| -> Option<String> {
            let v = config.as_ref()?.get(key)?;
            v.as_str()
                .or_else(|| v.get("content")?.as_str())
                .map(str::to_string)
        };
        let find = |key: &str, fallbacks: &[&str]| -> Option<u32> {
            if let Some(id) = named(key).and_then(|t| inner.token_to_id(&t)) {
                return Some(id);
            }
            fallbacks.iter().find_map(|t| inner.token_to_id(t))
        };
        let bos = find(
            "bos_token",
            &["<|begin_of_text|>", "<s>", "<|startoftext|>"],
        );
        let eos = find(
            "eos_token",
            &["<|end_of_text|>", "</s>", "<|endoftext|>", "<|im_end|>"],
        );
        let chat_template = named("chat_template");
        // The id space, not the number of tokens: a vocabulary may skip ids (or give two tokens
        // one id), and `decode` must accept every id `encode` can produce.
        let vocab_size = inner
            .get_vocab(true)
            .into_values()
            .max()
            .map_or(0, |m| m as usize + 1);
        Ok(Tokenizer {
            vocab_size,
            inner,
            bos,
            eos,
            chat_template,
        })
    }

    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.*`, `tokenizer.chat_template`);
    /// see the module docs for the supported models and pre-tokenizers. Missing or mistyped keys
    /// are [`Error::Format`] naming the key; an unsupported model or pre-tokenizer is
    /// [`Error::Unsupported`] naming it.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let path = &g.path;
        let wrong =
            |key: &str, want: &str| Error::format(path, None, format!("`{key}` is not {want}"));
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(unsupported_model(model));
        }
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let opt_str = |key: &str| -> Result<Option<&str>> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => v.as_str().map(Some).ok_or_else(|| wrong(key, "a string")),
            }
        };
        let opt_id = |key: &str| -> Result<Option<u32>> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .map(Some)
                    .ok_or_else(|| wrong(key, "a u32 token id")),
            }
        };
        let opt_bool = |key: &str| -> Result<Option<bool>> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => v.as_bool().map(Some).ok_or_else(|| wrong(key, "a bool")),
            }
        };
        let merges = g.get_str_array("tokenizer.ggml.merges")?;
        let token_types = match g.get("tokenizer.ggml.token_type") {
            None => None,
            Some(v) => {
                let key = "tokenizer.ggml.token_type";
                let arr = v.as_array().ok_or_else(|| wrong(key, "an array"))?;
                let types = arr
                    .iter()
                    .map(|t: &GgufValue| t.as_i64().and_then(|x| i32::try_from(x).ok()))
                    .collect::<Option<Vec<i32>>>()
                    .ok_or_else(|| wrong(key, "an array of integers"))?;
                Some(types)
            }
        };
        let spec = BpeSpec {
            model,
            pre: opt_str("tokenizer.ggml.pre")?,
            tokens,
            token_types,
            merges: Some(merges),
            bos: opt_id("tokenizer.ggml.bos_token_id")?,
            eos: opt_id("tokenizer.ggml.eos_token_id")?,
            add_bos: opt_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: opt_bool("tokenizer.ggml.add_eos_token")?,
            chat_template: opt_str("tokenizer.chat_template")?,
        };
        Tokenizer::from_bpe_parts(&spec).map_err(|e| match e {
            Error::Tokenizer { msg } => Error::format(path, None, msg),
            e => e,
        })
    }

    /// Builds a byte-level BPE tokenizer from its GGUF-style parts (what [`Tokenizer::from_gguf`]
    /// reads). Errors name the offending key and index: a missing `tokenizer.ggml.merges`, a
    /// merge that is not two known tokens, duplicate tokens, special ids out of range are
    /// [`Error::Tokenizer`]; an unknown model or pre-tokenizer is [`Error::Unsupported`].
    pub fn from_bpe_parts(spec: &BpeSpec<'_>) -> Result<Tokenizer> {
        if spec.model != "gpt2" {
            return Err(unsupported_model(spec.model));
        }
        let pre = spec.pre.unwrap_or("default");
        let (pre_tokenizer, ignore_merges, default_add_bos) = match pre {
            "smollm" => (
                PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    PreTokenizerWrapper::Digits(Digits::new(true)),
                    PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
                ])),
                false,
                false,
            ),
            "gpt-2" => (
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
                false,
                false,
            ),
            "llama-bpe" | "llama3" | "llama-v3" => {
                let split = Split::new(
                    SplitPattern::Regex(LLAMA3_PATTERN.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| tok_err(format!("llama-3 split regex: {e}")))?;
                (
                    PreTokenizerWrapper::Sequence(Sequence::new(vec![
                        PreTokenizerWrapper::Split(split),
                        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
                    ])),
                    true,
                    true,
                )
            }
            other => {
                return Err(Error::Unsupported {
                    what: format!(
                        "tokenizer pre-tokenizer `tokenizer.ggml.pre` = `{other}` \
                         (supported: {SUPPORTED_PRE})"
                    ),
                })
            }
        };

        let n = spec.tokens.len();
        if n == 0 {
            return Err(tok_err("`tokenizer.ggml.tokens` is empty"));
        }
        let n32 = u32::try_from(n)
            .map_err(|_| tok_err(format!("`tokenizer.ggml.tokens` has {n} entries, too many")))?;
        let mut vocab = Vocab::with_capacity(n);
        for (id, &t) in (0u32..).zip(&spec.tokens) {
            if let Some(prev) = vocab.insert(t.to_string(), id) {
                return Err(tok_err(format!(
                    "`tokenizer.ggml.tokens`: token {t:?} appears at ids {prev} and {id}"
                )));
            }
        }
        let merges_in = spec
            .merges
            .as_ref()
            .ok_or_else(|| tok_err("missing `tokenizer.ggml.merges`"))?;
        let mut merges = Vec::with_capacity(merges_in.len());
        for (i, m) in merges_in.iter().enumerate() {
            let Some((a, b)) = m.split_once(' ') else {
                return Err(tok_err(format!(
                    "`tokenizer.ggml.merges`[{i}] = {m:?} is not two tokens separated by a space"
                )));
            };
            for part in [a, b] {
                if !vocab.contains_key(part) {
                    return Err(tok_err(format!(
                        "`tokenizer.ggml.merges`[{i}] = {m:?} references unknown token {part:?}"
                    )));
                }
            }
            let merged = format!("{a}{b}");
            if !vocab.contains_key(&merged) {
                return Err(tok_err(format!(
                    "`tokenizer.ggml.merges`[{i}] = {m:?} produces {merged:?}, \
                     which is not in `tokenizer.ggml.tokens`"
                )));
            }
            merges.push((a.to_string(), b.to_string()));
        }
        if let Some(types) = &spec.token_types {
            if types.len() != n {
                return Err(tok_err(format!(
                    "`tokenizer.ggml.token_type` has {} entries for {n} tokens",
                    types.len()
                )));
            }
        }
        for (key, id) in [
            ("tokenizer.ggml.bos_token_id", spec.bos),
            ("tokenizer.ggml.eos_token_id", spec.eos),
        ] {
            if let Some(id) = id.filter(|&id| id >= n32) {
                return Err(tok_err(format!(
                    "`{key}` = {id} is out of range for {n} tokens"
                )));
            }
        }

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| tok_err(format!("building the BPE model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        if let Some(types) = &spec.token_types {
            let mut special = Vec::new();
            let mut user = Vec::new();
            for (&t, &ty) in spec.tokens.iter().zip(types) {
                match ty {
                    TOKEN_TYPE_CONTROL => special.push(AddedToken::from(t, true)),
                    TOKEN_TYPE_USER_DEFINED => {
                        user.push(AddedToken::from(t, false).normalized(false))
                    }
                    _ => {}
                }
            }
            inner.add_special_tokens(&special);
            inner.add_tokens(&user);
        }

        let add_bos = spec.add_bos.unwrap_or(default_add_bos);
        let add_eos = spec.add_eos.unwrap_or(false);
        let token = |id: u32| spec.tokens[id as usize].to_string();
        let mut template = Vec::new();
        let mut specials = Vec::new();
        if add_bos {
            let id = spec.bos.ok_or_else(|| {
                tok_err("`tokenizer.ggml.add_bos_token` is true but there is no bos_token_id")
            })?;
            template.push(token(id));
            specials.push((token(id), id));
        }
        template.push("$A".to_string());
        if add_eos {
            let id = spec.eos.ok_or_else(|| {
                tok_err("`tokenizer.ggml.add_eos_token` is true but there is no eos_token_id")
            })?;
            template.push(token(id));
            specials.push((token(id), id));
        }
        if add_bos || add_eos {
            let processor = TemplateProcessing::builder()
                .try_single(template.join(" "))
                .map_err(|e| tok_err(format!("BOS/EOS template: {e}")))?
                .special_tokens(specials)
                .build()
                .map_err(|e| tok_err(format!("BOS/EOS template: {e}")))?;
            inner.with_post_processor(Some(processor));
        }

        Ok(Tokenizer {
            vocab_size: inner.get_vocab_size(true),
            inner,
            bos: spec.bos,
            eos: spec.eos,
            chat_template: spec.chat_template.map(str::to_string),
        })
    }

    /// Token ids of `text`. Special tokens written in the text (`"<|im_start|>"`) map to their
    /// ids; `add_special_tokens` adds what the model declares (a BOS for Llama-3, nothing for
    /// SmolLM2).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| tok_err(format!("encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids` (bytes that do not form valid UTF-8 become U+FFFD). An id outside
    /// `0..vocab_size()` is an [`Error::Tokenizer`] naming it.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.check_ids(ids)?;
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| tok_err(format!("decode: {e}")))
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let n = self.vocab_size();
        match ids.iter().position(|&id| id as usize >= n) {
            Some(i) => Err(tok_err(format!(
                "decode: id {} at position {i} is out of range for a vocabulary of {n}",
                ids[i]
            ))),
            None => Ok(()),
        }
    }

    /// Number of ids, added tokens included: one more than the largest id (a `tokenizer.json`
    /// whose vocabulary skips ids counts the skipped ones too).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The beginning-of-sequence id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence id, if the model has one (generation stops on it).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The id of a token given in the vocabulary's own alphabet (`"Ġthe"`, `"<|im_end|>"`).
    pub fn token_to_id(&self, tok: &str) -> Option<u32> {
        self.inner.token_to_id(tok)
    }

    /// The token string of an id, in the vocabulary's own alphabet.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The Jinja chat template the model ships, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Writes an HF `tokenizer.json` atomically (temporary file in the same directory, fsync,
    /// rename). BOS/EOS ids and the chat template are not part of that format.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| tok_err(format!("serializing tokenizer.json: {e}")))?;
        shears_tensor::io::write_atomic(path, |w| std::io::Write::write_all(w, json.as_bytes()))
    }

    /// An incremental decoder for generation that keeps special tokens in its output; see
    /// [`TokenStream`].
    pub fn stream(&self) -> TokenStream<'_> {
        self.stream_with(false)
    }

    /// An incremental decoder; `skip_special_tokens` as in [`Tokenizer::decode`].
    pub fn stream_with(&self, skip_special_tokens: bool) -> TokenStream<'_> {
        TokenStream {
            tok: self,
            skip_special_tokens,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }
}

/// A `TemplateProcessing` special token, as far as [`check_post_processor`] reads it.
#[derive(serde::Deserialize)]
struct TemplateSpecial {
    ids: Vec<u32>,
    tokens: Vec<String>,
}

/// Rejects a `tokenizer.json` normalizer that `tokenizers` (0.22) panics on while deserializing
/// (found by the tokenizer fuzz target, `models/tests/fuzz.rs`): a `Precompiled` normalizer whose
/// charsmap does not parse (`NormalizerWrapper`'s deserializer calls `expect("Precompiled")`).
fn check_normalizers(v: &serde_json::Value) -> std::result::Result<(), String> {
    fn check(n: &serde_json::Value) -> std::result::Result<(), String> {
        match n.get("type").and_then(serde_json::Value::as_str) {
            // As the wrapper does it: from the object's JSON text (the charsmap is read as a
            // borrowed string, which a JSON escape in it makes fail).
            Some("Precompiled") => {
                serde_json::from_str::<tokenizers::normalizers::Precompiled>(&n.to_string())
                    .map(drop)
                    .map_err(|e| format!("normalizer `Precompiled`: {e}"))
            }
            Some("Sequence") => n
                .get("normalizers")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .try_for_each(check),
            _ => Ok(()),
        }
    }
    v.get("normalizer").map_or(Ok(()), check)
}

/// Rejects a `TemplateProcessing` post-processor that `tokenizers` (0.22) deserializes without
/// the checks its builder makes, and then panics on when encoding (found by the tokenizer fuzz
/// target): a template naming a special token its `special_tokens` lacks, or a `single` template
/// using the second sequence `$B` (`apply_template` indexes both unchecked). Also a special token
/// whose `ids` and `tokens` differ in length, which `SpecialToken::new` refuses (encoding would
/// give ids and tokens that disagree).
fn check_post_processor(p: &PostProcessorWrapper) -> std::result::Result<(), String> {
    use tokenizers::processors::template::{Piece, Sequence as Seq};
    match p {
        PostProcessorWrapper::Template(t) => {
            // The template's parts are private; its JSON form shows them.
            let v = serde_json::to_value(t).map_err(|e| e.to_string())?;
            let part = |key: &str| v.get(key).cloned().unwrap_or_default();
            let what = "post-processor `TemplateProcessing`";
            let pieces = |key: &str| {
                serde_json::from_value::<Vec<Piece>>(part(key))
                    .map_err(|e| format!("{what}: `{key}`: {e}"))
            };
            let (single, pair) = (pieces("single")?, pieces("pair")?);
            let specials =
                serde_json::from_value::<BTreeMap<String, TemplateSpecial>>(part("special_tokens"))
                    .map_err(|e| format!("{what}: `special_tokens`: {e}"))?;
            if let Some((id, s)) = specials.iter().find(|(_, s)| s.ids.len() != s.tokens.len()) {
                return Err(format!(
                    "{what}: special token {id:?} has {} ids but {} tokens",
                    s.ids.len(),
                    s.tokens.len()
                ));
            }
            for piece in single.iter().chain(&pair) {
                if let Piece::SpecialToken { id, .. } = piece {
                    if !specials.contains_key(id) {
                        return Err(format!(
                            "{what}: the template uses special token {id:?}, which \
                             `special_tokens` does not define"
                        ));
                    }
                }
            }
            if single
                .iter()
                .any(|p| matches!(p, Piece::Sequence { id: Seq::B, .. }))
            {
                return Err(format!(
                    "{what}: the `single` template uses the second sequence `$B`"
                ));
            }
            Ok(())
        }
        PostProcessorWrapper::Sequence(seq) => (0..)
            .map_while(|i| seq.get(i))
            .try_for_each(check_post_processor),
        _ => Ok(()),
    }
}

fn unsupported_model(model: &str) -> Error {
    let hint = if model == "llama" {
        " (sentencepiece; give the model's tokenizer.json instead)"
    } else {
        ""
    };
    Error::Unsupported {
        what: format!("tokenizer model `tokenizer.ggml.model` = `{model}`{hint} (supported: gpt2)"),
    }
}

/// Incremental decoding: feed ids one at a time as they are generated, get back the text each
/// completes. A byte-level token may end inside a multi-byte character (an emoji is often two
/// or three tokens); its text is held back until the character is complete, so output is never
/// split mid-character. The concatenation of every `push` and the final `finish` equals
/// [`Tokenizer::decode`] of all the ids.
#[derive(Debug)]
pub struct TokenStream<'a> {
    tok: &'a Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Start of the context window: tokens before `read` that are re-decoded with the new ones,
    /// so decoders that look at neighbours (leading-space rules) see the same context.
    prefix: usize,
    /// Tokens before `read` have been emitted.
    read: usize,
}

impl TokenStream<'_> {
    /// Adds one id; returns the newly completed text, or `None` while a character is still
    /// incomplete (or the token produced no text). An out-of-range id is an error and is not
    /// added.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.tok.check_ids(&[id])?;
        self.ids.push(id);
        self.advance(false)
    }

    /// Flushes what is held back (an incomplete character comes out as U+FFFD, as in
    /// [`Tokenizer::decode`]).
    pub fn finish(&mut self) -> Result<Option<String>> {
        self.advance(true)
    }

    fn advance(&mut self, flush: bool) -> Result<Option<String>> {
        if self.read == self.ids.len() {
            return Ok(None);
        }
        let skip = self.skip_special_tokens;
        let before = self.tok.decode(&self.ids[self.prefix..self.read], skip)?;
        let now = self.tok.decode(&self.ids[self.prefix..], skip)?;
        // Byte-level decoding turns a trailing partial character into U+FFFD: wait for more.
        if !flush && now.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let new = match now.get(before.len()..) {
            Some(s) if now.starts_with(&before) => s.to_string(),
            // A decoder that rewrote the context; emit nothing new rather than garbage.
            _ => String::new(),
        };
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok((!new.is_empty()).then_some(new))
    }
}
