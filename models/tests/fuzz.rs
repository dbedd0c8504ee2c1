//! Mutation fuzzing of the model-side parsers, with the harness of
//! `shears_tensor::test_util::fuzz`. Every input must come back as `Ok` or `Err` without a panic,
//! within 1 s, with no allocation over 1 MiB + 64 × the input.
//! - `config.json` parsing and validation (`LlamaConfig::from_json_str`), from the committed seeds
//!   in `fuzz_corpus/` (SmolLM2-135M's HF config and a config with per-layer shapes): a config
//!   that parses must validate (`LlamaConfig::validate`) as its parser promised;
//! - the HF `tokenizer.json` (`Tokenizer::from_json_bytes`) and the tokenizer of a GGUF file's
//!   `tokenizer.ggml.*` metadata (`Gguf::from_bytes` + `Tokenizer::from_gguf`), from cut-down
//!   copies of SmolLM2's tokenizer in `fuzz_corpus/tokenizer/` (made by its `make_seeds.py`): a
//!   tokenizer that loads must encode, decode and stream-decode text without a panic.
//!
//! CI runs `SHEARS_FUZZ_EXECS` executions (default 20 000); a long run:
//! `SHEARS_FUZZ_EXECS=10000000 cargo test --release -p shears-models --test fuzz -- --nocapture`.

use shears_models::config::LlamaConfig;
use shears_models::tokenizer::Tokenizer;
use shears_tensor::io::Gguf;
use shears_tensor::test_util::fuzz::{self, Counting};
use std::path::Path;

#[global_allocator]
static ALLOC: Counting = Counting;

fn corpus(sub: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(sub)
}

#[test]
fn fuzz_config_json() {
    fuzz::run("config.json", &fuzz::seeds(&corpus(""), "json"), |b| {
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

/// What a loaded tokenizer must survive: encoding text (plain, digits, special tokens, multi-byte
/// characters), decoding what it encoded (whole and streamed) and decoding arbitrary ids. Errors
/// are allowed (a mutated vocabulary may miss a byte); panics are not.
fn exercise(tok: &Tokenizer) {
    for text in ["Hello, world! 1234", "<|im_start|>user\nhé 😀 x<|im_end|>"] {
        for add_special in [false, true] {
            let Ok(ids) = tok.encode(text, add_special) else {
                continue;
            };
            for skip in [false, true] {
                let _ = tok.decode(&ids, skip);
            }
            let mut stream = tok.stream();
            for &id in &ids {
                let _ = stream.push(id);
            }
            let _ = stream.finish();
        }
    }
    let n = tok.vocab_size() as u32;
    let ids = [0, 1, n / 2, n.saturating_sub(1), n, u32::MAX];
    for skip in [false, true] {
        let _ = tok.decode(&ids, skip);
        let _ = tok.decode(&ids[..4], skip);
    }
    for id in ids {
        let _ = tok.id_to_token(id);
    }
}

#[test]
fn fuzz_tokenizer_json() {
    // SmolLM2's tokenizer_config.json names its BOS and EOS like this.
    let config = br#"{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}}"#;
    let seeds = fuzz::seeds(&corpus("tokenizer"), "json");
    fuzz::run(
        "tokenizer.json",
        &seeds,
        |b| match Tokenizer::from_json_bytes(Path::new("tokenizer.json"), b, Some(config)) {
            Ok(tok) => {
                exercise(&tok);
                true
            }
            Err(_) => false,
        },
    );
}

#[test]
fn fuzz_gguf_tokenizer() {
    let seeds = fuzz::seeds(&corpus("tokenizer"), "gguf");
    fuzz::run("GGUF tokenizer", &seeds, |b| {
        let tok = Gguf::from_bytes("fuzz.gguf", b.to_vec()).and_then(|g| Tokenizer::from_gguf(&g));
        match tok {
            Ok(tok) => {
                exercise(&tok);
                true
            }
            Err(_) => false,
        }
    });
}
