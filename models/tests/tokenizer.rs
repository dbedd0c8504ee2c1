//! The tokenizer built from SmolLM2's GGUF against reference ids (fixtures/smollm2_tokens.json,
//! written by fixtures/tokenizer_ref.py from llama.cpp and the Python `tokenizers` library), plus
//! round trips, streaming, save/load and error cases on small hand-built vocabularies.

use shears_models::tokenizer::{BpeSpec, Tokenizer};
use shears_tensor::io::gguf::Gguf;
use shears_tensor::Error;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const GGUF: &str = "data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

struct Case {
    name: String,
    text: String,
    ids: Vec<u32>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_tokens.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            text: c["text"].as_str().unwrap().to_string(),
            ids: c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect(),
        })
        .collect()
}

/// The SmolLM2 tokenizer from the real GGUF, or `None` (with a note) when the file is absent.
fn smollm2() -> Option<&'static Tokenizer> {
    static TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = repo_root().join(GGUF);
        if !path.is_file() {
            eprintln!(
                "note: {} is absent; skipping the SmolLM2 tokenizer checks",
                path.display()
            );
            return None;
        }
        let g = Gguf::open(&path).expect("open the GGUF");
        let t0 = std::time::Instant::now();
        let tok = Tokenizer::from_gguf(&g).expect("build the tokenizer from the GGUF");
        eprintln!("Tokenizer::from_gguf took {:?}", t0.elapsed());
        Some(tok)
    })
    .as_ref()
}

#[test]
fn fixture_is_substantial() {
    let cases = fixture();
    assert!(cases.len() >= 15);
    let alice = cases.iter().find(|c| c.name.starts_with("alice")).unwrap();
    assert!(alice.text.chars().count() >= 5900 && alice.ids.len() > 1000);
    assert!(!alice.text.contains('\r'));
    assert!(cases.iter().any(|c| c.text.is_empty() && c.ids.is_empty()));
}

#[test]
fn gguf_metadata_is_smollm2() {
    let Some(tok) = smollm2() else { return };
    assert_eq!(tok.vocab_size(), 49152);
    // From the GGUF metadata (read independently with gguf-py): bos 1, eos 2.
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.id_to_token(0).as_deref(), Some("<|endoftext|>"));
    assert_eq!(tok.id_to_token(17).as_deref(), Some("!"));
    assert_eq!(tok.id_to_token(49152), None);
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
}

#[test]
fn ids_equal_the_reference_exactly() {
    let Some(tok) = smollm2() else { return };
    for case in fixture() {
        // add_special_tokens=true must add nothing: the GGUF says add_bos_token = false.
        for add_special in [false, true] {
            let ids = tok.encode(&case.text, add_special).unwrap();
            if ids != case.ids {
                let first = ids
                    .iter()
                    .zip(&case.ids)
                    .take_while(|(a, b)| a == b)
                    .count();
                panic!(
                    "{} (add_special={add_special}): ids differ at {first}: ours {:?} vs reference {:?}",
                    case.name,
                    &ids[first..(first + 8).min(ids.len())],
                    &case.ids[first..(first + 8).min(case.ids.len())],
                );
            }
        }
    }
}

#[test]
fn decode_inverts_encode() {
    let Some(tok) = smollm2() else { return };
    for case in fixture() {
        let ids = tok.encode(&case.text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), case.text, "{}", case.name);
    }
    let chat = tok
        .encode("<|im_start|>user\nHi<|im_end|>\n", false)
        .unwrap();
    assert_eq!(chat[0], 1);
    assert_eq!(tok.decode(&chat, true).unwrap(), "user\nHi\n");
}

fn streamed(tok: &Tokenizer, ids: &[u32]) -> (String, Vec<String>) {
    let mut stream = tok.stream();
    let mut pieces = Vec::new();
    for &id in ids {
        if let Some(s) = stream.push(id).unwrap() {
            pieces.push(s);
        }
    }
    if let Some(s) = stream.finish().unwrap() {
        pieces.push(s);
    }
    (pieces.concat(), pieces)
}

