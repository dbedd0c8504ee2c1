//! The `shears` command line.
//!
//! ```text
//! shears inspect model.safetensors            # table of name, dtype, shape, bytes + totals
//! shears inspect path/to/checkpoint-dir --json  # one JSON object per tensor per line
//! shears bench kernels [--json] [--quick]       # kernel speeds next to the machine's limits
//! ```

mod bench;

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
    /// Time kernels and compare them with this machine's limits.
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct InspectArgs {
    /// A .safetensors file, a sharded checkpoint's model.safetensors.index.json, or a directory
    /// holding model.safetensors or model.safetensors.index.json.
    path: PathBuf,
    /// Print one JSON object per tensor per line ({"name", "dtype", "shape", "bytes"}).
    #[arg(long)]
    json: bool,
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect(&args),
        Command::Bench(args) => bench::run(&args),
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

fn inspect(args: &InspectArgs) -> CliResult {
    let header = io::load_metadata_any(&args.path)?;
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
