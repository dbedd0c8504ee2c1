//! `shears eval`, `shears generate` and `shears bench --model`: the commands that run a model.

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use shears::kernels::limits;
use shears::models::eval;
use shears::models::generate::{self, GenerateOptions, Sampler, SamplingParams, StopReason};
use shears::models::llama::{KvCache, Llama};
use shears::models::load::{self, LoadOptions};
use shears::models::tokenizer::Tokenizer;
use shears::tensor::DType;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

type CliResult = Result<(), Box<dyn std::error::Error>>;

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
    /// Storage dtype of the projection and embedding weights (computation is f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DTypeArg,
    /// Storage dtype of the KV cache (`auto`: that of the weights). A half cache reads half the
    /// bytes per decode step and rounds keys and values to 8 (bf16) or 11 (f16) significant bits.
    #[arg(long, value_enum, default_value = "auto")]
    pub kv_dtype: KvDTypeArg,
    /// Threads to run on [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
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
    fn path(&self) -> Result<PathBuf, Box<dyn std::error::Error>> {
        if let Some(p) = &self.model {
            return Ok(p.clone());
        }
        let dir = shears::fetch::default_data_dir();
        let p = shears::fetch::default_model_path(&dir);
        if !p.exists() {
            ensure_default_assets(&dir)?;
        }
        Ok(p)
    }

    pub fn load(&self) -> Result<(Llama, Tokenizer, f64), Box<dyn std::error::Error>> {
        set_threads(self.threads)?;
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

/// Downloads the default model and corpus (as `shears fetch` does) when a command needs them and
/// they are missing, so `shears eval` alone works on a fresh machine.
pub fn ensure_default_assets(dir: &std::path::Path) -> CliResult {
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

fn set_threads(threads: Option<usize>) -> CliResult {
    if let Some(n) = threads {
        if n == 0 {
            return Err("--threads must be at least 1".into());
        }
        // Fails only when the pool was already built, which cannot happen this early.
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .ok();
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text files, joined by a blank line [default: alice29.txt and asyoulik.txt in the data
    /// folder].
    #[arg(long, num_args = 1..)]
    text: Vec<PathBuf>,
    /// Window length in tokens.
    #[arg(long, default_value_t = 512)]
    seqlen: usize,
    /// Evaluate only the first N windows.
    #[arg(long)]
    max_windows: Option<usize>,
    /// Print one JSON object (ppl, tokens, windows, seqlen, tokens_per_s, ...).
    #[arg(long)]
    json: bool,
}

pub fn run_eval(args: &EvalArgs) -> CliResult {
    let (model, tok, load_secs) = args.model.load()?;
    let files = if args.text.is_empty() {
        let dir = shears::fetch::default_data_dir();
        let files = eval::default_eval_files(&dir);
        if files.iter().any(|f| !f.exists()) {
            ensure_default_assets(&dir)?;
        }
        files
    } else {
        args.text.clone()
    };
    let text = eval::load_texts(&files)?;
    let mut ids = tok.encode(&text, false)?;
    // Only the ids are needed from here on; the tokenizer's tables and the text are tens of MB.
    drop((tok, text));
    let total_tokens = ids.len();
    if let Some(w) = args.max_windows {
        ids.truncate(w * args.seqlen);
    }
    let windows = ids.len() / args.seqlen;
    let bar = progress_bar(windows as u64, !args.json, "windows");
    let report = eval::perplexity(&model, &ids, args.seqlen, |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    let rss = peak_rss_bytes();
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "ppl": report.ppl,
            "nll": report.nll,
            "tokens": total_tokens,
            "windows": report.windows,
            "seqlen": report.seqlen,
            "scored_tokens": report.scored_tokens,
            "tokens_per_s": report.tokens_per_s,
            "secs": report.secs,
            "load_secs": load_secs,
            "threads": rayon::current_num_threads(),
            "dtype": model.dtype().as_str(),
            "kv_dtype": model.kv_dtype.as_str(),
            "weight_bytes": model.weight_bytes(),
            "peak_rss_bytes": rss,
            "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "perplexity {:.4} (seqlen {}, {} windows, {} of {} tokens scored) | {:.1} tokens/s, {:.1} s | {} threads, {} weights",
            report.ppl,
            report.seqlen,
            report.windows,
            report.scored_tokens,
            total_tokens,
            report.tokens_per_s,
            report.secs,
            rayon::current_num_threads(),
            model.dtype().as_str()
        )?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat format (`<|im_start|>user ... <|im_start|>assistant`).
    #[arg(long)]
    chat: bool,
    /// Most new tokens.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling mass (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Random seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run_generate(args: &GenerateArgs) -> CliResult {
    let (model, tok, _) = args.model.load()?;
    let prompt = if args.chat {
        format!(
            "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            args.prompt
        )
    } else {
        args.prompt.clone()
    };
    let ids = tok.encode(&prompt, false)?;
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop_at_eos: true,
    };
    let mut stream = tok.stream();
    let mut out = std::io::stdout().lock();
    if !args.json {
        write!(out, "{}{}", args.prompt, if args.chat { "\n" } else { "" })?;
        out.flush()?;
    }
    let eos = model.config.eos_token_ids.clone();
    let json = args.json;
    let g = generate::generate(&model, &ids, &opts, |id| {
        if !json && !eos.contains(&id) {
            if let Some(piece) = stream.push(id)? {
                write!(out, "{piece}")
                    .and_then(|_| out.flush())
                    .map_err(|e| shears::tensor::Error::Io {
                        path: "<stdout>".into(),
                        source: e,
                    })?;
            }
        }
        Ok(true)
    })?;
    let text = tok.decode(&g.tokens, true)?;
    let decode_steps = g.tokens.len().saturating_sub(1);
    let decode_tps = if g.decode_secs > 0.0 {
        decode_steps as f64 / g.decode_secs
    } else {
        0.0
    };
    if json {
        let v = serde_json::json!({
            "prompt_tokens": ids.len(),
            "tokens": g.tokens,
            "text": text,
            "stop": format!("{:?}", g.stop),
            "prefill_secs": g.prefill_secs,
            "decode_tokens_per_s": decode_tps,
        });
        writeln!(out, "{v}")?;
    } else {
        if let Some(rest) = stream.finish()? {
            write!(out, "{rest}")?;
        }
        writeln!(out)?;
        let why = match g.stop {
            StopReason::Eos => "end of sequence",
            StopReason::MaxTokens => "max tokens",
            StopReason::ContextFull => "context full",
            StopReason::Callback => "stopped",
        };
        eprintln!(
            "[{} prompt tokens, {} new ({why}); prefill {:.0} ms, decode {:.1} tokens/s]",
            ids.len(),
            g.tokens.len(),
            g.prefill_secs * 1e3,
            decode_tps
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ModelBenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length of the prefill measurement.
    #[arg(long, default_value_t = 512)]
    pub prefill: usize,
    /// Decode steps measured after the prefill.
    #[arg(long, default_value_t = 128)]
    pub decode: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Skip probing the machine's FMA peak and read bandwidth after the run, and the second,
    /// time-matched decode pass.
    #[arg(long)]
    pub no_limits: bool,
}

/// Bytes the bandwidth probe of `bench --model` reads: far larger than any cache, small next to
/// the model.
const LIMITS_READ_BYTES: usize = 256 << 20;

/// Bytes of the read probe run after each step of the time-matched decode pass: the after-run
/// probe's size, eight times a 32 MiB last-level cache, about 6 ms per probe. (A 64 MiB probe,
/// used before, read 5-10 % below the after-run probe: part of a pass that short still comes
/// from the cache or pays the ramp of the prefetchers.)
const MATCHED_PROBE_BYTES: usize = 256 << 20;

/// A second decode pass (a fresh cache, the same prefill) with a read probe after every step:
/// `(tokens/s, GB/s of the probes)`. The host's bandwidth moves within seconds, so this compares
/// a decode speed with the bandwidth of the same seconds: the tool for A/B comparisons of decode
/// code on a shared host, and a check on the after-run fraction, which a change of the host's
/// bandwidth between the decode and the probe (seconds apart) moves by ±20 %. Each probe reads
/// its array once, cold after a decode step as the weights are; measured on the 2-vCPU Zen 5 VM,
/// these passes read 0.4-6.5 % below the after-run probe's back-to-back repetitions in five runs
/// of six (9 % above in the sixth, where the host moved), so the matched fraction may flatter
/// decode by that much.
fn time_matched_decode(
    model: &Llama,
    ids: &[u32],
    steps: usize,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let probe = limits::ReadProbe::new(MATCHED_PROBE_BYTES);
    let mut cache = model.new_cache(ids.len() + steps)?;
    let logits = model.forward_last(ids, &mut cache)?;
    let (mut probe_secs, mut probe_bytes) = (0f64, 0usize);
    let step_secs = greedy_decode(model, &mut cache, logits, steps, || {
        let (b, s) = probe.run();
        probe_bytes += b;
        probe_secs += s;
    })?;
    Ok((
        steps as f64 / step_secs,
        probe_bytes as f64 / probe_secs / 1e9,
    ))
}

pub fn run_model_bench(args: &ModelBenchArgs) -> CliResult {
    let (model, _, load_secs) = args.model.load()?;
    let c = &model.config;
    if args.prefill == 0 || args.prefill + args.decode > c.max_position_embeddings {
        return Err(format!(
            "--prefill {} + --decode {} must be between 1 and the context length {}",
            args.prefill, args.decode, c.max_position_embeddings
        )
        .into());
    }
    // A fixed, plausible token sequence (ids spread over the vocabulary).
    let ids: Vec<u32> = (0..args.prefill as u64)
        .map(|i| ((i * 7919 + 13) % c.vocab_size as u64) as u32)
        .collect();
    let mut cache = model.new_cache(args.prefill + args.decode)?;
    // Warm-up: one short prefill touches every weight page.
    model.forward_last(&ids[..8.min(ids.len())], &mut cache)?;
    cache.clear();
    let t0 = Instant::now();
    let logits = model.forward_last(&ids, &mut cache)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let decode_secs = greedy_decode(&model, &mut cache, logits, args.decode, || {})?;
    let prefill_tps = args.prefill as f64 / prefill_secs;
    let decode_tps = args.decode as f64 / decode_secs;
    let per_token = model.weight_bytes_per_token();
    let rss = peak_rss_bytes();
    let weights_plus_kv = model.weight_bytes() + cache.bytes();
    let kv_bytes = cache.bytes();
    drop(cache);
    // The machine's read bandwidth and FMA peak, probed now (after the peak RSS was read, so the
    // probe's array does not count): shared hosts vary from minute to minute, so the fractions
    // are quoted against limits measured in the same run.
    let matched = if args.no_limits || args.decode == 0 {
        None
    } else {
        Some(time_matched_decode(&model, &ids, args.decode)?)
    };
    let matched_frac = matched.map(|(tps, gbps)| per_token as f64 * tps / 1e9 / gbps);
    let lim = (!args.no_limits)
        .then(|| limits::measure_with(rayon::current_num_threads(), LIMITS_READ_BYTES));
    let decode_gbps = per_token as f64 * decode_tps / 1e9;
    let prefill_gflops = 2.0 * c.num_parameters() as f64 * prefill_tps / 1e9;
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "prefill_tokens_per_s": prefill_tps,
            "decode_tokens_per_s": decode_tps,
            "prefill_tokens": args.prefill,
            "decode_tokens": args.decode,
            "threads": rayon::current_num_threads(),
            "dtype": model.dtype().as_str(),
            "kv_dtype": model.kv_dtype.as_str(),
            "weight_bytes": model.weight_bytes(),
            "weight_bytes_per_token": per_token,
            "decode_weight_gb_per_s": decode_gbps,
            "prefill_gflop_per_s": prefill_gflops,
            "kv_cache_bytes": kv_bytes,
            "peak_rss_bytes": rss,
            "peak_rss_over_weights_plus_kv": rss.map(|r| r as f64 / weights_plus_kv as f64),
            "read_gb_per_s": lim.map(|l| l.read_gbps),
            "fma_gflop_per_s": lim.map(|l| l.fma_gflops),
            "decode_fraction_of_bandwidth_bound": lim.map(|l| decode_gbps / l.read_gbps),
            "prefill_fraction_of_fma_peak": lim.map(|l| prefill_gflops / l.fma_gflops),
            "matched_decode_tokens_per_s": matched.map(|m| m.0),
            "matched_read_gb_per_s": matched.map(|m| m.1),
            "decode_fraction_of_matched_bound": matched_frac,
            "load_secs": load_secs,
            "cpu": shears::kernels::cpu::model_name(),
            "prefetch": shears::kernels::cpu::prefetch().name(),
        });
        writeln!(out, "{v}")?;
    } else {
        let frac = |x: f64, of: Option<f64>, what: &str| {
            of.map(|l| format!(", {:.0}% of the {what}", 100.0 * x / l))
                .unwrap_or_default()
        };
        writeln!(
            out,
            "prefill {:>8.1} tokens/s ({} tokens, {:.1} GFLOP/s counting 2·params·tokens{})",
            prefill_tps,
            args.prefill,
            prefill_gflops,
            frac(prefill_gflops, lim.map(|l| l.fma_gflops), "f32 FMA peak")
        )?;
        writeln!(
            out,
            "decode  {:>8.1} tokens/s ({} tokens, {:.1} GB/s of weights{})",
            decode_tps,
            args.decode,
            decode_gbps,
            frac(decode_gbps, lim.map(|l| l.read_gbps), "read bandwidth")
        )?;
        if let (Some((tps, gbps)), Some(f)) = (matched, matched_frac) {
            writeln!(
                out,
                "decode  {tps:>8.1} tokens/s in a second pass with a read probe after each step: \
                 {:.0}% of the read bandwidth of the same seconds ({gbps:.1} GB/s)",
                100.0 * f
            )?;
        }
        let mib = |b: usize| b as f64 / 1048576.0;
        let rss_text = rss
            .map(|b| {
                format!(
                    "{:.1} MiB ({:.2}× weights + KV)",
                    mib(b as usize),
                    b as f64 / weights_plus_kv as f64
                )
            })
            .unwrap_or_else(|| "n/a".into());
        writeln!(
            out,
            "{} threads ({}, prefetch {}), {} weights ({:.1} MiB), {} KV cache {:.1} MiB, peak RSS \
             {rss_text}",
            rayon::current_num_threads(),
            shears::kernels::cpu::model_name(),
            shears::kernels::cpu::prefetch().name(),
            model.dtype().as_str(),
            mib(model.weight_bytes()),
            model.kv_dtype.as_str(),
            mib(kv_bytes),
        )?;
        if let Some(l) = lim {
            writeln!(
                out,
                "machine now: f32 FMA peak {:.1} GFLOP/s, read bandwidth {:.1} GB/s ({} threads)",
                l.fma_gflops, l.read_gbps, l.threads
            )?;
        }
    }
    Ok(())
}

fn progress_bar(len: u64, show: bool, unit: &str) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {unit} [{{elapsed}} < {{eta}}]"
        ))
        .expect("a valid template"),
    );
    bar
}

/// Decode speed in tokens/s: a 64-token prefill of `prompt`'s ids, then `tokens` greedy steps
/// (after a short warm-up that touches every weight).
pub fn decode_tokens_per_s(
    model: &Llama,
    prompt: &[u32],
    tokens: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
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
fn greedy_decode(
    model: &Llama,
    cache: &mut KvCache,
    mut logits: Vec<f32>,
    steps: usize,
    mut between: impl FnMut(),
) -> Result<f64, Box<dyn std::error::Error>> {
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

/// The process's peak resident set size (Linux `VmHWM`), if it can be read.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
