//! `shears bench --train`: training steps of a model (forward, backward and an AdamW step over
//! the decoder's projections and norms; embeddings and head frozen, as fine-tuning a pruned model
//! runs) on a batch of sequences, quoted against this machine's FMA peak measured in the same
//! run.
//!
//! ```text
//! shears bench --train                               # the fetched model, batch 4 × 512 tokens
//! shears bench --train --checkpointing off --json
//! shears bench --train --batch 2 --seqlen 256 --steps 3
//! ```

use super::common::{json_line, peak_rss_bytes, CliResult};
use super::model::ModelArgs;
use clap::{Args, ValueEnum};
use shears::autograd::optim::{AdamW, Optimizer};
use shears::autograd::Var;
use shears::kernels::limits;
use shears::models::llama::{ForwardOptions, TrainSpec};
use shears::tensor::{DType, Tensor};
use std::io::Write;
use std::time::Instant;

/// Activation checkpointing on or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// The options of `bench --train`.
#[derive(Args, Debug, Clone)]
pub struct TrainBenchArgs {
    /// Time training steps (forward + backward + AdamW) instead of prefill and decode.
    #[arg(long)]
    pub train: bool,
    /// Activation checkpointing per decoder layer (keep each layer's input, recompute the layer
    /// in the backward pass).
    #[arg(long, value_enum, default_value = "on")]
    pub checkpointing: OnOff,
    /// Sequences per training step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512)]
    pub seqlen: usize,
    /// Timed steps (after one untimed warm-up step).
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
}

/// Runs the training benchmark and prints one line per step and a summary (or one JSON object).
pub fn run(model: &ModelArgs, args: &TrainBenchArgs, json: bool, no_limits: bool) -> CliResult {
    let (mut model, _, _) = model.load()?;
    let c = model.config.clone();
    if model.dtype() != DType::F32 {
        // Mixed precision (half weights for the products, f32 master weights in the optimizer)
        // is not built yet: the optimizer updates f32 or f64 tensors only.
        return Err(format!(
            "bench --train trains f32 weights only (mixed-precision training with --dtype {} is \
             not supported yet); use --dtype f32",
            model.dtype().as_str()
        )
        .into());
    }
    if args.batch == 0 || args.seqlen < 2 || args.seqlen > c.max_position_embeddings {
        return Err(format!(
            "--batch must be at least 1 and --seqlen between 2 and the context length {}",
            c.max_position_embeddings
        )
        .into());
    }
    let (b, t) = (args.batch, args.seqlen);
    // A fixed, plausible token sequence per row (ids spread over the vocabulary); the targets
    // are the next ids.
    let ids: Vec<u32> = (0..(b * (t + 1)) as u64)
        .map(|i| ((i * 7919 + 13) % c.vocab_size as u64) as u32)
        .collect();
    let rows: Vec<&[u32]> = ids.chunks(t + 1).collect();
    let input: Vec<u32> = rows.iter().flat_map(|r| r[..t].iter().copied()).collect();
    let target: Vec<i64> = rows
        .iter()
        .flat_map(|r| r[1..].iter().map(|&i| i as i64))
        .collect();
    let input = Tensor::from_vec(input, [b, t])?;
    let target = Tensor::from_vec(target, [b * t])?;
    let opts = ForwardOptions {
        hidden_states: false,
        checkpointing: args.checkpointing == OnOff::On,
    };
    let mut params = model.params(TrainSpec::default())?;
    let trained: usize = params.iter().map(|p| p.tensor().elem_count()).sum();
    let mut opt = AdamW::new(1e-5);
    let mut step_secs = Vec::new();
    let mut losses = Vec::new();
    for step in 0..=args.steps {
        let t0 = Instant::now();
        model.set_params(&params)?;
        let (logits, _) = model.forward_train(&input, opts)?;
        let t_fwd = t0.elapsed().as_secs_f64();
        let v = logits.dims()[2];
        let loss = logits.reshape([b * t, v])?.cross_entropy(&target, None)?;
        drop(logits);
        let t_loss = t0.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        let t_bwd = t0.elapsed().as_secs_f64();
        opt.step(&mut params, &grads)?;
        drop(grads);
        let secs = t0.elapsed().as_secs_f64();
        let l = loss.tensor().to_scalar::<f32>()? as f64;
        drop::<Var>(loss);
        if step > 0 {
            step_secs.push(secs);
            losses.push(l);
        }
        if !json {
            eprintln!(
                "bench --train: step {step}{} loss {l:.4}, {secs:.2} s (forward {t_fwd:.2}, loss \
                 {:.2}, backward {:.2}, optimizer {:.2})",
                if step == 0 { " (warm-up)" } else { "" },
                t_loss - t_fwd,
                t_bwd - t_loss,
                secs - t_bwd
            );
        }
    }
    let rss = peak_rss_bytes();
    let secs: f64 = step_secs.iter().sum::<f64>() / step_secs.len().max(1) as f64;
    let tokens_per_s = (b * t) as f64 / secs;
    // The customary count: 6 · parameters FLOPs per token (forward 2, backward 4), whatever is
    // frozen or recomputed.
    let gflops = 6.0 * c.num_parameters() as f64 * tokens_per_s / 1e9;
    let lim = (!no_limits).then(|| limits::measure(rayon::current_num_threads()));
    let mut out = std::io::stdout().lock();
    if json {
        let line = json_line(&[
            ("mode", "train".into()),
            ("batch", b.into()),
            ("seqlen", t.into()),
            ("steps", args.steps.into()),
            ("checkpointing", (args.checkpointing == OnOff::On).into()),
            ("dtype", model.dtype().as_str().into()),
            ("parameters", c.num_parameters().into()),
            ("trained_parameters", trained.into()),
            ("seconds_per_step", secs.into()),
            ("tokens_per_s", tokens_per_s.into()),
            ("gflop_per_s", gflops.into()),
            ("fma_gflop_per_s", lim.map(|l| l.fma_gflops).into()),
            (
                "fraction_of_fma_peak",
                lim.map(|l| gflops / l.fma_gflops).into(),
            ),
            ("peak_rss_bytes", rss.into()),
            ("losses", losses.clone().into()),
            ("threads", rayon::current_num_threads().into()),
            ("cpu", shears::kernels::cpu::model_name().into()),
        ]);
        writeln!(out, "{line}")?;
    } else {
        let frac = lim
            .map(|l| {
                format!(
                    ", {:.0}% of the f32 FMA peak",
                    100.0 * gflops / l.fma_gflops
                )
            })
            .unwrap_or_default();
        writeln!(
            out,
            "train   {tokens_per_s:>8.1} tokens/s (batch {b} × {t}, {secs:.2} s per step, {gflops:.1} \
             GFLOP/s counting 6·params·tokens{frac})"
        )?;
        writeln!(
            out,
            "{} threads ({}), {} weights, {} of {} parameters trained (AdamW), checkpointing {}, \
             peak RSS {}",
            rayon::current_num_threads(),
            shears::kernels::cpu::model_name(),
            model.dtype().as_str(),
            trained,
            c.num_parameters(),
            if opts.checkpointing { "on" } else { "off" },
            rss.map(|r| format!("{:.2} GB", r as f64 / 1e9))
                .unwrap_or_else(|| "n/a".into()),
        )?;
        if let Some(l) = lim {
            writeln!(
                out,
                "machine now: f32 FMA peak {:.1} GFLOP/s ({} threads)",
                l.fma_gflops, l.threads
            )?;
        }
    }
    Ok(())
}
