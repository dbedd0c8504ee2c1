//! Mutation fuzzing of the checkpoint parsers (harness: `shears_tensor::test_util::fuzz`): the
//! safetensors header with its offsets against the data, and the GGUF header (every metadata
//! type, tensor infos, alignment, quant block sizes), from the committed seeds in `fuzz_corpus/`
//! (made by `fuzz_corpus/make_seeds.py`).
//!
//! CI runs `SHEARS_FUZZ_EXECS` executions per target (default 20 000, about a second); a long run:
//! `SHEARS_FUZZ_EXECS=10000000 cargo test --release -p shears-tensor --test fuzz -- --nocapture`.
//! `SHEARS_FUZZ_SEED` picks another random sequence. A failure prints the input (hex): add it to
//! the corpus as a regression seed.

use shears_tensor::io::{safetensors, Gguf};
use shears_tensor::test_util::fuzz::{self, Counting};
use std::path::Path;

#[global_allocator]
static ALLOC: Counting = Counting;

fn seeds(ext: &str) -> Vec<Vec<u8>> {
    fuzz::seeds(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus"),
        ext,
    )
}

#[test]
fn fuzz_safetensors_header() {
    fuzz::run("safetensors", &seeds("safetensors"), |b| {
        safetensors::metadata_from_bytes("fuzz.safetensors", b).is_ok()
    });
}

#[test]
fn fuzz_gguf_header() {
    fuzz::run("gguf", &seeds("gguf"), |b| {
        Gguf::header_from_bytes("fuzz.gguf", b).is_ok()
    });
}
