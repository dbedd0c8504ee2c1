//! `shears eval`: perplexity of a model on text files.
//!
//! ```text
//! shears eval                                   # the fetched model on alice29.txt + asyoulik.txt
//! shears eval --model DIR --text a.txt b.txt --seqlen 1024 --json
//! ```

use super::common::{json_line, peak_rss_bytes, progress_bar, CliResult};
use super::model::{bf16_engine_report, default_texts, ModelArgs};
use clap::Args;
use shears::models::eval;
use std::io::Write;
use std::path::PathBuf;

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

pub fn run(args: &EvalArgs) -> CliResult {
    let (model, tok, load_secs) = args.model.load()?;
    // A NaN or infinity in a weight would turn every logit into NaN: name it instead.
    model.check_finite()?;
    let files = if args.text.is_empty() {
        default_texts(eval::default_eval_files)?
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
        // Keys in alphabetical order, as this line has always printed them.
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        let line = json_line(&[
            ("bf16_engine", bf16_engine_report(model.dtype()).into()),
            ("dtype", model.dtype().as_str().into()),
            ("files", files.into()),
            ("kv_dtype", model.kv_dtype.as_str().into()),
            ("load_secs", load_secs.into()),
            ("nll", report.nll.into()),
            ("peak_rss_bytes", rss.into()),
            ("ppl", report.ppl.into()),
            ("scored_tokens", report.scored_tokens.into()),
            ("secs", report.secs.into()),
            ("seqlen", report.seqlen.into()),
            ("threads", rayon::current_num_threads().into()),
            ("tokens", total_tokens.into()),
            ("tokens_per_s", report.tokens_per_s.into()),
            ("weight_bytes", model.weight_bytes().into()),
            ("windows", report.windows.into()),
        ]);
        writeln!(out, "{line}")?;
    } else {
        writeln!(
            out,
            "perplexity {:.4} (seqlen {}, {} windows, {} of {} tokens scored) | {:.1} tokens/s, {:.1} s | {} threads, {} weights, bf16 engine {}",
            report.ppl,
            report.seqlen,
            report.windows,
            report.scored_tokens,
            total_tokens,
            report.tokens_per_s,
            report.secs,
            rayon::current_num_threads(),
            model.dtype().as_str(),
            bf16_engine_report(model.dtype())
        )?;
    }
    Ok(())
}
