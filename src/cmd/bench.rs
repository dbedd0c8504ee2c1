//! `shears bench` (the model benchmark, `bench --model`): a model's prefill and decode speeds,
//! quoted against this machine's FMA peak and read bandwidth measured in the same run.
//!
//! ```text
//! shears bench                              # the fetched model: 512-token prefill, 128 decode steps
//! shears bench --model DIR --dtype bf16 --json
//! shears bench --prefill 128 --decode 64 --no-limits
//! ```

use super::common::{json_line, peak_rss_bytes, CliResult};
use super::model::{bf16_engine_report, greedy_decode, ModelArgs};
use clap::Args;
use shears::kernels::limits;
use shears::models::llama::Llama;
use std::io::Write;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct ModelBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length of the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prefill: usize,
    /// Decode steps measured after the prefill.
    #[arg(long, default_value_t = 128)]
    decode: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Skip probing the machine's FMA peak and read bandwidth after the run, and the second,
    /// time-matched decode pass.
    #[arg(long)]
    no_limits: bool,
    #[command(flatten)]
    train: super::bench_train::TrainBenchArgs,
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
fn time_matched_decode(model: &Llama, ids: &[u32], steps: usize) -> CliResult<(f64, f64)> {
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

pub fn run(args: &ModelBenchArgs) -> CliResult {
    if args.train.train {
        return super::bench_train::run(&args.model, &args.train, args.json, args.no_limits);
    }
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
        // Keys in alphabetical order, as this line has always printed them.
        let line = json_line(&[
            ("bf16_engine", bf16_engine_report(model.dtype()).into()),
            ("cpu", shears::kernels::cpu::model_name().into()),
            (
                "decode_fraction_of_bandwidth_bound",
                lim.map(|l| decode_gbps / l.read_gbps).into(),
            ),
            ("decode_fraction_of_matched_bound", matched_frac.into()),
            ("decode_tokens", args.decode.into()),
            ("decode_tokens_per_s", decode_tps.into()),
            ("decode_weight_gb_per_s", decode_gbps.into()),
            ("dtype", model.dtype().as_str().into()),
            ("fma_gflop_per_s", lim.map(|l| l.fma_gflops).into()),
            ("kv_cache_bytes", kv_bytes.into()),
            ("kv_dtype", model.kv_dtype.as_str().into()),
            ("load_secs", load_secs.into()),
            ("matched_decode_tokens_per_s", matched.map(|m| m.0).into()),
            ("matched_read_gb_per_s", matched.map(|m| m.1).into()),
            ("peak_rss_bytes", rss.into()),
            (
                "peak_rss_over_weights_plus_kv",
                rss.map(|r| r as f64 / weights_plus_kv as f64).into(),
            ),
            ("prefetch", shears::kernels::cpu::prefetch().name().into()),
            (
                "prefill_fraction_of_fma_peak",
                lim.map(|l| prefill_gflops / l.fma_gflops).into(),
            ),
            ("prefill_gflop_per_s", prefill_gflops.into()),
            ("prefill_tokens", args.prefill.into()),
            ("prefill_tokens_per_s", prefill_tps.into()),
            ("read_gb_per_s", lim.map(|l| l.read_gbps).into()),
            ("threads", rayon::current_num_threads().into()),
            ("weight_bytes", model.weight_bytes().into()),
            ("weight_bytes_per_token", per_token.into()),
        ]);
        writeln!(out, "{line}")?;
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
            "{} threads ({}, prefetch {}, bf16 engine {}), {} weights ({:.1} MiB), {} KV cache \
             {:.1} MiB, peak RSS {rss_text}",
            rayon::current_num_threads(),
            shears::kernels::cpu::model_name(),
            shears::kernels::cpu::prefetch().name(),
            bf16_engine_report(model.dtype()),
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
