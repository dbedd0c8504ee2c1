//! Helpers shared by the model tests that need the fetched SmolLM2 checkpoint.

use std::path::PathBuf;

/// The fetched SmolLM2-135M GGUF under `$SHEARS_DATA` or `<repo>/data`, or `None` (with a note
/// on stderr) when it is absent, so the caller skips.
pub fn gguf_path() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = std::env::var_os("SHEARS_DATA")
        .map(PathBuf::from)
        .unwrap_or(root.join("data"));
    let p = data.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "note: {} is absent (run `shears fetch`); skipping",
            p.display()
        );
        None
    }
}
