//! shears' LLaMA inference next to candle-transformers' llama, on the same weights, in one run.
//!
//! The GGUF checkpoint is converted once (by shears) into an HF directory with f32 weights; both
//! implementations then load that directory, so they multiply the same numbers. The run checks
//! that the two agree (last-position logits of a short prompt), then times a 512-token prefill and
//! 128 greedy decode steps of each, alternating shears and candle, on the same number of threads.
//!
//! ```text
//! cargo run --release -- [--model GGUF] [--hf-dir DIR] [--dtype f32|bf16|f32,bf16]
//!                        [--threads N] [--reps N] [--prefill N] [--decode N] [--json]
//! ```

use candle_core::{DType as CDType, Device, Tensor as CTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama as cl;
use serde_json::json;
use shears_models::llama::Llama;
use shears_models::load::{self, LoadOptions};
use shears_models::tokenizer::Tokenizer;
use shears_tensor::DType;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

type Res<T> = Result<T, Box<dyn Error>>;

const PROMPT: &str = "The quick brown fox jumps over the lazy dog. Once upon a time";
/// Tokens of the warm-up forward pass before each timed repetition (as `shears bench --model`).
const WARMUP_TOKENS: usize = 8;

struct Args {
    model: PathBuf,
    hf_dir: PathBuf,
    text: PathBuf,
    dtypes: Vec<DType>,
    threads: usize,
    reps: usize,
    prefill: usize,
    decode: usize,
    json: bool,
}

fn usage() -> &'static str {
    "llama-peers: shears vs candle-transformers llama, same weights, same run\n\
     \n\
     Options:\n  \
       --model PATH     GGUF or HF checkpoint (default ../../data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)\n  \
       --hf-dir DIR     f32 HF copy both implementations load (default /tmp/smollm2-hf-f32;\n                   \
                        written by shears when it lacks config.json + model.safetensors)\n  \
       --text PATH      text whose first tokens form the prefill (default ../../data/alice29.txt)\n  \
       --dtype LIST     f32, bf16 or f32,bf16 (default f32)\n  \
       --threads N      threads of each implementation (default 2)\n  \
       --reps N         timed repetitions of each implementation (default 2)\n  \
       --prefill N      prompt tokens of the prefill (default 512)\n  \
       --decode N       greedy decode steps after the prefill (default 128)\n  \
       --json           one JSON object per line instead of the table\n"
}

