//! `shears finetune`: sparse fine-tuning of a pruned model with its masks fixed, distilling from
//! the dense teacher (SquareHead + CE by default), or gradual pruning of a dense model while it
//! trains; checkpoints that resume bit-identically; the result saved in the input's format.
//!
//! ```text
//! shears prune --sparsity 0.7 --out sparse70
//! shears finetune --model sparse70 --out sparse70-ft          # SquareHead + CE, 300k tokens
//! shears finetune --model sparse70 --out ft-kd --loss kd --tokens 100000 --json
//! shears finetune --model sparse70 --out ft --resume          # continue an interrupted run
//! shears finetune --schedule cubic --from-dense --target 0.7 --out gradual70
//! ```

use super::bench_train::OnOff;
use super::common::{json_line, peak_rss_bytes, progress_bar, save_atomically, CliResult};
use super::model::{default_texts, ModelArgs};
use clap::{Args, ValueEnum};
use shears::kernels::limits;
use shears::models::eval;
use shears::models::llama::Llama;
use shears::models::load::{self, LoadOptions, SparseLayout};
use shears::pruning::distill::LossWeights;
use shears::pruning::finetune::{
    sample_from_teacher, FinetuneConfig, Finetuner, Gradual, StepReport, TrainData,
};
use shears::tensor::sparse::SparseTensor;
use shears::tensor::DType;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How the fine-tuned model is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FtFormat {
    /// As the input: compressed when the input's projections were stored sparse, else dense.
    Auto,
    /// HF safetensors, pruned weights as exact +0.0.
    Dense,
    /// compressed-tensors (bitmask, or the input's N:M layout).
    Compressed,
}

/// The sparsity schedule of gradual pruning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Schedule {
    /// Zhu & Gupta's cubic ramp from 0 to the target.
    Cubic,
}

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The dense teacher (frozen) [default: the model `shears fetch` downloads].
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Training text files [default: lcet10.txt, plrabn12.txt and botchan.txt in the data
    /// folder; never the evaluation set], or `teacher:N`: N tokens sampled from the teacher
    /// (sequences of seqlen + 1 tokens from BOS at temperature 1; no corpus needed).
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
    /// Loss terms with optional weights: `squarehead`, `kd`, `ce`, comma-separated, e.g.
    /// `squarehead,ce` (the reference's default), `kd`, `ce`, `squarehead=1,ce=0.5`.
    #[arg(long, default_value = "squarehead,ce")]
    loss: String,
    /// Softmax temperature of the KD term.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Training tokens (rounded up to whole steps of batch × seqlen) [default: 300000].
    #[arg(long, conflicts_with = "steps")]
    tokens: Option<u64>,
    /// Optimizer steps (instead of --tokens).
    #[arg(long)]
    steps: Option<u64>,
    /// Peak learning rate (AdamW, after warm-up; then linear decay to 0).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence (training and evaluation windows).
    #[arg(long, default_value_t = 512)]
    seqlen: usize,
    /// Warm-up steps.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Seed of the held-out split and the data order.
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// AdamW weight decay (the reference: 0).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip the kept weights' gradients to this global L2 norm [default: off, as the reference].
    #[arg(long)]
    clip_norm: Option<f64>,
    /// Activation checkpointing per decoder layer (less memory, one more forward pass).
    #[arg(long, value_enum, default_value = "on")]
    checkpointing: OnOff,
    /// Evaluate perplexity at the end on these files (`--eval` alone or absent: alice29.txt and
    /// asyoulik.txt in the data folder).
    #[arg(long, num_args = 0..)]
    eval: Option<Vec<PathBuf>>,
    /// Evaluate only the first N windows of the evaluation text.
    #[arg(long)]
    eval_windows: Option<usize>,
    /// Skip the final evaluation.
    #[arg(long, conflicts_with = "eval")]
    no_eval: bool,
    /// Held-out perplexity every N steps (and at the start and the end) [default: 10 times a
    /// run].
    #[arg(long)]
    eval_every: Option<u64>,
    /// Training windows held out for the held-out perplexity.
    #[arg(long, default_value_t = 16)]
    holdout: usize,
    /// Where to write the fine-tuned model (an HF directory, replaced atomically).
    #[arg(long)]
    out: PathBuf,
    /// How to write it.
    #[arg(long, value_enum, default_value = "auto")]
    format: FtFormat,
    /// Write a training checkpoint every N steps into `<out>.train-state/` (0: never).
    #[arg(long, default_value_t = 50)]
    save_every: u64,
    /// Train at most N steps in this invocation, then write a checkpoint and exit (continue
    /// later with --resume).
    #[arg(long)]
    pause_after: Option<u64>,
    /// Continue the run whose checkpoint is in `<out>.train-state/` (same settings).
    #[arg(long)]
    resume: bool,
    /// Train even on a file that is also evaluated on.
    #[arg(long)]
    force: bool,
    /// Prune while training, on this schedule (with --from-dense and --target).
    #[arg(long, value_enum, requires_all = ["from_dense", "target"])]
    schedule: Option<Schedule>,
    /// The model is dense and the schedule prunes it (masks come from magnitudes, not zeros).
    #[arg(long, requires = "schedule")]
    from_dense: bool,
    /// Final sparsity of every decoder projection under --schedule.
    #[arg(long, requires = "schedule")]
    target: Option<f64>,
    /// Fraction of the run by which the schedule reaches the target (masks fixed after).
    #[arg(long, default_value_t = 0.6)]
    prune_end: f64,
    /// Steps between mask re-selections under --schedule [default: a tenth of the ramp].
    #[arg(long)]
    prune_every: Option<u64>,
    /// Skip the machine's FMA peak probe (the JSON's fraction_of_fma_peak is then null).
    #[arg(long)]
    no_limits: bool,
    /// Print one JSON object (settings, loss curve, held-out perplexities, speed, memory).
    #[arg(long)]
    json: bool,
}

