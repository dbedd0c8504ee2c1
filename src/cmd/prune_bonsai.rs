//! `shears prune --method bonsai`: structured pruning by forward passes only, to a smaller dense
//! model (see `shears_pruning::bonsai`).
//!
//! ```text
//! shears prune --method bonsai --sparsity 0.3 --out small --eval
//! shears prune --method bonsai --sparsity 0.5 --prior-only --out small-prior   # the baseline
//! shears prune --method bonsai --sparsity 0.5 --reference                      # 200 × 32 windows
//! ```

use super::common::{json_line, peak_rss_bytes, progress_bar, save_atomically, CliResult};
use super::model::decode_tokens_per_s;
use super::prune::{calibration_ids, evaluate, OutFormat, PruneArgs};
use clap::Args;
use shears::models::load;
use shears::pruning::bonsai::{
    bonsai_prune, prunable_params, BonsaiConfig, BonsaiEvent, CandidateRule,
};
use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Bonsai's settings (with `--method bonsai`).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Bonsai (--method bonsai)")]
pub struct BonsaiArgs {
    /// Sub-models scored per round, in pairs [default: 64; --reference: 200].
    #[arg(long)]
    pub submodels: Option<usize>,
    /// Calibration windows each sub-model is scored on, new ones each round [default: 8;
    /// --reference: 32].
    #[arg(long)]
    pub windows: Option<usize>,
    /// Tokens per Bonsai window [default: 256; --reference: the model's context length].
    #[arg(long)]
    pub window_len: Option<usize>,
    /// Windows the priors are computed on each round [default: as --windows].
    #[arg(long)]
    pub prior_windows: Option<usize>,
    /// Share of the original parameters removed per round (the reference's 0.05).
    #[arg(long, default_value_t = 0.05)]
    pub round_share: f64,
    /// Sequences per forward pass (sub-models × windows run batched).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// No sub-models and no regression: remove the lowest-prior units, by the same rounds (the
    /// one-shot structured baseline Bonsai is compared with).
    #[arg(long)]
    pub prior_only: bool,
    /// Also save the model as it passes these removed shares, to `<out>-<percent>` (e.g. `--out
    /// small --snapshots 0.2,0.3` writes small-20 and small-30 on the way to the target; with
    /// shares that are multiples of --round-share these are the models runs to them would give).
    #[arg(long, value_delimiter = ',')]
    pub snapshots: Vec<f64>,
    /// MLP channels per sub-model unit: 1 as the reference, or groups of channels of neighbouring
    /// prior in a layer, which a few dozen sub-models can price [default: 1].
    #[arg(long, default_value_t = 1)]
    pub channel_group: usize,
    /// Prune attention KV groups (a KV head with its query heads) as well as MLP channels (off by
    /// default: see the README's Bonsai results).
    #[arg(long)]
    pub attention: bool,
    /// Which units the sub-models perturb each round: `module` (the reference's rule, each
    /// layer's lowest-prior share) or `global` (the lowest standardised priors across the model,
    /// twice the round's budget; layers may lose unequal shares) [default: module].
    #[arg(long, value_enum, default_value_t = CandidatesArg::Module)]
    pub candidates: CandidatesArg,
    /// The reference's sampling: 200 sub-models on 32 windows of the full context (days on two
    /// cores for a 135M model; flags given explicitly still win).
    #[arg(long)]
    pub reference: bool,
}

/// `--candidates`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidatesArg {
    /// Per module, as the reference.
    Module,
    /// Across the model by standardised prior.
    Global,
}

impl BonsaiArgs {
    fn config(&self, target: f64, seed: u64, context: usize) -> BonsaiConfig {
        let mut cfg = if self.reference {
            BonsaiConfig::reference(target, context)
        } else {
            BonsaiConfig::new(target)
        };
        if let Some(n) = self.submodels {
            cfg.submodels = n;
        }
        if let Some(n) = self.windows {
            cfg.windows = n;
            cfg.prior_windows = n;
        }
        if let Some(n) = self.window_len {
            cfg.seqlen = n;
        }
        if let Some(n) = self.prior_windows {
            cfg.prior_windows = n;
        }
        cfg.round_share = self.round_share;
        cfg.batch = self.batch;
        cfg.prior_only = self.prior_only;
        cfg.attention = self.attention;
        cfg.channel_group = self.channel_group;
        cfg.candidates = match self.candidates {
            CandidatesArg::Module => CandidateRule::Module,
            CandidatesArg::Global => CandidateRule::Global,
        };
        cfg.seed = seed;
        cfg
    }
}