#[test]
fn stream_concatenation_equals_decode() {
    let Some(tok) = smollm2() else { return };
    for case in fixture() {
        let (text, pieces) = streamed(tok, &case.ids);
        assert_eq!(text, tok.decode(&case.ids, false).unwrap(), "{}", case.name);
        assert!(
            pieces.iter().all(|p| !p.contains('\u{FFFD}')),
            "{}",
            case.name
        );
    }
}

#[test]
fn stream_holds_back_split_characters() {
    let Some(tok) = smollm2() else { return };
    let text = "a🦀b";
    let ids = tok.encode(text, false).unwrap();
    // The crab (4 UTF-8 bytes) is not one token in this vocabulary: some token ends mid-char.
    let partial = ids.iter().any(|&id| {
        let s = tok.decode(&[id], false).unwrap();
        s.contains('\u{FFFD}')
    });
    assert!(
        partial,
        "expected the emoji to be split across tokens: {ids:?}"
    );
    let mut stream = tok.stream();
    let mut pieces = Vec::new();
    for &id in &ids {
        let out = stream.push(id).unwrap();
        if let Some(s) = &out {
            assert!(
                !s.contains('\u{FFFD}'),
                "emitted a partial character: {s:?}"
            );
        }
        pieces.extend(out);
    }
    assert_eq!(stream.finish().unwrap(), None);
    assert_eq!(pieces.concat(), text);
    assert!(pieces.contains(&"🦀".to_string()) || pieces.iter().any(|p| p.contains('🦀')));

    // A dangling partial character is flushed by finish, as decode renders it.
    let crab = tok.encode("🦀", false).unwrap();
    let mut stream = tok.stream();
    assert_eq!(stream.push(crab[0]).unwrap(), None);
    assert_eq!(
        stream.finish().unwrap(),
        Some(tok.decode(&crab[..1], false).unwrap())
    );
    assert!(stream.push(u32::MAX).is_err());
}

#[test]
fn save_then_from_file_gives_identical_ids() {
    let Some(tok) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    // Atomic write: nothing but the file is left in the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("tokenizer.json")]);
    let loaded = Tokenizer::from_file(&path).unwrap();
    assert_eq!(loaded.vocab_size(), tok.vocab_size());
    for case in fixture() {
        assert_eq!(
            loaded.encode(&case.text, false).unwrap(),
            case.ids,
            "{}",
            case.name
        );
        assert_eq!(loaded.decode(&case.ids, false).unwrap(), case.text);
    }
    assert_eq!(loaded.eos_id(), Some(0)); // `<|endoftext|>` by name: no config file beside it
}

#[test]
fn decode_rejects_out_of_range_ids() {
    let Some(tok) = smollm2() else { return };
    let err = tok.decode(&[17, 49152], false).unwrap_err();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("49152"), "{err}");
}

// ---------------------------------------------------------------- small hand-built vocabularies

/// A toy byte-level vocabulary: `<|end|>` (control), `<u>` (user-defined), the letters of "hello
/// world" and "0".."9", merges building "he", "hell", "hello", "Ġw", "Ġworld".
fn toy_tokens() -> Vec<&'static str> {
    vec![
        "<|end|>", "<u>", "h", "e", "l", "o", "Ġ", "w", "r", "d", "0", "1", "2", "he", "ll",
        "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld", "12",
    ]
}