/// The settings a checkpoint must have been written with to be resumed (bit-identity needs
/// them all).
fn run_settings(
    args: &FinetuneArgs,
    cfg: &FinetuneConfig,
    student: &Path,
    teacher: &Path,
    data: &[PathBuf],
) -> serde_json::Value {
    serde_json::json!({
        "model": student.display().to_string(),
        "teacher": teacher.display().to_string(),
        "data": data.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "loss": cfg.loss.describe(),
        "temperature": cfg.loss.temperature,
        "lr": cfg.lr,
        "warmup": cfg.warmup,
        "steps": cfg.steps,
        "batch": cfg.batch,
        "seqlen": cfg.seqlen,
        "seed": cfg.seed,
        "weight_decay": cfg.weight_decay,
        "clip_norm": cfg.clip_norm,
        "checkpointing": cfg.checkpointing,
        "holdout": args.holdout,
        "gradual": cfg.gradual.map(|g| serde_json::json!({
            "target": g.target, "start": g.start, "end": g.end, "every": g.every,
        })),
    })
}

/// Whether two files hold the same text (same path, or same bytes).
fn same_file(a: &Path, b: &Path) -> bool {
    if let (Ok(x), Ok(y)) = (a.canonicalize(), b.canonicalize()) {
        if x == y {
            return true;
        }
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) if x.len() == y.len() => {
            matches!((std::fs::read(a), std::fs::read(b)), (Ok(p), Ok(q)) if p == q)
        }
        _ => false,
    }
}

/// The layout the input's sparse projections are stored in, if any.
fn input_layout(model: &Llama) -> Option<SparseLayout> {
    model.model.layers.iter().find_map(|l| {
        Llama::layer_linears(l)
            .iter()
            .find_map(|(_, lin)| match lin.sparse()? {
                SparseTensor::Nm(nm) => Some(SparseLayout::Nm {
                    n: nm.n(),
                    m: nm.m(),
                }),
                _ => Some(SparseLayout::Bitmask),
            })
    })
}

/// Writes the training checkpoint and the settings it was made with (`run.json`) into
/// `state_dir`.
fn write_checkpoint(ft: &Finetuner, state_dir: &Path, settings: &serde_json::Value) -> CliResult {
    ft.save_state(state_dir)?;
    let text = serde_json::to_string_pretty(settings)?;
    shears::tensor::io::write_atomic(&state_dir.join("run.json"), |w| {
        w.write_all(text.as_bytes())
    })?;
    Ok(())
}

fn describe_step(r: &StepReport) -> String {
    let mut parts = vec![format!("loss {:.4}", r.loss)];
    for (name, v) in [("sq", r.squarehead), ("kd", r.kd), ("ce", r.ce)] {
        if let Some(v) = v {
            parts.push(format!("{name} {v:.4}"));
        }
    }
    parts.push(format!("lr {:.2e}", r.lr));
    if let Some(s) = r.pruned_to {
        parts.push(format!("pruned to {:.3}", s));
    }
    parts.join(" ")
}

