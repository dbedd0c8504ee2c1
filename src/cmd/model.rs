//! What the verbs that run a model share (`eval`, `generate`, `prune`, `bench --model`): the
//! model flags and loading, the default model and corpus (fetched when missing), and greedy
//! decoding for the decode benchmarks.

use super::common::{CliResult, ThreadsArg};
use clap::{Args, ValueEnum};
use shears::models::generate::{Sampler, SamplingParams};
use shears::models::llama::{KvCache, Llama};
use shears::models::load::{self, LoadOptions};
use shears::models::tokenizer::Tokenizer;
use shears::tensor::DType;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Storage dtype of the weights.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DTypeArg {
    F32,
    Bf16,
    F16,
}

impl DTypeArg {
    fn dtype(self) -> DType {
        match self {
            DTypeArg::F32 => DType::F32,
            DTypeArg::Bf16 => DType::BF16,
            DTypeArg::F16 => DType::F16,
        }
    }
}

/// Which model to load and how.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// An HF checkpoint directory or a GGUF file [default: the model `shears fetch` downloads,
    /// under $SHEARS_DATA or ./data].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Storage dtype of the projection and embedding weights. Computation is f32, except that
    /// with bf16 weights the products of many rows (prefill, evaluation, calibration) run on the
    /// bf16 matrix engine (`--bf16-engine`), which rounds activations to bf16.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DTypeArg,
    /// Matrix engine for products with bf16 weights and more than 16 rows: `auto` (the best this
    /// machine runs: AMX, then AVX512-BF16), `amx`, `avx512bf16`, or `off` (widen the weights to
    /// f32 and run the f32 GEMM). The environment variable SHEARS_BF16_ENGINE sets the default.
    #[arg(long, value_enum, default_value = "auto")]
    pub bf16_engine: Bf16EngineArg,
    /// Storage dtype of the KV cache (`auto`: that of the weights). A half cache reads half the
    /// bytes per decode step and rounds keys and values to 8 (bf16) or 11 (f16) significant bits.
    #[arg(long, value_enum, default_value = "auto")]
    pub kv_dtype: KvDTypeArg,
    #[command(flatten)]
    pub threads: ThreadsArg,
}

/// Matrix engine for bf16 products.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Bf16EngineArg {
    Auto,
    Off,
    Avx512bf16,
    Amx,
}

/// Applies `--bf16-engine` for the whole process; an engine this machine lacks is an error
/// naming the ones it has.
pub fn set_bf16_engine(arg: Bf16EngineArg) -> CliResult {
    use shears::kernels::gemm::bf16::{self as engine, Engine};
    let want = match arg {
        Bf16EngineArg::Auto => return Ok(()),
        Bf16EngineArg::Off => Engine::Off,
        Bf16EngineArg::Avx512bf16 => Engine::Avx512Bf16,
        Bf16EngineArg::Amx => Engine::Amx,
    };
    if engine::force_engine(Some(want)) {
        return Ok(());
    }
    let have: Vec<&str> = engine::available().iter().map(|e| e.name()).collect();
    Err(format!(
        "--bf16-engine {}: this machine cannot run it (it has: {}; AMX also needs Linux to grant \
         the tile state)",
        want.name(),
        have.join(", ")
    )
    .into())
}

/// The bf16 engine in use, for reports: its name when the model's weights are bf16, else
/// "unused".
pub fn bf16_engine_report(dtype: DType) -> &'static str {
    if dtype == DType::BF16 {
        shears::kernels::gemm::bf16::engine().name()
    } else {
        "unused"
    }
}

/// Storage dtype of the KV cache.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KvDTypeArg {
    Auto,
    F32,
    Bf16,
    F16,
}

impl KvDTypeArg {
    /// `None` for `auto` (the model's default, its weights' dtype).
    fn dtype(self) -> Option<DType> {
        match self {
            KvDTypeArg::Auto => None,
            KvDTypeArg::F32 => Some(DTypeArg::F32.dtype()),
            KvDTypeArg::Bf16 => Some(DTypeArg::Bf16.dtype()),
            KvDTypeArg::F16 => Some(DTypeArg::F16.dtype()),
        }
    }
}

