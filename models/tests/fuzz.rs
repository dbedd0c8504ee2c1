//! Mutation fuzzing of `config.json` parsing and validation (`LlamaConfig::from_json_str`), with
//! the harness of `shears_tensor::test_util::fuzz`, from the committed seeds in `fuzz_corpus/`
//! (SmolLM2-135M's HF config and a config with per-layer shapes). Every input must come back as
//! `Ok` or `Err` without a panic, within 1 s, with no allocation over 1 MiB + 64 × the input;
//! and a config that parses must validate (`LlamaConfig::validate`) as its parser promised.
//!
//! CI runs `SHEARS_FUZZ_EXECS` executions (default 20 000); a long run:
//! `SHEARS_FUZZ_EXECS=10000000 cargo test --release -p shears-models --test fuzz -- --nocapture`.

use shears_models::config::LlamaConfig;
use shears_tensor::test_util::fuzz::{self, Counting};
use std::path::Path;

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn fuzz_config_json() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    fuzz::run("config.json", &fuzz::seeds(&dir, "json"), |b| {
        let text = String::from_utf8_lossy(b);
        match LlamaConfig::from_json_str(&text, Path::new("config.json")) {
            Ok(c) => {
                c.validate(Path::new("config.json"))
                    .expect("a parsed config validates");
                true
            }
            Err(_) => false,
        }
    });
}
