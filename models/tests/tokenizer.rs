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

// ---------------------------------------------------------------- inputs found by fuzzing
//
// Each `tokenizer.json` below made `tokenizers` 0.22 panic (while parsing, or on the first
// `encode`) before `Tokenizer::from_json_bytes` checked for it; now each is an `Error::Format`
// naming the file. `fuzz_tokenizer_json` (models/tests/fuzz.rs) found the broken decoder and the
// missing special token; the others sit next to those in `tokenizers` and were found by reading
// it.

/// A minimal BPE `tokenizer.json` (no byte-level parts) with the given normalizer and post-processor.
fn tiny_json(normalizer: &str, post_processor: &str) -> String {
    format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":{normalizer},"pre_tokenizer":null,"post_processor":{post_processor},
        "decoder":null,"model":{{"type":"BPE","vocab":{{"a":0,"b":1,"<s>":2}},"merges":[]}}}}"#
    )
}

fn assert_rejected(json: &str, needle: &str) {
    let path = Path::new("fuzz/tokenizer.json");
    let err = Tokenizer::from_json_bytes(path, json.as_bytes(), None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    assert!(msg.contains("fuzz/tokenizer.json"), "{msg}");
    assert!(msg.contains(needle), "`{msg}` lacks `{needle}`");
}

/// `expect("Helper")` in `tokenizers`' decoder deserializer: broken JSON inside `decoder`, or
/// nesting past serde_json's recursion limit there.
#[test]
fn fuzz_regression_broken_json_inside_the_decoder() {
    assert_rejected(
        r#"{"decoder":{"type":"ByteLevel",]}"#,
        "key must be a string",
    );
    let deep = format!(
        r#"{{"decoder":{{"type":"ByteLevel","x":{}1{}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    assert_rejected(&deep, "recursion limit exceeded");
}

/// `expect("Precompiled")` in `tokenizers`' normalizer deserializer: a charsmap that does not
/// parse.
#[test]
fn fuzz_regression_precompiled_normalizer_that_does_not_parse() {
    let json = tiny_json(
        r#"{"type":"Precompiled","precompiled_charsmap":"AAAA"}"#,
        "null",
    );
    assert_rejected(&json, "normalizer `Precompiled`");
    let nested = tiny_json(
        r#"{"type":"Sequence","normalizers":[{"type":"Precompiled","precompiled_charsmap":"@"}]}"#,
        "null",
    );
    assert_rejected(&nested, "normalizer `Precompiled`");
}

/// `apply_template` in `tokenizers` indexes the special-token map and the sequences unchecked
/// (a missing special token, `$B` in `single`: panics on `encode`); a special token with more ids
/// than tokens is refused too, as `SpecialToken::new` refuses it.
#[test]
fn fuzz_regression_template_post_processor_that_panics_on_encode() {
    let seq = |id: &str, t: u32| format!(r#"{{"Sequence":{{"id":"{id}","type_id":{t}}}}}"#);
    let special = r#"{"SpecialToken":{"id":"<s>","type_id":0}}"#;
    let pair = format!("[{},{}]", seq("A", 0), seq("B", 1));
    let template = |single: &str, specials: &str| {
        // "Type", not "type": the post-processor is matched by its fields, whatever the tag says
        // (the fuzzer's input had it so).
        tiny_json(
            "null",
            &format!(
                r#"{{"Type":"TemplateProcessing","single":{single},"pair":{pair},
                "special_tokens":{specials}}}"#
            ),
        )
    };
    let s_ok = r#"{"<s>":{"id":"<s>","ids":[2],"tokens":["<s>"]}}"#;
    let single = format!("[{special},{}]", seq("A", 0));
    assert_rejected(&template(&single, "{}"), "special token \"<s>\"");
    let only_b = format!("[{}]", seq("B", 0));
    assert_rejected(&template(&only_b, s_ok), "uses the second sequence `$B`");
    let uneven = r#"{"<s>":{"id":"<s>","ids":[2,2],"tokens":["<s>"]}}"#;
    assert_rejected(&template(&single, uneven), "2 ids but 1 tokens");
    // The same template with its special token defined loads and adds it (no decoder: tokens
    // come back joined by spaces).
    let tok = Tokenizer::from_json_bytes(
        Path::new("t.json"),
        template(&single, s_ok).as_bytes(),
        None,
    )
    .unwrap();
    assert_eq!(tok.encode("ab", true).unwrap(), vec![2, 0, 1]);
    assert_eq!(tok.decode(&[2, 0, 1], false).unwrap(), "<s> a b");
}

/// A vocabulary that skips ids: `decode` takes every id `encode` gives (the id space, not the
/// token count, bounds it).
#[test]
fn vocabulary_with_gaps_decodes_what_it_encodes() {
    let json = r#"{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":null,
        "post_processor":null,"decoder":null,
        "model":{"type":"BPE","vocab":{"a":0,"b":1000},"merges":[]}}"#;
    let tok = Tokenizer::from_json_bytes(Path::new("t.json"), json.as_bytes(), None).unwrap();
    assert_eq!(tok.vocab_size(), 1001);
    let ids = tok.encode("ab", false).unwrap();
    assert_eq!(ids, vec![0, 1000]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "a b"); // no decoder: joined by spaces
    assert!(tok.decode(&[1001], false).is_err());
}

/// `from_file` reads the sibling `tokenizer_config.json` and hands both to `from_json_bytes`:
/// the same tokenizer either way.
#[test]
fn from_file_equals_from_json_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let json = tiny_json("null", "null");
    let config = br#"{"bos_token": "<s>", "eos_token": {"content": "b"}}"#;
    std::fs::write(dir.path().join("tokenizer.json"), &json).unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
    let a = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    let b = Tokenizer::from_json_bytes(Path::new("x"), json.as_bytes(), Some(config)).unwrap();
    assert_eq!((a.bos_id(), a.eos_id()), (Some(2), Some(1)));
    assert_eq!((b.bos_id(), b.eos_id()), (Some(2), Some(1)));
    assert_eq!(a.vocab_size(), b.vocab_size());
}