fn toy_spec(tokens: &[&'static str]) -> BpeSpec<'static> {
    let mut types = vec![1; tokens.len()];
    types[0] = 3;
    types[1] = 4;
    BpeSpec {
        pre: Some("smollm"),
        tokens: tokens.to_vec(),
        token_types: Some(types),
        merges: Some(vec![
            "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "1 2",
        ]),
        bos: None,
        eos: Some(0),
        ..BpeSpec::default()
    }
}

#[test]
fn toy_vocabulary_encodes_by_merge_priority() {
    let tokens = toy_tokens();
    let tok = Tokenizer::from_bpe_parts(&toy_spec(&tokens)).unwrap();
    assert_eq!(tok.encode("hello world", false).unwrap(), vec![16, 21]);
    // Digits are split one by one before BPE, so the merge "1 2" never applies.
    assert_eq!(tok.encode("12", false).unwrap(), vec![11, 12]);
    assert_eq!(
        tok.encode("hello<|end|><u>", false).unwrap(),
        vec![16, 0, 1]
    );
    assert_eq!(tok.decode(&[16, 0, 1], true).unwrap(), "hello<u>");
    assert_eq!(tok.decode(&[16, 0, 1], false).unwrap(), "hello<|end|><u>");

    // gpt-2 does not split digits: "12" merges.
    let mut spec = toy_spec(&tokens);
    spec.pre = Some("gpt-2");
    let gpt2 = Tokenizer::from_bpe_parts(&spec).unwrap();
    assert_eq!(gpt2.encode("12", false).unwrap(), vec![22]);
}

#[test]
fn add_bos_token_is_honoured() {
    let tokens = toy_tokens();
    let mut spec = toy_spec(&tokens);
    spec.bos = Some(0);
    spec.add_bos = Some(true);
    let tok = Tokenizer::from_bpe_parts(&spec).unwrap();
    assert_eq!(tok.encode("hello", true).unwrap(), vec![0, 16]);
    assert_eq!(tok.encode("hello", false).unwrap(), vec![16]);
    assert_eq!(tok.bos_id(), Some(0));

    // llama-bpe adds a BOS unless the metadata says otherwise (llama.cpp's default for it).
    spec.pre = Some("llama-bpe");
    spec.add_bos = None;
    let llama3 = Tokenizer::from_bpe_parts(&spec).unwrap();
    assert_eq!(llama3.encode("hello world", true).unwrap(), vec![0, 16, 21]);
    spec.add_bos = Some(false);
    let llama3 = Tokenizer::from_bpe_parts(&spec).unwrap();
    assert_eq!(llama3.encode("hello world", true).unwrap(), vec![16, 21]);

    spec.add_bos = Some(true);
    spec.bos = None;
    let err = Tokenizer::from_bpe_parts(&spec).unwrap_err();
    assert!(err.to_string().contains("bos_token_id"), "{err}");
}

#[test]
fn unsupported_model_and_pre_tokenizer_are_named() {
    let tokens = toy_tokens();
    let mut spec = toy_spec(&tokens);
    spec.model = "llama";
    let err = Tokenizer::from_bpe_parts(&spec).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("`llama`"), "{err}");

    let mut spec = toy_spec(&tokens);
    spec.pre = Some("deepseek-coder");
    let err = Tokenizer::from_bpe_parts(&spec).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("deepseek-coder"), "{err}");

    spec.pre = None;
    assert!(matches!(
        Tokenizer::from_bpe_parts(&spec),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn broken_vocabularies_are_errors_naming_the_key() {
    let tokens = toy_tokens();
    let cases: Vec<(BpeSpec<'static>, &str)> = vec![
        (
            BpeSpec {
                merges: None,
                ..toy_spec(&tokens)
            },
            "tokenizer.ggml.merges",
        ),
        (
            BpeSpec {
                merges: Some(vec!["h e", "x y"]),
                ..toy_spec(&tokens)
            },
            "merges`[1]",
        ),
        (
            BpeSpec {
                merges: Some(vec!["he"]),
                ..toy_spec(&tokens)
            },
            "merges`[0]",
        ),
        (
            BpeSpec {
                merges: Some(vec!["e h"]), // "eh" is not a token
                ..toy_spec(&tokens)
            },
            "\"eh\"",
        ),
        (
            BpeSpec {
                eos: Some(99),
                ..toy_spec(&tokens)
            },
            "eos_token_id",
        ),
        (
            BpeSpec {
                token_types: Some(vec![1, 1]),
                ..toy_spec(&tokens)
            },
            "token_type",
        ),
        (
            BpeSpec {
                tokens: vec![],
                ..toy_spec(&tokens)
            },
            "tokenizer.ggml.tokens",
        ),
    ];
    for (spec, needle) in cases {
        let err = Tokenizer::from_bpe_parts(&spec).unwrap_err();
        assert!(matches!(err, Error::Tokenizer { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
    let mut dup = toy_tokens();
    dup[3] = "h";
    let err = Tokenizer::from_bpe_parts(&toy_spec(&dup)).unwrap_err();
    assert!(err.to_string().contains("ids 2 and 3"), "{err}");
}

#[test]
fn from_file_rejects_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, "{not json").unwrap();
    let err = Tokenizer::from_file(&path).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err}");
    let err = Tokenizer::from_file(&dir.path().join("absent.json")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}