fn parse_args() -> Res<Args> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        model: here.join("../../data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        hf_dir: PathBuf::from("/tmp/smollm2-hf-f32"),
        text: here.join("../../data/alice29.txt"),
        dtypes: vec![DType::F32],
        threads: 2,
        reps: 2,
        prefill: 512,
        decode: 128,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = val()?.into(),
            "--hf-dir" => a.hf_dir = val()?.into(),
            "--text" => a.text = val()?.into(),
            "--dtype" => {
                a.dtypes = val()?
                    .split(',')
                    .map(|s| match s.trim() {
                        "f32" => Ok(DType::F32),
                        "bf16" => Ok(DType::BF16),
                        o => Err(format!("--dtype: {o}? (f32 or bf16)")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--threads" => a.threads = val()?.parse()?,
            "--reps" => a.reps = val()?.parse()?,
            "--prefill" => a.prefill = val()?.parse()?,
            "--decode" => a.decode = val()?.parse()?,
            "--json" => a.json = true,
            "-h" | "--help" => {
                print!("{}", usage());
                std::process::exit(0);
            }
            o => return Err(format!("unknown option {o}\n\n{}", usage()).into()),
        }
    }
    if a.threads == 0 || a.reps == 0 || a.prefill == 0 {
        return Err("--threads, --reps and --prefill must be at least 1".into());
    }
    Ok(a)
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// `max |a - b|` and `max |a|`.
fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let m = a.iter().map(|x| x.abs()).fold(0f32, f32::max);
    (d, m)
}

/// CPU seconds (user + system, all threads) this process has used, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), in clock ticks (100 per second on Linux).
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// OS threads of this process.
fn os_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One timed prefill + greedy decode.
struct Run {
    prefill_s: f64,
    decode_s: f64,
    /// CPU seconds / wall seconds over the prefill and over the decode: cores kept busy.
    busy_prefill: f64,
    busy_decode: f64,
    /// Logits of the last prefill position.
    prefill_logits: Vec<f32>,
    /// The tokens fed to the decode steps (the first is the argmax of the prefill).
    tokens: Vec<u32>,
}

/// A forward pass: (ids, position of the first id) → last-position logits.
type Step<'a> = dyn FnMut(&[u32], usize) -> Res<Vec<f32>> + 'a;

/// Runs prefill + decode through `step` (ids, position of the first id) → last-position logits.
fn timed(ids: &[u32], decode: usize, step: &mut Step<'_>) -> Res<Run> {
    let (c0, t0) = (cpu_seconds(), Instant::now());
    let prefill_logits = step(ids, 0)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let c1 = cpu_seconds();
    let mut tokens = Vec::with_capacity(decode);
    let mut next = argmax(&prefill_logits);
    let t1 = Instant::now();
    for i in 0..decode {
        tokens.push(next);
        let logits = step(&[next], ids.len() + i)?;
        next = argmax(&logits);
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let c2 = cpu_seconds();
    Ok(Run {
        prefill_s,
        decode_s,
        busy_prefill: (c1 - c0) / prefill_s,
        busy_decode: (c2 - c1) / decode_s,
        prefill_logits,
        tokens,
    })
}

struct Shears<'p> {
    model: Llama,
    pool: &'p rayon::ThreadPool,
}

impl Shears<'_> {
    fn logits(&self, ids: &[u32]) -> Res<Vec<f32>> {
        let mut cache = self.model.new_cache_with_dtype(ids.len(), DType::F32)?;
        Ok(self
            .pool
            .install(|| self.model.forward_last(ids, &mut cache))?)
    }

    fn run(&self, ids: &[u32], decode: usize) -> Res<Run> {
        let mut cache = self.model.new_cache_with_dtype(ids.len() + decode, DType::F32)?;
        // Warm-up, as `shears bench --model` does: a short prefill touches every weight page.
        self.pool.install(|| {
            self.model
                .forward_last(&ids[..WARMUP_TOKENS.min(ids.len())], &mut cache)
        })?;
        cache.clear();
        let (model, pool) = (&self.model, self.pool);
        timed(ids, decode, &mut |x, _pos| {
            Ok(pool.install(|| model.forward_last(x, &mut cache))?)
        })
    }
}

struct Candle {
    model: cl::Llama,
    config: cl::Config,
    dtype: CDType,
    device: Device,
}

impl Candle {
    fn load(dir: &Path, dtype: CDType) -> Res<Candle> {
        let device = Device::Cpu;
        let cfg: cl::LlamaConfig =
            serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
        let config = cfg.into_config(false);
        // SAFETY: the file is not modified while mapped (it is written once, before this).
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], dtype, &device)?
        };
        let model = cl::Llama::load(vb, &config)?;
        Ok(Candle {
            model,
            config,
            dtype,
            device,
        })
    }

    fn cache(&self) -> Res<cl::Cache> {
        Ok(cl::Cache::new(
            true,
            self.dtype,
            &self.config,
            &self.device,
        )?)
    }

    /// Last-position logits of `ids` at positions `pos..`, inside candle's CPU context (its
    /// private rayon pool of `get_num_threads()` threads).
    fn step(&self, ids: &[u32], pos: usize, cache: &mut cl::Cache) -> Res<Vec<f32>> {
        let out = self
            .device
            .with_context(|| -> candle_core::Result<Vec<f32>> {
                let input = CTensor::new(ids, &self.device)?.unsqueeze(0)?;
                self.model
                    .forward(&input, pos, cache)?
                    .squeeze(0)?
                    .to_vec1::<f32>()
            })?;
        Ok(out)
    }

    fn logits(&self, ids: &[u32]) -> Res<Vec<f32>> {
        let mut cache = self.cache()?;
        self.step(ids, 0, &mut cache)
    }

    fn run(&self, ids: &[u32], decode: usize) -> Res<Run> {
        let mut cache = self.cache()?;
        self.step(&ids[..WARMUP_TOKENS.min(ids.len())], 0, &mut cache)?;
        let mut cache = self.cache()?;
        timed(ids, decode, &mut |x, pos| self.step(x, pos, &mut cache))
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The f32 HF copy of `model`, written by shears unless `dir` already holds one.
fn ensure_hf(model: &Path, dir: &Path, quiet: bool) -> Res<()> {
    if dir.join("config.json").is_file() && dir.join("model.safetensors").is_file() {
        if !quiet {
            eprintln!("using the HF copy in {}", dir.display());
        }
        return Ok(());
    }
    let t = Instant::now();
    let (m, tok) = load::load(model, &LoadOptions { dtype: DType::F32 })?;
    load::save_hf(&m, Some(&tok), dir, Some(DType::F32))?;
    if !quiet {
        eprintln!(
            "converted {} to an f32 HF directory {} in {:.1} s",
            model.display(),
            dir.display(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// An HF copy of `hf_dir` with bf16 weights (`<hf_dir>.bf16`), written by shears if missing.
fn bf16_copy(hf_dir: &Path, quiet: bool) -> Res<PathBuf> {
    let mut name = hf_dir.as_os_str().to_owned();
    name.push(".bf16");
    let dir = PathBuf::from(name);
    if !(dir.join("config.json").is_file() && dir.join("model.safetensors").is_file()) {
        let (m, tok) = load::load(hf_dir, &LoadOptions { dtype: DType::F32 })?;
        load::save_hf(&m, Some(&tok), &dir, Some(DType::BF16))?;
        if !quiet {
            eprintln!("wrote a bf16 HF copy to {}", dir.display());
        }
    }
    Ok(dir)
}

struct Row {
    imp: &'static str,
    dtype: DType,
    prefill: Vec<f64>,
    decode: Vec<f64>,
    busy_prefill: Vec<f64>,
    busy_decode: Vec<f64>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args = parse_args()?;
    // candle sizes its CPU threads from the environment, read the first time it needs them:
    // get_num_threads() (its rayon pool behind Device::with_context, and gemm's
    // Parallelism::Rayon(n)) reads RAYON_NUM_THREADS; its barrier pool for element-wise ops
    // spawns CANDLE_NUM_THREADS - 1 workers (falling back on RAYON_NUM_THREADS) and works on the
    // calling thread as well. Without them it uses the physical cores, which a VM may undercount.
    // Set both before anything starts a thread.
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", args.threads.to_string());
    let quiet = args.json;

    ensure_hf(&args.model, &args.hf_dir, quiet)?;
    let tok = Tokenizer::from_file(&args.hf_dir.join("tokenizer.json"))?;
    let prompt = tok.encode(PROMPT, false)?;
    let text = std::fs::read_to_string(&args.text)?;
    let mut ids = tok.encode(&text, false)?;
    if ids.len() < args.prefill {
        return Err(format!(
            "{} has {} tokens, fewer than --prefill {}",
            args.text.display(),
            ids.len(),
            args.prefill
        )
        .into());
    }
    ids.truncate(args.prefill);

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()?;
    let shears_threads = pool.install(rayon::current_num_threads);
    let candle_threads = Device::Cpu.with_context(rayon::current_num_threads);
    let barrier = candle_core::utils::barrier_pool().n_workers() + 1;
    if !quiet {
        eprintln!(
            "threads: shears runs in a rayon pool of {shears_threads}; candle: get_num_threads() = {}, \
             its rayon pool (Device::with_context) {candle_threads}, its barrier pool {barrier} \
             (workers + caller); OS threads now {}",
            candle_core::utils::get_num_threads(),
            os_threads()
        );
        eprintln!(
            "candle CPU features: avx {}, f16c {}, mkl {}, accelerate {}",
            candle_core::utils::with_avx(),
            candle_core::utils::with_f16c(),
            candle_core::utils::has_mkl(),
            candle_core::utils::has_accelerate()
        );
    }

    let mut rows = Vec::new();
    for &dtype in &args.dtypes {
        let dn = dtype_name(dtype);
        let t = Instant::now();
        let (model, _) = pool.install(|| load::load(&args.hf_dir, &LoadOptions { dtype }))?;
        let shears = Shears { model, pool: &pool };
        let cdtype = if dtype == DType::BF16 {
            CDType::BF16
        } else {
            CDType::F32
        };
        let candle = Candle::load(&args.hf_dir, cdtype)?;
        if !quiet {
            eprintln!(
                "[{dn}] loaded both from {} in {:.1} s",
                args.hf_dir.display(),
                t.elapsed().as_secs_f64()
            );
        }

        // Correctness: the same prompt through both.
        let a = shears.logits(&prompt)?;
        let b = candle.logits(&prompt)?;
        if a.len() != b.len() {
            return Err(format!("vocab sizes differ: {} vs {}", a.len(), b.len()).into());
        }
        let (d, m) = diff(&a, &b);
        let rel = d / m;
        let (am, bm) = (argmax(&a), argmax(&b));
        if quiet {
            println!(
                "{}",
                json!({"check": "prompt_logits", "dtype": dn, "prompt_tokens": prompt.len(),
                       "max_abs_diff": d, "max_abs_logit": m, "relative": rel,
                       "argmax_shears": am, "argmax_candle": bm})
            );
        } else {
            eprintln!(
                "[{dn}] prompt ({} tokens) last-position logits: max |diff| {d:.3e}, max |logit| {m:.3}, \
                 relative {rel:.2e}; argmax shears {am} candle {bm}",
                prompt.len()
            );
        }
        if dtype == DType::F32 && rel >= 1e-3 {
            eprintln!(
                "WARNING: f32 logits differ by {rel:.2e} of their largest magnitude (> 1e-3)"
            );
        }
        if dtype == DType::BF16 {
            // candle's bf16 model also keeps its activations in bf16, shears only its weights,
            // so the logits above differ by bf16 rounding of the activations. To check shears'
            // bf16 path itself, candle runs in f32 on the same bf16-rounded weights.
            let dir = bf16_copy(&args.hf_dir, quiet)?;
            let c32 = Candle::load(&dir, CDType::F32)?;
            let b = c32.logits(&prompt)?;
            let (d, m) = diff(&a, &b);
            if quiet {
                println!(
                    "{}",
                    json!({"check": "prompt_logits_bf16_weights_f32_compute", "dtype": dn,
                           "max_abs_diff": d, "max_abs_logit": m, "relative": d / m,
                           "argmax_shears": am, "argmax_candle": argmax(&b)})
                );
            } else {
                eprintln!(
                    "[{dn}] same bf16-rounded weights, candle computing in f32: max |diff| {d:.3e}, \
                     relative {:.2e}; argmax candle {}",
                    d / m,
                    argmax(&b)
                );
            }
        }

        // Timing: alternate shears and candle.
        let mut rs = Row {
            imp: "shears",
            dtype,
            prefill: vec![],
            decode: vec![],
            busy_prefill: vec![],
            busy_decode: vec![],
        };
        let mut rc = Row {
            imp: "candle",
            dtype,
            prefill: vec![],
            decode: vec![],
            busy_prefill: vec![],
            busy_decode: vec![],
        };
        let mut first: Option<(Run, Run)> = None;
        for rep in 0..args.reps {
            let s = shears.run(&ids, args.decode)?;
            let c = candle.run(&ids, args.decode)?;
            for (row, r) in [(&mut rs, &s), (&mut rc, &c)] {
                row.prefill.push(args.prefill as f64 / r.prefill_s);
                row.decode.push(args.decode as f64 / r.decode_s);
                row.busy_prefill.push(r.busy_prefill);
                row.busy_decode.push(r.busy_decode);
                if !quiet {
                    eprintln!(
                        "[{dn}] rep {} {:>6}: prefill {:>7.1} tok/s ({:.2} cores busy), decode {:>6.1} tok/s ({:.2} cores busy)",
                        rep + 1,
                        row.imp,
                        args.prefill as f64 / r.prefill_s,
                        r.busy_prefill,
                        args.decode as f64 / r.decode_s,
                        r.busy_decode
                    );
                }
            }
            if first.is_none() {
                first = Some((s, c));
            }
        }
        let (s, c) = first.expect("at least one repetition");
        let agree = s
            .tokens
            .iter()
            .zip(&c.tokens)
            .take_while(|(x, y)| x == y)
            .count();
        let (pd, pm) = diff(&s.prefill_logits, &c.prefill_logits);
        if quiet {
            println!(
                "{}",
                json!({"check": "greedy", "dtype": dn, "prefill_tokens": args.prefill,
                       "decode_tokens": args.decode, "agreeing_prefix": agree,
                       "prefill_logits_max_abs_diff": pd, "prefill_logits_relative": pd / pm})
            );
        } else {
            eprintln!(
                "[{dn}] greedy decode: the first {agree} of {} tokens agree; {}-token prefill logits: \
                 max |diff| {pd:.3e}, relative {:.2e}",
                args.decode,
                args.prefill,
                pd / pm
            );
            if agree < args.decode {
                eprintln!(
                    "[{dn}]   shears: {:?}\n[{dn}]   candle: {:?}",
                    &s.tokens[agree..(agree + 8).min(args.decode)],
                    &c.tokens[agree..(agree + 8).min(args.decode)]
                );
            }
        }
        rows.push(rs);
        rows.push(rc);
    }
    print_rows(&rows, &args);
    if !quiet {
        eprintln!("OS threads at the end: {}", os_threads());
    }
    Ok(())
}

fn print_rows(rows: &[Row], args: &Args) {
    if args.json {
        for r in rows {
            println!(
                "{}",
                json!({"impl": r.imp, "dtype": dtype_name(r.dtype), "threads": args.threads,
                       "reps": r.prefill.len(), "prefill_tokens": args.prefill,
                       "decode_tokens": args.decode,
                       "prefill_tokens_per_s": median(&r.prefill),
                       "decode_tokens_per_s": median(&r.decode),
                       "prefill_tokens_per_s_reps": r.prefill, "decode_tokens_per_s_reps": r.decode,
                       "cores_busy_prefill": median(&r.busy_prefill),
                       "cores_busy_decode": median(&r.busy_decode)})
            );
        }
        return;
    }
    println!(
        "| impl | dtype | threads | prefill tok/s ({} tokens) | decode tok/s ({} steps) | cores busy (prefill / decode) | reps |",
        args.prefill, args.decode
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.2} / {:.2} | {} |",
            r.imp,
            dtype_name(r.dtype),
            args.threads,
            median(&r.prefill),
            median(&r.decode),
            median(&r.busy_prefill),
            median(&r.busy_decode),
            r.prefill.len()
        );
    }
    println!("\n(median of the repetitions; with 2, their mean)");
}