pub fn run(args: &FinetuneArgs) -> CliResult {
    let t_all = Instant::now();
    let mut loss = LossWeights::parse(&args.loss)?;
    loss.temperature = args.temperature;
    if args.model.model.is_none() && args.schedule.is_none() {
        return Err(
            "--model PRUNED is required (the pruned student; a dense model trains with \
                    --schedule cubic --from-dense --target S)"
                .into(),
        );
    }
    if args.batch == 0 || args.seqlen < 2 {
        return Err("--batch must be at least 1 and --seqlen at least 2".into());
    }
    if !(args.prune_end > 0.0 && args.prune_end <= 1.0) {
        return Err(format!("--prune-end must lie in (0, 1], got {}", args.prune_end).into());
    }
    let step_tokens = (args.batch * args.seqlen) as u64;
    let steps = match (args.steps, args.tokens) {
        (Some(0), _) | (_, Some(0)) => return Err("--steps and --tokens must be positive".into()),
        (Some(s), _) => s,
        (None, t) => t.unwrap_or(300_000).div_ceil(step_tokens),
    };
    let gradual = match (args.schedule, args.target) {
        (Some(Schedule::Cubic), Some(target)) => {
            let end = ((steps as f64 * args.prune_end).round() as u64).clamp(0, steps - 1);
            let g = Gradual {
                target,
                start: 0,
                end,
                every: args.prune_every.unwrap_or((end / 10).max(1)),
            };
            g.validate()?;
            Some(g)
        }
        _ => None,
    };
    let cfg = FinetuneConfig {
        loss,
        lr: args.lr,
        warmup: args.warmup,
        steps,
        batch: args.batch,
        seqlen: args.seqlen,
        seed: args.seed,
        weight_decay: args.weight_decay,
        clip_norm: args.clip_norm,
        checkpointing: args.checkpointing == OnOff::On,
        gradual,
        ..FinetuneConfig::default()
    };
    // `--data teacher:N`: N tokens sampled from the teacher instead of text files.
    let from_teacher: Option<u64> = match args.data.as_slice() {
        [one] => match one.to_str().and_then(|s| s.strip_prefix("teacher:")) {
            Some(n) => Some(
                n.parse::<u64>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--data teacher:N needs a token count, got {n:?}"))?,
            ),
            None => None,
        },
        many => {
            if many
                .iter()
                .any(|p| p.to_str().is_some_and(|s| s.starts_with("teacher:")))
            {
                return Err("--data teacher:N stands alone (no text files beside it)".into());
            }
            None
        }
    };
    // Files: training data, evaluation, and no overlap unless forced.
    let data_files = if from_teacher.is_some() {
        Vec::new()
    } else if args.data.is_empty() {
        default_texts(|dir| {
            ["lcet10.txt", "plrabn12.txt", "botchan.txt"]
                .map(|f| dir.join(f))
                .to_vec()
        })?
    } else {
        args.data.clone()
    };
    let eval_files = if args.no_eval {
        Vec::new()
    } else {
        match &args.eval {
            Some(f) if !f.is_empty() => f.clone(),
            _ => default_texts(eval::default_eval_files)?,
        }
    };
    if !args.force {
        for d in &data_files {
            if let Some(e) = eval_files.iter().find(|e| same_file(d, e)) {
                return Err(format!(
                    "{} is both training data and evaluation text ({}): evaluation text must stay \
                     unseen (pass --force to train on it anyway)",
                    d.display(),
                    e.display()
                )
                .into());
            }
        }
    }
    let name = args
        .out
        .file_name()
        .ok_or_else(|| format!("--out {} has no directory name", args.out.display()))?
        .to_string_lossy()
        .into_owned();
    let state_dir = args.out.with_file_name(format!("{name}.train-state"));
    if state_dir
        .join(shears::pruning::finetune::STATE_FILE)
        .exists()
        && !args.resume
    {
        return Err(format!(
            "{} holds a checkpoint of an earlier run: pass --resume to continue it, or remove it",
            state_dir.display()
        )
        .into());
    }
    if args.resume
        && !state_dir
            .join(shears::pruning::finetune::STATE_FILE)
            .exists()
    {
        return Err(format!("--resume: no checkpoint in {}", state_dir.display()).into());
    }

    // Models.
    if args.model.dtype_is_not_f32() {
        return Err("fine-tuning trains f32 weights: leave --dtype at f32".into());
    }
    let (student, tok, load_secs) = args.model.load()?;
    student.check_finite()?;
    let student_path = args.model.resolved_path()?;
    let teacher_path = match &args.teacher {
        Some(p) => p.clone(),
        None => super::model::default_model_path()?,
    };
    let layout = input_layout(&student);
    let teacher = if cfg.loss.needs_teacher() || from_teacher.is_some() {
        let t = load::load_model(&teacher_path, &LoadOptions { dtype: DType::F32 })?;
        t.check_finite()?;
        Some(t)
    } else {
        None
    };
    let show = !args.json;
    let say = |s: String| {
        if show {
            eprintln!("{s}");
        }
    };
    let data = match (from_teacher, &teacher) {
        (Some(n), Some(t)) => {
            let windows = n.div_ceil(args.seqlen as u64) as usize;
            let bar = progress_bar(windows as u64, show, "sequences sampled from the teacher");
            let t0 = Instant::now();
            let w = sample_from_teacher(t, windows, args.seqlen + 1, args.seed, |d, _| {
                bar.set_position(d as u64)
            })?;
            bar.finish_and_clear();
            say(format!(
                "sampled {windows} sequences of {} tokens from the teacher in {:.0} s",
                args.seqlen + 1,
                t0.elapsed().as_secs_f64()
            ));
            TrainData::from_windows(w, args.holdout, args.seed)?
        }
        _ => {
            let text = eval::load_texts(&data_files)?;
            let ids = tok.encode(&text, false)?;
            drop(text);
            TrainData::new(&ids, args.seqlen, args.holdout, args.seed)?
        }
    };
    // The teacher stays only when a loss term reads it.
    let teacher = teacher.filter(|_| cfg.loss.needs_teacher());
    let mut ft = Finetuner::new(student, teacher, cfg.clone())?;
    let data_names: Vec<PathBuf> = match from_teacher {
        Some(n) => vec![PathBuf::from(format!("teacher:{n}"))],
        None => data_files.clone(),
    };
    let settings = run_settings(args, &cfg, &student_path, &teacher_path, &data_names);
    let settings_file = state_dir.join("run.json");
    if args.resume {
        let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&settings_file)?)?;
        if saved != settings {
            return Err(format!(
                "--resume: the checkpoint in {} was written with other settings\n  then: {saved}\n  now:  {settings}",
                state_dir.display()
            )
            .into());
        }
        let at = ft.load_state(&state_dir)?;
        say(format!(
            "resumed at step {at} of {steps} from {}",
            state_dir.display()
        ));
    }
    say(format!(
        "finetune: {} ({} projections masked, sparsity {:.4}) ← teacher {} | loss {} | {} steps × \
         {} × {} tokens = {} tokens | {} training windows, {} held out | lr {:.1e}, warm-up {}",
        student_path.display(),
        ft.masked_projections(),
        ft.projection_sparsity()?,
        if cfg.loss.needs_teacher() {
            teacher_path.display().to_string()
        } else {
            "(none)".into()
        },
        cfg.loss.describe(),
        steps,
        cfg.batch,
        cfg.seqlen,
        steps * step_tokens,
        data.train_windows(),
        data.heldout_windows(),
        cfg.lr,
        cfg.warmup
    ));
    if data.train_windows() < cfg.batch {
        say(format!(
            "note: {} training windows, fewer than one batch of {}: windows repeat within a step",
            data.train_windows(),
            cfg.batch
        ));
    }

    // Training.
    let eval_every = args.eval_every.unwrap_or((steps / 10).max(1));
    let mut curve: Vec<serde_json::Value> = Vec::new();
    let mut heldout = |ft: &Finetuner, bar: &indicatif::ProgressBar| -> CliResult<f64> {
        if data.heldout_windows() == 0 {
            return Ok(f64::NAN);
        }
        let r = ft.heldout_perplexity(&data)?;
        let step = ft.step_index();
        curve.push(serde_json::json!({
            "step": step, "tokens": step * step_tokens, "ppl": r.ppl,
        }));
        let line = format!(
            "step {step:>5} ({:>8} tokens): held-out perplexity {:.4}",
            step * step_tokens,
            r.ppl
        );
        if show {
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
        Ok(r.ppl)
    };
    let bar = progress_bar(steps, show, "steps");
    bar.set_position(ft.step_index());
    let mut last_ppl = heldout(&ft, &bar)?;
    let mut reports: Vec<StepReport> = Vec::new();
    let (mut train_secs, mut train_tokens) = (0f64, 0u64);
    if let Some(p) = state_dir.parent() {
        std::fs::create_dir_all(p).ok();
    }
    let log_plain = show && bar.is_hidden();
    let stop_at = args
        .pause_after
        .map_or(steps, |n| (ft.step_index() + n).min(steps));
    while ft.step_index() < stop_at {
        let r = ft.step(&data)?;
        train_secs += r.secs;
        train_tokens += r.tokens as u64;
        let tps = train_tokens as f64 / train_secs;
        let msg = format!(
            "{} | {tps:.0} tokens/s | held-out {last_ppl:.3}",
            describe_step(&r)
        );
        let done = ft.step_index();
        if log_plain && (done % 10 == 0 || done == steps || r.pruned_to.is_some() || done == 1) {
            eprintln!("step {done}/{steps}: {msg}");
        }
        bar.set_message(msg);
        bar.set_position(done);
        reports.push(r);
        if done % eval_every == 0 || done == steps {
            last_ppl = heldout(&ft, &bar)?;
        }
        if args.save_every > 0 && done % args.save_every == 0 && done < steps {
            write_checkpoint(&ft, &state_dir, &settings)?;
        }
    }
    bar.finish_and_clear();
    if ft.step_index() < steps {
        write_checkpoint(&ft, &state_dir, &settings)?;
        say(format!(
            "paused at step {} of {steps}: checkpoint in {} (continue with --resume)",
            ft.step_index(),
            state_dir.display()
        ));
        if args.json {
            let line = json_line(&[
                ("paused_at", ft.step_index().into()),
                ("steps", steps.into()),
                ("state", state_dir.display().to_string().into()),
                ("heldout", curve.clone().into()),
            ]);
            writeln!(std::io::stdout().lock(), "{line}")?;
        }
        return Ok(());
    }
    let sparsity = ft.projection_sparsity()?;
    let trained = ft.trained_parameters();
    let params = ft.student().config.num_parameters();
    let mut model = ft.into_student();

    // Save in the input's format.
    let format = match (args.format, layout) {
        (FtFormat::Auto, Some(_)) | (FtFormat::Compressed, _) => FtFormat::Compressed,
        _ => FtFormat::Dense,
    };
    let out_layout = match (gradual, layout) {
        (None, Some(l)) => l,
        _ => SparseLayout::Bitmask,
    };
    let t_save = Instant::now();
    save_atomically(&args.out, |dir| match format {
        FtFormat::Compressed => Ok(load::save_compressed(
            &model,
            Some(&tok),
            dir,
            out_layout,
            None,
        )?),
        _ => Ok(load::save_hf(&model, Some(&tok), dir, None)?),
    })?;
    say(format!(
        "saved {} ({}) in {:.1} s",
        args.out.display(),
        if format == FtFormat::Compressed {
            "compressed"
        } else {
            "dense"
        },
        t_save.elapsed().as_secs_f64()
    ));
    // The run is complete: its checkpoint is no longer needed.
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir).ok();
    }

    // Final evaluation (on the model as trained; the saved one computes the same function).
    let final_eval = if eval_files.is_empty() {
        None
    } else {
        let mut ids = tok.encode(&eval::load_texts(&eval_files)?, false)?;
        if let Some(w) = args.eval_windows {
            ids.truncate(w * args.seqlen);
        }
        let ebar = progress_bar((ids.len() / args.seqlen) as u64, show, "windows (eval)");
        // Inference reads sparse layers faster than masked dense ones.
        if let Some(l) = layout {
            load::sparsify(&mut model, l).ok();
        }
        let r = eval::perplexity(&model, &ids, args.seqlen, |d, _| {
            ebar.set_position(d as u64)
        })?;
        ebar.finish_and_clear();
        Some(r)
    };
    let rss = peak_rss_bytes();
    let tokens_per_s = if train_secs > 0.0 {
        train_tokens as f64 / train_secs
    } else {
        0.0
    };
    // FLOPs per token: the customary 6·params for the student's forward + backward, and
    // 2·params for the teacher's forward when it runs.
    let flops_per_token = 6.0 * params as f64
        + if cfg.loss.needs_teacher() {
            2.0 * params as f64
        } else {
            0.0
        };
    let gflops = flops_per_token * tokens_per_s / 1e9;
    let lim = (!args.no_limits && train_secs > 0.0)
        .then(|| limits::measure(rayon::current_num_threads()));
    let mean_last = |f: fn(&StepReport) -> Option<f64>| -> Option<f64> {
        let tail: Vec<f64> = reports.iter().rev().take(10).filter_map(f).collect();
        (!tail.is_empty()).then(|| tail.iter().sum::<f64>() / tail.len() as f64)
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let losses: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                serde_json::json!({
                    "step": r.step, "loss": r.loss, "ce": r.ce, "kd": r.kd,
                    "squarehead": r.squarehead, "lr": r.lr, "secs": r.secs,
                    "pruned_to": r.pruned_to,
                })
            })
            .collect();
        let line = json_line(&[
            ("model", student_path.display().to_string().into()),
            (
                "teacher",
                cfg.loss
                    .needs_teacher()
                    .then(|| teacher_path.display().to_string())
                    .into(),
            ),
            ("loss", cfg.loss.describe().into()),
            (
                "data",
                data_names
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .into(),
            ),
            ("steps", steps.into()),
            ("tokens", (steps * step_tokens).into()),
            ("batch", cfg.batch.into()),
            ("seqlen", cfg.seqlen.into()),
            ("lr", cfg.lr.into()),
            ("warmup", cfg.warmup.into()),
            ("seed", cfg.seed.into()),
            ("train_windows", data.train_windows().into()),
            ("heldout_windows", data.heldout_windows().into()),
            ("resumed", args.resume.into()),
            ("sparsity", sparsity.into()),
            ("trained_parameters", trained.into()),
            ("train_secs", train_secs.into()),
            ("tokens_per_s", tokens_per_s.into()),
            ("gflop_per_s", gflops.into()),
            ("fma_gflop_per_s", lim.map(|l| l.fma_gflops).into()),
            (
                "fraction_of_fma_peak",
                lim.map(|l| gflops / l.fma_gflops).into(),
            ),
            ("peak_rss_bytes", rss.into()),
            ("final_loss", mean_last(|r| Some(r.loss)).into()),
            ("final_ce", mean_last(|r| r.ce).into()),
            ("final_kd", mean_last(|r| r.kd).into()),
            ("final_squarehead", mean_last(|r| r.squarehead).into()),
            ("heldout", curve.clone().into()),
            (
                "eval_files",
                eval_files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .into(),
            ),
            ("ppl_eval", final_eval.as_ref().map(|r| r.ppl).into()),
            ("out", args.out.display().to_string().into()),
            (
                "format",
                if format == FtFormat::Compressed {
                    "compressed"
                } else {
                    "dense"
                }
                .into(),
            ),
            ("load_secs", load_secs.into()),
            ("total_secs", t_all.elapsed().as_secs_f64().into()),
            ("threads", rayon::current_num_threads().into()),
            ("cpu", shears::kernels::cpu::model_name().into()),
            ("steps_log", losses.into()),
        ]);
        writeln!(out, "{line}")?;
    } else {
        let frac = lim
            .map(|l| format!(" ({:.0}% of the FMA peak)", 100.0 * gflops / l.fma_gflops))
            .unwrap_or_default();
        writeln!(
            out,
            "finetuned {} steps ({} tokens) in {:.0} s: {tokens_per_s:.0} tokens/s, {gflops:.1} \
             GFLOP/s{frac} | held-out perplexity {} → {} | {} | sparsity {sparsity:.4} | peak RSS {}",
            reports.len(),
            train_tokens,
            train_secs,
            curve
                .first()
                .and_then(|c| c["ppl"].as_f64())
                .map_or("-".into(), |p| format!("{p:.3}")),
            curve
                .last()
                .and_then(|c| c["ppl"].as_f64())
                .map_or("-".into(), |p| format!("{p:.3}")),
            final_eval.as_ref().map_or("no final evaluation".into(), |r| format!(
                "perplexity {:.4} on the evaluation set (seqlen {}, {} windows)",
                r.ppl, r.seqlen, r.windows
            )),
            rss.map_or("?".into(), |b| format!("{:.2} GB", b as f64 / 1e9)),
        )?;
    }
    Ok(())
}