/// Runs Bonsai for `shears prune`.
pub fn run(args: &PruneArgs, t_all: Instant) -> CliResult {
    if args.nm.is_some() {
        return Err("bonsai removes whole units: give --sparsity, not --nm".into());
    }
    if args.format == OutFormat::Compressed {
        return Err("bonsai writes a smaller dense model: use --format dense".into());
    }
    let target = args.sparsity.unwrap_or(0.5);
    let mut snapshots: Vec<f64> = args.bonsai.snapshots.clone();
    snapshots.sort_by(f64::total_cmp);
    if let Some(s) = snapshots.iter().find(|s| !(**s > 0.0 && **s < target)) {
        return Err(format!("--snapshots {s}: each must be in (0, --sparsity {target})").into());
    }
    if !snapshots.is_empty() && args.out.is_none() {
        return Err("--snapshots needs --out (they are written next to it)".into());
    }
    let snapshot_dir = |s: f64| {
        let out = args.out.as_ref().expect("checked above");
        let name = out
            .file_name()
            .map_or("out".into(), |n| n.to_string_lossy().into_owned());
        out.with_file_name(format!("{name}-{}", (100.0 * s).round() as u32))
    };
    let mut saved = 0usize;
    let mut snapshot_error = None;
    let (mut model, tok, load_secs) = args.model.load()?;
    model.check_finite()?;
    let cfg = args
        .bonsai
        .config(target, args.seed, model.config.max_position_embeddings);
    let show = !args.json && std::io::stderr().is_terminal();
    let calib_ids = calibration_ids(args, &tok)?;
    let eval_ids = super::prune::evaluation_ids(args, &tok)?;
    let before = if args.no_dense_eval {
        None
    } else {
        evaluate(args, &model, eval_ids.as_deref(), show, "dense")?
    };
    let prompt: Vec<u32> = calib_ids[..calib_ids.len().min(args.seqlen)].to_vec();
    let decode_dense = if args.bench {
        let tps = decode_tokens_per_s(&model, &prompt, 128)?;
        if !args.json {
            eprintln!("decode dense: {tps:.1} tokens/s");
        }
        Some(tps)
    } else {
        None
    };
    let params_before = prunable_params(&model);
    if !args.json {
        eprintln!(
            "bonsai to {:.0} % of {} parameters outside the embeddings and head: rounds of {}, {}",
            100.0 * target,
            params_before,
            cfg.round_share,
            if cfg.prior_only {
                "priors only".to_string()
            } else {
                format!(
                    "{} sub-models × {} windows of {} tokens per round",
                    cfg.submodels, cfg.windows, cfg.seqlen
                )
            }
        );
    }
    let bar = progress_bar(0, show, "sequences");
    let mut log = |e: BonsaiEvent| match e {
        BonsaiEvent::RoundStart { round, sparsity } => {
            bar.set_position(0);
            bar.set_message(format!("round {round} from {:.1} %", 100.0 * sparsity));
        }
        BonsaiEvent::Scored { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        BonsaiEvent::RoundDone { report: r, model } => {
            // Snapshots the round passed (a model at 0.2 within the tolerance counts for 0.2).
            while saved < snapshots.len() && r.sparsity >= snapshots[saved] - cfg.tolerance {
                let dir = snapshot_dir(snapshots[saved]);
                saved += 1;
                let res = save_atomically(&dir, |d| Ok(load::save_hf(model, Some(&tok), d, None)?));
                match res {
                    Ok(()) => {
                        let line = format!(
                            "snapshot at {:.1} % saved to {}",
                            100.0 * r.sparsity,
                            dir.display()
                        );
                        if bar.is_hidden() {
                            eprintln!("{line}");
                        } else {
                            bar.println(line);
                        }
                    }
                    Err(e) => snapshot_error = snapshot_error.take().or(Some(e)),
                }
            }
            let mut ppl = r.submodel_ppl.clone();
            ppl.sort_by(f64::total_cmp);
            let summary = if ppl.is_empty() {
                String::new()
            } else {
                format!(
                    " | sub-model ppl min {:.1} median {:.1} max {:.1} | held-out τ {:.3}",
                    ppl[0],
                    ppl[ppl.len() / 2],
                    ppl[ppl.len() - 1],
                    r.tau.unwrap_or(f64::NAN)
                )
            };
            let line = format!(
                "round {:>2}: removed {} channels, {} KV groups of {} candidates → {:.1} % \
                 ({} channels, {} KV groups left){summary} | {:.0} s",
                r.round,
                r.channels_removed,
                r.kv_groups_removed,
                r.candidates,
                100.0 * r.sparsity,
                r.channels_before - r.channels_removed,
                r.kv_groups_before - r.kv_groups_removed,
                r.secs_prior + r.secs_submodels + r.secs_fit,
            );
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
    };
    let report = bonsai_prune(&mut model, &calib_ids, &cfg, &mut log)?;
    bar.finish_and_clear();
    if let Some(e) = snapshot_error {
        return Err(e);
    }
    drop(calib_ids);
    let after = evaluate(args, &model, eval_ids.as_deref(), show, "pruned")?;
    let decode_pruned = if args.bench {
        let tps = decode_tokens_per_s(&model, &prompt, 128)?;
        if !args.json {
            eprintln!("decode pruned: {tps:.1} tokens/s");
        }
        Some(tps)
    } else {
        None
    };
    if let Some(out) = &args.out {
        let t = Instant::now();
        save_atomically(out, |dir| Ok(load::save_hf(&model, Some(&tok), dir, None)?))?;
        if !args.json {
            eprintln!(
                "saved to {} in {:.1} s",
                out.display(),
                t.elapsed().as_secs_f64()
            );
        }
    }
    let rss = peak_rss_bytes();
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let line = json_line(&[
            ("achieved_sparsity", report.sparsity.into()),
            (
                "decode_speedup",
                decode_dense.zip(decode_pruned).map(|(d, p)| p / d).into(),
            ),
            ("decode_tokens_per_s_dense", decode_dense.into()),
            ("decode_tokens_per_s_pruned", decode_pruned.into()),
            ("eval_windows", after.as_ref().map(|r| r.windows).into()),
            ("load_secs", load_secs.into()),
            ("method", "bonsai".into()),
            (
                "out",
                args.out.as_ref().map(|p| p.display().to_string()).into(),
            ),
            ("params_after", report.params_after.into()),
            ("params_before", report.params_before.into()),
            ("peak_rss_bytes", rss.into()),
            ("ppl_after", after.as_ref().map(|r| r.ppl).into()),
            ("ppl_before", before.as_ref().map(|r| r.ppl).into()),
            ("prior_only", cfg.prior_only.into()),
            ("candidates", serde_json::to_value(cfg.candidates)?),
            ("round_share", cfg.round_share.into()),
            ("rounds", serde_json::to_value(&report.rounds)?),
            ("seconds", report.seconds.into()),
            ("seed", args.seed.into()),
            ("seqlen", args.seqlen.into()),
            ("sparsity", target.into()),
            ("submodels", cfg.submodels.into()),
            ("threads", rayon::current_num_threads().into()),
            ("total_seconds", t_all.elapsed().as_secs_f64().into()),
            ("window_len", cfg.seqlen.into()),
            ("windows", cfg.windows.into()),
        ]);
        writeln!(stdout, "{line}")?;
    } else {
        let fmt = |r: &Option<shears::models::eval::PerplexityReport>| {
            r.as_ref().map_or("-".into(), |r| format!("{:.4}", r.ppl))
        };
        writeln!(
            stdout,
            "bonsai{} {:.0}%: {} → {} parameters outside the embeddings and head ({:.4} removed), \
             {} rounds in {:.1} s | perplexity dense {} → pruned {} (seqlen {}) | decode dense {} \
             → pruned {} tokens/s | peak RSS {}",
            if cfg.prior_only { " (priors only)" } else { "" },
            100.0 * target,
            report.params_before,
            report.params_after,
            report.sparsity,
            report.rounds.len(),
            report.seconds,
            fmt(&before),
            fmt(&after),
            args.seqlen,
            decode_dense.map_or("-".into(), |t| format!("{t:.1}")),
            decode_pruned.map_or("-".into(), |t| format!("{t:.1}")),
            rss.map_or("?".into(), |b| format!("{:.2} GB", b as f64 / 1e9)),
        )?;
    }
    Ok(())
}
