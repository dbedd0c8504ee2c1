//! SmolLM2-135M-Instruct (the GGUF `shears fetch` downloads) against the independent float64
//! numpy implementation in `fixtures/llama_ref.py`, whose output is committed as
//! `fixtures/smollm2_logits.safetensors`. Skips (with a note) when the GGUF is absent.

mod common;
use common::gguf_path;
use shears_models::generate::{generate, GenerateOptions};
use shears_models::load::{load, load_model, save_hf, LoadOptions};
use shears_tensor::{io, DType, Tensor};
use std::path::PathBuf;

struct Fixture {
    ids: Vec<u32>,
    logits: Vec<f32>,
    greedy: Vec<u32>,
    vocab: usize,
}

fn fixture() -> Fixture {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_logits.safetensors");
    let t = io::load(&p).expect("fixture loads");
    let ids = |name: &str| -> Vec<u32> {
        t[name]
            .to_vec::<i64>()
            .unwrap()
            .iter()
            .map(|&x| x as u32)
            .collect()
    };
    let logits = &t["logits"];
    Fixture {
        ids: ids("token_ids"),
        logits: logits.to_vec::<f32>().unwrap(),
        greedy: ids("greedy_ids"),
        vocab: logits.dims()[1],
    }
}

/// Largest |a − b| in each row over the largest |b| of that row, maximised over rows.
fn max_rel_err(a: &[f32], b: &[f32], row: usize) -> f64 {
    a.chunks(row)
        .zip(b.chunks(row))
        .map(|(x, y)| {
            let scale = y.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
            let diff = x
                .iter()
                .zip(y)
                .fold(0f64, |m, (&p, &q)| m.max((p as f64 - q as f64).abs()));
            diff / scale
        })
        .fold(0.0, f64::max)
}

fn logits_of(model: &shears_models::llama::Llama, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache_with_dtype(ids.len(), DType::F32).unwrap();
    model
        .forward(ids, &mut cache)
        .unwrap()
        .to_vec::<f32>()
        .unwrap()
}

#[test]
fn smollm2_logits_match_the_numpy_reference() {
    let Some(path) = gguf_path() else { return };
    let f = fixture();
    let (model, tok) = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(model.config.vocab_size, f.vocab);
    // The tokenizer gives the fixture's ids for its prompt.
    let prompt = "The quick brown fox jumps over the lazy dog. In 1865, Alice";
    assert_eq!(tok.encode(prompt, false).unwrap(), f.ids);

    let got = logits_of(&model, &f.ids);
    let err = max_rel_err(&got, &f.logits, f.vocab);
    eprintln!("f32 prefill: max relative error vs numpy float64 = {err:.3e}");
    assert!(err < 1e-4, "relative error {err}");

    // Token by token through the KV cache gives the same logits as the batched prefill.
    let mut cache = model.new_cache_with_dtype(f.ids.len(), DType::F32).unwrap();
    let mut stepped = Vec::new();
    for &id in &f.ids {
        stepped.extend(
            model
                .forward(&[id], &mut cache)
                .unwrap()
                .to_vec::<f32>()
                .unwrap(),
        );
    }
    let err = max_rel_err(&stepped, &f.logits, f.vocab);
    eprintln!("f32 decode steps: max relative error vs numpy float64 = {err:.3e}");
    assert!(err < 1e-4, "relative error {err}");
}

#[test]
fn smollm2_greedy_generation_matches_the_reference() {
    let Some(path) = gguf_path() else { return };
    let f = fixture();
    let model = load_model(&path, &LoadOptions::default()).unwrap();
    let opts = GenerateOptions {
        max_tokens: f.greedy.len(),
        ..GenerateOptions::default()
    };
    let mut streamed = Vec::new();
    let g = generate(&model, &f.ids, &opts, |t| {
        streamed.push(t);
        Ok(true)
    })
    .unwrap();
    assert_eq!(g.tokens, f.greedy);
    assert_eq!(streamed, f.greedy);
}

#[test]
fn gguf_saved_as_hf_and_reloaded_gives_the_same_logits() {
    let Some(path) = gguf_path() else { return };
    let f = fixture();
    let (model, tok) = load(&path, &LoadOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_hf(&model, Some(&tok), dir.path(), None).unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(dir.path().join(name).exists(), "{name} written");
    }
    let (again, tok2) = load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(again.rope().layout, shears_tensor::RopeLayout::HalfSplit);
    assert_eq!(
        tok2.encode("In 1865, Alice", false).unwrap(),
        tok.encode("In 1865, Alice", false).unwrap()
    );
    // Weights other than Q/K are bit-identical; Q/K rows are permuted to HF's rotary layout, so
    // attention dot products sum the same terms in another order: equal up to f32 rounding.
    let (a, b) = (logits_of(&model, &f.ids), logits_of(&again, &f.ids));
    let err = max_rel_err(&b, &a, f.vocab);
    eprintln!("GGUF vs saved-HF logits: max relative difference {err:.3e}");
    assert!(err < 1e-5, "relative difference {err}");
    let w0 = model.named_weights();
    let w1 = again.named_weights();
    assert_eq!(w0.len(), w1.len());
    for ((n0, t0), (n1, t1)) in w0.iter().zip(&w1) {
        assert_eq!(n0, n1);
        if !n0.contains("q_proj") && !n0.contains("k_proj") {
            assert_eq!(
                t0.to_vec::<f32>().unwrap(),
                t1.to_vec::<f32>().unwrap(),
                "{n0}"
            );
        }
    }
}

#[test]
fn smollm2_in_bf16_and_f16_stays_close_to_f32() {
    let Some(path) = gguf_path() else { return };
    let f = fixture();
    for dt in [DType::BF16, DType::F16] {
        let model = load_model(&path, &LoadOptions { dtype: dt }).unwrap();
        assert_eq!(model.dtype(), dt);
        let got = logits_of(&model, &f.ids);
        let err = max_rel_err(&got, &f.logits, f.vocab);
        eprintln!("{dt:?} weights: max relative error vs numpy float64 = {err:.3e}");
        // Rounding the weights to 8 (bf16) or 11 (f16) mantissa bits moves the logits by a
        // fraction of a percent, never by whole logits.
        assert!(err < 5e-2, "{dt:?} relative error {err}");
        let last = |v: &[f32]| {
            let row = &v[v.len() - f.vocab..];
            (0..row.len())
                .max_by(|&i, &j| row[i].total_cmp(&row[j]))
                .unwrap()
        };
        assert_eq!(last(&got), last(&f.logits), "{dt:?} next-token arg-max");
    }
    let _ = Tensor::zeros([1], DType::F32);
}