impl ModelArgs {
    fn path(&self) -> CliResult<PathBuf> {
        match &self.model {
            Some(p) => Ok(p.clone()),
            None => default_model_path(),
        }
    }

    /// The checkpoint path: the one given, or the default model's (fetched when missing).
    pub fn resolved_path(&self) -> CliResult<PathBuf> {
        self.path()
    }

    /// Whether `--dtype` asks for half weights.
    pub fn dtype_is_not_f32(&self) -> bool {
        !matches!(self.dtype, DTypeArg::F32)
    }

    /// Sizes the thread pool, then loads the model: the model, its tokenizer and the seconds the
    /// load took.
    pub fn load(&self) -> CliResult<(Llama, Tokenizer, f64)> {
        self.threads.set_global()?;
        set_bf16_engine(self.bf16_engine)?;
        let path = self.path()?;
        let t0 = Instant::now();
        let (mut model, tok) = load::load(
            &path,
            &LoadOptions {
                dtype: self.dtype.dtype(),
            },
        )?;
        if let Some(d) = self.kv_dtype.dtype() {
            model.kv_dtype = d;
        }
        Ok((model, tok, t0.elapsed().as_secs_f64()))
    }
}

/// The default model's path (`shears fetch`'s download), fetched first when missing.
pub fn default_model_path() -> CliResult<PathBuf> {
    let dir = shears::fetch::default_data_dir();
    let p = shears::fetch::default_model_path(&dir);
    if !p.exists() {
        ensure_default_assets(&dir)?;
    }
    Ok(p)
}

/// Downloads the default model and corpus (as `shears fetch` does) when a command needs them and
/// they are missing, so `shears eval` alone works on a fresh machine.
pub fn ensure_default_assets(dir: &Path) -> CliResult {
    eprintln!(
        "the default model or corpus is missing from {}: fetching them (as `shears fetch` does)",
        dir.display()
    );
    let opts = shears::fetch::FetchOptions {
        progress: std::io::stderr().is_terminal(),
        ..shears::fetch::FetchOptions::default()
    };
    shears::fetch::fetch_all(dir, &opts)?;
    Ok(())
}

/// The default text files `files` names in the data folder, fetched first when any is missing.
pub fn default_texts(files: impl FnOnce(&Path) -> Vec<PathBuf>) -> CliResult<Vec<PathBuf>> {
    let dir = shears::fetch::default_data_dir();
    let files = files(&dir);
    if files.iter().any(|f| !f.exists()) {
        ensure_default_assets(&dir)?;
    }
    Ok(files)
}

/// Decode speed in tokens/s: a 64-token prefill of `prompt`'s ids, then `tokens` greedy steps
/// (after a short warm-up that touches every weight).
pub fn decode_tokens_per_s(model: &Llama, prompt: &[u32], tokens: usize) -> CliResult<f64> {
    let p = &prompt[..64.min(prompt.len())];
    if p.is_empty() {
        return Err("decode benchmark: empty prompt".into());
    }
    let mut cache = model.new_cache(p.len() + tokens)?;
    model.forward_last(&p[..p.len().min(8)], &mut cache)?;
    cache.clear();
    let logits = model.forward_last(p, &mut cache)?;
    Ok(tokens as f64 / greedy_decode(model, &mut cache, logits, tokens, || {})?)
}

/// `steps` greedy decode steps through `cache`, starting from `logits` (those of the last cached
/// position), with `between` called after each step outside the timing: the seconds the steps
/// took.
pub fn greedy_decode(
    model: &Llama,
    cache: &mut KvCache,
    mut logits: Vec<f32>,
    steps: usize,
    mut between: impl FnMut(),
) -> CliResult<f64> {
    let mut greedy = Sampler::new(SamplingParams::greedy());
    let mut secs = 0f64;
    for _ in 0..steps {
        let t = Instant::now();
        let next = greedy.sample(&logits)?;
        logits = model.forward_last(&[next], cache)?;
        secs += t.elapsed().as_secs_f64();
        between();
    }
    Ok(secs)
}
