//! `shears generate`: text from a prompt, streamed token by token as it comes.
//!
//! ```text
//! shears generate --prompt "The capital of France is" --max-tokens 32
//! shears generate --chat --prompt "Write a haiku" --temperature 0.7 --top-p 0.9 --seed 1
//! ```

use super::common::{json_line, CliResult};
use super::model::ModelArgs;
use clap::Args;
use shears::models::generate::{self, GenerateOptions, SamplingParams, StopReason};
use std::io::Write;

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

pub fn run(args: &GenerateArgs) -> CliResult {
    let (model, tok, _) = args.model.load()?;
    // A NaN or infinity in a weight would make every token garbage: name it instead.
    model.check_finite()?;
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
        // Keys in alphabetical order, as this line has always printed them.
        let line = json_line(&[
            ("decode_tokens_per_s", decode_tps.into()),
            ("prefill_secs", g.prefill_secs.into()),
            ("prompt_tokens", ids.len().into()),
            ("stop", format!("{:?}", g.stop).into()),
            ("text", text.into()),
            ("tokens", g.tokens.into()),
        ]);
        writeln!(out, "{line}")?;
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
