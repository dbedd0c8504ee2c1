//! The training forward pass ([`Llama::forward_train`]: batched, no cache, a graph recorded when
//! weights are parameters) against the inference one ([`Llama::forward`]: a KV-cache prefill) on
//! SmolLM2-135M-Instruct, the GGUF `shears fetch` downloads. Skips (with a note) when it is absent.

mod common;
use common::gguf_path;
use shears_models::llama::{ForwardOptions, Llama, TrainSpec};
use shears_models::load::{load, LoadOptions};
use shears_tensor::{DType, Tensor};

/// Largest |a − b| in each row over the largest |b| of that row, maximised over rows.
fn max_rel_err(a: &[f32], b: &[f32], row: usize) -> f64 {
    assert_eq!(a.len(), b.len());
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

/// Logits `[ids.len() × vocab]` of a KV-cache prefill.
fn prefill(model: &Llama, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache_with_dtype(ids.len(), DType::F32).unwrap();
    model
        .forward(ids, &mut cache)
        .unwrap()
        .to_vec::<f32>()
        .unwrap()
}

/// Logits `(batch, seq, vocab)` of `forward_train`, flattened.
fn train_logits(model: &Llama, seqs: &[&[u32]]) -> Vec<f32> {
    let t = seqs[0].len();
    let flat: Vec<u32> = seqs.concat();
    let ids = Tensor::from_vec(flat, [seqs.len(), t]).unwrap();
    let (logits, layers) = model
        .forward_train(&ids, ForwardOptions::default())
        .unwrap();
    assert!(layers.is_empty());
    assert_eq!(
        logits.dims(),
        &[seqs.len(), t, model.config.vocab_size],
        "logits shape"
    );
    logits.tensor().to_vec::<f32>().unwrap()
}

const TEXT_A: &str =
    "Alice was beginning to get very tired of sitting by her sister on the bank, and \
                      of having nothing to do: once or twice she had peeped into the book";
const TEXT_B: &str =
    "It is a truth universally acknowledged, that a single man in possession of a \
                      good fortune, must be in want of a wife. However little known";
const T: usize = 24;

#[test]
fn smollm2_training_forward_equals_the_inference_forward() {
    let Some(path) = gguf_path() else { return };
    let (model, tok) = load(&path, &LoadOptions::default()).unwrap();
    let v = model.config.vocab_size;
    let encode = |s: &str| {
        let ids = tok.encode(s, false).unwrap();
        assert!(ids.len() >= T, "{} tokens", ids.len());
        ids[..T].to_vec()
    };
    let (a, b) = (encode(TEXT_A), encode(TEXT_B));
    assert_ne!(a, b);
    let reference = prefill(&model, &a);

    // Constant weights: nothing is recorded, the batched causal attention replaces the cache.
    let got = train_logits(&model, &[&a]);
    let err = max_rel_err(&got, &reference, v);
    eprintln!("forward_train (constants) vs KV-cache prefill: max relative error {err:.3e}");
    assert!(err <= 1e-5, "relative error {err}");

    // Parameters: the same pass records the graph; the values do not change.
    let mut trained = model.clone();
    let params = trained.params(TrainSpec::default()).unwrap();
    trained.set_params(&params).unwrap();
    let ids = Tensor::from_vec(a.clone(), [1, T]).unwrap();
    let (logits, _) = trained
        .forward_train(&ids, ForwardOptions::default())
        .unwrap();
    assert!(logits.requires_grad(), "a graph is recorded");
    let err = max_rel_err(&logits.tensor().to_vec::<f32>().unwrap(), &reference, v);
    eprintln!("forward_train (parameters) vs KV-cache prefill: max relative error {err:.3e}");
    assert!(err <= 1e-5, "relative error {err}");
    drop(logits);

    // A batch of two different sequences: each row equals the sequence run alone.
    let both = train_logits(&model, &[&a, &b]);
    let alone_b = train_logits(&model, &[&b]);
    let (ra, rb) = both.split_at(T * v);
    for (what, x, y) in [("sequence 0", ra, &got), ("sequence 1", rb, &alone_b)] {
        let err = max_rel_err(x, y, v);
        eprintln!("batch of 2, {what} vs alone: max relative error {err:.3e}");
        assert!(err <= 1e-5, "{what}: relative error {err}");
    }
    let err = max_rel_err(&alone_b, &prefill(&model, &b), v);
    assert!(
        err <= 1e-5,
        "sequence 1 vs its prefill: relative error {err}"
    );
}
