//! Where the CLI integration tests find the fetched assets (each test file is its own crate and
//! uses only some of these).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The data folder the CLI reads by default: `$SHEARS_DATA`, else `data/` in the repository.
pub fn data_dir() -> PathBuf {
    std::env::var_os("SHEARS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data"))
}

/// Where `shears fetch` puts the default model (it may be missing: tests skip then).
pub fn default_model() -> PathBuf {
    data_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}
