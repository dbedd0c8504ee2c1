//! `shears inspect`: a checkpoint's tensors (name, dtype, shape, bytes) without reading their
//! data, from safetensors files, sharded checkpoints, HF directories and GGUF files.
//!
//! ```text
//! shears inspect model.safetensors              # table of name, dtype, shape, bytes + totals
//! shears inspect path/to/checkpoint-dir --json  # one JSON object per tensor per line
//! ```

use super::common::{human_bytes, json_line, CliResult};
use clap::Args;
use shears::tensor::io::{self, Header};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct InspectArgs {
    /// A .safetensors file, a sharded checkpoint's model.safetensors.index.json, a directory
    /// holding model.safetensors or model.safetensors.index.json, or a GGUF file.
    path: PathBuf,
    /// Print one JSON object per tensor per line ({"name", "dtype", "shape", "bytes"}).
    #[arg(long)]
    json: bool,
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

pub fn run(args: &InspectArgs) -> CliResult {
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
            let line = json_line(&[
                ("name", t.name.as_str().into()),
                ("dtype", t.dtype.as_str().into()),
                ("shape", t.shape.clone().into()),
                ("bytes", t.bytes.into()),
            ]);
            writeln!(out, "{line}")?;
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
